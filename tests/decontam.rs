//! Decontamination: planted benchmark overlaps in chains are flagged (exact,
//! recased and re-punctuated, Unicode compatibility forms, overlaps of n
//! words and more) and partial overlaps below n are not; the committed seed
//! samples raise no flag against an unrelated file; the index is persisted
//! and rebuilt exactly when its inputs change; `cotforge decontaminate`
//! switches a finalized output atomically (killed between its writes, the
//! rerun converges), and `[decontaminate]` in a job applies in finalize.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use cotforge::record::{Chain, Recipe};
use cotforge::stages::decontam::{
    open_or_build, DecontamConfig, NgramIndex, DEFAULT_N, REJECTS_FILE, STAGE,
};
use cotforge::store::{Ingest, IngestOptions, IngestRow};

use common::repo;

fn questions() -> Vec<String> {
    std::fs::read_to_string(repo("tests/fixtures/gsm8k_32.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["question"].as_str().unwrap().to_string()
        })
        .collect()
}

fn cfg(against: Vec<PathBuf>, column: Option<&str>) -> DecontamConfig {
    DecontamConfig {
        against,
        column: column.map(str::to_string),
        n: DEFAULT_N,
        index: None,
    }
}

fn chain(id: &str, prompt: &str, reasoning: &str) -> Chain {
    Chain {
        id: id.into(),
        seed_id: format!("seed-{id}"),
        recipe: Some(Recipe::MarcoCot),
        prompt: prompt.into(),
        reasoning: reasoning.into(),
        answer: "42".into(),
        reward: 0.5,
        ..Default::default()
    }
}

/// Words of a question, split on whitespace (the planted spans keep its punctuation).
fn words(q: &str) -> Vec<&str> {
    q.split_whitespace().collect()
}

const FILLER: &str = "zebra quokka marmalade";

/// The first question with at least `n` words.
fn long_question(qs: &[String], n: usize) -> (usize, &str) {
    qs.iter()
        .enumerate()
        .find(|(_, q)| words(q).len() >= n)
        .map(|(i, q)| (i, q.as_str()))
        .unwrap()
}

#[test]
fn planted_overlaps_are_found_and_partial_ones_below_n_are_not() {
    let qs = questions();
    let bench = repo("tests/fixtures/gsm8k_32.jsonl");
    let index = NgramIndex::build(&cfg(vec![bench.clone()], Some("question"))).unwrap();
    assert!(index.len() > 500, "{} n-grams", index.len());
    let (qi, q) = long_question(&qs, 30);
    let w = words(q);
    let fullwidth: String = q
        .chars()
        .map(|c| match c {
            '0'..='9' => char::from_u32(c as u32 - '0' as u32 + 0xFF10).unwrap(),
            'a' => 'ａ',
            _ => c,
        })
        .collect();
    assert_ne!(fullwidth, q);
    let mut positives = vec![
        ("exact", chain("p-exact", q, "so the answer is 42")),
        (
            "upper case, punctuation, spacing",
            chain(
                "p-case",
                &q.to_uppercase().replace(' ', " ,  ").replace('.', "!!"),
                "",
            ),
        ),
        ("lower case, no punctuation", {
            let bare: String = q
                .to_lowercase()
                .chars()
                .map(|c| if c.is_alphanumeric() { c } else { ' ' })
                .collect();
            chain("p-bare", &bare, "")
        }),
        ("NFKC compatibility forms", chain("p-nfkc", &fullwidth, "")),
        (
            "13 words inside the reasoning",
            chain(
                "p-13",
                "An unrelated prompt.",
                &format!("{FILLER} {} {FILLER}", w[5..5 + 13].join(" ")),
            ),
        ),
        (
            "20 words in the answer",
            Chain {
                answer: format!("{FILLER} {}", w[2..22].join(" ")),
                ..chain("p-answer", "An unrelated prompt.", "")
            },
        ),
    ];
    // Every question of the file, exactly: recall over the whole benchmark.
    for (i, q) in qs.iter().enumerate() {
        if words(q).len() >= DEFAULT_N {
            positives.push(("each question", chain(&format!("p-q{i}"), q, "")));
        }
    }
    let negatives = vec![
        (
            "12 words in the reasoning",
            chain(
                "n-12",
                "An unrelated prompt.",
                &format!("{FILLER} {} {FILLER}", w[5..5 + 12].join(" ")),
            ),
        ),
        (
            "two 12-word spans with a gap",
            chain(
                "n-gap",
                &format!("{} {FILLER} {}", w[0..12].join(" "), w[13..25].join(" ")),
                "",
            ),
        ),
        (
            "unrelated",
            chain(
                "n-other",
                "How many letters r are in the word strawberry?",
                "Count them one by one.",
            ),
        ),
    ];
    let mut found = 0;
    for (what, c) in &positives {
        let f = index.check(c).unwrap_or_else(|| panic!("missed: {what}"));
        found += 1;
        assert!(f.file.ends_with("gsm8k_32.jsonl"), "{f:?}");
        assert_eq!(f.ngram.split(' ').count(), DEFAULT_N, "{f:?}");
        if c.id == "p-exact" {
            assert_eq!(f.field, "prompt");
            assert_eq!(f.row, format!("line {}", qi + 1));
            let r = f.reason();
            assert!(r.contains("gsm8k_32.jsonl") && r.contains(&f.ngram), "{r}");
        }
        if c.id == "p-13" {
            assert_eq!(f.field, "reasoning");
            assert_eq!(
                f.ngram,
                cotforge::stages::decontam::normalized_words(&w[5..18].join(" ")).join(" ")
            );
        }
        if c.id == "p-answer" {
            assert_eq!(f.field, "answer");
        }
    }
    assert_eq!(found, positives.len(), "recall 1.0");
    for (what, c) in &negatives {
        assert_eq!(index.check(c), None, "false positive: {what}");
    }
    // n is configurable: with n = 8 the 12-word span is an overlap.
    let mut eight = cfg(vec![bench], Some("question"));
    eight.n = 8;
    let idx8 = NgramIndex::build(&eight).unwrap();
    assert!(idx8.check(&negatives[0].1).is_some());
    // split keeps the order of the clean chains and names the stage.
    let all: Vec<Chain> = negatives
        .iter()
        .chain(&positives)
        .map(|(_, c)| c.clone())
        .collect();
    let (kept, rejects) = index.split(all);
    assert_eq!(
        kept.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["n-12", "n-gap", "n-other"]
    );
    assert_eq!(rejects.len(), positives.len());
    assert!(rejects.iter().all(|r| r.stage == STAGE));
}

fn seed_chains() -> Vec<Chain> {
    let mut v = Vec::new();
    for entry in std::fs::read_dir(repo("data/seeds")).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().and_then(|e| e.to_str()) != Some("parquet") {
            continue;
        }
        for item in Ingest::open(std::slice::from_ref(&p), IngestOptions::default()).unwrap() {
            if let IngestRow::Seed(s) = item.unwrap().row {
                v.push(Chain {
                    id: format!("{}:{}", p.file_stem().unwrap().to_string_lossy(), s.id),
                    seed_id: s.id,
                    prompt: s.prompt,
                    reasoning: s.response.unwrap_or_default(),
                    answer: s.reference_answer.unwrap_or_default(),
                    ..Default::default()
                });
            }
        }
    }
    assert!(v.len() >= 70, "{} seed rows", v.len());
    v
}

#[test]
fn committed_seeds_raise_no_flag_against_an_unrelated_file_and_every_flag_against_themselves() {
    let dir = tempfile::tempdir().unwrap();
    // Unrelated text: the licences and the project's documentation, one paragraph per JSONL row.
    let bench = dir.path().join("unrelated.jsonl");
    let mut lines = String::new();
    let mut paragraphs = 0;
    for f in [
        "data/seeds/gsm8k.LICENSE",
        "data/seeds/marco_o1.LICENSE",
        "data/seeds/marco_o1.NOTICE",
        "data/seeds/self_instruct.LICENSE",
        "README.md",
        "schemas/README.md",
    ] {
        let text = std::fs::read_to_string(repo(f)).unwrap();
        for p in text.split("\n\n").filter(|p| !p.trim().is_empty()) {
            lines.push_str(&serde_json::json!({ "text": p }).to_string());
            lines.push('\n');
            paragraphs += 1;
        }
    }
    std::fs::write(&bench, lines).unwrap();
    let chains = seed_chains();
    let index = NgramIndex::build(&cfg(vec![bench], None)).unwrap();
    assert!(
        index.len() > 2000 && paragraphs > 20,
        "{} n-grams from {paragraphs} paragraphs",
        index.len()
    );
    let flagged: Vec<_> = chains.iter().filter_map(|c| index.check(c)).collect();
    assert!(flagged.is_empty(), "false positives: {flagged:?}");

    // Positive control on real data: the GSM8K seed Parquet as the benchmark
    // (its `prompt` column found automatically) flags every GSM8K seed.
    let gsm = repo("data/seeds/gsm8k.parquet");
    let own = NgramIndex::build(&cfg(vec![gsm], None)).unwrap();
    assert_eq!(own.files()[0].column, "prompt");
    let gsm_chains: Vec<&Chain> = chains
        .iter()
        .filter(|c| c.id.starts_with("gsm8k:"))
        .collect();
    assert!(!gsm_chains.is_empty());
    for c in &gsm_chains {
        let f = own
            .check(c)
            .unwrap_or_else(|| panic!("{} not flagged", c.id));
        assert!(f.row.starts_with("row "), "{f:?}");
    }
}

#[test]
fn the_index_is_reused_until_its_inputs_change_and_bad_input_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let bench = dir.path().join("bench.jsonl");
    let qs = questions();
    let line = |q: &str| serde_json::json!({ "q": q }).to_string() + "\n";
    std::fs::write(&bench, line(&qs[0]) + &line(&qs[1])).unwrap();
    let path = dir.path().join("idx/decontam.idx");
    let mut c = cfg(vec![bench.clone()], Some("q"));
    let (a, built) = open_or_build(&c, &path).unwrap();
    assert!(built && path.is_file());
    let bytes = std::fs::read(&path).unwrap();
    let (b, built) = open_or_build(&c, &path).unwrap();
    assert!(!built, "the same inputs rebuilt the index");
    assert_eq!(a, b);
    assert_eq!(a.to_bytes(), bytes, "index bytes are deterministic");
    assert!(a.check(&chain("x", &qs[2], "")).is_none());

    // A changed benchmark file rebuilds it, and the new row matches.
    std::fs::write(&bench, line(&qs[0]) + &line(&qs[1]) + &line(&qs[2])).unwrap();
    let (d, built) = open_or_build(&c, &path).unwrap();
    assert!(built);
    assert!(d.check(&chain("x", &qs[2], "")).is_some());
    // Other settings rebuild it too.
    c.n = 9;
    assert!(open_or_build(&c, &path).unwrap().1);
    assert!(!open_or_build(&c, &path).unwrap().1);
    // A damaged file is a cache miss, not an error.
    let mut raw = std::fs::read(&path).unwrap();
    let mid = raw.len() / 2;
    raw[mid] ^= 0xff;
    std::fs::write(&path, raw).unwrap();
    assert!(NgramIndex::load(&path).is_err());
    assert!(open_or_build(&c, &path).unwrap().1);

    // Bad input: a missing column names the file and what it has; a bad line names the line.
    let err = NgramIndex::build(&cfg(vec![bench.clone()], Some("question")))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bench.jsonl") && err.contains("'question'") && err.contains("q"),
        "{err}"
    );
    std::fs::write(&bench, line(&qs[0]) + "{not json\n").unwrap();
    let err = NgramIndex::build(&cfg(vec![bench.clone()], Some("q")))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bench.jsonl") && err.contains("line 2"),
        "{err}"
    );
    let err = cfg(vec![dir.path().join("missing.parquet")], None)
        .validate()
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.parquet"), "{err}");
}

// ---- the command and the job section, on the scripted engine

const BIN: &str = env!("CARGO_BIN_EXE_cotforge");

fn run_ok(args: &[&str]) -> String {
    common::run_ok(BIN, args)
}

/// The scripted job with `extra` appended.
fn scripted_job(dir: &Path, name: &str, extra: &str) -> (PathBuf, PathBuf) {
    common::scripted_job(dir, name, |t| format!("{t}\n{extra}"))
}

fn final_chains(out: &Path) -> Vec<Chain> {
    cotforge::report::io::read_chains(&out.join("final/chains.parquet")).unwrap()
}

/// A benchmark holding two long prompts the output shipped (any recipe: with
/// the default ship policy few scripted marco_cot chains verify).
fn bench_of(out: &Path, path: &Path) -> Vec<String> {
    let mut prompts: Vec<String> = final_chains(out)
        .into_iter()
        .filter(|c| words(&c.prompt).len() >= 20)
        .map(|c| c.prompt)
        .collect();
    prompts.sort();
    prompts.dedup();
    let chosen: Vec<String> = prompts.into_iter().take(2).collect();
    assert_eq!(chosen.len(), 2);
    let text: String = chosen
        .iter()
        .map(|p| serde_json::json!({ "question": p, "answer": "x" }).to_string() + "\n")
        .collect();
    std::fs::write(path, text).unwrap();
    chosen
}

/// `cotforge decontaminate OUT --against BENCH --column question`.
fn decontaminate_args<'a>(out: &'a Path, bench: &'a Path) -> [&'a str; 6] {
    [
        "decontaminate",
        out.to_str().unwrap(),
        "--against",
        bench.to_str().unwrap(),
        "--column",
        "question",
    ]
}

fn final_bytes(out: &Path) -> Vec<Vec<u8>> {
    ["final/chains.parquet", &format!("final/{REJECTS_FILE}")]
        .iter()
        .map(|f| std::fs::read(out.join(f)).unwrap())
        .collect()
}

#[test]
fn decontaminate_command_switches_a_finalized_output_and_a_killed_run_converges() {
    let dir = tempfile::tempdir().unwrap();
    let (job, out) = scripted_job(dir.path(), "night", "");
    run_ok(&["run", job.to_str().unwrap(), "--no-progress"]);
    let pristine = dir.path().join("pristine");
    common::copy_dir(&out, &pristine);
    let bench = dir.path().join("bench.jsonl");
    let chosen = bench_of(&out, &bench);
    let before = final_chains(&out);
    let expected = before.iter().filter(|c| chosen.contains(&c.prompt)).count();
    assert!(expected >= 2);

    let text = run_ok(&decontaminate_args(&out, &bench));
    assert!(
        text.starts_with(&format!("{expected} rows flagged")),
        "{text}"
    );
    let after = final_chains(&out);
    assert_eq!(after.len(), before.len() - expected);
    assert!(after.iter().all(|c| !chosen.contains(&c.prompt)));
    let rejects =
        cotforge::report::io::read_rejects(&out.join("final").join(REJECTS_FILE)).unwrap();
    assert_eq!(rejects.len(), expected);
    for r in &rejects {
        assert_eq!(r.stage, STAGE);
        assert!(
            r.reason.contains("bench.jsonl")
                && (r.reason.contains("line 1") || r.reason.contains("line 2"))
                && r.reason.contains("(prompt)"),
            "{}",
            r.reason
        );
        let c: Chain = serde_json::from_str(&r.row).unwrap();
        assert!(chosen.contains(&c.prompt));
    }
    assert!(out.join("decontam.idx").is_file());
    let done = final_bytes(&out);

    // Rerun: nothing new, nothing rewritten, the index reused.
    let text = run_ok(&decontaminate_args(&out, &bench));
    assert!(
        text.starts_with("0 rows flagged") && text.contains("reused"),
        "{text}"
    );
    assert_eq!(final_bytes(&out), done);
    let stats = run_ok(&["stats", out.to_str().unwrap()]);
    assert!(stats.contains("benchmark bench.jsonl"), "{stats}");

    // Killed after the rejects are committed but before the chains are, or
    // while the chains' temporary file exists: the rerun gives the same bytes.
    for (k, point) in ["decontaminate.rejects_written:1", "commit.before_rename:3"]
        .iter()
        .enumerate()
    {
        let copy = dir.path().join(format!("killed-{k}"));
        common::copy_dir(&pristine, &copy);
        let args = decontaminate_args(&copy, &bench);
        let o = Command::new(BIN)
            .args(args)
            .env("COTFORGE_CRASH_AT", point)
            .output()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(o.status.signal(), Some(9), "{point}: not killed");
        run_ok(&args);
        assert_eq!(final_bytes(&copy), done, "{point}");
    }
}

#[test]
fn decontaminate_section_applies_in_finalize_and_reuses_the_index_beside_dedup() {
    let dir = tempfile::tempdir().unwrap();
    let (plain_job, plain) = scripted_job(dir.path(), "plain", "");
    run_ok(&["run", plain_job.to_str().unwrap(), "--no-progress"]);
    let bench = dir.path().join("bench.jsonl");
    let chosen = bench_of(&plain, &bench);
    let index = dir.path().join("nightly/dedup-index");
    std::fs::create_dir_all(index.parent().unwrap()).unwrap();
    let (job, out) = scripted_job(dir.path(), "clean", "");
    let text = std::fs::read_to_string(&job).unwrap().replace(
        "[dedup]\nenabled = true\n",
        &format!(
            "[dedup]\nenabled = true\nindex = {:?}\n\n[decontaminate]\nagainst = [{:?}]\ncolumn = \"question\"\nn = 13\n",
            index.display().to_string(),
            bench.display().to_string()
        ),
    );
    assert!(text.contains("[decontaminate]"));
    std::fs::write(&job, text).unwrap();
    run_ok(&["run", job.to_str().unwrap(), "--no-progress"]);
    let shipped = final_chains(&out);
    let expected = final_chains(&plain)
        .iter()
        .filter(|c| chosen.contains(&c.prompt))
        .count();
    assert!(expected >= 2);
    assert_eq!(shipped.len(), final_chains(&plain).len() - expected);
    assert!(shipped.iter().all(|c| !chosen.contains(&c.prompt)));
    let rejects =
        cotforge::report::io::read_rejects(&out.join("final").join(REJECTS_FILE)).unwrap();
    assert_eq!(rejects.len(), expected);
    // Without the section the file is there and empty.
    assert!(
        cotforge::report::io::read_rejects(&plain.join("final").join(REJECTS_FILE))
            .unwrap()
            .is_empty()
    );
    // The export ships what final/ ships.
    let exported: usize = std::fs::read_dir(out.join("export/data"))
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let f = std::fs::File::open(p).unwrap();
            parquet::file::reader::SerializedFileReader::new(f)
                .map(|r| {
                    use parquet::file::reader::FileReader;
                    r.metadata().file_metadata().num_rows() as usize
                })
                .unwrap()
        })
        .sum();
    assert_eq!(exported, shipped.len());
    let idx = PathBuf::from(format!("{}.decontam", index.display()));
    assert!(idx.is_file(), "index not beside the dedup index");
    let mtime = std::fs::metadata(&idx).unwrap().modified().unwrap();
    let bytes = final_bytes(&out);
    run_ok(&["finalize", job.to_str().unwrap()]);
    assert_eq!(final_bytes(&out), bytes, "finalize is not deterministic");
    assert_eq!(
        std::fs::metadata(&idx).unwrap().modified().unwrap(),
        mtime,
        "the index was rebuilt for the same benchmark"
    );
    let stats = std::fs::read_to_string(out.join("final/stats.txt")).unwrap();
    assert!(
        stats.contains("decontaminate") && stats.contains("benchmark bench.jsonl"),
        "{stats}"
    );
}
