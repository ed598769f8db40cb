//! What a run reports while it works: typed events through one sink. The
//! library emits them (the shard worker for what it journals and commits, the
//! job runner for shard starts); the CLI turns them into progress bars or log
//! lines, the metrics file is one more sink, and tests assert on them.

use super::worker::ShardState;
use super::ShardSpec;
use crate::record::{Recipe, Stage};

/// One thing that happened in a run.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A shard run begins: `seeds` input rows of this shard to go through,
    /// `tokens` the engine's counter (sampled + evaluated) at the start.
    ShardStarted {
        kind: Recipe,
        shard: ShardSpec,
        seeds: u64,
        tokens: u64,
    },
    /// The journal already held `rows` results of the shard: they are not redone.
    Resumed {
        kind: Recipe,
        shard: ShardSpec,
        rows: u64,
    },
    /// A chain of `seed_id` was journaled as accepted.
    ChainAccepted { seed_id: String, chain_id: String },
    /// A reject of `seed_id` was journaled, at `stage` (`ingest`, `filter.reward`, ...).
    ChainRejected {
        seed_id: String,
        chain_id: Option<String>,
        stage: Stage,
    },
    /// Every result of one input row is journaled.
    SeedDone {
        seed_id: String,
        accepted: u64,
        rejected: u64,
    },
    /// A batch of seeds is journaled; `tokens` is the processor's engine
    /// counter (sampled + evaluated) after it.
    BatchDone { seeds: u64, tokens: u64 },
    /// The shard's files, manifest and marker are committed (or were already).
    ShardCommitted {
        kind: Recipe,
        shard: ShardSpec,
        state: ShardState,
        seeds: u64,
        accepted: u64,
        rejected: u64,
    },
}

/// Where events go. Sinks must not fail the run: they keep their own errors.
pub trait EventSink {
    fn event(&mut self, e: &Event);
}

/// The sink that drops everything.
impl EventSink for () {
    fn event(&mut self, _: &Event) {}
}

/// Two sinks, each sees every event (nest for more).
impl<A: EventSink, B: EventSink> EventSink for (A, B) {
    fn event(&mut self, e: &Event) {
        self.0.event(e);
        self.1.event(e);
    }
}

impl<S: EventSink + ?Sized> EventSink for &mut S {
    fn event(&mut self, e: &Event) {
        (**self).event(e);
    }
}

/// Every event, in order (tests).
impl EventSink for Vec<Event> {
    fn event(&mut self, e: &Event) {
        self.push(e.clone());
    }
}
