//! Decontamination at scale: N synthetic shipped chains (~40-word prompt,
//! ~260-word reasoning) against M benchmark items (~50 words, a JSONL file).
//! 1% of the chains are planted contaminations: half carry a benchmark item
//! as their prompt (re-cased, re-punctuated), half a 13–20-word span of one
//! inside the reasoning. Prints index build / save / load times, chains/s of
//! the check (what finalize runs) next to two baselines measured on the same
//! chains in the same run (word hashing alone, and dedup's MinHash key),
//! recall and false positives of the planted rows, and peak RSS (VmHWM).
//! Prints figures; asserts nothing.
//!
//! cargo bench --no-default-features --bench decontam -- --n 1000000 --items 10000
//! (or COTFORGE_BENCH_N / COTFORGE_BENCH_ITEMS)

use std::io::Write;
mod support;

use std::time::Instant;

use cotforge::record::Chain;
use cotforge::stages::decontam::{DecontamConfig, NgramIndex, DEFAULT_N};
use cotforge::stages::dedup::DedupConfig;
use cotforge::stages::minhash::splitmix64;
use rayon::prelude::*;

const VOCAB: u64 = 20_000;
const PLANT_EVERY: u64 = 100; // 1%

fn mix(i: u64, salt: u64) -> u64 {
    splitmix64(i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt)
}

/// `len` words with skewed frequencies (squares concentrate on small ids).
fn words(seed: u64, len: usize) -> Vec<String> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x = splitmix64(x);
            let u = (x >> 11) as f64 / (1u64 << 53) as f64;
            format!("w{}", (u * u * VOCAB as f64) as u64)
        })
        .collect()
}

fn item(j: u64) -> Vec<String> {
    words(mix(j, 0xBE), 40 + (mix(j, 0xEF) % 20) as usize)
}

/// Chain `i`, and whether it is planted.
fn chain(i: u64, items: u64) -> (Chain, bool) {
    let mut prompt = words(mix(i, 1), 40).join(" ");
    let mut reasoning = words(mix(i, 2), 260);
    let planted = i % PLANT_EVERY == PLANT_EVERY - 1;
    if planted {
        let it = item(mix(i, 3) % items);
        if (i / PLANT_EVERY).is_multiple_of(2) {
            prompt = format!("{}?!", it.join(", ").to_uppercase());
        } else {
            let len = DEFAULT_N + (mix(i, 4) % 8) as usize;
            let start = (mix(i, 5) as usize) % (it.len() - len + 1);
            let at = (mix(i, 6) as usize) % reasoning.len();
            reasoning.splice(at..at, it[start..start + len].iter().cloned());
        }
    }
    (
        Chain {
            id: format!("c{i:08}"),
            seed_id: format!("s{}", i / 4),
            prompt,
            reasoning: reasoning.join(" "),
            answer: "42".into(),
            reward: 0.5,
            ..Default::default()
        },
        planted,
    )
}

fn arg(args: &[String], name: &str, env: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|p| args.get(p + 1))
        .and_then(|v| v.parse().ok())
        .or_else(|| std::env::var(env).ok().and_then(|v| v.parse().ok()))
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n = arg(&args, "--n", "COTFORGE_BENCH_N", 1_000_000);
    let items = arg(&args, "--items", "COTFORGE_BENCH_ITEMS", 10_000).max(1);
    println!(
        "decontam bench: {n} chains (~300 words) against {items} benchmark items (~50 words), n = {DEFAULT_N}, {}% planted, threads={}",
        100 / PLANT_EVERY,
        rayon::current_num_threads()
    );
    let dir = std::env::temp_dir().join(format!("cotforge-decontam-bench-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let bench = dir.join("bench.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&bench).expect("bench file"));
    for j in 0..items {
        let q = item(j).join(" ") + ".";
        let _ = writeln!(f, "{}", serde_json::json!({ "question": q }));
    }
    drop(f);
    let cfg = DecontamConfig {
        against: vec![bench],
        column: Some("question".into()),
        n: DEFAULT_N,
        index: None,
    };
    let t = Instant::now();
    let index = match NgramIndex::build(&cfg) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("index build failed: {e}");
            return;
        }
    };
    let t_build = t.elapsed().as_secs_f64();
    let path = dir.join("decontam.idx");
    let t = Instant::now();
    let saved = index.save(&path);
    let t_save = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let loaded = NgramIndex::load(&path);
    let t_load = t.elapsed().as_secs_f64();
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let _ = std::fs::remove_dir_all(&dir);
    let index = match loaded {
        Ok(i) if saved.is_ok() && i == index => i,
        other => {
            eprintln!("save/load failed: {:?} {:?}", saved.err(), other.err());
            return;
        }
    };
    let dedup = DedupConfig::default().build().expect("dedup config");

    let (mut t_gen, mut t_check, mut t_words, mut t_dedup) = (0.0, 0.0, 0.0, 0.0);
    let (mut planted, mut found, mut false_pos) = (0u64, 0u64, 0u64);
    let batch = 50_000u64;
    let mut start = 0;
    while start < n {
        let end = (start + batch).min(n);
        let t = Instant::now();
        let (chains, truth): (Vec<Chain>, Vec<bool>) = (start..end)
            .into_par_iter()
            .map(|i| chain(i, items))
            .unzip();
        t_gen += t.elapsed().as_secs_f64();
        planted += truth.iter().filter(|&&p| p).count() as u64;
        // Baseline 1: the normal form and word hashes alone (no n-grams, no lookups).
        let t = Instant::now();
        let w: usize = chains
            .par_iter()
            .map(|c| {
                cotforge::stages::decontam::word_hashes(&c.prompt).len()
                    + cotforge::stages::decontam::word_hashes(&c.reasoning).len()
            })
            .sum();
        t_words += t.elapsed().as_secs_f64();
        std::hint::black_box(w);
        // Baseline 2: dedup's key (exact hash + MinHash) of the same chains.
        let t = Instant::now();
        let keys: usize = chains.par_iter().map(|c| dedup.key(c).sig.len()).sum();
        t_dedup += t.elapsed().as_secs_f64();
        std::hint::black_box(keys);
        let ids: Vec<String> = chains.iter().map(|c| c.id.clone()).collect();
        let t = Instant::now();
        let (_, rejects) = index.split(chains);
        t_check += t.elapsed().as_secs_f64();
        let flagged: std::collections::HashSet<&str> = rejects
            .iter()
            .filter_map(|r| r.chain_id.as_deref())
            .collect();
        for (id, p) in ids.iter().zip(&truth) {
            match (flagged.contains(id.as_str()), p) {
                (true, true) => found += 1,
                (true, false) => false_pos += 1,
                _ => {}
            }
        }
        start = end;
    }
    let rate = |t: f64| n as f64 / t.max(1e-9);
    println!("synthetic text generation (excluded below): {t_gen:.1} s");
    println!(
        "index: {} n-grams from {} items ({} shorter than n), {:.1} MiB; build {t_build:.2} s, save {t_save:.2} s, load {t_load:.2} s",
        index.len(),
        items,
        index.short_items(),
        size as f64 / (1024.0 * 1024.0)
    );
    println!(
        "check (NFKC + words + {DEFAULT_N}-grams + lookups, prompt/reasoning/answer): {t_check:.1} s = {:.0} chains/s",
        rate(t_check)
    );
    println!(
        "baseline word hashing only: {t_words:.1} s = {:.0} chains/s (check / words time = {:.2}x)",
        rate(t_words),
        t_check / t_words.max(1e-9)
    );
    println!(
        "baseline dedup key (blake3 + MinHash 128): {t_dedup:.1} s = {:.0} chains/s (check / dedup-key time = {:.2}x)",
        rate(t_dedup),
        t_check / t_dedup.max(1e-9)
    );
    println!(
        "planted: {planted}; found: {found} (recall {:.4}); false positives: {false_pos}",
        found as f64 / planted.max(1) as f64
    );
    match support::vm_hwm_kib() {
        Some(k) => println!("peak RSS (VmHWM): {:.0} MiB", k as f64 / 1024.0),
        None => println!("peak RSS: unavailable"),
    }
}
