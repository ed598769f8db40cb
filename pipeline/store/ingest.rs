//! Seed Parquet in: streamed batch by batch, checked file by file and row by row.
//!
//! File-level faults (a directory, not Parquet, truncated, empty, a footer
//! whose row count disagrees with its row groups, missing `prompt`, a column
//! of a type it cannot hold) are errors naming file and column, raised by
//! [`Ingest::open`] for *all* inputs before the first row is yielded, so a job
//! with a bad file writes nothing. Row-level faults become [`Reject`]s with
//! stage `ingest`; the job goes on. Reject reasons (stable, tests rely on them):
//! - `null prompt`, `empty prompt` (empty or whitespace only)
//! - `prompt too long: N chars > budget M chars` / `... N bytes > budget M bytes`
//! - `invalid UTF-8 in column <col> at byte N` (binary columns)
//! - `NUL byte in column <col> at byte N` (prompt, system, response: text the
//!   model reads; a NUL is never meant and chat templates cannot carry it)
//! - `duplicate id <id> (first seen at input row N)`
//!
//! Column types accepted besides `string`: `large_string`, `string_view` and
//! the binary forms (checked for UTF-8) everywhere; dictionary-encoded text
//! (pandas categoricals) everywhere; integers for `id` and numbers for
//! `reference_answer` (as their decimal text); for `meta`, a struct, map or
//! list (stored as its JSON text).
//!
//! Memory is bounded by `batch_size` rows plus 24 bytes per accepted id for
//! the duplicate check (set `check_duplicates: false` when ids are known unique).

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BinaryViewArray, LargeBinaryArray, LargeStringArray,
    StringArray, StringViewArray,
};
use arrow::datatypes::DataType;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;

use super::{io_err, Result, ShardSpec, StoreError};
use crate::record::{Reject, Seed};

/// Columns of the seed schema, in schema order; only `prompt` is required.
pub const SEED_COLUMNS: [&str; 8] = [
    "id",
    "prompt",
    "system",
    "reference_answer",
    "response",
    "source",
    "lang",
    "meta",
];

/// How ingest reads and what it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestOptions {
    /// Rows per record batch read (the memory bound).
    pub batch_size: usize,
    /// Longest prompt accepted, in Unicode scalar values.
    pub max_prompt_chars: usize,
    /// Longest prompt accepted, in UTF-8 bytes.
    pub max_prompt_bytes: usize,
    /// Only yield rows of this shard (others are skipped without checks).
    pub shard: Option<ShardSpec>,
    /// Reject later rows whose id was already accepted.
    pub check_duplicates: bool,
}

impl Default for IngestOptions {
    fn default() -> Self {
        Self {
            batch_size: 8192,
            max_prompt_chars: 32_768,
            max_prompt_bytes: 131_072,
            shard: None,
            check_duplicates: true,
        }
    }
}

/// A row after ingest: a seed to process, or a reject.
#[derive(Debug, Clone, PartialEq)]
pub enum IngestRow {
    Seed(Seed),
    Reject(Reject),
}

/// One input row with its position in the job's input (all files, in order).
#[derive(Debug, Clone, PartialEq)]
pub struct IngestItem {
    pub ordinal: u64,
    pub row: IngestRow,
}

impl IngestItem {
    pub fn seed_id(&self) -> &str {
        match &self.row {
            IngestRow::Seed(s) => &s.id,
            IngestRow::Reject(r) => &r.seed_id,
        }
    }
}

/// The id of a seed without one: blake3 of the whitespace-normalized prompt, 32 hex chars.
pub fn derive_id(prompt: &str) -> String {
    let norm = prompt.split_whitespace().collect::<Vec<_>>().join(" ");
    let h = blake3::hash(norm.as_bytes()).to_hex();
    h[..32].to_string()
}

fn is_text(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView
    )
}

/// Whether seed column `column` can be read from type `dt`, and what it expects otherwise.
fn accepts(column: &str, dt: &DataType) -> Result<(), &'static str> {
    let text = |dt: &DataType| match dt {
        DataType::Dictionary(_, v) => is_text(v),
        d => is_text(d),
    };
    let ok = match column {
        "id" => text(dt) || dt.is_integer(),
        "reference_answer" => text(dt) || dt.is_integer() || dt.is_floating(),
        "meta" => {
            text(dt)
                || matches!(
                    dt,
                    DataType::Struct(_)
                        | DataType::Map(..)
                        | DataType::List(_)
                        | DataType::LargeList(_)
                )
        }
        _ => text(dt),
    };
    if ok {
        return Ok(());
    }
    Err(match column {
        "id" => "a string, binary (UTF-8), dictionary-encoded string or integer column",
        "reference_answer" => {
            "a string, binary (UTF-8), dictionary-encoded string or number column"
        }
        "meta" => "a string, binary (UTF-8), struct, map or list column",
        _ => "a string or binary (UTF-8) column (dictionary-encoded is fine)",
    })
}

/// A column of a batch in a form [`cell`] reads: dictionaries decoded,
/// numbers as decimal text, nested `meta` as JSON text. Text columns pass as they are.
fn normalize(a: &ArrayRef) -> std::result::Result<ArrayRef, String> {
    match a.data_type() {
        d if is_text(d) => Ok(a.clone()),
        DataType::Dictionary(_, v) => {
            let to = if matches!(
                **v,
                DataType::Binary | DataType::LargeBinary | DataType::BinaryView
            ) {
                DataType::Binary
            } else {
                DataType::Utf8
            };
            arrow::compute::cast(a, &to).map_err(|e| e.to_string())
        }
        DataType::Struct(_) | DataType::Map(..) | DataType::List(_) | DataType::LargeList(_) => {
            let v: StringArray = (0..a.len())
                .map(|i| (!a.is_null(i)).then(|| json_of(a.as_ref(), i).to_string()))
                .collect();
            Ok(std::sync::Arc::new(v))
        }
        _ => arrow::compute::cast(a, &DataType::Utf8).map_err(|e| e.to_string()),
    }
}

/// One value of a nested column as JSON (objects for structs and string-keyed maps).
fn json_of(a: &dyn Array, i: usize) -> serde_json::Value {
    use serde_json::Value;
    if a.is_null(i) {
        return Value::Null;
    }
    match a.data_type() {
        DataType::Boolean => Value::Bool(a.as_boolean().value(i)),
        DataType::Struct(fields) => {
            let s = a.as_struct();
            Value::Object(
                fields
                    .iter()
                    .zip(s.columns())
                    .map(|(f, c)| (f.name().clone(), json_of(c.as_ref(), i)))
                    .collect(),
            )
        }
        DataType::List(_) => {
            let l = a.as_list::<i32>().value(i);
            Value::Array((0..l.len()).map(|k| json_of(l.as_ref(), k)).collect())
        }
        DataType::LargeList(_) => {
            let l = a.as_list::<i64>().value(i);
            Value::Array((0..l.len()).map(|k| json_of(l.as_ref(), k)).collect())
        }
        DataType::Map(..) => {
            let m = a.as_map().value(i);
            let (keys, values) = (m.column(0), m.column(1));
            let pairs: Vec<(Value, Value)> = (0..m.len())
                .map(|k| (json_of(keys.as_ref(), k), json_of(values.as_ref(), k)))
                .collect();
            if pairs.iter().all(|(k, _)| k.is_string()) {
                Value::Object(
                    pairs
                        .into_iter()
                        .map(|(k, v)| (k.as_str().unwrap_or_default().to_string(), v))
                        .collect(),
                )
            } else {
                Value::Array(
                    pairs
                        .into_iter()
                        .map(|(k, v)| Value::Array(vec![k, v]))
                        .collect(),
                )
            }
        }
        d if d.is_integer() || d.is_floating() => {
            let t = scalar_text(a, i);
            serde_json::from_str(&t).unwrap_or(Value::String(t))
        }
        _ => Value::String(scalar_text(a, i)),
    }
}

/// Any scalar as the text arrow's cast gives it (strings, dates, decimals, ...).
fn scalar_text(a: &dyn Array, i: usize) -> String {
    let one = a.slice(i, 1);
    match arrow::compute::cast(&one, &DataType::Utf8) {
        Ok(s) => s.as_string::<i32>().value(0).to_string(),
        Err(_) => String::new(),
    }
}

/// Seed files up to this size are read into memory before parsing: a
/// corrupt length in a page header then costs a bounds check instead of
/// seconds of reads past the end (a 20 KB fuzzed file took 24 s through the
/// file reader, 2 s from memory). Bigger files are read from disk.
const IN_MEMORY_BYTES: u64 = 64 << 20;

/// The bytes of one seed file: in memory, or the open file.
enum Source {
    Mem(bytes::Bytes),
    Disk(File),
}

impl parquet::file::reader::Length for Source {
    fn len(&self) -> u64 {
        match self {
            Source::Mem(b) => b.len() as u64,
            Source::Disk(f) => parquet::file::reader::Length::len(f),
        }
    }
}

impl parquet::file::reader::ChunkReader for Source {
    type T = Box<dyn std::io::Read + Send>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        Ok(match self {
            Source::Mem(b) => Box::new(b.get_read(start)?),
            Source::Disk(f) => Box::new(f.get_read(start)?),
        })
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<bytes::Bytes> {
        match self {
            Source::Mem(b) => b.get_bytes(start, length),
            Source::Disk(f) => f.get_bytes(start, length),
        }
    }
}

struct Pending {
    path: PathBuf,
    builder: ParquetRecordBatchReaderBuilder<Source>,
}

/// Open and check one seed file (all file-level checks happen here).
fn open_file(path: &Path, batch_size: usize) -> Result<Pending> {
    if path.is_dir() {
        return Err(StoreError::NotParquet {
            path: path.to_path_buf(),
            reason: "is a directory, not a seed Parquet file (list the .parquet files inside it)"
                .into(),
        });
    }
    let file = File::open(path).map_err(io_err(path))?;
    let len = file.metadata().map_err(io_err(path))?.len();
    if len == 0 {
        return Err(StoreError::NotParquet {
            path: path.to_path_buf(),
            reason: "empty file (0 bytes)".into(),
        });
    }
    let source = if len <= IN_MEMORY_BYTES {
        let mut b = Vec::with_capacity(len as usize);
        use std::io::Read;
        (&file).read_to_end(&mut b).map_err(io_err(path))?;
        Source::Mem(bytes::Bytes::from(b))
    } else {
        Source::Disk(file)
    };
    let builder = guarded(path, || {
        ParquetRecordBatchReaderBuilder::try_new(source).map_err(|e| StoreError::NotParquet {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    })?;
    // The footer's row count sizes buffers: it must agree with its row groups.
    let md = builder.metadata();
    let claimed = md.file_metadata().num_rows();
    let held: i64 = md.row_groups().iter().map(|g| g.num_rows().max(0)).sum();
    if claimed != held {
        return Err(StoreError::NotParquet {
            path: path.to_path_buf(),
            reason: format!(
                "the footer says {claimed} rows but its row groups hold {held}: the file is corrupt; write it again"
            ),
        });
    }
    let schema = builder.schema().clone();
    let mut roots = Vec::new();
    for (i, f) in schema.fields().iter().enumerate() {
        if SEED_COLUMNS.contains(&f.name().as_str()) {
            if let Err(expected) = accepts(f.name(), f.data_type()) {
                return Err(StoreError::WrongType {
                    path: path.to_path_buf(),
                    column: f.name().clone(),
                    found: f.data_type().to_string(),
                    expected: expected.into(),
                });
            }
            roots.push(i);
        }
    }
    if schema.field_with_name("prompt").is_err() {
        return Err(StoreError::MissingColumn {
            path: path.to_path_buf(),
            column: "prompt".into(),
        });
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    Ok(Pending {
        path: path.to_path_buf(),
        builder: builder
            .with_projection(mask)
            .with_batch_size(batch_size.max(1)),
    })
}

thread_local! {
    /// Set while a guarded Parquet call runs: its panic is reported as an error, not printed.
    static GUARDED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Run a call into the Parquet/Arrow readers on untrusted bytes. Those
/// crates assert on some corrupt encodings instead of returning an error
/// (found by fuzzing: a VLQ longer than 10 bytes, bitmaps shorter than their
/// row count); a panic there becomes [`StoreError::Read`] naming the file.
pub(crate) fn guarded<T>(path: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !GUARDED.with(|g| g.get()) {
                previous(info);
            }
        }));
    });
    let was = GUARDED.with(|g| g.replace(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(was));
    r.unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown".into());
        Err(StoreError::Read {
            path: path.to_path_buf(),
            reason: format!(
                "the Parquet reader failed on corrupt data ({msg}); the file is corrupt, write it again"
            ),
        })
    })
}

/// A text cell: absent/null, a string, or bytes that are not UTF-8.
enum Cell<'a> {
    Null,
    Str(&'a str),
    Bad(usize),
}

fn bytes(b: &[u8]) -> Cell<'_> {
    match std::str::from_utf8(b) {
        Ok(s) => Cell::Str(s),
        Err(e) => Cell::Bad(e.valid_up_to()),
    }
}

fn cell(a: &ArrayRef, i: usize) -> Cell<'_> {
    if a.is_null(i) {
        return Cell::Null;
    }
    let any = a.as_any();
    if let Some(x) = any.downcast_ref::<StringArray>() {
        Cell::Str(x.value(i))
    } else if let Some(x) = any.downcast_ref::<LargeStringArray>() {
        Cell::Str(x.value(i))
    } else if let Some(x) = any.downcast_ref::<StringViewArray>() {
        Cell::Str(x.value(i))
    } else if let Some(x) = any.downcast_ref::<BinaryArray>() {
        bytes(x.value(i))
    } else if let Some(x) = any.downcast_ref::<LargeBinaryArray>() {
        bytes(x.value(i))
    } else if let Some(x) = any.downcast_ref::<BinaryViewArray>() {
        bytes(x.value(i))
    } else {
        Cell::Null
    }
}

fn lossy(a: &ArrayRef, i: usize) -> Option<String> {
    if a.is_null(i) {
        return None;
    }
    let any = a.as_any();
    let b: &[u8] = if let Some(x) = any.downcast_ref::<BinaryArray>() {
        x.value(i)
    } else if let Some(x) = any.downcast_ref::<LargeBinaryArray>() {
        x.value(i)
    } else if let Some(x) = any.downcast_ref::<BinaryViewArray>() {
        x.value(i)
    } else {
        return match cell(a, i) {
            Cell::Str(s) => Some(s.to_string()),
            _ => None,
        };
    };
    Some(String::from_utf8_lossy(b).into_owned())
}

/// Streaming seed reader over one or more files.
pub struct Ingest {
    opts: IngestOptions,
    pending: VecDeque<Pending>,
    reader: Option<(PathBuf, ParquetRecordBatchReader)>,
    /// Current batch: file, row count, the seed columns (None when absent).
    batch: Option<(PathBuf, usize, Vec<Option<ArrayRef>>)>,
    row: usize,
    /// Rows seen in the current file (for `<file>#<row>` ids).
    file_row: u64,
    ordinal: u64,
    seen: HashMap<u128, u64>,
    failed: bool,
}

impl Ingest {
    /// Open every input and check it; any file-level fault fails here.
    pub fn open<P: AsRef<Path>>(paths: &[P], opts: IngestOptions) -> Result<Self> {
        let pending = paths
            .iter()
            .map(|p| open_file(p.as_ref(), opts.batch_size))
            .collect::<Result<VecDeque<_>>>()?;
        let mut me = Self {
            opts,
            pending,
            reader: None,
            batch: None,
            row: 0,
            file_row: 0,
            ordinal: 0,
            seen: HashMap::new(),
            failed: false,
        };
        if me.opts.check_duplicates {
            // Sized once from the footers: growing by doubling would briefly
            // hold the old and the new table, the peak of a large ingest.
            // Bounded, and fallible: a footer is input, not a promise.
            let share = me.total_rows() / me.opts.shard.map_or(1, |s| s.count.max(1) as u64);
            let want = share.saturating_add(share / 16).min(1 << 26) as usize;
            let _ = me.seen.try_reserve(want);
        }
        Ok(me)
    }

    /// Total rows in all inputs, from the footers (for progress bars).
    pub fn total_rows(&self) -> u64 {
        self.pending
            .iter()
            .map(|p| p.builder.metadata().file_metadata().num_rows().max(0) as u64)
            .sum()
    }

    fn next_batch(&mut self) -> Result<bool> {
        loop {
            if let Some((path, reader)) = &mut self.reader {
                let next = guarded(path, || Ok(reader.next()))?;
                match next {
                    Some(Ok(b)) => {
                        let cols = guarded(path, || {
                            SEED_COLUMNS
                                .iter()
                                .map(|c| match b.column_by_name(c) {
                                    Some(a) => {
                                        normalize(a).map(Some).map_err(|reason| StoreError::Read {
                                            path: path.clone(),
                                            reason: format!("column `{c}`: {reason}"),
                                        })
                                    }
                                    None => Ok(None),
                                })
                                .collect::<Result<Vec<_>>>()
                        })?;
                        self.batch = Some((path.clone(), b.num_rows(), cols));
                        self.row = 0;
                        return Ok(true);
                    }
                    Some(Err(e)) => {
                        return Err(StoreError::Read {
                            path: path.clone(),
                            reason: e.to_string(),
                        })
                    }
                    None => self.reader = None,
                }
            }
            let Some(p) = self.pending.pop_front() else {
                return Ok(false);
            };
            let path = p.path.clone();
            let reader = guarded(&path, || {
                p.builder.build().map_err(|e| StoreError::Read {
                    path: p.path.clone(),
                    reason: e.to_string(),
                })
            })?;
            self.file_row = 0;
            self.reader = Some((p.path, reader));
        }
    }

    /// Check one row; `None` when it belongs to another shard.
    fn row(&mut self, path: &Path, cols: &[Option<ArrayRef>], i: usize) -> Option<IngestRow> {
        let ordinal = self.ordinal;
        let file_row = self.file_row;
        let get = |k: usize| cols[k].as_ref().map(|a| cell(a, i)).unwrap_or(Cell::Null);
        let text = |k: usize| cols[k].as_ref().and_then(|a| lossy(a, i));
        let prompt_cell = get(1);
        let given_id = match get(0) {
            Cell::Str(s) if !s.trim().is_empty() => Some(s.to_string()),
            _ => None,
        };
        let seed_id = match (&given_id, &prompt_cell) {
            (Some(id), _) => id.clone(),
            (None, Cell::Str(p)) => derive_id(p),
            _ => {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                format!("{name}#{file_row}")
            }
        };
        if let Some(s) = self.opts.shard {
            if !s.owns(&seed_id) {
                return None;
            }
        }
        let seed = Seed {
            id: seed_id.clone(),
            prompt: text(1).unwrap_or_default(),
            system: text(2),
            reference_answer: text(3),
            response: text(4),
            source: text(5),
            lang: text(6),
            meta: text(7),
        };
        let mut reason = match prompt_cell {
            Cell::Null => Some("null prompt".to_string()),
            Cell::Bad(at) => Some(format!("invalid UTF-8 in column prompt at byte {at}")),
            Cell::Str(p) if p.trim().is_empty() => Some("empty prompt".to_string()),
            Cell::Str(p) if p.len() > self.opts.max_prompt_bytes => Some(format!(
                "prompt too long: {} bytes > budget {} bytes",
                p.len(),
                self.opts.max_prompt_bytes
            )),
            Cell::Str(p) if p.chars().count() > self.opts.max_prompt_chars => Some(format!(
                "prompt too long: {} chars > budget {} chars",
                p.chars().count(),
                self.opts.max_prompt_chars
            )),
            Cell::Str(_) => None,
        };
        if reason.is_none() {
            for (k, name) in SEED_COLUMNS.iter().enumerate() {
                if let Cell::Bad(at) = get(k) {
                    reason = Some(format!("invalid UTF-8 in column {name} at byte {at}"));
                    break;
                }
            }
        }
        if reason.is_none() {
            // Text the model reads: a NUL is never meant, and chat templates cannot carry it.
            for k in [1usize, 2, 4] {
                if let Cell::Str(t) = get(k) {
                    if let Some(at) = t.bytes().position(|b| b == 0) {
                        reason = Some(format!(
                            "NUL byte in column {} at byte {at} (remove it from the seed)",
                            SEED_COLUMNS[k]
                        ));
                        break;
                    }
                }
            }
        }
        if reason.is_none() && self.opts.check_duplicates {
            let h = blake3::hash(seed_id.as_bytes());
            let mut k = [0u8; 16];
            k.copy_from_slice(&h.as_bytes()[..16]);
            let key = u128::from_le_bytes(k);
            match self.seen.get(&key) {
                Some(first) => {
                    reason = Some(format!(
                        "duplicate id {seed_id} (first seen at input row {first})"
                    ))
                }
                None => {
                    self.seen.insert(key, ordinal);
                }
            }
        }
        Some(match reason {
            None => IngestRow::Seed(seed),
            Some(reason) => IngestRow::Reject(Reject {
                seed_id,
                chain_id: None,
                recipe: None,
                stage: crate::record::Stage::Ingest,
                reason,
                row: serde_json::to_string(&seed).unwrap_or_default(),
            }),
        })
    }
}

impl Iterator for Ingest {
    type Item = Result<IngestItem>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            let have = matches!(&self.batch, Some((_, n, _)) if self.row < *n);
            if !have {
                match self.next_batch() {
                    Ok(true) => continue,
                    Ok(false) => return None,
                    Err(e) => {
                        self.failed = true;
                        return Some(Err(e));
                    }
                }
            }
            // Moved out and back so `row` can borrow self mutably (no copies).
            let (path, n, cols) = self.batch.take()?;
            let at = self.row;
            let out = match guarded(&path, || Ok(self.row(&path, &cols, at))) {
                Ok(o) => o,
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            };
            let ordinal = self.ordinal;
            self.row += 1;
            self.ordinal += 1;
            self.file_row += 1;
            self.batch = Some((path, n, cols));
            if let Some(row) = out {
                return Some(Ok(IngestItem { ordinal, row }));
            }
        }
    }
}
