//! Helpers shared by the store integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{Field, Schema};
use cotforge::record::{Recipe, Seed};
use cotforge::store::parquet_io::{read_parquet, write_parquet, WriteOptions};
use cotforge::store::schema::{batch_to_chains, batch_to_rejects, seeds_schema, seeds_to_batch};
use cotforge::store::{ShardOptions, ShardSpec};

fn has_shard_worker(p: &Path) -> bool {
    Command::new(p)
        .args(["shard-worker", "--help"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// The cotforge binary, copied once to a private path. Worktrees share
/// CARGO_TARGET_DIR, so the uplifted `target/debug/cotforge` may be another
/// worktree's build; then the newest `deps/cotforge-*` that has the hidden
/// `shard-worker` command is used (in a single checkout, CI, it is the first).
pub fn bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let src = PathBuf::from(env!("CARGO_BIN_EXE_cotforge"));
        let mut candidates = vec![src.clone()];
        if let Some(deps) = src.parent().map(|d| d.join("deps")) {
            let mut found: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&deps)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    let n = p
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    n.starts_with("cotforge-") && !n.contains('.')
                })
                .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
                .collect();
            found.sort();
            candidates.extend(found.into_iter().rev().map(|x| x.1));
        }
        let dir = std::env::temp_dir().join(format!("cotforge-store-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let dst = dir.join("cotforge");
        for c in candidates {
            if std::fs::copy(&c, &dst).is_ok() && has_shard_worker(&dst) {
                return dst;
            }
        }
        panic!(
            "no cotforge binary with the shard-worker command near {}",
            src.display()
        );
    })
    .clone()
}

const WORDS: &[&str] = &[
    "apples", "trains", "seven", "blue", "number", "add", "total", "each", "of", "how", "many",
    "the", "sum", "letters", "in", "word", "cost", "dollars", "hours", "miles",
];

/// Deterministic synthetic seeds `s0000..`.
pub fn synthetic_seeds(n: usize) -> Vec<Seed> {
    (0..n)
        .map(|i| {
            let len = 5 + (i * 7) % 23;
            let prompt = (0..len)
                .map(|k| WORDS[(i * 31 + k * 17 + k * k) % WORDS.len()])
                .collect::<Vec<_>>()
                .join(" ");
            Seed {
                id: format!("s{i:04}"),
                prompt: format!("Q{i}: {prompt}?"),
                reference_answer: Some(format!("{}", i % 10)),
                source: Some("synthetic".into()),
                ..Default::default()
            }
        })
        .collect()
}

/// 20 synthetic seeds written into `dir`, and the options of one shard over
/// them (batches of 4), for in-process worker tests.
pub fn small_shard(dir: &Path) -> (PathBuf, ShardOptions) {
    let seeds = dir.join("seeds.parquet");
    write_seeds(&seeds, &synthetic_seeds(20));
    let mut o = ShardOptions::new(dir.join("out"), Recipe::Instruction, ShardSpec::single());
    o.batch_seeds = 4;
    o.fingerprint = "fp".into();
    (seeds, o)
}

pub fn write_seeds(path: &Path, seeds: &[Seed]) {
    write_parquet(
        path,
        seeds_schema(),
        seeds.chunks(50).map(seeds_to_batch),
        &WriteOptions {
            row_group_rows: 64,
            zstd_level: 3,
        },
    )
    .expect("write seeds");
}

/// The committed scripted job (`data/jobs/scripted.toml`) with `out` set,
/// seed paths made absolute and each `(from, to)` edit applied (each must match).
pub fn scripted_job(dir: &Path, name: &str, out: &Path, edits: &[(&str, &str)]) -> PathBuf {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut text = std::fs::read_to_string(Path::new(root).join("data/jobs/scripted.toml"))
        .expect("scripted job")
        .replace(
            "out = \"out/scripted\"",
            &format!("out = {:?}", out.display().to_string()),
        )
        .replace("\"data/seeds/", &format!("\"{root}/data/seeds/"));
    for (from, to) in edits {
        assert!(
            text.contains(from),
            "the scripted job changed shape: {from}"
        );
        text = text.replace(from, to);
    }
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).expect("write job");
    p
}

/// A Parquet file with exactly these columns (all nullable).
pub fn write_cols(path: &Path, cols: Vec<(&str, ArrayRef)>) {
    let schema = std::sync::Arc::new(Schema::new(
        cols.iter()
            .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ));
    let batch = RecordBatch::try_new(schema.clone(), cols.into_iter().map(|c| c.1).collect())
        .expect("batch");
    write_parquet(path, schema, [Ok(batch)], &WriteOptions::default()).expect("write");
}

pub fn strs(v: &[Option<&str>]) -> ArrayRef {
    std::sync::Arc::new(v.iter().copied().collect::<StringArray>())
}

pub fn worker(seeds: &Path, out: &Path, index: u32, count: u32) -> Command {
    let mut c = Command::new(bin());
    c.args(["shard-worker", "--seeds"])
        .arg(seeds)
        .arg("--out")
        .arg(out)
        .args([
            "--shard-index",
            &index.to_string(),
            "--num-shards",
            &count.to_string(),
            "--flush-every",
            "4",
            "--created-at",
            "1700000000",
            "--row-group-rows",
            "16",
        ])
        .env_remove("COTFORGE_CRASH_AT")
        .env_remove("COTFORGE_SLEEP_AT")
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX")
        .env("COTFORGE_LOG", "error");
    c
}

pub fn run(mut c: Command) -> Output {
    c.output().expect("spawn cotforge")
}

pub fn cli(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("spawn cotforge")
}

/// Every file under `dir` (relative path -> bytes).
pub fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, d: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(d).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p
                    .strip_prefix(root)
                    .expect("prefix")
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, std::fs::read(&p).expect("read"));
            }
        }
    }
    let mut m = BTreeMap::new();
    walk(dir, dir, &mut m);
    m
}

/// Seed ids of every accepted chain and every reject under `OUT/shards/<kind>/`.
pub fn output_seed_ids(out: &Path, kind: &str) -> (Vec<String>, Vec<String>) {
    let dir = out.join("shards").join(kind);
    let mut acc = Vec::new();
    let mut rej = Vec::new();
    for e in std::fs::read_dir(&dir).expect("read_dir") {
        let p = e.expect("entry").path();
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with("shard-") && name.ends_with(".parquet") {
            for b in read_parquet(&p).expect("read shard") {
                acc.extend(
                    batch_to_chains(&b)
                        .expect("chains")
                        .into_iter()
                        .map(|c| c.seed_id),
                );
            }
        } else if name.starts_with("rejected-") && name.ends_with(".parquet") {
            for b in read_parquet(&p).expect("read rejects") {
                rej.extend(
                    batch_to_rejects(&b)
                        .expect("rejects")
                        .into_iter()
                        .map(|r| r.seed_id),
                );
            }
        }
    }
    (acc, rej)
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
