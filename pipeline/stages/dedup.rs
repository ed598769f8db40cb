//! Deduplication: exact (blake3 of the normalized prompt + reasoning +
//! answer) and near-duplicate (MinHash + LSH over word shingles), within a
//! shard, across shards, and against a persistent [`SignatureIndex`] of
//! earlier runs so a nightly job never ships what an earlier night shipped.
//!
//! Which duplicate is kept does not depend on input or shard order: chains are
//! ranked by reward (highest first), then id (smallest first), and each chain
//! is compared with the chains kept before it. Earlier runs rank above all.
//! Planning works on compact [`ChainKey`]s (no text), so a global pass over
//! millions of chains holds signatures, not chains.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::minhash::{
    band_key, estimated_jaccard, exact_jaccard, push_word_hashes, shingles_of_words, MinHasher,
};
use super::{reject_for, StageError};
use crate::record::{Chain, Reject};

/// How LSH candidates are confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verify {
    /// Share of equal signature positions (works against the on-disk index).
    #[default]
    Estimated,
    /// Exact Jaccard of shingle sets within this run (more memory); falls back
    /// to the estimate against earlier runs, whose shingles are not stored.
    Exact,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DedupConfig {
    pub exact: bool,
    pub near: bool,
    /// MinHash permutations; must be a multiple of `bands`.
    pub num_perm: usize,
    pub bands: usize,
    /// Words per shingle.
    pub shingle: usize,
    /// Jaccard similarity at or above which two chains are duplicates.
    pub threshold: f64,
    pub verify: Verify,
    /// Seed of the hash permutations (the index on disk records it).
    pub seed: u64,
}

impl Default for DedupConfig {
    fn default() -> Self {
        Self {
            exact: true,
            near: true,
            num_perm: 128,
            bands: 16,
            shingle: 5,
            threshold: 0.8,
            verify: Verify::Estimated,
            seed: 0x00C0_7F06_E000_0001,
        }
    }
}

impl DedupConfig {
    pub fn build(&self) -> Result<Dedup, StageError> {
        if self.num_perm == 0 || self.bands == 0 || !self.num_perm.is_multiple_of(self.bands) {
            return Err(StageError::Config(format!(
                "num_perm {} must be a positive multiple of bands {}",
                self.num_perm, self.bands
            )));
        }
        if !(self.threshold > 0.0 && self.threshold <= 1.0) {
            return Err(StageError::Config(format!(
                "threshold {} not in (0, 1]",
                self.threshold
            )));
        }
        if self.shingle == 0 {
            return Err(StageError::Config("shingle must be >= 1".into()));
        }
        Ok(Dedup {
            cfg: self.clone(),
            hasher: MinHasher::new(self.num_perm, self.shingle, self.seed),
        })
    }
}

/// What dedup needs to know about one chain.
#[derive(Debug, Clone)]
pub struct ChainKey {
    pub id: String,
    pub reward: f64,
    pub exact: [u8; 32],
    pub sig: Vec<u32>,
    /// Sorted, deduplicated shingle hashes; only with `Verify::Exact`.
    pub shingles: Option<Vec<u64>>,
}

/// Feeds lowercased, whitespace-collapsed `s` to `h` (the exact-hash normal form).
fn hash_normalized(h: &mut blake3::Hasher, s: &str) {
    let mut first = true;
    for w in s.split_whitespace() {
        if !first {
            h.update(b" ");
        }
        first = false;
        if w.is_ascii() && !w.bytes().any(|b| b.is_ascii_uppercase()) {
            h.update(w.as_bytes());
        } else {
            h.update(w.to_lowercase().as_bytes());
        }
    }
}

/// The decision for each key, in input order: `None` = keep, `Some(id)` = duplicate of `id`.
#[derive(Debug, Clone, Default)]
pub struct DedupPlan {
    pub dup_of: Vec<Option<String>>,
    /// Positions (in the input keys) of the kept chains, in decision order.
    pub kept: Vec<usize>,
}

impl DedupPlan {
    /// Index entries of the kept chains, moving signatures out of `keys`
    /// (the keys the plan was made from).
    pub fn kept_entries(&self, keys: Vec<ChainKey>) -> Vec<IndexEntry> {
        let mut slots: Vec<Option<ChainKey>> = keys.into_iter().map(Some).collect();
        self.kept
            .iter()
            .filter_map(|&i| slots.get_mut(i).and_then(Option::take))
            .map(|k| IndexEntry {
                id: k.id,
                exact: k.exact,
                sig: k.sig,
            })
            .collect()
    }

    pub fn duplicates(&self) -> usize {
        self.dup_of.iter().filter(|d| d.is_some()).count()
    }
}

#[derive(Debug, Clone)]
pub struct Dedup {
    cfg: DedupConfig,
    hasher: MinHasher,
}

/// Band keys are already uniform hashes: hash them as themselves.
#[derive(Default)]
struct IdHasher(u64);
impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
    fn write_u128(&mut self, n: u128) {
        self.0 = n as u64 ^ (n >> 64) as u64;
    }
}
type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

const NIL: u32 = u32::MAX;

/// Kept entries with LSH buckets as per-band linked lists (head map + next array):
/// one map slot per (band, bucket), not one Vec per bucket.
struct Lsh<'a> {
    bands: usize,
    rows: usize,
    heads: Vec<IdMap<u64, u32>>,
    next: Vec<u32>,
    exact: IdMap<u128, u32>,
    ids: Vec<&'a str>,
    sigs: Vec<&'a [u32]>,
    shingles: Vec<Option<&'a [u64]>>,
}

impl<'a> Lsh<'a> {
    fn new(bands: usize, rows: usize, cap: usize) -> Self {
        Self {
            bands,
            rows,
            heads: (0..bands)
                .map(|_| IdMap::with_capacity_and_hasher(cap, Default::default()))
                .collect(),
            next: Vec::with_capacity(cap * bands),
            exact: IdMap::with_capacity_and_hasher(cap, Default::default()),
            ids: Vec::with_capacity(cap),
            sigs: Vec::with_capacity(cap),
            shingles: Vec::with_capacity(cap),
        }
    }

    fn insert(
        &mut self,
        id: &'a str,
        exact: &[u8; 32],
        sig: &'a [u32],
        sh: Option<&'a [u64]>,
        near: bool,
    ) {
        let idx = self.ids.len() as u32;
        self.ids.push(id);
        self.sigs.push(sig);
        self.shingles.push(sh);
        self.exact.entry(exact_key(exact)).or_insert(idx);
        for b in 0..self.bands {
            if near {
                let key = band_key(sig, b, self.rows);
                let prev = self.heads[b].insert(key, idx).unwrap_or(NIL);
                self.next.push(prev);
            } else {
                self.next.push(NIL);
            }
        }
    }

    /// Smallest kept index whose similarity with `sig` reaches `threshold`.
    fn near_match(
        &self,
        sig: &[u32],
        sh: Option<&[u64]>,
        threshold: f64,
        scratch: &mut Vec<u32>,
    ) -> Option<u32> {
        scratch.clear();
        for b in 0..self.bands {
            let key = band_key(sig, b, self.rows);
            let mut cur = self.heads[b].get(&key).copied().unwrap_or(NIL);
            while cur != NIL {
                scratch.push(cur);
                cur = self.next[cur as usize * self.bands + b];
            }
        }
        scratch.sort_unstable();
        scratch.dedup();
        scratch.iter().copied().find(|&c| {
            let sim = match (sh, self.shingles[c as usize]) {
                (Some(a), Some(b)) => exact_jaccard(a, b),
                _ => estimated_jaccard(sig, self.sigs[c as usize]),
            };
            sim >= threshold
        })
    }
}

fn exact_key(h: &[u8; 32]) -> u128 {
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    u128::from_le_bytes(b)
}

impl Dedup {
    pub fn config(&self) -> &DedupConfig {
        &self.cfg
    }

    /// The key of a chain from its parts (lets callers stream text without building `Chain`s).
    pub fn key_of(
        &self,
        id: &str,
        reward: f64,
        prompt: &str,
        reasoning: &str,
        answer: &str,
    ) -> ChainKey {
        let mut h = blake3::Hasher::new();
        hash_normalized(&mut h, prompt);
        h.update(b"\0");
        hash_normalized(&mut h, reasoning);
        h.update(b"\0");
        hash_normalized(&mut h, answer);
        let exact = *h.finalize().as_bytes();
        let (sig, shingles) = if self.cfg.near {
            // prompt, reasoning and answer as one word sequence
            let mut words = Vec::with_capacity((prompt.len() + reasoning.len() + answer.len()) / 5);
            for part in [prompt, reasoning, answer] {
                push_word_hashes(part, &mut words);
            }
            let mut sh = shingles_of_words(&words, self.cfg.shingle);
            let sig = self.hasher.signature_of(&sh);
            let keep = (self.cfg.verify == Verify::Exact).then(|| {
                sh.sort_unstable();
                sh.dedup();
                sh
            });
            (sig, keep)
        } else {
            (Vec::new(), None)
        };
        ChainKey {
            id: id.to_string(),
            reward,
            exact,
            sig,
            shingles,
        }
    }

    pub fn key(&self, c: &Chain) -> ChainKey {
        self.key_of(&c.id, c.reward, &c.prompt, &c.reasoning, &c.answer)
    }

    /// Decides, for each key (input order), whether it is kept or which kept
    /// chain (of this run or of `index`) it duplicates.
    pub fn plan(&self, keys: &[ChainKey], index: Option<&SignatureIndex>) -> DedupPlan {
        self.plan_against(keys, index.map_or(&[][..], |i| i.entries.as_slice()))
    }

    /// [`Dedup::plan`] against `prior` entries (earlier runs) only.
    pub fn plan_against(&self, keys: &[ChainKey], prior: &[IndexEntry]) -> DedupPlan {
        let rows = self.cfg.num_perm / self.cfg.bands;
        let mut lsh = Lsh::new(self.cfg.bands, rows, prior.len() + keys.len());
        for e in prior {
            lsh.insert(&e.id, &e.exact, &e.sig, None, self.cfg.near);
        }
        let mut order: Vec<usize> = (0..keys.len()).collect();
        order.sort_by(|&a, &b| {
            let (ka, kb) = (&keys[a], &keys[b]);
            kb.reward
                .total_cmp(&ka.reward)
                .then_with(|| ka.id.cmp(&kb.id))
                .then(a.cmp(&b))
        });
        let mut dup_of: Vec<Option<String>> = vec![None; keys.len()];
        let mut kept = Vec::new();
        let mut scratch = Vec::new();
        for i in order {
            let k = &keys[i];
            let hit = if self.cfg.exact {
                lsh.exact.get(&exact_key(&k.exact)).copied()
            } else {
                None
            };
            let hit = hit.or_else(|| {
                self.cfg
                    .near
                    .then(|| {
                        lsh.near_match(
                            &k.sig,
                            k.shingles.as_deref(),
                            self.cfg.threshold,
                            &mut scratch,
                        )
                    })
                    .flatten()
            });
            match hit {
                Some(j) => dup_of[i] = Some(lsh.ids[j as usize].to_string()),
                None => {
                    lsh.insert(
                        &k.id,
                        &k.exact,
                        &k.sig,
                        k.shingles.as_deref(),
                        self.cfg.near,
                    );
                    kept.push(i);
                }
            }
        }
        DedupPlan { dup_of, kept }
    }

    /// Deduplicates chains grouped in shards (within and across them, and
    /// against `index` when given); kept chains stay in their shard and
    /// order. When `index` is given, the kept chains are added to it (the
    /// caller saves it once the run's output is committed).
    pub fn apply_shards(
        &self,
        shards: Vec<Vec<Chain>>,
        index: Option<&mut SignatureIndex>,
    ) -> (Vec<Vec<Chain>>, Vec<Reject>) {
        let prior = index.as_deref().map_or(&[][..], |i| i.entries.as_slice());
        let (out, rejects, kept) = self.apply_shards_against(shards, prior);
        if let Some(idx) = index {
            idx.entries.extend(kept);
        }
        (out, rejects)
    }

    /// Deduplicates against `prior` entries only and returns, besides the kept
    /// chains and the rejects, the index entries of the kept chains (for the
    /// caller to record in the index as this run's segment).
    pub fn apply_shards_against(
        &self,
        shards: Vec<Vec<Chain>>,
        prior: &[IndexEntry],
    ) -> (Vec<Vec<Chain>>, Vec<Reject>, Vec<IndexEntry>) {
        let keys: Vec<ChainKey> = shards.par_iter().flatten().map(|c| self.key(c)).collect();
        let plan = self.plan_against(&keys, prior);
        let mut decisions = plan.dup_of.clone().into_iter();
        let mut rejects = Vec::new();
        let out = shards
            .into_iter()
            .map(|shard| {
                let mut kept = Vec::with_capacity(shard.len());
                for c in shard {
                    match decisions.next().flatten() {
                        Some(of) => rejects.push(reject_for(
                            &c,
                            crate::record::Stage::Dedup,
                            format!("duplicate-of {of}"),
                        )),
                        None => kept.push(c),
                    }
                }
                kept
            })
            .collect();
        (out, rejects, plan.kept_entries(keys))
    }

    /// [`Dedup::apply_shards`] for a single batch.
    pub fn apply(
        &self,
        chains: Vec<Chain>,
        index: Option<&mut SignatureIndex>,
    ) -> (Vec<Chain>, Vec<Reject>) {
        let (mut shards, rejects) = self.apply_shards(vec![chains], index);
        (shards.pop().unwrap_or_default(), rejects)
    }

    /// An empty index with this config's parameters.
    pub fn new_index(&self) -> SignatureIndex {
        SignatureIndex {
            params: IndexParams::of(&self.cfg),
            entries: Vec::new(),
            segments: Vec::new(),
        }
    }

    /// Loads the index at `path`, or an empty one when the file does not exist.
    pub fn open_index(&self, path: &Path) -> Result<SignatureIndex, StageError> {
        if !path.exists() {
            return Ok(self.new_index());
        }
        let idx = SignatureIndex::load(path)?;
        if idx.params != IndexParams::of(&self.cfg) {
            return Err(StageError::Index {
                path: path.to_path_buf(),
                msg: format!(
                    "built with {:?}, config wants {:?}: signatures are not comparable",
                    idx.params,
                    IndexParams::of(&self.cfg)
                ),
            });
        }
        Ok(idx)
    }
}

/// One shipped chain in the persistent index.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexEntry {
    pub id: String,
    pub exact: [u8; 32],
    pub sig: Vec<u32>,
}

/// Parameters that make signatures comparable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexParams {
    pub num_perm: u32,
    pub bands: u32,
    pub shingle: u32,
    pub seed: u64,
}

impl IndexParams {
    fn of(c: &DedupConfig) -> Self {
        Self {
            num_perm: if c.near { c.num_perm as u32 } else { 0 },
            bands: c.bands as u32,
            shingle: c.shingle as u32,
            seed: c.seed,
        }
    }
}

/// The entries one run (one output directory of one job) added to the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Who added them ([`SignatureIndex::ANONYMOUS`]: unknown, e.g. a v1 file).
    pub key: [u8; 32],
    pub len: u64,
}

/// Signatures of every chain shipped by earlier runs, grouped in segments by
/// the run that added them, in the order they were added. A rerun of a run
/// compares against the segments before its own only and leaves every other
/// segment as it is: rerunning night N after night N+1 neither rejects N's
/// chains as duplicates of themselves nor removes N+1's entries.
///
/// File format (little endian): magic `CFDEDUP2`; u32 num_perm, u32 bands,
/// u32 shingle, u64 seed; u64 entry count; u32 segment count, per segment a
/// 32-byte key and a u64 length (covering a prefix of the entries; the rest
/// is anonymous); per entry u16 id length, id bytes (UTF-8), 32-byte exact
/// hash, num_perm × u32 signature; then the 32-byte blake3 of everything
/// before it. `CFDEDUP1` files (no segments) are read as one anonymous
/// segment. Written to a temporary that is removed on any error, fsynced,
/// renamed over `path`, directory fsynced: a crash leaves the old or the new
/// index. Callers sharing an index hold its lock (see `recipes::run`).
#[derive(Debug, Clone, PartialEq)]
pub struct SignatureIndex {
    pub params: IndexParams,
    pub entries: Vec<IndexEntry>,
    /// Covers a prefix of `entries`; entries after it belong to no known run.
    pub segments: Vec<Segment>,
}

const MAGIC_V1: &[u8; 8] = b"CFDEDUP1";
const MAGIC: &[u8; 8] = b"CFDEDUP2";

struct HashingWriter<W: Write> {
    inner: W,
    hasher: blake3::Hasher,
}
impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl SignatureIndex {
    /// Key of entries of an unknown run.
    pub const ANONYMOUS: [u8; 32] = [0; 32];

    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Where the segment of `key` sits in `entries`, if the index has it.
    fn find(&self, key: &[u8; 32]) -> Option<(usize, usize, usize)> {
        let mut start = 0usize;
        for (i, s) in self.segments.iter().enumerate() {
            let len = s.len as usize;
            if &s.key == key && key != &Self::ANONYMOUS {
                return Some((i, start, len));
            }
            start += len;
        }
        None
    }

    /// What the run `key` compares against: the entries added before its own
    /// segment, or every entry when it has none yet.
    pub fn entries_before(&self, key: &[u8; 32]) -> &[IndexEntry] {
        match self.find(key) {
            Some((_, start, _)) => &self.entries[..start.min(self.entries.len())],
            None => &self.entries,
        }
    }

    /// Record `entries` as the segment of run `key`; true when the index
    /// changed (and must be saved). A run that already has its segment gets
    /// it replaced in place (a rerun is deterministic, so usually nothing
    /// changes); the segments of other runs are never touched.
    pub fn put_segment(&mut self, key: [u8; 32], entries: Vec<IndexEntry>) -> bool {
        if let Some((i, start, len)) = self.find(&key) {
            if self.entries.get(start..start + len) == Some(entries.as_slice()) {
                return false;
            }
            tracing::warn!(
                "dedup index: this run's earlier entries ({len}) differ from this finalize's ({}); replacing this run's own segment only",
                entries.len()
            );
            self.segments[i].len = entries.len() as u64;
            self.entries.splice(start..start + len, entries);
            return true;
        }
        let covered: u64 = self.segments.iter().map(|s| s.len).sum();
        let rest = (self.entries.len() as u64).saturating_sub(covered);
        if rest > 0 {
            self.segments.push(Segment {
                key: Self::ANONYMOUS,
                len: rest,
            });
        }
        self.segments.push(Segment {
            key,
            len: entries.len() as u64,
        });
        self.entries.extend(entries);
        true
    }

    pub fn save(&self, path: &Path) -> Result<(), StageError> {
        let (tmp, file) = crate::store::fsio::TempPath::create(path)?;
        // Errors name the index (its temporary is removed on any error).
        let io = |e| StageError::io(path, e);
        let mut w = HashingWriter {
            inner: BufWriter::new(file),
            hasher: blake3::Hasher::new(),
        };
        let p = &self.params;
        w.write_all(MAGIC).map_err(io)?;
        w.write_all(&p.num_perm.to_le_bytes()).map_err(io)?;
        w.write_all(&p.bands.to_le_bytes()).map_err(io)?;
        w.write_all(&p.shingle.to_le_bytes()).map_err(io)?;
        w.write_all(&p.seed.to_le_bytes()).map_err(io)?;
        w.write_all(&(self.entries.len() as u64).to_le_bytes())
            .map_err(io)?;
        let covered: u64 = self.segments.iter().map(|s| s.len).sum();
        if covered > self.entries.len() as u64 {
            return Err(StageError::Index {
                path: path.to_path_buf(),
                msg: format!(
                    "segments cover {covered} entries, the index has {}",
                    self.entries.len()
                ),
            });
        }
        w.write_all(&(self.segments.len() as u32).to_le_bytes())
            .map_err(io)?;
        for sgm in &self.segments {
            w.write_all(&sgm.key).map_err(io)?;
            w.write_all(&sgm.len.to_le_bytes()).map_err(io)?;
        }
        for e in &self.entries {
            let id = e.id.as_bytes();
            let len = u16::try_from(id.len()).map_err(|_| StageError::Index {
                path: path.to_path_buf(),
                msg: format!(
                    "id longer than 65535 bytes: {}…",
                    &e.id[..32.min(e.id.len())]
                ),
            })?;
            if e.sig.len() != p.num_perm as usize {
                return Err(StageError::Index {
                    path: path.to_path_buf(),
                    msg: format!(
                        "entry {} has {} signature values, expected {}",
                        e.id,
                        e.sig.len(),
                        p.num_perm
                    ),
                });
            }
            w.write_all(&len.to_le_bytes()).map_err(io)?;
            w.write_all(id).map_err(io)?;
            w.write_all(&e.exact).map_err(io)?;
            for v in &e.sig {
                w.write_all(&v.to_le_bytes()).map_err(io)?;
            }
        }
        let digest = *w.hasher.finalize().as_bytes();
        let mut inner = w.inner;
        inner.write_all(&digest).map_err(io)?;
        let file = inner
            .into_inner()
            .map_err(|e| StageError::io(path, e.into_error()))?;
        tmp.commit(file)?;
        Ok(())
    }

    pub fn load(path: &Path) -> Result<Self, StageError> {
        let mut bytes = Vec::new();
        BufReader::new(crate::store::fsio::open_read(path)?)
            .read_to_end(&mut bytes)
            .map_err(|e| StageError::io(path, e))?;
        let bad = |msg: &str| StageError::Index {
            path: path.to_path_buf(),
            msg: msg.to_string(),
        };
        if bytes.len() < 8 + 20 + 8 + 32 || (&bytes[..8] != MAGIC && &bytes[..8] != MAGIC_V1) {
            return Err(bad("not a cotforge dedup index (bad magic or too short)"));
        }
        let v2 = &bytes[..8] == MAGIC;
        let (body, digest) = bytes.split_at(bytes.len() - 32);
        if blake3::hash(body).as_bytes() != digest {
            return Err(bad("checksum mismatch (truncated or corrupted)"));
        }
        let mut r = Cursor { b: body, pos: 8 };
        let params = IndexParams {
            num_perm: r.u32().ok_or_else(|| bad("truncated header"))?,
            bands: r.u32().ok_or_else(|| bad("truncated header"))?,
            shingle: r.u32().ok_or_else(|| bad("truncated header"))?,
            seed: r.u64().ok_or_else(|| bad("truncated header"))?,
        };
        let count = r.u64().ok_or_else(|| bad("truncated header"))? as usize;
        let mut segments = Vec::new();
        if v2 {
            let n = r.u32().ok_or_else(|| bad("truncated header"))? as usize;
            for _ in 0..n {
                let key: [u8; 32] = r
                    .take(32)
                    .and_then(|k| k.try_into().ok())
                    .ok_or_else(|| bad("truncated segment table"))?;
                let len = r.u64().ok_or_else(|| bad("truncated segment table"))?;
                segments.push(Segment { key, len });
            }
            let covered = segments
                .iter()
                .try_fold(0u64, |a, s| a.checked_add(s.len))
                .ok_or_else(|| bad("segment lengths overflow"))?;
            if covered > count as u64 {
                return Err(bad("segments cover more entries than the index holds"));
            }
        }
        let mut entries = Vec::with_capacity(count.min(body.len() / 34));
        for _ in 0..count {
            let e = (|| {
                let len = r.u16()? as usize;
                let id = std::str::from_utf8(r.take(len)?).ok()?.to_string();
                let mut exact = [0u8; 32];
                exact.copy_from_slice(r.take(32)?);
                let sig = (0..params.num_perm)
                    .map(|_| r.u32())
                    .collect::<Option<Vec<u32>>>()?;
                Some(IndexEntry { id, exact, sig })
            })()
            .ok_or_else(|| bad("truncated entry"))?;
            entries.push(e);
        }
        if r.pos != body.len() {
            return Err(bad("trailing bytes after entries"));
        }
        Ok(Self {
            params,
            entries,
            segments,
        })
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}
impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}
