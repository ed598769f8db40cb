//! The scheduler: runs many [`TreeSearch`]es against one engine, packing the
//! pending streams of all trees into each `engine.step` (up to
//! `n_parallel` sequences), and owning the KV reuse.
//!
//! KV reuse: a stream's sequence is forked from whatever cached sequence of
//! its tree holds the deepest prefix of its start state (a finished stream
//! kept as a cache entry, or a running stream), so a tree costs roughly its
//! distinct tokens. The engine's seq-id pool and KV cells are finite: cache
//! entries are evicted least-recently-used when a slot or cells are needed,
//! and a state whose sequence was evicted is rebuilt from the nearest cached
//! ancestor (or from scratch): slower, never wrong.
//!
//! Failure isolation: an error that belongs to one tree (its sequence does
//! not fit the context or the KV cache even alone, the engine refuses one of
//! its tokens, its state machine reports an inconsistency) ends that tree as
//! failed and frees what it holds; the other trees run on. Errors of the
//! engine as a whole still stop the run.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::engine::{Engine, EngineError, SeqId, StepRequest};

use super::judge::Judge;
use super::machine::{Ctl, StreamId, StreamStart, TreeSearch};
use super::result::TreeResult;
use super::tree::NodeId;
use super::SearchError;

/// Scheduler settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DriverConfig {
    /// Most pending tokens put into one step; keep at or below the engine's
    /// n_batch so one step is one decode call.
    pub max_batch_tokens: usize,
    /// Most finished-stream sequences kept cached (`None`: as many as the
    /// seq-id pool allows; `Some(0)` disables reuse across iterations).
    pub max_cached: Option<usize>,
    /// Most trees running at once (`None`: as many as needed to fill a step).
    pub max_active_trees: Option<usize>,
    /// Most KV cells held while finished-stream sequences stay cached; above
    /// it the least recently used cache entries are dropped (`None`: no
    /// budget beyond the context). Each decode walks every used cell of the
    /// unified cache, so a tree cache far larger than the running streams
    /// slows every step; this trades a little re-evaluation for that.
    pub max_cells: Option<usize>,
    /// Raise `max_cells` by what each eviction costs: a stream start that has
    /// to re-evaluate evicted tokens adds them to the budget (up to three
    /// quarters of the context). A budget tuned on one model and search is
    /// then right for another: small trees keep a small cache, large trees
    /// (a bigger model writes longer chains) grow it until little is
    /// re-evaluated.
    pub grow_cells: bool,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            max_batch_tokens: 2048,
            max_cached: None,
            max_active_trees: None,
            max_cells: None,
            grow_cells: true,
        }
    }
}

/// What one step of the driver looked like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepInfo {
    /// Sequences stepped.
    pub sequences: u32,
    /// Trees activated and not finished.
    pub active_trees: u32,
    /// Whether trees were still waiting to be activated.
    pub queue_pending: bool,
    /// Engine decode calls the step made.
    pub decode_calls: u32,
}

/// Counters of one `run_many`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DriverReport {
    pub trees: usize,
    pub steps: Vec<StepInfo>,
    pub decode_calls: u64,
    /// Sequences per decode call (engine stats, this run only).
    pub batch_sequences: Vec<u32>,
    pub tokens_evaluated: u64,
    pub tokens_sampled: u64,
    pub decode_seconds: f64,
    pub sample_seconds: f64,
    pub wall_seconds: f64,
    /// Tokens the driver attributed to trees (equals `tokens_evaluated` for a
    /// correct engine).
    pub attributed_tokens: u64,
    pub distinct_tokens: u64,
    pub resend_tokens: u64,
    pub resend_per_action_tokens: u64,
    pub forks: u64,
    pub fresh_sequences: u64,
    pub evictions: u64,
    /// Streams swapped out because the KV cells ran out (rebuilt later).
    pub parks: u64,
    /// Most KV cells held between two steps (after any budget eviction).
    pub peak_cells: u64,
    /// Mean KV cells held between two steps.
    pub mean_cells: f64,
    /// The cell budget at the end of the run (it grows while evictions cost
    /// re-evaluation; see `DriverConfig::max_cells`).
    #[serde(default)]
    pub final_max_cells: Option<usize>,
}

/// A tree that could not finish, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TreeFailure {
    pub seed_id: String,
    /// The error, with what to do when the cause is a setting.
    pub error: String,
}

/// Progress after each finished (or failed) tree.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Trees finished, failed ones included.
    pub trees_done: usize,
    pub trees_failed: usize,
    pub trees_total: usize,
    pub tokens_sampled: u64,
    pub tokens_evaluated: u64,
    pub elapsed_seconds: f64,
}

struct Running {
    tree: usize,
    stream: StreamId,
    seq: SeqId,
    covers: Vec<(NodeId, usize)>,
    last_step: u64,
    order: u64,
}

struct Parked {
    tree: usize,
    stream: StreamId,
    covers: Vec<(NodeId, usize)>,
    tokens: Vec<crate::engine::Token>,
    /// `finishes` when parked: rebuilt only after some stream finished.
    finishes_at: u64,
}

struct Cached {
    tree: usize,
    seq: SeqId,
    covers: Vec<(NodeId, usize)>,
    last_use: u64,
}

#[derive(Default, Clone, Copy)]
struct Acct {
    evaluated: u64,
    resend: u64,
}

enum Source {
    Running(usize),
    Cached(usize),
}

struct Driver<'a, 'j> {
    engine: &'a mut dyn Engine,
    judge: Option<&'j mut dyn Judge>,
    cfg: DriverConfig,
    trees: Vec<Option<TreeSearch>>,
    results: Vec<Option<Result<TreeResult, TreeFailure>>>,
    acct: Vec<Acct>,
    queue: std::collections::VecDeque<usize>,
    active: Vec<usize>,
    waiting: Vec<(usize, StreamStart)>,
    running: Vec<Running>,
    parked: Vec<Parked>,
    cache: Vec<Cached>,
    /// Activation rank of each tree (lower = older).
    activation: Vec<usize>,
    /// Streams finished so far.
    finishes: u64,
    n_activated: usize,
    tick: u64,
    order: u64,
    report: DriverReport,
    done: usize,
    failed: usize,
    /// Trees that failed inside a step or a start, ended by the run loop.
    failing: Vec<(usize, SearchError)>,
    /// Stopped trees of `pool_unspent` searches, held until every tree has
    /// stopped, and the budget they left unspent.
    held: Vec<usize>,
    pool: u64,
    /// The cell budget in effect (`max_cells`, grown by `grow_cells`).
    cells_budget: Option<usize>,
    /// Trees that have held a sequence (a fresh start of another tree's
    /// root is not a re-evaluation).
    started: Vec<bool>,
    /// Sum of cells held after each step (for the mean).
    cells_sum: u64,
}

/// What a finished tree reports to `on_done`.
pub type Outcome<'r> = Result<&'r TreeResult, &'r TreeFailure>;

/// Run every tree to completion; results come back in input order. Any tree
/// failure fails the run (see [`run_trees`] to keep the other trees).
/// `on_done` is called as each tree finishes (for progress bars and streaming writes).
pub fn run_many(
    engine: &mut dyn Engine,
    trees: Vec<TreeSearch>,
    cfg: &DriverConfig,
    on_done: &mut dyn FnMut(&TreeResult, &Progress),
) -> Result<(Vec<TreeResult>, DriverReport), SearchError> {
    let (results, report) = run_trees(engine, None, trees, cfg, &mut |o, p| {
        if let Ok(r) = o {
            on_done(r, p)
        }
    })?;
    let results = results
        .into_iter()
        .map(|r| r.map_err(|f| SearchError::Tree(f.seed_id, f.error)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((results, report))
}

/// Run every tree to completion, each on its own: a tree that fails ends as
/// a [`TreeFailure`] and the others finish. `judge` scores chains for trees
/// whose value uses `judge`. Results come back in input order.
pub fn run_trees(
    engine: &mut dyn Engine,
    judge: Option<&mut dyn Judge>,
    trees: Vec<TreeSearch>,
    cfg: &DriverConfig,
    on_done: &mut dyn FnMut(Outcome<'_>, &Progress),
) -> Result<(Vec<Result<TreeResult, TreeFailure>>, DriverReport), SearchError> {
    let n = trees.len();
    let base = engine.stats().clone();
    let t0 = Instant::now();
    let mut d = Driver {
        engine,
        judge,
        cfg: cfg.clone(),
        trees: trees.into_iter().map(Some).collect(),
        results: (0..n).map(|_| None).collect(),
        acct: vec![Acct::default(); n],
        queue: (0..n).collect(),
        active: Vec::new(),
        waiting: Vec::new(),
        running: Vec::new(),
        parked: Vec::new(),
        cache: Vec::new(),
        activation: vec![usize::MAX; n],
        finishes: 0,
        n_activated: 0,
        tick: 0,
        order: 0,
        report: DriverReport {
            trees: n,
            ..Default::default()
        },
        done: 0,
        failed: 0,
        failing: Vec::new(),
        held: Vec::new(),
        pool: 0,
        cells_budget: cfg.max_cells,
        started: vec![false; n],
        cells_sum: 0,
    };
    let r = d.run(&base, t0, on_done);
    // Free everything this run still holds, whatever happened.
    for c in std::mem::take(&mut d.cache) {
        let _ = d.engine.release(c.seq);
    }
    for s in std::mem::take(&mut d.running) {
        let _ = d.engine.release(s.seq);
    }
    r?;
    let st = d.engine.stats();
    let rep = &mut d.report;
    rep.decode_calls = st.decode_calls - base.decode_calls;
    rep.batch_sequences = st.batch_sequences[base.batch_sequences.len()..].to_vec();
    rep.tokens_evaluated = st.tokens_evaluated - base.tokens_evaluated;
    rep.tokens_sampled = st.tokens_sampled - base.tokens_sampled;
    rep.decode_seconds = st.decode_seconds - base.decode_seconds;
    rep.sample_seconds = st.sample_seconds - base.sample_seconds;
    rep.wall_seconds = t0.elapsed().as_secs_f64();
    rep.mean_cells = d.cells_sum as f64 / rep.steps.len().max(1) as f64;
    rep.final_max_cells = d.cells_budget;
    let results = d
        .results
        .into_iter()
        .map(|r| r.ok_or(SearchError::Internal("a tree produced no result")))
        .collect::<Result<Vec<_>, _>>()?;
    let ok = || results.iter().filter_map(|r| r.as_ref().ok());
    rep.distinct_tokens = ok().map(|r| r.stats.distinct_tokens).sum();
    rep.resend_tokens = ok().map(|r| r.stats.resend_tokens).sum();
    rep.resend_per_action_tokens = ok().map(|r| r.stats.resend_per_action_tokens).sum();
    Ok((results, d.report))
}

impl Driver<'_, '_> {
    fn run(
        &mut self,
        base: &crate::engine::EngineStats,
        t0: Instant,
        on_done: &mut dyn FnMut(Outcome<'_>, &Progress),
    ) -> Result<(), SearchError> {
        loop {
            self.poll_active(base, t0, on_done)?;
            self.materialize()?;
            self.end_failing(base, t0, on_done)?;
            // Fill the step: activate trees until enough streams run.
            while self.running.len() < self.engine.n_parallel()
                && self.parked.is_empty()
                && self
                    .engine
                    .live_sequences()
                    .saturating_sub(self.cache.len())
                    < self.engine.n_seq_max()
                && self
                    .cfg
                    .max_active_trees
                    .is_none_or(|m| self.active.len() < m)
            {
                let Some(t) = self.queue.pop_front() else {
                    break;
                };
                self.activation[t] = self.n_activated;
                self.n_activated += 1;
                self.active.push(t);
                self.poll_active(base, t0, on_done)?;
                self.materialize()?;
                self.end_failing(base, t0, on_done)?;
            }
            if self.running.is_empty() {
                if self.waiting.is_empty()
                    && self.parked.is_empty()
                    && self.active.is_empty()
                    && self.queue.is_empty()
                {
                    if self.redistribute()? {
                        continue;
                    }
                    for t in std::mem::take(&mut self.held) {
                        self.finish_tree(t, base, t0, on_done)?;
                    }
                    return Ok(());
                }
                if !self.parked.is_empty() {
                    // Nothing runs: the parked streams fit now (or never will).
                    for p in &mut self.parked {
                        p.finishes_at = 0;
                    }
                    self.finishes = self.finishes.max(1);
                    self.unpark()?;
                    if self.running.is_empty() {
                        return Err(SearchError::Pool(
                            "a parked stream cannot be rebuilt: no free sequence".into(),
                        ));
                    }
                    continue;
                }
                if !self.waiting.is_empty() {
                    // Nothing runs, yet starts wait: free every cached sequence and retry once.
                    self.evict_all()?;
                    self.materialize()?;
                    if !self.failing.is_empty() {
                        self.end_failing(base, t0, on_done)?;
                        continue;
                    }
                    if self.running.is_empty() {
                        return Err(SearchError::Pool(format!(
                            "{} streams wait but no sequence can be created ({} live of n_seq_max {})",
                            self.waiting.len(),
                            self.engine.live_sequences(),
                            self.engine.n_seq_max()
                        )));
                    }
                }
                continue;
            }
            self.step()?;
            self.end_failing(base, t0, on_done)?;
        }
    }

    /// Record that tree `t` failed with `e` if the error is the tree's own;
    /// an error of the engine as a whole is returned.
    fn tree_error(&mut self, t: usize, e: SearchError) -> Result<(), SearchError> {
        let own = match &e {
            SearchError::Engine(x) => matches!(
                x,
                EngineError::ContextFull { .. }
                    | EngineError::KvFull(_)
                    | EngineError::Tokenize(_)
                    | EngineError::UnknownSequence(_)
            ),
            SearchError::Pool(_) => false,
            _ => true,
        };
        if !own {
            return Err(e);
        }
        if !self.failing.iter().any(|(f, _)| *f == t) {
            self.failing.push((t, e));
        }
        Ok(())
    }

    fn is_failing(&self, t: usize) -> bool {
        self.failing.iter().any(|(f, _)| *f == t)
    }

    fn end_failing(
        &mut self,
        base: &crate::engine::EngineStats,
        t0: Instant,
        on_done: &mut dyn FnMut(Outcome<'_>, &Progress),
    ) -> Result<(), SearchError> {
        for (t, e) in std::mem::take(&mut self.failing) {
            self.fail_tree(t, e, base, t0, on_done)?;
        }
        Ok(())
    }

    /// Poll trees with nothing running or waiting; finish the ones that stopped.
    fn poll_active(
        &mut self,
        base: &crate::engine::EngineStats,
        t0: Instant,
        on_done: &mut dyn FnMut(Outcome<'_>, &Progress),
    ) -> Result<(), SearchError> {
        let mut i = 0;
        while i < self.active.len() {
            let t = self.active[i];
            let busy = self.running.iter().any(|r| r.tree == t)
                || self.parked.iter().any(|p| p.tree == t)
                || self.waiting.iter().any(|(w, _)| *w == t);
            if busy {
                i += 1;
                continue;
            }
            let tree = self.trees[t]
                .as_mut()
                .ok_or(SearchError::Internal("active tree already finished"))?;
            let judge_wanted = tree.judge_requests();
            if !judge_wanted.is_empty() {
                if let Err(e) = self.judge_tree(t, &judge_wanted) {
                    self.active.remove(i);
                    self.fail_tree(t, e, base, t0, on_done)?;
                    continue;
                }
            }
            let Some(tree) = self.trees[t].as_mut() else {
                return Err(SearchError::Internal("active tree already finished"));
            };
            let starts = tree.poll();
            if starts.is_empty() && tree.is_done() {
                let hold = tree.config().pool_unspent;
                let may_restart = tree.wants_more();
                self.active.remove(i);
                if hold {
                    // A tree that may get more budget keeps its cached
                    // sequences (the LRU drops them if others need the room):
                    // released, its restart re-evaluated its paths, 1.10x
                    // evaluated/distinct on the restarted trees of the quality
                    // bench against 1.00x on the rest.
                    if !may_restart {
                        self.release_cache(t)?;
                    }
                    self.held.push(t);
                } else {
                    self.finish_tree(t, base, t0, on_done)?;
                }
                continue;
            }
            for s in starts {
                self.waiting.push((t, s));
            }
            i += 1;
        }
        Ok(())
    }

    /// Free the cached sequences of tree `t`.
    fn release_cache(&mut self, t: usize) -> Result<(), SearchError> {
        let mut k = 0;
        while k < self.cache.len() {
            if self.cache[k].tree == t {
                let c = self.cache.swap_remove(k);
                self.engine.release(c.seq)?;
            } else {
                k += 1;
            }
        }
        Ok(())
    }

    /// Every tree has stopped: pass the budget the held trees left unspent
    /// to those that want more (in input order, equal shares), and start
    /// them again. Depends only on the trees' states, never on batching.
    /// Returns whether any tree was restarted.
    fn redistribute(&mut self) -> Result<bool, SearchError> {
        if self.held.is_empty() {
            return Ok(false);
        }
        self.held.sort_unstable();
        let mut wanting = Vec::new();
        for &t in &self.held {
            let tree = self.trees[t]
                .as_mut()
                .ok_or(SearchError::Internal("held tree already finished"))?;
            self.pool += tree.give_back() as u64;
            if tree.wants_more() {
                wanting.push(t);
            }
        }
        if wanting.is_empty() {
            return Ok(false);
        }
        let share = self.pool / wanting.len() as u64;
        let mut restarted = false;
        for t in wanting {
            let tree = self.trees[t]
                .as_mut()
                .ok_or(SearchError::Internal("held tree already finished"))?;
            let need = tree.rollout_need() as u64;
            if share < need {
                continue;
            }
            let rollouts = (share / need).max(1) as u32;
            tree.extend(share as u32, rollouts);
            self.pool -= share;
            self.held.retain(|&h| h != t);
            self.queue.push_back(t);
            restarted = true;
        }
        Ok(restarted)
    }

    fn finish_tree(
        &mut self,
        t: usize,
        base: &crate::engine::EngineStats,
        t0: Instant,
        on_done: &mut dyn FnMut(Outcome<'_>, &Progress),
    ) -> Result<(), SearchError> {
        self.release_cache(t)?;
        let tree = self.trees[t]
            .take()
            .ok_or(SearchError::Internal("tree finished twice"))?;
        let a = self.acct[t];
        let res = tree.finish(a.evaluated, a.resend);
        self.done += 1;
        let p = self.progress(base, t0);
        on_done(Ok(&res), &p);
        self.results[t] = Some(Ok(res));
        Ok(())
    }

    fn progress(&self, base: &crate::engine::EngineStats, t0: Instant) -> Progress {
        let st = self.engine.stats();
        Progress {
            trees_done: self.done,
            trees_failed: self.failed,
            trees_total: self.trees.len(),
            tokens_sampled: st.tokens_sampled - base.tokens_sampled,
            tokens_evaluated: st.tokens_evaluated - base.tokens_evaluated,
            elapsed_seconds: t0.elapsed().as_secs_f64(),
        }
    }

    /// Score one tree's chains with the judge and hand the scores back.
    fn judge_tree(
        &mut self,
        t: usize,
        reqs: &[super::judge::JudgeRequest],
    ) -> Result<(), SearchError> {
        let judge = self.judge.as_deref_mut().ok_or_else(|| {
            SearchError::Config(
                "the value uses `judge` but this run has no judge engine ([search.judge])".into(),
            )
        })?;
        let scores = judge.judge(reqs)?;
        let tree = self.trees[t]
            .as_mut()
            .ok_or(SearchError::Internal("judged tree already finished"))?;
        for (r, s) in reqs.iter().zip(scores) {
            tree.on_judge(r.node, s)?;
        }
        Ok(())
    }

    /// End tree `t` as failed: free everything it holds, record why. The
    /// caller has removed it from `active` (or it never was).
    fn fail_tree(
        &mut self,
        t: usize,
        err: SearchError,
        base: &crate::engine::EngineStats,
        t0: Instant,
        on_done: &mut dyn FnMut(Outcome<'_>, &Progress),
    ) -> Result<(), SearchError> {
        self.active.retain(|&a| a != t);
        self.held.retain(|&h| h != t);
        self.waiting.retain(|(w, _)| *w != t);
        self.parked.retain(|p| p.tree != t);
        for r in std::mem::take(&mut self.running) {
            if r.tree == t {
                self.engine.release(r.seq)?;
            } else {
                self.running.push(r);
            }
        }
        for c in std::mem::take(&mut self.cache) {
            if c.tree == t {
                self.engine.release(c.seq)?;
            } else {
                self.cache.push(c);
            }
        }
        let Some(tree) = self.trees[t].take() else {
            return Err(SearchError::Internal("tree failed after it finished"));
        };
        tracing::warn!(seed = tree.seed_id(), "search tree failed: {err}");
        let f = TreeFailure {
            seed_id: tree.seed_id().to_string(),
            error: err.to_string(),
        };
        self.done += 1;
        self.failed += 1;
        let p = self.progress(base, t0);
        on_done(Err(&f), &p);
        self.results[t] = Some(Err(f));
        Ok(())
    }

    fn evict_lru(&mut self, keep: Option<usize>) -> Result<bool, SearchError> {
        let victim = self
            .cache
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != keep)
            .min_by_key(|(i, c)| (c.last_use, *i))
            .map(|(i, _)| i);
        match victim {
            Some(i) => {
                let c = self.cache.remove(i);
                self.engine.release(c.seq)?;
                self.report.evictions += 1;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn evict_all(&mut self) -> Result<(), SearchError> {
        while self.evict_lru(None)? {}
        Ok(())
    }

    /// Best source for a start: the deepest state on its path that a running
    /// or cached sequence of the same tree already holds. `Err(())` means
    /// "wait": a running stream will have the exact state cached after the
    /// next step.
    fn find_source(&self, t: usize, start: &StreamStart) -> Result<Option<(Source, usize)>, ()> {
        let last = start.path.len().saturating_sub(1);
        for (k, &(node, len)) in start.path.iter().enumerate().rev() {
            let mut best: Option<(Source, u64)> = None;
            let mut pending = false;
            for (i, r) in self.running.iter().enumerate() {
                if r.tree == t && r.covers.iter().any(|&(n, l)| n == node && l == len) {
                    let ready = self.engine.cached_len(r.seq).is_ok_and(|c| c >= len);
                    if ready {
                        best = Some((Source::Running(i), u64::MAX));
                        break;
                    }
                    pending = true;
                }
            }
            if best.is_none() {
                for (i, c) in self.cache.iter().enumerate() {
                    if c.tree == t
                        && c.covers.iter().any(|&(n, l)| n == node && l == len)
                        && best.as_ref().is_none_or(|(_, u)| c.last_use > *u)
                    {
                        best = Some((Source::Cached(i), c.last_use));
                    }
                }
            }
            if let Some((s, _)) = best {
                return Ok(Some((s, len)));
            }
            if k == last && pending {
                return Err(());
            }
        }
        Ok(None)
    }

    /// Swap out the running stream of the most recently activated tree: keep
    /// its tokens, free its sequence and KV cells. It is rebuilt later.
    fn park_newest(&mut self) -> Result<(), SearchError> {
        let Some(i) = (0..self.running.len())
            .max_by_key(|&i| (self.activation[self.running[i].tree], self.running[i].order))
        else {
            return Ok(());
        };
        let r = self.running.remove(i);
        let tokens = self.engine.tokens(r.seq)?.to_vec();
        self.engine.release(r.seq)?;
        self.report.parks += 1;
        self.parked.push(Parked {
            tree: r.tree,
            stream: r.stream,
            covers: r.covers,
            tokens,
            finishes_at: self.finishes,
        });
        Ok(())
    }

    /// Rebuild parked streams once some stream finished since they were parked.
    fn unpark(&mut self) -> Result<(), SearchError> {
        self.parked.sort_by_key(|p| self.activation[p.tree]);
        let parked = std::mem::take(&mut self.parked);
        for p in parked {
            if p.finishes_at >= self.finishes {
                self.parked.push(p);
                continue;
            }
            let room =
                self.engine.live_sequences() < self.engine.n_seq_max() || self.evict_lru(None)?;
            if !room {
                self.parked.push(p);
                continue;
            }
            let seq = self.engine.new_sequence()?;
            self.engine.append(seq, &p.tokens)?;
            self.order += 1;
            self.running.push(Running {
                tree: p.tree,
                stream: p.stream,
                seq,
                covers: p.covers,
                last_step: 0,
                order: self.order,
            });
        }
        Ok(())
    }

    /// Give waiting starts a sequence where possible.
    fn materialize(&mut self) -> Result<(), SearchError> {
        self.unpark()?;
        let waiting = std::mem::take(&mut self.waiting);
        for (t, start) in waiting {
            if self.is_failing(t) {
                continue;
            }
            match self.try_start(t, &start) {
                Ok(true) => {}
                Ok(false) => self.waiting.push((t, start)),
                Err(e) => self.tree_error(t, e)?,
            }
        }
        Ok(())
    }

    fn try_start(&mut self, t: usize, start: &StreamStart) -> Result<bool, SearchError> {
        let Ok(source) = self.find_source(t, start) else {
            return Ok(false);
        };
        let full = self.engine.live_sequences() >= self.engine.n_seq_max();
        let keep = match &source {
            Some((Source::Cached(i), _)) => Some(*i),
            _ => None,
        };
        let mut take_over = false;
        if full && !self.evict_lru(keep)? {
            match keep {
                Some(_) => take_over = true,
                None => return Ok(false),
            }
        }
        // Indices into `cache` may have shifted after an eviction: look again.
        let source = match (source, keep) {
            (Some((Source::Cached(_), len)), Some(_)) => {
                let idx = self.find_cached_exact(t, start, len);
                idx.map(|i| (Source::Cached(i), len))
            }
            (s, _) => s,
        };
        let seq = match source {
            None => {
                self.report.fresh_sequences += 1;
                let seq = self.engine.new_sequence()?;
                if let Err(e) = self.engine.append(seq, &start.tokens) {
                    self.engine.release(seq)?;
                    return Err(e.into());
                }
                seq
            }
            Some((src, len)) => {
                let src_seq = match src {
                    Source::Running(i) => self.running[i].seq,
                    Source::Cached(i) => {
                        self.cache[i].last_use = self.tick;
                        self.cache[i].seq
                    }
                };
                let seq = if take_over {
                    if let Source::Cached(i) = src {
                        self.cache.remove(i);
                    }
                    src_seq
                } else {
                    self.report.forks += 1;
                    self.engine.fork(src_seq)?
                };
                let extended = self.engine.truncate(seq, len).and_then(|_| {
                    self.engine
                        .append(seq, start.tokens.get(len..).unwrap_or(&[]))
                });
                if let Err(e) = extended {
                    self.engine.release(seq)?;
                    return Err(e.into());
                }
                seq
            }
        };
        if self.engine.tokens(seq)? != start.tokens.as_slice() {
            self.engine.release(seq)?;
            return Err(SearchError::Internal(
                "a stream's sequence does not hold its start state",
            ));
        }
        // What a cache-less search would evaluate on top of what we will.
        let cached = self.engine.cached_len(seq)?;
        // Tokens of this start that were evaluated before and evicted since.
        let reeval = start.tokens.len().saturating_sub(cached + 1);
        if self.started[t] && reeval > 0 && self.cfg.grow_cells {
            let cap = self.engine.n_ctx() * 3 / 4;
            if let Some(b) = self.cells_budget.as_mut() {
                *b = (*b + reeval).min(cap.max(*b));
            }
        }
        self.started[t] = true;
        let saved = if cached == start.tokens.len() {
            cached.saturating_sub(1)
        } else {
            cached
        };
        self.acct[t].resend += saved as u64;
        self.order += 1;
        self.running.push(Running {
            tree: t,
            stream: start.stream,
            seq,
            covers: start.path.clone(),
            last_step: 0,
            order: self.order,
        });
        Ok(true)
    }

    fn find_cached_exact(&self, t: usize, start: &StreamStart, len: usize) -> Option<usize> {
        let node = start.path.iter().find(|&&(_, l)| l == len)?.0;
        self.cache
            .iter()
            .enumerate()
            .filter(|(_, c)| c.tree == t && c.covers.iter().any(|&(n, l)| n == node && l == len))
            .max_by_key(|(i, c)| (c.last_use, usize::MAX - i))
            .map(|(i, _)| i)
    }

    /// One engine step over up to n_parallel running streams.
    fn step(&mut self) -> Result<(), SearchError> {
        self.tick += 1;
        let mut order: Vec<usize> = (0..self.running.len()).collect();
        order.sort_by_key(|&i| (self.running[i].last_step, self.running[i].order));
        let mut picked: Vec<usize> = Vec::new();
        let mut tokens = 0usize;
        for i in order {
            if picked.len() >= self.engine.n_parallel() {
                break;
            }
            let seq = self.running[i].seq;
            let len = self.engine.tokens(seq)?.len();
            let cached = self.engine.cached_len(seq)?;
            let pend = (len - cached.min(len)).max(1);
            if !picked.is_empty() && tokens + pend > self.cfg.max_batch_tokens {
                continue;
            }
            tokens += pend;
            picked.push(i);
        }
        let mut reqs = Vec::with_capacity(picked.len());
        for &i in &picked {
            let (t, stream, seq) = (
                self.running[i].tree,
                self.running[i].stream,
                self.running[i].seq,
            );
            let tree = self.trees[t]
                .as_ref()
                .ok_or(SearchError::Internal("running stream of a finished tree"))?;
            match tree.sampling(stream) {
                Ok(sampling) => reqs.push(StepRequest { seq, sampling }),
                Err(e) => {
                    self.tree_error(t, e)?;
                    return Ok(());
                }
            }
        }
        let calls_before = self.engine.stats().decode_calls;
        let outs = loop {
            // Attribute pending tokens now: a failed plan may re-queue a token.
            let mut pend = Vec::with_capacity(picked.len());
            for &i in &picked {
                let seq = self.running[i].seq;
                let len = self.engine.tokens(seq)?.len();
                let cached = self.engine.cached_len(seq)?;
                pend.push((len - cached.min(len)).max(1) as u64);
            }
            match self.engine.step(&reqs) {
                Ok(o) => {
                    for (k, &i) in picked.iter().enumerate() {
                        let t = self.running[i].tree;
                        self.acct[t].evaluated += pend[k];
                        self.acct[t].resend += pend[k];
                        self.report.attributed_tokens += pend[k];
                    }
                    break o;
                }
                Err(EngineError::KvFull(msg)) => {
                    if self.evict_lru(None)? {
                        continue;
                    }
                    // Nothing cached is left to drop: swap out the newest tree's
                    // stream and let the others finish first.
                    if self.running.len() <= 1 {
                        // One stream alone does not fit: that tree cannot run here.
                        let t = self.running[0].tree;
                        let e = EngineError::KvFull(format!(
                            "{msg}; one stream of this seed alone needs more KV cells than n_ctx: \
                             raise [engine] n_ctx or lower the search's token budgets"
                        ));
                        self.tree_error(t, e.into())?;
                        return Ok(());
                    }
                    self.park_newest()?;
                    return Ok(());
                }
                Err(EngineError::ContextFull { seq, pos, n_ctx }) => {
                    let Some(r) = self.running.iter().find(|r| r.seq == seq) else {
                        return Err(EngineError::ContextFull { seq, pos, n_ctx }.into());
                    };
                    self.tree_error(r.tree, EngineError::ContextFull { seq, pos, n_ctx }.into())?;
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
        };
        self.report.steps.push(StepInfo {
            sequences: picked.len() as u32,
            active_trees: self.active.len() as u32,
            queue_pending: !self.queue.is_empty(),
            decode_calls: (self.engine.stats().decode_calls - calls_before) as u32,
        });
        let mut finished: Vec<usize> = Vec::new();
        for (k, &i) in picked.iter().enumerate() {
            let (t, stream, seq) = {
                let r = &mut self.running[i];
                r.last_step = self.tick;
                (r.tree, r.stream, r.seq)
            };
            if self.is_failing(t) {
                continue;
            }
            let tree = self.trees[t]
                .as_mut()
                .ok_or(SearchError::Internal("running stream of a finished tree"))?;
            let ctl = match tree.on_token(stream, &outs[k]) {
                Ok(c) => c,
                Err(e) => {
                    self.tree_error(t, e)?;
                    continue;
                }
            };
            match ctl {
                Ctl::Continue => {}
                Ctl::Edit {
                    truncate_to,
                    append,
                } => {
                    let edited = self
                        .engine
                        .truncate(seq, truncate_to)
                        .and_then(|_| self.engine.append(seq, &append));
                    if let Err(e) = edited {
                        self.tree_error(t, e.into())?;
                        continue;
                    }
                }
                Ctl::Finish { covers } => {
                    finished.push(i);
                    self.finishes += 1;
                    let keep = self.cfg.max_cached.is_none_or(|m| m > 0) && !covers.is_empty();
                    if keep {
                        self.cache.push(Cached {
                            tree: t,
                            seq,
                            covers,
                            last_use: self.tick,
                        });
                    } else {
                        self.engine.release(seq)?;
                    }
                    continue;
                }
            }
            let expect = self.trees[t].as_ref().map(|tree| tree.expected_len(stream));
            let ok = matches!(expect, Some(Ok(n)) if self.engine.tokens(seq)?.len() == n);
            if !ok {
                self.tree_error(
                    t,
                    SearchError::Internal("a stream's sequence length disagrees with its tree"),
                )?;
            }
        }
        finished.sort_unstable();
        for i in finished.into_iter().rev() {
            self.running.remove(i);
        }
        if let Some(m) = self.cfg.max_cached {
            while self.cache.len() > m {
                self.evict_lru(None)?;
            }
        }
        if let Some(m) = self.cells_budget {
            while self.engine.cells_used() > m && self.evict_lru(None)? {}
        }
        let cells = self.engine.cells_used() as u64;
        self.report.peak_cells = self.report.peak_cells.max(cells);
        self.cells_sum += cells;
        Ok(())
    }
}
