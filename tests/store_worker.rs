//! Shard worker behaviour: one worker per shard, resume after a processor
//! failure without redoing work, completed shards left alone, tampering caught.

mod store_support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use cotforge::record::{Chain, Recipe, Reject, Seed};
use cotforge::store::worker::ShardState;
use cotforge::store::{
    run_shard, Ingest, IngestOptions, ProcessError, Processed, Processor, ShardOptions, ShardSpec,
    StoreError,
};
use store_support::*;

#[test]
fn second_worker_on_a_shard_exits_naming_the_holder() {
    let d = tempfile::tempdir().expect("tempdir");
    let seeds = d.path().join("seeds.parquet");
    write_seeds(&seeds, &synthetic_seeds(200));
    let reference = d.path().join("ref");
    assert!(run(worker(&seeds, &reference, 1, 2)).status.success());

    let out = d.path().join("out");
    let mut a = worker(&seeds, &out, 1, 2);
    a.env("COTFORGE_SLEEP_AT", "worker.processed:200")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let a = a.spawn().expect("spawn a");
    let pid = a.id();
    let lock = out.join("shards/instruction/lock-00001-of-00002.lock");
    let t0 = Instant::now();
    while !std::fs::read_to_string(&lock).is_ok_and(|s| s.contains(&format!("\"pid\":{pid}"))) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "worker A never took the lock"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let b = run(worker(&seeds, &out, 1, 2));
    assert_eq!(b.status.code(), Some(75), "{}", stderr(&b));
    assert!(
        stderr(&b).contains(&format!("shard is locked by pid {pid} on host")),
        "{}",
        stderr(&b)
    );
    let s = cli(&["status", out.to_str().expect("utf8")]);
    assert!(
        stdout(&s).contains(&format!("running (pid {pid}")),
        "{}",
        stdout(&s)
    );
    // Another shard is not blocked.
    assert!(run(worker(&seeds, &out, 0, 2)).status.success());

    let a = a.wait_with_output().expect("wait a");
    assert!(a.status.success(), "{}", stderr(&a));
    for f in [
        "shard-00001-of-00002.parquet",
        "rejected-00001-of-00002.parquet",
    ] {
        let p = format!("shards/instruction/{f}");
        assert_eq!(
            std::fs::read(out.join(&p)).expect("out"),
            std::fs::read(reference.join(&p)).expect("ref"),
            "{f}"
        );
    }
    assert!(!lock.exists(), "lock released");
    assert!(cli(&["verify", out.to_str().expect("utf8")])
        .status
        .success());
}

fn chain_for(seed: &Seed) -> Processed {
    let n = seed.prompt.len();
    if n.is_multiple_of(3) {
        return Processed {
            accepted: Vec::new(),
            rejected: vec![Reject {
                seed_id: seed.id.clone(),
                stage: cotforge::record::Stage::FilterReward,
                reason: format!("length {n} divisible by 3"),
                row: "{}".into(),
                ..Default::default()
            }],
        };
    }
    Processed {
        accepted: (0..(n % 2 + 1))
            .map(|k| Chain {
                id: format!("{}-{k}", seed.id),
                seed_id: seed.id.clone(),
                prompt: seed.prompt.clone(),
                reasoning: seed.prompt.to_uppercase(),
                reward: (n % 97) as f64 / 97.0,
                step_confidences: vec![0.5; k + 1],
                created_at: 42,
                ..Default::default()
            })
            .collect(),
        rejected: Vec::new(),
    }
}

#[test]
fn processor_failure_resumes_without_redoing_work() {
    let d = tempfile::tempdir().expect("tempdir");
    let seeds = d.path().join("seeds.parquet");
    write_seeds(&seeds, &synthetic_seeds(120));
    let shard = ShardSpec { index: 0, count: 1 };
    let ingest = || Ingest::open(&[&seeds], IngestOptions::default()).expect("open");
    let opts = |out: &std::path::Path| {
        let mut o = ShardOptions::new(out, Recipe::Instruction, shard);
        o.flush_every = 5;
        o.batch_seeds = 4;
        o.write.row_group_rows = 7;
        o.fingerprint = "fp".into();
        o
    };

    let clean = d.path().join("clean");
    let mut calls = 0;
    let r = run_shard(&opts(&clean), ingest(), &mut |s: &Seed| {
        calls += 1;
        Ok(chain_for(s))
    })
    .expect("clean run");
    assert_eq!((r.state, r.seeds, calls), (ShardState::Completed, 120, 120));

    let out = d.path().join("resumed");
    let mut calls = 0;
    let e = run_shard(&opts(&out), ingest(), &mut |s: &Seed| {
        calls += 1;
        if calls == 50 {
            return Err("engine fell over".to_string());
        }
        Ok(chain_for(s))
    })
    .expect_err("must fail");
    assert!(e.to_string().contains("engine fell over"));
    // 48 seeds journaled (12 whole batches of 4); the failing batch is redone.
    let mut calls = 0;
    let r = run_shard(&opts(&out), ingest(), &mut |s: &Seed| {
        calls += 1;
        Ok(chain_for(s))
    })
    .expect("resume");
    assert_eq!((r.state, r.resumed, calls), (ShardState::Completed, 48, 72));
    assert_eq!(tree(&out), tree(&clean));

    // Done shards are not redone.
    let mut calls = 0;
    let r = run_shard(&opts(&out), ingest(), &mut |s: &Seed| {
        calls += 1;
        Ok(chain_for(s))
    })
    .expect("again");
    assert_eq!((r.state, calls), (ShardState::AlreadyDone, 0));

    // A journal from another job is refused.
    let other = d.path().join("other");
    let _ = run_shard(&opts(&other), ingest(), &mut |_: &Seed| {
        Err("stop".to_string())
    });
    let mut o = opts(&other);
    o.fingerprint = "different".into();
    let e = run_shard(&o, ingest(), &mut |s: &Seed| Ok(chain_for(s))).expect_err("mismatch");
    assert!(e.to_string().contains("belongs to another job"), "{e}");
}

/// A processor that drops the last seed of its third batch.
struct Short(usize);

impl Processor for Short {
    fn process_batch(&mut self, seeds: &[Seed]) -> Result<Vec<Processed>, ProcessError> {
        self.0 += 1;
        let n = if self.0 == 3 {
            seeds.len() - 1
        } else {
            seeds.len()
        };
        Ok(seeds[..n].iter().map(chain_for).collect())
    }
}

#[test]
fn a_short_batch_is_an_error_and_loses_nothing() {
    let d = tempfile::tempdir().expect("tempdir");
    let (seeds, o) = small_shard(d.path());
    let ingest = || Ingest::open(&[&seeds], IngestOptions::default()).expect("open");
    let e = run_shard(&o, ingest(), &mut Short(0)).expect_err("a short batch must fail");
    assert!(
        matches!(
            &e,
            StoreError::Processor {
                error: ProcessError::Short { got: 3, want: 4 },
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("input rows 8..=11"), "{e}");
    // The two whole batches before it are journaled: the rerun resumes after them.
    let r = run_shard(&o, ingest(), &mut Short(10)).expect("resume");
    assert_eq!((r.seeds, r.resumed), (20, 8), "{r:?}");
    let mut clean = o.clone();
    clean.out_dir = d.path().join("clean");
    run_shard(&clean, ingest(), &mut |s: &Seed| Ok(chain_for(s))).expect("clean");
    assert_eq!(tree(&o.out_dir), tree(&clean.out_dir));
}

#[test]
fn verify_and_status_catch_tampering() {
    let d = tempfile::tempdir().expect("tempdir");
    let seeds = d.path().join("seeds.parquet");
    write_seeds(&seeds, &synthetic_seeds(60));
    let out = d.path().join("out");
    for i in 0..2 {
        assert!(run(worker(&seeds, &out, i, 3)).status.success());
    }
    let o = out.to_str().expect("utf8");
    let s = cli(&["status", o]);
    assert!(
        stdout(&s).contains("3 shards (2 done, 0 running, 1 pending, 0 corrupt)"),
        "{}",
        stdout(&s)
    );
    assert!(cli(&["verify", o]).status.success());

    let victim = out.join("shards/instruction/rejected-00001-of-00003.parquet");
    let mut b = std::fs::read(&victim).expect("read");
    b[10] ^= 1;
    std::fs::write(&victim, &b).expect("write");
    let v = cli(&["verify", o]);
    assert_eq!(v.status.code(), Some(2));
    assert!(
        stdout(&v).contains("rejected-00001-of-00003.parquet: blake3"),
        "{}",
        stdout(&v)
    );

    b.truncate(b.len() - 1);
    std::fs::write(&victim, &b).expect("write");
    let s = cli(&["status", o]);
    assert!(stdout(&s).contains("corrupt"), "{}", stdout(&s));
    // The worker refuses to call a damaged done shard complete.
    let w = run(worker(&seeds, &out, 1, 3));
    assert!(!w.status.success());
    assert!(
        stderr(&w).contains("run `cotforge verify`"),
        "{}",
        stderr(&w)
    );
}
