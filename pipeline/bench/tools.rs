//! llama.cpp's own tools as baselines: argument builders, runners and the
//! parsers of `llama-batched-bench` and `llama-perplexity` output.

use std::path::Path;
use std::process::Command;

use super::BenchError;
use crate::engine::EngineConfig;

type Result<T> = std::result::Result<T, BenchError>;

/// The llama.cpp the engine is built from (the `llama-cpp-sys-2` crate's vendored tree).
pub const COTFORGE_LLAMA_CPP: &str =
    "llama-cpp-2 =0.1.160 / llama-cpp-sys-2 =0.1.161 (vendored llama.cpp)";

/// Median of `v`; NaN for an empty list.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// S_TG per parallel level from llama-batched-bench's markdown table.
pub fn parse_batched_bench(out: &str) -> Result<Vec<(usize, f64)>> {
    let mut header: Option<Vec<String>> = None;
    let mut rows = Vec::new();
    for line in out.lines() {
        let line = line.trim();
        if !line.starts_with('|') {
            continue;
        }
        let cells: Vec<String> = line
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_string())
            .collect();
        if cells.iter().any(|c| c == "S_TG t/s") {
            header = Some(cells);
            continue;
        }
        let Some(h) = &header else { continue };
        let col = |name: &str| h.iter().position(|c| c == name);
        let (Some(b), Some(s)) = (col("B"), col("S_TG t/s")) else {
            continue;
        };
        if let (Some(Ok(b)), Some(Ok(s))) = (
            cells.get(b).map(|x| x.parse::<usize>()),
            cells.get(s).map(|x| x.parse::<f64>()),
        ) {
            rows.push((b, s));
        }
    }
    if rows.is_empty() {
        return Err(BenchError::Tool(format!(
            "no S_TG rows in llama-batched-bench output:\n{out}"
        )));
    }
    Ok(rows)
}

/// Tokens per second of llama-perplexity's prompt evaluation.
pub fn parse_perplexity(out: &str) -> Result<f64> {
    // llama_perf_context_print: prompt eval time = 4526.83 ms / 1024 tokens (...)
    for line in out.lines() {
        if let Some(rest) = line.split("prompt eval time =").nth(1) {
            let mut it = rest.split_whitespace();
            let num = |x: Option<&str>| x.and_then(|v| v.parse::<f64>().ok());
            let ms = num(it.next());
            let _ms_unit = it.next();
            let _slash = it.next();
            if let (Some(ms), Some(toks)) = (ms, num(it.next())) {
                return Ok(toks / (ms / 1000.0));
            }
        }
    }
    // Newer builds print no perf line without --perf: use the log timestamps
    // (`M.SS.mmm.uuu`) of "calculating perplexity over N chunks, n_ctx=C" and "Final estimate".
    let stamp = |line: &str| -> Option<f64> {
        let t: Vec<f64> = line
            .split_whitespace()
            .next()?
            .split('.')
            .map(|x| x.parse().ok())
            .collect::<Option<_>>()?;
        (t.len() == 4).then(|| t[0] * 60.0 + t[1] + t[2] / 1e3 + t[3] / 1e6)
    };
    let start = out
        .lines()
        .find(|l| l.contains("calculating perplexity over"));
    let end = out.lines().find(|l| l.contains("Final estimate"));
    if let (Some(s), Some(e)) = (start, end) {
        let num_after = |key: &str| -> Option<f64> {
            s.split(key)
                .nth(1)?
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        };
        // stdout's progress can glue onto stderr's line: take the stamp right before the message.
        let end_stamp = e
            .split(" I Final estimate")
            .next()
            .and_then(|p| p.split_whitespace().last());
        if let (Some(t0), Some(t1), Some(chunks), Some(n_ctx)) = (
            stamp(s),
            end_stamp.and_then(stamp),
            num_after("over "),
            num_after("n_ctx="),
        ) {
            return Ok(chunks * n_ctx / (t1 - t0).max(1e-9));
        }
    }
    Err(BenchError::Tool(format!(
        "no 'prompt eval time' line in llama-perplexity output:\n{out}"
    )))
}

pub fn run_tool(bin: &Path, args: &[String]) -> Result<String> {
    let out = Command::new(bin)
        .args(args)
        .output()
        .map_err(|e| BenchError::Tool(format!("running {}: {e}", bin.display())))?;
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(BenchError::Tool(format!(
            "{} failed ({}):\n{text}",
            bin.display(),
            out.status
        )));
    }
    Ok(text)
}

pub fn tool_version(bin: &Path) -> String {
    run_tool(bin, &["--version".into()])
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.contains("version"))
                .map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// llama-batched-bench's arguments: unified KV, batch 2048, ubatch 512 (as cotforge's engine).
pub fn batched_bench_args(
    model: &Path,
    ctx: usize,
    npp: usize,
    ntg: usize,
    npl: &str,
    threads: usize,
) -> Vec<String> {
    let mut v: Vec<String> = vec!["-m".into(), model.display().to_string()];
    for (k, x) in [
        ("-c", ctx.to_string()),
        ("-b", "2048".into()),
        ("-ub", "512".into()),
        ("-npp", npp.to_string()),
        ("-ntg", ntg.to_string()),
        ("-npl", npl.to_string()),
        ("-t", threads.to_string()),
    ] {
        v.push(k.into());
        v.push(x);
    }
    v.push("-kvu".into());
    v
}

/// Tokens each sequence generates in [`batched_bench_tg`].
pub const TG_TOKENS: usize = 128;

/// llama-batched-bench's TG at the engine's parallel level and threads,
/// prompt `npp` tokens per sequence, [`TG_TOKENS`] generated.
pub fn batched_bench_tg(bin: &Path, e: &EngineConfig, threads: usize, npp: usize) -> Result<f64> {
    // Every sequence holds its prompt and what it generates; 256 spare cells
    // absorb llama.cpp rounding the KV cache up to its padding. Never below
    // 8192, the engine's default n_ctx: the baseline attends over a cache as
    // large as the one cotforge decodes with, or its TG would look better.
    let ctx = (e.n_parallel * (npp + TG_TOKENS) + 256).max(8192);
    let npl = e.n_parallel.to_string();
    let args = batched_bench_args(&e.model, ctx, npp, TG_TOKENS, &npl, threads);
    let rows = parse_batched_bench(&run_tool(bin, &args)?)?;
    rows.iter()
        .find(|(b, _)| *b == e.n_parallel)
        .map(|r| r.1)
        .ok_or_else(|| BenchError::Tool("llama-batched-bench printed no row for n_parallel".into()))
}

/// llama-batched-bench's TG at the search's mean KV occupancy: during TG it
/// holds about `n_parallel * (npp + ntg / 2)` cells, so `npp` is chosen to match.
pub fn matched_npp(mean_cells: f64, n_parallel: usize) -> usize {
    ((mean_cells / n_parallel.max(1) as f64) - 64.0)
        .round()
        .max(16.0) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_batched_bench_table() {
        let out = "main: n_kv_max = 8192\n\n|    PP |     TG |    B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |      T s |    S t/s |\n|-------|--------|------|--------|----------|----------|----------|----------|----------|----------|\n|   128 |    128 |    1 |    256 |    0.455 |   281.30 |    1.204 |   106.34 |    1.659 |   154.33 |\n|   128 |    128 |    4 |   1024 |    1.895 |   270.15 |    3.721 |   137.60 |    5.616 |   182.33 |\n";
        assert_eq!(
            parse_batched_bench(out).unwrap(),
            vec![(1, 106.34), (4, 137.60)]
        );
        assert!(parse_batched_bench("garbage").is_err());
    }

    #[test]
    fn parses_perplexity_timing() {
        let out = "llama_perf_context_print: prompt eval time =    4526.83 ms /  1024 tokens (    4.42 ms per token,   226.21 tokens per second)";
        assert!((parse_perplexity(out).unwrap() - 1024.0 / 4.52683).abs() < 1e-6);
    }

    #[test]
    fn parses_perplexity_log_timestamps() {
        let out = "0.00.218.068 I perplexity: calculating perplexity over 15 chunks, n_ctx=512, batch_size=512, n_seq=1\n0.01.949.051 I perplexity: 1.73 seconds per pass - ETA 0.25.377.711 I Final estimate: PPL = 4.5876 +/- 0.16878\n";
        let tps = parse_perplexity(out).unwrap();
        assert!(
            (tps - 15.0 * 512.0 / (25.377711 - 0.218068)).abs() < 1e-6,
            "{tps}"
        );
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
