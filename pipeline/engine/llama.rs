//! The llama.cpp backend (llama-cpp-2). CPU by default; `cuda`, `metal`,
//! `vulkan` cargo features pass through to llama.cpp.
//!
//! The context always uses the unified KV cache: it is what lets a fork share
//! its parent's cells (metadata-only copy) and what makes partial sequence
//! copies legal — on a non-unified cache llama.cpp aborts the process on them.
//!
//! Tokenization: text cotforge writes (chat templates, its tags) is parsed
//! for control tokens; text from seeds or the model is not
//! ([`Backend::tokenize_plain`]), so a seed cannot inject `<|im_start|>`.
//! A model that fails to load is examined so the message says why: a
//! truncated file (its header describes more bytes than it has), an
//! architecture this llama.cpp does not know, or what llama.cpp reported.

use std::collections::VecDeque;
use std::ffi::{c_char, c_void, CStr, CString};
use std::fs::File;
use std::io::Read;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

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
use llama_cpp_2::DecodeError;

/// The last warnings and errors llama.cpp logged, to explain a failed load.
static LOG_TAIL: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());

/// llama.cpp and ggml log here: lines go to tracing (target `llama.cpp`), and
/// warnings and errors are kept in [`LOG_TAIL`].
unsafe extern "C" fn log_to_tracing(level: u32, text: *const c_char, _: *mut c_void) {
    if text.is_null() {
        return;
    }
    // SAFETY: llama.cpp passes a NUL-terminated string valid for this call.
    let s = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    let line = s.trim_end();
    if line.is_empty() {
        return;
    }
    match level {
        llama_cpp_sys_2::GGML_LOG_LEVEL_ERROR => tracing::error!(target: "llama.cpp", "{line}"),
        llama_cpp_sys_2::GGML_LOG_LEVEL_WARN => tracing::warn!(target: "llama.cpp", "{line}"),
        llama_cpp_sys_2::GGML_LOG_LEVEL_INFO => tracing::info!(target: "llama.cpp", "{line}"),
        _ => tracing::debug!(target: "llama.cpp", "{line}"),
    }
    if matches!(
        level,
        llama_cpp_sys_2::GGML_LOG_LEVEL_ERROR | llama_cpp_sys_2::GGML_LOG_LEVEL_WARN
    ) {
        if let Ok(mut t) = LOG_TAIL.lock() {
            if t.len() >= 32 {
                t.pop_front();
            }
            t.push_back(line.to_string());
        }
    }
}

fn take_log_tail() -> Vec<String> {
    LOG_TAIL
        .lock()
        .map(|mut t| t.drain(..).collect())
        .unwrap_or_default()
}

/// llama.cpp's process-wide backend, initialized once.
fn backend() -> Result<&'static LlamaBackend> {
    static BACKEND: OnceLock<std::result::Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            // llama.cpp logs to stderr by default; route it through tracing instead.
            // SAFETY: a 'static callback that ignores its user data.
            unsafe {
                llama_cpp_sys_2::llama_log_set(Some(log_to_tracing), std::ptr::null_mut());
                llama_cpp_sys_2::ggml_log_set(Some(log_to_tracing), std::ptr::null_mut());
            }
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| EngineError::Backend(format!("backend init: {e}")))
}

/// What a GGUF's header says: its architecture and how long the file must be.
struct GgufHeader {
    arch: Option<String>,
    expected_len: u64,
}

/// Read a GGUF's header through ggml's own parser (no tensor data is read).
/// `None` when the header itself cannot be parsed.
fn read_gguf_header(path: &Path) -> Option<GgufHeader> {
    let c_path = CString::new(path.to_str()?).ok()?;
    let params = llama_cpp_sys_2::gguf_init_params {
        no_alloc: true,
        ctx: std::ptr::null_mut(),
    };
    // SAFETY: a valid path; the context is freed below and not used after.
    let ctx = unsafe { llama_cpp_sys_2::gguf_init_from_file(c_path.as_ptr(), params) };
    if ctx.is_null() {
        return None;
    }
    // SAFETY: `ctx` is a live context; indices come from its own counts.
    let header = unsafe {
        let key = c"general.architecture";
        let k = llama_cpp_sys_2::gguf_find_key(ctx, key.as_ptr());
        let arch = if k >= 0 {
            let v = llama_cpp_sys_2::gguf_get_val_str(ctx, k);
            (!v.is_null()).then(|| CStr::from_ptr(v).to_string_lossy().into_owned())
        } else {
            None
        };
        let data = llama_cpp_sys_2::gguf_get_data_offset(ctx) as u64;
        let n = llama_cpp_sys_2::gguf_get_n_tensors(ctx);
        let end = (0..n)
            .map(|i| {
                llama_cpp_sys_2::gguf_get_tensor_offset(ctx, i) as u64
                    + llama_cpp_sys_2::gguf_get_tensor_size(ctx, i) as u64
            })
            .max()
            .unwrap_or(0);
        llama_cpp_sys_2::gguf_free(ctx);
        GgufHeader {
            arch,
            expected_len: data + end,
        }
    };
    Some(header)
}

/// Why llama.cpp could not load `path`, in words a user can act on.
fn load_failure(path: &Path, len: u64, llama_error: &str) -> String {
    let said = take_log_tail();
    let said_text = if said.is_empty() {
        llama_error.to_string()
    } else {
        said.join(" | ")
    };
    let Some(h) = read_gguf_header(path) else {
        return format!(
            "its GGUF header cannot be read: the file is truncated or corrupt, fetch it again (llama.cpp: {said_text})"
        );
    };
    if len < h.expected_len {
        return format!(
            "the file is truncated: its header describes {} bytes, the file has {len}; fetch it again",
            h.expected_len
        );
    }
    let arch = h.arch.unwrap_or_else(|| "(none)".into());
    if said
        .iter()
        .any(|l| l.contains("unknown model architecture"))
    {
        return format!(
            "this llama.cpp build does not support the model architecture `{arch}` \
             (general.architecture; llama.cpp: {said_text}); the file itself is complete. Use a GGUF \
             of a supported architecture (e.g. llama, qwen2, gemma3, phi3) or a cotforge built with a \
             newer llama.cpp"
        );
    }
    format!(
        "llama.cpp could not load it (architecture `{arch}`; the file is complete, {len} bytes as its \
         header describes): {said_text}"
    )
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
    /// The model's template failed once and the fallback was announced.
    fallback_warned: AtomicBool,
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
        take_log_tail();
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let model = LlamaModel::load_from_file(backend, path, &mparams).map_err(|e| {
            EngineError::Model {
                path: path.display().to_string(),
                reason: load_failure(path, len, &e.to_string()),
            }
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
        let fallback_template = cfg
            .chat_template
            .clone()
            .unwrap_or_else(|| default_template(&arch).into());
        if template.is_none() {
            tracing::warn!(
                "{}: the GGUF carries no chat template; using llama.cpp's built-in `{fallback_template}` \
                 (chosen {} architecture `{arch}`; set [engine] chat_template to choose another)",
                path.display(),
                if cfg.chat_template.is_some() {
                    "by [engine] chat_template, not by"
                } else {
                    "for the"
                }
            );
        }
        let backend = LlamaCpp {
            ctx,
            batch: LlamaBatch::new(cfg.n_batch, 1),
            model,
            template,
            fallback_template,
            fallback_warned: AtomicBool::new(false),
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
    fn tokenize_plain(&self, text: &str) -> Result<Vec<Token>> {
        // No parse_special: `<|im_end|>` in seed text is spelled, not a control token.
        let toks = self.model.vocab().tokenize(text.as_bytes(), false, false);
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
            .map(|m| LlamaChatMessage::new(m.role.to_string(), m.content.clone()))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| EngineError::Template(format!("message contains a NUL byte: {e}")))?;
        if let Some(t) = &self.template {
            match self.apply(t, &msgs) {
                Ok(s) => return Ok(s),
                Err(e) => {
                    if !self.fallback_warned.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            "{}: llama.cpp cannot apply the model's chat template ({e}); using its built-in `{}` \
                             (set [engine] chat_template to choose another)",
                            self.name,
                            self.fallback_template
                        )
                    }
                }
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
