//! Run summaries: `cotforge stats` (a terminal table), `cotforge report`
//! (one self-contained HTML file: inline SVG plots, a data viewer in inline
//! JavaScript with its data embedded as JSON, no external assets, so it opens
//! offline and can be attached to a ticket), `cotforge compare` (night over
//! night, [`compare`]) and the hand-off gate of `finalize` ([`gate`]).
//!
//! [`Summary::build`] takes rows (`&[Chain]`, `&[Reject]`) so any reader can
//! feed it; [`Summary::from_out_dir`] uses [`io::scan_out_dir`].
//!
//! What a team reads first ([`Headline`], per recipe and overall):
//! - *verified share*: shipped chains whose answer matched the seed's
//!   reference, among shipped chains that had a reference to check;
//! - *reject share*: rejected rows (seeds and chains, every stage) among
//!   shipped + rejected rows;
//! - *seed coverage*: seeds with at least one shipped chain, among the seeds
//!   seen (in shipped or rejected rows);
//! - *chains per seed*: shipped chains per covered seed;
//! - *tokens per shipped chain*;
//! - throughput ([`Throughput`]): from the `metrics.jsonl` samples each worker
//!   writes, between the first and the last sample of each worker run.

pub mod compare;
pub mod finals;
pub mod gate;
pub mod html;
pub mod io;
pub mod viewer;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::record::{Chain, Reject, Stage};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Io(#[from] io::IoError),
    #[error("{path}: {source}")]
    File {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// One line of a `metrics.jsonl` file: a sample of cumulative counters at
/// time `t` (unix seconds). Throughput is the rate between samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
pub struct MetricsSample {
    #[serde(alias = "ts", alias = "time")]
    pub t: f64,
    #[serde(default)]
    pub chains: f64,
    #[serde(default)]
    pub tokens: f64,
}

/// Throughput between two consecutive samples, at the later one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Seconds since the first sample.
    pub t: f64,
    pub chains_per_s: f64,
    pub tokens_per_s: f64,
}

/// The numbers a team reads first, for one recipe or for the whole run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Headline {
    pub shipped: usize,
    /// Rows of the rejected shards, `not_shipped` included.
    pub rejected: usize,
    /// Chains the ship policy held back (stage `marco_cot.ship`:
    /// `not-selected`, `unverified`): kept with the rejects, but by design,
    /// not a failure, so they do not count in the reject share.
    pub not_shipped: usize,
    /// Shipped chains with a verification result (the seed had a reference).
    pub checked: usize,
    /// Shipped chains whose answer matched the reference.
    pub verified: usize,
    /// Seeds seen in shipped or rejected rows.
    pub seeds: usize,
    /// Seeds with at least one shipped chain.
    pub covered: usize,
    pub tokens_mean: Option<f64>,
    pub tokens_p50: Option<f64>,
    pub reward_mean: Option<f64>,
}

fn share(n: usize, of: usize) -> Option<f64> {
    (of > 0).then(|| n as f64 / of as f64)
}

impl Headline {
    pub fn verified_share(&self) -> Option<f64> {
        share(self.verified, self.checked)
    }
    /// Rows a stage failed, among shipped and failed rows.
    pub fn reject_share(&self) -> Option<f64> {
        let failed = self.rejected - self.not_shipped;
        share(failed, self.shipped + failed)
    }
    pub fn coverage(&self) -> Option<f64> {
        share(self.covered, self.seeds)
    }
    pub fn chains_per_seed(&self) -> Option<f64> {
        share(self.shipped, self.covered)
    }
}

/// Throughput of the run from its metrics samples (wall clock: reports only,
/// never the Parquet outputs or the export).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Throughput {
    /// Metrics series (one `metrics.jsonl` per worker run and shard) with at least two samples.
    pub streams: usize,
    pub samples: usize,
    /// First to last sample over every worker run.
    pub span_seconds: f64,
    /// Summed over worker runs: first to last sample of each.
    pub busy_seconds: f64,
    /// Accepted chains (before dedup) counted between those samples.
    pub chains: f64,
    /// Engine tokens (sampled + evaluated) counted between those samples.
    pub tokens: f64,
}

impl Throughput {
    /// From per-worker-run sample series (each cumulative).
    pub fn of_streams(streams: &[Vec<MetricsSample>]) -> Option<Self> {
        let mut t = Throughput::default();
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for s in streams {
            let mut v: Vec<MetricsSample> = s.iter().copied().filter(|m| m.t.is_finite()).collect();
            v.sort_by(|a, b| a.t.total_cmp(&b.t));
            let (Some(first), Some(last)) = (v.first(), v.last()) else {
                continue;
            };
            t.samples += v.len();
            lo = lo.min(first.t);
            hi = hi.max(last.t);
            if v.len() < 2 || last.t <= first.t {
                continue;
            }
            t.streams += 1;
            t.busy_seconds += last.t - first.t;
            t.chains += (last.chains - first.chains).max(0.0);
            t.tokens += (last.tokens - first.tokens).max(0.0);
        }
        (t.streams > 0).then(|| {
            t.span_seconds = hi - lo;
            t
        })
    }
    /// Accepted chains per second of one worker.
    pub fn chains_per_s(&self) -> f64 {
        self.chains / self.busy_seconds.max(1e-9)
    }
    /// Engine tokens per second of one worker.
    pub fn tokens_per_s(&self) -> f64 {
        self.tokens / self.busy_seconds.max(1e-9)
    }
}

/// Everything stats and report show.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub seeds: usize,
    pub accepted: usize,
    pub rejected: usize,
    /// recipe -> (accepted, rejected)
    pub by_recipe: BTreeMap<String, (usize, usize)>,
    /// (stage, reason with numbers and ids elided) -> count
    pub by_reason: BTreeMap<(String, String), usize>,
    /// (stage, reason category, recipe) -> count
    pub by_reason_recipe: BTreeMap<(String, String, String), usize>,
    pub reward_accepted: Vec<f64>,
    /// Rewards of rejected chains (from the chain JSON in `Reject.row`).
    pub reward_rejected: Vec<f64>,
    pub tokens: Vec<f64>,
    pub reflections: Vec<u32>,
    pub rates: Vec<Rate>,
    /// recipe -> headline numbers.
    pub headline: BTreeMap<String, Headline>,
    /// The run as a whole.
    pub overall: Headline,
    pub throughput: Option<Throughput>,
    /// Hashes of the distinct prompts of shipped chains (night-over-night overlap).
    pub prompts: BTreeSet<u64>,
}

/// Hash of a prompt with whitespace runs collapsed (the prompt-overlap key).
pub fn prompt_key(prompt: &str) -> u64 {
    let mut h = blake3::Hasher::new();
    for (i, w) in prompt.split_whitespace().enumerate() {
        if i > 0 {
            h.update(b" ");
        }
        h.update(w.as_bytes());
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.finalize().as_bytes()[..8]);
    u64::from_le_bytes(b)
}

/// Per-recipe accumulator of [`Headline`].
#[derive(Default)]
struct Acc<'a> {
    h: Headline,
    seeds: BTreeSet<&'a str>,
    covered: BTreeSet<&'a str>,
    tokens: Vec<f64>,
    reward: f64,
}

impl<'a> Acc<'a> {
    fn chain(&mut self, c: &'a Chain) {
        self.h.shipped += 1;
        self.h.checked += usize::from(c.verified.is_some());
        self.h.verified += usize::from(c.verified == Some(true));
        self.seeds.insert(&c.seed_id);
        self.covered.insert(&c.seed_id);
        self.tokens
            .push(f64::from(crate::stages::filter::chain_tokens(c)));
        self.reward += c.reward;
    }
    fn reject(&mut self, r: &'a Reject) {
        self.h.rejected += 1;
        self.h.not_shipped += usize::from(r.stage == crate::recipes::marco::STAGE_SHIP);
        self.seeds.insert(&r.seed_id);
    }
    fn finish(mut self) -> Headline {
        self.h.seeds = self.seeds.len();
        self.h.covered = self.covered.len();
        if let Some(q) = quantiles(&self.tokens) {
            self.h.tokens_mean = Some(q.mean);
            self.h.tokens_p50 = Some(q.p50);
        }
        self.h.reward_mean = (self.h.shipped > 0).then(|| self.reward / self.h.shipped as f64);
        self.h
    }
}

/// `reward 0.41 < 0.60` -> `reward N < N`; `duplicate-of abc` -> `duplicate-of <id>`;
/// quoted text -> `'…'`. Groups reasons for counting.
pub fn reason_category(stage: Stage, reason: &str) -> String {
    if let Some(rest) = reason.strip_prefix("duplicate-of") {
        let _ = rest;
        return "duplicate-of <id>".into();
    }
    if stage == crate::stages::decontam::STAGE {
        // `benchmark 'FILE' row R (field): 'n-gram'`: one category per benchmark file.
        let file = reason.split('\'').nth(1).unwrap_or_default();
        let name = Path::new(file)
            .file_name()
            .map_or_else(|| file.to_string(), |n| n.to_string_lossy().into_owned());
        return format!("benchmark {name}");
    }
    let mut out = String::with_capacity(reason.len());
    let mut chars = reason.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' {
            for d in chars.by_ref() {
                if d == '\'' {
                    break;
                }
            }
            out.push_str("'…'");
        } else if c.is_ascii_digit() {
            while chars
                .peek()
                .is_some_and(|d| d.is_ascii_digit() || *d == '.')
            {
                chars.next();
            }
            out.push('N');
        } else {
            out.push(c);
        }
    }
    out
}

impl Summary {
    /// `metrics`: the samples of one worker run (see [`Summary::build_streams`]).
    pub fn build(chains: &[Chain], rejects: &[Reject], metrics: &[MetricsSample]) -> Self {
        Self::build_streams(chains, rejects, &[metrics.to_vec()])
    }

    /// `streams`: the metrics samples of each worker run (one `metrics.jsonl` each).
    pub fn build_streams(
        chains: &[Chain],
        rejects: &[Reject],
        streams: &[Vec<MetricsSample>],
    ) -> Self {
        let mut s = Summary::default();
        let mut seeds = BTreeSet::new();
        let mut all = Acc::default();
        let mut per: BTreeMap<String, Acc> = BTreeMap::new();
        for c in chains {
            all.chain(c);
            per.entry(recipe_name(c.recipe)).or_default().chain(c);
            s.prompts.insert(prompt_key(&c.prompt));
        }
        for r in rejects {
            all.reject(r);
            per.entry(recipe_name(r.recipe)).or_default().reject(r);
        }
        s.overall = all.finish();
        s.headline = per.into_iter().map(|(k, a)| (k, a.finish())).collect();
        s.throughput = Throughput::of_streams(streams);
        for c in chains {
            seeds.insert(c.seed_id.as_str());
            s.accepted += 1;
            s.by_recipe.entry(recipe_name(c.recipe)).or_default().0 += 1;
            s.reward_accepted.push(c.reward);
            s.tokens
                .push(f64::from(crate::stages::filter::chain_tokens(c)));
            s.reflections.push(c.reflections);
        }
        for r in rejects {
            seeds.insert(r.seed_id.as_str());
            s.rejected += 1;
            s.by_recipe.entry(recipe_name(r.recipe)).or_default().1 += 1;
            let cat = reason_category(r.stage, &r.reason);
            *s.by_reason_recipe
                .entry((r.stage.to_string(), cat.clone(), recipe_name(r.recipe)))
                .or_default() += 1;
            *s.by_reason.entry((r.stage.to_string(), cat)).or_default() += 1;
            if let Ok(c) = serde_json::from_str::<Chain>(&r.row) {
                if c.reward > 0.0 || !c.reasoning.is_empty() || !c.answer.is_empty() {
                    s.reward_rejected.push(c.reward);
                }
            }
        }
        s.seeds = seeds.len();
        // Rates between consecutive samples of each worker run, on one time axis.
        let start = streams
            .iter()
            .flatten()
            .map(|m| m.t)
            .filter(|t| t.is_finite())
            .fold(f64::INFINITY, f64::min);
        for stream in streams {
            let mut m: Vec<MetricsSample> =
                stream.iter().copied().filter(|m| m.t.is_finite()).collect();
            m.sort_by(|a, b| a.t.total_cmp(&b.t));
            for w in m.windows(2) {
                let dt = w[1].t - w[0].t;
                if dt > 0.0 {
                    s.rates.push(Rate {
                        t: w[1].t - start,
                        chains_per_s: (w[1].chains - w[0].chains) / dt,
                        tokens_per_s: (w[1].tokens - w[0].tokens) / dt,
                    });
                }
            }
        }
        s.rates.sort_by(|a, b| a.t.total_cmp(&b.t));
        s
    }

    /// Reads every chain, reject and metrics file under `dir`.
    pub fn from_out_dir(dir: &Path) -> Result<Self, ReportError> {
        Ok(OutData::read(dir)?.summary())
    }

    /// Rows of the headline table: the run, then each recipe.
    pub fn headline_rows(&self) -> Vec<Vec<String>> {
        let mut rows = vec![headline_row("all", &self.overall)];
        rows.extend(self.headline.iter().map(|(r, h)| headline_row(r, h)));
        rows
    }

    /// The headline table: one row for the run, one per recipe.
    pub fn headline_table(&self) -> String {
        let mut out = table(&HEADLINE_HEADERS, &self.headline_rows());
        match &self.throughput {
            Some(t) => out.push_str(&format!(
                "throughput: {:.2} chains/s, {:.0} tokens/s per worker ({} metrics series, {:.1} s busy, {:.1} s span)\n",
                t.chains_per_s(),
                t.tokens_per_s(),
                t.streams,
                t.busy_seconds,
                t.span_seconds
            )),
            None => out.push_str("throughput: - (no metrics samples)\n"),
        }
        out
    }

    /// The terminal table of `cotforge stats`.
    pub fn table(&self) -> String {
        let mut out = self.headline_table();
        out.push('\n');
        let total = self.accepted + self.rejected;
        out.push_str(&table(
            &["", "count"],
            &[
                vec!["seeds".into(), self.seeds.to_string()],
                vec!["chains".into(), total.to_string()],
                vec![
                    "accepted".into(),
                    format!("{} ({})", self.accepted, pct(self.accepted, total)),
                ],
                vec![
                    "rejected".into(),
                    format!("{} ({})", self.rejected, pct(self.rejected, total)),
                ],
            ],
        ));
        out.push('\n');
        let rows: Vec<Vec<String>> = self
            .by_recipe
            .iter()
            .map(|(r, (a, j))| vec![r.clone(), a.to_string(), j.to_string()])
            .collect();
        out.push_str(&table(&["recipe", "accepted", "rejected"], &rows));
        out.push('\n');
        let mut reasons: Vec<_> = self.by_reason_recipe.iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let rows: Vec<Vec<String>> = reasons
            .iter()
            .map(|((st, re, rc), n)| vec![st.clone(), re.clone(), rc.clone(), n.to_string()])
            .collect();
        if !rows.is_empty() {
            out.push_str(&table(&["stage", "reason", "recipe", "rejected"], &rows));
            out.push('\n');
        }
        let q = |name: &str, v: &[f64], prec: usize| -> Vec<String> {
            let qs = quantiles(v);
            let mut row = vec![name.to_string(), v.len().to_string()];
            match qs {
                Some(q) => row.extend(q.row().iter().map(|x| format!("{x:.prec$}"))),
                None => row.extend(std::iter::repeat_n("-".to_string(), 6)),
            }
            row
        };
        let refl: Vec<f64> = self.reflections.iter().map(|&r| f64::from(r)).collect();
        out.push_str(&table(
            &[
                "distribution",
                "n",
                "mean",
                "min",
                "p10",
                "p50",
                "p90",
                "max",
            ],
            &[
                q("reward (accepted)", &self.reward_accepted, 3),
                q("reward (rejected)", &self.reward_rejected, 3),
                q("tokens per chain", &self.tokens, 0),
                q("reflections per chain", &refl, 2),
            ],
        ));
        if !self.rates.is_empty() {
            out.push('\n');
            let c: Vec<f64> = self.rates.iter().map(|r| r.chains_per_s).collect();
            let t: Vec<f64> = self.rates.iter().map(|r| r.tokens_per_s).collect();
            out.push_str(&table(
                &["throughput", "n", "mean", "min", "p10", "p50", "p90", "max"],
                &[q("chains/s", &c, 2), q("tokens/s", &t, 1)],
            ));
        }
        out
    }
}

/// Columns of the headline table (stats and report).
pub const HEADLINE_HEADERS: [&str; 8] = [
    "recipe",
    "shipped",
    "rejected",
    "reject share",
    "verified share",
    "seed coverage",
    "chains/seed",
    "tokens/chain (mean, p50)",
];

fn opt_pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{:.1}%", 100.0 * x))
}

fn headline_row(name: &str, h: &Headline) -> Vec<String> {
    vec![
        name.to_string(),
        h.shipped.to_string(),
        h.rejected.to_string(),
        opt_pct(h.reject_share()),
        match h.verified_share() {
            Some(v) => format!("{:.1}% of {}", 100.0 * v, h.checked),
            None => "- (no reference)".into(),
        },
        match h.coverage() {
            Some(v) => format!("{:.1}% ({}/{})", 100.0 * v, h.covered, h.seeds),
            None => "-".into(),
        },
        h.chains_per_seed()
            .map_or_else(|| "-".into(), |v| format!("{v:.2}")),
        match (h.tokens_mean, h.tokens_p50) {
            (Some(m), Some(p)) => format!("{m:.0}, {p:.0}"),
            _ => "-".into(),
        },
    ]
}

/// An output directory read once: its rows and metrics, for the summary,
/// the viewer and comparisons.
#[derive(Debug, Clone, Default)]
pub struct OutData {
    pub dir: PathBuf,
    pub chains: Vec<Chain>,
    pub rejects: Vec<Reject>,
    pub metrics: Vec<Vec<MetricsSample>>,
}

impl OutData {
    pub fn read(dir: &Path) -> Result<Self, ReportError> {
        let files = io::scan_out_dir(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            chains: io::read_all_chains(&files.chains)?,
            rejects: io::read_all_rejects(&files.rejects)?,
            metrics: read_metrics_files(&files.metrics)?,
        })
    }
    pub fn summary(&self) -> Summary {
        Summary::build_streams(&self.chains, &self.rejects, &self.metrics)
    }
}

/// The samples of each `metrics.jsonl` (one series per file; bad lines are skipped with a warning).
pub fn read_metrics_files(paths: &[PathBuf]) -> Result<Vec<Vec<MetricsSample>>, ReportError> {
    let mut streams = Vec::new();
    for p in paths {
        let text = std::fs::read_to_string(p).map_err(|source| ReportError::File {
            path: p.clone(),
            source,
        })?;
        let mut v = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match serde_json::from_str::<MetricsSample>(line) {
                Ok(sample) => v.push(sample),
                Err(e) => tracing::warn!("{}: skipping bad metrics line: {e}", p.display()),
            }
        }
        streams.push(v);
    }
    Ok(streams)
}

fn recipe_name(r: Option<crate::record::Recipe>) -> String {
    r.map_or("unknown", |r| r.as_str()).to_string()
}

fn pct(n: usize, total: usize) -> String {
    if total == 0 {
        "-".into()
    } else {
        format!("{:.1}%", 100.0 * n as f64 / total as f64)
    }
}

/// The summary of a column of numbers the stats table prints (one column each,
/// in field order). Percentiles are nearest-rank.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quantiles {
    pub mean: f64,
    pub min: f64,
    pub p10: f64,
    pub p50: f64,
    pub p90: f64,
    pub max: f64,
}

impl Quantiles {
    /// The values in the stats table's column order.
    pub fn row(&self) -> [f64; 6] {
        [self.mean, self.min, self.p10, self.p50, self.p90, self.max]
    }
}

/// [`Quantiles`] of the finite values of `v`, or None when there are none.
pub fn quantiles(v: &[f64]) -> Option<Quantiles> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return None;
    }
    s.sort_by(f64::total_cmp);
    let at = |p: f64| s[((p * (s.len() - 1) as f64).round() as usize).min(s.len() - 1)];
    let mean = s.iter().sum::<f64>() / s.len() as f64;
    Some(Quantiles {
        mean,
        min: s[0],
        p10: at(0.1),
        p50: at(0.5),
        p90: at(0.9),
        max: s[s.len() - 1],
    })
}

/// A plain aligned text table (first column left, others right aligned).
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let n = headers.len();
    let mut w: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(n) {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| -> String {
        let mut s = String::new();
        for (i, c) in cells.enumerate().take(n) {
            let pad = w[i].saturating_sub(c.chars().count());
            if i == 0 {
                s.push_str(c);
                s.push_str(&" ".repeat(pad));
            } else {
                s.push_str("  ");
                s.push_str(&" ".repeat(pad));
                s.push_str(c);
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(&mut headers.iter().copied());
    let total: usize = w.iter().sum::<usize>() + 2 * (n.saturating_sub(1));
    out.push_str(&"-".repeat(total));
    out.push('\n');
    for r in rows {
        out.push_str(&line(&mut r.iter().map(String::as_str)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_the_ship_policy_held_back_are_not_failures() {
        let held = Reject {
            stage: crate::recipes::marco::STAGE_SHIP,
            reason: "unverified".into(),
            seed_id: "s".into(),
            ..Default::default()
        };
        let failed = Reject {
            stage: Stage::FilterReward,
            seed_id: "s".into(),
            ..Default::default()
        };
        let mut a = Acc::default();
        for r in [&held, &held, &held, &failed] {
            a.reject(r);
        }
        let h = a.finish();
        assert_eq!((h.rejected, h.not_shipped), (4, 3));
        assert_eq!(h.reject_share(), Some(1.0));
        let mut a = Acc::default();
        a.reject(&held);
        assert_eq!(a.finish().reject_share(), None);
    }

    #[test]
    fn reason_categories() {
        assert_eq!(
            reason_category(Stage::FilterReward, "reward 0.412 < 0.600"),
            "reward N < N"
        );
        assert_eq!(
            reason_category(Stage::Dedup, "duplicate-of 9af3"),
            "duplicate-of <id>"
        );
        assert_eq!(
            reason_category(Stage::FilterVerify, "answer '41' != reference '42'"),
            "answer '…' != reference '…'"
        );
    }

    #[test]
    fn quantiles_nearest_rank() {
        let v: Vec<f64> = (0..=10).map(f64::from).collect();
        assert_eq!(
            quantiles(&v).map(|q| q.row()),
            Some([5.0, 0.0, 1.0, 5.0, 9.0, 10.0])
        );
        assert_eq!(quantiles(&[]), None);
    }
}
