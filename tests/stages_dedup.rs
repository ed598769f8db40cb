//! Dedup: exact and near duplicates planted across shards and across two
//! consecutive runs are removed, distinct chains are kept, and the kept
//! duplicate is the deterministic one (highest reward, then smallest id).

use cotforge::record::{Chain, Recipe};
use cotforge::stages::dedup::{DedupConfig, SignatureIndex, Verify};

/// ~120 words of arithmetic reasoning, distinct per `n`.
fn reasoning(n: u64) -> String {
    let mut s = String::new();
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for i in 0..24 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let a = x % 997;
        let b = (x >> 20) % 89;
        s.push_str(&format!(
            "Step {i}: we take {a} items and add {b} more, giving {} in box {} now. ",
            a + b,
            (x >> 40) % 31
        ));
    }
    s
}

fn chain(id: &str, seed: u64, reward: f64) -> Chain {
    Chain {
        id: id.into(),
        seed_id: format!("seed-{seed}"),
        recipe: Some(Recipe::MarcoCot),
        prompt: format!("Problem {seed}: how many items end up in the boxes?"),
        reasoning: reasoning(seed),
        answer: format!("{}", seed * 7),
        reward,
        ..Default::default()
    }
}

/// Same content, a few words changed (near duplicate at Jaccard ~0.85-0.9).
fn near(c: &Chain, id: &str, reward: f64) -> Chain {
    let mut d = c.clone();
    d.id = id.into();
    d.reward = reward;
    let words: Vec<&str> = c.reasoning.split(' ').collect();
    d.reasoning = words
        .iter()
        .enumerate()
        .map(|(i, w)| if i == 40 || i == 120 { "changed" } else { w })
        .collect::<Vec<_>>()
        .join(" ");
    d
}

fn ids(v: &[Chain]) -> Vec<&str> {
    v.iter().map(|c| c.id.as_str()).collect()
}

#[test]
fn exact_and_near_across_shards_keep_best() {
    let dedup = DedupConfig::default().build().expect("config");
    let a = chain("a", 1, 0.70);
    let b = chain("b", 2, 0.80);
    let c = chain("c", 3, 0.90);
    // exact duplicate of a with whitespace/case noise and a higher reward: it wins
    let mut a2 = a.clone();
    a2.id = "a2".into();
    a2.reward = 0.75;
    a2.reasoning = format!("  {}  ", a.reasoning.to_uppercase().replace(". ", ".\n\n"));
    // near duplicate of b with the same reward but a smaller id: it wins (tie on reward)
    let b0 = near(&b, "0b", 0.80);
    // near duplicate of c with lower reward: c wins
    let c2 = near(&c, "c2", 0.50);
    // exact duplicate inside the same shard
    let mut c3 = c.clone();
    c3.id = "c3".into();
    c3.reward = 0.1;

    let shards = vec![
        vec![a.clone(), b.clone(), c3],
        vec![c2, a2, chain("d", 4, 0.6)],
        vec![b0, c.clone()],
    ];
    let (kept, rej) = dedup.apply_shards(shards, None);
    assert_eq!(ids(&kept[0]), Vec::<&str>::new());
    assert_eq!(ids(&kept[1]), ["a2", "d"]);
    assert_eq!(ids(&kept[2]), ["0b", "c"]);
    let mut reasons: Vec<(String, String)> = rej
        .iter()
        .map(|r| (r.chain_id.clone().unwrap_or_default(), r.reason.clone()))
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            ("a".to_string(), "duplicate-of a2".to_string()),
            ("b".to_string(), "duplicate-of 0b".to_string()),
            ("c2".to_string(), "duplicate-of c".to_string()),
            ("c3".to_string(), "duplicate-of c".to_string()),
        ]
    );
    assert!(rej.iter().all(|r| r.stage == "dedup"));
}

#[test]
fn decision_does_not_depend_on_order() {
    let dedup = DedupConfig::default().build().expect("config");
    let base: Vec<Chain> = (0..30)
        .map(|i| chain(&format!("x{i:02}"), i, 0.5 + (i % 5) as f64 * 0.1))
        .collect();
    let mut all = base.clone();
    for i in 0..30u64 {
        all.push(near(
            &base[i as usize],
            &format!("n{i:02}"),
            0.5 + ((i + 2) % 5) as f64 * 0.1,
        ));
    }
    let (k1, r1) = dedup.apply(all.clone(), None);
    let mut rev = all.clone();
    rev.reverse();
    let (k2, r2) = dedup.apply(rev, None);
    let mut s1: Vec<_> = ids(&k1);
    let mut s2: Vec<_> = ids(&k2);
    s1.sort();
    s2.sort();
    assert_eq!(s1, s2);
    assert_eq!(s1.len(), 30);
    let mut rr1: Vec<_> = r1
        .iter()
        .map(|r| (r.chain_id.clone(), r.reason.clone()))
        .collect();
    let mut rr2: Vec<_> = r2
        .iter()
        .map(|r| (r.chain_id.clone(), r.reason.clone()))
        .collect();
    rr1.sort();
    rr2.sort();
    assert_eq!(rr1, rr2);
}

#[test]
fn distinct_chains_are_all_kept() {
    for verify in [Verify::Estimated, Verify::Exact] {
        let dedup = DedupConfig {
            verify,
            ..Default::default()
        }
        .build()
        .expect("config");
        let chains: Vec<Chain> = (0..500).map(|i| chain(&format!("k{i}"), i, 0.7)).collect();
        let (kept, rej) = dedup.apply(chains, None);
        assert_eq!(kept.len(), 500, "{verify:?}: {:?}", rej.first());
    }
}

#[test]
fn threshold_separates_near_from_related() {
    // Same prompt, reasoning with ~35% of words different: related but not a duplicate at 0.8.
    let dedup = DedupConfig {
        verify: Verify::Exact,
        ..Default::default()
    }
    .build()
    .expect("config");
    let a = chain("a", 9, 0.9);
    let mut b = a.clone();
    b.id = "b".into();
    b.reasoning = a
        .reasoning
        .split(' ')
        .enumerate()
        .map(|(i, w)| {
            if i.is_multiple_of(3) {
                format!("{w}x")
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    let (kept, _) = dedup.apply(vec![a.clone(), b], None);
    assert_eq!(kept.len(), 2);
    let (kept, _) = dedup.apply(vec![a.clone(), near(&a, "a-near", 0.1)], None);
    assert_eq!(ids(&kept), ["a"]);
}

#[test]
fn second_run_drops_what_first_run_shipped() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("dedup.idx");
    let cfg = DedupConfig::default();
    let dedup = cfg.build().expect("config");

    // night 1
    let night1: Vec<Chain> = (0..20)
        .map(|i| chain(&format!("n1-{i:02}"), i, 0.6))
        .collect();
    let mut index = dedup.open_index(&path).expect("empty index");
    assert!(index.is_empty());
    let (kept1, rej1) = dedup.apply(night1.clone(), Some(&mut index));
    assert_eq!(kept1.len(), 20);
    assert!(rej1.is_empty());
    index.save(&path).expect("save");
    assert!(!dir.path().join("dedup.idx.tmp").exists());

    // night 2: exact repeats and near repeats of night 1 (even with higher reward) + new ones
    let mut night2 = Vec::new();
    let mut exact = night1[3].clone();
    exact.id = "n2-exact".into();
    exact.reward = 0.99;
    night2.push(exact);
    night2.push(near(&night1[7], "n2-near", 0.95));
    for i in 100..110 {
        night2.push(chain(&format!("n2-new-{i}"), i, 0.7));
    }
    let mut index = dedup.open_index(&path).expect("load");
    assert_eq!(index.len(), 20);
    let (kept2, rej2) = dedup.apply(night2, Some(&mut index));
    assert_eq!(kept2.len(), 10);
    let mut r: Vec<_> = rej2
        .iter()
        .map(|r| (r.chain_id.clone().unwrap_or_default(), r.reason.clone()))
        .collect();
    r.sort();
    assert_eq!(
        r,
        [
            ("n2-exact".to_string(), "duplicate-of n1-03".to_string()),
            ("n2-near".to_string(), "duplicate-of n1-07".to_string()),
        ]
    );
    index.save(&path).expect("save");
    assert_eq!(SignatureIndex::load(&path).expect("reload").len(), 30);
}

#[test]
fn index_rejects_corruption_and_mismatched_params() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("i.idx");
    let dedup = DedupConfig::default().build().expect("config");
    let mut index = dedup.new_index();
    let _ = dedup.apply(
        (0..5).map(|i| chain(&format!("z{i}"), i, 0.5)).collect(),
        Some(&mut index),
    );
    index.save(&path).expect("save");
    let loaded = SignatureIndex::load(&path).expect("load");
    assert_eq!(loaded, index);

    let other = DedupConfig {
        seed: 7,
        ..Default::default()
    }
    .build()
    .expect("config");
    let err = other.open_index(&path).expect_err("seed mismatch");
    assert!(err.to_string().contains("not comparable"), "{err}");

    let mut bytes = std::fs::read(&path).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xFF;
    std::fs::write(&path, &bytes).expect("write");
    let err = SignatureIndex::load(&path).expect_err("corrupt");
    assert!(err.to_string().contains("checksum"), "{err}");
    std::fs::write(&path, &bytes[..bytes.len() - 40]).expect("write");
    assert!(SignatureIndex::load(&path).is_err());
}

#[test]
fn bad_configs_fail() {
    assert!(DedupConfig {
        num_perm: 100,
        bands: 16,
        ..Default::default()
    }
    .build()
    .is_err());
    assert!(DedupConfig {
        threshold: 0.0,
        ..Default::default()
    }
    .build()
    .is_err());
}
