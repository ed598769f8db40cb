//! The llama.cpp backend (llama-cpp-2). CPU by default; `cuda`, `metal`,
//! `vulkan` cargo features pass through to llama.cpp.
//!
//! The context always uses the unified KV cache: it is what lets a fork share
//! its parent's cells (metadata-only copy) and what makes partial sequence
//! copies legal — on a non-unified cache llama.cpp aborts the process on them.

use std::fs::File;
use std::io::Read;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::OnceLock;

use super::config::{EngineConfig, FlashAttn};
use super::core::{Backend, BatchEntry, Core, CoreLimits};
use super::{ChatMessage, EngineError, Result, Token};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::{send_logs_to_tracing, DecodeError, LogOptions};

/// llama.cpp's process-wide backend, initialized once.
fn backend() -> Result<&'static LlamaBackend> {
    static BACKEND: OnceLock<std::result::Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            // llama.cpp logs to stderr by default; route it through tracing instead.
            send_logs_to_tracing(LogOptions::default().with_logs_enabled(true));
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| EngineError::Backend(format!("backend init: {e}")))
}

/// Check that `path` looks like a complete GGUF file before llama.cpp sees it.
fn check_gguf(path: &Path) -> Result<()> {
    let err = |reason: String| EngineError::Model {
        path: path.display().to_string(),
        reason,
    };
    let mut f = File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            err("no such file (run scripts/setup.sh to fetch the default model, or pass the path of a GGUF file)".into())
        }
        _ => err(format!("cannot open: {e}")),
    })?;
    let meta = f.metadata().map_err(|e| err(format!("cannot stat: {e}")))?;
    if meta.is_dir() {
        return Err(err("is a directory, not a GGUF file".into()));
    }
    let mut magic = [0u8; 4];
    if meta.len() < 24 || f.read_exact(&mut magic).is_err() {
        return Err(err(format!(
            "too short to be a GGUF file ({} bytes)",
            meta.len()
        )));
    }
    if &magic != b"GGUF" {
        return Err(err(format!(
            "not a GGUF file (starts with {:02x?}, expected \"GGUF\")",
            magic
        )));
    }
    Ok(())
}

fn file_blake3(path: &Path) -> Result<String> {
    let f = File::open(path).map_err(|e| EngineError::Model {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let mut h = blake3::Hasher::new();
    h.update_reader(f).map_err(|e| EngineError::Model {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    Ok(h.finalize().to_hex().to_string())
}

/// llama.cpp's built-in template for a GGUF that carries none, by architecture.
fn default_template(arch: &str) -> &'static str {
    if arch.starts_with("gemma") {
        "gemma"
    } else if arch.starts_with("phi3") {
        "phi3"
    } else {
        "chatml"
    }
}

/// The llama.cpp half of [`LlamaEngine`].
pub struct LlamaCpp {
    // Field order is drop order: the context and batch borrow the model.
    ctx: LlamaContext<'static>,
    batch: LlamaBatch<'static>,
    model: Box<LlamaModel>,
    template: Option<LlamaChatTemplate>,
    fallback_template: String,
    pieces: Vec<Vec<u8>>,
    eog: Vec<bool>,
    name: String,
    hash: String,
    n_batch: usize,
}

/// The real engine.
pub type LlamaEngine = Core<LlamaCpp>;

impl LlamaEngine {
    /// Load a GGUF and create a context. Errors name the path; nothing panics
    /// or aborts on a missing, non-GGUF or truncated file.
    pub fn load(cfg: &EngineConfig) -> Result<Self> {
        cfg.validate()?;
        let path = &cfg.model;
        check_gguf(path)?;
        let backend = backend()?;
        let hash = file_blake3(path)?;
        let mparams = LlamaModelParams::default().with_n_gpu_layers(cfg.gpu_layers);
        let model = LlamaModel::load_from_file(backend, path, &mparams).map_err(|e| EngineError::Model {
            path: path.display().to_string(),
            reason: format!("llama.cpp could not load it ({e}); the file is truncated or corrupt, fetch it again"),
        })?;
        let model = Box::new(model);
        // SAFETY: the model lives in a Box whose heap address never changes and is
        // dropped after `ctx` and `batch` (field order of `LlamaCpp`), so the
        // 'static borrow never outlives it.
        let model_ref: &'static LlamaModel = unsafe { &*(model.as_ref() as *const LlamaModel) };

        let flash = match cfg.flash_attn {
            FlashAttn::Auto => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_AUTO,
            FlashAttn::On => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_ENABLED,
            FlashAttn::Off => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED,
        };
        let threads = cfg.threads() as i32;
        let n_ctx = NonZeroU32::new(cfg.n_ctx as u32);
        let params = LlamaContextParams::default()
            .with_n_ctx(n_ctx)
            .with_n_batch(cfg.n_batch as u32)
            .with_n_ubatch(cfg.n_ubatch.min(cfg.n_batch) as u32)
            .with_n_seq_max(cfg.n_seq_max as u32)
            .with_n_threads(threads)
            .with_n_threads_batch(threads)
            .with_kv_unified(true)
            .with_flash_attention_policy(flash);
        let ctx = model_ref
            .new_context(backend, params)
            .map_err(|e| EngineError::Model {
                path: path.display().to_string(),
                reason: format!("cannot create a context (n_ctx {}): {e}", cfg.n_ctx),
            })?;
        let n_ctx = ctx.n_ctx() as usize;

        let vocab = model.vocab();
        let n_vocab = vocab.n_tokens().max(0) as usize;
        let mut pieces = Vec::with_capacity(n_vocab);
        let mut eog = Vec::with_capacity(n_vocab);
        for t in 0..n_vocab as i32 {
            pieces.push(vocab.token_to_piece(LlamaToken(t), false, None));
            eog.push(vocab.is_eog(LlamaToken(t)));
        }
        let template = model.chat_template(None).ok();
        let arch = model
            .meta_val_str("general.architecture")
            .unwrap_or_default();
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        tracing::info!(model = %name, n_vocab, n_ctx, threads, "loaded GGUF");
        let backend = LlamaCpp {
            ctx,
            batch: LlamaBatch::new(cfg.n_batch, 1),
            model,
            template,
            fallback_template: cfg
                .chat_template
                .clone()
                .unwrap_or_else(|| default_template(&arch).into()),
            pieces,
            eog,
            name,
            hash,
            n_batch: cfg.n_batch,
        };
        let limits = CoreLimits {
            n_ctx,
            n_batch: cfg.n_batch,
            n_parallel: cfg.n_parallel,
            n_seq_max: cfg.n_seq_max,
        };
        Ok(Core::new(backend, limits))
    }
}

impl LlamaCpp {
    fn apply(&self, tmpl: &LlamaChatTemplate, msgs: &[LlamaChatMessage]) -> Result<String> {
        self.model
            .apply_chat_template(tmpl, msgs, true)
            .map_err(|e| EngineError::Template(e.to_string()))
    }
}

impl Backend for LlamaCpp {
    fn model_name(&self) -> &str {
        &self.name
    }
    fn model_hash(&self) -> &str {
        &self.hash
    }
    fn n_vocab(&self) -> usize {
        self.pieces.len()
    }
    fn tokenize(&self, text: &str, add_special: bool) -> Result<Vec<Token>> {
        // parse_special: chat-template control tokens in the text become real tokens.
        let toks = self
            .model
            .vocab()
            .tokenize(text.as_bytes(), add_special, true);
        Ok(toks.into_iter().map(|t| t.0).collect())
    }
    fn piece(&self, token: Token) -> Vec<u8> {
        self.pieces.get(token as usize).cloned().unwrap_or_default()
    }
    fn is_eog(&self, token: Token) -> bool {
        self.eog.get(token as usize).copied().unwrap_or(false)
    }
    fn apply_chat_template(&self, messages: &[ChatMessage]) -> Result<String> {
        let msgs = messages
            .iter()
            .map(|m| LlamaChatMessage::new(m.role.clone(), m.content.clone()))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| EngineError::Template(format!("message contains a NUL byte: {e}")))?;
        if let Some(t) = &self.template {
            match self.apply(t, &msgs) {
                Ok(s) => return Ok(s),
                Err(e) => tracing::warn!(
                    "model chat template failed ({e}); using fallback {}",
                    self.fallback_template
                ),
            }
        }
        let fb = LlamaChatTemplate::new(&self.fallback_template)
            .map_err(|e| EngineError::Template(format!("fallback template: {e}")))?;
        self.apply(&fb, &msgs)
    }

    fn decode(
        &mut self,
        batch: &[BatchEntry],
        on_logits: &mut dyn FnMut(usize, &[f32]) -> Result<()>,
    ) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        if batch.len() > self.n_batch {
            return Err(EngineError::Backend(format!(
                "batch of {} tokens exceeds n_batch {}",
                batch.len(),
                self.n_batch
            )));
        }
        self.batch.clear();
        for e in batch {
            self.batch
                .add(
                    LlamaToken(e.token),
                    e.pos as i32,
                    &[e.slot as i32],
                    e.logits,
                )
                .map_err(|err| EngineError::Backend(format!("batch add: {err}")))?;
        }
        self.ctx.decode(&mut self.batch).map_err(|e| match e {
            DecodeError::NoKvCacheSlot => EngineError::KvFull("llama.cpp found no KV slot".into()),
            other => EngineError::Backend(format!("decode: {other}")),
        })?;
        for (i, e) in batch.iter().enumerate() {
            if e.logits {
                on_logits(i, self.ctx.get_logits_ith(i as i32))?;
            }
        }
        Ok(())
    }

    fn kv_copy(&mut self, src: u32, dst: u32, len: u32) -> Result<()> {
        self.ctx
            .copy_kv_cache_seq(src as i32, dst as i32, None, Some(len))
            .map_err(|e| EngineError::Backend(format!("kv copy: {e}")))
    }

    fn kv_remove(&mut self, slot: u32, from: u32) -> Result<()> {
        let ok = self
            .ctx
            .clear_kv_cache_seq(Some(slot), Some(from), None)
            .map_err(|e| EngineError::Backend(format!("kv remove: {e}")))?;
        if ok {
            Ok(())
        } else {
            Err(EngineError::Backend(format!(
                "llama.cpp refused to drop positions {from}.. of slot {slot}"
            )))
        }
    }
}
