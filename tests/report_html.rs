//! `cotforge stats` and `cotforge report` over an output directory, and the
//! HTML rendered by headless Chromium: the plots must be in the rendered DOM.
//!
//! Needs `chromium` (Debian package) on PATH or in COTFORGE_CHROMIUM; fails
//! when missing unless COTFORGE_SKIP_BROWSER=1 (then the browser half is
//! skipped, and says so).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use cotforge::record::{Chain, Recipe, Reject};
use cotforge::report::io::{write_chains, write_rejects};
use cotforge::report::viewer::{ViewerData, ViewerOptions};
use cotforge::report::{html, Summary};
use cotforge::stages::reject_for;

/// The plots of the report page, drawn without any script (the DOM after
/// its script runs also has `plot-throughput-tokens`).
const PLOTS: [&str; 5] = [
    "plot-reward",
    "plot-reasons",
    "plot-tokens",
    "plot-reflections",
    "plot-throughput",
];

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
            cotforge::record::Stage::FilterReward
        } else {
            cotforge::record::Stage::FilterVerify
        };
        rejects.push(reject_for(&c, stage, r));
    }
    for i in 300..310 {
        rejects.push(reject_for(
            &chain(i, 0.8),
            cotforge::record::Stage::Dedup,
            format!("duplicate-of c{:04}", i - 300),
        ));
    }
    rejects.push(Reject {
        seed_id: "gsm8k-bad".into(),
        chain_id: None,
        recipe: Some(Recipe::MarcoCot),
        stage: cotforge::record::Stage::Ingest,
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

/// What a headless Chromium run produces.
enum Shot<'a> {
    /// The DOM after the page's scripts ran.
    Dom,
    /// A PNG of the viewport.
    Png(&'a Path),
}

/// Loads `url` in headless Chromium; returns the dumped DOM (empty for a screenshot).
fn chromium_run(browser: &Path, url: &str, shot: Shot<'_>) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let mut cmd = Command::new(browser);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--window-size=1280,1400",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()));
    match shot {
        Shot::Dom => cmd.arg("--dump-dom"),
        Shot::Png(p) => cmd.arg(format!("--screenshot={}", p.display())),
    };
    let mut child = cmd
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    // Read while it runs: a large DOM would fill the pipe and block it.
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).map(|_| s)
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if start.elapsed() > Duration::from_secs(180) {
            let _ = child.kill();
            panic!("chromium did not finish in 180 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "chromium failed: {status:?}");
    reader.join().expect("reader").expect("chromium output")
}

fn dump_dom(browser: &Path, file: &Path) -> String {
    chromium_run(browser, &format!("file://{}", file.display()), Shot::Dom)
}

/// The browser, or None (with a note) when COTFORGE_SKIP_BROWSER=1 and there is none.
fn browser_or_skip() -> Option<PathBuf> {
    let skip = std::env::var("COTFORGE_SKIP_BROWSER").is_ok_and(|v| v == "1");
    match chromium() {
        Some(b) => Some(b),
        None if skip => {
            eprintln!("SKIPPED browser rendering check (COTFORGE_SKIP_BROWSER=1): chromium not found");
            None
        }
        None => panic!("the HTML report test needs chromium (apt-get install -y chromium) on PATH or COTFORGE_CHROMIUM; set COTFORGE_SKIP_BROWSER=1 to skip"),
    }
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
    // self-contained: the viewer's inline data and code only, no assets, no network
    assert_eq!(page.matches("<script").count(), 2, "data + viewer code");
    assert!(page.contains("<script type=\"application/json\" id=\"viewer-data\">"));
    assert!(
        page.contains("content=\"default-src 'none';"),
        "CSP forbids requests"
    );
    assert!(
        !page.contains("src=") && !page.contains("<link"),
        "report must not load assets"
    );
    let without_ns = page.replace("http://www.w3.org/2000/svg", "");
    assert!(!without_ns.contains("http://") && !without_ns.contains("https://"));
    // The headline numbers, and the plots without any script.
    for id in ["headline-table", "reasons-by-recipe", "throughput"] {
        assert!(page.contains(&format!("id=\"{id}\"")), "missing {id}");
    }
    for id in PLOTS {
        assert!(page.contains(&format!("id=\"{id}\"")), "missing {id}");
    }

    let Some(browser) = browser_or_skip() else {
        return;
    };
    let dom = dump_dom(&browser, &file);
    for id in PLOTS.into_iter().chain(["plot-throughput-tokens"]) {
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

    // A large run shows a sample, with the totals.
    let small = tmp.path().join("sample.html");
    run_cli(&[
        "cotforge",
        "report",
        &out.to_string_lossy(),
        "--html",
        &small.to_string_lossy(),
        "--viewer-rows",
        "20",
    ]);
    let dom = chromium_run(
        &browser,
        &format!("file://{}#list", small.display()),
        Shot::Dom,
    );
    assert_eq!(dom.matches("<tr class=\"row\"").count(), 20, "sampled rows");
    assert!(
        dom.contains("Showing a sample: 10 of 120 shipped chains and 10 of 51 rejected rows"),
        "no sample note"
    );
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

#[test]
fn headline_numbers_and_viewer_sample() {
    let mut chains: Vec<Chain> = (0..8).map(|i| chain(i, 0.7)).collect();
    // marco_cot (i % 4 != 0): 6 chains over seeds 0..3; 4 verified true, 1 false, 1 unchecked.
    for (k, c) in chains
        .iter_mut()
        .filter(|c| c.recipe == Some(Recipe::MarcoCot))
        .enumerate()
    {
        c.verified = [
            Some(true),
            Some(true),
            Some(false),
            Some(true),
            None,
            Some(true),
        ][k];
    }
    // Two marco_cot rejects of one more seed (10).
    let rejects = vec![
        reject_for(
            &chain(21, 0.1),
            cotforge::record::Stage::FilterReward,
            "reward 0.100 < 0.600".into(),
        ),
        reject_for(
            &chain(21, 0.1),
            cotforge::record::Stage::Dedup,
            "duplicate-of c0001".into(),
        ),
    ];
    let s = Summary::build(&chains, &rejects, &[]);
    let m = &s.headline["marco_cot"];
    assert_eq!((m.shipped, m.rejected, m.checked, m.verified), (6, 2, 5, 4));
    assert_eq!(m.verified_share(), Some(0.8));
    assert_eq!(m.reject_share(), Some(0.25));
    // seeds 0..3 shipped, seed 10 only rejected
    assert_eq!((m.covered, m.seeds), (4, 5));
    assert_eq!(m.chains_per_seed(), Some(1.5));
    assert_eq!(s.overall.shipped, 8);
    assert_eq!(s.headline["open_o1"].verified_share(), None);
    let t = s.table();
    for needle in [
        "verified share",
        "80.0% of 5",
        "seed coverage",
        "80.0% (4/5)",
        "1.50",
    ] {
        assert!(t.contains(needle), "missing {needle}:\n{t}");
    }

    let many: Vec<Chain> = (0..300).map(|i| chain(i, 0.7)).collect();
    let opts = ViewerOptions {
        max_rows: 10,
        ..ViewerOptions::default()
    };
    let v = ViewerData::build(&many, &rejects, None, &opts);
    assert_eq!(
        (v.rows.len(), v.shipped_shown, v.rejected_shown),
        (10, 8, 2)
    );
    assert_eq!((v.shipped_total, v.rejected_total), (300, 2));
    assert_eq!(
        v,
        ViewerData::build(&many, &rejects, None, &opts),
        "sample is deterministic"
    );
}

/// The report of a scripted-engine night, with a hostile row added.
fn scripted_report(dir: &Path) -> (PathBuf, serde_json::Value) {
    let bin = env!("CARGO_BIN_EXE_cotforge");
    let (job, out) = common::scripted_job(dir, "night", common::ship_all);
    common::run_ok(bin, &["run", job.to_str().unwrap(), "--no-progress"]);
    let hostile = Chain {
        id: "hostile-chain".into(),
        seed_id: "hostile-seed".into(),
        recipe: Some(Recipe::MarcoCot),
        prompt:
            "</script><div id=\"pwned\">x</div><img src=x onerror=\"document.title='pwned'\"> tail"
                .into(),
        reasoning: "step <b id=\"pwned2\">one</b>\n\nstep two".into(),
        answer: "</script>".into(),
        reward: 0.5,
        step_confidences: vec![0.9, 0.1],
        ..Default::default()
    };
    std::fs::create_dir_all(out.join("extra")).unwrap();
    write_rejects(
        &out.join("extra/rejected-hostile.parquet"),
        &[reject_for(
            &hostile,
            cotforge::record::Stage::FilterFormat,
            "reason </script><i id=\"pwned3\">".into(),
        )],
    )
    .unwrap();
    let file = dir.join("report.html");
    common::run_ok(
        bin,
        &[
            "report",
            out.to_str().unwrap(),
            "--html",
            file.to_str().unwrap(),
        ],
    );
    let page = std::fs::read_to_string(&file).unwrap();
    let start = page.find("id=\"viewer-data\">").unwrap() + "id=\"viewer-data\">".len();
    let end = start + page[start..].find("</script>").unwrap();
    assert!(!page[start..end].contains('<'), "payload not escaped");
    (file, serde_json::from_str(&page[start..end]).unwrap())
}

#[test]
fn viewer_list_chain_and_tree_in_chromium() {
    let tmp = tempfile::tempdir().unwrap();
    let (file, data) = scripted_report(tmp.path());
    let rows = data["rows"].as_array().unwrap();
    assert_eq!(
        rows.len() as u64,
        data["shipped_total"].as_u64().unwrap() + data["rejected_total"].as_u64().unwrap()
    );
    // A shipped marco_cot chain found in its tree, with a reflection.
    let row = rows
        .iter()
        .find(|r| {
            r["status"] == "shipped"
                && !r["path"].as_array().unwrap().is_empty()
                && r["steps"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|s| s["reflection"] == true)
        })
        .expect("a shipped chain with a tree path and a reflection");
    let key = row["key"].as_str().unwrap();
    let steps = row["steps"].as_array().unwrap();
    let tree = &data["trees"][row["tree"].as_str().unwrap()];
    let nodes = tree["nodes"].as_array().unwrap().len();
    let path = row["path"].as_array().unwrap().len();
    let want_rejected_marco = rows
        .iter()
        .filter(|r| r["status"] == "rejected" && r["recipe"] == "marco_cot")
        .count();

    let Some(browser) = browser_or_skip() else {
        return;
    };
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("viewer");
    std::fs::create_dir_all(&shots).unwrap();
    let url = |hash: &str| format!("file://{}#{hash}", file.display());
    let views = [
        ("list", "list".to_string()),
        ("chain", format!("chain={key}")),
        ("tree", format!("tree={key}")),
        (
            "filtered",
            "list&status=rejected&recipe=marco_cot".to_string(),
        ),
    ];
    // DOMs and screenshots in parallel: one browser process each.
    let doms: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = views
            .iter()
            .map(|(name, hash)| {
                let (b, u, png) = (&browser, url(hash), shots.join(format!("{name}.png")));
                s.spawn(move || {
                    if *name != "filtered" {
                        chromium_run(b, &u, Shot::Png(&png));
                    }
                    chromium_run(b, &u, Shot::Dom)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (name, _) in &views[..3] {
        let p = shots.join(format!("{name}.png"));
        let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        assert!(len > 10_000, "{} is {len} bytes", p.display());
        println!("screenshot: {}", p.display());
    }
    let [list, chain_dom, tree_dom, filtered] = &doms[..] else {
        unreachable!()
    };

    // List: every row, the hostile text as text, nothing injected.
    assert!(list.contains("data-view=\"list\"") && list.contains("id=\"view-list\""));
    assert_eq!(list.matches("<tr class=\"row\"").count(), rows.len());
    assert!(list.contains(&format!("All {} rows", rows.len())));
    for injected in [
        "<div id=\"pwned\"",
        "<img src=\"x\"",
        "<b id=\"pwned2\"",
        "<i id=\"pwned3\"",
    ] {
        assert!(!list.contains(injected), "markup from row text: {injected}");
    }
    assert!(
        list.contains("&lt;/script&gt;&lt;div id=\"pwned\"&gt;"),
        "hostile prompt not shown as text"
    );
    assert!(!list.contains("<title>pwned"));
    // Filters: rejected marco_cot rows only.
    assert_eq!(
        filtered.matches("<tr class=\"row\"").count(),
        want_rejected_marco
    );
    assert!(filtered.contains(&format!("{want_rejected_marco} rows match")));

    // Chain: its steps coloured by confidence, its reflection, in order.
    assert!(chain_dom.contains(&format!("id=\"view-chain\" data-key=\"{key}\"")));
    let actions: Vec<&serde_json::Value> =
        steps.iter().filter(|s| s["reflection"] == false).collect();
    assert_eq!(
        chain_dom.matches("<li class=\"step\"").count(),
        actions.len()
    );
    assert_eq!(
        chain_dom.matches("<li class=\"step reflection\"").count(),
        steps.len() - actions.len()
    );
    let mut at = 0;
    for s in &actions {
        let attr = format!("data-conf=\"{:.4}\"", s["conf"].as_f64().unwrap());
        let found = chain_dom[at..]
            .find(&attr)
            .unwrap_or_else(|| panic!("{attr} missing or out of order"));
        at += found + attr.len();
    }
    assert!(
        chain_dom.contains("style=\"background: rgb("),
        "steps not coloured"
    );

    // Tree: every node and edge drawn, the chain's path outlined.
    assert!(tree_dom.contains("<svg id=\"tree-svg\""));
    assert_eq!(tree_dom.matches("<g class=\"node").count(), nodes);
    assert_eq!(tree_dom.matches("<g class=\"node on-path").count(), path);
    assert_eq!(tree_dom.matches("<line class=\"edge").count(), nodes - 1);
    assert_eq!(
        tree_dom.matches("<line class=\"edge on-path\"").count(),
        path - 1
    );
    assert!(tree_dom.contains("id=\"node-detail\""));
}
