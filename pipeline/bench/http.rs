//! `cotforge bench http`: the MCTS of `bench search` over llama-server
//! against the in-process llama engine on the same model, threads and
//! settings, in one run. Rounds alternate the order of the variants (this
//! class of machine swings between runs); the report gives medians and
//! ratios to the native engine measured in the same run.
//!
//! Variants: `native` (the llama engine), `http` (the HTTP engine: streamed
//! chunks, shared-prefix fan-out, prompt cache), and `naive` (the floor: a
//! client that has every request's whole path evaluated again, one request
//! per tree in flight; [`HttpEngine::set_naive`]). Each HTTP variant gets a
//! fresh server, so no cache survives from an earlier run.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use crate::engine::http::local::{LocalServer, LocalServerOptions};
use crate::engine::http::{HttpEngine, HttpStats};
use crate::engine::{Engine, EngineConfig, EngineError, EngineKind, HttpConfig};
use crate::record::Seed;
use crate::search::{run_many, DriverConfig, SearchConfig, SearchError, TreeSearch, Verifier};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Search(#[from] SearchError),
    #[error("{0}")]
    Config(String),
}

/// Which client runs the search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    Native,
    Http,
    Naive,
}

impl Variant {
    pub fn name(self) -> &'static str {
        match self {
            Variant::Native => "native",
            Variant::Http => "http",
            Variant::Naive => "naive",
        }
    }
}

/// Settings of one `bench http`.
#[derive(Debug, Clone)]
pub struct HttpBenchConfig {
    /// The native engine's settings (model, threads, n_parallel, n_ctx, ...);
    /// the server gets the same model, threads and context.
    pub engine: EngineConfig,
    pub llama_server: PathBuf,
    pub seeds: Vec<Seed>,
    pub search: SearchConfig,
    pub driver: DriverConfig,
    /// Server slots (`--parallel`).
    pub slots: usize,
    pub rounds: usize,
    /// The HTTP engine's settings (base_urls are filled in per run).
    pub http: HttpConfig,
    pub variants: Vec<Variant>,
    /// Extra llama-server arguments.
    pub server_args: Vec<String>,
}

/// One search of one variant.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub variant: Variant,
    pub round: usize,
    pub wall_seconds: f64,
    pub seeds_per_hour: f64,
    pub chains: usize,
    pub tokens_sampled: u64,
    /// Tokens the model evaluated (server-reported prompt + generated, for HTTP).
    pub tokens_evaluated: u64,
    pub distinct_tokens: u64,
    pub http: Option<HttpStats>,
}

/// Medians of a variant over the rounds.
#[derive(Debug, Clone, Serialize)]
pub struct VariantSummary {
    pub variant: Variant,
    pub wall_seconds: f64,
    pub seeds_per_hour: f64,
    /// seeds/hour over the native engine's, same run.
    pub ratio_to_native: Option<f64>,
    pub evaluated_per_distinct: f64,
    /// Prompt tokens sent in requests per distinct tree token.
    pub prompt_sent_per_distinct: Option<f64>,
    /// Share of the prompt tokens sent that the server reported reusing from its cache.
    pub server_cached_share: Option<f64>,
    /// Generated tokens received but never used, per token used.
    pub discarded_per_used: Option<f64>,
    /// Requests carrying several completions of one prefix, per generation.
    pub fanout_share: Option<f64>,
    pub retries: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HttpBenchReport {
    pub model: String,
    pub seeds: usize,
    pub threads: usize,
    pub n_parallel: usize,
    pub slots: usize,
    pub rounds: usize,
    pub chunk_tokens: usize,
    pub server_args: Vec<String>,
    pub runs: Vec<RunReport>,
    pub summary: Vec<VariantSummary>,
}

/// llama-server's arguments beyond model, threads, slots and context: idle
/// slots keep their KV (by default the server saves them to its RAM cache and
/// clears them at every new task, which undoes the HTTP engine's slot
/// pinning), then the caller's.
fn server_args(cfg: &HttpBenchConfig) -> Vec<String> {
    let mut v = vec!["--no-cache-idle-slots".to_string()];
    v.extend(cfg.server_args.iter().cloned());
    v
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn run_search(
    engine: &mut dyn Engine,
    cfg: &HttpBenchConfig,
    verifier: &Arc<Verifier>,
) -> Result<(crate::search::DriverReport, usize), BenchError> {
    let trees = cfg
        .seeds
        .iter()
        .map(|s| TreeSearch::new(&*engine, s, &cfg.search, verifier.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let (results, rep) = run_many(engine, trees, &cfg.driver, &mut |_, _| {})?;
    Ok((rep, results.iter().map(|r| r.chains.len()).sum()))
}

/// One search with one variant (a fresh server for the HTTP ones).
pub fn run_variant(
    cfg: &HttpBenchConfig,
    variant: Variant,
    round: usize,
) -> Result<RunReport, BenchError> {
    let verifier = crate::search::default_verifier();
    let ecfg = EngineConfig {
        kind: EngineKind::Llama,
        ..cfg.engine.clone()
    };
    let (rep, chains, http) = match variant {
        Variant::Native => {
            let mut e = ecfg.build()?;
            let (rep, chains) = run_search(e.as_mut(), cfg, &verifier)?;
            (rep, chains, None)
        }
        Variant::Http | Variant::Naive => {
            let server = LocalServer::start(
                &cfg.llama_server,
                &ecfg.model,
                LocalServerOptions {
                    threads: ecfg.threads(),
                    slots: cfg.slots,
                    n_ctx: ecfg.n_ctx,
                    extra: server_args(cfg),
                },
            )?;
            let hcfg = EngineConfig {
                kind: EngineKind::Http,
                http: HttpConfig {
                    base_urls: vec![server.url()],
                    tokenizer: Some(ecfg.model.clone()),
                    ..cfg.http.clone()
                },
                ..ecfg
            };
            let mut e = HttpEngine::connect(&hcfg)?;
            e.set_naive(variant == Variant::Naive);
            let (rep, chains) = run_search(&mut e, cfg, &verifier)?;
            drop(server);
            (rep, chains, Some(e.http_stats()))
        }
    };
    let n = cfg.seeds.len();
    Ok(RunReport {
        variant,
        round,
        wall_seconds: rep.wall_seconds,
        seeds_per_hour: n as f64 * 3600.0 / rep.wall_seconds.max(1e-9),
        chains,
        tokens_sampled: rep.tokens_sampled,
        tokens_evaluated: rep.tokens_evaluated,
        distinct_tokens: rep.distinct_tokens,
        http,
    })
}

/// Every variant, `rounds` times, the order rotated each round.
pub fn run(
    cfg: &HttpBenchConfig,
    progress: &mut dyn FnMut(&RunReport),
) -> Result<HttpBenchReport, BenchError> {
    if cfg.rounds == 0 || cfg.variants.is_empty() || cfg.seeds.is_empty() {
        return Err(BenchError::Config(
            "bench http needs at least one round, one variant and one seed".into(),
        ));
    }
    let mut runs = Vec::new();
    for round in 0..cfg.rounds {
        let k = cfg.variants.len();
        for j in 0..k {
            let v = cfg.variants[(j + round) % k];
            let r = run_variant(cfg, v, round)?;
            progress(&r);
            runs.push(r);
        }
    }
    let native = median(
        runs.iter()
            .filter(|r| r.variant == Variant::Native)
            .map(|r| r.seeds_per_hour)
            .collect(),
    );
    let summary = cfg
        .variants
        .iter()
        .map(|&v| {
            let mine: Vec<&RunReport> = runs.iter().filter(|r| r.variant == v).collect();
            let med = |f: &dyn Fn(&RunReport) -> f64| median(mine.iter().map(|r| f(r)).collect());
            let medo = |f: &dyn Fn(&RunReport, &HttpStats) -> f64| {
                let xs: Vec<f64> = mine
                    .iter()
                    .filter_map(|r| r.http.as_ref().map(|h| f(r, h)))
                    .collect();
                (!xs.is_empty()).then(|| median(xs))
            };
            let sph = med(&|r| r.seeds_per_hour);
            VariantSummary {
                variant: v,
                wall_seconds: med(&|r| r.wall_seconds),
                seeds_per_hour: sph,
                ratio_to_native: (native.is_finite() && native > 0.0).then(|| sph / native),
                evaluated_per_distinct: med(&|r| {
                    r.tokens_evaluated as f64 / r.distinct_tokens.max(1) as f64
                }),
                prompt_sent_per_distinct: medo(&|r, h| {
                    h.prompt_tokens_sent as f64 / r.distinct_tokens.max(1) as f64
                }),
                server_cached_share: medo(&|_, h| {
                    h.prompt_tokens_cached as f64 / h.prompt_tokens_sent.max(1) as f64
                }),
                discarded_per_used: medo(&|_, h| {
                    h.tokens_discarded as f64 / h.tokens_handed.max(1) as f64
                }),
                fanout_share: medo(&|_, h| {
                    h.fanout_generations as f64 / h.generations.max(1) as f64
                }),
                retries: mine
                    .iter()
                    .filter_map(|r| r.http.as_ref().map(|h| h.http_retries))
                    .max(),
            }
        })
        .collect();
    Ok(HttpBenchReport {
        model: cfg.engine.model.display().to_string(),
        seeds: cfg.seeds.len(),
        threads: cfg.engine.threads(),
        n_parallel: cfg.engine.n_parallel,
        slots: cfg.slots,
        rounds: cfg.rounds,
        chunk_tokens: cfg.http.chunk_tokens,
        server_args: server_args(cfg),
        runs,
        summary,
    })
}

impl HttpBenchReport {
    /// The table `bench http` prints.
    pub fn table(&self) -> String {
        let mut s = format!(
            "bench http: {} seeds, {} threads, n_parallel {}, server slots {}, chunk {} tokens, {} rounds (medians)\n",
            self.seeds, self.threads, self.n_parallel, self.slots, self.chunk_tokens, self.rounds
        );
        s.push_str("| client | wall s | seeds/hour | x native | evaluated / distinct | prompt sent / distinct | server cache reuse | discarded / used | fan-out requests |\n");
        s.push_str("|---|---|---|---|---|---|---|---|---|\n");
        let f = |x: Option<f64>, p: usize| x.map_or("-".to_string(), |v| format!("{v:.p$}"));
        for v in &self.summary {
            s.push_str(&format!(
                "| {} | {:.1} | {:.0} | {} | {:.3} | {} | {} | {} | {} |\n",
                v.variant.name(),
                v.wall_seconds,
                v.seeds_per_hour,
                f(v.ratio_to_native, 3),
                v.evaluated_per_distinct,
                f(v.prompt_sent_per_distinct, 2),
                v.server_cached_share
                    .map_or("-".into(), |x| format!("{:.1}%", 100.0 * x)),
                f(v.discarded_per_used, 3),
                v.fanout_share
                    .map_or("-".into(), |x| format!("{:.1}%", 100.0 * x)),
            ));
        }
        s
    }
}
