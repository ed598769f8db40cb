//! The model-independent half of every engine: sequence bookkeeping, KV cell
//! accounting, batch packing, sampling and confidence. A [`Backend`] supplies
//! only decode, KV edits and the tokenizer, so the real and the scripted
//! engine share every line of logic that tests exercise.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use super::{
    confidence, sampling, top_k_logits, ChatMessage, Engine, EngineError, EngineStats, Result,
    SeqId, StepRequest, Token, TokenOut, TOP_K,
};

/// One token of a decode batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchEntry {
    /// Backend sequence slot (llama.cpp seq id).
    pub slot: u32,
    pub pos: u32,
    pub token: Token,
    /// Whether logits are needed at this position.
    pub logits: bool,
}

/// What a model backend must provide. Slots are in `0..n_seq_max`; the core
/// guarantees every call is valid (known slot, contiguous positions, batch
/// within capacity), because llama.cpp aborts the process on a bad call.
pub trait Backend {
    fn model_name(&self) -> &str;
    fn model_hash(&self) -> &str;
    fn n_vocab(&self) -> usize;
    fn tokenize(&self, text: &str, add_special: bool) -> Result<Vec<Token>>;
    /// Tokens of seed or model text, control-token strings kept plain (see
    /// [`Engine::tokenize_plain`]); backends whose `tokenize` parses them override this.
    fn tokenize_plain(&self, text: &str) -> Result<Vec<Token>> {
        self.tokenize(text, false)
    }
    fn piece(&self, token: Token) -> Vec<u8>;
    fn is_eog(&self, token: Token) -> bool;
    fn apply_chat_template(&self, messages: &[ChatMessage]) -> Result<String>;
    /// Run one batch; call `on_logits(i, logits)` for every entry `i` with `logits` set.
    fn decode(
        &mut self,
        batch: &[BatchEntry],
        on_logits: &mut dyn FnMut(usize, &[f32]) -> Result<()>,
    ) -> Result<()>;
    /// Make `dst` share positions `[0, len)` of `src`. `dst` is empty.
    fn kv_copy(&mut self, src: u32, dst: u32, len: u32) -> Result<()>;
    /// Drop positions `[from, ∞)` of `slot`.
    fn kv_remove(&mut self, slot: u32, from: u32) -> Result<()>;
}

/// Sizes the core enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoreLimits {
    pub n_ctx: usize,
    pub n_batch: usize,
    pub n_parallel: usize,
    pub n_seq_max: usize,
}

#[derive(Debug, Clone)]
struct SeqState {
    slot: u32,
    tokens: Vec<Token>,
    /// KV cell ids of the cached prefix; `cells.len()` is the cached length.
    cells: Vec<u32>,
}

/// Reference-counted KV cells, as the unified cache shares them between forks.
#[derive(Debug, Default)]
struct CellLedger {
    refs: Vec<u32>,
    free: Vec<u32>,
    used: usize,
}

impl CellLedger {
    fn alloc(&mut self) -> u32 {
        self.used += 1;
        if let Some(c) = self.free.pop() {
            self.refs[c as usize] = 1;
            c
        } else {
            self.refs.push(1);
            (self.refs.len() - 1) as u32
        }
    }
    fn retain(&mut self, c: u32) {
        self.refs[c as usize] += 1;
    }
    fn drop_cell(&mut self, c: u32) {
        let r = &mut self.refs[c as usize];
        *r -= 1;
        if *r == 0 {
            self.used -= 1;
            self.free.push(c);
        }
    }
}

/// A token chosen at one position, with the logit statistics taken before
/// the logits buffer is reused.
struct Scored {
    token: Token,
    top: Vec<(Token, f32)>,
    logit: f32,
}

impl Scored {
    /// A given token (teacher forcing).
    fn new(token: Token, logits: &[f32]) -> Self {
        Self::with_top(token, top_k_logits(logits, TOP_K), logits)
    }
    /// A token sampled from `logits`; the sampler's sorted candidates give
    /// the top-5 too, saving a pass over the vocabulary.
    fn sampled(logits: &[f32], params: &sampling::SamplingParams, position: u64) -> Self {
        let (token, top) = sampling::sample_top(logits, params, position, TOP_K);
        Self::with_top(token, top, logits)
    }
    fn with_top(token: Token, top: Vec<(Token, f32)>, logits: &[f32]) -> Self {
        let logit = logits
            .get(token as usize)
            .copied()
            .unwrap_or(f32::NEG_INFINITY);
        Self { token, top, logit }
    }
    fn into_out<B: Backend>(self, backend: &B) -> TokenOut {
        TokenOut {
            token: self.token,
            piece: backend.piece(self.token),
            confidence: confidence(self.logit, &self.top),
            top: self.top,
            logit: self.logit,
            eog: backend.is_eog(self.token),
        }
    }
}

/// An [`Engine`] over any [`Backend`].
pub struct Core<B: Backend> {
    backend: B,
    limits: CoreLimits,
    seqs: BTreeMap<SeqId, SeqState>,
    free_slots: BTreeSet<u32>,
    next_id: u32,
    cells: CellLedger,
    stats: EngineStats,
}

impl<B: Backend> Core<B> {
    pub fn new(backend: B, limits: CoreLimits) -> Self {
        Self {
            backend,
            limits,
            seqs: BTreeMap::new(),
            free_slots: (0..limits.n_seq_max as u32).collect(),
            next_id: 0,
            cells: CellLedger::default(),
            stats: EngineStats::default(),
        }
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    pub fn limits(&self) -> CoreLimits {
        self.limits
    }

    fn seq(&self, id: SeqId) -> Result<&SeqState> {
        self.seqs.get(&id).ok_or(EngineError::UnknownSequence(id))
    }

    fn alloc_slot(&mut self) -> Result<u32> {
        let slot = *self
            .free_slots
            .iter()
            .next()
            .ok_or(EngineError::NoFreeSequence {
                max: self.limits.n_seq_max,
            })?;
        self.free_slots.remove(&slot);
        Ok(slot)
    }

    fn insert(&mut self, st: SeqState) -> SeqId {
        let id = SeqId(self.next_id);
        self.next_id += 1;
        self.seqs.insert(id, st);
        id
    }

    /// Drop cached positions `[from, ..)` of a sequence (KV and ledger).
    fn uncache_from(&mut self, id: SeqId, from: usize) -> Result<()> {
        let st = self
            .seqs
            .get_mut(&id)
            .ok_or(EngineError::UnknownSequence(id))?;
        if from >= st.cells.len() {
            return Ok(());
        }
        self.backend.kv_remove(st.slot, from as u32)?;
        for c in st.cells.drain(from..) {
            self.cells.drop_cell(c);
        }
        Ok(())
    }

    /// Pack the pending tokens of `ids` into decode batches of at most
    /// `n_batch` tokens; the last token of each sequence wants logits when
    /// `sample` is set. Returns per batch the entries and their sequences.
    fn plan(&mut self, ids: &[SeqId], sample: bool) -> Result<Vec<Vec<(SeqId, BatchEntry)>>> {
        let mut entries: Vec<(SeqId, BatchEntry)> = Vec::new();
        let mut need_cells = 0usize;
        for &id in ids {
            // A sequence with nothing pending re-feeds its last token, whose logits are gone.
            let (cached, total) = {
                let st = self.seq(id)?;
                (st.cells.len(), st.tokens.len())
            };
            if sample && cached == total {
                if total == 0 {
                    return Err(EngineError::NothingToSample(id));
                }
                self.uncache_from(id, total - 1)?;
            }
            let st = self.seq(id)?;
            let start = st.cells.len();
            let end = st.tokens.len();
            if end > self.limits.n_ctx {
                return Err(EngineError::ContextFull {
                    seq: id,
                    pos: end,
                    n_ctx: self.limits.n_ctx,
                });
            }
            need_cells += end - start;
            for pos in start..end {
                entries.push((
                    id,
                    BatchEntry {
                        slot: st.slot,
                        pos: pos as u32,
                        token: st.tokens[pos],
                        logits: sample && pos + 1 == end,
                    },
                ));
            }
        }
        if self.cells.used + need_cells > self.limits.n_ctx {
            return Err(EngineError::KvFull(format!(
                "{} cells in use + {} new > n_ctx {}",
                self.cells.used, need_cells, self.limits.n_ctx
            )));
        }
        Ok(entries
            .chunks(self.limits.n_batch.max(1))
            .map(|c| c.to_vec())
            .collect())
    }

    /// Decode one planned batch, recording stats and cells; `on_logits` gets
    /// `(sequence, logits)` for entries that asked for logits.
    fn run_batch(
        &mut self,
        batch: &[(SeqId, BatchEntry)],
        on_logits: &mut dyn FnMut(SeqId, &[f32]) -> Result<()>,
    ) -> Result<()> {
        let entries: Vec<BatchEntry> = batch.iter().map(|&(_, e)| e).collect();
        let distinct: BTreeSet<SeqId> = batch.iter().map(|&(s, _)| s).collect();
        let t0 = Instant::now();
        let mut sample_secs = 0.0;
        self.backend.decode(&entries, &mut |i, logits| {
            let t = Instant::now();
            let r = on_logits(batch[i].0, logits);
            sample_secs += t.elapsed().as_secs_f64();
            r
        })?;
        self.stats.decode_seconds += t0.elapsed().as_secs_f64() - sample_secs;
        self.stats.sample_seconds += sample_secs;
        self.stats.decode_calls += 1;
        self.stats.batch_sequences.push(distinct.len() as u32);
        self.stats.tokens_evaluated += entries.len() as u64;
        for &(id, _) in batch {
            let c = self.cells.alloc();
            if let Some(st) = self.seqs.get_mut(&id) {
                st.cells.push(c);
            }
        }
        Ok(())
    }
}

impl<B: Backend> Engine for Core<B> {
    fn model_name(&self) -> &str {
        self.backend.model_name()
    }
    fn model_hash(&self) -> &str {
        self.backend.model_hash()
    }
    fn n_ctx(&self) -> usize {
        self.limits.n_ctx
    }
    fn n_parallel(&self) -> usize {
        self.limits.n_parallel
    }
    fn n_seq_max(&self) -> usize {
        self.limits.n_seq_max
    }
    fn tokenize(&self, text: &str, add_special: bool) -> Result<Vec<Token>> {
        self.backend.tokenize(text, add_special)
    }
    fn tokenize_plain(&self, text: &str) -> Result<Vec<Token>> {
        self.backend.tokenize_plain(text)
    }
    fn detokenize(&self, tokens: &[Token]) -> Result<String> {
        let bytes: Vec<u8> = tokens.iter().flat_map(|&t| self.backend.piece(t)).collect();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
    fn piece(&self, token: Token) -> Vec<u8> {
        self.backend.piece(token)
    }
    fn is_eog(&self, token: Token) -> bool {
        self.backend.is_eog(token)
    }
    fn apply_chat_template(&self, messages: &[ChatMessage]) -> Result<String> {
        self.backend.apply_chat_template(messages)
    }

    fn new_sequence(&mut self) -> Result<SeqId> {
        let slot = self.alloc_slot()?;
        // A slot may hold leftovers only if a backend call failed mid-way; clear it.
        self.backend.kv_remove(slot, 0)?;
        Ok(self.insert(SeqState {
            slot,
            tokens: Vec::new(),
            cells: Vec::new(),
        }))
    }

    fn fork(&mut self, parent: SeqId) -> Result<SeqId> {
        let p = self.seq(parent)?.clone();
        let slot = self.alloc_slot()?;
        self.backend.kv_remove(slot, 0)?;
        if !p.cells.is_empty() {
            if let Err(e) = self.backend.kv_copy(p.slot, slot, p.cells.len() as u32) {
                self.free_slots.insert(slot);
                return Err(e);
            }
        }
        for &c in &p.cells {
            self.cells.retain(c);
        }
        Ok(self.insert(SeqState {
            slot,
            tokens: p.tokens,
            cells: p.cells,
        }))
    }

    fn truncate(&mut self, seq: SeqId, len: usize) -> Result<()> {
        self.uncache_from(seq, len)?;
        let st = self
            .seqs
            .get_mut(&seq)
            .ok_or(EngineError::UnknownSequence(seq))?;
        st.tokens.truncate(len);
        Ok(())
    }

    fn release(&mut self, seq: SeqId) -> Result<()> {
        self.uncache_from(seq, 0)?;
        let st = self
            .seqs
            .remove(&seq)
            .ok_or(EngineError::UnknownSequence(seq))?;
        self.free_slots.insert(st.slot);
        Ok(())
    }

    fn append(&mut self, seq: SeqId, tokens: &[Token]) -> Result<()> {
        let n_vocab = self.backend.n_vocab();
        if let Some(&bad) = tokens.iter().find(|&&t| t < 0 || t as usize >= n_vocab) {
            return Err(EngineError::Tokenize(format!(
                "token id {bad} outside the vocabulary of {n_vocab}"
            )));
        }
        let st = self
            .seqs
            .get_mut(&seq)
            .ok_or(EngineError::UnknownSequence(seq))?;
        st.tokens.extend_from_slice(tokens);
        Ok(())
    }

    fn tokens(&self, seq: SeqId) -> Result<&[Token]> {
        Ok(&self.seq(seq)?.tokens)
    }

    fn cached_len(&self, seq: SeqId) -> Result<usize> {
        Ok(self.seq(seq)?.cells.len())
    }

    fn live_sequences(&self) -> usize {
        self.seqs.len()
    }

    fn cells_used(&self) -> usize {
        self.cells.used
    }

    fn step(&mut self, requests: &[StepRequest]) -> Result<Vec<TokenOut>> {
        if requests.len() > self.limits.n_parallel {
            return Err(EngineError::TooManySequences {
                asked: requests.len(),
                max: self.limits.n_parallel,
            });
        }
        // Draw position = the index the sampled token will take in its sequence.
        let mut draws: BTreeMap<SeqId, (sampling::SamplingParams, u64)> = BTreeMap::new();
        for r in requests {
            let pos = self.seq(r.seq)?.tokens.len() as u64;
            if draws.insert(r.seq, (r.sampling, pos)).is_some() {
                return Err(EngineError::DuplicateSequence(r.seq));
            }
        }
        let ids: Vec<SeqId> = requests.iter().map(|r| r.seq).collect();
        let mut picked: BTreeMap<SeqId, Scored> = BTreeMap::new();
        for batch in self.plan(&ids, true)? {
            self.run_batch(&batch, &mut |id, logits| {
                let (params, pos) = draws[&id];
                picked.insert(id, Scored::sampled(logits, &params, pos));
                Ok(())
            })?;
        }
        let mut out = Vec::with_capacity(requests.len());
        for r in requests {
            let s = picked.remove(&r.seq).ok_or_else(|| {
                EngineError::Backend(format!("no logits returned for {:?}", r.seq))
            })?;
            let st = self
                .seqs
                .get_mut(&r.seq)
                .ok_or(EngineError::UnknownSequence(r.seq))?;
            st.tokens.push(s.token);
            out.push(s.into_out(&self.backend));
        }
        self.stats.tokens_sampled += out.len() as u64;
        Ok(out)
    }

    fn evaluate(&mut self, seq: SeqId) -> Result<()> {
        for batch in self.plan(&[seq], false)? {
            self.run_batch(&batch, &mut |_, _| Ok(()))?;
        }
        Ok(())
    }

    fn score(&mut self, context: &[Token], text: &[Token]) -> Result<Vec<TokenOut>> {
        let mut out = self.score_many(&[(context, text)])?;
        out.pop()
            .ok_or_else(|| EngineError::Backend("score returned nothing".into()))
    }

    fn score_many(&mut self, items: &[(&[Token], &[Token])]) -> Result<Vec<Vec<TokenOut>>> {
        for (context, text) in items {
            if context.is_empty() || text.is_empty() {
                return Err(EngineError::Tokenize(
                    "score needs at least one context token and one text token".into(),
                ));
            }
            if context.len() + text.len() > self.limits.n_ctx {
                return Err(EngineError::ContextFull {
                    seq: SeqId(u32::MAX),
                    pos: context.len() + text.len(),
                    n_ctx: self.limits.n_ctx,
                });
            }
        }
        let mut results: Vec<Vec<Scored>> = items
            .iter()
            .map(|(_, t)| Vec::with_capacity(t.len()))
            .collect();
        let mut next = 0;
        while next < items.len() {
            // A group: as many items as free slots, parallel width and KV cells allow (at least one).
            let slots = self.free_slots.len().min(self.limits.n_parallel).max(1);
            let mut room = self.limits.n_ctx.saturating_sub(self.cells.used);
            let mut group = Vec::new();
            while next < items.len() && group.len() < slots {
                let need = items[next].0.len() + items[next].1.len();
                if !group.is_empty() && need > room {
                    break;
                }
                room = room.saturating_sub(need);
                group.push(next);
                next += 1;
            }
            let mut seqs: Vec<(SeqId, usize)> = Vec::with_capacity(group.len());
            let run = (|| {
                for &i in &group {
                    let seq = self.new_sequence()?;
                    seqs.push((seq, i));
                    self.append(seq, items[i].0)?;
                    self.append(seq, items[i].1)?;
                }
                let ids: Vec<SeqId> = seqs.iter().map(|&(s, _)| s).collect();
                for mut batch in self.plan(&ids, false)? {
                    for (seq, e) in batch.iter_mut() {
                        let i = seqs
                            .iter()
                            .find(|(s, _)| s == seq)
                            .map(|&(_, i)| i)
                            .unwrap_or(0);
                        let (c, t) = items[i];
                        let p = e.pos as usize;
                        // Logits at position p predict token p + 1: the text's tokens.
                        e.logits = p + 1 >= c.len() && p + 1 < c.len() + t.len();
                    }
                    self.run_batch(&batch, &mut |seq, logits| {
                        let i = seqs
                            .iter()
                            .find(|(s, _)| *s == seq)
                            .map(|&(_, i)| i)
                            .unwrap_or(0);
                        let k = results[i].len();
                        let tok = items[i].1[k];
                        results[i].push(Scored::new(tok, logits));
                        Ok(())
                    })?;
                }
                Ok(())
            })();
            for (seq, _) in seqs {
                self.release(seq)?;
            }
            run?;
        }
        Ok(results
            .into_iter()
            .map(|r| r.into_iter().map(|s| s.into_out(&self.backend)).collect())
            .collect())
    }

    fn stats(&self) -> &EngineStats {
        &self.stats
    }
}
