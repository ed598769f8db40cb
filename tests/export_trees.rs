//! `cotforge export --format preference|kto|prm`: rows from the search trees.
//!
//! - A hand-built output directory (one tree drawn below, its chains shipped
//!   or held back by the ship policy, a seed without a reference, a
//!   decontaminated seed) pins the pairing rule, the bound, the KTO labels
//!   and the PRM estimates against hand-computed numbers.
//! - A scripted-engine night (the job's `[export]` set to `preference`) checks
//!   the same rules on real trees, byte-identical reruns, and the Python
//!   readers: check_export.py (layout, card, dataset_info.json) and
//!   check_trl.py (datasets + TRL with the test model's GGUF tokenizer).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::Float64Type;
use cotforge::recipes::marco::STAGE_SHIP;
use cotforge::record::{Chain, Recipe, Reject};
use cotforge::report::io::{
    read_all_chains, read_all_rejects, scan_out_dir, write_chains, write_rejects,
};
use cotforge::stages::export::ExportConfig;
use cotforge::stages::reject_for;
use cotforge::stages::tree_export::{gather, kto_rows, preference_rows, prm_rows};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::json;

const REFLECTION: &str = "Wait! Maybe I made some mistakes! I need to rethink from scratch.\n\n";

fn chain(
    id: &str,
    seed: &str,
    reasoning: &str,
    answer: &str,
    verified: Option<bool>,
    value: f64,
) -> Chain {
    Chain {
        id: id.into(),
        seed_id: seed.into(),
        recipe: Some(Recipe::MarcoCot),
        prompt: format!("Question of {seed}?"),
        system: (seed == "s1").then(|| "You are a careful tutor.".to_string()),
        reasoning: reasoning.into(),
        answer: answer.into(),
        reward: value,
        value: Some(value),
        verified,
        selected: Some(false),
        model: "SmolLM2-135M-Instruct.Q4_1.gguf".into(),
        model_blake3: "ab".repeat(32),
        ..Default::default()
    }
}

/// (id, parent, text, visits, answer, verified, reflection)
type N<'a> = (
    u32,
    Option<u32>,
    &'a str,
    u32,
    Option<&'a str>,
    Option<bool>,
    bool,
);

fn tree_json(seed: &str, nodes: &[N<'_>]) -> serde_json::Value {
    let nodes: Vec<serde_json::Value> = nodes
        .iter()
        .map(|&(id, parent, text, n, answer, verified, reflection)| {
            json!({
                "id": id, "parent": parent, "children": [], "text": text, "tokens": [],
                "confidences": if reflection || id == 0 { vec![] } else { vec![0.5f32] },
                "n": n, "q": 0.5, "own": 0, "depth": 0, "reflection": reflection,
                "terminal": answer.map(|_| "eog"),
                "answer": answer.map(|a| json!({"text": a, "tokens": [], "confidences": [],
                                                 "reward": 0.5, "verified": verified})),
            })
        })
        .collect();
    json!({"seed_id": seed, "prompt": "", "reference_answer": null, "stop": "rollouts",
           "best_path": [], "nodes": nodes})
}

/// The hand-built night. Seed s1 (reference "5"):
///
/// ```text
/// 0 root
/// ├─1 A ─┬─2 B ─┬─3 C => 5  ok     X  shipped, value 0.9
/// │      │      └─4 D => 6  wrong  Y  held back
/// │      └─5 E => 7  wrong         Z  held back
/// └─6 F => 5  ok                   W  shipped, value 0.8
///   └─7 (reflection) ─ 8 G => 8 wrong   V  held back
/// ```
/// Seed s2 (no reference): P selected (0.7), Q (0.65, within the margin), R
/// (0.5) sharing P's first step. Seed s3: decontaminated (its held-back chain
/// must not come back). An open_o1 chain (no tree) is ignored.
fn make_out(out: &Path) -> (Vec<Chain>, Vec<Reject>) {
    let x = chain("X", "s1", "A\n\nB\n\nC", "5", Some(true), 0.9);
    let w = chain("W", "s1", "F", "5", Some(true), 0.8);
    let y = chain("Y", "s1", "A\n\nB\n\nD", "6", Some(false), 0.6);
    let z = chain("Z", "s1", "A\n\nE", "7", Some(false), 0.7);
    let v = chain(
        "V",
        "s1",
        &format!("F\n\n{REFLECTION}G"),
        "8",
        Some(false),
        0.5,
    );
    let mut p = chain("P", "s2", "P1\n\nP2", "x", None, 0.7);
    p.selected = Some(true);
    let q = chain("Q", "s2", "Q1", "z", None, 0.65);
    let r = chain("R", "s2", "P1\n\nR2", "y", None, 0.5);
    let c3 = chain("C3", "s3", "T", "1", Some(false), 0.4);
    let open = Chain {
        recipe: Some(Recipe::OpenO1),
        ..chain("O", "s1", "A", "5", Some(true), 0.99)
    };
    let shipped = vec![x, w, p, open];
    let mut rejects: Vec<Reject> = [y, z, v, c3.clone()]
        .iter()
        .map(|c| {
            reject_for(
                c,
                STAGE_SHIP,
                "unverified: the answer does not match".into(),
            )
        })
        .chain(
            [q, r]
                .iter()
                .map(|c| reject_for(c, STAGE_SHIP, "not-selected: ...".into())),
        )
        .collect();
    rejects.push(reject_for(
        &c3,
        cotforge::record::Stage::Decontaminate,
        "13-gram overlap with bench.jsonl".into(),
    ));
    let s1 = tree_json(
        "s1",
        &[
            (0, None, "Q", 10, None, None, false),
            (1, Some(0), "A\n\n", 6, None, None, false),
            (2, Some(1), "B\n\n", 4, None, None, false),
            (3, Some(2), "C", 2, Some("5"), Some(true), false),
            (4, Some(2), "D", 2, Some("6"), Some(false), false),
            (5, Some(1), "E", 2, Some("7"), Some(false), false),
            (6, Some(0), "F", 3, Some("5"), Some(true), false),
            (
                7,
                Some(6),
                &format!("\n\n{REFLECTION}"),
                1,
                None,
                None,
                true,
            ),
            (8, Some(7), "G", 1, Some("8"), Some(false), false),
        ],
    );
    let s2 = tree_json(
        "s2",
        &[
            (0, None, "Q", 6, None, None, false),
            (1, Some(0), "P1\n\n", 4, None, None, false),
            (2, Some(1), "P2", 2, Some("x"), None, false),
            (3, Some(1), "R2", 2, Some("y"), None, false),
            (4, Some(0), "Q1", 2, Some("z"), None, false),
        ],
    );
    let s3 = tree_json(
        "s3",
        &[
            (0, None, "Q", 1, None, None, false),
            (1, Some(0), "T", 1, Some("1"), Some(false), false),
        ],
    );
    let trees = out.join("trees/00000-of-00001");
    std::fs::create_dir_all(&trees).unwrap();
    std::fs::create_dir_all(out.join("final")).unwrap();
    std::fs::create_dir_all(out.join("shards/marco_cot")).unwrap();
    for (name, t) in [("s1", s1), ("s2", s2), ("s3", s3)] {
        std::fs::write(
            trees.join(format!("{name}.json")),
            serde_json::to_string_pretty(&t).unwrap(),
        )
        .unwrap();
    }
    write_chains(&out.join("final/chains.parquet"), &shipped).unwrap();
    write_rejects(
        &out.join("shards/marco_cot/rejected-00000-of-00001.parquet"),
        &rejects,
    )
    .unwrap();
    (shipped, rejects)
}

fn cfg(max_pairs: usize) -> ExportConfig {
    ExportConfig {
        max_pairs_per_seed: max_pairs,
        min_value_margin: 0.1,
        ..Default::default()
    }
}

#[test]
fn pairs_kto_and_prm_of_a_hand_built_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let (chains, rejects) = make_out(&out);
    let g = gather(&chains, &rejects, &out);
    let seeds: Vec<&str> = g.seeds.iter().map(|s| s.seed_id.as_str()).collect();
    assert_eq!(
        seeds,
        ["s1", "s2"],
        "s3 is decontaminated, open_o1 has no tree"
    );
    assert!(
        g.notes
            .contains(&("chains of decontaminated seeds left out".into(), 1)),
        "{:?}",
        g.notes
    );
    assert!(g
        .seeds
        .iter()
        .flat_map(|s| &s.candidates)
        .all(|c| !c.path.is_empty()));

    // Longest shared prefix first: X-Y share A,B; X-Z and W-V share one step
    // (X first: higher chosen value); then the pairs sharing nothing.
    let pairs = |max| -> Vec<(String, String, u32)> {
        preference_rows(&g, &cfg(max))
            .into_iter()
            .map(|r| (r.chosen_id, r.rejected_id, r.shared_steps))
            .collect()
    };
    let s = |a: &str, b: &str, n| (a.to_string(), b.to_string(), n);
    assert_eq!(
        pairs(3),
        [
            s("X", "Y", 2),
            s("X", "Z", 1),
            s("W", "V", 1),
            s("P", "R", 1)
        ]
    );
    assert_eq!(
        pairs(4),
        [
            s("X", "Y", 2),
            s("X", "Z", 1),
            s("W", "V", 1),
            s("X", "V", 0),
            s("P", "R", 1)
        ]
    );
    assert_eq!(
        pairs(100).len(),
        6 + 1,
        "2 chosen x 3 rejected, and P-R (Q is within the margin)"
    );
    for r in preference_rows(&g, &cfg(100)) {
        let c = chains.iter().find(|c| c.id == r.chosen_id).unwrap();
        assert_eq!(c.seed_id, r.seed_id, "chosen from the pair's seed");
        let rej = rejects
            .iter()
            .find(|x| x.chain_id.as_deref() == Some(&r.rejected_id))
            .unwrap();
        assert_eq!(rej.seed_id, r.seed_id, "rejected from the pair's seed");
        assert!(r.chosen_verified != Some(false) && r.rejected_verified != Some(true));
        assert!(r.chosen_value > r.rejected_value || r.chosen_verified == Some(true));
        assert_eq!(r.seed_id == "s1", r.system.is_some());
    }

    // KTO: the verification; without a reference the selected chain and the clearly worse one.
    let kto: BTreeMap<String, bool> = kto_rows(&g, &cfg(4))
        .into_iter()
        .map(|r| (r.id, r.label))
        .collect();
    let want: BTreeMap<String, bool> = [
        ("P", true),
        ("R", false),
        ("V", false),
        ("W", true),
        ("X", true),
        ("Y", false),
        ("Z", false),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(kto, want);

    // PRM: the share of verified answers at or below each step's node.
    let (prm, skipped) = prm_rows(&g, &cfg(4));
    assert_eq!(skipped, 0);
    let ids: BTreeSet<&str> = prm.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        ids,
        ["V", "W", "X", "Y", "Z"].into_iter().collect(),
        "s2 has no reference"
    );
    let row = |id: &str| prm.iter().find(|r| r.id == id).unwrap().clone();
    let x = row("X");
    assert_eq!(x.completions, ["A", "B", "C", "5"]);
    assert_eq!(x.values, [1.0 / 3.0, 0.5, 1.0, 1.0]);
    assert_eq!(x.labels, [true, true, true, true]);
    assert_eq!(x.visits, [6, 4, 2, 2]);
    assert_eq!(x.prompt, "You are a careful tutor.\n\nQuestion of s1?");
    let v = row("V");
    assert_eq!(v.completions, ["F", REFLECTION.trim(), "G", "8"]);
    assert_eq!(v.values, [0.5, 0.0, 0.0, 0.0]);
    assert_eq!(v.labels, [true, false, false, false]);
    assert_eq!(v.visits, [3, 1, 1, 1]);
    let y = row("Y");
    assert_eq!(y.values, [1.0 / 3.0, 0.5, 0.0, 0.0]);
    // A threshold turns the estimate into labels: value > 0.4.
    let strict = ExportConfig {
        prm_threshold: 0.4,
        ..cfg(4)
    };
    let (prm, _) = prm_rows(&g, &strict);
    let x = prm.iter().find(|r| r.id == "X").unwrap();
    assert_eq!(x.labels, [false, true, true, true]);
}

/// Parses a command line with the real clap definition and runs it in-process.
fn run_cli(args: Vec<OsString>) {
    use clap::Parser;
    let cli = cotforge::cli::Cli::try_parse_from(args).expect("arguments parse");
    match cli.command {
        cotforge::cli::Command::Export(a) => {
            cotforge::cli::export::run_export(a).expect("export runs");
        }
        other => panic!("unexpected command {other:?}"),
    }
}

fn cli_export(out: &Path, to: &Path, format: &str, extra: &[&str]) {
    let mut args: Vec<OsString> = vec![
        "cotforge".into(),
        "export".into(),
        out.into(),
        "--to".into(),
        to.into(),
        "--format".into(),
        format.into(),
        "--split".into(),
        "validation=0.3".into(),
    ];
    args.extend(extra.iter().map(OsString::from));
    run_cli(args);
}

fn read_export(dir: &Path) -> Vec<RecordBatch> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("data"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(f).unwrap())
                .unwrap()
                .build()
                .unwrap()
                .map(|b| b.unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn strs(b: &RecordBatch, col: &str) -> Vec<String> {
    let a = b.column_by_name(col).unwrap().as_string::<i32>();
    (0..a.len()).map(|i| a.value(i).to_string()).collect()
}

fn same_bytes(a: &Path, b: &Path) {
    for f in ["README.md", "dataset_info.json"] {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            "{f}"
        );
    }
    let names = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d.join("data"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(a), names(b));
    for n in names(a) {
        let (x, y) = (
            std::fs::read(a.join("data").join(&n)).unwrap(),
            std::fs::read(b.join("data").join(&n)).unwrap(),
        );
        assert!(x == y, "{n} differs");
    }
}

fn python_checks(exports: &[(&str, &Path, usize)]) {
    if common::py::python_ready() {
        for (format, dir, rows) in exports {
            common::py::check_export(dir, format, "marco", 1000, *rows);
        }
    }
    if common::py::trl_ready() {
        if let Some(model) = common::model_path() {
            let specs: Vec<(&str, &Path)> = exports.iter().map(|(f, d, _)| (*f, *d)).collect();
            common::py::check_trl(&model, &specs, 0.0);
        }
    }
}

#[test]
fn cli_exports_of_the_hand_built_tree_are_deterministic_and_load() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    make_out(&out);
    let bound = ["--max-pairs-per-seed", "3", "--min-value-margin", "0.1"];
    let mut checks = Vec::new();
    for (format, rows) in [("preference", 4), ("kto", 7), ("prm", 5)] {
        let a = tmp.path().join(format!("{format}-a"));
        let b = tmp.path().join(format!("{format}-b"));
        cli_export(&out, &a, format, &bound);
        cli_export(&out, &b, format, &bound);
        same_bytes(&a, &b);
        let n: usize = read_export(&a).iter().map(|b| b.num_rows()).sum();
        assert_eq!(n, rows, "{format}");
        let card = std::fs::read_to_string(a.join("README.md")).unwrap();
        assert!(card.contains("## How the rows were made"), "{card}");
        assert!(
            card.contains("| chains of decontaminated seeds left out | 1 |"),
            "{card}"
        );
        checks.push((format, a, rows));
    }
    let info: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("preference-a/dataset_info.json")).unwrap(),
    )
    .unwrap();
    let entries = info.as_object().unwrap();
    assert!(
        !entries.is_empty() && entries.values().all(|e| e["ranking"] == json!(true)),
        "{info}"
    );
    let refs: Vec<(&str, &Path, usize)> = checks
        .iter()
        .map(|(f, d, n)| (*f, d.as_path(), *n))
        .collect();
    python_checks(&refs);
}

/// The scripted job with cot_demo's seeds (no reference answers) also
/// searched, and `[export]` set to `preference`.
fn preference_job(text: String) -> String {
    let marco = "seeds = [\"";
    let at = text
        .rfind("kind = \"marco_cot\"")
        .expect("a marco_cot recipe");
    let seeds = at + text[at..].find(marco).expect("its seeds") + "seeds = [".len();
    let demo = format!(
        "\"{}/data/seeds/cot_demo.parquet\", ",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = format!("{}{demo}{}", &text[..seeds], &text[seeds..]);
    text.replace(
        "format = \"messages\"",
        "format = \"preference\"\nmin_value_margin = 0.02",
    )
}

#[test]
fn scripted_night_preference_kto_prm() {
    let bin = env!("CARGO_BIN_EXE_cotforge");
    let tmp = tempfile::tempdir().unwrap();
    let (job, out) = common::scripted_job(tmp.path(), "a", preference_job);
    common::run_ok(bin, &["run", job.to_str().unwrap(), "--no-progress"]);
    let (job_b, out_b) = common::scripted_job(tmp.path(), "b", preference_job);
    common::run_ok(bin, &["run", job_b.to_str().unwrap(), "--no-progress"]);
    same_bytes(&out.join("export"), &out_b.join("export"));

    // Every chain of the night, shipped or held back, by id.
    let files = scan_out_dir(&out).unwrap();
    let mut all: BTreeMap<String, Chain> = BTreeMap::new();
    for c in read_all_chains(&files.chains).unwrap() {
        all.insert(c.id.clone(), c);
    }
    for r in read_all_rejects(&files.rejects).unwrap() {
        if r.stage == STAGE_SHIP {
            let c: Chain = serde_json::from_str(&r.row).unwrap();
            all.insert(c.id.clone(), c);
        }
    }
    let batches = read_export(&out.join("export"));
    let mut per_seed: BTreeMap<String, usize> = BTreeMap::new();
    let mut n = 0;
    for b in &batches {
        let (seeds, chosen, rejected) = (
            strs(b, "seed_id"),
            strs(b, "chosen_id"),
            strs(b, "rejected_id"),
        );
        let cv = b
            .column_by_name("chosen_value")
            .unwrap()
            .as_primitive::<Float64Type>();
        for i in 0..b.num_rows() {
            let (c, r) = (&all[&chosen[i]], &all[&rejected[i]]);
            assert_eq!(
                (c.seed_id.as_str(), r.seed_id.as_str()),
                (seeds[i].as_str(), seeds[i].as_str())
            );
            match c.verified {
                Some(true) => assert_eq!(r.verified, Some(false)),
                Some(false) => panic!("an unverified chosen chain"),
                None => {
                    assert_eq!((c.selected, r.verified), (Some(true), None));
                    assert!(r.value.unwrap() <= c.value.unwrap() - 0.02);
                }
            }
            assert_eq!(cv.value(i), c.value.unwrap());
            *per_seed.entry(seeds[i].clone()).or_default() += 1;
            n += 1;
        }
    }
    assert!(n > 0, "the scripted night yields pairs");
    assert!(per_seed.values().all(|&k| k <= 4), "{per_seed:?}");

    // KTO and PRM from the same night, and the SFT export for the TRL check.
    let kto = tmp.path().join("kto");
    let prm = tmp.path().join("prm");
    let sft = tmp.path().join("messages");
    cli_export(&out, &kto, "kto", &["--min-value-margin", "0.02"]);
    cli_export(&out, &prm, "prm", &[]);
    cli_export(&out, &sft, "messages", &[]);
    let mut kto_n = 0;
    for b in read_export(&kto) {
        let ids = strs(&b, "id");
        let label = b.column_by_name("label").unwrap().as_boolean();
        for (i, id) in ids.iter().enumerate() {
            let c = &all[id];
            match c.verified {
                Some(v) => assert_eq!(label.value(i), v),
                None => assert_eq!(label.value(i), c.selected == Some(true)),
            }
            kto_n += 1;
        }
    }
    let prm_n: usize = read_export(&prm).iter().map(|b| b.num_rows()).sum();
    let with_ref = all
        .values()
        .filter(|c| c.recipe == Some(Recipe::MarcoCot) && c.verified.is_some())
        .count();
    assert_eq!(prm_n, with_ref, "one PRM row per chain with a reference");
    let sft_n: usize = read_export(&sft).iter().map(|b| b.num_rows()).sum();
    python_checks(&[
        ("preference", &out.join("export"), n),
        ("kto", &kto, kto_n),
        ("prm", &prm, prm_n),
    ]);
    if common::py::trl_ready() {
        if let Some(model) = common::model_path() {
            common::py::check_trl(&model, &[("messages", &sft)], 0.0);
        }
    }
    assert!(sft_n > 0);
}
