//! `cotforge seeds import` on small files shaped like the four shipped seed
//! sets, and the committed samples in data/seeds/ ingest without rejects.

mod store_support;

use std::path::Path;

use cotforge::store::ingest::IngestRow;
use cotforge::store::{Ingest, IngestOptions};
use store_support::*;

fn seeds_of(p: &Path) -> Vec<cotforge::record::Seed> {
    Ingest::open(&[p], IngestOptions::default())
        .expect("open")
        .map(|i| match i.expect("row").row {
            IngestRow::Seed(s) => s,
            IngestRow::Reject(r) => panic!("unexpected reject {r:?}"),
        })
        .collect()
}

#[test]
fn the_four_seed_set_shapes_import_with_one_command_each() {
    let d = tempfile::tempdir().expect("tempdir");
    let p = |n: &str| d.path().join(n);
    std::fs::write(
        p("gsm8k.jsonl"),
        concat!(
            "{\"question\": \"Natalia sold 48 clips?\", \"answer\": \"48/2 = 24\\n#### 1,072\"}",
            "\n\n",
            "{\"question\": \"Weng earns $12?\", \"answer\": \"#### 10\"}",
            "\n"
        ),
    )
    .expect("write");
    std::fs::write(
        p("letters.json"),
        r#"[{"id": "real_0", "problem": "How many e in tree?", "solution": 2}]"#,
    )
    .expect("write");
    std::fs::write(
        p("demo.json"),
        r#"[{"instruction": "Is it true?", "response": "<Thought>\nyes\n</Thought>\n<Output>\nyes\n</Output>"}]"#,
    )
    .expect("write");
    std::fs::write(
        p("tasks.jsonl"),
        concat!(
            r#"{"id": "seed_task_1", "name": "antonyms", "instruction": "Relation?", "instances": [{"input": "Night : Day", "output": "opposites"}], "is_classification": false}"#,
            "\n",
            r#"{"id": "seed_task_2", "name": "x", "instruction": "Say hi.", "instances": [{"input": "", "output": "hi"}], "is_classification": false}"#,
            "\n",
            r#"{"id": "seed_task_3", "name": "broken", "instances": []}"#,
            "\n"
        ),
    )
    .expect("write");
    let s = |x: &Path| x.to_str().expect("utf8").to_string();
    let cmds: Vec<Vec<String>> = vec![
        vec![
            s(&p("gsm8k.jsonl")),
            "--prompt-field".into(),
            "question".into(),
            "--answer-field".into(),
            "answer".into(),
            "--source".into(),
            "gsm8k".into(),
            "--out".into(),
            s(&p("g.parquet")),
        ],
        vec![
            s(&p("letters.json")),
            "--id-field".into(),
            "id".into(),
            "--prompt-field".into(),
            "problem".into(),
            "--answer-field".into(),
            "solution".into(),
            "--out".into(),
            s(&p("l.parquet")),
        ],
        vec![
            s(&p("demo.json")),
            "--prompt-field".into(),
            "instruction".into(),
            "--response-field".into(),
            "response".into(),
            "--out".into(),
            s(&p("c.parquet")),
        ],
        vec![
            s(&p("tasks.jsonl")),
            "--id-field".into(),
            "id".into(),
            "--prompt-field".into(),
            "instruction".into(),
            "--input-field".into(),
            "instances.0.input".into(),
            "--meta-field".into(),
            "name".into(),
            "--out".into(),
            s(&p("s.parquet")),
        ],
    ];
    for c in &cmds {
        let mut args = vec!["seeds", "import"];
        args.extend(c.iter().map(String::as_str));
        let o = cli(&args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    }
    let g = seeds_of(&p("g.parquet"));
    assert_eq!(g.len(), 2);
    assert_eq!(g[0].reference_answer.as_deref(), Some("1072"));
    assert_eq!(g[1].reference_answer.as_deref(), Some("10"));
    assert_eq!(g[0].source.as_deref(), Some("gsm8k"));
    assert_eq!(g[0].id.len(), 32);
    let l = seeds_of(&p("l.parquet"));
    assert_eq!(
        (l[0].id.as_str(), l[0].reference_answer.as_deref()),
        ("real_0", Some("2"))
    );
    let c = seeds_of(&p("c.parquet"));
    assert!(c[0]
        .response
        .as_deref()
        .is_some_and(|r| r.starts_with("<Thought>")));
    let t = seeds_of(&p("s.parquet"));
    assert_eq!(t.len(), 2, "the record without an instruction is skipped");
    assert_eq!(t[0].prompt, "Relation?\n\nNight : Day");
    assert_eq!(t[1].prompt, "Say hi.");
    assert_eq!(t[0].meta.as_deref(), Some(r#"{"name":"antonyms"}"#));
    let o = cli(&[
        "seeds",
        "import",
        &s(&p("tasks.jsonl")),
        "--prompt-field",
        "instruction",
        "--out",
        &s(&p("x.parquet")),
    ]);
    assert!(
        stderr(&o).contains("tasks.jsonl:3: no prompt field `instruction`"),
        "{}",
        stderr(&o)
    );

    // Bad JSON is an error naming file and line; nothing is written.
    std::fs::write(p("bad.jsonl"), "{\"prompt\": \"a\"}\n{oops\n").expect("write");
    let o = cli(&[
        "seeds",
        "import",
        &s(&p("bad.jsonl")),
        "--out",
        &s(&p("bad.parquet")),
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("bad.jsonl: line 2: invalid JSON"),
        "{}",
        stderr(&o)
    );
    assert!(!p("bad.parquet").exists());
}

#[test]
fn committed_samples_ingest_cleanly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/seeds");
    for (name, rows) in [
        ("gsm8k", 32),
        ("letter_count", 16),
        ("cot_demo", 16),
        ("self_instruct", 16),
    ] {
        let s = seeds_of(&root.join(format!("{name}.parquet")));
        assert_eq!(s.len(), rows, "{name}");
        assert!(s.iter().all(|x| !x.prompt.trim().is_empty()));
    }
    for lic in [
        "gsm8k.LICENSE",
        "marco_o1.LICENSE",
        "marco_o1.NOTICE",
        "self_instruct.LICENSE",
    ] {
        assert!(
            root.join(lic).exists(),
            "{lic} must travel with the samples"
        );
    }
}
