//! Kill test: shard workers are SIGKILLed at many points (inside journal
//! appends, inside shard commits, at random moments) and rerun until done.
//! The result must be byte-identical to an uninterrupted run, hold every
//! input row exactly once, and pass `cotforge verify`.

mod store_support;

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use cotforge::record::Seed;
use store_support::*;

const SHARDS: u32 = 4;

fn job_seeds() -> Vec<Seed> {
    let mut s = synthetic_seeds(300);
    // Rows ingest must reject: empty prompts and duplicate ids.
    for i in 0..4 {
        s.push(Seed {
            id: format!("empty{i}"),
            prompt: "  ".into(),
            ..Default::default()
        });
        let mut d = s[i * 50].clone();
        d.prompt.push_str(" (again)");
        s.push(d);
    }
    s
}

/// Each shard's sequence of crash points; every one is reached when its run starts
/// (journal points early in a shard's life, commit points once its input is done).
const PLAN: &[&[&str]] = &[
    &[
        "lock.acquired:1",
        "journal.header:1",
        "journal.mid_frame:2",
        "journal.before_fsync:3",
        "worker.processed:2",
        "commit.batch_written:1",
        "commit.before_fsync:1",
        "commit.before_rename:2",
        "marker.before:1",
    ],
    &[
        "journal.mid_frame:1",
        "journal.after_fsync:2",
        "journal.mid_frame:5",
        "commit.before_rename:1",
        "commit.before_dirsync:2",
        "manifest.committed:1",
        "marker.committed:1",
    ],
    &[
        "worker.processed:1",
        "journal.before_fsync:1",
        "journal.mid_frame:3",
        "commit.done:1",
        "commit.batch_written:2",
        "commit.before_fsync:3",
        "manifest.committed:1",
    ],
    &[
        "journal.after_fsync:1",
        "journal.mid_frame:4",
        "commit.before_dirsync:1",
        "commit.done:3",
        "commit.before_rename:4",
    ],
];

#[test]
fn killed_and_resumed_job_equals_uninterrupted_job() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let seeds_path = tmp.path().join("seeds.parquet");
    let seeds = job_seeds();
    write_seeds(&seeds_path, &seeds);

    // Reference: every shard uninterrupted.
    let reference = tmp.path().join("ref");
    for i in 0..SHARDS {
        let o = run(worker(&seeds_path, &reference, i, SHARDS));
        assert!(o.status.success(), "reference shard {i}: {}", stderr(&o));
    }

    let out = tmp.path().join("killed");
    let mut kills: Vec<String> = Vec::new();
    // 1. Named crash points.
    for (shard, plan) in PLAN.iter().enumerate() {
        for point in plan.iter() {
            let mut c = worker(&seeds_path, &out, shard as u32, SHARDS);
            c.env("COTFORGE_CRASH_AT", point);
            let o = run(c);
            assert_eq!(
                o.status.signal(),
                Some(libc_sigkill()),
                "shard {shard} at {point} was not killed (status {:?}): {}",
                o.status,
                stderr(&o)
            );
            kills.push(format!("{shard}:{point}"));
            let v = cli(&["verify", out.to_str().expect("utf8")]);
            assert!(
                v.status.success(),
                "verify after kill at {point}: {}",
                stdout(&v)
            );
        }
    }
    // 2. Kills after pseudo-random delays, on a fresh job, with slowed processing.
    let out2 = tmp.path().join("killed-random");
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut random_kills = 0;
    for round in 0..6 {
        let shard = round % SHARDS;
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let delay = 30 + rng % 250;
        let mut c = worker(&seeds_path, &out2, shard, SHARDS);
        c.env("COTFORGE_SLEEP_AT", "worker.processed:40");
        let mut child = c.spawn().expect("spawn");
        std::thread::sleep(Duration::from_millis(delay));
        if child.try_wait().expect("try_wait").is_none() {
            child.kill().expect("kill");
            random_kills += 1;
        }
        child.wait().expect("wait");
    }
    kills.push(format!("{random_kills} random"));

    // Rerun each shard until done.
    for dir in [&out, &out2] {
        for i in 0..SHARDS {
            let o = run(worker(&seeds_path, dir, i, SHARDS));
            assert!(o.status.success(), "final run of shard {i}: {}", stderr(&o));
        }
        // A done shard is not redone.
        let o = run(worker(&seeds_path, dir, 0, SHARDS));
        assert!(stdout(&o).contains("AlreadyDone"), "{}", stdout(&o));
    }

    let named = kills.len() - 1;
    assert!(named >= 20, "only {named} named kills: {kills:?}");
    let want = tree(&reference);
    assert!(want
        .keys()
        .any(|k| k.ends_with("shard-00003-of-00004.parquet")));
    for dir in [&out, &out2] {
        let got = tree(dir);
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "file sets differ"
        );
        for (k, v) in &want {
            assert!(got[k] == *v, "{k} differs from the uninterrupted run");
        }
        let v = cli(&["verify", dir.to_str().expect("utf8")]);
        assert!(v.status.success(), "{}", stdout(&v));
        let s = cli(&["status", dir.to_str().expect("utf8")]);
        assert!(stdout(&s).contains("4 done"), "{}", stdout(&s));
    }

    // Every input row exactly once across accepted and rejected.
    let (acc, rej) = output_seed_ids(&out, "instruction");
    assert!(
        !acc.is_empty() && !rej.is_empty(),
        "need both kinds of rows"
    );
    let mut got: Vec<String> = acc.into_iter().chain(rej).collect();
    got.sort();
    let mut input: Vec<String> = seeds.iter().map(|s| s.id.clone()).collect();
    input.sort();
    assert_eq!(got, input);
}

fn libc_sigkill() -> i32 {
    9
}
