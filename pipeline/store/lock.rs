//! One worker per shard (and one finalize per output and per dedup index):
//! an exclusive `flock` on a lock file such as `lock-IIIII-of-NNNNN.lock`.
//!
//! The kernel drops a flock when its holder dies (even by SIGKILL), so a lock
//! left by a dead process is taken over without guessing from pids; the file
//! content (pid, hostname) only names the holder in messages and `status`.
//! On shared storage flock only excludes across nodes where the file system
//! honours it (NFSv4 with working `lockd`/NLM, Lustre with `-o flock`, CephFS,
//! GPFS). It silently locks within one node only on NFS mounted `nolock` or
//! `local_lock=flock`, on Lustre with `localflock` and on BeeGFS by default:
//! there the lease beside the lock ([`super::lease`]) keeps a second node off.
//! Lock files are opened without following links; `status` opens them read-only.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{io_err, Result, StoreError};

/// What a lock file says about its holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    pub pid: u32,
    pub hostname: String,
}

impl std::fmt::Display for LockInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {} on host {}", self.pid, self.hostname)
    }
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates or truncates.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Whether a process with this pid exists on this host.
pub fn pid_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Whether flock is missing on this file system (Lustre without `-o flock`,
/// some FUSE and NFS setups), as opposed to held by someone else.
fn unsupported(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSYS) | Some(libc::ENOLCK) | Some(libc::EOPNOTSUPP)
    )
}

fn try_flock(f: &File) -> std::io::Result<bool> {
    // SAFETY: flock on an open descriptor we own.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

fn read_info(f: &mut File) -> Option<LockInfo> {
    let mut s = String::new();
    f.rewind().ok()?;
    f.read_to_string(&mut s).ok()?;
    serde_json::from_str(&s).ok()
}

/// Holder of a lock file; released (and the file removed) on drop.
#[derive(Debug)]
pub struct FileLock {
    file: File,
    path: PathBuf,
    /// The holder named in the file when we took it over from a dead process.
    pub took_over: Option<LockInfo>,
    /// False where the file system has no flock: then only the lease excludes,
    /// also between processes of one host.
    pub flock_works: bool,
}

/// The shard worker's lock.
pub type ShardLock = FileLock;

impl FileLock {
    /// Take the lock of a shard or fail at once with [`StoreError::LockHeld`] naming the holder.
    pub fn acquire(path: &Path) -> Result<Self> {
        Self::acquire_for(path, "shard")
    }

    /// Take the lock of `what` (named in the error) or fail at once naming the holder.
    pub fn acquire_for(path: &Path, what: &'static str) -> Result<Self> {
        loop {
            let mut file = super::fsio::open_nofollow(
                path,
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o644),
            )?;
            let locked = match try_flock(&file) {
                Ok(l) => l,
                Err(e) if unsupported(&e) => {
                    tracing::warn!(
                        "{}: this file system has no flock ({e}); only the lease beside it keeps other workers off",
                        path.display()
                    );
                    return Ok(Self {
                        file,
                        path: path.to_path_buf(),
                        took_over: None,
                        flock_works: false,
                    });
                }
                Err(e) => return Err(io_err(path)(e)),
            };
            if !locked {
                let holder = read_info(&mut file)
                    .map(|i| i.to_string())
                    .unwrap_or_else(|| "another process (lock file not yet written)".into());
                return Err(StoreError::LockHeld {
                    path: path.to_path_buf(),
                    what,
                    holder,
                });
            }
            // The previous holder may have unlinked the file between our open
            // and our flock; then we locked an orphan inode. Retry on the new file.
            let ours = file.metadata().map_err(io_err(path))?;
            match std::fs::metadata(path) {
                Ok(m) if m.ino() == ours.ino() && m.dev() == ours.dev() => {}
                _ => continue,
            }
            let previous = read_info(&mut file);
            let me = LockInfo {
                pid: std::process::id(),
                hostname: hostname(),
            };
            let took_over = previous.filter(|p| p != &me);
            if let Some(p) = &took_over {
                tracing::warn!("{}: taking over the stale lock of {p}", path.display());
            }
            let body = serde_json::to_vec(&me).map_err(|e| StoreError::Write {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
            file.set_len(0).map_err(io_err(path))?;
            file.rewind().map_err(io_err(path))?;
            file.write_all(&body).map_err(io_err(path))?;
            file.sync_data().map_err(io_err(path))?;
            return Ok(Self {
                file,
                path: path.to_path_buf(),
                took_over,
                flock_works: true,
            });
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // Unlink while still holding the flock; see the inode check in acquire.
        let _ = std::fs::remove_file(&self.path);
        // SAFETY: unlocking our own descriptor.
        unsafe {
            libc::flock(self.file.as_raw_fd(), libc::LOCK_UN);
        }
    }
}

/// Who holds the lock at `path`, if anyone (for `status`). `Ok(None)`: free or
/// absent. Opens the file read-only (flock needs no write access), so it works
/// on a read-only mount and never creates or changes anything.
pub fn holder(path: &Path) -> Result<Option<LockInfo>> {
    let mut file = match super::fsio::open_read(path) {
        Ok(f) => f,
        Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    if try_flock(&file).map_err(io_err(path))? {
        // SAFETY: unlocking our own descriptor.
        unsafe {
            libc::flock(file.as_raw_fd(), libc::LOCK_UN);
        }
        return Ok(None);
    }
    Ok(Some(read_info(&mut file).unwrap_or(LockInfo {
        pid: 0,
        hostname: "unknown".into(),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_acquire_names_the_holder_and_release_frees() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("lock-00000-of-00001.lock");
        let a = ShardLock::acquire(&p).expect("first");
        let err = ShardLock::acquire(&p).expect_err("second must fail");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert_eq!(
            holder(&p).expect("holder").map(|h| h.pid),
            Some(std::process::id())
        );
        drop(a);
        assert!(!p.exists());
        assert_eq!(holder(&p).expect("holder"), None);
        let _b = ShardLock::acquire(&p).expect("after release");
    }

    #[test]
    fn stale_file_of_dead_holder_is_taken_over() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("x.lock");
        let dead = LockInfo {
            pid: 999_999_999,
            hostname: hostname(),
        };
        std::fs::write(&p, serde_json::to_vec(&dead).expect("json")).expect("write");
        let l = ShardLock::acquire(&p).expect("take over");
        assert_eq!(l.took_over, Some(dead));
        assert!(!pid_alive(999_999_999));
        assert!(pid_alive(std::process::id()));
    }
}
