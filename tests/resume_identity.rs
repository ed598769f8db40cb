//! Resume identity: a rerun resumes when what determines the output is
//! unchanged (a whitespace, comment or key-order edit of the job file, or a
//! change of journal cadence or threads), and is refused with a message
//! naming what changed otherwise (settings, seed bytes, model). Finalize
//! refuses shards made under two configurations. A row journaled twice is
//! written once.

mod store_support;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cotforge::record::{Chain, Recipe, Seed};
use cotforge::store::fingerprint::Fingerprint;
use cotforge::store::journal::{Journal, JournalEntry, JournalHeader, JOURNAL_FORMAT};
use cotforge::store::manifest::ShardPaths;
use cotforge::store::parquet_io::read_parquet;
use cotforge::store::schema::batch_to_chains;
use cotforge::store::{run_shard, Ingest, IngestOptions, Processed, ShardOptions, ShardSpec};
use store_support::{bin, scripted_job, stderr, synthetic_seeds, tree, write_seeds};

fn cotforge(args: &[&str], crash: Option<&str>) -> Output {
    let mut c = Command::new(bin());
    c.args(args)
        .env("COTFORGE_LOG", "error")
        .env_remove("COTFORGE_CRASH_AT")
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX");
    if let Some(p) = crash {
        c.env("COTFORGE_CRASH_AT", p);
    }
    c.output().expect("spawn")
}

fn final_bytes(out: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = ["final/chains.parquet", "final/rejected-dedup.parquet"]
        .iter()
        .map(|f| (f.to_string(), std::fs::read(out.join(f)).expect("final")))
        .collect();
    v.extend(tree(&out.join("export")));
    v
}

#[test]
fn whitespace_comment_and_key_order_edits_still_resume() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    let reference = d.join("ref");
    let job = scripted_job(d, "ref", &reference, &[]);
    let o = cotforge(&["run", job.to_str().expect("utf8"), "--no-progress"], None);
    assert!(o.status.success(), "{}", stderr(&o));

    let out = d.join("out");
    let job = scripted_job(d, "job", &out, &[]);
    // Killed in the middle of the second shard of the first recipe.
    let o = cotforge(
        &["run", job.to_str().expect("utf8"), "--no-progress"],
        Some("worker.processed:3"),
    );
    assert_eq!(o.status.signal(), Some(9));
    // The same job, written differently; journal cadence and threads changed.
    scripted_job(
        d,
        "job",
        &out,
        &[
            (
                "seed = 7\n",
                "# the night's job\n\n   seed   =   7   # root of every choice\n",
            ),
            (
                "n_parallel = 8\nn_seq_max = 64\n",
                "n_seq_max = 64\n\n\nn_parallel = 8\nthreads = 1\n",
            ),
            (
                "flush_every = 4\n",
                "flush_every = 9\nflush_seconds = 0.5\n",
            ),
        ],
    );
    let o = cotforge(&["run", job.to_str().expect("utf8"), "--no-progress"], None);
    assert!(
        o.status.success(),
        "the edited job did not resume: {}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("AlreadyDone"), "{}", stderr(&o));
    assert!(
        final_bytes(&out) == final_bytes(&reference),
        "output differs from an uninterrupted run"
    );
}

#[test]
fn finalize_refuses_shards_of_two_configurations() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    let out = d.join("out");
    let run_shard_cli = |job: &Path, i: u32| {
        let o = cotforge(
            &[
                "run",
                job.to_str().expect("utf8"),
                "--no-progress",
                "--shard-index",
                &i.to_string(),
            ],
            None,
        );
        assert!(o.status.success(), "{}", stderr(&o));
    };
    let a = scripted_job(d, "job", &out, &[]);
    run_shard_cli(&a, 0);
    run_shard_cli(&a, 1);
    // The job file is edited while the array runs.
    let b = scripted_job(d, "job", &out, &[("n_ctx = 16384", "n_ctx = 8192")]);
    run_shard_cli(&b, 2);
    run_shard_cli(&b, 3);
    let o = cotforge(&["finalize", b.to_str().expect("utf8")], None);
    assert!(!o.status.success(), "finalize merged two configurations");
    let e = stderr(&o);
    assert!(
        e.contains("done-00000-of-00004.json: this shard was made by another configuration")
            && e.contains("engine.n_ctx: 16384 -> 8192"),
        "{e}"
    );
    assert!(!out.join("final/chains.parquet").exists());
}

fn seeds(d: &Path, n: usize) -> PathBuf {
    let p = d.join("seeds.parquet");
    write_seeds(&p, &synthetic_seeds(n));
    p
}

fn chain_of(s: &Seed) -> Processed {
    Processed {
        accepted: vec![Chain {
            id: format!("c-{}", s.id),
            seed_id: s.id.clone(),
            prompt: s.prompt.clone(),
            reward: 0.5,
            ..Default::default()
        }],
        rejected: Vec::new(),
    }
}

fn fp(model: &str) -> Fingerprint {
    Fingerprint::new(
        serde_json::json!({"recipe": "test"}),
        Vec::new(),
        model.to_string(),
    )
}

#[test]
fn a_changed_model_is_named_for_done_and_for_journaled_shards() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    let s = seeds(d, 10);
    let ingest = || Ingest::open(&[&s], IngestOptions::default()).expect("open");
    let opts = |out: &Path, model: &str| {
        let mut o = ShardOptions::new(out, Recipe::Instruction, ShardSpec::single());
        o.fingerprint = fp(model);
        o.batch_seeds = 2;
        o.flush_every = 1;
        o
    };
    let done = d.join("done");
    run_shard(&opts(&done, "m1"), ingest(), &mut |s: &Seed| {
        Ok(chain_of(s))
    })
    .expect("run");
    let e = run_shard(&opts(&done, "m2"), ingest(), &mut |s: &Seed| {
        Ok(chain_of(s))
    })
    .expect_err("another model");
    let m = e.to_string();
    assert!(
        m.contains(
            "this shard was made by another configuration: the model changed (blake3 m1 -> m2)"
        ) && m.contains("give this job a new `out` directory"),
        "{m}"
    );

    let half = d.join("half");
    let mut n = 0;
    let _ = run_shard(&opts(&half, "m1"), ingest(), &mut |s: &Seed| {
        n += 1;
        if n > 5 {
            return Err("stop".into());
        }
        Ok(chain_of(s))
    });
    let e = run_shard(&opts(&half, "m2"), ingest(), &mut |s: &Seed| {
        Ok(chain_of(s))
    })
    .expect_err("another model");
    assert!(
        e.to_string()
            .contains("belongs to another job: the model changed (blake3 m1 -> m2)"),
        "{e}"
    );
    // With the same fingerprint it resumes.
    let r = run_shard(&opts(&half, "m1"), ingest(), &mut |s: &Seed| {
        Ok(chain_of(s))
    })
    .expect("resume");
    assert!(r.resumed > 0);
}

#[test]
fn a_row_journaled_twice_is_written_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    let s = seeds(d, 4);
    let out = d.join("out");
    let mut opts = ShardOptions::new(&out, Recipe::Instruction, ShardSpec::single());
    opts.fingerprint = fp("m");
    let paths = ShardPaths::new(&out, "instruction", ShardSpec::single());
    std::fs::create_dir_all(&paths.dir).expect("mkdir");
    // A journal where a flush was retried after its fsync had reached the disk.
    let header = JournalHeader {
        format: JOURNAL_FORMAT.into(),
        kind: "instruction".into(),
        shard: ShardSpec::single(),
        fingerprint: fp("m"),
    };
    let all: Vec<Seed> = synthetic_seeds(4);
    {
        let (mut j, _) = Journal::open(
            &paths.journal(),
            &header,
            100,
            std::time::Duration::from_secs(60),
        )
        .expect("journal");
        for o in [0usize, 1, 2, 1, 2, 3] {
            let p = chain_of(&all[o]);
            j.append(&JournalEntry {
                ordinal: o as u64,
                seed_id: all[o].id.clone(),
                accepted: p.accepted,
                rejected: p.rejected,
            })
            .expect("append");
        }
        j.flush().expect("flush");
    }
    let ingest = Ingest::open(&[&s], IngestOptions::default()).expect("open");
    let mut calls = 0;
    let r = run_shard(&opts, ingest, &mut |s: &Seed| {
        calls += 1;
        Ok(chain_of(s))
    })
    .expect("finish");
    assert_eq!((calls, r.seeds, r.accepted), (0, 4, 4), "{r:?}");
    let rows = batch_to_chains(&read_parquet(&paths.chains()).expect("read")[0]).expect("rows");
    let ids: Vec<&str> = rows.iter().map(|c| c.seed_id.as_str()).collect();
    assert_eq!(ids, ["s0000", "s0001", "s0002", "s0003"]);
}
