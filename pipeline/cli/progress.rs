//! Run events as progress: one indicatif bar per shard on a terminal, else a
//! log line every 10 s (and when a shard's input is through).

use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::store::events::{Event, EventSink};

/// Counters of the shard being run.
struct Shard {
    bar: ProgressBar,
    label: String,
    total: u64,
    done: u64,
    accepted: u64,
    rejected: u64,
    tokens0: u64,
    started: Instant,
    last_log: Instant,
}

pub struct Progress {
    multi: MultiProgress,
    /// Bars are drawn (a terminal); otherwise log lines.
    bars: bool,
    shard: Option<Shard>,
}

impl Progress {
    pub fn new(bars: bool) -> Self {
        let multi = MultiProgress::new();
        if !bars {
            multi.set_draw_target(ProgressDrawTarget::hidden());
        }
        Self {
            multi,
            bars,
            shard: None,
        }
    }
}

/// A run that stops early leaves no bar behind.
impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(s) = self.shard.take() {
            s.bar.finish_and_clear();
        }
    }
}

impl Shard {
    fn batch(&mut self, tokens: u64, bars: bool) {
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        let tps = tokens.saturating_sub(self.tokens0) as f64 / secs;
        self.bar.set_position(self.done);
        self.bar.set_message(format!(
            "accepted {} rejected {} | {tps:.0} tok/s",
            self.accepted, self.rejected
        ));
        if !bars && (self.last_log.elapsed() >= Duration::from_secs(10) || self.done >= self.total)
        {
            self.last_log = Instant::now();
            let eta = if self.done > 0 && self.total > self.done {
                format!(
                    "{:.0}s",
                    secs / self.done as f64 * (self.total - self.done) as f64
                )
            } else {
                "-".into()
            };
            eprintln!(
                "[cotforge] {}: seeds {}/{} accepted {} rejected {} {tps:.0} tok/s eta {eta}",
                self.label, self.done, self.total, self.accepted, self.rejected
            );
        }
    }
}

impl EventSink for Progress {
    fn event(&mut self, e: &Event) {
        match e {
            Event::ShardStarted {
                kind,
                shard,
                seeds,
                tokens,
            } => {
                let bar = self.multi.add(ProgressBar::new(*seeds));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix:>24} [{bar:30}] {pos}/{len} seeds | {msg} | ETA {eta}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                bar.set_prefix(format!("{kind} {}", shard.suffix()));
                self.shard = Some(Shard {
                    bar,
                    label: format!("{kind} {shard}"),
                    total: *seeds,
                    done: 0,
                    accepted: 0,
                    rejected: 0,
                    tokens0: *tokens,
                    started: Instant::now(),
                    last_log: Instant::now(),
                });
            }
            Event::SeedDone {
                accepted, rejected, ..
            } => {
                if let Some(s) = &mut self.shard {
                    s.done += 1;
                    s.accepted += accepted;
                    s.rejected += rejected;
                }
            }
            Event::BatchDone { tokens, .. } => {
                if let Some(s) = &mut self.shard {
                    s.batch(*tokens, self.bars);
                }
            }
            Event::ShardCommitted { .. } => {
                if let Some(s) = self.shard.take() {
                    s.bar.finish_and_clear();
                }
            }
            Event::Resumed { .. } | Event::ChainAccepted { .. } | Event::ChainRejected { .. } => {}
        }
    }
}
