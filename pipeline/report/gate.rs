//! The hand-off gate of `finalize` (`[gate]` in the job): bounds on the
//! night's numbers and its drift from the previous night. When a bound is
//! broken, finalize writes `final/GATE_FAILED` (the reasons, one a line),
//! removes `final/SHIPPABLE`, and the command exits non-zero, so a scheduler
//! stops the hand-off; otherwise it writes `final/SHIPPABLE` (the checks) and
//! removes `final/GATE_FAILED`. Without a `[gate]` section every finalized
//! output is shippable.
//!
//! Markers are switched so that no state claims shippable when it should not:
//! the stale marker is removed before the new one is committed, and a crash
//! in between leaves neither (not shippable).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::compare::Comparison;
use super::{ReportError, Summary};
use crate::store::parquet_io::{commit_bytes, fsync_dir};

/// Marker of an output that passed the gate (or had none).
pub const SHIPPABLE: &str = "SHIPPABLE";
/// Marker of an output that broke a bound; holds the reasons.
pub const GATE_FAILED: &str = "GATE_FAILED";

/// `[gate]`: every bound is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateConfig {
    /// Least share of shipped chains verified against their reference (among those with one).
    pub min_verified_share: Option<f64>,
    /// Largest share of rejected rows among shipped + rejected rows.
    pub max_reject_share: Option<f64>,
    /// Largest two-sample KS D between this night's and the previous night's shipped rewards.
    pub max_drift: Option<f64>,
    /// The previous night's output directory (needed by `max_drift`; the
    /// report then gains the night-over-night section).
    pub previous: Option<PathBuf>,
}

impl GateConfig {
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("min_verified_share", self.min_verified_share),
            ("max_reject_share", self.max_reject_share),
            ("max_drift", self.max_drift),
        ] {
            if let Some(x) = v {
                if !(0.0..=1.0).contains(&x) {
                    return Err(format!("{name} = {x} must be in [0, 1]"));
                }
            }
        }
        if self.max_drift.is_some() && self.previous.is_none() {
            return Err("max_drift needs previous = the previous night's output directory".into());
        }
        Ok(())
    }
}

/// One bound and what the night showed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    pub name: &'static str,
    /// `>= 0.8`, `<= 0.5`.
    pub bound: String,
    pub value: Option<f64>,
    pub passed: bool,
    pub note: String,
}

impl Check {
    pub fn line(&self) -> String {
        let v = self
            .value
            .map_or_else(|| "-".to_string(), |v| format!("{v:.4}"));
        let verdict = if self.passed { "ok" } else { "FAILED" };
        let mut s = format!("{verdict}: {} = {v} (bound {})", self.name, self.bound);
        if !self.note.is_empty() {
            s.push_str(&format!("; {}", self.note));
        }
        s
    }
}

/// The gate's verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GateOutcome {
    pub passed: bool,
    pub checks: Vec<Check>,
}

impl GateOutcome {
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| !c.passed)
    }
    pub fn text(&self) -> String {
        let mut s = String::new();
        for c in &self.checks {
            s.push_str(&c.line());
            s.push('\n');
        }
        if self.checks.is_empty() {
            s.push_str("no [gate] bounds\n");
        }
        s
    }
}

/// Checks `summary` (and, for drift, `cmp` against the previous night).
/// `previous_missing`: the configured previous output does not exist (first
/// night): drift is then not checked, and says so.
pub fn evaluate(
    cfg: &GateConfig,
    summary: &Summary,
    cmp: Option<&Comparison>,
    previous_missing: Option<&Path>,
) -> GateOutcome {
    let mut checks = Vec::new();
    if let Some(min) = cfg.min_verified_share {
        let v = summary.overall.verified_share();
        checks.push(Check {
            name: "verified share",
            bound: format!(">= {min}"),
            value: v,
            passed: v.is_some_and(|v| v >= min),
            note: match v {
                Some(_) => format!(
                    "{} of {} shipped chains with a reference",
                    summary.overall.verified, summary.overall.checked
                ),
                None => "no shipped chain has a reference answer to verify".into(),
            },
        });
    }
    if let Some(max) = cfg.max_reject_share {
        let v = summary.overall.reject_share();
        checks.push(Check {
            name: "reject share",
            bound: format!("<= {max}"),
            value: v,
            passed: v.is_some_and(|v| v <= max),
            note: match v {
                Some(_) => {
                    let h = &summary.overall;
                    let failed = h.rejected - h.not_shipped;
                    format!(
                        "{failed} rejected of {} rows ({} more held back by the ship policy, not counted)",
                        failed + h.shipped,
                        h.not_shipped
                    )
                }
                None => "the night has no rows".into(),
            },
        });
    }
    if let Some(max) = cfg.max_drift {
        let ks = cmp.and_then(|c| c.reward);
        let (passed, note) = match (previous_missing, ks) {
            (Some(p), _) => (
                true,
                format!("not checked: no previous output at {}", p.display()),
            ),
            (None, Some(k)) => (
                k.d <= max,
                format!(
                    "KS D of shipped rewards vs the previous night, p = {:.3e}, n = {} vs {}",
                    k.p, k.n_b, k.n_a
                ),
            ),
            (None, None) => (
                false,
                "one of the nights shipped no chain: drift cannot be measured".into(),
            ),
        };
        checks.push(Check {
            name: "reward drift",
            bound: format!("<= {max}"),
            value: ks.map(|k| k.d),
            passed,
            note,
        });
    }
    GateOutcome {
        passed: checks.iter().all(|c| c.passed),
        checks,
    }
}

fn remove(path: &Path) -> Result<(), ReportError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ReportError::File {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Switches the markers in `final_dir` to `outcome` (None: no gate, shippable).
pub fn write_markers(final_dir: &Path, outcome: Option<&GateOutcome>) -> Result<(), ReportError> {
    let passed = outcome.is_none_or(|o| o.passed);
    let text = outcome.map_or_else(|| "no [gate] section\n".to_string(), GateOutcome::text);
    let (stale, fresh) = if passed {
        (GATE_FAILED, SHIPPABLE)
    } else {
        (SHIPPABLE, GATE_FAILED)
    };
    remove(&final_dir.join(stale))?;
    fsync_dir(final_dir)?;
    commit_bytes(&final_dir.join(fresh), text.as_bytes())?;
    Ok(())
}
