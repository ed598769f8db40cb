//! Decontamination: word n-gram overlap of every shipped chain (prompt,
//! reasoning, answer) against user-given benchmark files, so a night never
//! ships a benchmark's test questions as training data.
//!
//! Normal form (both sides): Unicode NFKC, then words = maximal runs of
//! alphanumeric characters, lowercased (the word hashing of
//! [`super::minhash::push_word_hashes`]); punctuation, spacing and casing do
//! not matter. An n-gram is `n` consecutive words (default 13, the GPT-3 /
//! Llama setting); a chain is flagged when any of its n-grams occurs in a
//! benchmark row. Benchmark rows with fewer than `n` words cannot match and
//! are counted ([`NgramIndex::short_items`]).
//!
//! The index (n-gram hash -> first benchmark file and row holding it) is
//! built once and persisted ([`NgramIndex::save`], written atomically with
//! [`commit_bytes`]). Its header carries a key: blake3 of the format, the
//! normal form, `n`, the column setting and every benchmark file's path and
//! content hash. [`open_or_build`] reuses the file when the key matches and
//! rebuilds it otherwise (or when it is unreadable: it is a cache).
//!
//! Matches become [`Reject`] rows of stage [`STAGE`] whose reason names the
//! benchmark file, the row and the matching n-gram:
//! `benchmark 'gsm8k_test.jsonl' line 17 (prompt): 'natalia sold clips to 48 …'`.

use std::borrow::Cow;
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::{Array, StringArray};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use rayon::prelude::*;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

use super::minhash::{push_word_hashes, shingles_of_words};
use super::{reject_for, StageError};
use crate::record::{Chain, Reject};
use crate::store::import::{as_text, lookup, records, InputFormat};
use crate::store::parquet_io::{commit_bytes, read_parquet, write_parquet, WriteOptions};
use crate::store::schema::{
    batch_to_chains, batch_to_rejects, chains_schema, chains_to_batch, rejects_schema,
    rejects_to_batch,
};

/// The stage name of decontamination rejects.
pub const STAGE: crate::record::Stage = crate::record::Stage::Decontaminate;
/// Words per n-gram unless configured.
pub const DEFAULT_N: usize = 13;
/// Columns tried, in order, when none is configured.
pub const AUTO_COLUMNS: &[&str] = &["question", "prompt", "problem", "text", "instruction"];
/// File of a finalized output holding the decontamination rejects.
pub const REJECTS_FILE: &str = "rejected-decontaminate.parquet";

const MAGIC: &[u8; 8] = b"CFDECON1";
/// Changes whenever the normal form or the n-gram hash changes (old indexes are then rebuilt).
const NORMAL_FORM: &str = "nfkc+alnum-words+lowercase+fnv1a+splitmix-ngram/1";

/// `[decontaminate]` of a job, and the settings of `cotforge decontaminate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecontamConfig {
    /// Benchmark files: Parquet (`.parquet`), JSONL (`.jsonl`, `.ndjson`) or JSON arrays.
    pub against: Vec<PathBuf>,
    /// The text column (a dotted path in JSON); default: the first of [`AUTO_COLUMNS`] present.
    #[serde(default)]
    pub column: Option<String>,
    /// Words per n-gram.
    #[serde(default = "default_n")]
    pub n: usize,
    /// Where the index is kept; default: beside the dedup index
    /// (`<dedup index>.decontam`), else `OUT/decontam.idx`.
    #[serde(default)]
    pub index: Option<PathBuf>,
}

fn default_n() -> usize {
    DEFAULT_N
}

impl DecontamConfig {
    /// Checks the settings and that every benchmark file exists.
    pub fn validate(&self) -> Result<(), StageError> {
        if self.against.is_empty() {
            return Err(StageError::Config(
                "against lists no benchmark file (give Parquet or JSONL files)".into(),
            ));
        }
        if !(1..=256).contains(&self.n) {
            return Err(StageError::Config(format!(
                "n = {} words per n-gram must be in 1..=256 (13 is usual)",
                self.n
            )));
        }
        for p in &self.against {
            if !p.is_file() {
                return Err(StageError::Config(format!(
                    "against: benchmark file {} does not exist",
                    p.display()
                )));
            }
        }
        if self.column.as_deref().is_some_and(|c| c.trim().is_empty()) {
            return Err(StageError::Config("column is empty".into()));
        }
        Ok(())
    }

    /// Where the index lives (see [`DecontamConfig::index`]).
    pub fn index_path(&self, dedup_index: Option<&Path>, out: &Path) -> PathBuf {
        if let Some(p) = &self.index {
            return p.clone();
        }
        match dedup_index {
            Some(d) => {
                let mut s = d.as_os_str().to_owned();
                s.push(".decontam");
                PathBuf::from(s)
            }
            None => out.join("decontam.idx"),
        }
    }
}

/// How a benchmark file is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchFormat {
    Parquet,
    Jsonl,
    Json,
}

impl BenchFormat {
    pub fn of(path: &Path) -> Self {
        if path.extension().and_then(|e| e.to_str()) == Some("parquet") {
            return BenchFormat::Parquet;
        }
        match InputFormat::detect(path) {
            InputFormat::Jsonl => BenchFormat::Jsonl,
            InputFormat::Json => BenchFormat::Json,
        }
    }
    fn code(self) -> u8 {
        match self {
            BenchFormat::Parquet => 0,
            BenchFormat::Jsonl => 1,
            BenchFormat::Json => 2,
        }
    }
    fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            0 => BenchFormat::Parquet,
            1 => BenchFormat::Jsonl,
            2 => BenchFormat::Json,
            _ => return None,
        })
    }
    /// How a row is named: Parquet rows from 0, JSONL lines and JSON records from 1.
    fn locate(self, row: u32) -> String {
        match self {
            BenchFormat::Parquet => format!("row {row}"),
            BenchFormat::Jsonl => format!("line {row}"),
            BenchFormat::Json => format!("record {row}"),
        }
    }
}

/// One benchmark file of an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchFile {
    /// The path as configured.
    pub path: String,
    pub format: BenchFormat,
    /// The column read.
    pub column: String,
    /// Rows with text.
    pub rows: u64,
}

/// Where an n-gram was first seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Loc {
    file: u32,
    row: u32,
}

/// The n-gram index of a set of benchmark files.
#[derive(Debug, Clone, PartialEq)]
pub struct NgramIndex {
    key: [u8; 32],
    n: usize,
    files: Vec<BenchFile>,
    map: FxHashMap<u64, Loc>,
    short: u64,
}

/// A chain's first n-gram found in a benchmark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flag {
    /// `prompt`, `reasoning` or `answer`.
    pub field: &'static str,
    pub file: String,
    /// `row 3` (Parquet, from 0), `line 4` (JSONL) or `record 2` (JSON).
    pub row: String,
    /// The n-gram in normal form.
    pub ngram: String,
}

impl Flag {
    /// The reject reason.
    pub fn reason(&self) -> String {
        format!(
            "benchmark '{}' {} ({}): '{}'",
            self.file, self.row, self.field, self.ngram
        )
    }
}

/// `text` in NFKC (ASCII is already).
pub fn nfkc(text: &str) -> Cow<'_, str> {
    if text.is_ascii() {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(text.nfkc().collect())
    }
}

/// Hashes of the normalized words of `text`.
pub fn word_hashes(text: &str) -> Vec<u64> {
    let mut out = Vec::with_capacity(text.len() / 5);
    push_word_hashes(&nfkc(text), &mut out);
    out
}

/// The normalized words of `text` (what [`word_hashes`] hashes), for messages.
pub fn normalized_words(text: &str) -> Vec<String> {
    nfkc(text)
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// n-gram hashes of `text`; none when it has fewer than `n` words.
pub fn ngram_hashes(text: &str, n: usize) -> Vec<u64> {
    let words = word_hashes(text);
    if words.len() < n {
        return Vec::new();
    }
    shingles_of_words(&words, n)
}

fn bench_err(path: &Path, msg: impl std::fmt::Display) -> StageError {
    StageError::Config(format!("benchmark {}: {msg}", path.display()))
}

fn pick_column(
    path: &Path,
    wanted: Option<&str>,
    available: &[String],
) -> Result<String, StageError> {
    let has = |c: &str| available.iter().any(|a| a == c);
    match wanted {
        Some(c) if has(c) || c.contains('.') => Ok(c.to_string()),
        Some(c) => Err(bench_err(
            path,
            format!(
                "no column '{c}' (columns: {}); pass the text column with --column / column =",
                available.join(", ")
            ),
        )),
        None => AUTO_COLUMNS
            .iter()
            .find(|c| has(c))
            .map(|c| c.to_string())
            .ok_or_else(|| {
                bench_err(
                    path,
                    format!(
                        "none of the default text columns {} (columns: {}); name it with --column / column =",
                        AUTO_COLUMNS.join(", "),
                        available.join(", ")
                    ),
                )
            }),
    }
}

/// Calls `f(row, text)` for every row of a benchmark file with text in the column.
fn for_each_text(
    path: &Path,
    column: Option<&str>,
    mut f: impl FnMut(u32, &str),
) -> Result<BenchFile, StageError> {
    let format = BenchFormat::of(path);
    let mut rows = 0u64;
    let column = match format {
        BenchFormat::Parquet => {
            let file = File::open(path).map_err(|e| StageError::io(path, e))?;
            let b = ParquetRecordBatchReaderBuilder::try_new(file)
                .map_err(|e| bench_err(path, format!("not a readable Parquet file: {e}")))?;
            let names: Vec<String> = b
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect();
            let col = pick_column(path, column, &names)?;
            let idx = names
                .iter()
                .position(|n| *n == col)
                .ok_or_else(|| bench_err(path, format!("no column '{col}'")))?;
            let mask = ProjectionMask::roots(b.parquet_schema(), [idx]);
            let reader = b
                .with_projection(mask)
                .build()
                .map_err(|e| bench_err(path, e))?;
            let mut row = 0u32;
            for batch in reader {
                let batch = batch.map_err(|e| bench_err(path, e))?;
                let a = cast(batch.column(0), &DataType::Utf8)
                    .map_err(|e| bench_err(path, format!("column '{col}' is not text: {e}")))?;
                let s = a
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .ok_or_else(|| bench_err(path, format!("column '{col}' is not text")))?;
                for i in 0..s.len() {
                    if s.is_valid(i) {
                        rows += 1;
                        f(row, s.value(i));
                    }
                    row = row.saturating_add(1);
                }
            }
            col
        }
        BenchFormat::Jsonl | BenchFormat::Json => {
            let fmt = if format == BenchFormat::Jsonl {
                InputFormat::Jsonl
            } else {
                InputFormat::Json
            };
            let mut col: Option<String> = None;
            for rec in records(path, fmt)? {
                let (num, v) = rec?;
                let c = match &col {
                    Some(c) => c.clone(),
                    None => {
                        let keys: Vec<String> = v
                            .as_object()
                            .map(|m| m.keys().cloned().collect())
                            .unwrap_or_default();
                        let c = pick_column(path, column, &keys)?;
                        col = Some(c.clone());
                        c
                    }
                };
                let Some(field) = lookup(&v, &c) else {
                    return Err(bench_err(
                        path,
                        format!("{} has no field '{c}'", format.locate(num as u32)),
                    ));
                };
                if let Some(text) = as_text(Some(field)) {
                    rows += 1;
                    f(u32::try_from(num).unwrap_or(u32::MAX), &text);
                }
            }
            col.or_else(|| column.map(str::to_string))
                .unwrap_or_default()
        }
    };
    Ok(BenchFile {
        path: path.display().to_string(),
        format,
        column,
        rows,
    })
}

/// The key of an index built from `cfg` (see the module docs).
pub fn index_key(cfg: &DecontamConfig) -> Result<[u8; 32], StageError> {
    let mut h = blake3::Hasher::new();
    h.update(MAGIC);
    h.update(NORMAL_FORM.as_bytes());
    h.update(&(cfg.n as u64).to_le_bytes());
    match &cfg.column {
        Some(c) => h.update(b"column=").update(c.as_bytes()),
        None => h.update(b"column:auto"),
    };
    for p in &cfg.against {
        let (digest, len) = crate::store::blake3_file(p)?;
        h.update(b"\0file=")
            .update(p.display().to_string().as_bytes())
            .update(b"\0")
            .update(digest.as_bytes())
            .update(&len.to_le_bytes());
    }
    Ok(*h.finalize().as_bytes())
}

impl NgramIndex {
    /// Reads every benchmark file and indexes its n-grams.
    pub fn build(cfg: &DecontamConfig) -> Result<Self, StageError> {
        cfg.validate()?;
        let key = index_key(cfg)?;
        let mut map: FxHashMap<u64, Loc> = FxHashMap::default();
        let mut files = Vec::new();
        let mut short = 0u64;
        for (fi, p) in cfg.against.iter().enumerate() {
            let file = u32::try_from(fi).unwrap_or(u32::MAX);
            let bf = for_each_text(p, cfg.column.as_deref(), |row, text| {
                let grams = ngram_hashes(text, cfg.n);
                if grams.is_empty() {
                    short += 1;
                }
                for g in grams {
                    map.entry(g).or_insert(Loc { file, row });
                }
            })?;
            files.push(bf);
        }
        Ok(Self {
            key,
            n: cfg.n,
            files,
            map,
            short,
        })
    }

    pub fn n(&self) -> usize {
        self.n
    }
    pub fn files(&self) -> &[BenchFile] {
        &self.files
    }
    /// Distinct n-grams indexed.
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    /// Benchmark rows shorter than `n` words (they cannot match).
    pub fn short_items(&self) -> u64 {
        self.short
    }

    /// The first n-gram of `text` found in a benchmark: (word position, location).
    fn find(&self, text: &str) -> Option<(usize, Loc)> {
        ngram_hashes(text, self.n)
            .into_iter()
            .enumerate()
            .find_map(|(i, g)| self.map.get(&g).map(|l| (i, *l)))
    }

    /// Whether `text` shares an n-gram with a benchmark (`field` names it in the flag).
    pub fn check_text(&self, field: &'static str, text: &str) -> Option<Flag> {
        let (pos, loc) = self.find(text)?;
        let file = self.files.get(loc.file as usize)?;
        let words = normalized_words(text);
        let ngram = words
            .get(pos..(pos + self.n).min(words.len()))
            .unwrap_or_default()
            .join(" ");
        Some(Flag {
            field,
            file: file.path.clone(),
            row: file.format.locate(loc.row),
            ngram,
        })
    }

    /// The chain's first match, checking prompt, reasoning and answer in that order.
    pub fn check(&self, c: &Chain) -> Option<Flag> {
        self.check_text("prompt", &c.prompt)
            .or_else(|| self.check_text("reasoning", &c.reasoning))
            .or_else(|| self.check_text("answer", &c.answer))
    }

    /// Splits `chains` (order kept) into clean ones and rejects of stage [`STAGE`].
    pub fn split(&self, chains: Vec<Chain>) -> (Vec<Chain>, Vec<Reject>) {
        let flags: Vec<Option<Flag>> = chains.par_iter().map(|c| self.check(c)).collect();
        let mut kept = Vec::with_capacity(chains.len());
        let mut rejects = Vec::new();
        for (c, f) in chains.into_iter().zip(flags) {
            match f {
                Some(f) => rejects.push(reject_for(&c, STAGE, f.reason())),
                None => kept.push(c),
            }
        }
        (kept, rejects)
    }

    /// The index file's bytes (little endian): magic `CFDECON1`, 32-byte key,
    /// u32 n, u64 short items, u32 file count, per file (u8 format, u32 path
    /// length, path, u32 column length, column, u64 rows), u64 entry count,
    /// entries sorted by hash (u64 hash, u32 file, u32 row), then the blake3
    /// of everything before it. Deterministic for a given key.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64 + self.map.len() * 16);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&self.key);
        b.extend_from_slice(&(self.n as u32).to_le_bytes());
        b.extend_from_slice(&self.short.to_le_bytes());
        b.extend_from_slice(&(self.files.len() as u32).to_le_bytes());
        for f in &self.files {
            b.push(f.format.code());
            for s in [&f.path, &f.column] {
                b.extend_from_slice(&(s.len() as u32).to_le_bytes());
                b.extend_from_slice(s.as_bytes());
            }
            b.extend_from_slice(&f.rows.to_le_bytes());
        }
        let mut entries: Vec<(u64, Loc)> = self.map.iter().map(|(k, v)| (*k, *v)).collect();
        entries.sort_unstable_by_key(|e| e.0);
        b.extend_from_slice(&(entries.len() as u64).to_le_bytes());
        for (h, l) in entries {
            b.extend_from_slice(&h.to_le_bytes());
            b.extend_from_slice(&l.file.to_le_bytes());
            b.extend_from_slice(&l.row.to_le_bytes());
        }
        let digest = blake3::hash(&b);
        b.extend_from_slice(digest.as_bytes());
        b
    }

    /// Writes the index atomically (temporary file, fsync, rename, directory fsync).
    pub fn save(&self, path: &Path) -> Result<(), StageError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StageError::io(dir, e))?;
        }
        commit_bytes(path, &self.to_bytes())?;
        Ok(())
    }

    pub fn load(path: &Path) -> Result<Self, StageError> {
        let bytes = std::fs::read(path).map_err(|e| StageError::io(path, e))?;
        let bad = |msg: &str| StageError::Index {
            path: path.to_path_buf(),
            msg: msg.to_string(),
        };
        if bytes.len() < 8 + 32 + 4 + 8 + 4 + 8 + 32 || &bytes[..8] != MAGIC {
            return Err(bad(
                "not a cotforge decontamination index (bad magic or too short)",
            ));
        }
        let (body, digest) = bytes.split_at(bytes.len() - 32);
        if blake3::hash(body).as_bytes() != digest {
            return Err(bad("checksum mismatch (truncated or corrupted)"));
        }
        let mut r = Reader { b: body, pos: 8 };
        let trunc = || bad("truncated");
        let mut key = [0u8; 32];
        key.copy_from_slice(r.take(32).ok_or_else(trunc)?);
        let n = r.u32().ok_or_else(trunc)? as usize;
        let short = r.u64().ok_or_else(trunc)?;
        let nfiles = r.u32().ok_or_else(trunc)?;
        let mut files = Vec::new();
        for _ in 0..nfiles {
            let format = r
                .take(1)
                .and_then(|c| BenchFormat::from_code(c[0]))
                .ok_or_else(|| bad("bad file format code"))?;
            let mut text = || -> Option<String> {
                let len = r.u32()? as usize;
                String::from_utf8(r.take(len)?.to_vec()).ok()
            };
            let (path_s, column) = (text().ok_or_else(trunc)?, text().ok_or_else(trunc)?);
            files.push(BenchFile {
                path: path_s,
                format,
                column,
                rows: r.u64().ok_or_else(trunc)?,
            });
        }
        let count = r.u64().ok_or_else(trunc)? as usize;
        let mut map = FxHashMap::default();
        map.reserve(count.min(body.len() / 16));
        for _ in 0..count {
            let h = r.u64().ok_or_else(trunc)?;
            let file = r.u32().ok_or_else(trunc)?;
            let row = r.u32().ok_or_else(trunc)?;
            if file as usize >= files.len() {
                return Err(bad("entry names a file the index does not list"));
            }
            map.insert(h, Loc { file, row });
        }
        if r.pos != body.len() {
            return Err(bad("trailing bytes after the entries"));
        }
        Ok(Self {
            key,
            n,
            files,
            map,
            short,
        })
    }
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

/// The index for `cfg` at `path`: loaded when its key matches, else built
/// and saved. Returns whether it was (re)built.
pub fn open_or_build(cfg: &DecontamConfig, path: &Path) -> Result<(NgramIndex, bool), StageError> {
    cfg.validate()?;
    if path.exists() {
        let key = index_key(cfg)?;
        match NgramIndex::load(path) {
            Ok(idx) if idx.key == key => return Ok((idx, false)),
            Ok(_) => tracing::info!(
                "{}: benchmark files or settings changed; rebuilding the decontamination index",
                path.display()
            ),
            Err(e) => tracing::warn!("{e}; rebuilding the decontamination index"),
        }
    }
    let idx = NgramIndex::build(cfg)?;
    idx.save(path)?;
    Ok((idx, true))
}

/// The decontamination step of `finalize`: with a config, removes flagged
/// chains from `chains`; always writes `final_dir/rejected-decontaminate.parquet`
/// (empty without a config, so a rerun never leaves stale rejects beside
/// re-derived chains). Returns the rejects, sorted by chain id.
pub fn finalize_step(
    cfg: Option<&DecontamConfig>,
    dedup_index: Option<&Path>,
    out: &Path,
    final_dir: &Path,
    chains: &mut Vec<Chain>,
    wopts: &WriteOptions,
) -> Result<Vec<Reject>, StageError> {
    let mut rejects = Vec::new();
    if let Some(cfg) = cfg {
        let path = cfg.index_path(dedup_index, out);
        let (index, built) = open_or_build(cfg, &path)?;
        tracing::info!(
            index = %path.display(),
            built,
            ngrams = index.len(),
            "decontaminating {} chains",
            chains.len()
        );
        let (kept, rej) = index.split(std::mem::take(chains));
        *chains = kept;
        rejects = rej;
        rejects.sort_by(|a, b| a.chain_id.cmp(&b.chain_id));
    }
    write_parquet(
        &final_dir.join(REJECTS_FILE),
        rejects_schema(),
        [rejects_to_batch(&rejects)],
        wopts,
    )?;
    Ok(rejects)
}

/// What `cotforge decontaminate` did to a finalized output.
#[derive(Debug, Clone, PartialEq)]
pub struct DecontamOutcome {
    /// Shipped chains checked.
    pub checked: usize,
    /// Chains flagged (and moved to the rejects) by this call.
    pub flagged: usize,
    /// Decontamination rejects in the output after this call.
    pub rejects_total: usize,
    pub index: PathBuf,
    pub index_built: bool,
    pub ngrams: usize,
    pub short_items: u64,
    pub benchmark_rows: u64,
}

fn read_all<T>(
    path: &Path,
    f: fn(&arrow::array::RecordBatch) -> crate::store::Result<Vec<T>>,
) -> Result<Vec<T>, StageError> {
    let mut v = Vec::new();
    for b in read_parquet(path)? {
        v.extend(f(&b)?);
    }
    Ok(v)
}

/// Decontaminates the finalized output `out` in place: flagged chains leave
/// `final/chains.parquet` and join `final/rejected-decontaminate.parquet`.
///
/// Each file is replaced atomically, the rejects first: a crash between the
/// two leaves the flagged rows in both, and the rerun flags them again and
/// merges by chain id, so it converges to the state of an uninterrupted run.
/// Nothing is rewritten when nothing new is flagged.
pub fn decontaminate_final(
    out: &Path,
    cfg: &DecontamConfig,
    index_path: &Path,
    wopts: &WriteOptions,
) -> Result<DecontamOutcome, StageError> {
    let final_dir = out.join("final");
    let chains_path = final_dir.join("chains.parquet");
    if !chains_path.is_file() {
        return Err(StageError::Config(format!(
            "{}: not a finalized output (no final/chains.parquet); run `cotforge finalize JOB` first",
            out.display()
        )));
    }
    let (index, built) = open_or_build(cfg, index_path)?;
    let chains = read_all(&chains_path, batch_to_chains)?;
    let rejects_path = final_dir.join(REJECTS_FILE);
    let mut rejects = if rejects_path.is_file() {
        read_all(&rejects_path, batch_to_rejects)?
    } else {
        Vec::new()
    };
    let checked = chains.len();
    let (kept, new) = index.split(chains);
    let flagged = new.len();
    if flagged > 0 {
        let known: std::collections::HashSet<Option<String>> =
            rejects.iter().map(|r| r.chain_id.clone()).collect();
        rejects.extend(new.into_iter().filter(|r| !known.contains(&r.chain_id)));
        rejects.sort_by(|a, b| a.chain_id.cmp(&b.chain_id));
        write_parquet(
            &rejects_path,
            rejects_schema(),
            [rejects_to_batch(&rejects)],
            wopts,
        )?;
        crate::store::crash::point("decontaminate.rejects_written");
        write_parquet(
            &chains_path,
            chains_schema(),
            [chains_to_batch(&kept)],
            wopts,
        )?;
    }
    Ok(DecontamOutcome {
        checked,
        flagged,
        rejects_total: rejects.len(),
        index: index_path.to_path_buf(),
        index_built: built,
        ngrams: index.len(),
        short_items: index.short_items(),
        benchmark_rows: index.files().iter().map(|f| f.rows).sum(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_form_ignores_case_punctuation_spacing_and_compatibility_forms() {
        let a = word_hashes("Natalia sold clips to 48 of her friends");
        let b = word_hashes("NATALIA  sold, clips -- to 48 of her\tfriends!");
        let c = word_hashes("Ｎａｔａｌｉａ sold clips to ４８ of her friends");
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_ne!(a, word_hashes("Natalia sold clips to 49 of her friends"));
        // The reported words are the hashed words.
        let w = normalized_words("Ｎａｔａｌｉａ, sold ﬁve!");
        assert_eq!(w, ["natalia", "sold", "five"]);
        let mut h = Vec::new();
        push_word_hashes(&w.join(" "), &mut h);
        assert_eq!(h, word_hashes("Ｎａｔａｌｉａ, sold ﬁve!"));
    }

    #[test]
    fn short_texts_have_no_ngrams() {
        assert!(ngram_hashes("one two three", 4).is_empty());
        assert_eq!(ngram_hashes("one two three four", 4).len(), 1);
        assert_eq!(ngram_hashes("one two three four five", 4).len(), 2);
    }

    #[test]
    fn index_path_defaults() {
        let cfg = DecontamConfig {
            against: vec![],
            column: None,
            n: 13,
            index: None,
        };
        assert_eq!(
            cfg.index_path(Some(Path::new("/n/dedup-index")), Path::new("/o")),
            PathBuf::from("/n/dedup-index.decontam")
        );
        assert_eq!(
            cfg.index_path(None, Path::new("/o")),
            PathBuf::from("/o/decontam.idx")
        );
    }
}
