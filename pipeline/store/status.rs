//! `cotforge status` and `cotforge verify`: what a job directory holds, and
//! whether every committed file is still the file that was committed. Both
//! only read: they work on a read-only mount and change nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Serialize;

use super::journal::scan;
use super::lock::{holder, LockInfo};
use super::manifest::{parse_shard_name, read_json, DoneMarker, Manifest, ShardPaths};
use super::{blake3_output, io_err, Result, ShardSpec};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ShardStatus {
    /// Not started, or stopped; `seeds` rows are journaled so far.
    Pending {
        seeds: u64,
    },
    /// A live worker holds the lock.
    Running {
        holder: String,
        seeds: u64,
    },
    Done,
    /// Marked done but a committed file is missing or has the wrong size.
    Corrupt {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShardReport {
    pub kind: String,
    pub shard: ShardSpec,
    #[serde(flatten)]
    pub status: ShardStatus,
    pub seeds: u64,
    pub accepted: u64,
    pub rejected: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub shards: u64,
    pub done: u64,
    pub running: u64,
    pub pending: u64,
    pub corrupt: u64,
    pub seeds: u64,
    pub accepted: u64,
    pub rejected: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StatusReport {
    pub shards: Vec<ShardReport>,
    pub totals: Totals,
}

/// Every (kind, shard) that has any file under `OUT/shards/`, plus the
/// not-yet-started siblings implied by their shard counts.
fn known_shards(out: &Path) -> Result<BTreeMap<String, BTreeSet<ShardSpec>>> {
    let mut map: BTreeMap<String, BTreeSet<ShardSpec>> = BTreeMap::new();
    let root = out.join("shards");
    let kinds = match std::fs::read_dir(&root) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(map),
        Err(e) => return Err(io_err(&root)(e)),
    };
    for k in kinds {
        let k = k.map_err(io_err(&root))?;
        if !k.path().is_dir() {
            continue;
        }
        let kind = k.file_name().to_string_lossy().into_owned();
        let set = map.entry(kind).or_default();
        for f in std::fs::read_dir(k.path()).map_err(io_err(&k.path()))? {
            let f = f.map_err(io_err(&k.path()))?;
            if let Some((_, s)) = parse_shard_name(&f.file_name().to_string_lossy()) {
                for index in 0..s.count {
                    set.insert(ShardSpec {
                        index,
                        count: s.count,
                    });
                }
            }
        }
    }
    Ok(map)
}

fn shard_report(out: &Path, kind: &str, shard: ShardSpec) -> Result<ShardReport> {
    let p = ShardPaths::new(out, kind, shard);
    let mut r = ShardReport {
        kind: kind.into(),
        shard,
        status: ShardStatus::Done,
        seeds: 0,
        accepted: 0,
        rejected: 0,
    };
    if p.done().exists() {
        let checked = (|| -> Result<Option<String>> {
            let m: DoneMarker = read_json(&p.done())?;
            r.seeds = m.seeds;
            r.accepted = m.accepted;
            r.rejected = m.rejected;
            let manifest: Manifest = read_json(&p.manifest())?;
            for f in &manifest.files {
                match std::fs::metadata(p.dir.join(&f.name)) {
                    Ok(md) if md.len() == f.bytes => {}
                    Ok(md) => {
                        return Ok(Some(format!(
                            "{} has {} bytes, manifest says {}",
                            f.name,
                            md.len(),
                            f.bytes
                        )))
                    }
                    Err(_) => return Ok(Some(format!("{} is missing", f.name))),
                }
            }
            Ok(None)
        })();
        r.status = match checked {
            Ok(None) => ShardStatus::Done,
            Ok(Some(reason)) => ShardStatus::Corrupt { reason },
            Err(e) => ShardStatus::Corrupt {
                reason: e.to_string(),
            },
        };
        return Ok(r);
    }
    let entries = scan(&p.journal()).unwrap_or_default();
    r.seeds = entries.len() as u64;
    r.accepted = entries.iter().map(|e| e.1.accepted.len() as u64).sum();
    r.rejected = entries.iter().map(|e| e.1.rejected.len() as u64).sum();
    r.status = match holder(&p.lock())? {
        Some(LockInfo { pid, hostname }) => ShardStatus::Running {
            holder: format!("pid {pid} on host {hostname}"),
            seeds: r.seeds,
        },
        // Where flock does not reach across nodes, the lease still shows the holder.
        None => match super::lease::live_foreign(&p.lease()) {
            Some(l) => ShardStatus::Running {
                holder: format!("pid {} on host {} (lease)", l.pid, l.host),
                seeds: r.seeds,
            },
            None => ShardStatus::Pending { seeds: r.seeds },
        },
    };
    Ok(r)
}

/// State of every shard of the job at `out`.
pub fn status(out: &Path) -> Result<StatusReport> {
    let mut rep = StatusReport::default();
    for (kind, shards) in known_shards(out)? {
        for s in shards {
            let r = shard_report(out, &kind, s)?;
            let t = &mut rep.totals;
            t.shards += 1;
            match r.status {
                ShardStatus::Done => t.done += 1,
                ShardStatus::Running { .. } => t.running += 1,
                ShardStatus::Pending { .. } => t.pending += 1,
                ShardStatus::Corrupt { .. } => t.corrupt += 1,
            }
            t.seeds += r.seeds;
            t.accepted += r.accepted;
            t.rejected += r.rejected;
            rep.shards.push(r);
        }
    }
    Ok(rep)
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub files_checked: u64,
    pub bytes_checked: u64,
    /// One line per mismatch; empty means everything verified.
    pub problems: Vec<String>,
}

/// Re-hash every file listed in every manifest, and check each completion
/// marker against its manifest. Shards in progress are checked as far as
/// their manifest goes.
pub fn verify(out: &Path) -> Result<VerifyReport> {
    let mut rep = VerifyReport::default();
    for (kind, shards) in known_shards(out)? {
        for s in shards {
            let p = ShardPaths::new(out, &kind, s);
            let mpath = p.manifest();
            if !mpath.exists() {
                if p.done().exists() {
                    rep.problems.push(format!(
                        "{}: marked done but has no manifest",
                        mpath.display()
                    ));
                }
                continue;
            }
            let manifest: Manifest = match read_json(&mpath) {
                Ok(m) => m,
                Err(e) => {
                    rep.problems.push(e.to_string());
                    continue;
                }
            };
            for f in &manifest.files {
                let path = p.dir.join(&f.name);
                match blake3_output(&path) {
                    Ok((h, n)) => {
                        rep.files_checked += 1;
                        rep.bytes_checked += n;
                        if n != f.bytes {
                            rep.problems.push(format!(
                                "{}: {n} bytes, manifest says {}",
                                path.display(),
                                f.bytes
                            ));
                        } else if h != f.blake3 {
                            rep.problems.push(format!(
                                "{}: blake3 {h}, manifest says {}",
                                path.display(),
                                f.blake3
                            ));
                        }
                    }
                    Err(e) => rep.problems.push(e.to_string()),
                }
            }
            if p.done().exists() {
                match read_json::<DoneMarker>(&p.done()) {
                    Ok(m) => {
                        let actual = super::fsio::read_all(&mpath)
                            .map(|b| blake3::hash(&b).to_hex().to_string())
                            .unwrap_or_default();
                        if actual != m.manifest_blake3 {
                            rep.problems.push(format!(
                                "{}: manifest changed after the shard was marked done",
                                mpath.display()
                            ));
                        }
                        for need in [p.chains(), p.rejects()] {
                            let n = need
                                .file_name()
                                .map(|x| x.to_string_lossy().into_owned())
                                .unwrap_or_default();
                            if manifest.get(&n).is_none() {
                                rep.problems.push(format!(
                                    "{}: done shard does not list {n}",
                                    mpath.display()
                                ));
                            }
                        }
                    }
                    Err(e) => rep.problems.push(e.to_string()),
                }
            }
        }
    }
    Ok(rep)
}
