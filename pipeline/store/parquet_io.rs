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

use super::fsio::TempPath;
pub use super::fsio::{commit_bytes, fsync_dir, tmp_path};

/// The full-disk error inside a Parquet error, if it is one (the writer
/// wraps I/O errors as `External`).
pub fn disk_full_in(e: &parquet::errors::ParquetError) -> Option<std::io::Error> {
    let io = match e {
        parquet::errors::ParquetError::External(b) => b.downcast_ref::<std::io::Error>(),
        _ => None,
    }?;
    super::is_disk_full(io)
        .then(|| std::io::Error::from_raw_os_error(io.raw_os_error().unwrap_or(libc::ENOSPC)))
}

/// A writer error as a store error; a full disk is named as such.
fn write_err(path: &Path, e: parquet::errors::ParquetError) -> StoreError {
    if let Some(source) = disk_full_in(&e) {
        return StoreError::DiskFull {
            path: path.to_path_buf(),
            source,
        };
    }
    StoreError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// A Parquet file being written; invisible under its final name until [`ParquetSink::commit`].
/// Dropped without commit (an error anywhere), its temporary file is removed.
pub struct ParquetSink {
    path: PathBuf,
    tmp: TempPath,
    writer: ArrowWriter<Hashing<BufWriter<File>>>,
    rows: u64,
}

impl ParquetSink {
    pub fn create(path: &Path, schema: SchemaRef, opts: &WriteOptions) -> Result<Self> {
        let (tmp, file) = TempPath::create(path)?;
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
            ArrowWriter::try_new(out, schema, Some(props)).map_err(|e| write_err(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            tmp,
            writer,
            rows: 0,
        })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.writer
            .write(batch)
            .map_err(|e| write_err(&self.path, e))?;
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
        let hashing = self.writer.into_inner().map_err(|e| write_err(&path, e))?;
        let Hashing {
            inner,
            hasher,
            bytes,
        } = hashing;
        let file = inner
            .into_inner()
            .map_err(|e| io_err(&path)(e.into_error()))?;
        self.tmp.commit(file)?;
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

/// Read a whole Parquet file of the output into batches (small files: tests,
/// status, merge of one shard). A link is refused.
pub fn read_parquet(path: &Path) -> Result<Vec<RecordBatch>> {
    let f = super::fsio::open_read(path)?;
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
