//! Reading [`Chain`] and [`Reject`] rows for export, stats and report from
//! any Parquet under an output directory (writing goes through `store`).
//!
//! Columns are named after the struct fields; `recipe` is a utf8 string,
//! `step_confidences` a list<float64>, `verified` a nullable bool,
//! `created_at` an int64. Integer and float columns are cast on read, so a
//! writer that picked int64 for `tokens` still reads.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, ListArray, RecordBatch, StringArray,
    UInt32Array,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::record::{Chain, Recipe, Reject};
use crate::store::parquet_io::{write_parquet, WriteOptions};
use crate::store::schema::{chains_schema, chains_to_batch, rejects_schema, rejects_to_batch};

#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: parquet: {source}")]
    Parquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("{path}: arrow: {source}")]
    Arrow {
        path: PathBuf,
        #[source]
        source: arrow::error::ArrowError,
    },
    #[error("{path}: {msg}")]
    Store { path: PathBuf, msg: String },
    #[error("{path}: column '{column}': {msg}")]
    Column {
        path: PathBuf,
        column: String,
        msg: String,
    },
}

/// What a Parquet file under an output directory holds, judged by its columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Chains,
    Rejects,
    Other,
}

/// Write chains to one Parquet file with the store's schema and writer
/// (zstd, bounded row groups, atomic commit).
pub fn write_chains(path: &Path, rows: &[Chain]) -> Result<(), IoError> {
    write_parquet(
        path,
        chains_schema(),
        [chains_to_batch(rows)],
        &WriteOptions::default(),
    )
    .map(|_| ())
    .map_err(|e| IoError::Store {
        path: path.into(),
        msg: e.to_string(),
    })
}

/// Write rejects to one Parquet file (see [`write_chains`]).
pub fn write_rejects(path: &Path, rows: &[Reject]) -> Result<(), IoError> {
    write_parquet(
        path,
        rejects_schema(),
        [rejects_to_batch(rows)],
        &WriteOptions::default(),
    )
    .map(|_| ())
    .map_err(|e| IoError::Store {
        path: path.into(),
        msg: e.to_string(),
    })
}

fn open(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>, IoError> {
    let file = File::open(path).map_err(|source| IoError::Io {
        path: path.into(),
        source,
    })?;
    ParquetRecordBatchReaderBuilder::try_new(file).map_err(|source| IoError::Parquet {
        path: path.into(),
        source,
    })
}

/// Classifies a Parquet file by its columns.
pub fn file_kind(path: &Path) -> Result<FileKind, IoError> {
    let b = open(path)?;
    let s = b.schema();
    let has = |n: &str| s.field_with_name(n).is_ok();
    Ok(if has("stage") && has("reason") && has("row") {
        FileKind::Rejects
    } else if has("id") && has("reasoning") && has("answer") && has("reward") {
        FileKind::Chains
    } else {
        FileKind::Other
    })
}

struct Cols<'a> {
    path: &'a Path,
    batch: &'a RecordBatch,
}

impl<'a> Cols<'a> {
    fn err(&self, column: &str, msg: impl Into<String>) -> IoError {
        IoError::Column {
            path: self.path.into(),
            column: column.into(),
            msg: msg.into(),
        }
    }
    fn get(&self, name: &str, ty: &DataType) -> Result<Option<ArrayRef>, IoError> {
        let Some(col) = self.batch.column_by_name(name) else {
            return Ok(None);
        };
        cast(col, ty)
            .map(Some)
            .map_err(|e| self.err(name, e.to_string()))
    }
    fn req(&self, name: &str, ty: &DataType) -> Result<ArrayRef, IoError> {
        self.get(name, ty)?.ok_or_else(|| self.err(name, "missing"))
    }
    fn strings(&self, name: &str, required: bool) -> Result<Vec<Option<String>>, IoError> {
        let n = self.batch.num_rows();
        let Some(a) = (if required {
            Some(self.req(name, &DataType::Utf8)?)
        } else {
            self.get(name, &DataType::Utf8)?
        }) else {
            return Ok(vec![None; n]);
        };
        let a = a
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| self.err(name, "not utf8"))?;
        Ok((0..n)
            .map(|i| a.is_valid(i).then(|| a.value(i).to_string()))
            .collect())
    }
}

fn opt_recipe(path: &Path, s: Option<String>) -> Result<Option<Recipe>, IoError> {
    match s {
        None => Ok(None),
        Some(s) if s.is_empty() => Ok(None),
        Some(s) => s.parse().map(Some).map_err(|msg| IoError::Column {
            path: path.into(),
            column: "recipe".into(),
            msg,
        }),
    }
}

/// The record batches of a Parquet file, errors naming the file.
fn batches(
    path: &Path,
) -> Result<impl Iterator<Item = Result<RecordBatch, IoError>> + '_, IoError> {
    let reader = open(path)?.build().map_err(|source| IoError::Parquet {
        path: path.into(),
        source,
    })?;
    Ok(reader.map(move |b| {
        b.map_err(|source| IoError::Arrow {
            path: path.into(),
            source,
        })
    }))
}

/// Reads every chain row of a Parquet file.
pub fn read_chains(path: &Path) -> Result<Vec<Chain>, IoError> {
    let mut out = Vec::new();
    for batch in batches(path)? {
        let batch = batch?;
        let c = Cols {
            path,
            batch: &batch,
        };
        let n = batch.num_rows();
        let s = |name: &str| c.strings(name, true);
        let o = |name: &str| c.strings(name, false);
        let (id, seed_id, prompt, reasoning, answer) = (
            s("id")?,
            s("seed_id")?,
            s("prompt")?,
            s("reasoning")?,
            s("answer")?,
        );
        let (recipe, system, reference, model, model_b3, settings) = (
            o("recipe")?,
            o("system")?,
            o("reference_answer")?,
            o("model")?,
            o("model_blake3")?,
            o("settings")?,
        );
        let reward = c.req("reward", &DataType::Float64)?;
        let reward = reward
            .as_any()
            .downcast_ref::<Float64Array>()
            .ok_or_else(|| c.err("reward", "type"))?;
        let u32col = |name: &str| -> Result<Option<UInt32Array>, IoError> {
            Ok(c.get(name, &DataType::UInt32)?
                .and_then(|a| a.as_any().downcast_ref::<UInt32Array>().cloned()))
        };
        let tokens = u32col("tokens")?;
        let reflections = u32col("reflections")?;
        let verified = c.get("verified", &DataType::Boolean)?;
        let verified = verified
            .as_ref()
            .and_then(|a| a.as_any().downcast_ref::<BooleanArray>());
        let selected = c.get("selected", &DataType::Boolean)?;
        let selected = selected
            .as_ref()
            .and_then(|a| a.as_any().downcast_ref::<BooleanArray>());
        let (value, agreement) = (
            c.get("value", &DataType::Float64)?,
            c.get("agreement", &DataType::Float64)?,
        );
        let opt_f = |a: &Option<ArrayRef>, i: usize| {
            a.as_ref()
                .and_then(|a| a.as_any().downcast_ref::<Float64Array>())
                .filter(|a| a.is_valid(i))
                .map(|a| a.value(i))
        };
        let created = c.get("created_at", &DataType::Int64)?;
        let created = created
            .as_ref()
            .and_then(|a| a.as_any().downcast_ref::<Int64Array>());
        let steps = c.get(
            "step_confidences",
            &DataType::List(Arc::new(Field::new("item", DataType::Float64, true))),
        )?;
        let steps = steps
            .as_ref()
            .and_then(|a| a.as_any().downcast_ref::<ListArray>());
        let mut cols = (
            id.into_iter(),
            seed_id.into_iter(),
            prompt.into_iter(),
            reasoning.into_iter(),
            answer.into_iter(),
            recipe.into_iter(),
            system.into_iter(),
            reference.into_iter(),
            model.into_iter(),
            model_b3.into_iter(),
            settings.into_iter(),
        );
        for i in 0..n {
            let step_confidences = match steps {
                Some(l) if l.is_valid(i) => {
                    let v = l.value(i);
                    let f = v
                        .as_any()
                        .downcast_ref::<Float64Array>()
                        .ok_or_else(|| c.err("step_confidences", "type"))?;
                    f.iter().flatten().collect()
                }
                _ => Vec::new(),
            };
            out.push(Chain {
                id: cols.0.next().flatten().unwrap_or_default(),
                seed_id: cols.1.next().flatten().unwrap_or_default(),
                prompt: cols.2.next().flatten().unwrap_or_default(),
                reasoning: cols.3.next().flatten().unwrap_or_default(),
                answer: cols.4.next().flatten().unwrap_or_default(),
                recipe: opt_recipe(path, cols.5.next().flatten())?,
                system: cols.6.next().flatten(),
                reference_answer: cols.7.next().flatten(),
                model: cols.8.next().flatten().unwrap_or_default(),
                model_blake3: cols.9.next().flatten().unwrap_or_default(),
                settings: cols.10.next().flatten().unwrap_or_default(),
                reward: if reward.is_valid(i) {
                    reward.value(i)
                } else {
                    0.0
                },
                step_confidences,
                tokens: tokens
                    .as_ref()
                    .filter(|a| a.is_valid(i))
                    .map_or(0, |a| a.value(i)),
                reflections: reflections
                    .as_ref()
                    .filter(|a| a.is_valid(i))
                    .map_or(0, |a| a.value(i)),
                verified: verified.filter(|a| a.is_valid(i)).map(|a| a.value(i)),
                created_at: created.filter(|a| a.is_valid(i)).map_or(0, |a| a.value(i)),
                selected: selected.filter(|a| a.is_valid(i)).map(|a| a.value(i)),
                value: opt_f(&value, i),
                agreement: opt_f(&agreement, i),
            });
        }
    }
    Ok(out)
}

/// Reads every reject row of a Parquet file.
pub fn read_rejects(path: &Path) -> Result<Vec<Reject>, IoError> {
    let mut out = Vec::new();
    for batch in batches(path)? {
        let batch = batch?;
        let c = Cols {
            path,
            batch: &batch,
        };
        let cols = (
            c.strings("seed_id", true)?,
            c.strings("chain_id", false)?,
            c.strings("recipe", false)?,
            c.strings("stage", true)?,
            c.strings("reason", true)?,
            c.strings("row", false)?,
        );
        let mut it = (
            cols.0.into_iter(),
            cols.1.into_iter(),
            cols.2.into_iter(),
            cols.3.into_iter(),
            cols.4.into_iter(),
            cols.5.into_iter(),
        );
        for _ in 0..batch.num_rows() {
            out.push(Reject {
                seed_id: it.0.next().flatten().unwrap_or_default(),
                chain_id: it.1.next().flatten(),
                recipe: opt_recipe(path, it.2.next().flatten())?,
                stage: it.3.next().flatten().unwrap_or_default(),
                reason: it.4.next().flatten().unwrap_or_default(),
                row: it.5.next().flatten().unwrap_or_default(),
            });
        }
    }
    Ok(out)
}

/// The files of an output directory, sorted by path (so reads are deterministic).
#[derive(Debug, Clone, Default)]
pub struct OutFiles {
    pub chains: Vec<PathBuf>,
    pub rejects: Vec<PathBuf>,
    /// `metrics.jsonl` files (throughput samples), see [`super::Metrics`].
    pub metrics: Vec<PathBuf>,
}

/// Finds chain and reject Parquet files under `dir` (recursively).
///
/// Until the store's shard manifest is wired in, this is the contract: every
/// `**/*.parquet` whose name does not start with `rejected` and whose columns
/// are a chain's is a chain file; names starting with `rejected` (or files
/// with reject columns) are reject files; temporary files (`*.tmp`, names
/// starting with `.`) and other Parquet files (seeds, exports) are skipped.
pub fn scan_out_dir(dir: &Path) -> Result<OutFiles, IoError> {
    let mut out = OutFiles::default();
    for entry in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let entry = entry.map_err(|e| IoError::Io {
            path: dir.into(),
            source: e
                .into_io_error()
                .unwrap_or_else(|| std::io::Error::other("walk error")),
        })?;
        if !entry.file_type().is_file() {
            continue;
        }
        let path = entry.path();
        let name = entry.file_name().to_string_lossy();
        if name.starts_with('.') || name.ends_with(".tmp") {
            continue;
        }
        if name == "metrics.jsonl" {
            out.metrics.push(path.to_path_buf());
            continue;
        }
        if !name.ends_with(".parquet") {
            continue;
        }
        match file_kind(path)? {
            FileKind::Rejects => out.rejects.push(path.to_path_buf()),
            FileKind::Chains if !name.starts_with("rejected") => {
                out.chains.push(path.to_path_buf())
            }
            _ => {}
        }
    }
    // A finalized run: `final/` holds the deduplicated chains, and the shard
    // files hold the same rows before dedup. Count each chain once.
    let fin = dir.join("final");
    if out.chains.iter().any(|p| p.starts_with(&fin)) {
        out.chains.retain(|p| p.starts_with(&fin));
    }
    Ok(out)
}

/// Reads all chains of the given files, in file order.
pub fn read_all_chains(paths: &[PathBuf]) -> Result<Vec<Chain>, IoError> {
    let mut all = Vec::new();
    for p in paths {
        all.extend(read_chains(p)?);
    }
    Ok(all)
}

pub fn read_all_rejects(paths: &[PathBuf]) -> Result<Vec<Reject>, IoError> {
    let mut all = Vec::new();
    for p in paths {
        all.extend(read_rejects(p)?);
    }
    Ok(all)
}
