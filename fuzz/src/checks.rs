//! What the fuzz targets (and `tests/fuzz_inputs.rs`, which includes this
//! file) check on every input: the seed Parquet ingest and the job-file
//! parser never panic or hang on untrusted bytes, and a job that parses is
//! runnable as far as its settings go.

use std::path::Path;

use cotforge::store::{Ingest, IngestOptions};

/// Open `path` as seed Parquet and read every row; only errors may come out.
pub fn ingest_path(path: &Path) {
    if let Ok(ing) = Ingest::open(&[path], IngestOptions::default()) {
        for item in ing {
            if item.is_err() {
                break;
            }
        }
    }
}

/// [`ingest_path`] on bytes, written to `scratch` first.
pub fn ingest_bytes(data: &[u8], scratch: &Path) {
    if std::fs::write(scratch, data).is_ok() {
        ingest_path(scratch);
    }
}

/// Parse a job file; one that parses must not carry settings that would
/// panic or hang later (a flush interval no `Duration` holds, a step
/// delimiter that never advances).
pub fn job_text(text: &str) {
    if let Ok(job) = cotforge::recipes::job::parse(Path::new("fuzz.toml"), text) {
        let fs = job.file.store.flush_seconds;
        assert!(
            std::time::Duration::try_from_secs_f64(fs).is_ok(),
            "flush_seconds {fs} passed validation"
        );
        for r in &job.recipes {
            let d = r.spec.open_o1.clone().unwrap_or_default().step_delimiter;
            assert!(!cotforge::recipes::step_ends("a\n\nb", &d).is_empty());
        }
    }
}
