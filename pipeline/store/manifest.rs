//! Per-shard manifest, completion marker, job file, and the shard file names.
//!
//! Each shard has its own manifest so array workers on shared storage never
//! write the same file; `cotforge verify` reads them all.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::fingerprint::Fingerprint;
use super::parquet_io::{commit_bytes, CommittedFile};
use super::{fsio, io_err, Result, ShardSpec, StoreError};

pub const MANIFEST_FORMAT: &str = "cotforge-manifest/1";
pub const MARKER_FORMAT: &str = "cotforge-done/1";

/// Paths of one shard's files under `OUT/shards/<kind>/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardPaths {
    pub dir: PathBuf,
    pub kind: String,
    pub shard: ShardSpec,
}

impl ShardPaths {
    pub fn new(out: &Path, kind: &str, shard: ShardSpec) -> Self {
        Self {
            dir: out.join("shards").join(kind),
            kind: kind.to_string(),
            shard,
        }
    }
    fn file(&self, prefix: &str, ext: &str) -> PathBuf {
        self.dir
            .join(format!("{prefix}-{}.{ext}", self.shard.suffix()))
    }
    pub fn chains(&self) -> PathBuf {
        self.file("shard", "parquet")
    }
    pub fn rejects(&self) -> PathBuf {
        self.file("rejected", "parquet")
    }
    pub fn manifest(&self) -> PathBuf {
        self.file("manifest", "json")
    }
    pub fn done(&self) -> PathBuf {
        self.file("done", "json")
    }
    pub fn journal(&self) -> PathBuf {
        self.file("journal", "log")
    }
    pub fn lock(&self) -> PathBuf {
        self.file("lock", "lock")
    }
    pub fn lease(&self) -> PathBuf {
        self.file("lease", "json")
    }
}

/// Parse `prefix-IIIII-of-NNNNN.ext` into (prefix, shard).
pub fn parse_shard_name(name: &str) -> Option<(String, ShardSpec)> {
    let (stem, _ext) = name.split_once('.')?;
    let mut parts = stem.rsplitn(4, '-');
    let count = parts.next()?.parse().ok()?;
    if parts.next()? != "of" {
        return None;
    }
    let index = parts.next()?.parse().ok()?;
    let prefix = parts.next()?.to_string();
    Some((prefix, ShardSpec { index, count }))
}

/// Files a shard has committed, in commit order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub kind: String,
    pub shard_index: u32,
    pub num_shards: u32,
    pub files: Vec<CommittedFile>,
}

impl Manifest {
    pub fn new(kind: &str, shard: ShardSpec) -> Self {
        Self {
            format: MANIFEST_FORMAT.into(),
            kind: kind.into(),
            shard_index: shard.index,
            num_shards: shard.count,
            files: Vec::new(),
        }
    }
    pub fn get(&self, name: &str) -> Option<&CommittedFile> {
        self.files.iter().find(|f| f.name == name)
    }
    /// Add or replace the entry of `file.name`.
    pub fn put(&mut self, file: CommittedFile) {
        match self.files.iter_mut().find(|f| f.name == file.name) {
            Some(f) => *f = file,
            None => self.files.push(file),
        }
    }
}

/// The completion marker: the shard is done and these are its totals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DoneMarker {
    pub format: String,
    pub kind: String,
    pub shard_index: u32,
    pub num_shards: u32,
    /// Input rows of this shard (seeds and ingest rejects).
    pub seeds: u64,
    pub accepted: u64,
    pub rejected: u64,
    /// blake3 of the manifest file as committed.
    pub manifest_blake3: String,
    /// What the shard was made with (absent in markers of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<Fingerprint>,
}

/// The job-wide creation time, fixed by the first run that writes `OUT/job.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFile {
    pub created_at: i64,
}

/// Read a JSON file of the output directory (a link is refused).
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let b = fsio::read_all(path)?;
    serde_json::from_slice(&b).map_err(|e| StoreError::Corrupt {
        path: path.to_path_buf(),
        reason: format!("invalid JSON: {e}"),
    })
}

/// Serialize deterministically and commit atomically; returns the bytes written.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<Vec<u8>> {
    let mut b = serde_json::to_vec_pretty(value).map_err(|e| StoreError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    b.push(b'\n');
    commit_bytes(path, &b)?;
    Ok(b)
}

/// The job's `created_at`: `explicit` if given (and recorded), else the one
/// recorded by an earlier run, else `SOURCE_DATE_EPOCH`, else now. Written with
/// create-if-absent semantics (hard link), so concurrent first runs agree.
pub fn job_created_at(out: &Path, explicit: Option<i64>) -> Result<i64> {
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    let path = out.join("job.json");
    if let Ok(j) = read_json::<JobFile>(&path) {
        return Ok(explicit.unwrap_or(j.created_at));
    }
    let ts = explicit
        .or_else(|| {
            std::env::var("SOURCE_DATE_EPOCH")
                .ok()
                .and_then(|s| s.trim().parse().ok())
        })
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0)
        });
    fsio::refuse_symlink(&path)?;
    let tmp = out.join(format!(".job.json.{}.tmp", std::process::id()));
    let body =
        serde_json::to_vec_pretty(&JobFile { created_at: ts }).map_err(|e| StoreError::Write {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    let written = (|| {
        use std::io::Write;
        fsio::remove_if_exists(&tmp)?;
        let mut f = fsio::open_nofollow(
            &tmp,
            std::fs::OpenOptions::new().write(true).create_new(true),
        )?;
        f.write_all(&body).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))
    })();
    let linked = written.map(|()| std::fs::hard_link(&tmp, &path));
    let _ = std::fs::remove_file(&tmp);
    let linked = linked?;
    super::parquet_io::fsync_dir(out)?;
    match linked {
        Ok(()) => Ok(ts),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok(explicit.unwrap_or(read_json::<JobFile>(&path)?.created_at))
        }
        Err(e) => Err(io_err(&path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_roundtrip() {
        let p = ShardPaths::new(
            Path::new("/o"),
            "marco_cot",
            ShardSpec { index: 3, count: 8 },
        );
        assert_eq!(
            p.chains(),
            PathBuf::from("/o/shards/marco_cot/shard-00003-of-00008.parquet")
        );
        let name = p
            .rejects()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        assert_eq!(
            name.as_deref().and_then(parse_shard_name),
            Some(("rejected".into(), ShardSpec { index: 3, count: 8 }))
        );
        assert_eq!(parse_shard_name("shard-x-of-00008.parquet"), None);
    }

    #[test]
    fn first_run_fixes_created_at() {
        let d = tempfile::tempdir().expect("tempdir");
        assert_eq!(job_created_at(d.path(), Some(1234)).expect("first"), 1234);
        assert_eq!(job_created_at(d.path(), None).expect("again"), 1234);
    }
}
