//! Seeded temperature / top-p sampling over raw logits, done in Rust.
//!
//! Each draw's randomness is a pure function of `(seed, position)`, so a
//! sequence samples the same token whatever else shares its batch and in
//! whichever order sequences are stepped: the basis of byte-identical reruns.

use super::{top_k_logits, Token};
use serde::{Deserialize, Serialize};

/// How to pick the next token of one sequence.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Nucleus mass in (0, 1]; 1 disables top-p.
    pub top_p: f32,
    /// Seed of this sequence's stream of draws.
    pub seed: u64,
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
        }
    }
    pub fn new(temperature: f32, top_p: f32, seed: u64) -> Self {
        Self {
            temperature,
            top_p,
            seed,
        }
    }
}

/// Temperature of sampled text when a config names none (best-of-n samples,
/// search expansions, the decode benchmark). Below 1 so a small model stays
/// coherent, above 0 so siblings and samples differ.
pub const DEFAULT_TEMPERATURE: f32 = 0.7;
/// Nucleus (top-p) cut that goes with [`DEFAULT_TEMPERATURE`]: drops the
/// long tail of unlikely tokens that derails small models.
pub const DEFAULT_TOP_P: f32 = 0.9;

/// SplitMix64 finalizer: a well-mixed 64-bit hash of a 64-bit input. The one
/// copy: seeds, sampling draws, the scripted model and the MinHash permutations
/// (`stages::minhash`) all mix with it.
#[inline]
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Derive a child seed from a parent seed and a label (e.g. a child index).
pub fn derive_seed(seed: u64, label: u64) -> u64 {
    splitmix64(seed ^ splitmix64(label.wrapping_add(0x51_7C_C1_B7_27_22_0A_95)))
}

/// A uniform draw in [0, 1) for `(seed, position)`.
pub fn uniform(seed: u64, position: u64) -> f64 {
    (derive_seed(seed, position) >> 11) as f64 / (1u64 << 53) as f64
}

/// Index of the largest logit (lowest id on ties).
pub fn argmax(logits: &[f32]) -> Token {
    let mut best = 0usize;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as Token
}

/// Logits more than this many temperature-scaled nats below the maximum carry
/// less than e^-25 of the top token's mass each; even 10^6 of them change the
/// normalizer by under 1e-4 relative, so they are left out of the candidate set.
const TAIL_NATS: f64 = 25.0;

/// Sample a token for the draw at `position` of the stream `params.seed`.
pub fn sample(logits: &[f32], params: &SamplingParams, position: u64) -> Token {
    sample_top(logits, params, position, 1).0
}

/// [`sample`], also returning the `k` largest logits as [`top_k_logits`]
/// would (largest first, lower id on ties).
///
/// Exact temperature + nucleus sampling, but only the candidates near the top
/// are sorted: the nucleus is grown from the 64 most likely tokens until it
/// holds `top_p` of the mass, so a 50k vocabulary costs two linear passes.
/// The sorted head of the candidates is the top-k, so the confidence needs
/// no third pass over the vocabulary.
pub fn sample_top(
    logits: &[f32],
    params: &SamplingParams,
    position: u64,
    k: usize,
) -> (Token, Vec<(Token, f32)>) {
    if params.temperature <= 0.0 || logits.is_empty() {
        let top = top_k_logits(logits, k.max(1));
        let tok = top.first().map_or_else(|| argmax(logits), |t| t.0);
        return (tok, top);
    }
    let inv_t = 1.0 / params.temperature as f64;
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let cut = max - TAIL_NATS / inv_t;
    let mut cand: Vec<(Token, f64)> = Vec::with_capacity(1024);
    let mut z = 0.0f64;
    for (i, &l) in logits.iter().enumerate() {
        let l = l as f64;
        if l >= cut {
            let p = ((l - max) * inv_t).exp();
            z += p;
            cand.push((i as Token, p));
        }
    }
    // Deterministic order: probability descending, id ascending.
    let order = |a: &(Token, f64), b: &(Token, f64)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let top_p = params.top_p.clamp(0.0, 1.0) as f64;
    let keep = if top_p >= 1.0 {
        cand.len()
    } else {
        let mut head = 64.max(k).min(cand.len());
        loop {
            if head < cand.len() {
                cand.select_nth_unstable_by(head - 1, order);
            }
            cand[..head].sort_by(order);
            let mut acc = 0.0;
            let mut found = None;
            for (j, &(_, p)) in cand[..head].iter().enumerate() {
                acc += p / z;
                if acc >= top_p {
                    found = Some(j + 1);
                    break;
                }
            }
            match found {
                Some(n) => break n,
                None if head == cand.len() => break head,
                None => head = (head * 4).min(cand.len()),
            }
        }
    };
    if keep == cand.len() {
        cand.sort_by(order);
    }
    // Every token outside the candidates is below the cut, so the sorted head
    // is the top-k whenever there are at least k candidates.
    let top = if cand.len() >= k {
        cand[..k]
            .iter()
            .map(|&(t, _)| (t, logits[t as usize]))
            .collect()
    } else {
        top_k_logits(logits, k)
    };
    let kept = &cand[..keep.max(1)];
    let mass: f64 = kept.iter().map(|&(_, p)| p).sum();
    let r = uniform(params.seed, position) * mass;
    let mut acc = 0.0;
    for &(t, p) in kept {
        acc += p;
        if r < acc {
            return (t, top);
        }
    }
    (kept[kept.len() - 1].0, top)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_is_argmax() {
        let l = [0.1, 2.0, 1.9, -4.0];
        assert_eq!(sample(&l, &SamplingParams::greedy(), 7), 1);
    }

    #[test]
    fn same_seed_and_position_same_token() {
        let l: Vec<f32> = (0..1000).map(|i| ((i * 37 % 101) as f32) / 20.0).collect();
        let p = SamplingParams::new(0.7, 0.9, 42);
        for pos in 0..50 {
            assert_eq!(sample(&l, &p, pos), sample(&l, &p, pos));
        }
    }

    #[test]
    fn top_p_excludes_the_tail() {
        // One dominant token holding > 90% of the mass: top_p 0.9 must always pick it.
        let mut l = vec![0.0f32; 100];
        l[3] = 10.0;
        for pos in 0..200 {
            assert_eq!(sample(&l, &SamplingParams::new(1.0, 0.9, 1), pos), 3);
        }
    }

    #[test]
    fn nucleus_matches_a_full_sort() {
        // Many near-equal tokens: the nucleus needs more than the first 64 candidates.
        let l: Vec<f32> = (0..5000)
            .map(|i| ((i * 7919 % 1000) as f32) / 400.0)
            .collect();
        let p = SamplingParams::new(1.0, 0.95, 3);
        for pos in 0..64 {
            let t = sample(&l, &p, pos);
            // Reference: full sort, cumulative mass.
            let max = l.iter().copied().fold(f32::MIN, f32::max) as f64;
            let mut c: Vec<(Token, f64)> = l
                .iter()
                .enumerate()
                .map(|(i, &x)| (i as Token, (x as f64 - max).exp()))
                .collect();
            c.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            let z: f64 = c.iter().map(|x| x.1).sum();
            let mut acc = 0.0;
            let mut n = c.len();
            for (j, x) in c.iter().enumerate() {
                acc += x.1 / z;
                if acc >= 0.95 {
                    n = j + 1;
                    break;
                }
            }
            let mass: f64 = c[..n].iter().map(|x| x.1).sum();
            let r = uniform(3, pos) * mass;
            let mut a2 = 0.0;
            let mut want = c[n - 1].0;
            for x in &c[..n] {
                a2 += x.1;
                if r < a2 {
                    want = x.0;
                    break;
                }
            }
            assert_eq!(t, want, "position {pos}");
        }
    }

    #[test]
    fn sample_top_returns_the_top_k_of_a_full_scan() {
        // Ties, a spread of magnitudes, and a vocabulary where few tokens pass the cut.
        let wide: Vec<f32> = (0..5000)
            .map(|i| ((i * 7919 % 1000) as f32) / 40.0)
            .collect();
        let ties: Vec<f32> = (0..300).map(|i| (i % 7) as f32).collect();
        let mut sparse = vec![-100.0f32; 1000];
        sparse[10] = 5.0;
        sparse[20] = 4.0;
        for l in [&wide, &ties, &sparse] {
            for p in [
                SamplingParams::greedy(),
                SamplingParams::new(0.7, 0.9, 5),
                SamplingParams::new(1.0, 1.0, 6),
            ] {
                for pos in 0..8 {
                    let (t, top) = sample_top(l, &p, pos, 5);
                    assert_eq!(top, top_k_logits(l, 5));
                    assert_eq!(t, sample(l, &p, pos));
                }
            }
        }
    }

    #[test]
    fn temperature_spreads_choices() {
        let l = vec![1.0f32, 1.0, 1.0, 1.0];
        let p = SamplingParams::new(1.0, 1.0, 9);
        let mut seen = [0; 4];
        for pos in 0..400 {
            seen[sample(&l, &p, pos) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 60), "{seen:?}");
    }
}
