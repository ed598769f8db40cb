//! Kill test of the finishing merge: `cotforge finalize` is SIGKILLed at
//! every write point it reaches (every crash point of an uninterrupted run,
//! recorded with COTFORGE_CRASH_TRACE: the final Parquet files, each export
//! file, the export switch, the card, stats, report, the dedup index save,
//! the completion marker), rerun, and must leave `final/`, the export and the
//! persistent dedup index byte-identical to an uninterrupted run. Then the
//! same for a second night sharing the index, a rerun of the first night
//! after the second (which must not roll the index back), and a third night
//! that must not ship the second night's chains again.

mod store_support;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use store_support::{bin, scripted_job, stderr, stdout, tree};

const SHARDS: u32 = 4;

/// The committed scripted job, with `out`, the job seed and a shared index.
fn job(dir: &Path, name: &str, out: &Path, seed: u64, index: &Path) -> PathBuf {
    scripted_job(
        dir,
        name,
        out,
        &[
            ("seed = 7\n", &format!("seed = {seed}\n")),
            (
                "[dedup]\nenabled = true\n",
                &format!(
                    "[dedup]\nenabled = true\nindex = {:?}\n",
                    index.display().to_string()
                ),
            ),
        ],
    )
}

fn cotforge(args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(args)
        .env_remove("COTFORGE_CRASH_AT")
        .env_remove("COTFORGE_CRASH_TRACE")
        .env_remove("COTFORGE_SLEEP_AT")
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX")
        .env("COTFORGE_LOG", "error");
    c
}

fn ok(mut c: Command) -> Output {
    let o = c.output().expect("spawn");
    assert!(o.status.success(), "{:?}: {}{}", c, stdout(&o), stderr(&o));
    o
}

/// Every shard of a job, as array workers (no finalize).
fn run_shards(job: &Path) {
    for i in 0..SHARDS {
        let j = job.to_str().expect("utf8");
        let idx = i.to_string();
        let n = SHARDS.to_string();
        ok(cotforge(&[
            "run",
            j,
            "--no-progress",
            "--shard-index",
            &idx,
            "--num-shards",
            &n,
        ]));
    }
}

fn finalize(job: &Path) -> Command {
    cotforge(&["finalize", job.to_str().expect("utf8")])
}

fn copy_dir(from: &Path, to: &Path) {
    if to.exists() {
        std::fs::remove_dir_all(to).expect("rm");
    }
    let o = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .expect("cp");
    assert!(o.status.success(), "{}", stderr(&o));
}

fn restore_index(saved: &Option<Vec<u8>>, index: &Path) {
    let _ = std::fs::remove_file(index);
    if let Some(b) = saved {
        std::fs::write(index, b).expect("index");
    }
}

/// What a finalize produces: `final/`, the export, the index bytes.
#[derive(PartialEq, Eq)]
struct Product {
    finals: BTreeMap<String, Vec<u8>>,
    export: BTreeMap<String, Vec<u8>>,
    index: Vec<u8>,
}

fn product(out: &Path, index: &Path) -> Product {
    Product {
        finals: tree(&out.join("final")),
        export: tree(&out.join("export")),
        index: std::fs::read(index).expect("index"),
    }
}

fn assert_same(got: &Product, want: &Product, what: &str) {
    assert_eq!(
        got.finals.keys().collect::<Vec<_>>(),
        want.finals.keys().collect::<Vec<_>>(),
        "{what}: final/ file set"
    );
    for (k, v) in &want.finals {
        assert!(got.finals[k] == *v, "{what}: final/{k} differs");
    }
    assert_eq!(
        got.export.keys().collect::<Vec<_>>(),
        want.export.keys().collect::<Vec<_>>(),
        "{what}: export file set"
    );
    for (k, v) in &want.export {
        assert!(got.export[k] == *v, "{what}: export/{k} differs");
    }
    assert!(got.index == want.index, "{what}: the dedup index differs");
}

/// The crash points an uninterrupted finalize reaches, as `point:n` (n-th
/// hit), each with whether the completion marker may already exist there
/// (after the rename of its commit, the last one).
fn write_points(trace: &Path) -> Vec<(String, bool)> {
    let text = std::fs::read_to_string(trace).expect("trace");
    let lines: Vec<&str> = text.lines().collect();
    let last_rename = lines
        .iter()
        .rposition(|p| *p == "commit.before_rename")
        .unwrap_or(0);
    let mut seen: BTreeMap<&str, u32> = BTreeMap::new();
    lines
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let n = seen.entry(p).or_default();
            *n += 1;
            (format!("{p}:{n}"), i > last_rename)
        })
        .collect()
}

fn chains_line(o: &Output) -> String {
    stdout(o)
        .lines()
        .find(|l| l.starts_with("final:"))
        .unwrap_or_default()
        .to_string()
}

/// Kill a finalize of `job` (whose shards are done, saved in `template`) at
/// every point of `points`, rerun it, and compare with `want`. The index
/// starts as `index_before` each time. Returns the number of kills.
fn kill_everywhere(
    job: &Path,
    out: &Path,
    template: &Path,
    index: &Path,
    index_before: &Option<Vec<u8>>,
    points: &[(String, bool)],
    want: &Product,
) -> usize {
    let mut kills = 0;
    for (point, marker_may_exist) in points {
        copy_dir(template, out);
        restore_index(index_before, index);
        let mut c = finalize(job);
        c.env("COTFORGE_CRASH_AT", point);
        let o = c.output().expect("spawn");
        assert_eq!(
            o.status.signal(),
            Some(9),
            "finalize was not killed at {point}: {}{}",
            stdout(&o),
            stderr(&o)
        );
        kills += 1;
        if !marker_may_exist {
            // The completion marker is the last write: never there before it.
            assert!(
                !out.join("final/done.json").exists(),
                "final/done.json exists after a kill at {point}"
            );
        }
        ok(finalize(job));
        assert_same(
            &product(out, index),
            want,
            &format!("rerun after kill at {point}"),
        );
        assert!(out.join("final/done.json").exists());
        let v = cotforge(&["verify", out.to_str().expect("utf8")])
            .output()
            .expect("verify");
        assert!(v.status.success(), "verify after {point}: {}", stdout(&v));
    }
    kills
}

#[test]
fn finalize_killed_at_every_write_point_reruns_to_identical_bytes_across_nights() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    let index = d.join("dedup-index");
    let out1 = d.join("night1");
    let out2 = d.join("night2");
    let job1 = job(d, "night1", &out1, 7, &index);
    // Another job seed: night 2 makes some chains night 1 made and some new ones.
    let job2 = job(d, "night2", &out2, 8, &index);

    run_shards(&job1);
    run_shards(&job2);
    let t1 = d.join("night1-shards");
    let t2 = d.join("night2-shards");
    copy_dir(&out1, &t1);
    copy_dir(&out2, &t2);

    // Uninterrupted references, in the paths the killed runs use.
    let trace1 = d.join("trace1");
    let mut c = finalize(&job1);
    c.env("COTFORGE_CRASH_TRACE", &trace1);
    let o = ok(c);
    assert!(
        !chains_line(&o).contains("final: 0 chains"),
        "{}",
        stdout(&o)
    );
    let want1 = product(&out1, &index);
    let index1 = want1.index.clone();
    let trace2 = d.join("trace2");
    let mut c = finalize(&job2);
    c.env("COTFORGE_CRASH_TRACE", &trace2);
    let o = ok(c);
    let night2_line = chains_line(&o);
    let want2 = product(&out2, &index);
    assert!(want2.index.len() > index1.len(), "night 2 added nothing");
    assert!(
        !night2_line.contains("final: 0 chains") && !night2_line.contains(" 0 duplicates"),
        "night 2 should ship new chains and drop repeats of night 1: {night2_line}"
    );

    let points1 = write_points(&trace1);
    let points2 = write_points(&trace2);
    for must in [
        "final.chains:1",
        "export.file_written:1",
        "switch.exchanged:1",
        "export.card:1",
        "index.saved:1",
        "final.marker:1",
        "commit.before_rename:1",
    ] {
        assert!(
            points1.iter().any(|p| p.0 == must),
            "{must} not reached: {points1:?}"
        );
    }

    // Night 1, killed everywhere, each time from a fresh copy of its shards and no index.
    let k1 = kill_everywhere(&job1, &out1, &t1, &index, &None, &points1, &want1);
    // Night 2, killed everywhere, each time on night 1's index.
    let k2 = kill_everywhere(
        &job2,
        &out2,
        &t2,
        &index,
        &Some(index1.clone()),
        &points2,
        &want2,
    );
    assert!(k1 >= 40 && k2 >= 40, "only {k1} + {k2} write points");
    assert_eq!(product(&out2, &index).index, want2.index);

    // Rerunning night 1 after night 2 finished changes nothing: not night 1's
    // output, and not the index (night 2's entries stay).
    ok(finalize(&job1));
    assert_same(
        &product(&out1, &index),
        &Product {
            index: want2.index.clone(),
            finals: want1.finals.clone(),
            export: want1.export.clone(),
        },
        "night 1 rerun after night 2",
    );

    // Night 3 repeats night 2's job in a new directory: it ships nothing night 2 shipped.
    let out3 = d.join("night3");
    let job3 = job(d, "night3", &out3, 8, &index);
    run_shards(&job3);
    let o = ok(finalize(&job3));
    assert!(
        chains_line(&o).contains("final: 0 chains"),
        "night 3 shipped chains again: {}",
        chains_line(&o)
    );

    // A finalize killed after writing everything but the index, rerun into a
    // fresh output directory (the shards copied there), ships the same chains:
    // the index never holds chains whose output was not complete.
    copy_dir(&t1, &out1);
    std::fs::remove_file(&index).expect("rm index");
    let mut c = finalize(&job1);
    c.env("COTFORGE_CRASH_AT", "final.report:1");
    assert_eq!(c.output().expect("spawn").status.signal(), Some(9));
    assert!(
        !index.exists(),
        "the index was saved before the output was complete"
    );
    let fresh = d.join("night1-fresh");
    copy_dir(&t1, &fresh);
    let job_fresh = job(d, "night1-fresh", &fresh, 7, &index);
    ok(finalize(&job_fresh));
    assert_eq!(
        std::fs::read(fresh.join("final/chains.parquet")).expect("fresh"),
        want1.finals["chains.parquet"],
        "a rerun into a fresh directory rejected the night's own chains"
    );
}

#[test]
fn a_second_finalize_on_the_same_index_exits_naming_the_holder() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    let index = d.join("idx");
    let out = d.join("out");
    let j = job(d, "j", &out, 7, &index);
    run_shards(&j);
    // A finalize that holds the index lock for a while.
    let mut slow = finalize(&j);
    slow.env("COTFORGE_SLEEP_AT", "finalize.locked:3000");
    let mut child = slow.spawn().expect("spawn");
    let lock = d.join("idx.lock");
    let t0 = std::time::Instant::now();
    while !std::fs::read_to_string(&lock).is_ok_and(|s| s.contains("pid")) {
        assert!(
            t0.elapsed().as_secs() < 30,
            "the first finalize never locked the index"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // A second job sharing the index.
    let out2 = d.join("out2");
    let j2 = job(d, "j2", &out2, 8, &index);
    run_shards(&j2);
    let o = finalize(&j2).output().expect("spawn");
    assert_eq!(o.status.code(), Some(75), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the dedup index is locked by pid")
            && stderr(&o).contains(&format!("pid {}", child.id())),
        "{}",
        stderr(&o)
    );
    assert!(child.wait().expect("wait").success());
    ok(finalize(&j2));
    assert!(!lock.exists(), "the index lock is released");
}
