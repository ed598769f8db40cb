//! Night over night: every headline number of two runs side by side with its
//! change, the reward and length distributions with a two-sample
//! Kolmogorov–Smirnov test, reject reasons, and the overlap of the prompts
//! the two nights shipped. `cotforge compare OUT_A OUT_B` prints
//! [`Comparison::table`]; the report renders the same as a section; the gate
//! reads its reward drift.

use std::collections::{BTreeMap, BTreeSet};

use super::{quantiles, table, Headline, Summary};

/// A two-sample Kolmogorov–Smirnov statistic.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ks {
    /// Largest distance between the two empirical CDFs, in [0, 1].
    pub d: f64,
    /// Asymptotic p-value of D (Kolmogorov distribution with Stephens'
    /// small-sample correction); small = the distributions differ.
    pub p: f64,
    pub n_a: usize,
    pub n_b: usize,
}

/// Q_KS(λ) = 2 Σ_{k≥1} (−1)^{k−1} e^{−2k²λ²}: P(D > observed) under the null.
pub fn kolmogorov_q(lambda: f64) -> f64 {
    if !lambda.is_finite() || lambda < 1e-3 {
        return 1.0;
    }
    let a2 = -2.0 * lambda * lambda;
    let (mut fac, mut sum, mut prev) = (2.0, 0.0, 0.0);
    for k in 1..=100u32 {
        let term = fac * (a2 * f64::from(k * k)).exp();
        sum += term;
        if term.abs() <= 1e-3 * prev || term.abs() <= 1e-8 * sum {
            return sum.clamp(0.0, 1.0);
        }
        fac = -fac;
        prev = term.abs();
    }
    1.0
}

/// Two-sample KS of `a` and `b` (non-finite values ignored); None when either is empty.
pub fn ks_two_sample(a: &[f64], b: &[f64]) -> Option<Ks> {
    let sorted = |v: &[f64]| {
        let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
        s.sort_by(f64::total_cmp);
        s
    };
    let (x, y) = (sorted(a), sorted(b));
    let (n, m) = (x.len(), y.len());
    if n == 0 || m == 0 {
        return None;
    }
    let (mut i, mut j, mut d) = (0usize, 0usize, 0.0f64);
    while i < n && j < m {
        let v = x[i].min(y[j]);
        while i < n && x[i] <= v {
            i += 1;
        }
        while j < m && y[j] <= v {
            j += 1;
        }
        d = d.max((i as f64 / n as f64 - j as f64 / m as f64).abs());
    }
    let en = ((n * m) as f64 / (n + m) as f64).sqrt();
    Some(Ks {
        d,
        p: kolmogorov_q((en + 0.12 + 0.11 / en) * d),
        n_a: n,
        n_b: m,
    })
}

/// How a number is printed and its change expressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Count,
    /// A share in [0, 1]: printed as %, changes in percentage points.
    Share,
    Number,
}

/// Decimals for a number of this size: 3 below 10, 2 below 1000, else 0.
fn precision(x: f64) -> usize {
    match x.abs() {
        v if v < 10.0 => 3,
        v if v < 1000.0 => 2,
        _ => 0,
    }
}

/// One headline number of both nights.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    /// `all` or a recipe.
    pub scope: String,
    pub name: &'static str,
    pub kind: Kind,
    pub a: Option<f64>,
    pub b: Option<f64>,
}

impl Metric {
    pub fn change(&self) -> Option<f64> {
        Some(self.b? - self.a?)
    }
    fn fmt(&self, v: Option<f64>) -> String {
        match (v, self.kind) {
            (None, _) => "-".into(),
            (Some(x), Kind::Count) => format!("{x:.0}"),
            (Some(x), Kind::Share) => format!("{:.1}%", 100.0 * x),
            (Some(x), Kind::Number) => format!("{x:.prec$}", prec = precision(x)),
        }
    }
    pub fn cells(&self) -> [String; 3] {
        let change = match (self.change(), self.kind) {
            (None, _) => "-".into(),
            (Some(c), Kind::Count) => format!("{c:+.0}"),
            (Some(c), Kind::Share) => format!("{:+.1} pp", 100.0 * c),
            (Some(c), Kind::Number) => {
                let prec = precision(self.a.unwrap_or(0.0).max(self.b.unwrap_or(0.0)));
                format!("{c:+.prec$}")
            }
        };
        [self.fmt(self.a), self.fmt(self.b), change]
    }
}

/// Rejects of one (stage, reason category, recipe) in both nights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReasonDelta {
    pub stage: String,
    pub reason: String,
    pub recipe: String,
    pub a: usize,
    pub b: usize,
}

/// Distinct shipped prompts of both nights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Overlap {
    pub a: usize,
    pub b: usize,
    pub both: usize,
}

impl Overlap {
    /// Share of night B's prompts that night A shipped too.
    pub fn share_of_b(&self) -> Option<f64> {
        (self.b > 0).then(|| self.both as f64 / self.b as f64)
    }
    pub fn jaccard(&self) -> Option<f64> {
        let union = self.a + self.b - self.both;
        (union > 0).then(|| self.both as f64 / union as f64)
    }
}

/// Night A (earlier) against night B.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub a_label: String,
    pub b_label: String,
    pub metrics: Vec<Metric>,
    /// Rewards of shipped chains.
    pub reward: Option<Ks>,
    /// Tokens per shipped chain.
    pub tokens: Option<Ks>,
    pub reasons: Vec<ReasonDelta>,
    pub overlap: Overlap,
    pub reward_a: Vec<f64>,
    pub reward_b: Vec<f64>,
    pub tokens_a: Vec<f64>,
    pub tokens_b: Vec<f64>,
}

fn headline_metrics(scope: &str, a: Option<&Headline>, b: Option<&Headline>) -> Vec<Metric> {
    type Get = fn(&Headline) -> Option<f64>;
    let rows: [(&'static str, Kind, Get); 9] = [
        ("shipped chains", Kind::Count, |h| Some(h.shipped as f64)),
        ("rejected rows", Kind::Count, |h| Some(h.rejected as f64)),
        ("reject share", Kind::Share, Headline::reject_share),
        ("verified share", Kind::Share, Headline::verified_share),
        ("seed coverage", Kind::Share, Headline::coverage),
        ("chains per seed", Kind::Number, Headline::chains_per_seed),
        ("tokens per chain (mean)", Kind::Number, |h| h.tokens_mean),
        ("tokens per chain (p50)", Kind::Number, |h| h.tokens_p50),
        ("reward (mean)", Kind::Number, |h| h.reward_mean),
    ];
    rows.into_iter()
        .map(|(name, kind, get)| Metric {
            scope: scope.to_string(),
            name,
            kind,
            a: a.and_then(get),
            b: b.and_then(get),
        })
        .collect()
}

/// Compares night `a` (the earlier one) with night `b`.
pub fn compare(a: &Summary, b: &Summary, a_label: &str, b_label: &str) -> Comparison {
    let mut metrics = headline_metrics("all", Some(&a.overall), Some(&b.overall));
    let recipes: BTreeSet<&String> = a.headline.keys().chain(b.headline.keys()).collect();
    for r in recipes {
        metrics.extend(headline_metrics(r, a.headline.get(r), b.headline.get(r)));
    }
    let tp = |s: &Summary, f: fn(&super::Throughput) -> f64| s.throughput.as_ref().map(f);
    metrics.push(Metric {
        scope: "all".into(),
        name: "throughput (chains/s per worker)",
        kind: Kind::Number,
        a: tp(a, super::Throughput::chains_per_s),
        b: tp(b, super::Throughput::chains_per_s),
    });
    metrics.push(Metric {
        scope: "all".into(),
        name: "throughput (tokens/s per worker)",
        kind: Kind::Number,
        a: tp(a, super::Throughput::tokens_per_s),
        b: tp(b, super::Throughput::tokens_per_s),
    });
    let mut reasons: BTreeMap<(String, String, String), (usize, usize)> = BTreeMap::new();
    for (k, n) in &a.by_reason_recipe {
        reasons.entry(k.clone()).or_default().0 += n;
    }
    for (k, n) in &b.by_reason_recipe {
        reasons.entry(k.clone()).or_default().1 += n;
    }
    let mut reasons: Vec<ReasonDelta> = reasons
        .into_iter()
        .map(|((stage, reason, recipe), (na, nb))| ReasonDelta {
            stage,
            reason,
            recipe,
            a: na,
            b: nb,
        })
        .collect();
    reasons.sort_by(|x, y| {
        (y.a.max(y.b))
            .cmp(&x.a.max(x.b))
            .then_with(|| (&x.stage, &x.reason, &x.recipe).cmp(&(&y.stage, &y.reason, &y.recipe)))
    });
    Comparison {
        a_label: a_label.to_string(),
        b_label: b_label.to_string(),
        metrics,
        reward: ks_two_sample(&a.reward_accepted, &b.reward_accepted),
        tokens: ks_two_sample(&a.tokens, &b.tokens),
        reasons,
        overlap: Overlap {
            a: a.prompts.len(),
            b: b.prompts.len(),
            both: a.prompts.intersection(&b.prompts).count(),
        },
        reward_a: a.reward_accepted.clone(),
        reward_b: b.reward_accepted.clone(),
        tokens_a: a.tokens.clone(),
        tokens_b: b.tokens.clone(),
    }
}

/// Column headers of the four comparison tables (terminal and report).
pub const METRIC_HEADERS: [&str; 5] = ["metric", "scope", "A", "B", "change"];
pub const KS_HEADERS: [&str; 7] = [
    "distribution",
    "n A",
    "n B",
    "mean A",
    "mean B",
    "KS D",
    "p-value",
];
pub const REASON_HEADERS: [&str; 6] = ["stage", "reason", "recipe", "A", "B", "change"];
pub const OVERLAP_HEADERS: [&str; 5] = [
    "shipped prompts A",
    "B",
    "in both",
    "share of B shipped by A",
    "Jaccard",
];

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{x:.prec$}"))
}

impl Comparison {
    /// Rows of the distribution table: name, n A, n B, mean A, mean B, D, p.
    pub fn distribution_rows(&self) -> Vec<Vec<String>> {
        let mean = |v: &[f64]| quantiles(v).map(|q| q.mean);
        [
            (
                "reward (shipped)",
                &self.reward,
                &self.reward_a,
                &self.reward_b,
                3,
            ),
            (
                "tokens per shipped chain",
                &self.tokens,
                &self.tokens_a,
                &self.tokens_b,
                0,
            ),
        ]
        .into_iter()
        .map(|(name, ks, va, vb, prec)| {
            vec![
                name.to_string(),
                va.len().to_string(),
                vb.len().to_string(),
                opt(mean(va), prec),
                opt(mean(vb), prec),
                opt(ks.map(|k| k.d), 3),
                ks.map_or_else(|| "-".into(), |k| format!("{:.3e}", k.p)),
            ]
        })
        .collect()
    }

    /// Rows of the reject-reason table: stage, reason, recipe, A, B, change.
    pub fn reason_rows(&self) -> Vec<Vec<String>> {
        self.reasons
            .iter()
            .map(|r| {
                vec![
                    r.stage.clone(),
                    r.reason.clone(),
                    r.recipe.clone(),
                    r.a.to_string(),
                    r.b.to_string(),
                    format!("{:+}", r.b as i64 - r.a as i64),
                ]
            })
            .collect()
    }

    /// The overlap row: prompts A, prompts B, in both, share of B shipped by A, Jaccard.
    pub fn overlap_row(&self) -> Vec<String> {
        let pct = |v: Option<f64>| v.map_or_else(|| "-".into(), |x| format!("{:.1}%", 100.0 * x));
        let o = &self.overlap;
        vec![
            o.a.to_string(),
            o.b.to_string(),
            o.both.to_string(),
            pct(o.share_of_b()),
            pct(o.jaccard()),
        ]
    }

    /// Rows of the headline table: metric, scope, A, B, change.
    pub fn metric_rows(&self) -> Vec<Vec<String>> {
        self.metrics
            .iter()
            .map(|m| {
                let [a, b, c] = m.cells();
                vec![m.name.to_string(), m.scope.clone(), a, b, c]
            })
            .collect()
    }

    /// The terminal tables of `cotforge compare`.
    pub fn table(&self) -> String {
        let mut out = format!("A = {}\nB = {}\n\n", self.a_label, self.b_label);
        out.push_str(&table(&METRIC_HEADERS, &self.metric_rows()));
        out.push('\n');
        out.push_str(&table(&KS_HEADERS, &self.distribution_rows()));
        out.push('\n');
        let reasons = self.reason_rows();
        if reasons.is_empty() {
            out.push_str("reject reasons: none in either night\n");
        } else {
            out.push_str(&table(&REASON_HEADERS, &reasons));
        }
        out.push('\n');
        out.push_str(&table(&OVERLAP_HEADERS, &[self.overlap_row()]));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kolmogorov_distribution_known_values() {
        // Tabulated: Q(1.0) = 0.26999967, Q(1.36) ≈ 0.0494, Q(0.5) ≈ 0.9639.
        assert!((kolmogorov_q(1.0) - 0.269_999_67).abs() < 1e-6);
        assert!((kolmogorov_q(1.36) - 0.0494).abs() < 1e-3);
        assert!((kolmogorov_q(0.5) - 0.9639).abs() < 1e-3);
        assert_eq!(kolmogorov_q(0.0), 1.0);
        assert!(kolmogorov_q(3.0) < 1e-7);
    }

    #[test]
    fn ks_of_same_disjoint_and_shifted_samples() {
        let a: Vec<f64> = (0..200).map(|i| f64::from(i) / 200.0).collect();
        let same = ks_two_sample(&a, &a).unwrap();
        assert_eq!(same.d, 0.0);
        assert_eq!(same.p, 1.0);
        let b: Vec<f64> = a.iter().map(|x| x + 2.0).collect();
        let apart = ks_two_sample(&a, &b).unwrap();
        assert_eq!(apart.d, 1.0);
        assert!(apart.p < 1e-30);
        // Shifted by a quarter of the range (on the grid, so exactly): D = 0.25.
        let c: Vec<f64> = (50..250).map(|i| f64::from(i) / 200.0).collect();
        let shifted = ks_two_sample(&a, &c).unwrap();
        assert!((shifted.d - 0.25).abs() < 1e-12, "{}", shifted.d);
        assert!(shifted.p < 1e-4 && shifted.p > 0.0);
        // Ties across the samples are one step of both CDFs.
        let t = ks_two_sample(&[1.0, 1.0, 2.0], &[1.0, 2.0, 2.0]).unwrap();
        assert!((t.d - 1.0 / 3.0).abs() < 1e-12);
        assert!(ks_two_sample(&[], &a).is_none());
    }

    #[test]
    fn metric_changes_and_formats() {
        let m = Metric {
            scope: "all".into(),
            name: "reject share",
            kind: Kind::Share,
            a: Some(0.25),
            b: Some(0.5),
        };
        assert_eq!(
            m.cells(),
            ["25.0%".to_string(), "50.0%".into(), "+25.0 pp".into()]
        );
        let o = Overlap {
            a: 10,
            b: 4,
            both: 2,
        };
        assert_eq!(o.share_of_b(), Some(0.5));
        assert_eq!(o.jaccard(), Some(2.0 / 12.0));
    }
}
