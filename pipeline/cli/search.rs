//! `cotforge search` (run the MCTS over seeds) and `cotforge inspect-tree`
//! (draw a tree JSON in the terminal).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::engine_args::EngineArgs;
use crate::engine::Engine;
use crate::search::{
    default_verifier, run_many, seeds_from_jsonl, ChainMeta, DriverConfig, Granularity,
    ReflectionPolicy, SearchConfig, SelectRule, TreeExport, TreeResult, TreeSearch,
};

#[derive(Debug, Args)]
pub struct SearchArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Seeds: a seed Parquet file (`cotforge seeds import` writes them; bad rows
    /// go to OUT/rejected.jsonl) or JSONL with `id`, `prompt` or `question`,
    /// optional `reference_answer` or `answer`.
    #[arg(long)]
    pub seeds: PathBuf,
    /// Search settings as TOML (a `SearchConfig`); flags below override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Action granularity: step, mini-step-32, mini-step-64, token.
    #[arg(long)]
    pub granularity: Option<Granularity>,
    /// Rollouts per tree.
    #[arg(long)]
    pub rollouts: Option<u32>,
    /// Children per expansion (K).
    #[arg(long)]
    pub expand_k: Option<u32>,
    #[arg(long)]
    pub max_depth: Option<u32>,
    /// Most tokens sampled per tree.
    #[arg(long)]
    pub max_tree_tokens: Option<u32>,
    /// Reflection policy: off, on_wrong, on_low_reward, always.
    #[arg(long)]
    pub reflection: Option<ReflectionPolicy>,
    /// Selected chain: most_visited or highest_reward.
    #[arg(long)]
    pub select: Option<SelectRule>,
    /// Root seed of all sampling.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Only the first N seeds.
    #[arg(long)]
    pub limit: Option<usize>,
    /// KV cells held before the least recently used cached tree nodes are
    /// dropped (re-evaluated if needed again). Every decode walks the cells in
    /// use, so a bounded cache decodes faster. Default 256 per parallel
    /// sequence (measured: 3% re-evaluation, faster wall time); 0 = no budget.
    #[arg(long)]
    pub max_cells: Option<usize>,
    /// Output directory: results.jsonl, chains.jsonl, report.json, trees/<id>.json.
    #[arg(long, default_value = "out/search")]
    pub out: PathBuf,
    /// Unix time stamped into chain rows (default: SOURCE_DATE_EPOCH or 0, for reproducible output).
    #[arg(long, env = "SOURCE_DATE_EPOCH")]
    pub created_at: Option<i64>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct InspectTreeArgs {
    /// A tree JSON written by `cotforge search` (out/trees/<id>.json).
    pub file: PathBuf,
    /// Characters of node text shown per line.
    #[arg(long, default_value_t = 70)]
    pub width: usize,
    /// Deepest level drawn.
    #[arg(long)]
    pub max_depth: Option<usize>,
}

fn search_config(a: &SearchArgs) -> anyhow::Result<SearchConfig> {
    let mut c = match &a.config {
        Some(p) => {
            let t =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            SearchConfig::from_toml(&t).with_context(|| format!("in {}", p.display()))?
        }
        None => SearchConfig::default(),
    };
    if let Some(g) = a.granularity {
        c.granularity = g;
    }
    if let Some(v) = a.rollouts {
        c.max_rollouts = v;
    }
    if let Some(v) = a.expand_k {
        c.expand_k = v;
    }
    if let Some(v) = a.max_depth {
        c.max_depth = v;
    }
    if let Some(v) = a.max_tree_tokens {
        c.max_tree_tokens = v;
    }
    if let Some(v) = a.reflection {
        c.reflection.policy = v;
    }
    if let Some(v) = a.select {
        c.select = v;
    }
    if let Some(v) = a.seed {
        c.seed = v;
    }
    Ok(c.build()?)
}

/// A file name for a seed id: keeps `[A-Za-z0-9._-]`, replaces the rest.
fn file_stem(id: &str) -> String {
    let s: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with('.') {
        format!("seed{s}")
    } else {
        s
    }
}

/// A finished `cotforge search`: what `run` prints and `bench search` measures.
pub struct SearchRun {
    pub cfg: SearchConfig,
    pub seeds: Vec<crate::record::Seed>,
    pub results: Vec<TreeResult>,
    pub report: crate::search::DriverReport,
    pub engine: Box<dyn Engine>,
}

/// Run the search the arguments describe and write its outputs under `--out`.
pub fn search(a: &SearchArgs) -> anyhow::Result<SearchRun> {
    let cfg = search_config(a)?;
    let trees_dir = a.out.join("trees");
    std::fs::create_dir_all(&trees_dir)
        .with_context(|| format!("creating {}", trees_dir.display()))?;
    let mut seeds = read_seeds(&a.seeds, a.limit, &a.out)?;
    if let Some(n) = a.limit {
        seeds.truncate(n);
    }
    if seeds.is_empty() {
        bail!("no seeds in {}", a.seeds.display());
    }
    let mut engine = a.engine.build()?;
    let verifier = default_verifier();
    let trees = seeds
        .iter()
        .map(|s| TreeSearch::new(&*engine, s, &cfg, verifier.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let bar = seed_bar(seeds.len(), a.quiet);
    let mut write_err: Option<anyhow::Error> = None;
    let dcfg = driver_config(a);
    let (results, report) = run_many(engine.as_mut(), trees, &dcfg, &mut |r, p| {
        let path = trees_dir.join(format!("{}.json", file_stem(&r.seed_id)));
        if let Err(e) = std::fs::write(&path, r.tree.to_json()) {
            write_err.get_or_insert(anyhow::anyhow!("writing {}: {e}", path.display()));
        }
        tick_bar(&bar, p);
    })?;
    bar.finish_and_clear();
    if let Some(e) = write_err {
        return Err(e);
    }
    write_outputs(
        &a.out,
        &seeds,
        &results,
        &report,
        &*engine,
        a.created_at.unwrap_or(0),
    )?;
    Ok(SearchRun {
        cfg,
        seeds,
        results,
        report,
        engine,
    })
}

/// Seeds from a seed Parquet file (the store's ingest: rows it cannot use go
/// to `OUT/rejected.jsonl` with the reason) or from JSONL.
fn read_seeds(
    path: &Path,
    limit: Option<usize>,
    out: &Path,
) -> anyhow::Result<Vec<crate::record::Seed>> {
    use crate::store::{Ingest, IngestOptions, IngestRow};
    let parquet = path.extension().is_some_and(|e| e == "parquet");
    if !parquet {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading seeds {}", path.display()))?;
        return seeds_from_jsonl(&text).with_context(|| format!("in {}", path.display()));
    }
    let mut seeds = Vec::new();
    let mut rejects = String::new();
    let mut n_rejects = 0usize;
    for item in Ingest::open(&[path], IngestOptions::default())? {
        match item?.row {
            IngestRow::Seed(s) => seeds.push(s),
            IngestRow::Reject(r) => {
                n_rejects += 1;
                rejects.push_str(&serde_json::to_string(&r)?);
                rejects.push('\n');
            }
        }
        if limit.is_some_and(|n| seeds.len() >= n) {
            break;
        }
    }
    if n_rejects > 0 {
        let p = out.join("rejected.jsonl");
        std::fs::write(&p, rejects).with_context(|| format!("writing {}", p.display()))?;
        tracing::warn!(rows = n_rejects, file = %p.display(), "seed rows rejected at ingest");
    }
    Ok(seeds)
}

/// The scheduler settings the flags describe.
pub(crate) fn driver_config(a: &SearchArgs) -> DriverConfig {
    let cells = a.max_cells.unwrap_or(256 * a.engine.n_parallel);
    DriverConfig {
        max_batch_tokens: a.engine.n_batch,
        max_cells: (cells > 0).then_some(cells),
        ..Default::default()
    }
}

/// The progress bar of every command that runs trees.
pub(crate) fn seed_bar(n: usize, quiet: bool) -> ProgressBar {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(n as u64)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} seeds  {msg}  ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message("starting");
    bar
}

pub(crate) fn tick_bar(bar: &ProgressBar, p: &crate::search::Progress) {
    let secs = p.elapsed_seconds.max(1e-9);
    bar.set_position(p.trees_done as u64);
    bar.set_message(format!(
        "{:.0} tok/s sampled, {:.0} tok/s evaluated",
        p.tokens_sampled as f64 / secs,
        p.tokens_evaluated as f64 / secs
    ));
}

pub fn run(a: SearchArgs) -> anyhow::Result<ExitCode> {
    let SearchRun {
        results, report, ..
    } = search(&a)?;
    let chains: usize = results.iter().map(|r| r.chains.len()).sum();
    let hours = report.wall_seconds / 3600.0;
    eprintln!(
        "{} seeds, {} chains in {:.1}s ({:.0} seeds/hour); {} tokens sampled, {} evaluated \
         ({:.2}x distinct tree tokens, {:.2}x of resend-path-per-rollout, {:.2}x of per-action); decode {:.0}% of wall; out: {}",
        results.len(),
        chains,
        report.wall_seconds,
        results.len() as f64 / hours.max(1e-12),
        report.tokens_sampled,
        report.tokens_evaluated,
        report.tokens_evaluated as f64 / report.distinct_tokens.max(1) as f64,
        report.tokens_evaluated as f64 / report.resend_tokens.max(1) as f64,
        report.tokens_evaluated as f64 / report.resend_per_action_tokens.max(1) as f64,
        100.0 * report.decode_seconds / report.wall_seconds.max(1e-12),
        a.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn write_outputs(
    out: &Path,
    seeds: &[crate::record::Seed],
    results: &[TreeResult],
    report: &crate::search::DriverReport,
    engine: &dyn Engine,
    created_at: i64,
) -> anyhow::Result<()> {
    let meta = ChainMeta {
        model: engine.model_name().to_string(),
        model_blake3: engine.model_hash().to_string(),
        created_at,
    };
    let mut res = String::new();
    let mut chains = String::new();
    for (r, s) in results.iter().zip(seeds) {
        res.push_str(&serde_json::to_string(r)?);
        res.push('\n');
        for c in r.to_chains(s, &meta) {
            chains.push_str(&serde_json::to_string(&c)?);
            chains.push('\n');
        }
    }
    let w = |name: &str, text: &str| -> anyhow::Result<()> {
        let p = out.join(name);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))
    };
    w("results.jsonl", &res)?;
    w("chains.jsonl", &chains)?;
    let mut summary = report.clone();
    summary.steps.clear();
    summary.batch_sequences.clear();
    w("report.json", &serde_json::to_string_pretty(&summary)?)?;
    Ok(())
}

fn preview(text: &str, width: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c == '\n' { '⏎' } else { c })
        .collect();
    let n = flat.chars().count();
    if n <= width {
        flat
    } else {
        let s: String = flat.chars().take(width.saturating_sub(1)).collect();
        format!("{s}…")
    }
}

/// The tree as indented text: N, Q and reward per node, `*` on the best path.
pub fn render_tree(t: &TreeExport, width: usize, max_depth: Option<usize>) -> String {
    let mut s = String::new();
    let chains = t.nodes.iter().filter(|n| n.answer.is_some()).count();
    let _ = writeln!(
        s,
        "seed {}  nodes {}  terminal {}  stop {:?}",
        t.seed_id,
        t.nodes.len(),
        chains,
        t.stop
    );
    let _ = writeln!(s, "prompt: {}", preview(&t.prompt, width + 20));
    if let Some(r) = &t.reference_answer {
        let _ = writeln!(s, "reference: {}", preview(r, width));
    }
    let best: std::collections::BTreeSet<_> = t.best_path.iter().copied().collect();
    // Iterative DFS, children in order.
    let mut stack = vec![(crate::search::NodeId::ROOT, 0usize)];
    while let Some((id, depth)) = stack.pop() {
        let Some(n) = t.nodes.get(id.0 as usize) else {
            continue;
        };
        let mark = if best.contains(&id) { '*' } else { ' ' };
        let indent = "  ".repeat(depth);
        let mut line = format!("{mark}{indent}[{}] N={} Q={:.3}", n.id.0, n.n, n.q);
        if !n.confidences.is_empty() {
            let c =
                n.confidences.iter().map(|&c| c as f64).sum::<f64>() / n.confidences.len() as f64;
            let _ = write!(line, " c={c:.3}");
        }
        if n.reflection {
            line.push_str(" [reflection]");
        }
        if id.0 == 0 {
            line.push_str(" (prompt)");
        } else {
            let _ = write!(line, " \"{}\"", preview(&n.text, width));
        }
        if let Some(a) = &n.answer {
            let v = match a.verified {
                Some(true) => " ok",
                Some(false) => " wrong",
                None => "",
            };
            let _ = write!(
                line,
                "  => \"{}\" r={:.3}{v} ({:?})",
                preview(&a.text, 30),
                a.reward,
                n.terminal
            );
        }
        let _ = writeln!(s, "{line}");
        if max_depth.is_none_or(|m| depth < m) {
            for &c in n.children.iter().rev() {
                stack.push((c, depth + 1));
            }
        }
    }
    s
}

pub fn inspect(a: InspectTreeArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&a.file)
        .with_context(|| format!("reading {}", a.file.display()))?;
    let t: TreeExport = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a cotforge tree JSON", a.file.display()))?;
    print!("{}", render_tree(&t, a.width, a.max_depth));
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{CoreLimits, ScriptedConfig, ScriptedEngine};
    use crate::record::Seed;

    #[test]
    fn render_marks_the_best_path() {
        let mut e = ScriptedEngine::scripted(
            ScriptedConfig::default(),
            CoreLimits {
                n_ctx: 1 << 20,
                n_batch: 4096,
                n_parallel: 4,
                n_seq_max: 16,
            },
        );
        let seed = Seed {
            id: "s/1".into(),
            prompt: "Add 2 and 3.".into(),
            reference_answer: Some("5".into()),
            ..Default::default()
        };
        let cfg = SearchConfig {
            max_rollouts: 4,
            ..Default::default()
        };
        let t = TreeSearch::new(&e, &seed, &cfg, default_verifier()).unwrap();
        let (r, _) = run_many(&mut e, vec![t], &DriverConfig::default(), &mut |_, _| {}).unwrap();
        let json = r[0].tree.to_json();
        let back: TreeExport = serde_json::from_str(&json).unwrap();
        let out = render_tree(&back, 40, None);
        let starred = out.lines().filter(|l| l.starts_with('*')).count();
        assert_eq!(starred, back.best_path.len());
        assert_eq!(
            out.lines()
                .filter(|l| l.contains("[") && l.contains("N="))
                .count(),
            back.nodes.len()
        );
        assert_eq!(file_stem("s/1"), "s_1");
    }
}
