//! The HTTP engine: the [`Engine`] trait over OpenAI-compatible
//! `/v1/completions` servers (llama-server, vLLM, SGLang), one or a fleet.
//!
//! `step` hands out one token per sequence, but a round trip per token would
//! be far too slow, so each sequence is fed by a *generation*: one streamed
//! request (prompt as token ids, `logprobs: 5`, the step's temperature /
//! top-p, `max_tokens` = `chunk_tokens`) whose tokens arrive into the
//! sequence's look-ahead buffer while the server keeps generating; `step`
//! pops one per sequence. When the caller edits a sequence (truncate /
//! append) or changes its sampling, the generation is cancelled (the stream
//! is closed, which also stops the server) and the look-ahead discarded; a
//! chunk that ends normally is followed at once by the next one, requested
//! from the end of the look-ahead. Sequences not stepped for two steps lose
//! their generation too, so a finished stream does not keep a server busy.
//!
//! Server-side reuse: a tree's sequences all go to one server (a fork keeps
//! its parent's, a fresh sequence follows the live sequence it shares most of
//! its tokens with). On llama-server the client mirrors what each slot holds
//! and pins every request (`id_slot`) to the free slot sharing the longest
//! prefix with its prompt: the server's own choice skips a slot still closing
//! a cancelled stream and evaluates the whole path again elsewhere. Other
//! servers get the sequences that need a request at the same step with
//! identical tokens and sampling (a node's K children) as *one* request with
//! `n = K`, so the shared prefix is evaluated once.
//!
//! Confidence: from the returned top-5 log-probabilities with the native
//! engine's own [`confidence`] (a log-probability is the logit minus a
//! per-position constant, which the formula is invariant to).
//!
//! Faults: transient failures are retried with backoff (see
//! [`client::Endpoint`]); a stream that breaks after some tokens keeps them
//! and continues with a new request; a server that stays unreachable is
//! dropped from the fleet and its sequences move to another; with none left
//! `step` fails with [`EngineError::Unavailable`]; a request the server
//! keeps refusing fails only its sequence ([`EngineError::Sequence`]).

pub mod api;
pub mod client;
pub mod local;
pub mod vocab;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::config::{EngineConfig, HttpConfig};
use super::sampling::derive_seed;
use super::{
    confidence, ChatMessage, Engine, EngineError, EngineStats, Result, SamplingParams, SeqId,
    StepRequest, Token, TokenOut, TOP_K,
};
use api::RawToken;
pub use client::parse_base_url;
use client::{Endpoint, RequestError};
use vocab::Vocab;

/// What kind of server answers: llama-server takes its own extra fields and
/// reports slot timings; the others get the plain OpenAI (vLLM) fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Flavor {
    LlamaCpp,
    OpenAi,
}

/// Counters of the HTTP engine, cumulative since creation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HttpStats {
    /// Generations (streamed requests) started, and how many carried `n > 1`.
    pub generations: u64,
    pub fanout_generations: u64,
    /// Sequences started by fan-out requests (their prompt was sent once).
    pub fanout_sequences: u64,
    /// Prompt tokens sent, summed over requests.
    pub prompt_tokens_sent: u64,
    /// Prompt tokens the servers reported reusing from their caches
    /// (llama-server `timings.cache_n`, OpenAI `usage.prompt_tokens_details.cached_tokens`).
    pub prompt_tokens_cached: u64,
    /// Prompt tokens the servers reported evaluating.
    pub prompt_tokens_evaluated: u64,
    /// Generated tokens received, handed to the caller, and received but
    /// dropped (the caller edited, ended or stopped stepping the sequence).
    pub tokens_received: u64,
    pub tokens_handed: u64,
    pub tokens_discarded: u64,
    /// Generations cancelled before they ended, and of those how many to
    /// free a server slot for a sequence of the current step.
    pub cancelled: u64,
    pub preempted: u64,
    /// HTTP attempts, retries after transient failures, requests that failed for good.
    pub http_requests: u64,
    pub http_retries: u64,
    pub http_failures: u64,
    /// Streams that broke after some tokens (continued with a new request).
    pub broken_streams: u64,
    /// Resamples because llama-server withheld a token ending inside a UTF-8 character.
    pub withheld_resamples: u64,
    /// Seconds `step` waited for the servers.
    pub wait_seconds: f64,
    /// Servers dropped from the fleet as unreachable.
    pub servers_lost: u64,
}

/// One server of the fleet and its state.
struct Server {
    ep: Arc<Endpoint>,
    flavor: Flavor,
    /// Most sequences generating at once here.
    capacity: usize,
    in_flight: usize,
    up: bool,
    /// llama-server's slots as this client last left them (empty: requests
    /// are not pinned, see [`HttpConfig::pin_slots`]).
    slots: Vec<SlotMirror>,
}

/// What one llama-server slot holds, as far as this client knows: a prefix
/// of its KV (the prompt sent plus the tokens received; the server may hold
/// more) and the generation running on it.
#[derive(Debug, Clone, Default)]
struct SlotMirror {
    tokens: Vec<Token>,
    gen: Option<u64>,
    /// When it was last given a generation (the generation counter).
    last_use: u64,
    /// A withheld token broke the mirror: later tokens are not appended.
    frozen: bool,
}

/// One sequence as the client holds it.
#[derive(Debug, Clone)]
struct Seq {
    tokens: Vec<Token>,
    server: Option<usize>,
    /// Tokens received for this sequence and not handed out yet; their
    /// generation was requested with `ahead_params`.
    ahead: VecDeque<TokenOut>,
    ahead_params: Option<(f32, f32)>,
    /// The generation feeding `ahead`: (id, choice index).
    gen: Option<(u64, usize)>,
    last_step: u64,
    /// Resample counter at the current position (withheld tokens).
    resample: u64,
    /// Set when a request for this sequence failed for good.
    failed: Option<String>,
    /// The last generation ended on end-of-generation: nothing follows.
    ended: bool,
    /// Which tree the sequence belongs to (a fork keeps its parent's).
    root: u32,
}

impl Seq {
    fn new(tokens: Vec<Token>, server: Option<usize>, root: u32) -> Self {
        Self {
            root,
            tokens,
            server,
            ahead: VecDeque::new(),
            ahead_params: None,
            gen: None,
            last_step: 0,
            resample: 0,
            failed: None,
            ended: false,
        }
    }
}

/// A choice of a generation: which sequence it feeds (None once detached).
struct Child {
    seq: Option<SeqId>,
    received: u64,
    done: bool,
}

struct Gen {
    server: usize,
    /// The slot it was pinned to.
    slot: Option<usize>,
    cancel: Arc<AtomicBool>,
    children: Vec<Child>,
    params: (f32, f32),
    reported_prompt: bool,
}

enum EventKind {
    Token {
        tok: RawToken,
        /// llama-server's count of generated tokens, withheld ones included.
        predicted_n: Option<i64>,
    },
    /// The choice ended: `eos` when the server stopped on end of generation.
    Finish {
        eos: bool,
    },
    Prompt {
        evaluated: u64,
        cached: u64,
    },
    /// The request is over (`Err`: it failed, after `received` tokens).
    Closed(std::result::Result<(), RequestError>),
}

struct Event {
    gen: u64,
    index: usize,
    kind: EventKind,
}

/// The engine over one or more inference servers.
pub struct HttpEngine {
    cfg: HttpConfig,
    model: String,
    n_ctx: usize,
    n_parallel: usize,
    n_seq_max: usize,
    servers: Vec<Server>,
    vocab: Vocab,
    /// Teacher-forced scoring is possible (prompt log-probabilities).
    can_score: bool,
    seqs: BTreeMap<SeqId, Seq>,
    next_id: u32,
    gens: HashMap<u64, Gen>,
    next_gen: u64,
    tx: Sender<Event>,
    rx: Receiver<Event>,
    tick: u64,
    stats: EngineStats,
    hstats: HttpStats,
    /// The baseline client of `bench http`: see [`HttpEngine::set_naive`].
    naive: bool,
}

fn server_err(url: &str, reason: impl Into<String>) -> EngineError {
    EngineError::Server {
        url: url.to_string(),
        reason: reason.into(),
    }
}

/// What to tell the user for a failed start-up probe.
fn probe_advice(e: &RequestError) -> String {
    match e {
        RequestError::Unreachable(m) => format!(
            "cannot connect ({m}): is the server running and is this its address? \
             (llama-server: --host/--port; check engine.http.base_urls / --base-url)"
        ),
        RequestError::Timeout(_) => format!("{e}: the server accepts connections but does not answer (overloaded or hung)"),
        RequestError::Status { code: 401 | 403, .. } => format!(
            "{e}: the server wants an API key: set engine.http.api_key_env to the name of the variable holding it"
        ),
        RequestError::Status { code: 404, .. } => format!(
            "{e}: no OpenAI-compatible API here (base_urls is the server root, e.g. http://host:8000)"
        ),
        _ => e.to_string(),
    }
}

/// A start-up GET: a server still loading its model (503) is waited for
/// with the retry policy; one that refuses connections fails at once.
fn startup_get<T: serde::de::DeserializeOwned>(
    ep: &Endpoint,
    path: &str,
) -> std::result::Result<T, RequestError> {
    let mut attempt = 0;
    loop {
        match ep.get_once(path) {
            Ok(v) => return Ok(v),
            Err(e @ RequestError::Unreachable(_)) => return Err(e),
            Err(e) => {
                if !ep.retry_wait(attempt, &e, None)? {
                    return Err(e);
                }
                attempt += 1;
            }
        }
    }
}

/// The common prefix length of two token lists.
fn lcp(a: &[Token], b: &[Token]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// A small prompt for the start-up probes.
const PROBE_TEXT: &str = "The capital of France is";

impl HttpEngine {
    /// Connect to every server and check, before any work, that each answers,
    /// serves the model, returns log-probabilities with token ids, and agrees
    /// on the vocabulary. Errors name the URL and what to do.
    pub fn connect(cfg: &EngineConfig) -> Result<Self> {
        cfg.validate()?;
        let h = &cfg.http;
        let mut servers = Vec::new();
        let mut model: Option<String> = h.model.clone();
        let mut n_vocab: Option<usize> = None;
        let mut n_ctx = usize::MAX;
        let mut eos: Option<String> = None;
        for url in &h.base_urls {
            let ep = Arc::new(Endpoint::new(url, h).map_err(|r| server_err(url, r))?);
            let url = ep.url.clone();
            let list: api::ModelList =
                startup_get(&ep, "/v1/models").map_err(|e| server_err(&url, probe_advice(&e)))?;
            let ids: Vec<&str> = list.data.iter().map(|m| m.id.as_str()).collect();
            let info = match &model {
                Some(m) => list.data.iter().find(|d| &d.id == m).ok_or_else(|| {
                    server_err(
                        &url,
                        format!("does not serve model {m:?}; it serves {ids:?} (set engine.http.model to one of them)"),
                    )
                })?,
                None => match list.data.as_slice() {
                    [one] => one,
                    [] => return Err(server_err(&url, "serves no model (/v1/models is empty)")),
                    _ => {
                        return Err(server_err(
                            &url,
                            format!("serves several models {ids:?}: set engine.http.model to one of them"),
                        ))
                    }
                },
            };
            model = Some(info.id.clone());
            let flavor = if info.owned_by == "llamacpp" {
                Flavor::LlamaCpp
            } else {
                Flavor::OpenAi
            };
            let mut capacity = h.max_in_flight;
            let mut n_slots = 0;
            let mut ctx = info
                .max_model_len
                .or(info.meta.as_ref().and_then(|m| m.n_ctx));
            if let Some(v) = info.meta.as_ref().and_then(|m| m.n_vocab) {
                if n_vocab.is_some_and(|n| n != v) {
                    return Err(server_err(
                        &url,
                        format!("has a vocabulary of {v} tokens, other servers {} : every server must serve the same model", n_vocab.unwrap_or(0)),
                    ));
                }
                n_vocab = Some(v);
            }
            if flavor == Flavor::LlamaCpp {
                let props: api::Props = startup_get(&ep, "/props")
                    .map_err(|e| server_err(&url, format!("/props: {}", probe_advice(&e))))?;
                if let Some(slots) = props.total_slots {
                    if h.pin_slots {
                        n_slots = slots;
                    }
                    if slots < capacity {
                        tracing::warn!(%url, slots, max_in_flight = capacity, "llama-server has fewer slots than max_in_flight; using its slot count");
                        capacity = slots;
                    }
                }
                ctx = ctx.or(props.default_generation_settings.and_then(|g| g.n_ctx));
                eos = eos.or(props.eos_token);
                tracing::info!(%url, build = props.build_info.as_deref().unwrap_or("?"), "llama-server");
            }
            if let Some(c) = ctx {
                n_ctx = n_ctx.min(c);
            }
            servers.push(Server {
                ep,
                flavor,
                capacity: capacity.max(1),
                in_flight: 0,
                up: true,
                slots: vec![SlotMirror::default(); n_slots],
            });
        }
        let model = model.unwrap_or_default();
        let first = &servers[0];
        let vocab = match &h.tokenizer {
            Some(p) => Vocab::from_gguf(p)?,
            None if first.flavor == Flavor::LlamaCpp => {
                let n = n_vocab.ok_or_else(|| {
                    server_err(&first.ep.url, "does not report n_vocab in /v1/models: set engine.http.tokenizer = \"model.gguf\"")
                })?;
                Vocab::from_server(first.ep.clone(), n, eos.as_deref())?
            }
            None => {
                return Err(server_err(
                    &first.ep.url,
                    "is not llama-server, so it exposes no vocabulary: set engine.http.tokenizer (or --tokenizer) to a GGUF of the served model",
                ))
            }
        };
        if let Some(n) = n_vocab {
            if n != vocab.n_vocab() {
                return Err(server_err(
                    &first.ep.url,
                    format!(
                        "serves a vocabulary of {n} tokens but the tokenizer has {}: tokenizer must be a GGUF of the served model",
                        vocab.n_vocab()
                    ),
                ));
            }
        }
        if n_ctx == usize::MAX {
            n_ctx = cfg.n_ctx;
        }
        let (tx, rx) = channel();
        let mut e = Self {
            cfg: h.clone(),
            model,
            n_ctx,
            n_parallel: cfg.n_parallel,
            n_seq_max: cfg.n_seq_max,
            servers,
            vocab,
            can_score: false,
            seqs: BTreeMap::new(),
            next_id: 0,
            gens: HashMap::new(),
            next_gen: 0,
            tx,
            rx,
            tick: 0,
            stats: EngineStats::default(),
            hstats: HttpStats::default(),
            naive: false,
        };
        e.probe()?;
        let cap: usize = e.servers.iter().map(|s| s.capacity).sum();
        if cap < e.n_parallel {
            tracing::warn!(
                capacity = cap,
                n_parallel = e.n_parallel,
                "fewer generations in flight than sequences per step: raise max_in_flight / server slots"
            );
        }
        Ok(e)
    }

    /// One greedy token from every server: log-probabilities with ids come
    /// back, the tokenizers agree, and (OpenAI flavor) prompt log-probabilities exist.
    fn probe(&mut self) -> Result<()> {
        let prompt = self.vocab.tokenize(PROBE_TEXT, true)?;
        let mut scoring = true;
        for s in &self.servers {
            let url = &s.ep.url;
            if s.flavor == Flavor::LlamaCpp {
                let r: std::result::Result<api::TokenizeResponse<Token>, _> = s.ep.post(
                    "/tokenize",
                    &serde_json::json!({"content": PROBE_TEXT, "add_special": true, "parse_special": true}),
                    0,
                    None,
                );
                if let Ok(r) = r {
                    if r.tokens != prompt {
                        return Err(server_err(
                            url,
                            format!("tokenizes {PROBE_TEXT:?} as {:?}, the tokenizer as {prompt:?}: tokenizer must be a GGUF of the served model", r.tokens),
                        ));
                    }
                }
            }
            let req = api::CompletionRequest {
                model: &self.model,
                prompt: &prompt,
                max_tokens: 1,
                temperature: 0.0,
                top_p: 1.0,
                seed: 0,
                logprobs: Some(TOP_K as u32),
                n: 1,
                stream: false,
                stream_options: None,
                stop: &[],
                prompt_logprobs: (s.flavor == Flavor::OpenAi).then_some(1),
                return_tokens_as_token_ids: (s.flavor == Flavor::OpenAi).then_some(true),
                llama: (s.flavor == Flavor::LlamaCpp).then(api::LlamaExtras::default),
            };
            let r: api::CompletionChunk = s
                .ep
                .post("/v1/completions", &req, prompt.len() + 1, None)
                .map_err(|e| server_err(url, format!("/v1/completions: {}", probe_advice(&e))))?;
            let ch = r
                .choices
                .first()
                .ok_or_else(|| server_err(url, "/v1/completions returned no choice"))?;
            let toks = match &ch.logprobs {
                Some(lp) => lp.tokens(TOP_K).map_err(|m| server_err(url, m))?,
                None => Vec::new(),
            };
            if toks.is_empty() || toks[0].top.is_empty() {
                return Err(server_err(
                    url,
                    "returns no log-probabilities for generated tokens, which the confidence needs \
                     (vLLM: start it with --max-logprobs 5 or more)",
                ));
            }
            if toks[0].token < 0 || toks[0].token as usize >= self.vocab.n_vocab() {
                return Err(server_err(
                    url,
                    format!("returned token id {} outside the vocabulary", toks[0].token),
                ));
            }
            scoring &= s.flavor == Flavor::OpenAi && ch.prompt_logprobs.is_some();
        }
        self.can_score = scoring;
        Ok(())
    }

    /// The HTTP counters, with the servers' request counters folded in.
    pub fn http_stats(&self) -> HttpStats {
        let mut h = self.hstats.clone();
        for s in &self.servers {
            h.http_requests += s.ep.counters.requests.load(Ordering::Relaxed);
            h.http_retries += s.ep.counters.retries.load(Ordering::Relaxed);
            h.http_failures += s.ep.counters.failures.load(Ordering::Relaxed);
        }
        h
    }

    /// Behave like a naive client, the floor `bench http` reports: every
    /// request has the server evaluate its whole path again (no prompt
    /// cache), one completion per request (no shared prefix), the next chunk
    /// only once the previous one is used up, and at most one request in
    /// flight per tree.
    pub fn set_naive(&mut self, naive: bool) {
        self.naive = naive;
    }

    /// Base URL and flavor of each server.
    pub fn servers(&self) -> Vec<(String, Flavor)> {
        self.servers
            .iter()
            .map(|s| (s.ep.url.clone(), s.flavor))
            .collect()
    }

    fn seq(&self, id: SeqId) -> Result<&Seq> {
        self.seqs.get(&id).ok_or(EngineError::UnknownSequence(id))
    }

    fn seq_mut(&mut self, id: SeqId) -> Result<&mut Seq> {
        self.seqs
            .get_mut(&id)
            .ok_or(EngineError::UnknownSequence(id))
    }

    /// Stop feeding `id`: detach it from its generation (cancelled once no
    /// choice is attached) and drop its look-ahead.
    fn detach(&mut self, id: SeqId) {
        let Some(s) = self.seqs.get_mut(&id) else {
            return;
        };
        self.hstats.tokens_discarded += s.ahead.len() as u64;
        s.ahead.clear();
        s.ahead_params = None;
        s.ended = false;
        if let Some((g, i)) = s.gen.take() {
            if let Some(gen) = self.gens.get_mut(&g) {
                if let Some(c) = gen.children.get_mut(i) {
                    c.seq = None;
                }
                if gen.children.iter().all(|c| c.seq.is_none() || c.done)
                    && !gen.cancel.swap(true, Ordering::Relaxed)
                {
                    self.hstats.cancelled += 1;
                    // The server frees the slot as soon as it sees the
                    // stream closed; a request pinned to it waits that long.
                    let (k, slot) = (gen.server, gen.slot);
                    self.free_slot(k, slot, g);
                }
            }
        }
    }

    /// The server for a sequence: its own, else the one of the live sequence
    /// it shares the most tokens with (at least half of its own), else the
    /// least busy one.
    fn route(&mut self, id: SeqId) -> Result<usize> {
        let s = self.seq(id)?;
        if let Some(k) = s.server.filter(|&k| self.servers[k].up) {
            return Ok(k);
        }
        let mut best: Option<(usize, usize, u32)> = None;
        for (oid, o) in &self.seqs {
            if *oid == id {
                continue;
            }
            if let Some(k) = o.server.filter(|&k| self.servers[k].up) {
                let l = lcp(&s.tokens, &o.tokens);
                if best.is_none_or(|(b, _, _)| l > b) {
                    best = Some((l, k, o.root));
                }
            }
        }
        let k = match best {
            Some((l, k, root)) if l * 2 >= s.tokens.len() && l > 0 => {
                self.seq_mut(id)?.root = root;
                k
            }
            _ => {
                let mut load = vec![0usize; self.servers.len()];
                for o in self.seqs.values() {
                    if let Some(k) = o.server {
                        load[k] += 1;
                    }
                }
                (0..self.servers.len())
                    .filter(|&k| self.servers[k].up)
                    .min_by_key(|&k| (load[k] * 1000 / self.servers[k].capacity, k))
                    .ok_or_else(|| EngineError::Unavailable(self.down_list()))?
            }
        };
        self.seq_mut(id)?.server = Some(k);
        Ok(k)
    }

    /// The slot of server `k` to pin a request for `prompt` to: among those
    /// running nothing, the one whose KV shares the longest prefix with it,
    /// then the one with the least to lose beyond that prefix, then the
    /// least recently used. None when every slot runs a generation (the
    /// server then queues the request for the first slot to free up).
    fn pick_slot(&self, k: usize, prompt: &[Token]) -> Option<usize> {
        self.servers[k]
            .slots
            .iter()
            .enumerate()
            .filter(|(_, m)| m.gen.is_none())
            .max_by_key(|(j, m)| {
                let l = lcp(&m.tokens, prompt);
                (
                    l,
                    std::cmp::Reverse(m.tokens.len() - l),
                    std::cmp::Reverse(m.last_use),
                    std::cmp::Reverse(*j),
                )
            })
            .map(|(j, _)| j)
    }

    /// Mark slot `slot` of server `k` free if generation `g` still holds it.
    fn free_slot(&mut self, k: usize, slot: Option<usize>, g: u64) {
        if let Some(m) = slot.and_then(|j| self.servers[k].slots.get_mut(j)) {
            if m.gen == Some(g) {
                m.gen = None;
            }
        }
    }

    fn down_list(&self) -> String {
        self.servers
            .iter()
            .map(|s| s.ep.url.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The server seed of a generation starting at `pos` (u31: llama.cpp
    /// reads -1 / 0xFFFFFFFF as "random").
    fn server_seed(params: &SamplingParams, pos: usize, resample: u64) -> u32 {
        let s = derive_seed(derive_seed(params.seed, pos as u64), resample);
        (s & 0x3FFF_FFFF) as u32
    }

    /// Start one generation for `members` (identical tokens and sampling,
    /// same server; ordered by id, member `i` gets the server's seed + i).
    fn launch(&mut self, server: usize, members: &[(SeqId, SamplingParams)]) -> Result<()> {
        let (first, params) = members[0];
        let (prompt, resample) = {
            let s = self.seq(first)?;
            let mut p = s.tokens.clone();
            p.extend(s.ahead.iter().map(|t| t.token));
            (p, s.resample)
        };
        if prompt.len() >= self.n_ctx {
            return Err(EngineError::ContextFull {
                seq: first,
                pos: prompt.len() + 1,
                n_ctx: self.n_ctx,
            });
        }
        let max_tokens = self.cfg.chunk_tokens.min(self.n_ctx - prompt.len());
        let g = self.next_gen;
        self.next_gen += 1;
        let slot = if members.len() == 1 && !self.naive {
            self.pick_slot(server, &prompt)
        } else {
            None
        };
        if let Some(m) = slot.and_then(|j| self.servers[server].slots.get_mut(j)) {
            m.tokens.clone_from(&prompt);
            m.gen = Some(g);
            m.last_use = g;
            m.frozen = false;
        }
        let cancel = Arc::new(AtomicBool::new(false));
        let srv = &mut self.servers[server];
        srv.in_flight += members.len();
        let flavor = srv.flavor;
        let ep = srv.ep.clone();
        let key = (params.temperature, params.top_p);
        let mut children = Vec::with_capacity(members.len());
        for (i, &(id, _)) in members.iter().enumerate() {
            let s = self
                .seqs
                .get_mut(&id)
                .ok_or(EngineError::UnknownSequence(id))?;
            s.gen = Some((g, i));
            s.ahead_params = Some(key);
            s.server = Some(server);
            s.failed = None;
            children.push(Child {
                seq: Some(id),
                received: 0,
                done: false,
            });
        }
        self.gens.insert(
            g,
            Gen {
                server,
                slot,
                cancel: cancel.clone(),
                children,
                params: key,
                reported_prompt: false,
            },
        );
        self.hstats.generations += 1;
        self.hstats.prompt_tokens_sent += prompt.len() as u64;
        if members.len() > 1 {
            self.hstats.fanout_generations += 1;
            self.hstats.fanout_sequences += members.len() as u64;
        }
        let job = Job {
            ep,
            flavor,
            model: self.model.clone(),
            seed: Self::server_seed(&params, prompt.len(), resample),
            prompt,
            max_tokens,
            n: members.len(),
            params,
            stop: self.cfg.stop.clone(),
            cache_prompt: self.cfg.cache_prompt && !self.naive,
            id_slot: slot,
            gen: g,
            tx: self.tx.clone(),
            cancel,
        };
        std::thread::Builder::new()
            .name(format!("cotforge-http-{g}"))
            .spawn(move || job.run())
            .map_err(|e| EngineError::Backend(format!("cannot start a request thread: {e}")))?;
        Ok(())
    }

    /// Apply one event from a request thread.
    fn apply(&mut self, ev: Event) {
        let Some(gen) = self.gens.get_mut(&ev.gen) else {
            if matches!(ev.kind, EventKind::Token { .. }) {
                self.hstats.tokens_received += 1;
                self.hstats.tokens_discarded += 1;
            }
            return;
        };
        match ev.kind {
            EventKind::Prompt { evaluated, cached } => {
                if !gen.reported_prompt {
                    gen.reported_prompt = true;
                    tracing::debug!(
                        gen = ev.gen,
                        n = gen.children.len(),
                        seqs = ?gen.children.iter().map(|c| c.seq).collect::<Vec<_>>(),
                        evaluated,
                        cached,
                        "prompt"
                    );
                    self.hstats.prompt_tokens_evaluated += evaluated;
                    self.hstats.prompt_tokens_cached += cached;
                    self.stats.tokens_evaluated += evaluated;
                }
            }
            EventKind::Token { tok, predicted_n } => {
                self.hstats.tokens_received += 1;
                self.stats.tokens_evaluated += 1;
                let Some(c) = gen.children.get_mut(ev.index) else {
                    return;
                };
                c.received += 1;
                let received = c.received;
                let withheld = predicted_n.is_some_and(|p| p > received as i64);
                if let Some(m) = gen
                    .slot
                    .and_then(|j| self.servers[gen.server].slots.get_mut(j))
                {
                    if m.gen == Some(ev.gen) {
                        m.frozen |= withheld;
                        if !m.frozen {
                            m.tokens.push(tok.token);
                        }
                    }
                }
                let Some(id) = c.seq else {
                    self.hstats.tokens_discarded += 1;
                    return;
                };
                // llama-server withholds a token that ends inside a UTF-8
                // character (it sends no log-probabilities for it): its count
                // of generated tokens runs ahead of ours. Keep what came before.
                if withheld {
                    self.hstats.tokens_discarded += 1;
                    let greedy = gen.params.0 <= 0.0;
                    self.detach_keep(id);
                    if let Some(s) = self.seqs.get_mut(&id) {
                        if greedy {
                            s.failed = Some(format!(
                                "llama-server withheld the log-probabilities of a token ending inside a UTF-8 character at position {}; greedy decoding cannot sample around it",
                                s.tokens.len() + s.ahead.len()
                            ));
                        } else {
                            s.resample += 1;
                            self.hstats.withheld_resamples += 1;
                        }
                    }
                    return;
                }
                let out = TokenOut {
                    token: tok.token,
                    piece: self.vocab.piece(tok.token),
                    confidence: confidence(tok.logprob, &tok.top),
                    top: tok.top,
                    logit: tok.logprob,
                    eog: self.vocab.is_eog(tok.token),
                };
                if let Some(s) = self.seqs.get_mut(&id) {
                    if out.eog {
                        s.ended = true;
                    }
                    s.ahead.push_back(out);
                }
            }
            EventKind::Finish { eos } => {
                let Some(c) = gen.children.get_mut(ev.index) else {
                    return;
                };
                c.done = true;
                let Some(id) = c.seq else { return };
                if let Some(s) = self.seqs.get_mut(&id) {
                    if eos {
                        s.ended = true;
                        if let Some(last) = s.ahead.back_mut() {
                            if !last.eog && self.vocab.learn_eog(last.token) {
                                tracing::warn!(token = last.token, "the server stopped on a token the vocabulary does not mark as end of generation; treating it as one");
                                last.eog = true;
                            }
                        }
                    }
                    if s.gen.is_some_and(|(g, _)| g == ev.gen) {
                        s.gen = None;
                    }
                }
            }
            EventKind::Closed(res) => {
                let Some(gen) = self.gens.remove(&ev.gen) else {
                    return;
                };
                let srv = &mut self.servers[gen.server];
                srv.in_flight = srv.in_flight.saturating_sub(gen.children.len());
                self.free_slot(gen.server, gen.slot, ev.gen);
                let err = res.err();
                for c in &gen.children {
                    let Some(id) = c.seq else { continue };
                    let Some(s) = self.seqs.get_mut(&id) else {
                        continue;
                    };
                    if s.gen.is_some_and(|(g, _)| g == ev.gen) {
                        s.gen = None;
                    }
                    match &err {
                        None | Some(RequestError::Cancelled) => {}
                        // Tokens arrived before the failure: keep them, continue later.
                        Some(_) if c.received > 0 => self.hstats.broken_streams += 1,
                        Some(e) if e.server_gone() => {
                            // Move to another server at the next launch.
                            s.server = None;
                        }
                        Some(e) => {
                            s.failed = Some(format!("{}: {e}", self.servers[gen.server].ep.url))
                        }
                    }
                }
                if let Some(e) = &err {
                    let noone = gen.children.iter().all(|c| c.received == 0);
                    if e.server_gone() && noone && self.servers[gen.server].up {
                        tracing::warn!(url = %self.servers[gen.server].ep.url, "server lost: {e}");
                        self.servers[gen.server].up = false;
                        self.hstats.servers_lost += 1;
                    }
                }
            }
        }
    }

    /// Like [`Self::detach`], but keep the look-ahead already verified.
    fn detach_keep(&mut self, id: SeqId) {
        let Some(s) = self.seqs.get_mut(&id) else {
            return;
        };
        let ahead = std::mem::take(&mut s.ahead);
        let (params, ended) = (s.ahead_params, s.ended);
        self.detach(id);
        if let Some(s) = self.seqs.get_mut(&id) {
            s.ahead = ahead;
            s.ahead_params = params;
            s.ended = ended;
        }
    }

    fn drain(&mut self) {
        while let Ok(ev) = self.rx.try_recv() {
            self.apply(ev);
        }
    }

    /// Block for the next event (bounded: request threads time out themselves).
    fn wait(&mut self) -> Result<()> {
        let t = Instant::now();
        let limit = Duration::from_secs_f64(
            self.cfg.timeout_s * (self.cfg.retries as f64 + 2.0)
                + (self.cfg.backoff_max_ms as f64 / 1000.0) * (self.cfg.retries as f64 + 1.0)
                + 5.0,
        );
        let r = self.rx.recv_timeout(limit);
        self.hstats.wait_seconds += t.elapsed().as_secs_f64();
        match r {
            Ok(ev) => {
                self.apply(ev);
                self.drain();
                Ok(())
            }
            Err(RecvTimeoutError::Timeout) => Err(EngineError::Unavailable(format!(
                "no answer from {} in {:.0} s",
                self.down_list(),
                limit.as_secs_f64()
            ))),
            Err(RecvTimeoutError::Disconnected) => {
                Err(EngineError::Backend("request threads vanished".into()))
            }
        }
    }

    /// Whether a sequence will get tokens without a new request.
    fn fed(&self, s: &Seq) -> bool {
        !s.ahead.is_empty() || s.gen.is_some()
    }

    /// Bring servers marked down back if they answer again.
    fn revive(&mut self) -> bool {
        let mut any = false;
        for s in &mut self.servers {
            if !s.up && s.ep.get_once::<api::ModelList>("/v1/models").is_ok() {
                tracing::warn!(url = %s.ep.url, "server is back");
                s.up = true;
                // A restarted server's slots are empty.
                s.slots.fill(SlotMirror::default());
                any = true;
            }
        }
        any
    }

    /// Launch generations for the requested sequences that need one, as
    /// capacity allows; identical starts on one server share a request.
    fn launch_needed(&mut self, requests: &[StepRequest], only_starving: bool) -> Result<()> {
        let mut need: Vec<(SeqId, SamplingParams)> = Vec::new();
        for r in requests {
            let s = self.seq(r.seq)?;
            if s.gen.is_some() || s.ended || s.failed.is_some() {
                continue;
            }
            if only_starving && !s.ahead.is_empty() {
                continue;
            }
            if !only_starving && s.ahead.len() >= self.cfg.chunk_tokens {
                continue;
            }
            need.push((r.seq, r.sampling));
        }
        if need.is_empty() {
            return Ok(());
        }
        if self.servers.iter().all(|s| !s.up) && !self.revive() {
            return Err(EngineError::Unavailable(self.down_list()));
        }
        // Group: same server, same tokens (and look-ahead), same sampling.
        let mut groups: Vec<(usize, Vec<(SeqId, SamplingParams)>)> = Vec::new();
        let mut busy_roots: std::collections::BTreeSet<u32> = std::collections::BTreeSet::new();
        if self.naive {
            for s in self.seqs.values() {
                if s.gen.is_some() {
                    busy_roots.insert(s.root);
                }
            }
        }
        for (id, p) in need {
            let k = self.route(id)?;
            let s = self.seq(id)?;
            if self.naive {
                if !busy_roots.insert(s.root) {
                    continue;
                }
                groups.push((k, vec![(id, p)]));
                continue;
            }
            // A pinned server gets one request per sequence: the children of
            // an `n > 1` request land on slots the server picks, which would
            // overwrite what the mirror says they hold.
            let pinned = !self.servers[k].slots.is_empty();
            let found = groups.iter_mut().find(|(gk, m)| {
                *gk == k && !pinned && {
                    let o = &self.seqs[&m[0].0];
                    let (a, b) = (&m[0].1, &p);
                    a.temperature == b.temperature
                        && a.top_p == b.top_p
                        && s.ahead.is_empty()
                        && o.ahead.is_empty()
                        && o.resample == s.resample
                        && o.tokens == s.tokens
                        && m.len() < self.servers[k].capacity
                }
            });
            match found {
                Some((_, m)) => m.push((id, p)),
                None => groups.push((k, vec![(id, p)])),
            }
        }
        for (k, mut m) in groups {
            m.sort_by_key(|x| x.0);
            let free = self.servers[k]
                .capacity
                .saturating_sub(self.servers[k].in_flight);
            if free < m.len() && only_starving {
                self.preempt(k, m.len() - free, requests);
            }
            let free = self.servers[k]
                .capacity
                .saturating_sub(self.servers[k].in_flight);
            if free >= m.len() {
                self.launch(k, &m)?;
            } else if free > 0 && !only_starving {
                continue;
            } else if free > 0 {
                self.launch(k, &m[..free])?;
            }
        }
        Ok(())
    }

    /// Cancel up to `n` generations on server `k` feeding sequences not in
    /// this step, those with the most tokens already waiting first (they lose
    /// nothing now and continue with a new request later), so the step's
    /// sequences get the capacity.
    fn preempt(&mut self, k: usize, n: usize, requests: &[StepRequest]) {
        let wanted: std::collections::BTreeSet<SeqId> = requests.iter().map(|r| r.seq).collect();
        let mut victims: Vec<(usize, SeqId)> = self
            .seqs
            .iter()
            .filter(|(id, s)| {
                !wanted.contains(id)
                    && s.gen
                        .is_some_and(|(g, _)| self.gens.get(&g).is_some_and(|x| x.server == k))
            })
            .map(|(id, s)| (s.ahead.len(), *id))
            .collect();
        victims.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for (_, id) in victims.into_iter().take(n) {
            self.detach_keep(id);
            self.hstats.preempted += 1;
        }
    }
}

/// One streamed request, run on its own thread.
struct Job {
    ep: Arc<Endpoint>,
    flavor: Flavor,
    model: String,
    prompt: Vec<Token>,
    max_tokens: usize,
    n: usize,
    params: SamplingParams,
    seed: u32,
    stop: Vec<String>,
    cache_prompt: bool,
    id_slot: Option<usize>,
    gen: u64,
    tx: Sender<Event>,
    cancel: Arc<AtomicBool>,
}

impl Job {
    fn send(&self, index: usize, kind: EventKind) -> bool {
        self.tx
            .send(Event {
                gen: self.gen,
                index,
                kind,
            })
            .is_ok()
    }

    fn run(self) {
        let res = self.run_inner();
        self.send(0, EventKind::Closed(res));
    }

    fn run_inner(&self) -> std::result::Result<(), RequestError> {
        let llama = self.flavor == Flavor::LlamaCpp;
        let req = api::CompletionRequest {
            model: &self.model,
            prompt: &self.prompt,
            max_tokens: self.max_tokens,
            temperature: self.params.temperature.max(0.0),
            top_p: self.params.top_p.clamp(0.0, 1.0),
            seed: self.seed,
            logprobs: Some(TOP_K as u32),
            n: self.n,
            stream: true,
            stream_options: Some(api::StreamOptions {
                include_usage: true,
                continuous_usage_stats: !llama,
            }),
            stop: &self.stop,
            prompt_logprobs: None,
            return_tokens_as_token_ids: (!llama).then_some(true),
            llama: llama.then(|| api::LlamaExtras {
                cache_prompt: self.cache_prompt,
                id_slot: self.id_slot,
                ..Default::default()
            }),
        };
        let mut received = vec![0u64; self.n];
        let mut prompt_seen = false;
        let mut attempt = 0u32;
        loop {
            let r = self.stream_once(&req, &mut received, &mut prompt_seen);
            match r {
                Ok(()) => return Ok(()),
                // After tokens arrived, a resend would duplicate them: the
                // engine continues from what it has.
                Err(e) if received.iter().any(|&n| n > 0) => return Err(e),
                Err(e) => match self.ep.retry_wait(attempt, &e, Some(&self.cancel)) {
                    Ok(true) => attempt += 1,
                    Ok(false) => return Err(e),
                    Err(c) => return Err(c),
                },
            }
        }
    }

    fn stream_once(
        &self,
        req: &api::CompletionRequest,
        received: &mut [u64],
        prompt_seen: &mut bool,
    ) -> std::result::Result<(), RequestError> {
        let cancel = Some(self.cancel.as_ref());
        let mut sse = self.ep.post_stream(
            "/v1/completions",
            req,
            self.prompt.len() + self.max_tokens * self.n,
            cancel,
        )?;
        let mut finished = vec![false; self.n];
        while let Some(data) = sse.next_data()? {
            if self.cancel.load(Ordering::Relaxed) {
                return Err(RequestError::Cancelled);
            }
            let chunk: api::CompletionChunk = serde_json::from_str(&data)
                .map_err(|e| RequestError::Malformed(format!("{e} in {:.200}", data)))?;
            if let Some(err) = &chunk.error {
                return Err(RequestError::Malformed(format!(
                    "the server reported {err}"
                )));
            }
            if !*prompt_seen {
                let reported = match (&chunk.timings, &chunk.usage) {
                    (Some(t), _) if t.prompt_n.is_some() => Some((
                        t.prompt_n.unwrap_or(0).max(0) as u64,
                        t.cache_n.unwrap_or(0).max(0) as u64,
                    )),
                    (_, Some(u)) if u.prompt_tokens > 0 => {
                        let cached = u
                            .prompt_tokens_details
                            .as_ref()
                            .and_then(|d| d.cached_tokens)
                            .unwrap_or(0);
                        Some((u.prompt_tokens.saturating_sub(cached), cached))
                    }
                    _ => None,
                };
                if let Some((evaluated, cached)) = reported {
                    *prompt_seen = true;
                    self.send(0, EventKind::Prompt { evaluated, cached });
                }
            }
            let predicted_n = chunk.timings.as_ref().and_then(|t| t.predicted_n);
            for ch in &chunk.choices {
                let i = ch.index;
                if i >= self.n {
                    return Err(RequestError::Malformed(format!(
                        "choice index {i} of a request for {} completions",
                        self.n
                    )));
                }
                if let Some(lp) = &ch.logprobs {
                    let toks = lp.tokens(TOP_K).map_err(RequestError::Malformed)?;
                    // llama-server sends one token per event, with the timings of
                    // the slot that made it (so per choice, also with n > 1).
                    let p = if toks.len() == 1 { predicted_n } else { None };
                    for tok in toks {
                        received[i] += 1;
                        if !self.send(
                            i,
                            EventKind::Token {
                                tok,
                                predicted_n: p,
                            },
                        ) {
                            return Err(RequestError::Cancelled);
                        }
                    }
                }
                if let Some(f) = &ch.finish_reason {
                    if !finished[i] {
                        finished[i] = true;
                        // EOS: "stop" without a stop string (vLLM: stop_reason null).
                        let eos = f == "stop"
                            && (self.stop.is_empty()
                                || matches!(ch.stop_reason, Some(serde_json::Value::Null)))
                            && !matches!(ch.stop_reason, Some(serde_json::Value::String(_)));
                        self.send(i, EventKind::Finish { eos });
                    }
                }
            }
        }
        Ok(())
    }
}

impl Engine for HttpEngine {
    fn model_name(&self) -> &str {
        &self.model
    }
    fn model_hash(&self) -> &str {
        &self.vocab.hash
    }
    fn n_ctx(&self) -> usize {
        self.n_ctx
    }
    fn n_parallel(&self) -> usize {
        self.n_parallel
    }
    fn n_seq_max(&self) -> usize {
        self.n_seq_max
    }
    fn tokenize(&self, text: &str, add_special: bool) -> Result<Vec<Token>> {
        self.vocab.tokenize(text, add_special)
    }
    fn tokenize_plain(&self, text: &str) -> Result<Vec<Token>> {
        self.vocab.tokenize_plain(text)
    }
    fn detokenize(&self, tokens: &[Token]) -> Result<String> {
        let bytes: Vec<u8> = tokens.iter().flat_map(|&t| self.vocab.piece(t)).collect();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
    fn piece(&self, token: Token) -> Vec<u8> {
        self.vocab.piece(token)
    }
    fn is_eog(&self, token: Token) -> bool {
        self.vocab.is_eog(token)
    }
    fn apply_chat_template(&self, messages: &[ChatMessage]) -> Result<String> {
        self.vocab.apply_chat_template(messages)
    }

    fn new_sequence(&mut self) -> Result<SeqId> {
        if self.seqs.len() >= self.n_seq_max {
            return Err(EngineError::NoFreeSequence {
                max: self.n_seq_max,
            });
        }
        let id = SeqId(self.next_id);
        self.next_id += 1;
        self.seqs.insert(id, Seq::new(Vec::new(), None, id.0));
        Ok(id)
    }

    fn fork(&mut self, parent: SeqId) -> Result<SeqId> {
        let p = self.seq(parent)?;
        let (tokens, server, root) = (p.tokens.clone(), p.server, p.root);
        let id = self.new_sequence()?;
        self.seqs.insert(id, Seq::new(tokens, server, root));
        Ok(id)
    }

    fn truncate(&mut self, seq: SeqId, len: usize) -> Result<()> {
        let s = self.seq(seq)?;
        if len >= s.tokens.len() {
            return Ok(());
        }
        self.detach(seq);
        let s = self.seq_mut(seq)?;
        s.tokens.truncate(len);
        s.resample = 0;
        s.failed = None;
        Ok(())
    }

    fn release(&mut self, seq: SeqId) -> Result<()> {
        self.seq(seq)?;
        self.detach(seq);
        self.seqs.remove(&seq);
        Ok(())
    }

    fn append(&mut self, seq: SeqId, tokens: &[Token]) -> Result<()> {
        let n = self.vocab.n_vocab();
        if let Some(&bad) = tokens.iter().find(|&&t| t < 0 || t as usize >= n) {
            return Err(EngineError::Tokenize(format!(
                "token id {bad} outside the vocabulary of {n}"
            )));
        }
        self.seq(seq)?;
        if tokens.is_empty() {
            return Ok(());
        }
        self.detach(seq);
        let s = self.seq_mut(seq)?;
        s.tokens.extend_from_slice(tokens);
        s.resample = 0;
        s.failed = None;
        Ok(())
    }

    fn tokens(&self, seq: SeqId) -> Result<&[Token]> {
        Ok(&self.seq(seq)?.tokens)
    }

    /// The client holds no KV: every token it has is the server's to
    /// evaluate, none is pending here. (So the search forks a node's K
    /// children at once instead of waiting for the parent's evaluation, and
    /// they go out as one request with `n = K`.)
    fn cached_len(&self, seq: SeqId) -> Result<usize> {
        Ok(self.seq(seq)?.tokens.len())
    }

    fn live_sequences(&self) -> usize {
        self.seqs.len()
    }

    /// The servers hold the KV cache; the client holds none.
    fn cells_used(&self) -> usize {
        0
    }

    fn step(&mut self, requests: &[StepRequest]) -> Result<Vec<TokenOut>> {
        let t0 = Instant::now();
        let w0 = self.hstats.wait_seconds;
        if requests.len() > self.n_parallel {
            return Err(EngineError::TooManySequences {
                asked: requests.len(),
                max: self.n_parallel,
            });
        }
        let mut seen = std::collections::BTreeSet::new();
        for r in requests {
            if !seen.insert(r.seq) {
                return Err(EngineError::DuplicateSequence(r.seq));
            }
            if self.seq(r.seq)?.tokens.is_empty() {
                return Err(EngineError::NothingToSample(r.seq));
            }
        }
        self.tick += 1;
        let tick = self.tick;
        self.drain();
        for r in requests {
            let key = (r.sampling.temperature, r.sampling.top_p);
            let s = self.seq_mut(r.seq)?;
            s.last_step = tick;
            if s.ahead_params.is_some_and(|p| p != key) {
                self.detach(r.seq);
            }
        }
        // Sequences the caller stopped stepping (a finished stream) free
        // their server slot; what they already received stays for later.
        let idle: Vec<SeqId> = self
            .seqs
            .iter()
            .filter(|(_, s)| s.last_step + 1 < tick && s.gen.is_some())
            .map(|(id, _)| *id)
            .collect();
        for id in idle {
            self.detach_keep(id);
        }
        loop {
            let mut waiting = false;
            for r in requests {
                let s = self.seq(r.seq)?;
                if !s.ahead.is_empty() {
                    continue;
                }
                if let Some(reason) = &s.failed {
                    return Err(EngineError::Sequence {
                        seq: r.seq,
                        reason: reason.clone(),
                    });
                }
                if s.ended {
                    // The server stopped on end of generation and the caller
                    // wants more: continue from here (as the native engine would).
                    let s = self.seq_mut(r.seq)?;
                    s.ended = false;
                }
                waiting = true;
            }
            if !waiting {
                break;
            }
            self.launch_needed(requests, true)?;
            let starving = requests
                .iter()
                .any(|r| self.seqs.get(&r.seq).is_some_and(|s| !self.fed(s)));
            if starving && self.gens.is_empty() {
                // Nothing in flight could feed them: every server refused a launch.
                if self.servers.iter().all(|s| !s.up) {
                    return Err(EngineError::Unavailable(self.down_list()));
                }
                continue;
            }
            self.wait()?;
        }
        let mut out = Vec::with_capacity(requests.len());
        for r in requests {
            let s = self.seq_mut(r.seq)?;
            let t = s
                .ahead
                .pop_front()
                .ok_or_else(|| EngineError::Backend("a fed sequence has no token".into()))?;
            s.tokens.push(t.token);
            out.push(t);
        }
        // Keep the pipeline full: the next chunk of every sequence whose
        // generation ended normally is requested now, from its look-ahead's end.
        if !self.naive {
            self.launch_needed(requests, false)?;
        }
        self.hstats.tokens_handed += out.len() as u64;
        self.stats.tokens_sampled += out.len() as u64;
        self.stats.decode_calls += 1;
        self.stats.batch_sequences.push(requests.len() as u32);
        let waited = self.hstats.wait_seconds - w0;
        self.stats.decode_seconds += waited;
        self.stats.sample_seconds += (t0.elapsed().as_secs_f64() - waited).max(0.0);
        Ok(out)
    }

    /// The server evaluates a prompt with its first request; nothing to do here.
    fn evaluate(&mut self, seq: SeqId) -> Result<()> {
        self.seq(seq).map(|_| ())
    }

    fn score(&mut self, context: &[Token], text: &[Token]) -> Result<Vec<TokenOut>> {
        let mut out = self.score_many(&[(context, text)])?;
        out.pop()
            .ok_or_else(|| EngineError::Backend("score returned nothing".into()))
    }

    fn score_many(&mut self, items: &[(&[Token], &[Token])]) -> Result<Vec<Vec<TokenOut>>> {
        if !self.can_score {
            return Err(self.scoring_unsupported());
        }
        for (context, text) in items {
            if context.is_empty() || text.is_empty() {
                return Err(EngineError::Tokenize(
                    "score needs at least one context token and one text token".into(),
                ));
            }
            if context.len() + text.len() > self.n_ctx {
                return Err(EngineError::ContextFull {
                    seq: SeqId(u32::MAX),
                    pos: context.len() + text.len(),
                    n_ctx: self.n_ctx,
                });
            }
        }
        let ups: Vec<usize> = (0..self.servers.len())
            .filter(|&k| self.servers[k].up)
            .collect();
        if ups.is_empty() {
            return Err(EngineError::Unavailable(self.down_list()));
        }
        let width: usize = ups
            .iter()
            .map(|&k| self.servers[k].capacity)
            .sum::<usize>()
            .max(1);
        let mut results: Vec<Option<Result<Vec<RawToken>>>> =
            (0..items.len()).map(|_| None).collect();
        for (c, chunk) in items.chunks(width).enumerate() {
            let base = c * width;
            std::thread::scope(|scope| {
                let handles: Vec<_> = chunk
                    .iter()
                    .enumerate()
                    .map(|(j, (context, text))| {
                        let s = &self.servers[ups[j % ups.len()]];
                        let model = &self.model;
                        scope.spawn(move || score_one(&s.ep, model, context, text))
                    })
                    .collect();
                for (j, h) in handles.into_iter().enumerate() {
                    results[base + j] = Some(h.join().unwrap_or_else(|_| {
                        Err(EngineError::Backend("a scoring thread panicked".into()))
                    }));
                }
            });
        }
        let mut out = Vec::with_capacity(items.len());
        for r in results {
            let toks = r.ok_or_else(|| EngineError::Backend("an item was not scored".into()))??;
            self.stats.tokens_evaluated += toks.len() as u64;
            out.push(
                toks.into_iter()
                    .map(|t| TokenOut {
                        token: t.token,
                        piece: self.vocab.piece(t.token),
                        confidence: confidence(t.logprob, &t.top),
                        top: t.top,
                        logit: t.logprob,
                        eog: self.vocab.is_eog(t.token),
                    })
                    .collect(),
            );
        }
        Ok(out)
    }

    fn stats(&self) -> &EngineStats {
        &self.stats
    }
}

impl HttpEngine {
    fn scoring_unsupported(&self) -> EngineError {
        let url = &self.servers[0].ep.url;
        EngineError::Unsupported(match self.servers[0].flavor {
            Flavor::LlamaCpp => format!(
                "{url}: teacher-forced scoring (the open_o1 recipe) needs the log-probabilities of \
                 prompt tokens, which llama-server does not return; run open_o1 with the llama \
                 engine, or against a vLLM server (prompt_logprobs)"
            ),
            Flavor::OpenAi => format!(
                "{url}: the server returned no prompt_logprobs, which teacher-forced scoring (open_o1) needs"
            ),
        })
    }

    /// Whether teacher-forced scoring works over these servers; the error says why not.
    pub fn check_scoring(&self) -> Result<()> {
        if self.can_score {
            Ok(())
        } else {
            Err(self.scoring_unsupported())
        }
    }
}

/// Teacher-forced log-probabilities of `text` after `context` (vLLM `prompt_logprobs`).
fn score_one(
    ep: &Endpoint,
    model: &str,
    context: &[Token],
    text: &[Token],
) -> Result<Vec<RawToken>> {
    let prompt: Vec<Token> = context.iter().chain(text).copied().collect();
    let req = api::CompletionRequest {
        model,
        prompt: &prompt,
        max_tokens: 1,
        temperature: 0.0,
        top_p: 1.0,
        seed: 0,
        logprobs: None,
        n: 1,
        stream: false,
        stream_options: None,
        stop: &[],
        prompt_logprobs: Some(TOP_K as u32),
        return_tokens_as_token_ids: Some(true),
        llama: None,
    };
    let r: api::CompletionChunk = ep
        .post("/v1/completions", &req, prompt.len() + 1, None)
        .map_err(|e| server_err(&ep.url, format!("scoring: {e}")))?;
    let rows = r
        .choices
        .first()
        .and_then(|c| c.prompt_logprobs.as_ref())
        .ok_or_else(|| server_err(&ep.url, "scoring: no prompt_logprobs in the response"))?;
    api::prompt_tokens(rows, &prompt, context.len(), TOP_K)
        .map_err(|m| server_err(&ep.url, format!("scoring: {m}")))
}
