//! `cotforge stats` and `cotforge report` over an output directory, and the
//! HTML rendered by headless Chromium: the plots must be in the rendered DOM.
//!
//! Needs `chromium` (Debian package) on PATH or in COTFORGE_CHROMIUM; fails
//! when missing unless COTFORGE_SKIP_BROWSER=1 (then the browser half is
//! skipped, and says so).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use cotforge::record::{Chain, Recipe, Reject};
use cotforge::report::io::{write_chains, write_rejects};
use cotforge::report::{html, Summary};
use cotforge::stages::reject_for;

fn chain(i: usize, reward: f64) -> Chain {
    Chain {
        id: format!("c{i:04}"),
        seed_id: format!("gsm8k-{}", i / 2),
        recipe: Some(if i.is_multiple_of(4) {
            Recipe::OpenO1
        } else {
            Recipe::MarcoCot
        }),
        prompt: format!("q{i}"),
        reasoning: format!("step one for {i}\n\nstep two"),
        answer: format!("{i}"),
        reward,
        tokens: 50 + (i as u32 * 37) % 400,
        reflections: i.is_multiple_of(5) as u32 + i.is_multiple_of(11) as u32,
        ..Default::default()
    }
}

fn make_out(dir: &Path) {
    std::fs::create_dir_all(dir.join("marco_cot")).expect("mkdir");
    let accepted: Vec<Chain> = (0..120)
        .map(|i| chain(i, 0.62 + (i % 37) as f64 / 100.0))
        .collect();
    write_chains(&dir.join("marco_cot/shard-00000.parquet"), &accepted).expect("write");
    let mut rejects: Vec<Reject> = Vec::new();
    for i in 200..240 {
        let c = chain(i, 0.2 + (i % 40) as f64 / 100.0);
        let r = if i.is_multiple_of(2) {
            format!("reward {:.3} < 0.600", c.reward)
        } else {
            format!("answer '{}' != reference '7'", i)
        };
        let stage = if i.is_multiple_of(2) {
            "filter.reward"
        } else {
            "filter.verify"
        };
        rejects.push(reject_for(&c, stage, r));
    }
    for i in 300..310 {
        rejects.push(reject_for(
            &chain(i, 0.8),
            "dedup",
            format!("duplicate-of c{:04}", i - 300),
        ));
    }
    rejects.push(Reject {
        seed_id: "gsm8k-bad".into(),
        chain_id: None,
        recipe: Some(Recipe::MarcoCot),
        stage: "ingest".into(),
        reason: "empty prompt".into(),
        row: "{\"id\":\"gsm8k-bad\"}".into(),
    });
    write_rejects(&dir.join("marco_cot/rejected-00000.parquet"), &rejects).expect("write");
    let mut metrics = String::new();
    for k in 0..12u32 {
        let t = 1_764_000_000.0 + f64::from(k) * 30.0;
        let chains = f64::from(k * k) * 3.0;
        metrics.push_str(&format!(
            "{{\"t\": {t}, \"chains\": {chains}, \"tokens\": {}}}\n",
            chains * 180.0
        ));
    }
    std::fs::write(dir.join("metrics.jsonl"), metrics).expect("metrics");
}

fn run_cli(args: &[&str]) {
    let cli = cotforge::cli::Cli::try_parse_from(args).expect("arguments parse");
    let r = match cli.command {
        cotforge::cli::Command::Stats(a) => cotforge::cli::export::run_stats(a),
        cotforge::cli::Command::Report(a) => cotforge::cli::export::run_report(a),
        other => panic!("unexpected {other:?}"),
    };
    r.expect("command runs");
}

#[test]
fn stats_counts_and_table() {
    let tmp = tempfile::tempdir().expect("tmp");
    make_out(tmp.path());
    let s = Summary::from_out_dir(tmp.path()).expect("summary");
    assert_eq!(s.accepted, 120);
    assert_eq!(s.rejected, 51);
    assert_eq!(s.seeds, 60 + 20 + 5 + 1);
    assert_eq!(
        s.by_reason[&("filter.reward".to_string(), "reward N < N".to_string())],
        20
    );
    assert_eq!(
        s.by_reason[&(
            "filter.verify".to_string(),
            "answer '…' != reference '…'".to_string()
        )],
        20
    );
    assert_eq!(
        s.by_reason[&("dedup".to_string(), "duplicate-of <id>".to_string())],
        10
    );
    assert_eq!(
        s.reward_rejected.len(),
        50,
        "ingest reject has no chain reward"
    );
    assert_eq!(s.rates.len(), 11);
    assert!((s.rates[0].chains_per_s - 0.1).abs() < 1e-9);
    let t = s.table();
    for needle in [
        "seeds",
        "accepted",
        "120 (70.2%)",
        "filter.verify",
        "duplicate-of <id>",
        "reward (accepted)",
        "tokens per chain",
        "reflections per chain",
        "chains/s",
    ] {
        assert!(t.contains(needle), "missing {needle}:\n{t}");
    }
    let path = tmp.path().to_string_lossy().into_owned();
    run_cli(&["cotforge", "stats", &path]);
}

fn chromium() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("COTFORGE_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    for name in [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ] {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

fn dump_dom(browser: &Path, file: &Path) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", file.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let start = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if start.elapsed() > Duration::from_secs(180) {
            let _ = child.kill();
            panic!("chromium did not finish in 180 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("output");
    assert!(out.status.success(), "chromium failed: {:?}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn html_report_renders_plots_in_chromium() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("out");
    make_out(&out);
    let file = tmp.path().join("report.html");
    run_cli(&[
        "cotforge",
        "report",
        &out.to_string_lossy(),
        "--html",
        &file.to_string_lossy(),
    ]);
    let page = std::fs::read_to_string(&file).expect("html");
    if let Ok(keep) = std::env::var("COTFORGE_KEEP_REPORT") {
        std::fs::copy(&file, keep).expect("keep report");
    }
    // self-contained: no scripts, no external resources
    assert!(!page.contains("<script"), "report must not need JS");
    assert!(
        !page.contains("src=") && !page.contains("<link"),
        "report must not load assets"
    );
    let without_ns = page.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
    assert!(!without_ns.contains("http://") && !without_ns.contains("https://"));
    for id in [
        "plot-reward",
        "plot-reasons",
        "plot-tokens",
        "plot-reflections",
        "plot-throughput",
    ] {
        assert!(page.contains(&format!("id=\"{id}\"")), "missing {id}");
    }

    let skip = std::env::var("COTFORGE_SKIP_BROWSER").is_ok_and(|v| v == "1");
    let Some(browser) = chromium() else {
        if skip {
            eprintln!(
                "SKIPPED browser rendering check (COTFORGE_SKIP_BROWSER=1): chromium not found"
            );
            return;
        }
        panic!("the HTML report test needs chromium (apt-get install -y chromium) on PATH or COTFORGE_CHROMIUM; set COTFORGE_SKIP_BROWSER=1 to skip");
    };
    let dom = dump_dom(&browser, &file);
    for id in [
        "plot-reward",
        "plot-reasons",
        "plot-tokens",
        "plot-reflections",
        "plot-throughput",
        "plot-throughput-tokens",
    ] {
        assert!(
            dom.contains(&format!("id=\"{id}\"")),
            "rendered DOM lacks {id}"
        );
    }
    // reward: 20 bins x 2 series; reasons: 4 bars; reflections: 3 bars (0, 1, 2)
    let bars = dom.matches("class=\"bar\"").count();
    assert_eq!(bars, 40 + 4 + 20 + 3, "bars in rendered DOM");
    assert!(dom.contains("class=\"line\""));
    assert_eq!(dom.matches("class=\"point\"").count(), 22);
}

#[test]
fn report_without_rejects_or_metrics_still_renders() {
    let s = Summary::build(&[chain(1, 0.9)], &[], &[]);
    let page = html::render(&s, "empty-ish <run>");
    assert!(page.contains("No rejected rows."));
    assert!(page.contains("No metrics.jsonl"));
    assert!(page.contains("empty-ish &lt;run&gt;"));
    assert!(page.contains("id=\"plot-reward\""));
}
