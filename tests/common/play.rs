//! A scripted backend that plays given texts byte by byte: every token is one
//! byte (so multi-byte characters and markers always span several tokens,
//! the hard case at token granularity), and the "model" continues whichever
//! of its scripts the text so far is a prefix of. Deterministic, no weights.

use cotforge::engine::{Backend, BatchEntry, ChatMessage, Core, CoreLimits, EngineError, Token};

pub const EOS: Token = 256;

/// One continuation the model may write.
#[derive(Debug, Clone)]
pub struct Script {
    pub thought: String,
    pub answer: String,
    /// Relative probability among the scripts that fit the text so far.
    pub weight: f32,
    /// The model writes `\n</Thought>\n<Output>\n` itself after the thought
    /// (else it ends the thought with end-of-generation).
    pub writes_marker: bool,
    /// Played after the reflection phrase instead of at the start.
    pub after_reflection: bool,
}

impl Script {
    pub fn new(thought: &str, answer: &str) -> Self {
        Self {
            thought: thought.into(),
            answer: answer.into(),
            weight: 1.0,
            writes_marker: false,
            after_reflection: false,
        }
    }
}

pub struct PlayBackend {
    scripts: Vec<Script>,
    kv: Vec<Vec<Token>>,
}

pub type PlayEngine = Core<PlayBackend>;

pub fn play_engine(scripts: Vec<Script>, n_ctx: usize) -> PlayEngine {
    let limits = CoreLimits {
        n_ctx,
        n_batch: 1 << 16,
        n_parallel: 4,
        n_seq_max: 32,
    };
    Core::new(
        PlayBackend {
            scripts,
            kv: vec![Vec::new(); limits.n_seq_max],
        },
        limits,
    )
}

const OPEN: &[u8] = b"<Thought>\n";
const REFLECTED: &[u8] = b"rethink from scratch.\n\n";
const CLOSE: &[u8] = b"\n</Thought>\n<Output>\n";
const MARKER: &str = "\n</Thought>\n<Output>\n";

fn rfind(h: &[u8], n: &[u8]) -> Option<usize> {
    (0..=h.len().checked_sub(n.len())?)
        .rev()
        .find(|&i| &h[i..i + n.len()] == n)
}

impl PlayBackend {
    /// Weights of the next byte (or end of generation) after `ctx`.
    fn next(&self, ctx: &[u8]) -> Vec<(Token, f32)> {
        let open = rfind(ctx, OPEN).map(|i| i + OPEN.len());
        let refl = rfind(ctx, REFLECTED).map(|i| i + REFLECTED.len());
        let (start, reflected) = match (open, refl) {
            (Some(o), Some(r)) if r > o => (r, true),
            (Some(o), _) => (o, false),
            _ => return vec![(EOS, 1.0)],
        };
        let seg = &ctx[start..];
        let mine = || {
            self.scripts
                .iter()
                .filter(|s| s.after_reflection == reflected)
        };
        if let Some(c) = rfind(seg, CLOSE) {
            // Answer: the script whose thought was written.
            let thought = String::from_utf8_lossy(&seg[..c]);
            let written = &seg[c + CLOSE.len()..];
            let target = mine()
                .find(|s| s.thought.trim() == thought.trim())
                .map(|s| format!("{}</Output>", s.answer))
                .unwrap_or_else(|| "0</Output>".into());
            let t = target.as_bytes();
            return match t.get(written.len()) {
                Some(&b) if t.starts_with(written) => vec![(b as Token, 1.0)],
                _ => vec![(EOS, 1.0)],
            };
        }
        let mut out: Vec<(Token, f32)> = Vec::new();
        for s in mine() {
            let full = if s.writes_marker {
                format!("{}{MARKER}{}</Output>", s.thought, s.answer)
            } else {
                s.thought.clone()
            };
            let f = full.as_bytes();
            if !f.starts_with(seg) {
                continue;
            }
            let tok = f.get(seg.len()).map_or(EOS, |&b| b as Token);
            match out.iter_mut().find(|x| x.0 == tok) {
                Some(x) => x.1 += s.weight,
                None => out.push((tok, s.weight)),
            }
        }
        if out.is_empty() {
            out.push((EOS, 1.0));
        }
        out
    }
}

impl Backend for PlayBackend {
    fn model_name(&self) -> &str {
        "play"
    }
    fn model_hash(&self) -> &str {
        "play"
    }
    fn n_vocab(&self) -> usize {
        257
    }
    fn tokenize(&self, text: &str, _add_special: bool) -> Result<Vec<Token>, EngineError> {
        Ok(text.bytes().map(|b| b as Token).collect())
    }
    fn piece(&self, token: Token) -> Vec<u8> {
        if (0..256).contains(&token) {
            vec![token as u8]
        } else {
            Vec::new()
        }
    }
    fn is_eog(&self, token: Token) -> bool {
        token == EOS
    }
    fn apply_chat_template(&self, messages: &[ChatMessage]) -> Result<String, EngineError> {
        let mut s = String::new();
        for m in messages {
            s.push_str(&format!("<|{}|>\n{}\n", m.role, m.content));
        }
        s.push_str("<|assistant|>\n");
        Ok(s)
    }
    fn decode(
        &mut self,
        batch: &[BatchEntry],
        on_logits: &mut dyn FnMut(usize, &[f32]) -> Result<(), EngineError>,
    ) -> Result<(), EngineError> {
        for (i, e) in batch.iter().enumerate() {
            let kv = &mut self.kv[e.slot as usize];
            if kv.len() != e.pos as usize {
                return Err(EngineError::Backend("play: position out of order".into()));
            }
            kv.push(e.token);
            if e.logits {
                let bytes: Vec<u8> = kv.iter().filter(|&&t| t < 256).map(|&t| t as u8).collect();
                let mut logits = vec![-30.0f32; 257];
                for (t, w) in self.next(&bytes) {
                    logits[t as usize] = w.ln();
                }
                on_logits(i, &logits)?;
            }
        }
        Ok(())
    }
    fn kv_copy(&mut self, src: u32, dst: u32, len: u32) -> Result<(), EngineError> {
        let p: Vec<Token> = self.kv[src as usize]
            .iter()
            .take(len as usize)
            .copied()
            .collect();
        self.kv[dst as usize] = p;
        Ok(())
    }
    fn kv_remove(&mut self, slot: u32, from: u32) -> Result<(), EngineError> {
        self.kv[slot as usize].truncate(from as usize);
        Ok(())
    }
}
