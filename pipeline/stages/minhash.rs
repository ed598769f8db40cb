//! MinHash over word shingles, with LSH banding.
//!
//! Small and self-contained rather than a crate: the maintained MinHash crates
//! either pull a large dependency tree or do not let the permutations come
//! from our config seed, and byte-identical reruns need exactly that.
//! Permutations are multiply-shift hashes `(a·x + b) >> 32` with odd `a`,
//! `a`/`b` drawn from splitmix64 seeded by the config seed.

/// splitmix64: the seed expander and the final mixer of shingle hashes.
pub use crate::engine::sampling::splitmix64;

#[inline]
fn fnv1a(bytes: impl Iterator<Item = u8>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

/// Hashes of the normalized words of `text`: lowercase, alphanumerics only,
/// so punctuation and spacing changes do not make chains distinct.
pub fn word_hashes(text: &str) -> Vec<u64> {
    let mut out = Vec::with_capacity(text.len() / 5);
    push_word_hashes(text, &mut out);
    out
}

/// [`word_hashes`] appended to `out` (ASCII words hashed without allocating).
pub fn push_word_hashes(text: &str, out: &mut Vec<u64>) {
    let mut buf = String::new();
    for word in text.split(|c: char| !c.is_alphanumeric()) {
        if word.is_empty() {
            continue;
        }
        if word.is_ascii() {
            out.push(fnv1a(word.bytes().map(|b| b.to_ascii_lowercase())));
        } else {
            buf.clear();
            for c in word.chars() {
                buf.extend(c.to_lowercase());
            }
            out.push(fnv1a(buf.bytes()));
        }
    }
}

/// Hashes of the word `k`-shingles of `text` (one shingle for shorter texts).
pub fn shingle_hashes(text: &str, k: usize) -> Vec<u64> {
    shingles_of_words(&word_hashes(text), k)
}

/// Shingle hashes from word hashes.
pub fn shingles_of_words(words: &[u64], k: usize) -> Vec<u64> {
    let k = k.max(1);
    if words.is_empty() {
        return Vec::new();
    }
    if words.len() <= k {
        return vec![combine(words)];
    }
    words.windows(k).map(combine).collect()
}

#[inline]
fn combine(ws: &[u64]) -> u64 {
    let mut h = 0x243F_6A88_85A3_08D3u64;
    for &w in ws {
        h = splitmix64(h ^ w);
    }
    h
}

/// A seeded family of `num_perm` hash permutations.
#[derive(Debug, Clone)]
pub struct MinHasher {
    a: Vec<u64>,
    b: Vec<u64>,
    pub shingle: usize,
}

impl MinHasher {
    pub fn new(num_perm: usize, shingle: usize, seed: u64) -> Self {
        let mut state = seed;
        let mut next = || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            splitmix64(state)
        };
        let mut a = Vec::with_capacity(num_perm);
        let mut b = Vec::with_capacity(num_perm);
        for _ in 0..num_perm {
            a.push(next() | 1);
            b.push(next());
        }
        Self { a, b, shingle }
    }

    pub fn num_perm(&self) -> usize {
        self.a.len()
    }

    /// Signature from precomputed shingle hashes; all `u32::MAX` for an empty set.
    pub fn signature_of(&self, shingles: &[u64]) -> Vec<u32> {
        let n = self.a.len();
        let mut sig = vec![u32::MAX; n];
        for &x in shingles {
            for ((s, &a), &b) in sig.iter_mut().zip(&self.a).zip(&self.b) {
                let h = (a.wrapping_mul(x).wrapping_add(b) >> 32) as u32;
                *s = (*s).min(h);
            }
        }
        sig
    }

    pub fn signature(&self, text: &str) -> Vec<u32> {
        self.signature_of(&shingle_hashes(text, self.shingle))
    }
}

/// Share of equal positions: the MinHash estimate of Jaccard similarity.
pub fn estimated_jaccard(a: &[u32], b: &[u32]) -> f64 {
    if a.is_empty() || a.len() != b.len() {
        return 0.0;
    }
    let eq = a.iter().zip(b).filter(|(x, y)| x == y).count();
    eq as f64 / a.len() as f64
}

/// Exact Jaccard similarity of two sorted, deduplicated hash sets.
pub fn exact_jaccard(a: &[u64], b: &[u64]) -> f64 {
    if a.is_empty() && b.is_empty() {
        return 1.0;
    }
    let (mut i, mut j, mut inter) = (0, 0, 0usize);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                inter += 1;
                i += 1;
                j += 1;
            }
        }
    }
    inter as f64 / (a.len() + b.len() - inter) as f64
}

/// LSH key of band `band` (rows `band*rows .. (band+1)*rows`) of a signature.
#[inline]
pub fn band_key(sig: &[u32], band: usize, rows: usize) -> u64 {
    let mut h = splitmix64(band as u64 ^ 0xA5A5_A5A5);
    for &v in &sig[band * rows..(band + 1) * rows] {
        h = splitmix64(h ^ u64::from(v));
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(n: usize, salt: usize) -> String {
        (0..n)
            .map(|i| format!("w{}", (i * 7919 + salt) % 100_003))
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn estimate_tracks_exact_jaccard() {
        let h = MinHasher::new(256, 5, 42);
        let a = words(300, 0);
        // change every 20th word: ~5% of words, ~23% of 5-shingles
        let b: Vec<String> = a
            .split(' ')
            .enumerate()
            .map(|(i, w)| {
                if i % 20 == 0 {
                    format!("x{i}")
                } else {
                    w.to_string()
                }
            })
            .collect();
        let b = b.join(" ");
        let mut sa = shingle_hashes(&a, 5);
        let mut sb = shingle_hashes(&b, 5);
        sa.sort_unstable();
        sa.dedup();
        sb.sort_unstable();
        sb.dedup();
        let exact = exact_jaccard(&sa, &sb);
        let est = estimated_jaccard(&h.signature(&a), &h.signature(&b));
        assert!((exact - est).abs() < 0.08, "exact {exact} est {est}");
        assert!(exact > 0.4 && exact < 0.8, "{exact}");
        let c = words(300, 55_555);
        assert!(estimated_jaccard(&h.signature(&a), &h.signature(&c)) < 0.05);
    }

    #[test]
    fn seeded_and_normalized() {
        let h1 = MinHasher::new(64, 5, 1);
        let h2 = MinHasher::new(64, 5, 1);
        let h3 = MinHasher::new(64, 5, 2);
        let t = "The quick brown fox jumps over the lazy dog again and again";
        assert_eq!(h1.signature(t), h2.signature(t));
        assert_ne!(h1.signature(t), h3.signature(t));
        assert_eq!(
            h1.signature(t),
            h1.signature("the QUICK brown, fox jumps over the lazy dog -- again and again!")
        );
    }
}
