//! A full disk during a shard commit, during finalize and during the export,
//! and `status` on a read-only mount, on a small tmpfs each test mounts.
//! Each failure is a clear error naming the file, leaves nothing corrupt
//! (no temporary files, no half-written output, the old export intact), and
//! the rerun completes once space is back.
//!
//! Mounting needs root or CAP_SYS_ADMIN (CI runs as root). Where mounting is
//! impossible the tests say so on stderr and pass without checking anything.

mod store_support;

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use store_support::{
    bin, cli, run, scripted_job, stderr, stdout, synthetic_seeds, tree, worker, write_seeds,
};

/// A tmpfs mounted for one test; unmounted on drop.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(parent: &Path, name: &str, size: &str) -> Option<Self> {
        let dir = parent.join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let o = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(&dir)
            .output();
        match o {
            Ok(o) if o.status.success() => Some(Self { dir }),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {}",
                    stderr(&o).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount(8): {e}");
                None
            }
        }
    }

    fn remount(&self, opts: &str) {
        let o = Command::new("mount")
            .args(["-o", &format!("remount,{opts}")])
            .arg(&self.dir)
            .output()
            .expect("mount");
        assert!(o.status.success(), "remount {opts}: {}", stderr(&o));
    }

    /// Fill the file system, then give back `room` bytes.
    fn fill(&self, room: u64) -> PathBuf {
        let p = self.dir.join("filler");
        let mut f = std::fs::File::create(&p).expect("filler");
        let chunk = vec![0x5au8; 1 << 16];
        let mut n = 0u64;
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(k) => n += k as u64,
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
        let _ = f.flush();
        f.set_len(n.saturating_sub(room)).expect("truncate filler");
        p
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).output();
    }
}

/// The shard files of `out` are byte-identical to those of `reference`.
fn same_shards(out: &Path, reference: &Path) {
    let (got, want) = (tree(&out.join("shards")), tree(&reference.join("shards")));
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (k, v) in &want {
        assert!(got[k] == *v, "{k} differs from a run on an ample disk");
    }
}

/// Files whose names mark a temporary or half-written output.
fn leftovers(dir: &Path) -> Vec<String> {
    tree(dir)
        .into_keys()
        .filter(|k| k.ends_with(".tmp") || k.contains(".data.new") || k.contains(".data.old"))
        .collect()
}

fn is_disk_full_error(o: &Output, file: &str) -> Result<(), String> {
    let e = stderr(o);
    if o.status.success() {
        return Err("succeeded on a full disk".into());
    }
    if o.status.code() == Some(101) || e.contains("panicked") {
        return Err(format!("panicked: {e}"));
    }
    if !(e.contains("no space left on the device") && e.contains(file)) {
        return Err(format!("not a clear full-disk error naming {file}: {e}"));
    }
    if !e.contains("free space and rerun") {
        return Err(format!("does not say what to do: {e}"));
    }
    eprintln!("as expected: {}", e.trim());
    Ok(())
}

/// 1500 synthetic seeds in `dir` and the output of one worker over them on
/// an ample disk, to compare with; returns (seeds, reference output).
fn seeds_and_reference(dir: &Path) -> (PathBuf, PathBuf) {
    let seeds = dir.join("seeds.parquet");
    write_seeds(&seeds, &synthetic_seeds(1500));
    let reference = dir.join("ref");
    let o = run(worker(&seeds, &reference, 0, 1));
    assert!(o.status.success(), "{}", stderr(&o));
    (seeds, reference)
}

#[test]
fn full_disk_during_a_shard_commit() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(fs) = Tmpfs::mount(tmp.path(), "mnt", "8m") else {
        return;
    };
    let (seeds, reference) = seeds_and_reference(tmp.path());

    let out = fs.dir.join("out");
    // Journal every row, then die just before the shard files are committed.
    let mut c = worker(&seeds, &out, 0, 1);
    c.env("COTFORGE_CRASH_AT", "commit.batch_written:1");
    assert_eq!(run(c).status.signal(), Some(9));
    let journal = out.join("shards/instruction/journal-00000-of-00001.log");
    let journal_bytes = std::fs::read(&journal).expect("journal");
    // Room for the lock and lease, not for the shard file.
    let filler = fs.fill(24 << 10);
    let o = run(worker(&seeds, &out, 0, 1));
    if let Err(e) = is_disk_full_error(&o, "shard-00000-of-00001.parquet") {
        panic!("{e}");
    }
    assert!(leftovers(&out).is_empty(), "{:?}", leftovers(&out));
    assert!(!out
        .join("shards/instruction/done-00000-of-00001.json")
        .exists());
    assert_eq!(std::fs::read(&journal).expect("journal"), journal_bytes);
    let v = cli(&["verify", out.to_str().expect("utf8")]);
    assert!(v.status.success(), "{}", stdout(&v));

    std::fs::remove_file(filler).expect("free");
    let o = run(worker(&seeds, &out, 0, 1));
    assert!(o.status.success(), "{}", stderr(&o));
    same_shards(&out, &reference);
}

fn cotforge(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env("COTFORGE_LOG", "error")
        .env_remove("COTFORGE_CRASH_AT")
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX")
        .output()
        .expect("spawn")
}

fn shards(job: &Path) {
    for i in 0..4 {
        let o = cotforge(&[
            "run",
            job.to_str().expect("utf8"),
            "--no-progress",
            "--shard-index",
            &i.to_string(),
            "--num-shards",
            "4",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
}

/// The scripted job `job` in `dir` writing to `out`, with its dedup index on
/// the mount `fs`, its shards run; returns (job file, index path).
fn sharded_job_with_index_on(fs: &Tmpfs, dir: &Path, out: &Path) -> (PathBuf, PathBuf) {
    let index = fs.dir.join("dedup-index");
    let idx = format!(
        "[dedup]\nenabled = true\nindex = {:?}\n",
        index.display().to_string()
    );
    let job = scripted_job(dir, "job", out, &[("[dedup]\nenabled = true\n", &idx)]);
    shards(&job);
    (job, index)
}

fn finalize(job: &Path) -> Output {
    cotforge(&["finalize", job.to_str().expect("utf8")])
}

#[test]
fn full_disk_during_finalize() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(fs) = Tmpfs::mount(tmp.path(), "mnt", "8m") else {
        return;
    };
    let reference_out = tmp.path().join("ref");
    let reference = scripted_job(tmp.path(), "ref", &reference_out, &[]);
    let o = cotforge(&["run", reference.to_str().expect("utf8"), "--no-progress"]);
    assert!(o.status.success(), "{}", stderr(&o));

    let out = fs.dir.join("out");
    let (job, index) = sharded_job_with_index_on(&fs, tmp.path(), &out);
    let filler = fs.fill(24 << 10);
    let o = finalize(&job);
    if let Err(e) = is_disk_full_error(&o, "final/chains.parquet") {
        panic!("{e}");
    }
    assert!(leftovers(&out).is_empty(), "{:?}", leftovers(&out));
    assert!(
        !out.join("final/done.json").exists(),
        "marked done on a full disk"
    );
    assert!(!out.join("final/chains.parquet").exists());
    assert!(
        !index.exists(),
        "the index was saved before the output was complete"
    );

    std::fs::remove_file(filler).expect("free");
    let o = finalize(&job);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.join("final/done.json").exists() && index.exists());
    for f in ["final/chains.parquet", "final/rejected-dedup.parquet"] {
        assert!(
            std::fs::read(out.join(f)).expect("got")
                == std::fs::read(reference_out.join(f)).expect("ref"),
            "{f} differs from a run on an ample disk"
        );
    }
    assert_eq!(
        tree(&out.join("export")),
        tree(&reference_out.join("export"))
    );
}

#[test]
fn full_disk_during_the_export_keeps_the_previous_export() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(fs) = Tmpfs::mount(tmp.path(), "mnt", "8m") else {
        return;
    };
    let export = fs.dir.join("export");
    let out = tmp.path().join("out");
    let to = format!(
        "[export]\nenabled = true\nto = {:?}\n",
        export.display().to_string()
    );
    let job = scripted_job(
        tmp.path(),
        "job",
        &out,
        &[("[export]\nenabled = true\n", &to)],
    );
    let o = cotforge(&["run", job.to_str().expect("utf8"), "--no-progress"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let first = tree(&export);
    assert!(
        first.keys().any(|k| k.starts_with("data/train-")),
        "{:?}",
        first.keys()
    );

    // Another format, on a full disk: the new set cannot be written.
    let job2 = scripted_job(
        tmp.path(),
        "job",
        &out,
        &[
            ("[export]\nenabled = true\n", &to),
            ("format = \"messages\"", "format = \"prompt-completion\""),
        ],
    );
    let filler = fs.fill(0);
    let o = cotforge(&["finalize", job2.to_str().expect("utf8")]);
    if let Err(e) = is_disk_full_error(&o, "export/data/train-00000-of-00001.parquet") {
        panic!("{e}");
    }
    assert!(leftovers(&export).is_empty(), "{:?}", leftovers(&export));
    let mut now = tree(&export);
    now.remove("filler");
    assert!(
        now == first,
        "the previous export was changed by the failed one"
    );

    std::fs::remove_file(filler).expect("free");
    let o = cotforge(&["finalize", job2.to_str().expect("utf8")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let second = tree(&export);
    assert_eq!(
        second.keys().collect::<Vec<_>>(),
        first.keys().collect::<Vec<_>>()
    );
    assert!(second != first, "the new export was not written");
    assert!(
        String::from_utf8_lossy(&second["README.md"]).contains("prompt-completion"),
        "the card is not the new one"
    );
}

#[test]
fn status_reads_a_read_only_mount() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(fs) = Tmpfs::mount(tmp.path(), "mnt", "16m") else {
        return;
    };
    let seeds = tmp.path().join("seeds.parquet");
    write_seeds(&seeds, &synthetic_seeds(200));
    let out = fs.dir.join("out");
    assert!(run(worker(&seeds, &out, 0, 2)).status.success());
    // Shard 1 killed mid-run: its lock file, lease and journal stay behind.
    let mut c = worker(&seeds, &out, 1, 2);
    c.env("COTFORGE_CRASH_AT", "worker.processed:3");
    assert_eq!(run(c).status.signal(), Some(9));
    assert!(out
        .join("shards/instruction/lock-00001-of-00002.lock")
        .exists());
    let before = tree(&out);
    fs.remount("ro");
    let s = cli(&["status", out.to_str().expect("utf8")]);
    assert!(
        s.status.success(),
        "status failed on a read-only mount: {}",
        stderr(&s)
    );
    assert!(
        stdout(&s).contains("2 shards (1 done, 0 running, 1 pending, 0 corrupt)"),
        "{}",
        stdout(&s)
    );
    let v = cli(&["verify", out.to_str().expect("utf8")]);
    assert!(
        v.status.success(),
        "verify failed on a read-only mount: {}",
        stdout(&v)
    );
    fs.remount("rw");
    assert!(tree(&out) == before, "status or verify changed the output");
}

#[test]
fn full_disk_while_saving_the_dedup_index() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(fs) = Tmpfs::mount(tmp.path(), "mnt", "8m") else {
        return;
    };
    let out = tmp.path().join("out");
    let (job, index) = sharded_job_with_index_on(&fs, tmp.path(), &out);
    // Room for the index's lock and lease, not for the index.
    let filler = fs.fill(16 << 10);
    let o = finalize(&job);
    if let Err(e) = is_disk_full_error(&o, "mnt/dedup-index: no space") {
        panic!("{e}");
    }
    assert!(leftovers(&fs.dir).is_empty(), "{:?}", leftovers(&fs.dir));
    assert!(!index.exists());
    assert!(
        !out.join("final/done.json").exists(),
        "marked done without its index"
    );
    let first = tree(&out.join("final"));

    std::fs::remove_file(filler).expect("free");
    let o = finalize(&job);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(index.exists() && out.join("final/done.json").exists());
    let done = tree(&out.join("final"));
    for (k, v) in &first {
        assert!(
            done[k] == *v,
            "final/{k} changed between the failed run and the rerun"
        );
    }
}

#[test]
fn full_disk_during_a_journal_flush() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(fs) = Tmpfs::mount(tmp.path(), "mnt", "8m") else {
        return;
    };
    let (seeds, reference) = seeds_and_reference(tmp.path());
    let out = fs.dir.join("out");
    let filler = fs.fill(48 << 10);
    let o = run(worker(&seeds, &out, 0, 1));
    if let Err(e) = is_disk_full_error(&o, "journal-00000-of-00001.log") {
        panic!("{e}");
    }
    // What reached the journal is whole frames only: it parses to its end.
    let j = out.join("shards/instruction/journal-00000-of-00001.log");
    let bytes = std::fs::read(&j).expect("journal");
    let (_, valid) = cotforge::store::journal::parse_frames(&bytes);
    assert_eq!(valid, bytes.len(), "a failed flush left a partial frame");
    std::fs::remove_file(filler).expect("free");
    let o = run(worker(&seeds, &out, 0, 1));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(" resumed)") && !stdout(&o).contains("(0 resumed)"),
        "the journaled rows were not kept: {}",
        stdout(&o)
    );
    same_shards(&out, &reference);
}
