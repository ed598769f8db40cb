//! `cotforge bench http`: parses the flags, calls [`crate::bench::http`],
//! prints its table and writes its JSON.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;

use crate::bench::http::{HttpBenchConfig, Variant};
use crate::engine::{EngineConfig, HttpConfig};
use crate::search::{seeds_from_jsonl, DriverConfig, SearchConfig};

#[derive(Debug, Args)]
pub struct HttpBenchArgs {
    #[arg(long, default_value = crate::engine::DEFAULT_MODEL)]
    pub model: PathBuf,
    /// llama-server (scripts/llama-tools.sh builds it).
    #[arg(long)]
    pub llama_server: PathBuf,
    /// Seeds (JSONL with `id`, `question`, `answer`).
    #[arg(long, default_value = "tests/fixtures/gsm8k_32.jsonl")]
    pub seeds: PathBuf,
    /// Only the first N seeds.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Search settings (a `SearchConfig` TOML), as `bench search`.
    #[arg(long, default_value = "benches/data/search.toml")]
    pub config: PathBuf,
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    #[arg(long, default_value_t = 8)]
    pub n_parallel: usize,
    #[arg(long, default_value_t = 16384)]
    pub n_ctx: usize,
    /// Most live sequences (cached tree nodes), as `bench search`.
    #[arg(long, default_value_t = 64)]
    pub n_seq_max: usize,
    /// KV cells before cached tree nodes are dropped (default 256 per parallel sequence, as `bench search`).
    #[arg(long)]
    pub max_cells: Option<usize>,
    /// Server slots (default 2 x n_parallel: the search runs n_parallel
    /// streams plus an expansion's K at once).
    #[arg(long)]
    pub slots: Option<usize>,
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Tokens per request of the HTTP engine.
    #[arg(long, default_value_t = HttpConfig::default().chunk_tokens)]
    pub chunk_tokens: usize,
    /// Stop strings sent to the server (a saving only).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Which clients to run.
    #[arg(long, value_delimiter = ',', default_value = "native,http,naive")]
    pub variants: Vec<String>,
    /// An extra llama-server argument (repeat), e.g. --server-arg=--cache-reuse --server-arg=256
    /// (--no-cache-idle-slots is always given).
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn run(a: HttpBenchArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&a.config)
        .with_context(|| format!("reading {}", a.config.display()))?;
    let search = SearchConfig::from_toml(&text)
        .with_context(|| format!("in {}", a.config.display()))?
        .build()?;
    let seeds_text = std::fs::read_to_string(&a.seeds)
        .with_context(|| format!("reading {}", a.seeds.display()))?;
    let mut seeds =
        seeds_from_jsonl(&seeds_text).with_context(|| format!("in {}", a.seeds.display()))?;
    if let Some(n) = a.limit {
        seeds.truncate(n);
    }
    let variants = a
        .variants
        .iter()
        .map(|v| match v.as_str() {
            "native" => Ok(Variant::Native),
            "http" => Ok(Variant::Http),
            "naive" => Ok(Variant::Naive),
            other => bail!("unknown variant {other:?} (native, http, naive)"),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let cells = a.max_cells.unwrap_or(256 * a.n_parallel);
    let cfg = HttpBenchConfig {
        engine: EngineConfig {
            model: a.model.clone(),
            n_ctx: a.n_ctx,
            n_parallel: a.n_parallel,
            n_seq_max: a.n_seq_max,
            threads: a.threads,
            ..Default::default()
        },
        llama_server: a.llama_server.clone(),
        seeds,
        search,
        driver: DriverConfig {
            max_cells: (cells > 0).then_some(cells),
            ..Default::default()
        },
        slots: a.slots.unwrap_or(2 * a.n_parallel),
        rounds: a.rounds,
        http: HttpConfig {
            chunk_tokens: a.chunk_tokens,
            max_in_flight: a.slots.unwrap_or(2 * a.n_parallel),
            stop: a.stop.clone(),
            ..Default::default()
        },
        variants,
        server_args: a.server_args.clone(),
    };
    let report = crate::bench::http::run(&cfg, &mut |r| {
        eprintln!(
            "round {}: {} {:.1} s ({:.0} seeds/hour, {} chains)",
            r.round + 1,
            r.variant.name(),
            r.wall_seconds,
            r.seeds_per_hour,
            r.chains
        );
    })?;
    print!("{}", report.table());
    if let Some(p) = &a.json {
        crate::store::fsio::commit_bytes(p, serde_json::to_string_pretty(&report)?.as_bytes())
            .with_context(|| format!("writing {}", p.display()))?;
        eprintln!("wrote {}", p.display());
    }
    Ok(ExitCode::SUCCESS)
}
