//! Night over night on the scripted engine: a good second night passes the
//! `[gate]` (SHIPPABLE, exit 0, identical Parquet), a night degraded on
//! purpose (filters that reject most chains) breaks it (GATE_FAILED with the
//! reasons, no SHIPPABLE, exit 3), loosening the bounds makes it shippable
//! again, and `cotforge compare` shows the changes and the KS statistic.

mod common;

use std::path::Path;
use std::process::Command;

use cotforge::report::compare::compare;
use cotforge::report::gate::{GATE_FAILED, SHIPPABLE};
use cotforge::report::Summary;

const BIN: &str = env!("CARGO_BIN_EXE_cotforge");

fn gate(previous: &Path, bounds: &str) -> String {
    format!(
        "\n[gate]\n{bounds}\nprevious = {:?}\n",
        previous.display().to_string()
    )
}

/// Runs cotforge; returns (exit code, stdout + stderr).
fn run(args: &[&str]) -> (Option<i32>, String) {
    let o = Command::new(BIN).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.code(), text)
}

fn marker(out: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(out.join("final").join(name)).ok()
}

/// The KS D printed for `name` in a compare table.
fn ks_d(table: &str, name: &str) -> f64 {
    let line = table
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no {name} row:\n{table}"));
    let cells: Vec<&str> = line[name.len()..].split_whitespace().collect();
    cells[cells.len() - 2].parse().unwrap()
}

#[test]
fn a_degraded_night_is_stopped_by_the_gate_and_a_good_one_ships() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (job_a, a) = common::scripted_job(d, "a", common::ship_all);
    common::run_ok(BIN, &["run", job_a.to_str().unwrap(), "--no-progress"]);
    assert!(marker(&a, SHIPPABLE).is_some(), "no [gate]: shippable");

    let bounds = "max_reject_share = 0.5\nmax_drift = 0.2";
    // A good night: same job, gated against night A.
    let (job_b, b) = common::scripted_job(d, "b", |t| common::ship_all(t) + &gate(&a, bounds));
    let (code, text) = run(&["run", job_b.to_str().unwrap(), "--no-progress"]);
    assert_eq!(code, Some(0), "{text}");
    let ok = marker(&b, SHIPPABLE).expect("SHIPPABLE");
    assert!(
        ok.contains("ok: reject share") && ok.contains("ok: reward drift"),
        "{ok}"
    );
    assert!(marker(&b, GATE_FAILED).is_none());
    // The gate reads the data; it does not change it.
    assert_eq!(
        std::fs::read(a.join("final/chains.parquet")).unwrap(),
        std::fs::read(b.join("final/chains.parquet")).unwrap()
    );
    let report = std::fs::read_to_string(b.join("final/report.html")).unwrap();
    assert!(report.contains("id=\"night-over-night\"") && report.contains("class=\"gate pass\""));
    assert!(report.contains("id=\"plot-compare-reward\""));
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(b.join("final/run-metrics.json")).unwrap())
            .unwrap();
    let shipped = cotforge::report::io::read_chains(&b.join("final/chains.parquet"))
        .unwrap()
        .len();
    assert_eq!(m["overall"]["shipped"], shipped);
    assert_eq!(m["gate"]["passed"], true);
    assert!(m["throughput"]["chains_per_second"].as_f64().unwrap() > 0.0);

    // A degraded night: reward filters that reject most chains.
    let degrade = |t: String| {
        assert!(t.contains("min_reward = 0.2"));
        t.replace("min_reward = 0.2", "min_reward = 0.31")
    };
    let (job_c, c) =
        common::scripted_job(d, "c", |t| degrade(common::ship_all(t)) + &gate(&a, bounds));
    let (code, text) = run(&["run", job_c.to_str().unwrap(), "--no-progress"]);
    assert_eq!(
        code,
        Some(3),
        "the gate did not stop the degraded night:\n{text}"
    );
    assert!(text.contains("gate FAILED"), "{text}");
    let failed = marker(&c, GATE_FAILED).expect("GATE_FAILED");
    assert!(failed.contains("FAILED: reject share"), "{failed}");
    assert!(failed.contains("FAILED: reward drift"), "{failed}");
    assert!(
        marker(&c, SHIPPABLE).is_none(),
        "a failed night is marked shippable"
    );
    let report = std::fs::read_to_string(c.join("final/report.html")).unwrap();
    assert!(report.contains("class=\"gate fail\""));

    // A verified-share bound the scripted model (always wrong) cannot meet.
    let (job_c2, _) = common::scripted_job(d, "c", |t| {
        degrade(common::ship_all(t))
            + &gate(
                &a,
                "max_reject_share = 0.99\nmax_drift = 1.0\nmin_verified_share = 0.5",
            )
    });
    assert_eq!(job_c2, job_c);
    let (code, text) = run(&["finalize", job_c.to_str().unwrap()]);
    assert_eq!(code, Some(3), "{text}");
    let failed = marker(&c, GATE_FAILED).unwrap();
    assert!(failed.contains("FAILED: verified share"), "{failed}");
    assert!(failed.contains("ok: reject share") && failed.contains("ok: reward drift"));

    // Loosened bounds: the same output becomes shippable, the failure marker goes.
    common::scripted_job(d, "c", |t| {
        degrade(common::ship_all(t)) + &gate(&a, "max_reject_share = 0.99\nmax_drift = 1.0")
    });
    let (code, text) = run(&["finalize", job_c.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{text}");
    assert!(marker(&c, SHIPPABLE).is_some() && marker(&c, GATE_FAILED).is_none());

    // The first night has no previous output: drift is not checked, and says so.
    let missing = d.join("no-such-night");
    common::scripted_job(d, "b", |t| common::ship_all(t) + &gate(&missing, bounds));
    let (code, text) = run(&["finalize", job_b.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{text}");
    assert!(marker(&b, SHIPPABLE)
        .unwrap()
        .contains("not checked: no previous output"));

    // compare: the degraded night's changes and distributions.
    let (code, ac) = run(&["compare", a.to_str().unwrap(), c.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{ac}");
    let reject_row = ac
        .lines()
        .find(|l| l.starts_with("reject share") && l.contains(" all "))
        .unwrap();
    assert!(
        reject_row.contains("pp") && reject_row.contains('+'),
        "{reject_row}"
    );
    assert!(ks_d(&ac, "reward (shipped)") > 0.3, "{ac}");
    assert!(ac.contains("filter.reward") && ac.contains("share of B shipped by A"));
    let (_, ab) = run(&["compare", a.to_str().unwrap(), b.to_str().unwrap()]);
    assert_eq!(ks_d(&ab, "reward (shipped)"), 0.0, "{ab}");
    assert_eq!(ks_d(&ab, "tokens per shipped chain"), 0.0, "{ab}");
    let overlap = ab.lines().last().unwrap();
    assert!(overlap.contains("100.0%"), "{ab}");

    // The library agrees with the table.
    let (sa, sc) = (
        Summary::from_out_dir(&a).unwrap(),
        Summary::from_out_dir(&c).unwrap(),
    );
    let cmp = compare(&sa, &sc, "a", "c");
    let ks = cmp.reward.unwrap();
    assert!(ks.p < 1e-3, "{ks:?}");
    assert!((ks.d - ks_d(&ac, "reward (shipped)")).abs() < 1e-3);
    assert!(sc.overall.reject_share().unwrap() > 0.5);
    assert!(sa.overall.reject_share().unwrap() < 0.5);
    assert!(cmp.overlap.both > 0 && cmp.overlap.both <= cmp.overlap.b);
}

#[test]
fn bad_gate_and_decontaminate_sections_point_at_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("\n[gate]\nmax_drift = 0.2\n", vec!["gate", "previous"]),
        (
            "\n[gate]\nmax_reject_share = 1.5\n",
            vec!["gate", "max_reject_share", "[0, 1]"],
        ),
        ("\n[gate]\nmax_rejects = 0.5\n", vec!["max_rejects"]),
        (
            "\n[decontaminate]\nagainst = [\"/nowhere/bench.jsonl\"]\n",
            vec!["decontaminate", "/nowhere/bench.jsonl"],
        ),
        (
            "\n[decontaminate]\nagainst = []\n",
            vec!["decontaminate", "against"],
        ),
    ];
    for (extra, needles) in cases {
        let (job, out) = common::scripted_job(dir.path(), "bad", |t| t + extra);
        let (code, text) = run(&["run", job.to_str().unwrap(), "--no-progress"]);
        assert_ne!(code, Some(0), "{extra}");
        assert!(!out.exists(), "a bad job wrote output");
        for n in needles {
            assert!(text.contains(n), "{extra}: expected {n:?} in {text}");
        }
    }
}
