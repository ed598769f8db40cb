//! An engine that delegates to another and lets a test watch or fail calls:
//! record the prompts a recipe feeds the model, or make one seed's template,
//! prompt or scoring fail the way a real engine can.

use cotforge::engine::{
    ChatMessage, Engine, EngineStats, Result, SeqId, StepRequest, Token, TokenOut,
};

/// What a test does at the calls it watches; every default lets the call through.
pub trait Hook {
    fn chat(&self, _messages: &[ChatMessage]) -> Result<()> {
        Ok(())
    }
    /// `fresh`: the sequence was empty (these tokens are a prompt).
    fn append(&self, _tokens: &[Token], _fresh: bool) -> Result<()> {
        Ok(())
    }
    fn score(&self, _items: &[(&[Token], &[Token])]) -> Result<()> {
        Ok(())
    }
}

pub struct Wrap<'e, H: Hook> {
    pub inner: &'e mut dyn Engine,
    pub hook: H,
}

impl<H: Hook> Engine for Wrap<'_, H> {
    fn model_name(&self) -> &str {
        self.inner.model_name()
    }
    fn model_hash(&self) -> &str {
        self.inner.model_hash()
    }
    fn n_ctx(&self) -> usize {
        self.inner.n_ctx()
    }
    fn n_parallel(&self) -> usize {
        self.inner.n_parallel()
    }
    fn n_seq_max(&self) -> usize {
        self.inner.n_seq_max()
    }
    fn tokenize(&self, text: &str, add_special: bool) -> Result<Vec<Token>> {
        self.inner.tokenize(text, add_special)
    }
    fn tokenize_plain(&self, text: &str) -> Result<Vec<Token>> {
        self.inner.tokenize_plain(text)
    }
    fn chat_tokens(&self, messages: &[ChatMessage]) -> Result<Vec<Token>> {
        self.hook.chat(messages)?;
        self.inner.chat_tokens(messages)
    }
    fn detokenize(&self, tokens: &[Token]) -> Result<String> {
        self.inner.detokenize(tokens)
    }
    fn piece(&self, token: Token) -> Vec<u8> {
        self.inner.piece(token)
    }
    fn is_eog(&self, token: Token) -> bool {
        self.inner.is_eog(token)
    }
    fn apply_chat_template(&self, messages: &[ChatMessage]) -> Result<String> {
        self.hook.chat(messages)?;
        self.inner.apply_chat_template(messages)
    }
    fn new_sequence(&mut self) -> Result<SeqId> {
        self.inner.new_sequence()
    }
    fn fork(&mut self, parent: SeqId) -> Result<SeqId> {
        self.inner.fork(parent)
    }
    fn truncate(&mut self, seq: SeqId, len: usize) -> Result<()> {
        self.inner.truncate(seq, len)
    }
    fn release(&mut self, seq: SeqId) -> Result<()> {
        self.inner.release(seq)
    }
    fn append(&mut self, seq: SeqId, tokens: &[Token]) -> Result<()> {
        let fresh = self.inner.tokens(seq)?.is_empty();
        self.hook.append(tokens, fresh)?;
        self.inner.append(seq, tokens)
    }
    fn tokens(&self, seq: SeqId) -> Result<&[Token]> {
        self.inner.tokens(seq)
    }
    fn cached_len(&self, seq: SeqId) -> Result<usize> {
        self.inner.cached_len(seq)
    }
    fn live_sequences(&self) -> usize {
        self.inner.live_sequences()
    }
    fn cells_used(&self) -> usize {
        self.inner.cells_used()
    }
    fn step(&mut self, requests: &[StepRequest]) -> Result<Vec<TokenOut>> {
        self.inner.step(requests)
    }
    fn evaluate(&mut self, seq: SeqId) -> Result<()> {
        self.inner.evaluate(seq)
    }
    fn score(&mut self, context: &[Token], text: &[Token]) -> Result<Vec<TokenOut>> {
        self.score_many(&[(context, text)])
            .map(|mut v| v.pop().unwrap_or_default())
    }
    fn score_many(&mut self, items: &[(&[Token], &[Token])]) -> Result<Vec<Vec<TokenOut>>> {
        self.hook.score(items)?;
        self.inner.score_many(items)
    }
    fn stats(&self) -> &EngineStats {
        self.inner.stats()
    }
}

/// Whether `hay` holds `needle` as a contiguous run.
pub fn holds(hay: &[Token], needle: &[Token]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}
