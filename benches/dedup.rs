//! Dedup at scale: N synthetic chains of ~300 words, 5% of them planted
//! near-duplicates (1-4 words substituted, Jaccard of 5-shingles >= ~0.87)
//! of an earlier chain. Prints chains/s (signatures, planning, total),
//! recall and precision of the planted duplicates, the on-disk index size
//! and peak RSS (VmHWM). Prints figures; asserts nothing.
//!
//! cargo bench --no-default-features --bench dedup -- --n 1000000
//! (or COTFORGE_BENCH_N=100000; COTFORGE_BENCH_PERM / COTFORGE_BENCH_BANDS override
//! num_perm / bands)

mod support;

use std::time::Instant;

use cotforge::stages::dedup::{ChainKey, DedupConfig};
use rayon::prelude::*;

const WORDS: usize = 300;
const VOCAB: u64 = 20_000;
const DUP_EVERY: u64 = 20; // 5%

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

fn mix(i: u64, salt: u64) -> u64 {
    cotforge::stages::minhash::splitmix64(i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt)
}

/// The base chain a planted duplicate copies (always a non-planted chain before it).
fn base_of(i: u64) -> Option<u64> {
    if i % DUP_EVERY != DUP_EVERY - 1 || i < DUP_EVERY {
        return None;
    }
    let mut j = mix(i, 1) % i;
    if j % DUP_EVERY == DUP_EVERY - 1 {
        j -= 1;
    }
    Some(j)
}

fn words_of(i: u64) -> Vec<u64> {
    let mut x = mix(i, 7) | 1;
    (0..WORDS)
        .map(|_| {
            x = xorshift(x);
            // skewed word frequencies: squares concentrate on small ids
            let u = (x >> 11) as f64 / (1u64 << 53) as f64;
            (u * u * VOCAB as f64) as u64
        })
        .collect()
}

fn text_of(i: u64) -> (String, String) {
    let mut w = match base_of(i) {
        Some(j) => {
            let mut w = words_of(j);
            let edits = 1 + mix(i, 3) % 4;
            for e in 0..edits {
                let pos = (mix(i, 10 + e) % WORDS as u64) as usize;
                w[pos] = VOCAB + mix(i, 20 + e) % 1000;
            }
            w
        }
        None => words_of(i),
    };
    let prompt_words = w.split_off(WORDS - 30);
    let render = |ws: &[u64]| {
        ws.iter()
            .map(|x| format!("w{x}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    (render(&prompt_words), render(&w))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: u64 = args
        .iter()
        .position(|a| a == "--n")
        .and_then(|p| args.get(p + 1))
        .and_then(|v| v.parse().ok())
        .or_else(|| {
            std::env::var("COTFORGE_BENCH_N")
                .ok()
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(1_000_000);
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<usize>().ok());
    let mut cfg = DedupConfig::default();
    if let Some(p) = env("COTFORGE_BENCH_PERM") {
        cfg.num_perm = p;
    }
    if let Some(b) = env("COTFORGE_BENCH_BANDS") {
        cfg.bands = b;
    }
    let dedup = match cfg.build() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("bad config: {e}");
            return;
        }
    };
    println!(
        "dedup bench: n={n}, ~{WORDS} words/chain, {}% planted near-duplicates, num_perm={} bands={} shingle={} threshold={} threads={}",
        100 / DUP_EVERY,
        cfg.num_perm,
        cfg.bands,
        cfg.shingle,
        cfg.threshold,
        rayon::current_num_threads()
    );

    let t0 = Instant::now();
    let mut t_gen = 0.0;
    let mut keys: Vec<ChainKey> = Vec::with_capacity(n as usize);
    let batch = 50_000u64;
    let mut start = 0;
    while start < n {
        let end = (start + batch).min(n);
        let tg = Instant::now();
        let texts: Vec<(String, String)> = (start..end).into_par_iter().map(text_of).collect();
        t_gen += tg.elapsed().as_secs_f64();
        let part: Vec<ChainKey> = texts
            .par_iter()
            .enumerate()
            .map(|(k, (prompt, reasoning))| {
                let i = start + k as u64;
                let reward = 0.5 + (mix(i, 99) % 5000) as f64 / 10_000.0;
                dedup.key_of(&format!("c{i:08}"), reward, prompt, reasoning, "42")
            })
            .collect();
        keys.extend(part);
        start = end;
    }
    let t_keys = t0.elapsed().as_secs_f64() - t_gen;

    let t1 = Instant::now();
    let plan = dedup.plan(&keys, None);
    let t_plan = t1.elapsed().as_secs_f64();

    // ground truth: cluster = base chain id
    let cluster = |i: u64| base_of(i).unwrap_or(i);
    let planted = (0..n).filter(|&i| base_of(i).is_some()).count() as u64;
    let (mut removed, mut tp) = (0u64, 0u64);
    for (i, d) in plan.dup_of.iter().enumerate() {
        if let Some(of) = d {
            removed += 1;
            let j: u64 = of.trim_start_matches('c').parse().unwrap_or(u64::MAX);
            if j != u64::MAX && cluster(j) == cluster(i as u64) {
                tp += 1;
            }
        }
    }
    // Misses per planted cluster (base + its duplicates): kept members - 1.
    // When the base itself was removed in favour of a higher-ranked duplicate,
    // a sibling duplicate may be too far from that one to match (greedy
    // clustering), which is not a missed LSH candidate.
    let mut clusters: std::collections::HashMap<u64, (u64, bool)> = Default::default();
    for i in 0..n {
        if let Some(j) = base_of(i) {
            let e = clusters.entry(j).or_insert((
                u64::from(plan.dup_of[j as usize].is_none()),
                plan.dup_of[j as usize].is_some(),
            ));
            e.0 += u64::from(plan.dup_of[i as usize].is_none());
        }
    }
    let chained: u64 = clusters
        .values()
        .filter(|(_, base_removed)| *base_removed)
        .map(|(kept, _)| kept.saturating_sub(1))
        .sum();
    let recall = if planted > 0 {
        tp as f64 / planted as f64
    } else {
        1.0
    };
    let precision = if removed > 0 {
        tp as f64 / removed as f64
    } else {
        1.0
    };

    let t2 = Instant::now();
    let mut index = dedup.new_index();
    index.entries = plan.kept_entries(keys);
    let dir = std::env::temp_dir().join(format!("cotforge-dedup-bench-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("dedup.idx");
    let saved = index.save(&path);
    let t_save = t2.elapsed().as_secs_f64();
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let index_len = index.len();
    drop(index);
    let t3 = Instant::now();
    let loaded = cotforge::stages::dedup::SignatureIndex::load(&path).map(|i| i.len());
    let t_load = t3.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);

    let total = t_keys + t_plan;
    println!("synthetic text generation (not dedup, excluded below): {t_gen:.1} s");
    println!(
        "keys (normalize + blake3 + shingles + minhash): {t_keys:.1} s = {:.0} chains/s",
        n as f64 / t_keys
    );
    println!(
        "planning (LSH insert/query + verify): {t_plan:.1} s = {:.0} chains/s",
        n as f64 / t_plan
    );
    println!("total: {total:.1} s = {:.0} chains/s", n as f64 / total);
    println!("planted duplicates: {planted}; removed: {removed}; true positives: {tp}");
    println!("recall {recall:.4}, precision {precision:.4}");
    println!(
        "missed: {} (of which {chained} had their base removed in favour of a sibling duplicate)",
        planted - tp
    );
    println!(
        "index: {} entries, {:.1} MiB, save {t_save:.2} s ({}), load {t_load:.2} s ({})",
        index_len,
        size as f64 / (1024.0 * 1024.0),
        if saved.is_ok() { "ok" } else { "FAILED" },
        match loaded {
            Ok(n) => format!("{n} entries"),
            Err(e) => format!("FAILED: {e}"),
        }
    );
    match support::vm_hwm_kib() {
        Some(k) => println!("peak RSS (VmHWM): {:.0} MiB", k as f64 / 1024.0),
        None => println!("peak RSS: unavailable"),
    }
}
