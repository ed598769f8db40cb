//! The served model's vocabulary on the client: every token's bytes and
//! end-of-generation flag (needed for each streamed token, so held locally),
//! plus tokenization and the chat template.
//!
//! Two sources: a GGUF of the served model (`tokenizer`), read by the native
//! engine's own code, so prompts, pieces and templates are byte-identical to
//! the llama engine's; or llama-server itself (`/tokenize` with token ids and
//! `with_pieces` for the whole table, `/tokenize` for text, `/apply-template`
//! for the chat template). llama-server renders control tokens as their text
//! (`<|im_end|>`), where the native engine renders them empty.

use std::sync::Arc;

use super::super::{ChatMessage, EngineError, Result, Token};
use super::api;
use super::client::Endpoint;

enum Tokenizer {
    Server(Arc<Endpoint>),
    #[cfg(feature = "llama")]
    Gguf(Box<super::super::LlamaEngine>),
}

pub struct Vocab {
    pieces: Vec<Vec<u8>>,
    eog: Vec<bool>,
    tokenizer: Tokenizer,
    /// blake3 of the GGUF, or of the served name and the whole piece table.
    pub hash: String,
}

/// Token texts llama.cpp's vocabulary loader (the llama-cpp-python 0.3.36
/// tree, `llama-vocab.cpp`) treats as end of generation: its EOG texts and
/// its fill-in-the-middle pad / repo / file-separator tokens. Tokens the
/// server stops on are learned at run time as well.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
    "<|fim_pad|>",
    "<fim-pad>",
    "<fim_pad>",
    "<PAD>",
    "[PAD]",
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
    "<|file_sep|>",
];

fn server_err(ep: &Endpoint, what: &str, e: impl std::fmt::Display) -> EngineError {
    EngineError::Server {
        url: ep.url.clone(),
        reason: format!("{what}: {e}"),
    }
}

impl Vocab {
    /// The vocabulary of a GGUF file, through the native engine (a 64-token
    /// context; the weights are memory-mapped, not read).
    #[cfg(feature = "llama")]
    pub fn from_gguf(path: &std::path::Path) -> Result<Self> {
        use super::super::{Engine, EngineConfig};
        let cfg = EngineConfig {
            model: path.to_path_buf(),
            n_ctx: 64,
            n_batch: 64,
            n_ubatch: 64,
            n_parallel: 1,
            n_seq_max: 1,
            threads: 1,
            ..Default::default()
        };
        let e = super::super::LlamaEngine::load(&cfg)?;
        let n = super::super::Backend::n_vocab(e.backend());
        let pieces = (0..n as Token).map(|t| e.piece(t)).collect();
        let eog = (0..n as Token).map(|t| e.is_eog(t)).collect();
        Ok(Self {
            pieces,
            eog,
            hash: e.model_hash().to_string(),
            tokenizer: Tokenizer::Gguf(Box::new(e)),
        })
    }

    #[cfg(not(feature = "llama"))]
    pub fn from_gguf(path: &std::path::Path) -> Result<Self> {
        Err(EngineError::Model {
            path: path.display().to_string(),
            reason: "http.tokenizer needs the `llama` feature (this build has none); \
                     leave tokenizer unset to use llama-server's own tokenizer"
                .into(),
        })
    }

    /// The vocabulary llama-server serves (`n_vocab` tokens).
    pub fn from_server(ep: Arc<Endpoint>, n_vocab: usize, eos: Option<&str>) -> Result<Self> {
        let ids: Vec<Token> = (0..n_vocab as Token).collect();
        let req = serde_json::json!({"content": ids, "with_pieces": true, "add_special": false, "parse_special": false});
        let r: api::TokenizeResponse<api::TokenPiece> = ep
            .post("/tokenize", &req, 0, None)
            .map_err(|e| server_err(&ep, "reading the vocabulary with /tokenize", e))?;
        if r.tokens.len() != n_vocab || r.tokens.iter().enumerate().any(|(i, t)| t.id != i as Token)
        {
            return Err(server_err(
                &ep,
                "reading the vocabulary",
                format!(
                    "/tokenize returned {} entries for {n_vocab} token ids; pass tokenizer = \"model.gguf\" instead",
                    r.tokens.len()
                ),
            ));
        }
        let pieces: Vec<Vec<u8>> = r.tokens.into_iter().map(|t| t.piece.into_bytes()).collect();
        let mut v = Self {
            eog: vec![false; n_vocab],
            hash: String::new(),
            tokenizer: Tokenizer::Server(ep.clone()),
            pieces,
        };
        for text in eos.into_iter().chain(EOG_TEXTS.iter().copied()) {
            if let [t] = v.tokenize(text, false)?.as_slice() {
                if v.pieces
                    .get(*t as usize)
                    .is_some_and(|p| p == text.as_bytes())
                {
                    v.eog[*t as usize] = true;
                }
            }
        }
        let mut h = blake3::Hasher::new();
        for p in &v.pieces {
            h.update(&(p.len() as u32).to_le_bytes());
            h.update(p);
        }
        v.hash = h.finalize().to_hex().to_string();
        Ok(v)
    }

    pub fn n_vocab(&self) -> usize {
        self.pieces.len()
    }

    pub fn piece(&self, t: Token) -> Vec<u8> {
        self.pieces.get(t as usize).cloned().unwrap_or_default()
    }

    pub fn is_eog(&self, t: Token) -> bool {
        self.eog.get(t as usize).copied().unwrap_or(false)
    }

    /// A token the server stopped on (EOS) that the table did not flag.
    pub fn learn_eog(&mut self, t: Token) -> bool {
        match self.eog.get_mut(t as usize) {
            Some(f) if !*f => {
                *f = true;
                true
            }
            _ => false,
        }
    }

    /// Control-token text in `text` becomes real tokens, as in the native engine.
    pub fn tokenize(&self, text: &str, add_special: bool) -> Result<Vec<Token>> {
        match &self.tokenizer {
            Tokenizer::Server(ep) => {
                let req = serde_json::json!({"content": text, "add_special": add_special, "parse_special": true});
                let r: api::TokenizeResponse<Token> = ep
                    .post("/tokenize", &req, 0, None)
                    .map_err(|e| EngineError::Tokenize(format!("{} /tokenize: {e}", ep.url)))?;
                Ok(r.tokens)
            }
            #[cfg(feature = "llama")]
            Tokenizer::Gguf(e) => super::super::Engine::tokenize(e.as_ref(), text, add_special),
        }
    }

    /// Seed or model text: control-token strings stay plain text, no BOS
    /// (see [`crate::engine::Engine::tokenize_plain`]).
    pub fn tokenize_plain(&self, text: &str) -> Result<Vec<Token>> {
        match &self.tokenizer {
            Tokenizer::Server(ep) => {
                let req = serde_json::json!({"content": text, "add_special": false, "parse_special": false});
                let r: api::TokenizeResponse<Token> = ep
                    .post("/tokenize", &req, 0, None)
                    .map_err(|e| EngineError::Tokenize(format!("{} /tokenize: {e}", ep.url)))?;
                Ok(r.tokens)
            }
            #[cfg(feature = "llama")]
            Tokenizer::Gguf(e) => super::super::Engine::tokenize_plain(e.as_ref(), text),
        }
    }

    pub fn apply_chat_template(&self, messages: &[ChatMessage]) -> Result<String> {
        match &self.tokenizer {
            Tokenizer::Server(ep) => {
                let r: api::ApplyTemplateResponse = ep
                    .post(
                        "/apply-template",
                        &api::ApplyTemplateRequest { messages },
                        0,
                        None,
                    )
                    .map_err(|e| {
                        EngineError::Template(format!("{} /apply-template: {e}", ep.url))
                    })?;
                Ok(r.prompt)
            }
            #[cfg(feature = "llama")]
            Tokenizer::Gguf(e) => super::super::Engine::apply_chat_template(e.as_ref(), messages),
        }
    }

    /// Whether the table came from a GGUF (exact native pieces and templates).
    pub fn is_local(&self) -> bool {
        !matches!(self.tokenizer, Tokenizer::Server(_))
    }
}
