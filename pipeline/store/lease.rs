//! A lease beside each lock, for shared storage where `flock` does not
//! exclude across nodes (NFS mounted `nolock` or `local_lock=flock`, Lustre
//! with `localflock`, BeeGFS by default; see [`super::lock`]), and for a
//! worker on a partitioned node that keeps running after the scheduler has
//! requeued its task elsewhere.
//!
//! The lease file (`lease-IIIII-of-NNNNN.json` beside the shard's lock, or
//! `<index>.lease` beside the dedup index) names its holder (host, pid, job
//! fingerprint), a token unique to this acquisition, and a heartbeat time the
//! holder renews from a background thread every `ttl / 4`:
//! - a lease of another host whose heartbeat is younger than its `ttl` is
//!   live: a second node refuses it with [`StoreError::LeaseHeld`];
//! - an older one is stale (its holder died or is cut off): it is taken over;
//! - a lease of this host is taken over at once, because we already hold the
//!   flock, which works within one host: its holder is gone.
//!
//! Fencing: [`Lease::check`] re-reads the file before every commit (journal
//! flush, shard file, manifest, marker, index save) and fails with
//! [`StoreError::LeaseLost`] once another holder's token is there, so a
//! worker that lost its lease stops before writing. Clocks of the nodes must
//! agree to well within the ttl (NTP).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::lock::hostname;
use super::{fsio, io_err, Result, StoreError};

/// Default lease lifetime: a holder silent this long is presumed gone.
pub const DEFAULT_TTL_SECONDS: u64 = 120;

/// What a lease file says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    pub host: String,
    pub pid: u32,
    /// Fingerprint of the job the holder runs.
    pub fingerprint: String,
    /// Unique to one acquisition: the fencing token.
    pub token: String,
    /// Unix seconds of the last renewal.
    pub heartbeat: u64,
    /// Seconds after the heartbeat at which the lease is stale.
    pub ttl: u64,
}

impl LeaseInfo {
    fn holder(&self) -> String {
        format!(
            "pid {} on host {} (job {}, heartbeat {} s ago)",
            self.pid,
            self.host,
            &self.fingerprint[..self.fingerprint.len().min(12)],
            now().saturating_sub(self.heartbeat)
        )
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The lease at `path`, if it exists and parses.
pub fn read(path: &Path) -> Option<LeaseInfo> {
    let b = fsio::read_all(path).ok()?;
    serde_json::from_slice(&b).ok()
}

/// A live lease of another host at `path` (for `status`).
pub fn live_foreign(path: &Path) -> Option<LeaseInfo> {
    read(path).filter(|l| l.host != hostname() && now().saturating_sub(l.heartbeat) < l.ttl)
}

/// Write `info` at `path` atomically, through a temporary unique to the token
/// (two nodes racing for a stale lease never share a temporary).
fn write(path: &Path, info: &LeaseInfo) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", info.token));
    let body = serde_json::to_vec(info).map_err(|e| StoreError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let r = (|| {
        let mut f = fsio::open_nofollow(
            &tmp,
            std::fs::OpenOptions::new().write(true).create_new(true),
        )?;
        f.write_all(&body).map_err(io_err(&tmp))?;
        f.sync_data().map_err(io_err(&tmp))?;
        fsio::refuse_symlink(path)?;
        std::fs::rename(&tmp, path).map_err(io_err(path))
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// Temporaries of renewals killed mid-write (`.<name>.<token>.tmp`).
fn remove_stale_temporaries(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let prefix = format!(".{}.", name.to_string_lossy());
    let Ok(rd) = std::fs::read_dir(if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    }) else {
        return;
    };
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(&prefix) && n.ends_with(".tmp") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

struct Shared {
    path: PathBuf,
    token: String,
    lost: AtomicBool,
    taker: Mutex<Option<String>>,
}

impl Shared {
    fn lost_err(&self) -> StoreError {
        let holder = self
            .taker
            .lock()
            .ok()
            .and_then(|t| t.clone())
            .unwrap_or_else(|| "another holder".into());
        StoreError::LeaseLost {
            path: self.path.clone(),
            holder,
        }
    }

    fn check(&self) -> Result<()> {
        if self.lost.load(Ordering::SeqCst) {
            return Err(self.lost_err());
        }
        match read(&self.path) {
            Some(l) if l.token == self.token => Ok(()),
            other => {
                if let Ok(mut t) = self.taker.lock() {
                    *t = Some(match other {
                        Some(l) => l.holder(),
                        None => "nobody (the lease file is gone or unreadable)".into(),
                    });
                }
                self.lost.store(true, Ordering::SeqCst);
                Err(self.lost_err())
            }
        }
    }
}

/// A cheap handle that checks the lease is still ours (none: always passes).
#[derive(Clone, Default)]
pub struct Fence(Option<Arc<Shared>>);

impl Fence {
    pub fn check(&self) -> Result<()> {
        match &self.0 {
            Some(s) => s.check(),
            None => Ok(()),
        }
    }
}

impl std::fmt::Debug for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(s) => write!(f, "Fence({})", s.path.display()),
            None => f.write_str("Fence(none)"),
        }
    }
}

/// A held lease, renewed until dropped; dropping removes the file if it is still ours.
pub struct Lease {
    shared: Arc<Shared>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The holder we took the lease over from, if it was another's.
    pub took_over: Option<LeaseInfo>,
}

impl Lease {
    /// Take the lease at `path` for a job with `fingerprint`. Call with the
    /// lock beside it held. `ttl` 0 disables the lease (a no-op fence).
    pub fn acquire(path: &Path, fingerprint: &str, ttl: u64) -> Result<Option<Self>> {
        Self::acquire_with(path, fingerprint, ttl, true)
    }

    /// [`Lease::acquire`]; `flock_held` false (a file system without flock)
    /// makes a live lease of this host binding too, unless its process is gone.
    pub fn acquire_with(
        path: &Path,
        fingerprint: &str,
        ttl: u64,
        flock_held: bool,
    ) -> Result<Option<Self>> {
        if ttl == 0 {
            return Ok(None);
        }
        fsio::refuse_symlink(path)?;
        remove_stale_temporaries(path);
        let me = hostname();
        let previous = read(path);
        if let Some(p) = &previous {
            let age = now().saturating_sub(p.heartbeat);
            let local_gone = p.host == me && (flock_held || !super::lock::pid_alive(p.pid));
            if !local_gone && age < p.ttl && p.pid != std::process::id() {
                return Err(StoreError::LeaseHeld {
                    path: path.to_path_buf(),
                    holder: p.holder(),
                    ttl: p.ttl,
                });
            }
            if p.host != me {
                tracing::warn!(
                    "{}: taking over the stale lease of {} (stale after {} s)",
                    path.display(),
                    p.holder(),
                    p.ttl
                );
            }
        }
        let token = blake3::hash(
            format!(
                "{me}\u{1f}{}\u{1f}{:?}\u{1f}{}",
                std::process::id(),
                std::time::SystemTime::now(),
                path.display()
            )
            .as_bytes(),
        )
        .to_hex()[..32]
            .to_string();
        let info = LeaseInfo {
            host: me,
            pid: std::process::id(),
            fingerprint: fingerprint.to_string(),
            token: token.clone(),
            heartbeat: now(),
            ttl,
        };
        write(path, &info)?;
        let shared = Arc::new(Shared {
            path: path.to_path_buf(),
            token,
            lost: AtomicBool::new(false),
            taker: Mutex::new(None),
        });
        // Two nodes racing for one stale lease: the last rename wins, the other sees it here.
        shared.check()?;
        let (tx, rx) = mpsc::channel::<()>();
        let s = shared.clone();
        let renew = Duration::from_millis((ttl * 1000 / 4).max(100));
        let thread = std::thread::Builder::new()
            .name("cotforge-lease".into())
            .spawn(move || {
                let mut info = info;
                while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(renew) {
                    if s.check().is_err() {
                        tracing::error!(
                            "{}: lease lost to {}; stopping at the next commit",
                            s.path.display(),
                            s.taker
                                .lock()
                                .ok()
                                .and_then(|t| t.clone())
                                .unwrap_or_default()
                        );
                        return;
                    }
                    info.heartbeat = now();
                    if let Err(e) = write(&s.path, &info) {
                        tracing::warn!("{}: cannot renew the lease: {e}", s.path.display());
                    }
                }
            })
            .map_err(|e| io_err(path)(e))?;
        Ok(Some(Self {
            shared,
            stop: Some(tx),
            thread: Some(thread),
            took_over: previous.filter(|p| p.host != hostname()),
        }))
    }

    pub fn fence(&self) -> Fence {
        Fence(Some(self.shared.clone()))
    }

    pub fn check(&self) -> Result<()> {
        self.shared.check()
    }
}

/// The fence of an optional lease.
pub fn fence_of(lease: &Option<Lease>) -> Fence {
    lease.as_ref().map(Lease::fence).unwrap_or_default()
}

impl Drop for Lease {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if self.shared.check().is_ok() {
            let _ = std::fs::remove_file(&self.shared.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn foreign(heartbeat: u64, ttl: u64) -> LeaseInfo {
        LeaseInfo {
            host: "some-other-node".into(),
            pid: 4242,
            fingerprint: "f00dfeedf00dfeed".into(),
            token: "theirs".into(),
            heartbeat,
            ttl,
        }
    }

    #[test]
    fn live_foreign_lease_is_refused_stale_one_taken_over() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("lease-00000-of-00001.json");
        write(&p, &foreign(now(), 60)).expect("write");
        let e = Lease::acquire(&p, "fp", 60).err().expect("must refuse");
        let msg = e.to_string();
        assert!(
            msg.contains("live lease of pid 4242 on host some-other-node"),
            "{msg}"
        );
        write(&p, &foreign(now() - 120, 60)).expect("write");
        let l = Lease::acquire(&p, "fp", 60)
            .expect("take over")
            .expect("enabled");
        assert_eq!(l.took_over.as_ref().map(|t| t.pid), Some(4242));
        l.check().expect("ours");
        // Another node overwrites it: the fence trips.
        write(&p, &foreign(now(), 60)).expect("write");
        let e = l.check().expect_err("fenced");
        assert!(e.to_string().contains("taken over by pid 4242"), "{e}");
        drop(l);
        assert!(p.exists(), "a lease that is no longer ours is left alone");
    }

    #[test]
    fn own_host_lease_is_taken_over_and_removed_on_drop() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("x.lease");
        let mut mine = foreign(now(), 60);
        mine.host = hostname();
        write(&p, &mine).expect("write");
        let l = Lease::acquire(&p, "fp", 60).expect("take").expect("on");
        assert!(l.took_over.is_none());
        drop(l);
        assert!(!p.exists());
        assert!(Lease::acquire(&p, "fp", 0).expect("off").is_none());
    }
}
