//! Bad-input table: every file-level fault is an error naming the file (and
//! column); every row-level fault is a reject with its documented reason; no
//! panic, nothing accepted silently, and a job with a bad file writes nothing.

mod store_support;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{BinaryArray, Int64Array};
use cotforge::store::ingest::{derive_id, IngestRow};
use cotforge::store::{Ingest, IngestOptions, StoreError};
use store_support::*;

fn opts() -> IngestOptions {
    IngestOptions {
        batch_size: 3, // several batches per file
        max_prompt_chars: 40,
        max_prompt_bytes: 60,
        ..IngestOptions::default()
    }
}

fn open_err(path: &Path) -> StoreError {
    match Ingest::open(&[path], opts()) {
        Ok(_) => panic!("{} must be refused", path.display()),
        Err(e) => e,
    }
}

fn good_file(dir: &Path) -> PathBuf {
    let p = dir.join("good.parquet");
    write_seeds(&p, &synthetic_seeds(20));
    p
}

#[test]
fn file_level_faults_are_errors_naming_file_and_column() {
    let d = tempfile::tempdir().expect("tempdir");
    let good = good_file(d.path());
    let bytes = std::fs::read(&good).expect("read");

    let truncated = d.path().join("truncated.parquet");
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).expect("write");
    let not_parquet = d.path().join("notes.parquet");
    std::fs::write(&not_parquet, "id,prompt\n1,hello\n").expect("write");
    let empty = d.path().join("empty.parquet");
    std::fs::write(&empty, b"").expect("write");
    let no_prompt = d.path().join("no_prompt.parquet");
    write_cols(
        &no_prompt,
        vec![("id", strs(&[Some("a")])), ("question", strs(&[Some("q")]))],
    );
    let int_prompt = d.path().join("int_prompt.parquet");
    write_cols(
        &int_prompt,
        vec![
            ("id", strs(&[Some("a")])),
            ("prompt", Arc::new(Int64Array::from(vec![7]))),
        ],
    );
    let int_system = d.path().join("int_system.parquet");
    write_cols(
        &int_system,
        vec![
            ("prompt", strs(&[Some("p")])),
            ("system", Arc::new(Int64Array::from(vec![7]))),
        ],
    );

    let cases: Vec<(&PathBuf, &str, Option<&str>)> = vec![
        (&truncated, "not a readable Parquet file", None),
        (&not_parquet, "not a readable Parquet file", None),
        (&empty, "empty file (0 bytes)", None),
        (
            &no_prompt,
            "required column `prompt` is missing",
            Some("prompt"),
        ),
        (
            &int_prompt,
            "column `prompt` has type Int64",
            Some("prompt"),
        ),
        (
            &int_system,
            "column `system` has type Int64",
            Some("system"),
        ),
    ];
    for (path, want, column) in cases {
        let e = open_err(path);
        let msg = e.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains(want), "{}: {msg}", path.display());
        match (&e, column) {
            (StoreError::MissingColumn { column: c, .. }, Some(w))
            | (StoreError::WrongType { column: c, .. }, Some(w)) => assert_eq!(c, w),
            (StoreError::NotParquet { .. }, None) => {}
            other => panic!("unexpected error kind {other:?}"),
        }
        // A good file next to a bad one: the whole job is refused up front.
        assert!(Ingest::open(&[good.as_path(), path.as_path()], opts()).is_err());
    }

    // Through the CLI: exit non-zero, message names the file, nothing written.
    let out = d.path().join("out");
    let o = run(worker(&truncated, &out, 0, 1));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("truncated.parquet"), "{}", stderr(&o));
    assert!(!out.exists(), "a refused job must not write");
}

#[test]
fn zero_row_file_is_accepted_and_empty() {
    let d = tempfile::tempdir().expect("tempdir");
    let p = d.path().join("zero.parquet");
    write_seeds(&p, &[]);
    let items: Vec<_> = Ingest::open(&[&p], opts()).expect("open").collect();
    assert!(items.is_empty());
    // A zero-row job completes with two empty shard files.
    let out = d.path().join("out");
    let o = run(worker(&p, &out, 0, 1));
    assert!(o.status.success(), "{}", stderr(&o));
    let (a, r) = output_seed_ids(&out, "instruction");
    assert!(a.is_empty() && r.is_empty());
    assert!(cli(&["verify", out.to_str().expect("utf8")])
        .status
        .success());
}

#[test]
fn row_level_faults_become_rejects_with_reasons() {
    let d = tempfile::tempdir().expect("tempdir");
    let p = d.path().join("rows.parquet");
    let long_chars = "é".repeat(45); // 45 chars, 90 bytes: over both budgets, bytes checked first
    let long_chars_only = "x ".repeat(21); // 42 chars, 42 bytes: over the char budget only
    let prompts: Vec<Option<&[u8]>> = vec![
        Some(b"What is 2+2?"),            // 0 ok
        None,                             // 1 null
        Some(b""),                        // 2 empty
        Some(b"   \n\t"),                 // 3 whitespace
        Some(long_chars.as_bytes()),      // 4 too many bytes
        Some(long_chars_only.as_bytes()), // 5 too many chars
        Some(b"bad \xff\xfe utf8"),       // 6 invalid UTF-8 in prompt
        Some(b"fine prompt"),             // 7 invalid UTF-8 in system
        Some(b"What is 2+2? again"),      // 8 duplicate id of row 0
        Some(b"no id given"),             // 9 id derived from prompt
        Some(b"What is 3+3?"),            // 10 ok
    ];
    let ids: Vec<Option<&str>> = vec![
        Some("a"),
        Some("b"),
        Some("c"),
        Some("d"),
        Some("e"),
        Some("f"),
        Some("g"),
        Some("h"),
        Some("a"),
        None,
        Some("k"),
    ];
    let systems: Vec<Option<&[u8]>> = (0..11)
        .map(|i| if i == 7 { Some(&b"sys \xc3"[..]) } else { None })
        .collect();
    write_cols(
        &p,
        vec![
            ("id", strs(&ids)),
            ("prompt", Arc::new(BinaryArray::from(prompts))),
            ("system", Arc::new(BinaryArray::from(systems))),
        ],
    );
    assert_eq!(Ingest::open(&[&p], opts()).expect("open").total_rows(), 11);
    let items: Vec<_> = Ingest::open(&[&p], opts())
        .expect("open")
        .collect::<Result<Vec<_>, _>>()
        .expect("no file-level error");
    assert_eq!(items.len(), 11, "every row yields exactly one item");
    let want: Vec<(&str, Option<&str>)> = vec![
        ("a", None),
        ("b", Some("null prompt")),
        ("c", Some("empty prompt")),
        ("d", Some("empty prompt")),
        ("e", Some("prompt too long: 90 bytes > budget 60 bytes")),
        ("f", Some("prompt too long: 42 chars > budget 40 chars")),
        ("g", Some("invalid UTF-8 in column prompt at byte 4")),
        ("h", Some("invalid UTF-8 in column system at byte 4")),
        ("a", Some("duplicate id a (first seen at input row 0)")),
        ("", None),
        ("k", None),
    ];
    for (i, (item, (id, reason))) in items.iter().zip(&want).enumerate() {
        assert_eq!(item.ordinal, i as u64);
        match (&item.row, reason) {
            (IngestRow::Seed(s), None) => {
                if id.is_empty() {
                    assert_eq!(s.id, derive_id("no id given"));
                } else {
                    assert_eq!(&s.id, id);
                }
            }
            (IngestRow::Reject(r), Some(why)) => {
                assert_eq!(
                    (r.seed_id.as_str(), r.reason.as_str()),
                    (*id, *why),
                    "row {i}"
                );
                assert_eq!(r.stage, "ingest");
                assert!(
                    r.row.contains(&format!("\"id\":\"{id}\"")),
                    "row JSON kept: {}",
                    r.row
                );
            }
            (row, want) => panic!("row {i}: got {row:?}, want reject {want:?}"),
        }
    }

    // The same file through a job: rejects land in the rejected shard, nothing is lost.
    let out = d.path().join("out");
    for i in 0..2 {
        let o = run(worker(&p, &out, i, 2));
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let (acc, rej) = output_seed_ids(&out, "instruction");
    assert_eq!(acc.len() + rej.len(), 11);
}
