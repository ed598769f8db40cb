//! Filesystem primitives every writer of cotforge uses: one atomic commit
//! (temporary file, fsync, rename, directory fsync), temporary files that are
//! removed on every error path, opens that never follow a symbolic link, and
//! an atomic directory switch.
//!
//! Why no links: the journal, lock and temporary files are opened for
//! writing (some truncated); following a link planted in a shared output
//! directory would overwrite whatever it points at. Entries of the output
//! directory that are links are refused with [`StoreError::Symlink`].

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use super::{crash, io_err, Result, StoreError};

/// `.<name>.<suffix>` beside `path`: the hidden names of work in progress.
fn hidden(path: &Path, suffix: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{suffix}"))
}

/// The hidden temporary name used while `path` is being written.
pub fn tmp_path(path: &Path) -> PathBuf {
    hidden(path, "tmp")
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// An error for `path`, with ELOOP (the final component is a link) named as such.
fn open_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |e| {
        if e.raw_os_error() == Some(libc::ELOOP) {
            StoreError::Symlink {
                path: path.to_path_buf(),
            }
        } else {
            io_err(path)(e)
        }
    }
}

/// Open with `opts`, refusing a symbolic link as the final component.
pub fn open_nofollow(path: &Path, opts: &mut OpenOptions) -> Result<File> {
    opts.custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(open_err(path))
}

/// Open an existing file for reading without following a link.
pub fn open_read(path: &Path) -> Result<File> {
    open_nofollow(path, OpenOptions::new().read(true))
}

/// Read a whole file without following a link.
pub fn read_all(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut f = open_read(path)?;
    let mut b = Vec::new();
    f.read_to_end(&mut b).map_err(io_err(path))?;
    Ok(b)
}

/// `Err(Symlink)` when `path` exists and is a symbolic link.
pub fn refuse_symlink(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(StoreError::Symlink {
            path: path.to_path_buf(),
        }),
        _ => Ok(()),
    }
}

/// Create `root/rel` (and its parents) as real directories: every component
/// below `root` that exists must be a directory, not a link. `root` itself
/// may be a link (users point output directories at big disks).
pub fn ensure_dir(root: &Path, rel: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(root).map_err(io_err(root))?;
    let mut cur = root.to_path_buf();
    for c in rel.components() {
        let Component::Normal(name) = c else {
            continue;
        };
        cur.push(name);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(StoreError::Symlink { path: cur });
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(StoreError::Corrupt {
                    path: cur,
                    reason: "exists and is not a directory; move it away and rerun".into(),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match std::fs::create_dir(&cur) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    refuse_symlink(&cur)?;
                }
                Err(e) => return Err(io_err(&cur)(e)),
            },
            Err(e) => return Err(io_err(&cur)(e)),
        }
    }
    Ok(cur)
}

/// fsync a directory so renames and creations in it are durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    open_nofollow(dir, OpenOptions::new().read(true))
        .and_then(|d| d.sync_all().map_err(io_err(dir)))
}

/// Remove a file if it is there (a link is removed, never followed).
pub fn remove_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// A temporary file beside its final name. Dropped without [`TempPath::commit`]
/// (any error path), the temporary is removed: a failed multi-GB write never
/// keeps a full disk full.
#[derive(Debug)]
pub struct TempPath {
    tmp: PathBuf,
    target: PathBuf,
    armed: bool,
}

impl TempPath {
    /// Create the temporary of `target` (exclusively, never through a link); a
    /// stale temporary of a killed run is removed first. Callers hold the
    /// lock that makes them the only writer of `target`.
    pub fn create(target: &Path) -> Result<(Self, File)> {
        let tmp = tmp_path(target);
        remove_if_exists(&tmp)?;
        let file = open_nofollow(&tmp, OpenOptions::new().write(true).create_new(true))?;
        Ok((
            Self {
                tmp,
                target: target.to_path_buf(),
                armed: true,
            },
            file,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.tmp
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    /// fsync `file` (the temporary's contents), rename it over the target and
    /// fsync the directory, so a crash leaves the old or the new file.
    pub fn commit(mut self, file: File) -> Result<()> {
        crash::point("commit.before_fsync");
        file.sync_all().map_err(io_err(&self.tmp))?;
        drop(file);
        crash::point("commit.before_rename");
        refuse_symlink(&self.target)?;
        std::fs::rename(&self.tmp, &self.target).map_err(io_err(&self.target))?;
        self.armed = false;
        crash::point("commit.before_dirsync");
        fsync_dir(parent(&self.target))?;
        crash::point("commit.done");
        Ok(())
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Atomically replace `path` with `bytes` (manifests, markers, cards, reports).
pub fn commit_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    let (tmp, mut f) = TempPath::create(path)?;
    f.write_all(bytes).map_err(io_err(tmp.path()))?;
    tmp.commit(f)
}

/// Exchange two directory entries atomically (Linux `renameat2(RENAME_EXCHANGE)`).
/// `Ok(false)` when the file system cannot (then the caller falls back).
fn exchange(a: &Path, b: &Path) -> Result<bool> {
    #[cfg(target_os = "linux")]
    {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let ca = CString::new(a.as_os_str().as_bytes()).map_err(|_| StoreError::Write {
            path: a.to_path_buf(),
            reason: "path contains a NUL byte".into(),
        })?;
        let cb = CString::new(b.as_os_str().as_bytes()).map_err(|_| StoreError::Write {
            path: b.to_path_buf(),
            reason: "path contains a NUL byte".into(),
        })?;
        // SAFETY: two valid NUL-terminated paths relative to the cwd; the
        // syscall does not retain them.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                libc::AT_FDCWD,
                ca.as_ptr(),
                libc::AT_FDCWD,
                cb.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        if rc == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::ENOTSUP) => Ok(false),
            _ => Err(io_err(b)(e)),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (a, b);
        Ok(false)
    }
}

/// Make the complete, fsynced directory `new` appear as `live`, replacing
/// what `live` held. With `renameat2` readers see the old or the new set,
/// never a mix; the old set ends up at `new` and is removed. Where the
/// file system cannot exchange (NFS), the old set is first moved to
/// `<live>.old` (a crash then leaves no `live` until the rerun).
pub fn switch_dir(new: &Path, live: &Path) -> Result<()> {
    refuse_symlink(live)?;
    let dir = parent(live);
    if live.exists() {
        crash::point("switch.before");
        if exchange(new, live)? {
            crash::point("switch.exchanged");
            fsync_dir(dir)?;
            std::fs::remove_dir_all(new).map_err(io_err(new))?;
        } else {
            let old = old_path(live);
            if old.exists() {
                std::fs::remove_dir_all(&old).map_err(io_err(&old))?;
            }
            std::fs::rename(live, &old).map_err(io_err(live))?;
            std::fs::rename(new, live).map_err(io_err(live))?;
            crash::point("switch.exchanged");
            fsync_dir(dir)?;
            std::fs::remove_dir_all(&old).map_err(io_err(&old))?;
        }
    } else {
        std::fs::rename(new, live).map_err(io_err(live))?;
        crash::point("switch.exchanged");
    }
    fsync_dir(dir)?;
    crash::point("switch.done");
    Ok(())
}

/// Where [`switch_dir`]'s fallback parks the old set.
pub fn old_path(live: &Path) -> PathBuf {
    hidden(live, "old")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_is_removed_unless_committed() {
        let d = tempfile::tempdir().expect("tempdir");
        let target = d.path().join("a.bin");
        {
            let (tmp, mut f) = TempPath::create(&target).expect("create");
            f.write_all(b"partial").expect("write");
            assert!(tmp.path().exists());
        }
        assert!(!tmp_path(&target).exists(), "temp left behind");
        assert!(!target.exists());
        commit_bytes(&target, b"done").expect("commit");
        assert_eq!(std::fs::read(&target).expect("read"), b"done");
        assert!(!tmp_path(&target).exists());
    }

    #[test]
    fn links_are_refused_and_never_followed() {
        let d = tempfile::tempdir().expect("tempdir");
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"precious").expect("write");
        let link = d.path().join("j.log");
        std::os::unix::fs::symlink(&victim, &link).expect("symlink");
        let e = open_nofollow(&link, OpenOptions::new().write(true).truncate(true))
            .expect_err("link opened");
        assert!(matches!(e, StoreError::Symlink { .. }), "{e}");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        // A temp name planted as a link is removed, not written through.
        let target = d.path().join("m.json");
        std::os::unix::fs::symlink(&victim, tmp_path(&target)).expect("symlink");
        commit_bytes(&target, b"{}").expect("commit");
        assert_eq!(std::fs::read(&victim).expect("read"), b"precious");
        // A directory entry that is a link is refused.
        let real = d.path().join("elsewhere");
        std::fs::create_dir(&real).expect("mkdir");
        std::os::unix::fs::symlink(&real, d.path().join("shards")).expect("symlink");
        let e = ensure_dir(d.path(), Path::new("shards/x")).expect_err("link dir");
        assert!(matches!(e, StoreError::Symlink { .. }), "{e}");
    }

    #[test]
    fn switch_replaces_a_directory_whole() {
        let d = tempfile::tempdir().expect("tempdir");
        let live = d.path().join("data");
        let new = d.path().join(".data.new");
        std::fs::create_dir(&live).expect("mkdir");
        std::fs::write(live.join("old-1"), b"o").expect("write");
        std::fs::create_dir(&new).expect("mkdir");
        std::fs::write(new.join("new-1"), b"n").expect("write");
        switch_dir(&new, &live).expect("switch");
        let names: Vec<String> = std::fs::read_dir(&live)
            .expect("read")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["new-1"]);
        assert!(!new.exists() && !old_path(&live).exists());
    }
}
