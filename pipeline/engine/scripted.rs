//! A deterministic engine without a model, for fast and exhaustive tests of
//! search, resume and the data plane.
//!
//! Its "model" is a pure function of the tokens in its simulated KV cache:
//! logits come from a hash of the last few tokens, shaped so text has the
//! structure the pipeline expects (steps separated by blank lines, a
//! `</Thought>`-free thought that ends with end-of-generation, an answer of
//! digits that closes with `</Output>`). Because logits are computed from the
//! *cached* tokens, a bug in forking, truncation or batching changes the
//! output, exactly as it would with a real model.

use super::core::{Backend, BatchEntry, Core, CoreLimits};
use super::sampling::splitmix64;
use super::{ChatMessage, EngineError, Result, Token};

/// Words of the scripted vocabulary, after the 256 byte tokens.
const WORDS: &[&str] = &[
    "<eos>",
    "\n\n",
    "</Output>",
    "<Output>",
    "</Thought>",
    "<Thought>",
    " Let",
    " us",
    " the",
    " number",
    " is",
    " add",
    " subtract",
    " multiply",
    " so",
    " then",
    " we",
    " get",
    " answer",
    " total",
    " each",
    " of",
    " and",
    " first",
    " next",
    " check",
    " again",
    ".",
    ",",
    " =",
    " +",
    " -",
    " *",
    " 0",
    " 1",
    " 2",
    " 3",
    " 4",
    " 5",
    " 6",
    " 7",
    " 8",
    " 9",
    "0",
    "1",
    "2",
    "3",
    "4",
    "5",
    "6",
    "7",
    "8",
    "9",
    "<|assistant|>",
    "<|user|>",
    "<|system|>",
];
const EOS: Token = 256;
const STEP: Token = 257;
const CLOSE_OUTPUT: Token = 258;
const OPEN_OUTPUT: Token = 259;
/// First token the scripted model may generate in a thought (after the tags).
const FIRST_WORD: Token = 262;
const FIRST_DIGIT: Token = 256 + 43; // "0"
const ASSISTANT: Token = 256 + 53;
const THOUGHT: Token = 261;
/// Words the scripted model generates in a thought: " Let" .. "9", not the chat markers.
const LAST_WORD: Token = ASSISTANT - 1;

/// Settings of the scripted model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScriptedConfig {
    /// Changes every logit: two different seeds are two different "models".
    pub model_seed: u64,
    /// Typical tokens per step before the blank-line delimiter dominates.
    pub step_len: u32,
    /// Typical thought length (tokens) before end-of-generation dominates.
    pub thought_len: u32,
}

impl Default for ScriptedConfig {
    fn default() -> Self {
        Self {
            model_seed: 0x00C0_7F06,
            step_len: 12,
            thought_len: 60,
        }
    }
}

/// The scripted backend: a simulated KV cache of token slots.
pub struct ScriptedBackend {
    cfg: ScriptedConfig,
    kv: Vec<Vec<Token>>,
    name: String,
    hash: String,
}

pub type ScriptedEngine = Core<ScriptedBackend>;

impl ScriptedEngine {
    /// A scripted engine with the given pool and batch sizes.
    pub fn scripted(cfg: ScriptedConfig, limits: CoreLimits) -> Self {
        let hash = blake3::hash(format!("scripted:{cfg:?}").as_bytes())
            .to_hex()
            .to_string();
        let backend = ScriptedBackend {
            cfg,
            kv: vec![Vec::new(); limits.n_seq_max],
            name: "scripted".into(),
            hash,
        };
        Core::new(backend, limits)
    }
}

fn n_vocab() -> usize {
    256 + WORDS.len()
}

impl ScriptedBackend {
    /// The model: logits for the position after `ctx`.
    fn logits(&self, ctx: &[Token]) -> Vec<f32> {
        let n = n_vocab();
        let mut h = self.cfg.model_seed;
        for &t in ctx.iter().rev().take(3) {
            h = splitmix64(h ^ t as u64);
        }
        let mut out = vec![-30.0f32; n];
        // Where are we? After <Output> we write an answer; else a thought.
        let last_open = ctx.iter().rposition(|&t| t == OPEN_OUTPUT);
        let last_close = ctx.iter().rposition(|&t| t == CLOSE_OUTPUT);
        let in_answer = match (last_open, last_close) {
            (Some(o), Some(c)) => o > c,
            (Some(_), None) => true,
            _ => false,
        };
        let noise = |tok: usize| {
            (splitmix64(h ^ (tok as u64).wrapping_mul(0x9E37)) >> 40) as f32 / (1u64 << 24) as f32
        };
        if in_answer {
            let since = ctx.len() - last_open.unwrap_or(0);
            if last_close.is_some() && ctx.last() == Some(&CLOSE_OUTPUT) {
                out[EOS as usize] = 10.0;
                return out;
            }
            for d in 0..10 {
                let t = FIRST_DIGIT as usize + d;
                out[t] = 2.0 + 3.0 * noise(t);
            }
            out[CLOSE_OUTPUT as usize] = -2.0 + 2.0 * since as f32;
            return out;
        }
        let since =
            |marks: &[Token]| ctx.iter().rev().take_while(|t| !marks.contains(t)).count() as f32;
        let since_step = since(&[STEP, THOUGHT, ASSISTANT]);
        let thought = since(&[THOUGHT, ASSISTANT]);
        for (t, l) in out
            .iter_mut()
            .enumerate()
            .take(LAST_WORD as usize + 1)
            .skip(FIRST_WORD as usize)
        {
            *l = 7.0 * noise(t).powi(3);
        }
        out[STEP as usize] = -4.0 + 6.0 * since_step / self.cfg.step_len as f32;
        out[EOS as usize] = -6.0 + 8.0 * thought / self.cfg.thought_len as f32;
        out
    }

    fn slot(&mut self, slot: u32) -> Result<&mut Vec<Token>> {
        self.kv
            .get_mut(slot as usize)
            .ok_or_else(|| EngineError::Backend(format!("scripted: slot {slot} out of range")))
    }
}

impl ScriptedBackend {
    /// Greedy longest match over the word list (chat markers only with `special`), bytes otherwise.
    fn words(&self, text: &str, special: bool) -> Vec<Token> {
        let b = text.as_bytes();
        let mut out = Vec::with_capacity(b.len() / 3 + 1);
        let mut i = 0;
        while i < b.len() {
            let mut best: Option<(usize, usize)> = None;
            for (w, word) in WORDS.iter().enumerate().skip(1) {
                if !special && (256 + w as Token) >= ASSISTANT {
                    continue;
                }
                let wb = word.as_bytes();
                if b[i..].starts_with(wb) && best.is_none_or(|(_, l)| wb.len() > l) {
                    best = Some((w, wb.len()));
                }
            }
            match best {
                Some((w, l)) => {
                    out.push(256 + w as Token);
                    i += l;
                }
                None => {
                    out.push(b[i] as Token);
                    i += 1;
                }
            }
        }
        out
    }
}

impl Backend for ScriptedBackend {
    fn model_name(&self) -> &str {
        &self.name
    }
    fn model_hash(&self) -> &str {
        &self.hash
    }
    fn n_vocab(&self) -> usize {
        n_vocab()
    }
    /// Greedy longest match over the word list, bytes otherwise.
    fn tokenize(&self, text: &str, _add_special: bool) -> Result<Vec<Token>> {
        Ok(self.words(text, true))
    }
    /// As `tokenize`, but the chat markers (`<|user|>` ...) are not words:
    /// their text is spelled in bytes, like a real model's plain tokenization.
    fn tokenize_plain(&self, text: &str) -> Result<Vec<Token>> {
        Ok(self.words(text, false))
    }
    fn piece(&self, token: Token) -> Vec<u8> {
        match token {
            0..=255 => vec![token as u8],
            EOS => Vec::new(),
            t if (t as usize) < n_vocab() => WORDS[t as usize - 256].as_bytes().to_vec(),
            _ => Vec::new(),
        }
    }
    fn is_eog(&self, token: Token) -> bool {
        token == EOS
    }
    fn apply_chat_template(&self, messages: &[ChatMessage]) -> Result<String> {
        let mut s = String::new();
        for m in messages {
            let role = m.role;
            s.push_str(&format!("<|{role}|>\n{}\n", m.content));
        }
        s.push_str("<|assistant|>\n");
        Ok(s)
    }
    fn decode(
        &mut self,
        batch: &[BatchEntry],
        on_logits: &mut dyn FnMut(usize, &[f32]) -> Result<()>,
    ) -> Result<()> {
        for (i, e) in batch.iter().enumerate() {
            let kv = self.slot(e.slot)?;
            if kv.len() != e.pos as usize {
                return Err(EngineError::Backend(format!(
                    "scripted: slot {} holds {} tokens, batch writes position {}",
                    e.slot,
                    kv.len(),
                    e.pos
                )));
            }
            kv.push(e.token);
            if e.logits {
                let l = self.logits(&self.kv[e.slot as usize]);
                on_logits(i, &l)?;
            }
        }
        Ok(())
    }
    fn kv_copy(&mut self, src: u32, dst: u32, len: u32) -> Result<()> {
        let prefix: Vec<Token> = self.slot(src)?.iter().take(len as usize).copied().collect();
        *self.slot(dst)? = prefix;
        Ok(())
    }
    fn kv_remove(&mut self, slot: u32, from: u32) -> Result<()> {
        self.slot(slot)?.truncate(from as usize);
        Ok(())
    }
}
