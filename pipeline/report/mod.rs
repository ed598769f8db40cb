//! Run summaries: `cotforge stats` (a terminal table) and `cotforge report`
//! (one self-contained HTML file with inline SVG plots, no scripts, no
//! external assets, so it opens offline and can be attached to a ticket).
//!
//! [`Summary::build`] takes rows (`&[Chain]`, `&[Reject]`) so any reader can
//! feed it; [`Summary::from_out_dir`] uses [`io::scan_out_dir`].

pub mod html;
pub mod io;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;

use crate::record::{Chain, Reject};

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
}

/// `reward 0.41 < 0.60` -> `reward N < N`; `duplicate-of abc` -> `duplicate-of <id>`;
/// quoted text -> `'…'`. Groups reasons for counting.
pub fn reason_category(stage: &str, reason: &str) -> String {
    if let Some(rest) = reason.strip_prefix("duplicate-of") {
        let _ = rest;
        return "duplicate-of <id>".into();
    }
    let _ = stage;
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
    pub fn build(chains: &[Chain], rejects: &[Reject], metrics: &[MetricsSample]) -> Self {
        let mut s = Summary::default();
        let mut seeds = BTreeSet::new();
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
            let cat = reason_category(&r.stage, &r.reason);
            *s.by_reason_recipe
                .entry((r.stage.clone(), cat.clone(), recipe_name(r.recipe)))
                .or_default() += 1;
            *s.by_reason.entry((r.stage.clone(), cat)).or_default() += 1;
            if let Ok(c) = serde_json::from_str::<Chain>(&r.row) {
                if c.reward > 0.0 || !c.reasoning.is_empty() || !c.answer.is_empty() {
                    s.reward_rejected.push(c.reward);
                }
            }
        }
        s.seeds = seeds.len();
        let mut m: Vec<MetricsSample> = metrics
            .iter()
            .copied()
            .filter(|m| m.t.is_finite())
            .collect();
        m.sort_by(|a, b| a.t.total_cmp(&b.t));
        if let Some(first) = m.first().copied() {
            for w in m.windows(2) {
                let dt = w[1].t - w[0].t;
                if dt > 0.0 {
                    s.rates.push(Rate {
                        t: w[1].t - first.t,
                        chains_per_s: (w[1].chains - w[0].chains) / dt,
                        tokens_per_s: (w[1].tokens - w[0].tokens) / dt,
                    });
                }
            }
        }
        s
    }

    /// Reads every chain, reject and metrics file under `dir`.
    pub fn from_out_dir(dir: &Path) -> Result<Self, ReportError> {
        let files = io::scan_out_dir(dir)?;
        let chains = io::read_all_chains(&files.chains)?;
        let rejects = io::read_all_rejects(&files.rejects)?;
        let mut metrics = Vec::new();
        for p in &files.metrics {
            let text = std::fs::read_to_string(p).map_err(|source| ReportError::File {
                path: p.clone(),
                source,
            })?;
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                match serde_json::from_str::<MetricsSample>(line) {
                    Ok(sample) => metrics.push(sample),
                    Err(e) => tracing::warn!("{}: skipping bad metrics line: {e}", p.display()),
                }
            }
        }
        Ok(Self::build(&chains, &rejects, &metrics))
    }

    /// The terminal table of `cotforge stats`.
    pub fn table(&self) -> String {
        let mut out = String::new();
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
                Some(q) => row.extend(q.iter().map(|x| format!("{x:.prec$}"))),
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

/// mean, min, p10, p50, p90, max (nearest-rank), or None when empty.
pub fn quantiles(v: &[f64]) -> Option<[f64; 6]> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return None;
    }
    s.sort_by(f64::total_cmp);
    let at = |p: f64| s[((p * (s.len() - 1) as f64).round() as usize).min(s.len() - 1)];
    let mean = s.iter().sum::<f64>() / s.len() as f64;
    Some([mean, s[0], at(0.1), at(0.5), at(0.9), s[s.len() - 1]])
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
    fn reason_categories() {
        assert_eq!(
            reason_category("filter.reward", "reward 0.412 < 0.600"),
            "reward N < N"
        );
        assert_eq!(
            reason_category("dedup", "duplicate-of 9af3"),
            "duplicate-of <id>"
        );
        assert_eq!(
            reason_category("filter.verify", "answer '41' != reference '42'"),
            "answer '…' != reference '…'"
        );
    }

    #[test]
    fn quantiles_nearest_rank() {
        let v: Vec<f64> = (0..=10).map(f64::from).collect();
        assert_eq!(quantiles(&v), Some([5.0, 0.0, 1.0, 5.0, 9.0, 10.0]));
        assert_eq!(quantiles(&[]), None);
    }
}
