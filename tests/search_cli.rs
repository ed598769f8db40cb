//! `cotforge search` end to end with the scripted engine: seed Parquet in
//! (rows the ingest refuses go to rejected.jsonl with the reason), results,
//! chains and one tree JSON per seed out, `inspect-tree` draws a tree.

mod store_support;

use std::process::Command;

use cotforge::record::Seed;
use store_support::*;

fn lines(p: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

#[test]
fn search_reads_seed_parquet_and_rejects_bad_rows() {
    let d = tempfile::tempdir().expect("tempdir");
    let mut seeds = synthetic_seeds(3);
    seeds.push(Seed {
        id: "blank".into(),
        prompt: "   ".into(),
        ..Default::default()
    });
    let path = d.path().join("seeds.parquet");
    write_seeds(&path, &seeds);
    let out = d.path().join("out");
    let o = Command::new(bin())
        .args([
            "search",
            "--engine",
            "scripted",
            "--quiet",
            "--rollouts",
            "3",
        ])
        .arg("--seeds")
        .arg(&path)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run cotforge search");
    assert!(o.status.success(), "{}", stderr(&o));

    let results = lines(&out.join("results.jsonl"));
    let ids: Vec<_> = results.iter().map(|r| r["seed_id"].clone()).collect();
    assert_eq!(ids, ["s0000", "s0001", "s0002"]);
    for r in &results {
        assert!(!r["chains"].as_array().expect("chains").is_empty());
        // Both rules' picks are reported, whichever rule is configured.
        assert!(r["picks"]["most_visited"].is_u64() && r["picks"]["highest_reward"].is_u64());
    }
    let rejects = lines(&out.join("rejected.jsonl"));
    assert_eq!(rejects.len(), 1);
    assert_eq!(rejects[0]["seed_id"], "blank");
    assert!(
        rejects[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("empty prompt")),
        "{}",
        rejects[0]
    );
    assert!(!lines(&out.join("chains.jsonl")).is_empty());

    let tree = out.join("trees/s0001.json");
    let o = Command::new(bin())
        .arg("inspect-tree")
        .arg(&tree)
        .output()
        .expect("inspect-tree");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("N="));
}
