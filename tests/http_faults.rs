//! Faults between the HTTP engine and a real llama-server: 5xx / 429 bursts
//! are retried, a hung server times out, a server killed mid-run and
//! restarted lets the run complete or resume with nothing lost or duplicated.
#![cfg(feature = "llama")]

mod common;
mod http_support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cotforge::engine::generate::{sample_n, StopRule};
use cotforge::engine::http::HttpEngine;
use cotforge::engine::{
    Engine, EngineConfig, EngineError, EngineKind, HttpConfig, SamplingParams, StepRequest,
};
use cotforge::store::parquet_io::read_parquet;
use cotforge::store::schema::{batch_to_chains, batch_to_rejects};
use http_support::{http_job_head, start_server, Fault, LocalServer, Proxy};

fn cfg(url: String, model: &Path, retries: u32, timeout_s: f64) -> EngineConfig {
    EngineConfig {
        kind: EngineKind::Http,
        n_parallel: 4,
        http: HttpConfig {
            base_urls: vec![url],
            tokenizer: Some(model.to_path_buf()),
            retries,
            backoff_ms: 50,
            backoff_max_ms: 400,
            timeout_s,
            ..Default::default()
        },
        ..Default::default()
    }
}

#[test]
fn a_burst_of_5xx_and_429_is_retried() {
    let Some(model) = common::model_path() else {
        return;
    };
    let server = start_server(&model, 4);
    let proxy = Proxy::start(server.port);
    let mut e = HttpEngine::connect(&cfg(proxy.url(), &model, 6, 20.0)).unwrap();
    let prompt = e.tokenize("Name three colors:", true).unwrap();
    let before = e.http_stats().http_retries;
    proxy.queue(&[
        Fault::Status(503),
        Fault::Status(500),
        Fault::Status(502),
        Fault::Status(429),
        Fault::Status(429),
    ]);
    let rule = StopRule {
        max_tokens: 40,
        stop: vec![],
    };
    let out = sample_n(&mut e, &prompt, 3, SamplingParams::new(0.8, 0.95, 9), &rule).unwrap();
    assert_eq!(out.len(), 3);
    assert!(out.iter().all(|c| !c.tokens.is_empty()));
    assert_eq!(proxy.injected.load(Ordering::Relaxed), 5);
    let h = e.http_stats();
    assert!(h.http_retries - before >= 5, "{h:?}");
    assert_eq!(h.http_failures, 0, "{h:?}");
}

#[test]
fn a_hung_server_times_out_and_says_so() {
    let Some(model) = common::model_path() else {
        return;
    };
    let server = start_server(&model, 2);
    let proxy = Proxy::start(server.port);
    let mut e = HttpEngine::connect(&cfg(proxy.url(), &model, 1, 2.0)).unwrap();
    let prompt = e.tokenize("Hello", true).unwrap();
    // From now on connections are accepted and never answered.
    proxy.set_default(Fault::Hang);
    let s = e.new_sequence().unwrap();
    e.append(s, &prompt).unwrap();
    let t = Instant::now();
    let r = e.step(&[StepRequest {
        seq: s,
        sampling: SamplingParams::greedy(),
    }]);
    let took = t.elapsed();
    match r {
        Err(EngineError::Unavailable(m)) => assert!(m.contains(&proxy.url()), "{m}"),
        other => panic!("expected the run to stop, got {other:?}"),
    }
    // Two attempts of 2 s plus a short backoff, not forever.
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert!(took >= Duration::from_secs(2), "took {took:?}");
    let h = e.http_stats();
    assert!(h.http_retries >= 1 && h.servers_lost == 1, "{h:?}");
}

/// A marco_cot job over HTTP: 6 seeds, small budgets, the journal flushed per seed.
fn job(dir: &Path, name: &str, url: &str, model: &Path, retries: u32) -> PathBuf {
    let out = dir.join(format!("out-{name}"));
    let http = format!(
        "tokenizer = {:?}\nretries = {retries}\nbackoff_ms = 100\nbackoff_max_ms = 1000\ntimeout_s = 20\n",
        model.display().to_string()
    );
    let text = format!(
        r#"{head}
[store]
batch_seeds = 2
flush_every = 1

[[recipe]]
kind = "marco_cot"
seeds = [{seeds:?}]
limit = 6
[recipe.search]
max_rollouts = 2
expand_k = 2
max_tree_tokens = 300
max_thought_tokens = 120
answer_max_tokens = 16
"#,
        head = http_job_head(5, &out, 1, 4, url, &http),
        seeds = common::repo("data/seeds/gsm8k.parquet")
            .display()
            .to_string(),
    );
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

fn cotforge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cotforge"))
}

/// Wait until the shard's journal holds at least one finished seed.
fn wait_for_journal(out: &Path, child: &mut std::process::Child) {
    let t = Instant::now();
    loop {
        let grown = walkdir::WalkDir::new(out).into_iter().flatten().any(|e| {
            e.file_name().to_string_lossy().contains("journal")
                && e.metadata().is_ok_and(|m| m.len() > 200)
        });
        if grown {
            return;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("the run ended ({st}) before the fault could be injected");
        }
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "no progress in the journal"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Seed ids of the final chains and rejects; panics on a duplicated chain id.
/// Starts `cotforge run job` and kills `server` once the run's journal under
/// `out` has grown; returns the running child.
fn run_until_journal_then_kill(
    job: &Path,
    out: &Path,
    server: &mut LocalServer,
) -> std::process::Child {
    let mut child = cotforge()
        .args(["run", job.to_str().unwrap(), "--no-progress"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_journal(out, &mut child);
    server.kill();
    child
}

/// `what` (a run or rerun) succeeded, its output covers exactly the seeds
/// `want` and `cotforge verify` passes on it.
fn assert_complete(o: &std::process::Output, what: &str, out: &Path, want: &BTreeSet<String>) {
    assert!(
        o.status.success(),
        "{what} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(&covered(out), want);
    verify(out);
}

fn covered(out: &Path) -> BTreeSet<String> {
    let mut seeds = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for b in read_parquet(&out.join("final/chains.parquet")).unwrap() {
        for c in batch_to_chains(&b).unwrap() {
            assert!(ids.insert(c.id.clone()), "chain {} twice", c.id);
            seeds.insert(c.seed_id);
        }
    }
    for e in walkdir::WalkDir::new(out.join("shards"))
        .into_iter()
        .flatten()
    {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with("rejected") && n.ends_with(".parquet") {
            for b in read_parquet(e.path()).unwrap() {
                for r in batch_to_rejects(&b).unwrap() {
                    seeds.insert(r.seed_id);
                }
            }
        }
    }
    seeds
}

fn input_seeds(n: usize) -> BTreeSet<String> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/seeds/gsm8k.parquet");
    use cotforge::store::{Ingest, IngestOptions, IngestRow};
    let mut out = BTreeSet::new();
    for item in Ingest::open(&[p], IngestOptions::default()).unwrap() {
        let item = item.unwrap();
        if item.ordinal < n as u64 {
            out.insert(match item.row {
                IngestRow::Seed(s) => s.id,
                IngestRow::Reject(r) => r.seed_id,
            });
        }
    }
    out
}

fn verify(out: &Path) {
    let o = cotforge().arg("verify").arg(out).output().unwrap();
    assert!(
        o.status.success(),
        "verify failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn a_server_killed_mid_run_and_restarted_loses_and_duplicates_nothing() {
    let Some(model) = common::model_path() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_server(&model, 4);
    let want = input_seeds(6);

    // 1. Killed and back within the retry window: the run completes by itself.
    let j = job(dir.path(), "back", &server.url(), &model, 20);
    let out = dir.path().join("out-back");
    let child = run_until_journal_then_kill(&j, &out, &mut server);
    std::thread::sleep(Duration::from_secs(1));
    server.restart().unwrap();
    let o = child.wait_with_output().unwrap();
    assert_complete(&o, "run", &out, &want);

    // 2. Gone for longer than the retries: the run stops with a message, the
    //    journal keeps what was done, and a rerun completes the job.
    let j = job(dir.path(), "gone", &server.url(), &model, 1);
    let out = dir.path().join("out-gone");
    let child = run_until_journal_then_kill(&j, &out, &mut server);
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "the run went on without a server:\n{err}"
    );
    assert!(
        err.contains("no inference server answers") && err.contains("rerun"),
        "{err}"
    );
    assert!(!out.join("final/chains.parquet").exists());
    server.restart().unwrap();
    let o = cotforge()
        .args(["run", j.to_str().unwrap(), "--no-progress"])
        .output()
        .unwrap();
    assert_complete(&o, "rerun", &out, &want);
}
