//! A property-based fuzz run of the two parsers of untrusted input, and the
//! replay of every crash the coverage-guided fuzzer (`fuzz/`, cargo-fuzz)
//! ever found:
//! - seed Parquet ingest: valid seed files with bytes flipped, overwritten,
//!   cut or spliced, opened and read to the end;
//! - the job-file parser: the committed jobs with lines dropped, doubled or
//!   changed, numbers replaced by extreme values, random bytes inserted.
//!
//! Neither may panic or hang: every input is accepted or refused with an
//! error. `PROPTEST_CASES` raises the case count (CI runs the default); the
//! long run is `cargo +nightly fuzz run seed_parquet` / `job_file` (see
//! README, "Guarantees").

mod store_support;

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use store_support::{synthetic_seeds, write_seeds};

#[path = "../fuzz/src/checks.rs"]
mod checks;

use checks::{ingest_path as ingest, job_text as parse_job};

fn seed_file_bytes() -> &'static [Vec<u8>] {
    static B: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    B.get_or_init(|| {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("s.parquet");
        write_seeds(&p, &synthetic_seeds(40));
        let mut v = vec![std::fs::read(&p).expect("read")];
        for f in ["cot_demo.parquet", "gsm8k.parquet"] {
            let p = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("data/seeds")
                .join(f);
            v.push(std::fs::read(p).expect("sample seeds"));
        }
        v
    })
}

fn job_texts() -> Vec<String> {
    ["demo.toml", "scripted.toml"]
        .iter()
        .map(|f| {
            std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("data/jobs")
                    .join(f),
            )
            .expect("job")
        })
        .collect()
}

#[derive(Debug, Clone)]
enum ByteEdit {
    Flip(usize, u8),
    Set(usize, u8),
    Cut(usize),
    /// Overwrite 8 bytes at a position with a little-endian integer.
    Int(usize, u64),
}

fn apply(mut b: Vec<u8>, edits: &[ByteEdit]) -> Vec<u8> {
    for e in edits {
        let n = b.len().max(1);
        match *e {
            ByteEdit::Flip(i, m) => {
                if let Some(x) = b.get_mut(i % n) {
                    *x ^= m.max(1)
                }
            }
            ByteEdit::Set(i, v) => {
                if let Some(x) = b.get_mut(i % n) {
                    *x = v
                }
            }
            ByteEdit::Cut(i) => b.truncate(i % n),
            ByteEdit::Int(i, v) => {
                let at = i % n;
                for (k, byte) in v.to_le_bytes().iter().enumerate() {
                    if let Some(x) = b.get_mut(at + k) {
                        *x = *byte;
                    }
                }
            }
        }
    }
    b
}

fn byte_edit() -> impl Strategy<Value = ByteEdit> {
    // Edits near the end hit the footer, where the structure is.
    let pos = prop_oneof![0usize..200_000, (0usize..600).prop_map(|k| usize::MAX - k)];
    prop_oneof![
        (pos.clone(), any::<u8>()).prop_map(|(i, m)| ByteEdit::Flip(i, m)),
        (pos.clone(), any::<u8>()).prop_map(|(i, v)| ByteEdit::Set(i, v)),
        pos.clone().prop_map(ByteEdit::Cut),
        (
            pos,
            prop_oneof![
                Just(u64::MAX),
                Just(i64::MAX as u64),
                Just(1u64 << 40),
                any::<u64>()
            ]
        )
            .prop_map(|(i, v)| ByteEdit::Int(i, v)),
    ]
}

/// Positions from the end become positions in the file.
fn from_end(b: &[u8], edits: Vec<ByteEdit>) -> Vec<ByteEdit> {
    let fix = |i: usize| {
        if i > usize::MAX - 600 {
            b.len().saturating_sub(usize::MAX - i + 1)
        } else {
            i
        }
    };
    edits
        .into_iter()
        .map(|e| match e {
            ByteEdit::Flip(i, m) => ByteEdit::Flip(fix(i), m),
            ByteEdit::Set(i, v) => ByteEdit::Set(fix(i), v),
            ByteEdit::Cut(i) => ByteEdit::Cut(fix(i)),
            ByteEdit::Int(i, v) => ByteEdit::Int(fix(i), v),
        })
        .collect()
}

#[derive(Debug, Clone)]
enum LineEdit {
    Drop(usize),
    Double(usize),
    /// Replace the value of a `key = value` line.
    Value(usize, String),
    Insert(usize, String),
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("inf".to_string()),
        Just("-inf".to_string()),
        Just("nan".to_string()),
        Just("-1".to_string()),
        Just("0".to_string()),
        Just("9223372036854775807".to_string()),
        Just("1e308".to_string()),
        Just("\"\"".to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
        Just("true".to_string()),
        any::<i64>().prop_map(|x| x.to_string()),
        any::<f64>().prop_map(|x| format!("{x:?}")),
        "[a-z_]{0,12}".prop_map(|s| format!("{s:?}")),
    ]
}

fn line_edit() -> impl Strategy<Value = LineEdit> {
    prop_oneof![
        (0usize..200).prop_map(LineEdit::Drop),
        (0usize..200).prop_map(LineEdit::Double),
        (0usize..200, value()).prop_map(|(i, v)| LineEdit::Value(i, v)),
        (
            0usize..200,
            prop_oneof![
                "[a-z_]{1,12} = [0-9a-z\"]{0,8}",
                Just("[[recipe]]".to_string()),
                Just("[store]".to_string()),
                Just("[recipe.search]".to_string()),
                Just("[[recipe.filters]]".to_string()),
                any::<String>(),
            ]
        )
            .prop_map(|(i, l)| LineEdit::Insert(i, l)),
    ]
}

fn edit_job(text: &str, edits: &[LineEdit]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for e in edits {
        let n = lines.len().max(1);
        match e {
            LineEdit::Drop(i) => {
                if !lines.is_empty() {
                    lines.remove(i % n);
                }
            }
            LineEdit::Double(i) => {
                if let Some(l) = lines.get(i % n).cloned() {
                    lines.insert(i % n, l);
                }
            }
            LineEdit::Value(i, v) => {
                if let Some(l) = lines.get_mut(i % n) {
                    if let Some((k, _)) = l.split_once('=') {
                        *l = format!("{k}= {v}");
                    }
                }
            }
            LineEdit::Insert(i, s) => lines.insert(i % n, s.clone()),
        }
    }
    lines.join("\n")
}

/// Run `f`; if it panics, save the input under the target's tmp dir (to be
/// moved into `tests/fixtures/fuzz/` as a regression case) and fail.
fn keep_if_it_panics(input: &[u8], ext: &str, f: impl FnOnce()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let p = dir.join(format!(
            "fuzz-crash-{}.{ext}",
            &blake3::hash(input).to_hex()[..16]
        ));
        std::fs::write(&p, input).expect("save crash");
        panic!("panicked on an input saved as {}", p.display());
    }
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(96),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn mutated_seed_parquet_never_panics(
        which in 0usize..3,
        edits in proptest::collection::vec(byte_edit(), 1..6),
    ) {
        let src = &seed_file_bytes()[which];
        let bytes = apply(src.clone(), &from_end(src, edits));
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("fuzz.parquet");
        keep_if_it_panics(&bytes, "parquet", || checks::ingest_bytes(&bytes, &p));
    }

    #[test]
    fn mutated_job_files_never_panic(
        which in 0usize..2,
        edits in proptest::collection::vec(line_edit(), 1..8),
    ) {
        let text = edit_job(&job_texts()[which], &edits);
        keep_if_it_panics(text.as_bytes(), "toml", || parse_job(&text));
    }
}

/// Every input the coverage-guided fuzzer ever crashed on (saved under
/// `tests/fixtures/fuzz/<target>/`) still goes through without a panic.
#[test]
fn fuzzer_crashes_stay_fixed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz");
    let files = |t: &str| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(root.join(t))
            .map(|r| r.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        v.sort();
        v
    };
    let parquet = files("seed_parquet");
    for p in &parquet {
        ingest(p);
    }
    let jobs = files("job_file");
    for p in &jobs {
        parse_job(&String::from_utf8_lossy(&std::fs::read(p).expect("read")));
    }
    assert!(
        !parquet.is_empty() && !jobs.is_empty(),
        "the regression corpus is missing: {}",
        root.display()
    );
}
