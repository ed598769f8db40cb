//! One tree's search as a pure state machine. It never calls the model: the
//! driver asks it for generation streams ([`TreeSearch::poll`]), steps those
//! streams together with other trees' streams in shared decode calls, and
//! hands every sampled token back ([`TreeSearch::on_token`]).
//!
//! The search runs in iterations. An iteration selects a node by UCT,
//! starts up to K streams from it, and each stream samples the new child's
//! action and keeps going (the rollout) until the thought ends; then the
//! pipeline closes the thought and the stream writes the answer. Every action
//! of a rollout becomes a node, so later expansions start from it. Values are
//! backed up only when all streams of the iteration are done, in stream
//! order, so the tree does not depend on how the driver interleaves streams.
//! One stream is one rollout and one backup, whatever it reflected: the value
//! of its last chain goes up the whole path once.
//!
//! Text is kept as bytes per action and decoded only once joined, so a
//! character split between two actions survives; an action is not closed
//! while its end could be the start of an answer marker, so a marker the
//! model writes across what would be two actions is still found.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::engine::sampling::derive_seed;
use crate::engine::{ChatMessage, Engine, SamplingParams, Token, TokenOut};
use crate::record::Seed;
use crate::stages::answer::answer_key;

use super::config::{ReflectionPolicy, SearchConfig, SelectRule};
use super::judge::JudgeRequest;
use super::result::{
    ChainResult, NodeExport, Picks, StopReason, TreeExport, TreeResult, TreeStats,
};
use super::tree::{Answer, NodeId, TerminalCause, Tree};
use super::value::{ChainView, Value, ValueFunction, Votes};
use super::verify::Verifier;
use super::SearchError;

/// Id of a generation stream, unique within its tree.
pub type StreamId = u32;

/// A generation stream the tree wants: continue from the state `from`.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamStart {
    pub stream: StreamId,
    pub from: NodeId,
    /// Root..=`from`, each with its prefix length in tokens (so a cached
    /// sequence holding any ancestor can be forked and extended).
    pub path: Vec<(NodeId, usize)>,
    /// All tokens of the state `from`, prompt included.
    pub tokens: Vec<Token>,
}

/// What the driver must do with a stream's sequence after a token.
#[derive(Debug, Clone, PartialEq)]
pub enum Ctl {
    /// Keep sampling.
    Continue,
    /// Cut the sequence to `truncate_to` tokens, append `append`, keep sampling.
    Edit {
        truncate_to: usize,
        append: Vec<Token>,
    },
    /// The stream is over. The sequence's first tokens hold these states
    /// (node, prefix length): the driver may keep it cached for them.
    Finish { covers: Vec<(NodeId, usize)> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Thought,
    Answer,
}

#[derive(Debug, Clone)]
struct Stream {
    /// Index in its iteration, and nodes made so far: the creation key.
    index: u32,
    made: u32,
    start: NodeId,
    /// Deepest node this stream has created (or `start`).
    cur: NodeId,
    phase: Phase,
    act_tokens: Vec<Token>,
    act_conf: Vec<f32>,
    act_bytes: Vec<u8>,
    /// Byte length of `act_bytes` after each action token.
    act_ends: Vec<usize>,
    ans_tokens: Vec<Token>,
    ans_conf: Vec<f32>,
    ans_bytes: Vec<u8>,
    /// Tokens this stream may sample (thought and answers).
    allot: u32,
    used: u32,
    /// `used` when the current attempt (the first, or the last reflection) began.
    attempt_start: u32,
    /// Length of the engine sequence as the tree believes it.
    seq_len: usize,
    /// Node whose answer is being written.
    terminal: Option<NodeId>,
    /// Terminal nodes this stream reached, in order (one per chain segment).
    ended: Vec<NodeId>,
    thought_sampling: SamplingParams,
    answer_sampling: SamplingParams,
    done: bool,
}

/// Tokenized texts the search injects.
#[derive(Debug, Clone)]
struct Injected {
    close: Vec<Token>,
    /// Texts that end a thought when the model writes them (from the close tag).
    markers: Vec<String>,
    output_close: String,
    reflection_glued: Vec<Token>,
    reflection_glued_text: String,
    reflection_plain: Vec<Token>,
    reflection_plain_text: String,
}

/// One tree search.
pub struct TreeSearch {
    cfg: SearchConfig,
    seed_id: String,
    prompt: String,
    system: Option<String>,
    reference: Option<String>,
    verifier: Arc<Verifier>,
    value: Value,
    /// Positions one sequence may reach (the engine's context).
    n_ctx: usize,
    tree: Tree,
    inj: Injected,
    tree_seed: u64,
    /// Streams of the current iteration; stream id = `stream_base + index`.
    streams: Vec<Stream>,
    stream_base: u32,
    rollouts: u32,
    iterations: u32,
    used: u32,
    /// Evaluated tokens later cut out of a sequence and absent from the tree.
    discarded: u64,
    exhausted: Vec<bool>,
    stop: Option<StopReason>,
    /// Streams finished so far and the tokens they sampled (the budget
    /// reservation's estimate of what a rollout needs).
    finished_streams: u32,
    finished_stream_tokens: u64,
    /// Answered terminals whose judge score has not been asked for yet...
    judge_pending: Vec<NodeId>,
    /// ...and how many were asked for and not answered.
    judge_waiting: usize,
}

/// Index of the first action token that touches an answer marker, if the
/// action bytes contain one (`ends[k]` = bytes after token k).
fn marker_cut(bytes: &[u8], ends: &[usize], markers: &[String]) -> Option<usize> {
    let start = markers
        .iter()
        .filter(|m| !m.is_empty())
        .filter_map(|m| bytes.windows(m.len()).position(|w| w == m.as_bytes()))
        .min()?;
    ends.iter().position(|&e| e > start)
}

/// Whether `bytes` ends with a proper prefix of a marker (the action may be
/// the first half of one and must not be closed yet).
fn ends_with_marker_prefix(bytes: &[u8], markers: &[String]) -> bool {
    markers.iter().any(|m| {
        let m = m.as_bytes();
        (1..m.len()).any(|k| bytes.ends_with(&m[..k]))
    })
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn c_answer(cfg: &SearchConfig) -> usize {
    cfg.answer_max_tokens as usize
}

fn mean(xs: impl Iterator<Item = f32>) -> f64 {
    let (mut s, mut n) = (0.0f64, 0u64);
    for x in xs {
        s += x as f64;
        n += 1;
    }
    if n == 0 {
        0.0
    } else {
        s / n as f64
    }
}

impl TreeSearch {
    /// A search for one seed. Uses the engine only to render and tokenize the prompt.
    pub fn new(
        engine: &dyn Engine,
        seed: &Seed,
        cfg: &SearchConfig,
        verifier: Arc<Verifier>,
    ) -> Result<Self, SearchError> {
        let cfg = cfg.clone().build()?;
        let prompts = cfg.prompts();
        let system = seed
            .system
            .clone()
            .or_else(|| cfg.system_prompt.clone())
            .unwrap_or_else(|| prompts.system.clone());
        let system = (!system.is_empty()).then_some(system);
        let mut msgs = Vec::new();
        if let Some(s) = &system {
            msgs.push(ChatMessage::system(s.clone()));
        }
        msgs.push(ChatMessage::user(seed.prompt.clone()));
        let text = engine.apply_chat_template(&msgs)? + &prompts.thought_open;
        // Seed text is tokenized plain: control-token strings in it cannot open turns.
        let mut tokens = engine.chat_tokens(&msgs)?;
        tokens.extend(engine.tokenize(&prompts.thought_open, false)?);
        if tokens.is_empty() {
            return Err(SearchError::Config(
                "the prompt tokenizes to nothing".into(),
            ));
        }
        let value = cfg.value.build()?;
        let glued_text = format!(
            "{}{}{}",
            prompts.reflection_before, prompts.reflection, prompts.reflection_after
        );
        let plain_text = format!("{}{}", prompts.reflection, prompts.reflection_after);
        let inj = Injected {
            close: engine.tokenize(&prompts.thought_close, false)?,
            markers: prompts
                .thought_close
                .split_whitespace()
                .map(str::to_string)
                .collect(),
            output_close: prompts.output_close.clone(),
            reflection_glued: engine.tokenize(&glued_text, false)?,
            reflection_glued_text: glued_text,
            reflection_plain: engine.tokenize(&plain_text, false)?,
            reflection_plain_text: plain_text,
        };
        let tree_seed = derive_seed(cfg.seed, crate::record::seed_hash(&seed.id));
        // One chain must fit one sequence: prompt, a thought token, the close
        // tag and a whole answer.
        let need = tokens.len() + 1 + inj.close.len() + cfg.answer_max_tokens as usize;
        if need > engine.n_ctx() {
            return Err(SearchError::DoesNotFit(format!(
                "the prompt is {} tokens; with the close tag and answer_max_tokens = {} one chain \
                 needs {need} positions, more than n_ctx = {}: shorten the prompt or raise [engine] n_ctx",
                tokens.len(),
                cfg.answer_max_tokens,
                engine.n_ctx()
            )));
        }
        Ok(Self {
            seed_id: seed.id.clone(),
            prompt: seed.prompt.clone(),
            system,
            reference: seed.reference_answer.clone(),
            verifier,
            value,
            n_ctx: engine.n_ctx(),
            tree: Tree::new(tokens, text),
            inj,
            tree_seed,
            streams: Vec::new(),
            stream_base: 0,
            rollouts: 0,
            iterations: 0,
            used: 0,
            discarded: 0,
            exhausted: vec![false],
            stop: None,
            finished_streams: 0,
            finished_stream_tokens: 0,
            judge_pending: Vec::new(),
            judge_waiting: 0,
            cfg,
        })
    }

    pub fn seed_id(&self) -> &str {
        &self.seed_id
    }
    pub fn tree(&self) -> &Tree {
        &self.tree
    }
    pub fn config(&self) -> &SearchConfig {
        &self.cfg
    }
    /// Tokens sampled for this tree so far.
    pub fn tokens_used(&self) -> u32 {
        self.used
    }
    pub fn rollouts(&self) -> u32 {
        self.rollouts
    }
    /// Set once the search has stopped; `poll` then returns nothing.
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.stop
    }
    pub fn is_done(&self) -> bool {
        self.stop.is_some()
    }

    /// Tokens of the budget this tree has not sampled.
    pub fn unspent(&self) -> u32 {
        self.cfg.max_tree_tokens.saturating_sub(self.used)
    }

    /// Whether the tree has what `stop_after_verified` asks for.
    pub fn solved(&self) -> bool {
        let want = self.cfg.stop_after_verified;
        want > 0 && self.distinct_verified_chains() >= want as usize
    }

    /// A stopped tree that more budget could help: not solved, and stopped
    /// by its token budget or rollout count (not because nothing is left).
    pub fn wants_more(&self) -> bool {
        !self.solved()
            && matches!(
                self.stop,
                Some(StopReason::TokenBudget) | Some(StopReason::Rollouts)
            )
    }

    /// What one rollout of this tree costs on average so far (tokens).
    pub fn rollout_need(&self) -> u32 {
        let c = &self.cfg;
        match self.finished_streams {
            0 => c.max_thought_tokens / 2 + c.answer_max_tokens,
            k => (self.finished_stream_tokens / k as u64) as u32,
        }
        .max(c.answer_max_tokens + 1)
    }

    /// Hand the budget this tree has not spent back: its budget becomes what
    /// it used. Returns the tokens given back.
    pub fn give_back(&mut self) -> u32 {
        let u = self.unspent();
        self.cfg.max_tree_tokens = self.used;
        u
    }

    /// Search on from where the tree stopped with `tokens` more budget and
    /// `rollouts` more rollouts (the batch's unspent budget, `pool_unspent`).
    pub fn extend(&mut self, tokens: u32, rollouts: u32) {
        self.cfg.max_tree_tokens += tokens;
        self.cfg.max_rollouts += rollouts;
        self.stop = None;
    }
    /// Length of the close tag the pipeline appends at a terminal state.
    pub fn close_tag_len(&self) -> usize {
        self.inj.close.len()
    }

    fn k(&self) -> usize {
        self.cfg.expand_k as usize
    }

    fn expandable(&self, id: NodeId) -> bool {
        let n = self.tree.node(id);
        n.terminal.is_none()
            && n.children.len() < self.k()
            && n.seg_depth < self.cfg.effective_max_depth()
            && n.seg_tokens < self.cfg.max_thought_tokens
            // Room for one more thought token, the close tag and an answer.
            && (n.path_len as usize) + 1 + self.inj.close.len() + c_answer(&self.cfg) <= self.n_ctx
    }

    fn recompute_exhausted(&mut self) {
        let len = self.tree.len();
        self.exhausted = vec![false; len];
        for i in (0..len).rev() {
            let id = NodeId(i as u32);
            let kids_done = self
                .tree
                .node(id)
                .children
                .iter()
                .all(|c| self.exhausted[c.idx()]);
            self.exhausted[i] = kids_done && !self.expandable(id);
        }
    }

    /// UCT descent to the first expandable node; `None` when nothing is left.
    fn select(&self) -> Option<NodeId> {
        let mut cur = NodeId::ROOT;
        loop {
            if self.exhausted.get(cur.idx()).copied().unwrap_or(false) {
                return None;
            }
            if self.expandable(cur) {
                return Some(cur);
            }
            let node = self.tree.node(cur);
            let mut best: Option<(f64, NodeId)> = None;
            for &c in &node.children {
                if self.exhausted[c.idx()] {
                    continue;
                }
                let s = self.tree.uct(cur, c, self.cfg.c_puct);
                if best.is_none_or(|(b, _)| s > b) {
                    best = Some((s, c));
                }
            }
            cur = best?.1;
        }
    }

    fn node_seed(&self, id: NodeId) -> u64 {
        let mut s = self.tree_seed;
        for n in self.tree.path(id).into_iter().skip(1) {
            let node = self.tree.node(n);
            let pos = node
                .parent
                .map(|p| {
                    self.tree
                        .node(p)
                        .children
                        .iter()
                        .position(|&c| c == n)
                        .unwrap_or(0)
                })
                .unwrap_or(0);
            s = derive_seed(s, pos as u64);
        }
        s
    }

    fn should_stop(&self) -> Option<StopReason> {
        let c = &self.cfg;
        if self.rollouts >= c.max_rollouts {
            return Some(StopReason::Rollouts);
        }
        if c.max_tree_tokens.saturating_sub(self.used) < c.answer_max_tokens + 1 {
            return Some(StopReason::TokenBudget);
        }
        if c.early_stop_chains > 0 && self.distinct_chains() >= c.early_stop_chains as usize {
            return Some(StopReason::EnoughChains);
        }
        if self.solved() {
            return Some(StopReason::EnoughVerified);
        }
        let root = self.tree.node(NodeId::ROOT);
        if c.early_stop_share > 0.0 && root.n >= c.early_stop_min_visits.max(1) {
            let best = root
                .children
                .iter()
                .map(|&ch| self.tree.node(ch).n)
                .max()
                .unwrap_or(0);
            if best as f64 / root.n as f64 >= c.early_stop_share {
                return Some(StopReason::BestChildShare);
            }
        }
        None
    }

    /// New streams to run, if the previous iteration is complete. Empty while
    /// streams are running or once the search has stopped.
    pub fn poll(&mut self) -> Vec<StreamStart> {
        if self.stop.is_some() {
            return Vec::new();
        }
        if !self.streams.is_empty() {
            if self.streams.iter().any(|s| !s.done) || self.awaiting_judge() {
                return Vec::new();
            }
            self.complete_iteration();
        }
        if let Some(r) = self.should_stop() {
            self.stop = Some(r);
            return Vec::new();
        }
        let Some(x) = self.select() else {
            self.stop = Some(StopReason::Exhausted);
            return Vec::new();
        };
        let c = &self.cfg;
        let node = self.tree.node(x);
        let want =
            (self.k() - node.children.len()).min((c.max_rollouts - self.rollouts) as usize) as u32;
        let remaining = c.max_tree_tokens - self.used;
        let min_allot = c.answer_max_tokens + 1;
        let n = want.min(remaining / min_allot);
        if n == 0 {
            self.stop = Some(StopReason::TokenBudget);
            return Vec::new();
        }
        // Reserve the budget for the rollouts still to come: each stream gets
        // the same share of what is left as every rollout that can still be
        // funded (what a stream does not use returns to the pool), so early
        // streams cannot spend the budget of later ones on long reflections.
        // A rollout is assumed to need what finished streams used on average
        // (before any finished: half the thought cap and an answer).
        let need = self.rollout_need();
        let c = &self.cfg;
        let fundable = (remaining / need).max(n);
        let rollouts_left = (c.max_rollouts - self.rollouts).min(fundable);
        let per_chain = c.max_thought_tokens + c.answer_max_tokens;
        let cap = per_chain.saturating_mul(c.reflection.max_per_chain + 1);
        let share = (remaining / rollouts_left).min(remaining / n);
        // An equal share can be shorter than one unreflected chain (1,600
        // tokens over 6 rollouts is 266, while the 0.5B model's greedy
        // chains need 280 on average): such thoughts were cut and answered
        // anyway. A stream may take one whole chain while what the later
        // rollouts need on average stays reserved; reflections still live
        // within the share.
        let later = rollouts_left.saturating_sub(n);
        let room = remaining.saturating_sub(later.saturating_mul(need)) / n;
        let allot = share.max(per_chain.min(room)).min(cap).max(min_allot);
        let base_seed = self.node_seed(x);
        let first_slot = node.children.len() as u64;
        let path: Vec<(NodeId, usize)> = self
            .tree
            .path(x)
            .into_iter()
            .map(|id| (id, self.tree.node(id).path_len as usize))
            .collect();
        let tokens = self.tree.path_tokens(x);
        self.iterations += 1;
        let mut out = Vec::with_capacity(n as usize);
        for j in 0..n as u64 {
            let s = derive_seed(base_seed, first_slot + j);
            self.streams.push(Stream {
                index: j as u32,
                made: 0,
                start: x,
                cur: x,
                phase: Phase::Thought,
                act_tokens: Vec::new(),
                act_conf: Vec::new(),
                act_bytes: Vec::new(),
                act_ends: Vec::new(),
                ans_tokens: Vec::new(),
                ans_conf: Vec::new(),
                ans_bytes: Vec::new(),
                allot,
                used: 0,
                attempt_start: 0,
                seq_len: tokens.len(),
                terminal: None,
                ended: Vec::new(),
                thought_sampling: SamplingParams::new(self.cfg.temperature, self.cfg.top_p, s),
                answer_sampling: SamplingParams::new(
                    self.cfg.answer_temperature,
                    self.cfg.top_p,
                    derive_seed(s, 0xA5),
                ),
                done: false,
            });
            out.push(StreamStart {
                stream: self.stream_base + j as u32,
                from: x,
                path: path.clone(),
                tokens: tokens.clone(),
            });
        }
        self.rollouts += n;
        out
    }

    fn stream_index(&self, id: StreamId) -> Result<usize, SearchError> {
        let i = id
            .checked_sub(self.stream_base)
            .map(|i| i as usize)
            .filter(|&i| i < self.streams.len() && !self.streams[i].done);
        i.ok_or(SearchError::UnknownStream(id))
    }

    /// Sampling settings for the stream's next token.
    pub fn sampling(&self, id: StreamId) -> Result<SamplingParams, SearchError> {
        let s = &self.streams[self.stream_index(id)?];
        Ok(match s.phase {
            Phase::Thought => s.thought_sampling,
            Phase::Answer => s.answer_sampling,
        })
    }

    /// The sequence length the tree expects the stream's engine sequence to have.
    pub fn expected_len(&self, id: StreamId) -> Result<usize, SearchError> {
        Ok(self.streams[self.stream_index(id)?].seq_len)
    }

    fn is_boundary(&self, s: &Stream) -> bool {
        let n = s.act_tokens.len() as u32;
        match self.cfg.granularity.fixed_len() {
            Some(len) => n >= len,
            None => {
                if n >= self.cfg.step_max_tokens {
                    return true;
                }
                let d = self.cfg.step_delimiter.as_bytes();
                let b = &s.act_bytes;
                // A delimiter counts once some content precedes it, so a run of
                // blank lines never makes an empty step.
                let Some(first) = b.iter().position(|c| !c.is_ascii_whitespace()) else {
                    return false;
                };
                b.len() >= d.len() && b[first..].windows(d.len()).any(|w| w == d)
            }
        }
    }

    fn next_key(&mut self, i: usize) -> [u32; 3] {
        let s = &mut self.streams[i];
        s.made += 1;
        [self.iterations, s.index, s.made]
    }

    /// Turn the stream's pending action into a node under `cur`.
    fn seal(&mut self, i: usize) {
        let s = &mut self.streams[i];
        if s.act_tokens.is_empty() {
            return;
        }
        let tokens = std::mem::take(&mut s.act_tokens);
        let conf = std::mem::take(&mut s.act_conf);
        let bytes = std::mem::take(&mut s.act_bytes);
        s.act_ends.clear();
        let parent = s.cur;
        let key = self.next_key(i);
        let id = self.tree.add_child(parent, tokens, conf, bytes, false, key);
        self.streams[i].cur = id;
    }

    /// The thought of stream `i` ends: close it and open the answer.
    fn end_thought(&mut self, i: usize, cause: TerminalCause) -> Ctl {
        self.seal(i);
        let (start, cur) = (self.streams[i].start, self.streams[i].cur);
        // A stream that ended before writing anything still owns a chain: an empty action.
        let t = if cur == start {
            let key = self.next_key(i);
            let id = self
                .tree
                .add_child(start, Vec::new(), Vec::new(), Vec::new(), false, key);
            self.streams[i].cur = id;
            id
        } else {
            cur
        };
        self.tree.node_mut(t).terminal = Some(cause);
        let len = self.tree.node(t).path_len as usize;
        let s = &mut self.streams[i];
        s.terminal = Some(t);
        s.phase = Phase::Answer;
        s.seq_len = len + self.inj.close.len();
        Ctl::Edit {
            truncate_to: len,
            append: self.inj.close.clone(),
        }
    }

    fn chain_reward(&self, t: NodeId, answer_conf: &[f32]) -> f64 {
        let path = self.tree.path(t);
        mean(
            path.iter()
                .flat_map(|&n| self.tree.node(n).confidences.iter().copied())
                .chain(answer_conf.iter().copied()),
        )
    }

    /// Rollout value of the segment `start` -> `t`: mean confidence of the
    /// tokens generated below `start` on the way to `t`, plus `t`'s answer.
    fn rollout_value(&self, start: NodeId, t: NodeId) -> f64 {
        let path = self.tree.path(t);
        let below = path.iter().skip_while(|&&n| n != start).skip(1);
        let ans = self
            .tree
            .node(t)
            .answer
            .as_ref()
            .map(|a| a.confidences.as_slice())
            .unwrap_or(&[]);
        mean(
            below
                .flat_map(|&n| self.tree.node(n).confidences.iter().copied())
                .chain(ans.iter().copied()),
        )
    }

    fn thought_ends_with_newline(&self, t: NodeId) -> bool {
        let mut cur = Some(t);
        while let Some(id) = cur {
            let n = self.tree.node(id);
            if !n.text.is_empty() && id != NodeId::ROOT {
                return n.text.ends_with('\n');
            }
            if id == NodeId::ROOT {
                return true;
            }
            cur = n.parent;
        }
        true
    }

    fn finish_answer(&mut self, i: usize) -> Result<Ctl, SearchError> {
        let t = self.streams[i].terminal.ok_or(SearchError::Internal(
            "answer finished without a terminal node",
        ))?;
        let s = &mut self.streams[i];
        let raw = lossy(&s.ans_bytes);
        let text = match raw.find(&self.inj.output_close) {
            Some(p) => raw[..p].trim().to_string(),
            None => raw.trim().to_string(),
        };
        let tokens = std::mem::take(&mut s.ans_tokens);
        let conf = std::mem::take(&mut s.ans_conf);
        s.ans_bytes.clear();
        let reward = self.chain_reward(t, &conf);
        let verified = self.reference.as_ref().map(|r| (self.verifier)(&text, r));
        let key = answer_key(&text);
        self.tree.node_mut(t).answer = Some(Answer {
            text,
            tokens,
            confidences: conf,
            reward,
            verified,
            key,
            judge: None,
        });
        if self.value.needs_judge() {
            self.judge_pending.push(t);
        }
        self.streams[i].ended.push(t);
        let r = &self.cfg.reflection;
        let wants = match r.policy {
            ReflectionPolicy::Off => false,
            ReflectionPolicy::OnWrong => verified == Some(false),
            ReflectionPolicy::OnLowReward => reward < r.low_reward_threshold,
            ReflectionPolicy::Always => true,
        };
        let s = &self.streams[i];
        // A reflection is worth starting only with room for another attempt
        // as long as the one that just ended (and at least a thought of an
        // answer's length and the answer), in the allotment and the context:
        // a reflection cut by the budget would be answered half-written.
        let answer = self.cfg.answer_max_tokens;
        let attempt = (s.used - s.attempt_start).max(2 * (answer + 1));
        let funded = s.used + attempt <= s.allot;
        let refl_len = self
            .inj
            .reflection_glued
            .len()
            .max(self.inj.reflection_plain.len());
        let fits = self.tree.node(t).path_len as usize
            + refl_len
            + 2 * (answer as usize + 1)
            + self.inj.close.len()
            <= self.n_ctx;
        if wants && funded && fits && self.tree.node(t).reflections < r.max_per_chain {
            let (toks, text) = if self.thought_ends_with_newline(t) {
                (
                    self.inj.reflection_plain.clone(),
                    self.inj.reflection_plain_text.clone(),
                )
            } else {
                (
                    self.inj.reflection_glued.clone(),
                    self.inj.reflection_glued_text.clone(),
                )
            };
            let len = self.tree.node(t).path_len as usize;
            let key = self.next_key(i);
            let rid =
                self.tree
                    .add_child(t, toks.clone(), Vec::new(), text.into_bytes(), true, key);
            let s = &mut self.streams[i];
            s.cur = rid;
            s.phase = Phase::Thought;
            s.terminal = None;
            s.attempt_start = s.used;
            s.seq_len = len + toks.len();
            return Ok(Ctl::Edit {
                truncate_to: len,
                append: toks,
            });
        }
        let s = &mut self.streams[i];
        s.done = true;
        self.finished_streams += 1;
        self.finished_stream_tokens += s.used as u64;
        let covers = self
            .tree
            .path(t)
            .into_iter()
            .map(|id| (id, self.tree.node(id).path_len as usize))
            .collect();
        Ok(Ctl::Finish { covers })
    }

    /// Route one sampled token of stream `id`.
    pub fn on_token(&mut self, id: StreamId, out: &TokenOut) -> Result<Ctl, SearchError> {
        let i = self.stream_index(id)?;
        if self.streams[i].used >= self.streams[i].allot {
            return Err(SearchError::Internal("stream sampled beyond its allotment"));
        }
        self.streams[i].used += 1;
        self.used += 1;
        let answer_max = self.cfg.answer_max_tokens;
        match self.streams[i].phase {
            Phase::Thought => {
                if out.eog {
                    // End of generation inside the thought: the pipeline closes it
                    // instead (end_thought truncates the EOG away).
                    return Ok(self.end_thought(i, TerminalCause::Eog));
                }
                let s = &mut self.streams[i];
                s.seq_len += 1;
                s.act_tokens.push(out.token);
                s.act_conf.push(out.confidence);
                s.act_bytes.extend_from_slice(&out.piece);
                s.act_ends.push(s.act_bytes.len());
                // An action is never closed while it could end in the first
                // part of a marker, so a marker always lies in one action.
                if let Some(cut) = marker_cut(&s.act_bytes, &s.act_ends, &self.inj.markers) {
                    // The model wrote the answer marker itself: the thought ends
                    // before it, and the pipeline writes the tags.
                    // The dropped tokens were evaluated, except the one just sampled.
                    self.discarded += (s.act_tokens.len() - cut).saturating_sub(1) as u64;
                    s.act_tokens.truncate(cut);
                    s.act_conf.truncate(cut);
                    let keep = if cut == 0 { 0 } else { s.act_ends[cut - 1] };
                    s.act_bytes.truncate(keep);
                    s.act_ends.truncate(cut);
                    return Ok(self.end_thought(i, TerminalCause::AnswerMarker));
                }
                let held = ends_with_marker_prefix(&self.streams[i].act_bytes, &self.inj.markers);
                if !held && self.is_boundary(&self.streams[i]) {
                    self.seal(i);
                    let depth = self.tree.node(self.streams[i].cur).seg_depth;
                    if depth >= self.cfg.effective_max_depth() {
                        return Ok(self.end_thought(i, TerminalCause::DepthCap));
                    }
                }
                let s = &self.streams[i];
                let seg_tokens = self.tree.node(s.cur).seg_tokens + s.act_tokens.len() as u32;
                let out_of_ctx =
                    s.seq_len + 1 + self.inj.close.len() + answer_max as usize > self.n_ctx;
                if seg_tokens >= self.cfg.max_thought_tokens
                    || s.used + 1 + answer_max > s.allot
                    || out_of_ctx
                {
                    return Ok(self.end_thought(i, TerminalCause::TokenBudget));
                }
                Ok(Ctl::Continue)
            }
            Phase::Answer => {
                if out.eog {
                    return self.finish_answer(i);
                }
                let s = &mut self.streams[i];
                s.seq_len += 1;
                s.ans_tokens.push(out.token);
                s.ans_conf.push(out.confidence);
                s.ans_bytes.extend_from_slice(&out.piece);
                let closed = lossy(&s.ans_bytes).contains(&self.inj.output_close);
                if closed || s.ans_tokens.len() as u32 >= answer_max {
                    return self.finish_answer(i);
                }
                Ok(Ctl::Continue)
            }
        }
    }

    /// Back up each stream once: the value of the chain it ended with (a
    /// reflected stream's earlier answers are chains too, but not rollouts).
    fn complete_iteration(&mut self) {
        let rollouts: Vec<(NodeId, NodeId)> = self
            .streams
            .iter()
            .filter_map(|s| s.ended.last().map(|&t| (s.start, t)))
            .collect();
        let votes = self.votes();
        for (start, t) in rollouts {
            let confidence = self.rollout_value(start, t);
            let v = self.value_of(t, confidence, &votes);
            self.tree.backprop(t, v);
        }
        // The iteration is over: its stream ids are never reused.
        self.stream_base += self.streams.len() as u32;
        self.streams.clear();
        self.tree.sort_children();
        self.recompute_exhausted();
    }

    /// Final-answer votes of every answered terminal so far.
    fn votes(&self) -> Votes {
        let mut v = Votes::default();
        for n in &self.tree.nodes {
            if let Some(a) = &n.answer {
                v.add(a.key.as_deref());
            }
        }
        v
    }

    /// The value function's score of the chain ending at `t`.
    fn value_of(&self, t: NodeId, confidence: f64, votes: &Votes) -> f64 {
        let Some(a) = &self.tree.node(t).answer else {
            return 0.0;
        };
        self.value.value(
            &ChainView {
                confidence,
                verified: a.verified,
                key: a.key.as_deref(),
                judge: a.judge,
            },
            votes,
        )
    }

    /// The final value of every answered terminal (whole-chain confidence,
    /// the tree's final votes).
    fn final_values(&self) -> BTreeMap<NodeId, f64> {
        let votes = self.votes();
        self.tree
            .nodes
            .iter()
            .filter_map(|n| {
                let a = n.answer.as_ref()?;
                Some((n.id, self.value_of(n.id, a.reward, &votes)))
            })
            .collect()
    }

    fn awaiting_judge(&self) -> bool {
        !self.judge_pending.is_empty() || self.judge_waiting > 0
    }

    /// Chains waiting for a judge score (value `judge`); each is handed out once.
    pub fn judge_requests(&mut self) -> Vec<JudgeRequest> {
        let pending = std::mem::take(&mut self.judge_pending);
        self.judge_waiting += pending.len();
        pending
            .into_iter()
            .map(|t| JudgeRequest {
                node: t,
                question: self.prompt.clone(),
                reasoning: self.reasoning(t),
                answer: self
                    .tree
                    .node(t)
                    .answer
                    .as_ref()
                    .map(|a| a.text.clone())
                    .unwrap_or_default(),
            })
            .collect()
    }

    /// The judge's score of a chain handed out by [`TreeSearch::judge_requests`].
    pub fn on_judge(&mut self, node: NodeId, score: f64) -> Result<(), SearchError> {
        let a = self
            .tree
            .nodes
            .get_mut(node.idx())
            .and_then(|n| n.answer.as_mut())
            .filter(|a| a.judge.is_none())
            .ok_or(SearchError::Internal(
                "a judge score for an unknown or judged chain",
            ))?;
        a.judge = Some(score.clamp(0.0, 1.0));
        self.judge_waiting = self.judge_waiting.saturating_sub(1);
        Ok(())
    }

    /// Reasoning text of the chain ending at `t` (prompt excluded, trimmed):
    /// the actions' bytes joined, then decoded.
    pub fn reasoning(&self, t: NodeId) -> String {
        let mut b = Vec::new();
        for id in self.tree.path(t).into_iter().skip(1) {
            b.extend_from_slice(&self.tree.node(id).bytes);
        }
        lossy(&b).trim().to_string()
    }

    fn distinct_chains(&self) -> usize {
        self.distinct_chains_where(|_| true)
    }

    fn distinct_verified_chains(&self) -> usize {
        self.distinct_chains_where(|a| a.verified == Some(true))
    }

    fn distinct_chains_where(&self, keep: impl Fn(&Answer) -> bool) -> usize {
        let mut seen = std::collections::BTreeSet::new();
        for n in &self.tree.nodes {
            if let Some(a) = n.answer.as_ref().filter(|a| keep(a)) {
                seen.insert((self.reasoning(n.id), a.text.clone()));
            }
        }
        seen.len()
    }

    /// The selected terminal node under the configured rule.
    pub fn selected(&self) -> Option<NodeId> {
        self.selected_by(self.cfg.select)
    }

    /// The terminal node a rule picks (the tree is the same under every rule;
    /// only the pick differs, so studies compare rules on one search).
    pub fn selected_by(&self, rule: SelectRule) -> Option<NodeId> {
        self.select_with(rule, &self.final_values())
    }

    fn select_with(&self, rule: SelectRule, values: &BTreeMap<NodeId, f64>) -> Option<NodeId> {
        let value = |id: NodeId| values.get(&id).copied().unwrap_or(0.0);
        // Answered terminals in creation order: ties go to the earliest.
        let answered = || {
            self.tree
                .canonical_order()
                .into_iter()
                .filter(|&id| self.tree.node(id).answer.is_some())
        };
        let best_by = |ids: &mut dyn Iterator<Item = NodeId>| {
            let mut best: Option<(f64, NodeId)> = None;
            for id in ids {
                if best.is_none_or(|(v, _)| value(id) > v) {
                    best = Some((value(id), id));
                }
            }
            best.map(|b| b.1)
        };
        match rule {
            SelectRule::HighestReward => best_by(&mut answered()),
            SelectRule::MajorityVote => {
                let votes = self.votes();
                let key = |id: NodeId| {
                    self.tree
                        .node(id)
                        .answer
                        .as_ref()
                        .and_then(|a| a.key.clone())
                };
                // The answer with the most votes; ties by its chains' summed value.
                let mut groups: BTreeMap<String, (u32, f64, usize)> = BTreeMap::new();
                for (rank, id) in answered().enumerate() {
                    if let Some(k) = key(id) {
                        let g =
                            groups
                                .entry(k.clone())
                                .or_insert((votes.count(Some(&k)), 0.0, rank));
                        g.1 += value(id);
                    }
                }
                let winner = groups
                    .iter()
                    .max_by(|a, b| {
                        (a.1 .0, a.1 .1)
                            .partial_cmp(&(b.1 .0, b.1 .1))
                            .unwrap_or(std::cmp::Ordering::Equal)
                            .then(b.1 .2.cmp(&a.1 .2))
                    })
                    .map(|(k, _)| k.clone());
                match winner {
                    Some(w) => {
                        best_by(&mut answered().filter(|&id| key(id).as_deref() == Some(&w)))
                    }
                    // No answer has a key: the highest value.
                    None => best_by(&mut answered()),
                }
            }
            SelectRule::MostVisited => {
                let mut cur = NodeId::ROOT;
                loop {
                    let node = self.tree.node(cur);
                    let best = node.children.iter().copied().max_by(|&a, &b| {
                        let (na, nb) = (self.tree.node(a), self.tree.node(b));
                        na.n.cmp(&nb.n)
                            .then(na.q().total_cmp(&nb.q()))
                            .then(nb.key.cmp(&na.key))
                    });
                    let stop_here = node.answer.is_some()
                        && best.is_none_or(|b| node.own >= self.tree.node(b).n);
                    if stop_here {
                        return Some(cur);
                    }
                    cur = best?;
                }
            }
        }
    }

    /// Finish: all distinct terminal chains, the pick, the tree export.
    /// `engine_tokens` and `resend_tokens` come from the driver's accounting.
    pub fn finish(self, engine_tokens: u64, resend_tokens: u64) -> TreeResult {
        let values = self.final_values();
        let votes = self.votes();
        let pick_nodes: Vec<(SelectRule, Option<NodeId>)> = SelectRule::ALL
            .into_iter()
            .map(|r| (r, self.select_with(r, &values)))
            .collect();
        let selected_node = pick_nodes
            .iter()
            .find(|(r, _)| *r == self.cfg.select)
            .and_then(|p| p.1);
        // Export ids follow creation keys, so they do not depend on how the
        // driver interleaved the streams.
        let order = self.tree.canonical_order();
        let mut remap = vec![NodeId(0); order.len()];
        for (new, old) in order.iter().enumerate() {
            remap[old.idx()] = NodeId(new as u32);
        }
        let re = |id: NodeId| remap[id.idx()];
        let re_path = |p: Vec<NodeId>| p.into_iter().map(re).collect::<Vec<_>>();
        let mut chains: Vec<ChainResult> = Vec::new();
        let mut seen = std::collections::BTreeMap::new();
        let mut picks = Picks::default();
        for &oid in &order {
            let n = self.tree.node(oid);
            let Some(a) = &n.answer else { continue };
            let reasoning = self.reasoning(n.id);
            let key = (reasoning.clone(), a.text.clone());
            let idx = match seen.get(&key) {
                Some(&i) => i,
                None => {
                    let path = self.tree.path(n.id);
                    let step_confidences = path
                        .iter()
                        .map(|&p| self.tree.node(p))
                        .filter(|p| !p.confidences.is_empty())
                        .map(|p| mean(p.confidences.iter().copied()))
                        .collect();
                    let thought_tokens: usize = path
                        .iter()
                        .map(|&p| self.tree.node(p).confidences.len())
                        .sum();
                    chains.push(ChainResult {
                        node: re(n.id),
                        path: re_path(path),
                        reasoning,
                        answer: a.text.clone(),
                        reward: a.reward,
                        step_confidences,
                        reflections: n.reflections,
                        tokens: (thought_tokens + a.confidences.len()) as u32,
                        verified: a.verified,
                        terminal: n.terminal,
                        visits: n.n,
                        value: values.get(&n.id).copied().unwrap_or(0.0),
                        agreement: votes.share(a.key.as_deref()),
                        answer_key: a.key.clone(),
                        judge: a.judge,
                    });
                    seen.insert(key, chains.len() - 1);
                    chains.len() - 1
                }
            };
            for &(rule, node) in &pick_nodes {
                if node == Some(n.id) {
                    picks.set(rule, idx);
                }
            }
        }
        let best_path = selected_node
            .map(|t| re_path(self.tree.path(t)))
            .unwrap_or_default();
        let distinct = self.tree.distinct_tokens(self.inj.close.len());
        // A search that sends every action as its own request, whole path
        // included, evaluates each node's prefix again (answers likewise).
        let per_action: u64 = self
            .tree
            .nodes
            .iter()
            .skip(1)
            .map(|n| {
                let action = n.path_len as u64;
                let answer = n.answer.as_ref().map_or(0, |a| {
                    (n.path_len as usize + self.inj.close.len() + a.tokens.len()) as u64
                });
                action + answer
            })
            .sum();
        let depth = self.tree.nodes.iter().map(|n| n.depth).max().unwrap_or(0);
        let stats = TreeStats {
            rollouts: self.rollouts,
            iterations: self.iterations,
            nodes: self.tree.len() as u32,
            max_depth: depth,
            tokens_sampled: self.used,
            distinct_tokens: distinct,
            discarded_tokens: self.discarded,
            resend_per_action_tokens: per_action,
            engine_tokens_evaluated: engine_tokens,
            resend_tokens,
            stop: self.stop,
        };
        let nodes = order
            .iter()
            .map(|&id| self.tree.node(id))
            .map(|n| NodeExport {
                id: re(n.id),
                parent: n.parent.map(re),
                children: n.children.iter().map(|&c| re(c)).collect(),
                text: n.text.clone(),
                tokens: n.tokens.clone(),
                confidences: n.confidences.clone(),
                n: n.n,
                q: n.q(),
                own: n.own,
                depth: n.depth,
                reflection: n.reflection,
                terminal: n.terminal,
                answer: n.answer.clone(),
            })
            .collect();
        let export = TreeExport {
            seed_id: self.seed_id.clone(),
            prompt: self.prompt.clone(),
            reference_answer: self.reference.clone(),
            config: self.cfg.clone(),
            stop: self.stop,
            best_path,
            nodes,
        };
        TreeResult {
            seed_id: self.seed_id,
            prompt: self.prompt,
            system: self.system,
            reference_answer: self.reference,
            chains,
            selected: picks.get(self.cfg.select),
            picks,
            stats,
            tree: export,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::marker_cut;

    #[test]
    fn marker_cut_finds_the_first_token_touching_a_marker() {
        let m = vec!["</Thought>".to_string(), "<Output>".to_string()];
        // tokens: "so 5", ".</", "Thought>"
        let b = b"so 5.</Thought>";
        assert_eq!(marker_cut(b, &[4, 7, 15], &m), Some(1));
        assert_eq!(marker_cut(b"so 5.", &[4, 5], &m), None);
        assert_eq!(marker_cut(b"<Output>", &[8], &m), Some(0));
    }
}
