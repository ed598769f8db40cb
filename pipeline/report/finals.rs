//! What `finalize` writes beside the final chains: `final/stats.txt`,
//! `final/report.html` (with the data viewer, and the night-over-night
//! section when `[gate] previous` is set), `final/run-metrics.json` (the
//! headline numbers, throughput and gate verdict for schedulers; it holds
//! wall-clock figures, which never enter the Parquet outputs or the export),
//! and last the gate's markers ([`super::gate`]).

use std::path::{Path, PathBuf};

use super::compare::{compare, Comparison};
use super::gate::{self, GateConfig, GateOutcome};
use super::html::Page;
use super::viewer::{ViewerData, ViewerOptions};
use super::{read_metrics_files, Headline, ReportError, Summary};
use crate::record::{Chain, Reject};
use crate::store::parquet_io::commit_bytes;

/// File of a finalized output with the run's numbers (JSON).
pub const RUN_METRICS: &str = "run-metrics.json";

/// The `metrics.jsonl` files of an output, sorted (one per worker run).
pub fn metrics_files(out: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = walkdir::WalkDir::new(out.join("metrics"))
        .sort_by_file_name()
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file() && e.file_name() == "metrics.jsonl")
        .map(|e| e.path().to_path_buf())
        .collect();
    v.sort();
    v
}

/// The summary of `previous` compared with `summary`, or the path when there
/// is no output there yet (the first night).
pub fn against_previous<'p>(
    summary: &Summary,
    previous: &'p Path,
    label: &str,
) -> Result<(Option<Comparison>, Option<&'p Path>), ReportError> {
    if !previous.is_dir() {
        return Ok((None, Some(previous)));
    }
    let prev = Summary::from_out_dir(previous)?;
    Ok((
        Some(compare(
            &prev,
            summary,
            &previous.display().to_string(),
            label,
        )),
        None,
    ))
}

/// The report files of a finalized output, computed once.
#[derive(Debug, Clone)]
pub struct FinalReport {
    pub summary: Summary,
    pub comparison: Option<Comparison>,
    pub gate: Option<GateOutcome>,
    pub stats: String,
    pub html: String,
    pub run_metrics: String,
}

fn headline_json(h: &Headline) -> serde_json::Value {
    serde_json::json!({
        "shipped": h.shipped,
        "rejected": h.rejected,
        "not_shipped": h.not_shipped,
        "reject_share": h.reject_share(),
        "checked": h.checked,
        "verified": h.verified,
        "verified_share": h.verified_share(),
        "seeds": h.seeds,
        "covered": h.covered,
        "seed_coverage": h.coverage(),
        "chains_per_seed": h.chains_per_seed(),
        "tokens_per_chain_mean": h.tokens_mean,
        "tokens_per_chain_p50": h.tokens_p50,
        "reward_mean": h.reward_mean,
    })
}

impl FinalReport {
    /// Numbers, report and gate verdict of the output `out` whose final rows
    /// are `chains` and `rejects` (every stage's).
    pub fn build(
        out: &Path,
        chains: &[Chain],
        rejects: &[Reject],
        title: &str,
        gate_cfg: Option<&GateConfig>,
    ) -> Result<Self, ReportError> {
        let metrics = read_metrics_files(&metrics_files(out))?;
        let summary = Summary::build_streams(chains, rejects, &metrics);
        let (comparison, missing) = match gate_cfg.and_then(|g| g.previous.as_deref()) {
            Some(p) => against_previous(&summary, p, &out.display().to_string())?,
            None => (None, None),
        };
        let gate = gate_cfg.map(|g| gate::evaluate(g, &summary, comparison.as_ref(), missing));
        let viewer = ViewerData::build(chains, rejects, Some(out), &ViewerOptions::default());
        let html = Page {
            summary: &summary,
            title,
            viewer: Some(&viewer),
            comparison: comparison.as_ref(),
            gate: gate.as_ref(),
        }
        .render();
        let mut stats = summary.table();
        if let Some(c) = &comparison {
            stats.push_str("\nnight over night\n");
            stats.push_str(&c.table());
        }
        if let Some(g) = &gate {
            stats.push_str(&format!(
                "\ngate: {}\n{}",
                if g.passed { "passed" } else { "FAILED" },
                g.text()
            ));
        }
        let run_metrics = serde_json::json!({
            "format": "cotforge-run-metrics/1",
            "overall": headline_json(&summary.overall),
            "recipes": summary
                .headline
                .iter()
                .map(|(k, h)| (k.clone(), headline_json(h)))
                .collect::<serde_json::Map<_, _>>(),
            "throughput": summary.throughput.as_ref().map(|t| serde_json::json!({
                "worker_runs": t.streams,
                "samples": t.samples,
                "span_seconds": t.span_seconds,
                "busy_seconds": t.busy_seconds,
                "chains": t.chains,
                "tokens": t.tokens,
                "chains_per_second": t.chains_per_s(),
                "tokens_per_second": t.tokens_per_s(),
            })),
            "gate": gate.as_ref(),
        });
        Ok(Self {
            run_metrics: serde_json::to_string_pretty(&run_metrics).unwrap_or_default() + "\n",
            summary,
            comparison,
            gate,
            stats,
            html,
        })
    }

    /// Commits `stats.txt`, `report.html` and `run-metrics.json` into
    /// `final_dir`; returns the report's path.
    pub fn write(&self, final_dir: &Path) -> Result<PathBuf, ReportError> {
        commit_bytes(&final_dir.join("stats.txt"), self.stats.as_bytes())?;
        let report = final_dir.join("report.html");
        commit_bytes(&report, self.html.as_bytes())?;
        commit_bytes(&final_dir.join(RUN_METRICS), self.run_metrics.as_bytes())?;
        Ok(report)
    }

    /// The gate's markers (last step of finalize); returns the verdict.
    pub fn mark(&self, final_dir: &Path) -> Result<Option<GateOutcome>, ReportError> {
        gate::write_markers(final_dir, self.gate.as_ref())?;
        Ok(self.gate.clone())
    }
}
