//! Fault injection for the kill tests: the process kills itself with SIGKILL
//! at a named point, so tests reach torn journal records and half-finished
//! commits deterministically instead of hoping a timer lands there.
//!
//! `COTFORGE_CRASH_AT=<point>:<n>` kills the process at the n-th hit of
//! `<point>` (1-based). `COTFORGE_SLEEP_AT=<point>:<ms>` sleeps at every hit
//! (used to keep a worker busy while a second one tries its lock).
//! `COTFORGE_CRASH_TRACE=<file>` appends the name of every point reached to
//! `<file>`, one per line, so a test can list every write point of a run and
//! then kill a fresh run at each. Unset, a hit costs a few relaxed loads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Every point the store checks, in the order a shard reaches them.
pub const POINTS: &[&str] = &[
    "lock.acquired",
    "journal.header",
    "worker.processed",
    "journal.mid_frame",
    "journal.before_fsync",
    "journal.after_fsync",
    "commit.batch_written",
    "commit.before_fsync",
    "commit.before_rename",
    "commit.before_dirsync",
    "commit.done",
    "manifest.committed",
    "marker.before",
    "marker.committed",
    // finalize and export
    "finalize.locked",
    "final.chains",
    "final.rejects",
    "export.file_written",
    "export.before_switch",
    "switch.before",
    "switch.exchanged",
    "switch.done",
    "export.card",
    "final.report",
    "index.before_save",
    "index.saved",
    "final.marker",
];

struct Spec {
    point: String,
    n: u64,
}

fn parse(var: &str) -> Option<Spec> {
    let v = std::env::var(var).ok()?;
    let (p, n) = v.rsplit_once(':')?;
    Some(Spec {
        point: p.to_string(),
        n: n.trim().parse().ok()?,
    })
}

static CRASH: OnceLock<Option<Spec>> = OnceLock::new();
static SLEEP: OnceLock<Option<Spec>> = OnceLock::new();
static TRACE: OnceLock<Option<std::sync::Mutex<std::fs::File>>> = OnceLock::new();
static HITS: AtomicU64 = AtomicU64::new(0);

fn trace(name: &str) {
    let t = TRACE.get_or_init(|| {
        let p = std::env::var_os("COTFORGE_CRASH_TRACE")?;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
            .map(std::sync::Mutex::new)
    });
    if let Some(f) = t {
        if let Ok(mut f) = f.lock() {
            use std::io::Write;
            let _ = writeln!(f, "{name}");
        }
    }
}

/// Mark that execution reached `name`.
pub fn point(name: &str) {
    trace(name);
    if let Some(s) = CRASH.get_or_init(|| parse("COTFORGE_CRASH_AT")) {
        if s.point == name && HITS.fetch_add(1, Ordering::Relaxed) + 1 == s.n {
            tracing::warn!("COTFORGE_CRASH_AT: killing the process at {name}#{}", s.n);
            // SAFETY: kill(2) on our own pid with a constant signal number.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    }
    if let Some(s) = SLEEP.get_or_init(|| parse("COTFORGE_SLEEP_AT")) {
        if s.point == name {
            std::thread::sleep(std::time::Duration::from_millis(s.n));
        }
    }
}
