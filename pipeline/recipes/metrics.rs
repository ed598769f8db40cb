//! The metrics file as an event sink: one file per run and shard (and so per
//! worker of an array job), `OUT/metrics/run-<unix s>-<shard>/metrics.jsonl`,
//! a line per journaled batch: wall time, accepted chains so far in this run
//! (every shard), the engine's token counter. Finalize reads them for the
//! throughput figures of stats and report.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::store::events::{Event, EventSink};
use crate::store::fsio;

pub struct MetricsSink {
    out: PathBuf,
    run_id: u64,
    file: Option<std::fs::File>,
    /// Accepted chains of the shards this run finished (all of each shard's).
    before: u64,
    /// Accepted chains journaled by this run in the current shard.
    current: u64,
}

impl MetricsSink {
    /// Metrics of a run into `out` starting now.
    pub fn new(out: &Path) -> Self {
        Self {
            out: out.to_path_buf(),
            run_id: unix_now().floor() as u64,
            file: None,
            before: 0,
            current: 0,
        }
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl EventSink for MetricsSink {
    fn event(&mut self, e: &Event) {
        match e {
            Event::ShardStarted { shard, .. } => {
                // Metrics are best effort: a file that cannot be made is skipped.
                let rel =
                    Path::new("metrics").join(format!("run-{}-{}", self.run_id, shard.suffix()));
                self.current = 0;
                self.file = fsio::ensure_dir(&self.out, &rel).ok().and_then(|dir| {
                    fsio::open_nofollow(
                        &dir.join("metrics.jsonl"),
                        std::fs::OpenOptions::new().create(true).append(true),
                    )
                    .ok()
                });
            }
            Event::ChainAccepted { .. } => self.current += 1,
            Event::BatchDone { tokens, .. } => {
                if let Some(f) = &mut self.file {
                    let chains = self.before + self.current;
                    let _ = writeln!(
                        f,
                        "{}",
                        serde_json::json!({"t": unix_now(), "chains": chains, "tokens": tokens})
                    );
                }
            }
            Event::ShardCommitted { accepted, .. } => {
                self.before += accepted;
                self.file = None;
            }
            _ => {}
        }
    }
}
