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

use std::sync::Arc;

use crate::engine::sampling::derive_seed;
use crate::engine::{ChatMessage, Engine, SamplingParams, Token, TokenOut};
use crate::record::Seed;

use super::config::{ReflectionPolicy, SearchConfig, SelectRule};
use super::result::{
    ChainResult, NodeExport, Picks, StopReason, TreeExport, TreeResult, TreeStats,
};
use super::tree::{Answer, NodeId, TerminalCause, Tree};
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

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
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
            msgs.push(ChatMessage::new("system", s.clone()));
        }
        msgs.push(ChatMessage::new("user", seed.prompt.clone()));
        let text = engine.apply_chat_template(&msgs)? + &prompts.thought_open;
        // Seed text is tokenized plain: control-token strings in it cannot open turns.
        let mut tokens = engine.chat_tokens(&msgs)?;
        tokens.extend(engine.tokenize(&prompts.thought_open, false)?);
        if tokens.is_empty() {
            return Err(SearchError::Config(
                "the prompt tokenizes to nothing".into(),
            ));
        }
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
        let id_hash = blake3::hash(seed.id.as_bytes());
        let mut h = [0u8; 8];
        h.copy_from_slice(&id_hash.as_bytes()[..8]);
        let tree_seed = derive_seed(cfg.seed, u64::from_le_bytes(h));
        Ok(Self {
            seed_id: seed.id.clone(),
            prompt: seed.prompt.clone(),
            system,
            reference: seed.reference_answer.clone(),
            verifier,
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
            && n.seg_depth < self.cfg.max_depth
            && n.seg_tokens < self.cfg.max_thought_tokens
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
            if self.streams.iter().any(|s| !s.done) {
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
        let per_chain = c.max_thought_tokens + c.answer_max_tokens;
        let cap = per_chain.saturating_mul(c.reflection.max_per_chain + 1);
        let allot = (remaining / n).min(cap).max(min_allot);
        let base_seed = self.node_seed(x);
        let first_slot = node.children.len() as u64;
        let path: Vec<(NodeId, usize)> = self
            .tree
            .path(x)
            .into_iter()
            .map(|id| (id, self.tree.node(id).path_len as usize))
            .collect();
        let tokens = self.tree.path_tokens(x);
        self.stream_base += self.streams.len() as u32;
        self.streams.clear();
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
        let text = lossy(&std::mem::take(&mut s.act_bytes));
        s.act_ends.clear();
        let parent = s.cur;
        let key = self.next_key(i);
        let id = self.tree.add_child(parent, tokens, conf, text, false, key);
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
                .add_child(start, Vec::new(), Vec::new(), String::new(), false, key);
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
        self.tree.node_mut(t).answer = Some(Answer {
            text,
            tokens,
            confidences: conf,
            reward,
            verified,
        });
        self.streams[i].ended.push(t);
        let r = &self.cfg.reflection;
        let wants = match r.policy {
            ReflectionPolicy::Off => false,
            ReflectionPolicy::OnWrong => verified == Some(false),
            ReflectionPolicy::OnLowReward => reward < r.low_reward_threshold,
            ReflectionPolicy::Always => true,
        };
        let s = &self.streams[i];
        let funded = s.used + 1 + self.cfg.answer_max_tokens <= s.allot;
        if wants && funded && self.tree.node(t).reflections < r.max_per_chain {
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
            let rid = self
                .tree
                .add_child(t, toks.clone(), Vec::new(), text, true, key);
            let s = &mut self.streams[i];
            s.cur = rid;
            s.phase = Phase::Thought;
            s.terminal = None;
            s.seq_len = len + toks.len();
            return Ok(Ctl::Edit {
                truncate_to: len,
                append: toks,
            });
        }
        let s = &mut self.streams[i];
        s.done = true;
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
                if self.is_boundary(&self.streams[i]) {
                    self.seal(i);
                    if self.tree.node(self.streams[i].cur).seg_depth >= self.cfg.max_depth {
                        return Ok(self.end_thought(i, TerminalCause::DepthCap));
                    }
                }
                let s = &self.streams[i];
                let seg_tokens = self.tree.node(s.cur).seg_tokens + s.act_tokens.len() as u32;
                if seg_tokens >= self.cfg.max_thought_tokens || s.used + 1 + answer_max > s.allot {
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

    fn complete_iteration(&mut self) {
        let segments: Vec<(NodeId, NodeId)> = self
            .streams
            .iter()
            .flat_map(|s| s.ended.iter().map(move |&t| (s.start, t)))
            .collect();
        for (start, t) in segments {
            let v = self.rollout_value(start, t);
            self.tree.backprop(t, v);
        }
        self.tree.sort_children();
        self.recompute_exhausted();
    }

    /// Reasoning text of the chain ending at `t` (prompt excluded, trimmed).
    pub fn reasoning(&self, t: NodeId) -> String {
        let mut s = String::new();
        for id in self.tree.path(t).into_iter().skip(1) {
            s.push_str(&self.tree.node(id).text);
        }
        s.trim().to_string()
    }

    fn distinct_chains(&self) -> usize {
        let mut seen = std::collections::BTreeSet::new();
        for n in &self.tree.nodes {
            if let Some(a) = &n.answer {
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
        match rule {
            SelectRule::HighestReward => {
                let mut best: Option<(f64, NodeId)> = None;
                for id in self.tree.canonical_order() {
                    let n = self.tree.node(id);
                    if let Some(a) = &n.answer {
                        if best.is_none_or(|(r, _)| a.reward > r) {
                            best = Some((a.reward, n.id));
                        }
                    }
                }
                best.map(|b| b.1)
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
        let visited_node = self.selected_by(SelectRule::MostVisited);
        let reward_node = self.selected_by(SelectRule::HighestReward);
        let selected_node = match self.cfg.select {
            SelectRule::MostVisited => visited_node,
            SelectRule::HighestReward => reward_node,
        };
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
                    });
                    seen.insert(key, chains.len() - 1);
                    chains.len() - 1
                }
            };
            if Some(n.id) == visited_node {
                picks.most_visited = Some(idx);
            }
            if Some(n.id) == reward_node {
                picks.highest_reward = Some(idx);
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
