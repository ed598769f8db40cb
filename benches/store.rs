//! Data-plane benchmark: write 1,000,000 synthetic seed rows to Parquet, then
//! ingest them (streaming, with every row check) and write them back out as a
//! shard would. Prints rows/s, MB/s and peak RSS (VmHWM) for 250k and 1M rows,
//! each size in a fresh child process so peaks do not mix; with and without the
//! duplicate-id check (whose set is the only state that grows with rows).
//!
//! `CARGO_TARGET_DIR=/work/target-dev cargo bench --no-default-features --bench store`
//!
//! Reading the RSS figures: with glibc's default (dynamic) mmap threshold the
//! peak creeps up a few MB per doubling of rows from allocator fragmentation;
//! run a child with `MALLOC_MMAP_THRESHOLD_=131072` to see the data plane's own
//! footprint, which is flat (e.g. `target/release/deps/store-* --child 2000000 0`).

use std::process::Command;
use std::time::Instant;

use cotforge::record::Seed;
use cotforge::store::ingest::IngestRow;
use cotforge::store::parquet_io::{ParquetSink, WriteOptions};
use cotforge::store::schema::{seeds_schema, seeds_to_batch};
use cotforge::store::{Ingest, IngestOptions};

const WORDS: &[&str] = &[
    "apples", "train", "leaves", "station", "at", "seven", "blue", "marbles", "how", "many",
    "does", "she", "have", "left", "after", "giving", "away", "half", "of", "them", "to", "her",
    "brother", "total", "cost", "dollars", "each", "hour", "miles", "per",
];

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn seed(i: u64) -> Seed {
    let mut h = mix(i);
    let n = 20 + (h % 30) as usize;
    let mut prompt = format!("Problem {i}:");
    for _ in 0..n {
        h = mix(h);
        prompt.push(' ');
        prompt.push_str(WORDS[(h % WORDS.len() as u64) as usize]);
        if h.is_multiple_of(7) {
            prompt.push_str(&format!(" {}", h % 1000));
        }
    }
    prompt.push('?');
    Seed {
        id: format!("seed-{i:08}"),
        prompt,
        reference_answer: Some((h % 500).to_string()),
        source: Some("synthetic".into()),
        ..Default::default()
    }
}

fn status_kb(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn child(rows: u64, dedup: bool) -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let opts = WriteOptions::default();
    let rss0 = status_kb("VmRSS:");

    // 1. Write the seed file, 8192 rows per batch.
    let seeds_path = dir.path().join("seeds.parquet");
    let t = Instant::now();
    let mut sink = ParquetSink::create(&seeds_path, seeds_schema(), &opts)?;
    let mut text_bytes = 0u64;
    let mut buf = Vec::with_capacity(8192);
    for i in 0..rows {
        let s = seed(i);
        text_bytes += (s.id.len() + s.prompt.len()) as u64;
        buf.push(s);
        if buf.len() == 8192 {
            sink.write(&seeds_to_batch(&buf)?)?;
            buf.clear();
        }
    }
    if !buf.is_empty() {
        sink.write(&seeds_to_batch(&buf)?)?;
        buf.clear();
    }
    let f = sink.commit()?;
    let write_s = t.elapsed().as_secs_f64();
    let hwm_write = status_kb("VmHWM:");

    // 2. Ingest (all row checks) and write back out as a shard file.
    let t = Instant::now();
    let ingest = Ingest::open(
        &[&seeds_path],
        IngestOptions {
            check_duplicates: dedup,
            ..IngestOptions::default()
        },
    )?;
    let out_path = dir.path().join("shard.parquet");
    let mut sink = ParquetSink::create(&out_path, seeds_schema(), &opts)?;
    let (mut accepted, mut rejected) = (0u64, 0u64);
    for item in ingest {
        match item?.row {
            IngestRow::Seed(s) => {
                accepted += 1;
                buf.push(s);
            }
            IngestRow::Reject(_) => rejected += 1,
        }
        if buf.len() == 8192 {
            sink.write(&seeds_to_batch(&buf)?)?;
            buf.clear();
        }
    }
    if !buf.is_empty() {
        sink.write(&seeds_to_batch(&buf)?)?;
    }
    let g = sink.commit()?;
    let ingest_s = t.elapsed().as_secs_f64();
    let hwm = status_kb("VmHWM:");
    assert_eq!(accepted + rejected, rows);
    let mb = |b: u64| b as f64 / 1e6;
    println!(
        "{rows:>9} rows  dedup={:<5} | write {:>9.0} rows/s {:>7.1} MB/s text, file {:>6.1} MB | ingest+write {:>9.0} rows/s {:>7.1} MB/s text, {:>6.1} MB/s file in | RSS start {:>4} MB, peak after write {:>4} MB, peak after ingest {:>4} MB",
        dedup,
        rows as f64 / write_s,
        mb(text_bytes) / write_s,
        mb(f.bytes),
        rows as f64 / ingest_s,
        mb(text_bytes) / ingest_s,
        mb(f.bytes) / ingest_s,
        rss0 / 1024,
        hwm_write / 1024,
        hwm / 1024,
    );
    let _ = g;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let rows = args.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or(1000);
        let dedup = args.get(i + 2).map(|v| v == "1").unwrap_or(true);
        return child(rows, dedup);
    }
    let exe = std::env::current_exe()?;
    println!("store benchmark: seed Parquet write, then ingest + shard write (zstd 3, 10k-row groups, 8192-row batches)");
    for dedup in [true, false] {
        for rows in [250_000u64, 1_000_000] {
            let st = Command::new(&exe)
                .args(["--child", &rows.to_string(), if dedup { "1" } else { "0" }])
                .status()?;
            if !st.success() {
                return Err(format!("child {rows} failed: {st}").into());
            }
        }
    }
    Ok(())
}
