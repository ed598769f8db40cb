//! Parquet writing with atomic commit, and small-file atomic writes.
//!
//! A committed file is never partial: bytes go to a hidden temporary file in
//! the same directory, which is fsynced, renamed over the final name, and the
//! directory is fsynced so the rename itself survives a power cut.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use super::{crash, io_err, Result, StoreError};

/// How shard files are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteOptions {
    /// Rows per row group (bounded so readers can stream a shard).
    pub row_group_rows: usize,
    /// zstd level (1..=22).
    pub zstd_level: i32,
}

impl Default for WriteOptions {
    fn default() -> Self {
        Self {
            row_group_rows: 10_000,
            zstd_level: 3,
        }
    }
}

/// A file as recorded in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedFile {
    /// File name, relative to the manifest's directory.
    pub name: String,
    pub rows: u64,
    pub bytes: u64,
    pub blake3: String,
}

/// Counts and hashes what passes through, so commit needs no second read.
struct Hashing<W> {
    inner: W,
    hasher: blake3::Hasher,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The hidden temporary name used while `path` is being written.
pub fn tmp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

/// fsync a directory so renames and creations in it are durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Rename the fsynced temporary over `path` and make it durable.
fn finish_commit(tmp: &Path, path: &Path) -> Result<()> {
    crash::point("commit.before_rename");
    std::fs::rename(tmp, path).map_err(io_err(path))?;
    crash::point("commit.before_dirsync");
    fsync_dir(parent(path))?;
    crash::point("commit.done");
    Ok(())
}

/// Atomically replace `path` with `bytes` (manifests, markers, job files).
pub fn commit_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    crash::point("commit.before_fsync");
    f.sync_all().map_err(io_err(&tmp))?;
    drop(f);
    finish_commit(&tmp, path)
}

/// A Parquet file being written; invisible under its final name until [`ParquetSink::commit`].
pub struct ParquetSink {
    path: PathBuf,
    tmp: PathBuf,
    writer: ArrowWriter<Hashing<BufWriter<File>>>,
    rows: u64,
}

impl ParquetSink {
    pub fn create(path: &Path, schema: SchemaRef, opts: &WriteOptions) -> Result<Self> {
        let tmp = tmp_path(path);
        let file = File::create(&tmp).map_err(io_err(&tmp))?;
        let level = ZstdLevel::try_new(opts.zstd_level).map_err(|e| StoreError::Write {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(level))
            .set_max_row_group_row_count(Some(opts.row_group_rows.max(1)))
            .set_created_by(format!("cotforge {}", env!("CARGO_PKG_VERSION")))
            .build();
        let out = Hashing {
            inner: BufWriter::with_capacity(1 << 20, file),
            hasher: blake3::Hasher::new(),
            bytes: 0,
        };
        let writer =
            ArrowWriter::try_new(out, schema, Some(props)).map_err(|e| StoreError::Write {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            tmp,
            writer,
            rows: 0,
        })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.writer.write(batch).map_err(|e| StoreError::Write {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        self.rows += batch.num_rows() as u64;
        crash::point("commit.batch_written");
        Ok(())
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Finish the file, fsync, rename into place, fsync the directory.
    pub fn commit(self) -> Result<CommittedFile> {
        let path = self.path;
        let werr = |e: String| StoreError::Write {
            path: path.clone(),
            reason: e,
        };
        let hashing = self.writer.into_inner().map_err(|e| werr(e.to_string()))?;
        let Hashing {
            inner,
            hasher,
            bytes,
        } = hashing;
        let file = inner.into_inner().map_err(|e| werr(e.to_string()))?;
        crash::point("commit.before_fsync");
        file.sync_all().map_err(io_err(&self.tmp))?;
        drop(file);
        finish_commit(&self.tmp, &path)?;
        Ok(CommittedFile {
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            rows: self.rows,
            bytes,
            blake3: hasher.finalize().to_hex().to_string(),
        })
    }
}

/// Write `batches` as one committed Parquet file.
pub fn write_parquet(
    path: &Path,
    schema: SchemaRef,
    batches: impl IntoIterator<Item = Result<RecordBatch>>,
    opts: &WriteOptions,
) -> Result<CommittedFile> {
    let mut sink = ParquetSink::create(path, schema, opts)?;
    for b in batches {
        sink.write(&b?)?;
    }
    sink.commit()
}

/// Read a whole Parquet file into batches (small files: tests, status, merge of one shard).
pub fn read_parquet(path: &Path) -> Result<Vec<RecordBatch>> {
    let f = File::open(path).map_err(io_err(path))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(f)
        .and_then(|b| b.build())
        .map_err(|e| StoreError::NotParquet {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    reader
        .map(|b| {
            b.map_err(|e| StoreError::Read {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })
        })
        .collect()
}
