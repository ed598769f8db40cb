//! `cotforge bench quality`: does the search find and ship the right chains?
//!
//! On the same seeds, model and per-seed token budget, every arm of
//! `benches/data/quality.toml` runs through the `marco_cot` recipe itself
//! ([`MarcoCot::run`]: the same answer check, reflection, ship policy and
//! filters as a job): greedy CoT, best-of-N (N matched to a search arm's
//! tokens) and the MCTS under each value function. Per arm, seed set and
//! selection rule it reports the selected chain's accuracy, the verified
//! coverage (seeds with at least one verified chain), verified distinct
//! chains per 1,000 sampled tokens, the precision of what the ship policy
//! ships, the AUROC of the value for correctness, tokens per seed and
//! seeds/hour.
//!
//! Each arm's per-seed records are appended to `OUT/<arm>/<set>.jsonl` as
//! every chunk of seeds finishes, under a fingerprint of everything that
//! shapes them; a rerun keeps what matches and runs only the rest.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::metrics::{auroc, ratio};
use super::BenchError;
use crate::engine::{Engine, EngineConfig};
use crate::recipes::marco::{MarcoCot, SeedOutcome};
use crate::recipes::study::read_seeds;
use crate::recipes::RowMeta;
use crate::record::Seed;
use crate::search::{
    default_verifier, DriverConfig, DriverReport, Picks, ReflectionPolicy, SearchConfig,
    SelectRule, ShipPolicy, ValueKind,
};
use crate::stages::filter::{FilterChain, FilterConfig};

type Result<T> = std::result::Result<T, BenchError>;

/// How an arm searches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArmKind {
    /// One chain at temperature 0, no reflection.
    Greedy,
    /// N independent samples from the root (K = N, no reflection).
    BestOfN,
    /// The tree search as configured.
    Mcts,
}

/// One `[[arm]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArmSpec {
    pub name: String,
    pub kind: ArmKind,
    /// Search keys over the shared `[search]` table.
    #[serde(default)]
    pub search: toml::Table,
    /// `best_of_n`: the number of samples...
    pub n: Option<u32>,
    /// ...or the arm whose mean sampled tokens per seed N is matched to
    /// (N = those tokens / the greedy chain's mean tokens, per seed set).
    pub match_tokens_of: Option<String>,
}

/// Which arms the targets of issue 13 compare; chosen before the reported run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TargetArms {
    pub greedy: String,
    pub best_of_n: String,
    /// The MCTS arm whose value is the verifier.
    pub verifier: String,
    /// The reference-free arm and rule whose selected accuracy is compared with greedy's.
    pub reference_free: String,
    pub reference_free_rule: SelectRule,
    /// The reference-free arm whose value's AUROC is reported.
    pub auroc: String,
}

impl Default for TargetArms {
    fn default() -> Self {
        Self {
            greedy: "greedy".into(),
            best_of_n: "best_of_n".into(),
            verifier: "mcts_verifier".into(),
            reference_free: "mcts_self_consistency".into(),
            reference_free_rule: SelectRule::MajorityVote,
            auroc: "mcts_self_consistency".into(),
        }
    }
}

/// `benches/data/quality.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QualityConfig {
    /// Search settings every arm starts from (a `SearchConfig` table).
    #[serde(default)]
    pub search: toml::Table,
    #[serde(default)]
    pub driver: DriverConfig,
    /// The recipe's filters, applied to what each arm's ship policy ships.
    #[serde(default = "default_filters")]
    pub filters: Vec<FilterConfig>,
    /// Seeds searched together; each chunk is written when it finishes.
    #[serde(default = "default_chunk")]
    pub chunk: usize,
    #[serde(default)]
    pub targets: TargetArms,
    #[serde(rename = "arm")]
    pub arms: Vec<ArmSpec>,
}

fn default_filters() -> Vec<FilterConfig> {
    use crate::stages::filter::{FormatConfig, RepetitionConfig};
    vec![
        FilterConfig::Format(FormatConfig::default()),
        FilterConfig::Repetition(RepetitionConfig::default()),
    ]
}

fn default_chunk() -> usize {
    16
}

/// Deep merge: tables merge key by key, everything else is replaced.
fn merge(base: &mut toml::Table, over: &toml::Table) {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

impl QualityConfig {
    pub fn from_toml(text: &str) -> Result<Self> {
        let c: Self = toml::from_str(text).map_err(|e| BenchError::Config(e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    fn validate(&self) -> Result<()> {
        if self.arms.is_empty() {
            return Err(BenchError::Config("no [[arm]]".into()));
        }
        if self.chunk == 0 {
            return Err(BenchError::Config("chunk must be >= 1".into()));
        }
        FilterChain::from_configs(&self.filters).map_err(|e| BenchError::Config(e.to_string()))?;
        let mut names = std::collections::BTreeSet::new();
        for a in &self.arms {
            if !names.insert(&a.name) {
                return Err(BenchError::Config(format!("arm {} appears twice", a.name)));
            }
            if a.kind == ArmKind::BestOfN && a.n.is_none() && a.match_tokens_of.is_none() {
                return Err(BenchError::Config(format!(
                    "arm {}: best_of_n needs `n` or `match_tokens_of`",
                    a.name
                )));
            }
            // Every arm's settings must build (N = 2 stands in for a matched N).
            self.arm_search(a, Some(2))?;
        }
        Ok(())
    }

    /// The search settings of `arm` (with N for best-of-N).
    pub fn arm_search(&self, arm: &ArmSpec, n: Option<u32>) -> Result<SearchConfig> {
        let mut t = self.search.clone();
        merge(&mut t, &arm.search);
        let bad = |e: String| BenchError::Config(format!("arm {}: {e}", arm.name));
        let mut c: SearchConfig = toml::Value::Table(t)
            .try_into()
            .map_err(|e: toml::de::Error| bad(e.to_string()))?;
        match arm.kind {
            ArmKind::Greedy => c = greedy(c),
            ArmKind::BestOfN => {
                let n = arm
                    .n
                    .or(n)
                    .ok_or_else(|| bad("N is not known yet".into()))?;
                let n = n.max(1);
                c.expand_k = n;
                c.max_rollouts = n;
                c.reflection.policy = ReflectionPolicy::Off;
                // Each sample gets a whole chain's budget, as the greedy chain
                // does: with the tree's budget split N ways, samples longer
                // than budget / N were cut and answered from a truncated
                // thought. Tokens are matched through N, not by truncation.
                c.max_tree_tokens = n.saturating_mul(c.max_thought_tokens + c.answer_max_tokens);
            }
            ArmKind::Mcts => {}
        }
        c.build().map_err(|e| bad(e.to_string()))
    }
}

/// One chain of thought at temperature 0 with the same prompt, tags, budgets
/// and answer check as the search `c` describes: the greedy CoT baseline.
pub fn greedy(mut c: SearchConfig) -> SearchConfig {
    c.expand_k = 1;
    c.max_rollouts = 1;
    c.temperature = 0.0;
    c.answer_temperature = 0.0;
    c.reflection.policy = ReflectionPolicy::Off;
    c.select = SelectRule::MostVisited;
    c.ship = Some(ShipPolicy::Selected);
    c.stop_after_verified = 0;
    c
}

/// One distinct chain as the bench keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainRecord {
    pub answer: String,
    pub verified: Option<bool>,
    pub value: f64,
    pub reward: f64,
    pub agreement: f64,
    pub tokens: u32,
    pub reflections: u32,
    pub shipped: bool,
}

/// One seed of one arm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedRecord {
    pub seed_id: String,
    /// Set when the seed produced no tree (the reject's reason).
    pub error: Option<String>,
    pub tokens_sampled: u64,
    pub tokens_evaluated: u64,
    pub distinct_tokens: u64,
    /// This seed's share of its chunk's wall and decode time, and the chunk's mean KV cells.
    pub wall_seconds: f64,
    pub decode_seconds: f64,
    pub mean_cells: f64,
    pub picks: Picks,
    pub chains: Vec<ChainRecord>,
}

impl SeedRecord {
    fn from_outcome(seed: &Seed, o: &SeedOutcome, share: (f64, f64, f64)) -> Self {
        let chains = o
            .chains
            .iter()
            .map(|c| ChainRecord {
                answer: c.chain.answer.chars().take(80).collect(),
                verified: c.chain.verified,
                value: c.chain.value.unwrap_or(c.chain.reward),
                reward: c.chain.reward,
                agreement: c.chain.agreement.unwrap_or(0.0),
                tokens: c.chain.tokens,
                reflections: c.chain.reflections,
                shipped: c.shipped,
            })
            .collect();
        let (stats, picks) = match &o.result {
            Some(r) => (
                (
                    r.stats.tokens_sampled as u64,
                    r.stats.engine_tokens_evaluated,
                    r.stats.distinct_tokens,
                ),
                r.picks,
            ),
            None => ((0, 0, 0), Picks::default()),
        };
        let error = o
            .result
            .is_none()
            .then(|| o.processed.rejected.first().map(|r| r.reason.clone()))
            .flatten();
        Self {
            seed_id: seed.id.clone(),
            error,
            tokens_sampled: stats.0,
            tokens_evaluated: stats.1,
            distinct_tokens: stats.2,
            wall_seconds: share.0,
            decode_seconds: share.1,
            mean_cells: share.2,
            picks,
            chains,
        }
    }

    fn verified(&self, i: Option<usize>) -> bool {
        i.and_then(|i| self.chains.get(i))
            .is_some_and(|c| c.verified == Some(true))
    }
}

/// The selected chain's accuracy under one rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleRow {
    pub rule: SelectRule,
    pub correct: usize,
    pub accuracy: f64,
}

/// One arm on one seed set (or `all` of them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArmReport {
    pub arm: String,
    pub set: String,
    pub kind: ArmKind,
    /// Samples of best-of-N.
    pub n: Option<u32>,
    pub value: String,
    pub reflection: ReflectionPolicy,
    pub select: SelectRule,
    pub ship: ShipPolicy,
    /// Whether the arm looks at the reference answer while searching.
    pub uses_reference: bool,
    pub seeds: usize,
    pub failed: usize,
    pub rules: Vec<RuleRow>,
    pub covered: usize,
    pub verified_coverage: f64,
    pub chains: usize,
    pub verified_chains: usize,
    pub verified_per_1k_tokens: f64,
    pub shipped: usize,
    /// Share of shipped chains that verify (`None`: nothing shipped).
    pub ship_precision: Option<f64>,
    /// AUROC of the chains' value for being verified.
    pub auroc: Option<f64>,
    /// The same for the reference-free scores every chain carries, whatever
    /// value steered the arm: mean confidence, answer agreement, and their
    /// 0.3 / 0.7 mix.
    pub auroc_confidence: Option<f64>,
    pub auroc_self_consistency: Option<f64>,
    pub auroc_mix: Option<f64>,
    pub tokens_per_seed: f64,
    pub tokens_per_chain: f64,
    pub seeds_per_hour: f64,
    pub evaluated_over_distinct: f64,
    pub decode_tps: f64,
    pub mean_cells: f64,
    /// llama-batched-bench TG at the same KV occupancy, and our decode over it.
    pub batched_bench_tg: Option<f64>,
    pub decode_ratio: Option<f64>,
}

impl ArmReport {
    pub fn accuracy(&self, rule: SelectRule) -> f64 {
        self.rules
            .iter()
            .find(|r| r.rule == rule)
            .map_or(0.0, |r| r.accuracy)
    }
}

/// One target of issue 13, measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    pub set: String,
    pub name: String,
    pub measured: f64,
    pub target: f64,
    pub met: bool,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedSet {
    pub name: String,
    pub path: PathBuf,
    pub seeds: usize,
}

/// Everything `bench quality` measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QualityReport {
    pub model: String,
    pub model_blake3: String,
    pub engine: EngineConfig,
    pub config: QualityConfig,
    pub sets: Vec<SeedSet>,
    pub arms: Vec<ArmReport>,
    pub targets: Vec<Target>,
}

/// What `bench quality` runs.
pub struct QualityOptions {
    pub config: QualityConfig,
    /// (name, seed file).
    pub sets: Vec<(String, PathBuf)>,
    pub out: PathBuf,
    /// Only the first N seeds of each set.
    pub limit: Option<usize>,
    /// Run only these arms (the report covers what is on disk).
    pub only: Option<Vec<String>>,
    /// llama-batched-bench, for the decode ratio at matched occupancy.
    pub batched_bench: Option<PathBuf>,
    /// The engine settings (recorded, and for the batched-bench baseline).
    pub engine: EngineConfig,
}

/// Per-seed records of one arm on one set, on disk.
struct ArmFile {
    path: PathBuf,
    fingerprint: String,
    records: Vec<SeedRecord>,
}

#[derive(Serialize, Deserialize)]
struct Header {
    fingerprint: String,
}

impl ArmFile {
    /// Records written under the same fingerprint; anything else is set aside.
    fn open(path: PathBuf, fingerprint: String) -> Result<Self> {
        let mut records = Vec::new();
        if let Ok(text) = std::fs::read_to_string(&path) {
            let mut lines = text.lines();
            let same = lines
                .next()
                .and_then(|l| serde_json::from_str::<Header>(l).ok())
                .is_some_and(|h| h.fingerprint == fingerprint);
            if same {
                // A torn last line (killed mid-write) is dropped and redone.
                records.extend(lines.map_while(|l| serde_json::from_str(l).ok()));
            } else {
                let stale = path.with_extension("jsonl.stale");
                tracing::warn!(
                    "{}: written under other settings; moved to {}",
                    path.display(),
                    stale.display()
                );
                std::fs::rename(&path, &stale).map_err(|e| BenchError::io(&path, e))?;
            }
        }
        let f = Self {
            path,
            fingerprint,
            records,
        };
        f.rewrite()?;
        Ok(f)
    }

    fn rewrite(&self) -> Result<()> {
        let mut s = serde_json::to_string(&Header {
            fingerprint: self.fingerprint.clone(),
        })
        .unwrap_or_default();
        s.push('\n');
        for r in &self.records {
            s.push_str(&serde_json::to_string(r).unwrap_or_default());
            s.push('\n');
        }
        crate::store::parquet_io::commit_bytes(&self.path, s.as_bytes())
            .map_err(|e| BenchError::io(&self.path, e))
    }

    fn append(&mut self, recs: Vec<SeedRecord>) -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|e| BenchError::io(&self.path, e))?;
        let mut s = String::new();
        for r in &recs {
            s.push_str(&serde_json::to_string(r).unwrap_or_default());
            s.push('\n');
        }
        f.write_all(s.as_bytes())
            .and_then(|_| f.sync_data())
            .map_err(|e| BenchError::io(&self.path, e))?;
        self.records.extend(recs);
        Ok(())
    }
}

fn fingerprint(parts: &[&str]) -> String {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update(&[0x1f]);
    }
    h.finalize().to_hex()[..32].to_string()
}

/// Run (or resume) every arm on every seed set; `log` gets progress lines.
pub fn run_quality(
    engine: &mut dyn Engine,
    opts: &QualityOptions,
    log: &mut dyn FnMut(&str),
) -> Result<QualityReport> {
    let cfg = &opts.config;
    let mut sets: Vec<(SeedSet, Vec<Seed>, String)> = Vec::new();
    for (name, path) in &opts.sets {
        let (seeds, rejects) = read_seeds(path, opts.limit)?;
        if !rejects.is_empty() {
            log(&format!(
                "{name}: {} rows of {} rejected at ingest",
                rejects.len(),
                path.display()
            ));
        }
        let ids: Vec<&str> = seeds.iter().map(|s| s.id.as_str()).collect();
        let digest = fingerprint(&[&serde_json::to_string(&seeds).unwrap_or_default()]);
        log(&format!("{name}: {} seeds ({})", ids.len(), path.display()));
        sets.push((
            SeedSet {
                name: name.clone(),
                path: path.clone(),
                seeds: seeds.len(),
            },
            seeds,
            digest,
        ));
    }
    std::fs::create_dir_all(&opts.out).map_err(|e| BenchError::io(&opts.out, e))?;
    let meta = RowMeta {
        model: engine.model_name().to_string(),
        model_blake3: engine.model_hash().to_string(),
        created_at: 0,
    };
    let filters =
        FilterChain::from_configs(&cfg.filters).map_err(|e| BenchError::Config(e.to_string()))?;
    // records[arm][set]
    let mut records: BTreeMap<String, BTreeMap<String, Vec<SeedRecord>>> = BTreeMap::new();
    let mut n_of: BTreeMap<(String, String), u32> = BTreeMap::new();
    for arm in &cfg.arms {
        let run_it = opts.only.as_ref().is_none_or(|o| o.contains(&arm.name));
        for (set, seeds, digest) in &sets {
            let n = best_of_n(cfg, arm, &set.name, &records)?;
            if let Some(n) = n {
                n_of.insert((arm.name.clone(), set.name.clone()), n);
            }
            let Ok(search) = cfg.arm_search(arm, n) else {
                log(&format!(
                    "{} on {}: skipped (best-of-N needs the arm it matches first)",
                    arm.name, set.name
                ));
                continue;
            };
            let fp = fingerprint(&[
                env!("CARGO_PKG_VERSION"),
                &meta.model_blake3,
                digest,
                &serde_json::to_string(&search).unwrap_or_default(),
                &serde_json::to_string(&cfg.driver).unwrap_or_default(),
                &serde_json::to_string(&cfg.filters).unwrap_or_default(),
            ]);
            let dir = opts.out.join(&arm.name);
            std::fs::create_dir_all(&dir).map_err(|e| BenchError::io(&dir, e))?;
            let mut file = ArmFile::open(dir.join(format!("{}.jsonl", set.name)), fp)?;
            let done: std::collections::BTreeSet<String> =
                file.records.iter().map(|r| r.seed_id.clone()).collect();
            let todo: Vec<&Seed> = seeds.iter().filter(|s| !done.contains(&s.id)).collect();
            if !todo.is_empty() && run_it {
                log(&format!(
                    "{} on {}: {} seeds to run ({} on disk)",
                    arm.name,
                    set.name,
                    todo.len(),
                    done.len()
                ));
                let mut recipe = MarcoCot {
                    engine: &mut *engine,
                    search,
                    driver: cfg.driver.clone(),
                    verifier: default_verifier(),
                    filters: filters.clone(),
                    meta: meta.clone(),
                    trees_dir: None,
                    judge: None,
                };
                for chunk in todo.chunks(cfg.chunk) {
                    let batch: Vec<Seed> = chunk.iter().map(|s| (*s).clone()).collect();
                    let (outcomes, rep) = recipe.run(&batch, &mut |_, _| {})?;
                    let k = batch.len().max(1) as f64;
                    let share = (rep.wall_seconds / k, rep.decode_seconds / k, rep.mean_cells);
                    let recs = batch
                        .iter()
                        .zip(&outcomes)
                        .map(|(s, o)| SeedRecord::from_outcome(s, o, share))
                        .collect();
                    file.append(recs)?;
                    log(&chunk_line(
                        &arm.name,
                        &set.name,
                        file.records.len(),
                        seeds.len(),
                        &rep,
                    ));
                }
            }
            // Keep the set's order, whatever order the records were written in.
            let by_id: BTreeMap<&str, &SeedRecord> = file
                .records
                .iter()
                .map(|r| (r.seed_id.as_str(), r))
                .collect();
            let ordered: Vec<SeedRecord> = seeds
                .iter()
                .filter_map(|s| by_id.get(s.id.as_str()).map(|r| (*r).clone()))
                .collect();
            records
                .entry(arm.name.clone())
                .or_default()
                .insert(set.name.clone(), ordered);
        }
    }
    let mut tg_cache: BTreeMap<usize, f64> = BTreeMap::new();
    let mut arms = Vec::new();
    let set_names: Vec<String> = sets.iter().map(|s| s.0.name.clone()).collect();
    for arm in &cfg.arms {
        let Some(per_set) = records.get(&arm.name) else {
            continue;
        };
        let mut all = Vec::new();
        for set in &set_names {
            let Some(recs) = per_set.get(set).filter(|r| !r.is_empty()) else {
                continue;
            };
            let n = n_of.get(&(arm.name.clone(), set.clone())).copied();
            let search = cfg.arm_search(arm, n)?;
            arms.push(summarize(arm, set, n, &search, recs));
            all.extend(recs.iter().cloned());
        }
        if set_names.len() > 1 && !all.is_empty() {
            let search = cfg.arm_search(arm, Some(2))?;
            let mut r = summarize(arm, "all", None, &search, &all);
            r.n = None;
            arms.push(r);
        }
    }
    if let Some(bin) = &opts.batched_bench {
        let threads = opts.engine.threads();
        for a in arms.iter_mut() {
            let npp = super::tools::matched_npp(a.mean_cells, opts.engine.n_parallel);
            let key = npp.div_ceil(32) * 32;
            let tg = match tg_cache.get(&key) {
                Some(&tg) => tg,
                None => {
                    log(&format!(
                        "llama-batched-bench at npp {key} (KV occupancy of {} on {})",
                        a.arm, a.set
                    ));
                    let tg = super::tools::batched_bench_tg(bin, &opts.engine, threads, key)?;
                    tg_cache.insert(key, tg);
                    tg
                }
            };
            a.batched_bench_tg = Some(tg);
            a.decode_ratio = Some(a.decode_tps / tg);
        }
    }
    let mut all_sets: Vec<String> = set_names.clone();
    if set_names.len() > 1 {
        all_sets.push("all".into());
    }
    let targets = all_sets
        .iter()
        .flat_map(|s| targets(&cfg.targets, s, &arms))
        .collect();
    Ok(QualityReport {
        model: meta.model,
        model_blake3: meta.model_blake3,
        engine: opts.engine.clone(),
        config: cfg.clone(),
        sets: sets.into_iter().map(|s| s.0).collect(),
        arms,
        targets,
    })
}

fn chunk_line(arm: &str, set: &str, done: usize, total: usize, rep: &DriverReport) -> String {
    format!(
        "{arm} on {set}: {done}/{total} seeds; chunk {:.0} s, {} tokens sampled, evaluated/distinct {:.3}",
        rep.wall_seconds,
        rep.tokens_sampled,
        ratio(rep.tokens_evaluated as f64, rep.distinct_tokens as f64)
    )
}

/// N of a best-of-N arm on a set: fixed, or matched to another arm's tokens.
fn best_of_n(
    cfg: &QualityConfig,
    arm: &ArmSpec,
    set: &str,
    records: &BTreeMap<String, BTreeMap<String, Vec<SeedRecord>>>,
) -> Result<Option<u32>> {
    if arm.kind != ArmKind::BestOfN {
        return Ok(None);
    }
    if let Some(n) = arm.n {
        return Ok(Some(n));
    }
    let Some(target) = &arm.match_tokens_of else {
        return Ok(None);
    };
    let greedy = cfg
        .arms
        .iter()
        .find(|a| a.kind == ArmKind::Greedy)
        .ok_or_else(|| {
            BenchError::Config(format!("arm {}: matching N needs a greedy arm", arm.name))
        })?;
    let recs = |name: &str| {
        records
            .get(name)
            .and_then(|m| m.get(set))
            .filter(|r| !r.is_empty())
    };
    let (Some(t), Some(g)) = (recs(target), recs(&greedy.name)) else {
        return Ok(None);
    };
    let tokens_per_seed = t.iter().map(|r| r.tokens_sampled).sum::<u64>() as f64 / t.len() as f64;
    let chains: Vec<u32> = g
        .iter()
        .flat_map(|r| r.chains.iter().map(|c| c.tokens))
        .collect();
    let per_chain = chains.iter().map(|&c| c as f64).sum::<f64>() / chains.len().max(1) as f64;
    Ok(Some(
        (tokens_per_seed / per_chain.max(1.0)).round().max(2.0) as u32,
    ))
}

fn uses_reference(c: &SearchConfig) -> bool {
    c.value.uses(ValueKind::Verifier)
        || c.reflection.policy == ReflectionPolicy::OnWrong
        || c.stop_after_verified > 0
}

/// The report of one arm over `recs`.
pub fn summarize(
    arm: &ArmSpec,
    set: &str,
    n: Option<u32>,
    search: &SearchConfig,
    recs: &[SeedRecord],
) -> ArmReport {
    let seeds = recs.len();
    let f = |x: usize| ratio(x as f64, seeds as f64);
    let rules = SelectRule::ALL
        .into_iter()
        .filter(|&r| arm.kind != ArmKind::Greedy || r == SelectRule::MostVisited)
        .map(|rule| {
            let correct = recs
                .iter()
                .filter(|r| r.verified(r.picks.get(rule)))
                .count();
            RuleRow {
                rule,
                correct,
                accuracy: f(correct),
            }
        })
        .collect();
    let covered = recs
        .iter()
        .filter(|r| r.chains.iter().any(|c| c.verified == Some(true)))
        .count();
    let chains = || recs.iter().flat_map(|r| r.chains.iter());
    let verified_chains = chains().filter(|c| c.verified == Some(true)).count();
    let shipped: Vec<&ChainRecord> = chains().filter(|c| c.shipped).collect();
    let sampled: u64 = recs.iter().map(|r| r.tokens_sampled).sum();
    let wall: f64 = recs.iter().map(|r| r.wall_seconds).sum();
    let decode: f64 = recs.iter().map(|r| r.decode_seconds).sum();
    let evaluated: u64 = recs.iter().map(|r| r.tokens_evaluated).sum();
    let distinct: u64 = recs.iter().map(|r| r.distinct_tokens).sum();
    let scored_by = |f: &dyn Fn(&ChainRecord) -> f64| -> Option<f64> {
        let v: Vec<(f64, bool)> = chains()
            .filter_map(|c| c.verified.map(|v| (f(c), v)))
            .collect();
        auroc(&v)
    };
    let n_chains = chains().count();
    let has_ref = true;
    ArmReport {
        arm: arm.name.clone(),
        set: set.to_string(),
        kind: arm.kind,
        n,
        value: search.value.label(),
        reflection: search.reflection.policy,
        select: search.select,
        ship: search.ship_policy(has_ref),
        uses_reference: uses_reference(search),
        seeds,
        failed: recs.iter().filter(|r| r.error.is_some()).count(),
        rules,
        covered,
        verified_coverage: f(covered),
        chains: n_chains,
        verified_chains,
        verified_per_1k_tokens: ratio(1000.0 * verified_chains as f64, sampled as f64),
        shipped: shipped.len(),
        ship_precision: (!shipped.is_empty()).then(|| {
            ratio(
                shipped.iter().filter(|c| c.verified == Some(true)).count() as f64,
                shipped.len() as f64,
            )
        }),
        auroc: scored_by(&|c| c.value),
        auroc_confidence: scored_by(&|c| c.reward),
        auroc_self_consistency: scored_by(&|c| c.agreement),
        auroc_mix: scored_by(&|c| 0.3 * c.reward + 0.7 * c.agreement),
        tokens_per_seed: ratio(sampled as f64, seeds as f64),
        tokens_per_chain: ratio(
            chains().map(|c| c.tokens as f64).sum::<f64>(),
            n_chains as f64,
        ),
        seeds_per_hour: ratio(3600.0 * seeds as f64, wall),
        evaluated_over_distinct: ratio(evaluated as f64, distinct as f64),
        decode_tps: ratio(evaluated as f64, decode),
        mean_cells: ratio(recs.iter().map(|r| r.mean_cells).sum::<f64>(), seeds as f64),
        batched_bench_tg: None,
        decode_ratio: None,
    }
}

/// `a / b` as a factor: infinite when only `b` is 0 (greedy solved nothing).
fn times(a: f64, b: f64) -> f64 {
    match (a > 0.0, b > 0.0) {
        (_, true) => a / b,
        (true, false) => f64::INFINITY,
        (false, false) => 0.0,
    }
}

/// The targets of issue 13 on one set.
fn targets(t: &TargetArms, set: &str, arms: &[ArmReport]) -> Vec<Target> {
    let get = |name: &str| arms.iter().find(|a| a.arm == name && a.set == set);
    let mut out = Vec::new();
    let mut push = |name: &str, measured: f64, target: f64, ge: bool, detail: String| {
        out.push(Target {
            set: set.into(),
            name: name.into(),
            measured,
            target,
            met: if ge {
                measured >= target
            } else {
                measured <= target
            },
            detail,
        })
    };
    if let (Some(g), Some(v)) = (get(&t.greedy), get(&t.verifier)) {
        let ga = g.accuracy(SelectRule::MostVisited);
        push(
            "verifier coverage / greedy accuracy",
            times(v.verified_coverage, ga),
            1.8,
            true,
            format!("{:.3} / {:.3}", v.verified_coverage, ga),
        );
        if let Some(b) = get(&t.best_of_n) {
            push(
                "verifier coverage / best-of-N coverage",
                times(v.verified_coverage, b.verified_coverage),
                1.15,
                true,
                format!(
                    "{:.3} / {:.3} (N = {:?}; tokens/seed {:.0} vs {:.0})",
                    v.verified_coverage,
                    b.verified_coverage,
                    b.n,
                    v.tokens_per_seed,
                    b.tokens_per_seed
                ),
            );
        }
    }
    if let (Some(g), Some(r)) = (get(&t.greedy), get(&t.reference_free)) {
        let ga = g.accuracy(SelectRule::MostVisited);
        let ra = r.accuracy(t.reference_free_rule);
        push(
            "reference-free selected accuracy - greedy accuracy (points)",
            100.0 * (ra - ga),
            5.0,
            true,
            format!(
                "{} {}: {:.3} vs greedy {:.3}{}",
                r.arm,
                t.reference_free_rule,
                ra,
                ga,
                if r.uses_reference {
                    " (WARNING: this arm uses the reference)"
                } else {
                    ""
                }
            ),
        );
    }
    if let Some(a) = get(&t.auroc) {
        push(
            "AUROC of the reference-free value",
            a.auroc.unwrap_or(f64::NAN),
            0.70,
            true,
            format!("{} (value {}, {} chains)", a.arm, a.value, a.chains),
        );
    }
    out
}

fn f3(x: Option<f64>) -> String {
    x.map_or("-".into(), |x| format!("{x:.3}"))
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

/// The report as Markdown tables (one per seed set) and the targets.
pub fn render(r: &QualityReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "bench quality: model {} ({} threads, n_parallel {}, n_ctx {}), chunk {}",
        r.model,
        r.engine.threads(),
        r.engine.n_parallel,
        r.engine.n_ctx,
        r.config.chunk
    );
    let mut sets: Vec<String> = r.sets.iter().map(|s| s.name.clone()).collect();
    if r.arms.iter().any(|a| a.set == "all") {
        sets.push("all".into());
    }
    for set in &sets {
        let _ = writeln!(s, "\n### {set}\n");
        let _ = writeln!(s, "| arm | value | rule | seeds | selected acc | verified coverage | verified chains /1k tok | ship | shipped | ship precision | AUROC value (conf / sc / mix) | tokens/seed | seeds/hour | eval/distinct | decode vs batched-bench |");
        let _ = writeln!(
            s,
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for a in r.arms.iter().filter(|a| &a.set == set) {
            for row in &a.rules {
                let own = row.rule == a.select;
                let name = match a.n {
                    Some(n) => format!("{} (N={n})", a.arm),
                    None => a.arm.clone(),
                };
                let _ = writeln!(
                    s,
                    "| {name} | {} | {}{} | {} | {} ({}) | {} ({}) | {:.2} | {} | {} | {} | {} | {:.0} | {:.0} | {:.3} | {} |",
                    a.value,
                    row.rule,
                    if own { "*" } else { "" },
                    a.seeds,
                    pct(row.accuracy),
                    row.correct,
                    pct(a.verified_coverage),
                    a.covered,
                    a.verified_per_1k_tokens,
                    a.ship,
                    if own { a.shipped.to_string() } else { "".into() },
                    if own { a.ship_precision.map_or("-".into(), pct) } else { "".into() },
                    if own {
                        format!(
                            "{} ({} / {} / {})",
                            f3(a.auroc),
                            f3(a.auroc_confidence),
                            f3(a.auroc_self_consistency),
                            f3(a.auroc_mix)
                        )
                    } else {
                        String::new()
                    },
                    a.tokens_per_seed,
                    a.seeds_per_hour,
                    a.evaluated_over_distinct,
                    a.decode_ratio.map_or("-".into(), |x| format!("{x:.3}")),
                );
            }
        }
    }
    let _ = writeln!(
        s,
        "\n(* the arm's configured selection rule: its ship policy uses that pick)\n"
    );
    let _ = writeln!(s, "| set | target | measured | goal | met | detail |");
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for t in &r.targets {
        let _ = writeln!(
            s,
            "| {} | {} | {:.3} | >= {} | {} | {} |",
            t.set,
            t.name,
            t.measured,
            t.target,
            if t.met { "yes" } else { "no" },
            t.detail
        );
    }
    s
}

/// Write the report JSON (beside the table) atomically.
pub fn write_json(path: &Path, r: &QualityReport) -> Result<()> {
    let text = serde_json::to_string_pretty(r).map_err(|e| BenchError::io(path, e))?;
    crate::store::parquet_io::commit_bytes(path, text.as_bytes())
        .map_err(|e| BenchError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arms_derive_their_search_from_the_shared_table() {
        let c = QualityConfig::from_toml(
            r#"
[search]
max_tree_tokens = 1200
expand_k = 3
[search.reflection]
policy = "on_wrong"

[[arm]]
name = "greedy"
kind = "greedy"
[[arm]]
name = "bon"
kind = "best_of_n"
match_tokens_of = "mcts"
[[arm]]
name = "mcts"
kind = "mcts"
search = { value = "verifier", reflection = { max_per_chain = 2 } }
"#,
        )
        .unwrap();
        let g = c.arm_search(&c.arms[0], None).unwrap();
        assert_eq!((g.expand_k, g.max_rollouts, g.temperature), (1, 1, 0.0));
        assert_eq!(g.reflection.policy, ReflectionPolicy::Off);
        assert_eq!(g.max_tree_tokens, 1200);
        let b = c.arm_search(&c.arms[1], Some(7)).unwrap();
        assert_eq!((b.expand_k, b.max_rollouts), (7, 7));
        // Every sample may use a whole chain's budget (no split of the tree's).
        assert_eq!(
            b.max_tree_tokens,
            7 * (b.max_thought_tokens + b.answer_max_tokens)
        );
        assert!(c.arm_search(&c.arms[1], None).is_err());
        let m = c.arm_search(&c.arms[2], None).unwrap();
        assert_eq!(m.reflection.policy, ReflectionPolicy::OnWrong);
        assert_eq!(m.reflection.max_per_chain, 2);
        assert!(m.value.uses(ValueKind::Verifier) && uses_reference(&m));
        assert!(QualityConfig::from_toml("[[arm]]\nname = \"x\"\nkind = \"best_of_n\"").is_err());
    }
}
