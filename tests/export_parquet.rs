//! `cotforge export` end to end: chain Parquet files in an output directory
//! -> HF-layout export in every format -> checked by tests/py/check_export.py
//! with pyarrow, datasets, polars and duckdb.
//!
//! The `messages` export also goes through TRL (tests/py/check_trl.py: every
//! row through `is_conversational` / `maybe_apply_chat_template` with the
//! test model's tokenizer, loaded from its GGUF by transformers).
//!
//! Needs python3 with pyarrow, polars, datasets, duckdb, transformers, gguf,
//! trl (scripts/test.sh installs them); fails when they are missing unless
//! COTFORGE_SKIP_PY=1 (then the Python half is skipped, and says so).

mod common;

use std::path::Path;

use common::py::{check_export as check_py, check_trl, python_ready, trl_ready};

use cotforge::record::{Chain, Recipe, Reject};
use cotforge::report::io::{read_chains, write_chains, write_rejects};
use cotforge::stages::export::{export, split_of, ExportConfig, ExportFormat, SplitSpec};
use cotforge::stages::Style;

fn chains(n: usize, prefix: &str) -> Vec<Chain> {
    (0..n)
        .map(|i| {
            let recipe = [Recipe::MarcoCot, Recipe::OpenO1, Recipe::Instruction][i % 3];
            let seed_id = match recipe {
                Recipe::MarcoCot => format!("gsm8k-train-{i}"),
                Recipe::OpenO1 => format!("marco-o1-cot-{i}"),
                Recipe::Instruction => format!("self_instruct-{i}"),
            };
            Chain {
                id: format!(
                    "{prefix}{:016x}",
                    (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ),
                seed_id,
                recipe: Some(recipe),
                system: i
                    .is_multiple_of(4)
                    .then(|| "You are a careful math tutor.".to_string()),
                prompt: format!("Question {i}: what is {i} times 3?"),
                reasoning: if recipe == Recipe::Instruction {
                    String::new()
                } else {
                    format!("We multiply {i} by 3.\n\n{i} * 3 = {}.", i * 3)
                },
                answer: format!("{}", i * 3),
                reward: 0.5 + (i % 50) as f64 / 100.0,
                step_confidences: vec![0.9, 0.8],
                tokens: 40 + i as u32,
                reflections: (i % 3) as u32,
                verified: if i.is_multiple_of(2) {
                    Some(true)
                } else {
                    None
                },
                reference_answer: Some(format!("{}", i * 3)),
                model: "SmolLM2-135M-Instruct.Q4_1.gguf".into(),
                model_blake3: "ab".repeat(32),
                settings: r#"{"c_puct":1.414,"k":3}"#.into(),
                created_at: 1_764_000_000,
                ..Default::default()
            }
        })
        .collect()
}

/// OUT layout: two chain shards in nested dirs, plus a reject file and a
/// chain-schema file named `rejected-*` that must not be exported.
fn make_out(dir: &Path) -> Vec<Chain> {
    let all = chains(230, "c");
    std::fs::create_dir_all(dir.join("marco_cot/shard-00001")).expect("mkdir");
    write_chains(&dir.join("shard-00000.parquet"), &all[..120]).expect("write");
    write_chains(
        &dir.join("marco_cot/shard-00001/chains.parquet"),
        &all[120..],
    )
    .expect("write");
    write_chains(&dir.join("rejected-00000.parquet"), &chains(7, "r")).expect("write");
    let rej = Reject {
        seed_id: "s".into(),
        chain_id: Some("x".into()),
        recipe: Some(Recipe::MarcoCot),
        stage: cotforge::record::Stage::FilterReward,
        reason: "reward 0.1 < 0.6".into(),
        row: "{}".into(),
    };
    write_rejects(&dir.join("marco_cot/rejects.parquet"), &[rej]).expect("write");
    all
}

/// Parses a command line with the real clap definition and runs it in-process
/// (not via the binary: a shared target dir may hold another branch's build).
fn run_cli(args: Vec<std::ffi::OsString>) {
    use clap::Parser;
    let cli = cotforge::cli::Cli::try_parse_from(args).expect("arguments parse");
    match cli.command {
        cotforge::cli::Command::Export(a) => {
            cotforge::cli::export::run_export(a).expect("export runs");
        }
        other => panic!("unexpected command {other:?}"),
    }
}

#[test]
fn chain_parquet_roundtrip() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path().join("c.parquet");
    let rows = chains(50, "x");
    write_chains(&p, &rows).expect("write");
    assert_eq!(read_chains(&p).expect("read"), rows);
}

#[test]
fn cli_export_every_format_checked_by_python() {
    let py = python_ready();
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("out");
    let all = make_out(&out);
    let formats = [
        ("messages", "marco"),
        ("prompt-completion", "think"),
        ("alpaca", "plain"),
        ("sharegpt", "marco"),
    ];
    for (format, style) in formats {
        let to = tmp.path().join(format!("export-{format}"));
        let args: Vec<std::ffi::OsString> = vec![
            "cotforge".into(),
            "export".into(),
            out.clone().into(),
            "--to".into(),
            to.clone().into(),
            "--format".into(),
            format.into(),
            "--style".into(),
            style.into(),
            "--split".into(),
            "validation=0.1".into(),
            "--max-rows-per-file".into(),
            "80".into(),
            "--row-group-rows".into(),
            "32".into(),
        ];
        run_cli(args);
        let mut names: Vec<String> = std::fs::read_dir(to.join("data"))
            .expect("data dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let n_val = all
            .iter()
            .filter(|c| split_of(&c.id, &cfg_with_val()) == "validation")
            .count();
        assert!(n_val > 5 && n_val < 50, "validation rows {n_val}");
        let n_train = all.len() - n_val;
        let train_files = n_train.div_ceil(80);
        let mut want: Vec<String> = (0..train_files)
            .map(|i| format!("train-{i:05}-of-{train_files:05}.parquet"))
            .collect();
        want.push("validation-00000-of-00001.parquet".into());
        want.sort();
        assert_eq!(names, want);
        let card = std::fs::read_to_string(to.join("README.md")).expect("card");
        assert!(
            card.contains(&format!("  - name: train\n    num_examples: {n_train}\n")),
            "{card}"
        );
        assert!(
            card.contains("- mit\n- apache-2.0\n") || card.contains("- apache-2.0\n- mit\n"),
            "{card}"
        );
        assert!(
            card.contains("GSM8K") && card.contains("self-instruct") && card.contains("Marco-o1")
        );
        assert!(card.contains(&"ab".repeat(32)));
        if py {
            check_py(&to, format, style, 32, all.len());
        }
        if format == "messages" && trl_ready() {
            if let Some(model) = common::model_path() {
                check_trl(&model, &[("messages", &to)], 0.0);
            }
        }
    }
}

fn cfg_with_val() -> ExportConfig {
    ExportConfig {
        splits: vec![SplitSpec {
            name: "validation".into(),
            fraction: 0.1,
        }],
        ..Default::default()
    }
}

#[test]
fn export_is_deterministic_and_filters_recipes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let rows = chains(90, "d");
    let cfg = ExportConfig {
        recipes: vec![Recipe::MarcoCot, Recipe::OpenO1],
        style: Style::Think,
        format: ExportFormat::Messages,
        max_rows_per_file: 25,
        ..Default::default()
    };
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    let sa = export(&rows, &a, &cfg).expect("export a");
    let mut reversed = rows.clone();
    reversed.reverse();
    let sb = export(&reversed, &b, &cfg).expect("export b");
    assert_eq!(sa, sb);
    assert_eq!(sa.rows(), 60);
    assert_eq!(sa.skipped_by_recipe, 30);
    for (_, _, files) in &sa.splits {
        for f in files {
            let x = std::fs::read(a.join(f)).expect("read a");
            let y = std::fs::read(b.join(f)).expect("read b");
            assert!(x == y, "{f} differs between runs");
        }
    }
    assert_eq!(
        std::fs::read(a.join("README.md")).expect("a"),
        std::fs::read(b.join("README.md")).expect("b")
    );
    // a re-export with fewer rows leaves no stale shard behind
    let cfg2 = ExportConfig {
        max_rows_per_file: 1000,
        ..cfg
    };
    export(&rows, &a, &cfg2).expect("re-export");
    let n = std::fs::read_dir(a.join("data")).expect("dir").count();
    assert!(n <= 2, "{n} files after re-export");
    if python_ready() {
        check_py(&a, "messages", "think", 1000, 60);
    }
}
