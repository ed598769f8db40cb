//! Append-only journal of finished work, one per shard.
//!
//! Frame: `len: u32 LE | check: u64 LE (first 8 bytes of blake3(payload)) | payload`.
//! The first frame is a JSON [`JournalHeader`] naming the job; the rest are
//! JSON [`JournalEntry`]s. Frames are buffered and written + fsynced together
//! every `flush_every` entries or `flush_interval`, whichever comes first, so
//! a crash loses at most one flush of work and never corrupts earlier frames.
//! On open, a torn or corrupt tail (short frame, bad checksum) is truncated
//! away: everything after it is redone, which is safe because work is
//! deterministic. A flush that fails is rolled back to the last good length,
//! so retrying it never leaves a frame twice (the final shard write drops
//! repeated row numbers as well). An entry over the frame limit is refused
//! with [`StoreError::FrameTooLarge`] before anything is written (the worker
//! turns it into a reject), so no row is ever read back as a torn tail.
//! The file is opened without following links.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::fingerprint::Fingerprint;
use super::fsio;
use super::lease::Fence;
use super::parquet_io::fsync_dir;
use super::{crash, io_err, Result, ShardSpec, StoreError};
use crate::record::{Chain, Reject};

pub const JOURNAL_FORMAT: &str = "cotforge-journal/1";
const HEADER_BYTES: usize = 12;
/// The largest frame written; larger lengths read back are garbage (a torn length field).
pub const MAX_FRAME: u32 = 1 << 30;

/// Identifies the job a journal belongs to; a mismatch refuses to resume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalHeader {
    pub format: String,
    pub kind: String,
    pub shard: ShardSpec,
    /// What determines the output: settings, seed bytes, model.
    pub fingerprint: Fingerprint,
}

impl JournalHeader {
    /// Whether a journal with header `self` may be resumed by a run with `other`.
    fn same_job(&self, other: &JournalHeader) -> bool {
        self.format == other.format
            && self.kind == other.kind
            && self.shard == other.shard
            && self.fingerprint.digest == other.fingerprint.digest
    }
}

/// The result of one input row: accepted chains and rejects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// Position of the row in the job's input (all files, all shards).
    #[serde(rename = "o")]
    pub ordinal: u64,
    #[serde(rename = "s")]
    pub seed_id: String,
    #[serde(rename = "a", default)]
    pub accepted: Vec<Chain>,
    #[serde(rename = "r", default)]
    pub rejected: Vec<Reject>,
}

fn check(payload: &[u8]) -> u64 {
    let h = blake3::hash(payload);
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_le_bytes(b)
}

fn frame(payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&check(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Split `data` into valid frames; returns them and the length of the valid prefix.
pub fn parse_frames(data: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut frames = Vec::new();
    let mut pos = 0usize;
    while data.len() - pos >= HEADER_BYTES {
        let mut l = [0u8; 4];
        l.copy_from_slice(&data[pos..pos + 4]);
        let len = u32::from_le_bytes(l);
        let mut c = [0u8; 8];
        c.copy_from_slice(&data[pos + 4..pos + 12]);
        let sum = u64::from_le_bytes(c);
        if len > MAX_FRAME {
            break;
        }
        let start = pos + HEADER_BYTES;
        let end = start + len as usize;
        if end > data.len() || check(&data[start..end]) != sum {
            break;
        }
        frames.push(&data[start..end]);
        pos = end;
    }
    (frames, pos)
}

fn jerr(path: &Path, reason: impl Into<String>) -> StoreError {
    StoreError::Journal {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Read a journal without changing it (status, final write).
pub fn read_entries(path: &Path) -> Result<(Option<JournalHeader>, Vec<JournalEntry>)> {
    let mut data = Vec::new();
    match fsio::open_read(path) {
        Ok(mut f) => {
            f.read_to_end(&mut data).map_err(io_err(path))?;
        }
        Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok((None, Vec::new()))
        }
        Err(e) => return Err(e),
    }
    let (frames, _) = parse_frames(&data);
    let mut it = frames.into_iter();
    let header = match it.next() {
        Some(h) => Some(
            serde_json::from_slice::<JournalHeader>(h)
                .map_err(|e| jerr(path, format!("bad header: {e}")))?,
        ),
        None => None,
    };
    let entries = it
        .map(|f| serde_json::from_slice(f).map_err(|e| jerr(path, format!("bad entry: {e}"))))
        .collect::<Result<Vec<JournalEntry>>>()?;
    Ok((header, entries))
}

/// Where one entry's payload sits in the journal file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRef {
    pub offset: u64,
    pub len: u32,
}

/// The sort keys of one entry, parsed without its text fields.
#[derive(Debug, Clone, Deserialize)]
pub struct EntryKeys {
    #[serde(rename = "o")]
    pub ordinal: u64,
    #[serde(rename = "s")]
    pub seed_id: String,
    #[serde(rename = "a", default)]
    pub accepted: Vec<ChainKey>,
    #[serde(rename = "r", default)]
    pub rejected: Vec<serde::de::IgnoredAny>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChainKey {
    pub id: String,
    pub seed_id: String,
}

/// Stream through a journal once: every valid entry frame with its keys,
/// holding one payload in memory at a time. The header frame is skipped.
pub fn scan(path: &Path) -> Result<Vec<(FrameRef, EntryKeys)>> {
    let f = match fsio::open_read(path) {
        Ok(f) => f,
        Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Vec::new())
        }
        Err(e) => return Err(e),
    };
    let mut r = std::io::BufReader::with_capacity(1 << 20, f);
    let mut out = Vec::new();
    let mut offset = 0u64;
    let mut payload = Vec::new();
    let mut first = true;
    loop {
        let mut head = [0u8; HEADER_BYTES];
        match r.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(io_err(path)(e)),
        }
        let mut l = [0u8; 4];
        l.copy_from_slice(&head[..4]);
        let len = u32::from_le_bytes(l);
        let mut c = [0u8; 8];
        c.copy_from_slice(&head[4..]);
        if len > MAX_FRAME {
            break;
        }
        payload.resize(len as usize, 0);
        match r.read_exact(&mut payload) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(io_err(path)(e)),
        }
        if check(&payload) != u64::from_le_bytes(c) {
            break;
        }
        let at = offset + HEADER_BYTES as u64;
        offset = at + len as u64;
        if first {
            first = false;
            continue;
        }
        let keys: EntryKeys = serde_json::from_slice(&payload)
            .map_err(|e| jerr(path, format!("bad entry at byte {at}: {e}")))?;
        out.push((FrameRef { offset: at, len }, keys));
    }
    Ok(out)
}

/// Read one entry by its frame (random access for the sorted final write).
pub fn read_entry(file: &File, path: &Path, frame: FrameRef) -> Result<JournalEntry> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; frame.len as usize];
    file.read_exact_at(&mut buf, frame.offset)
        .map_err(io_err(path))?;
    serde_json::from_slice(&buf)
        .map_err(|e| jerr(path, format!("bad entry at byte {}: {e}", frame.offset)))
}

/// An open journal, positioned at its end.
pub struct Journal {
    file: File,
    path: PathBuf,
    buf: Vec<u8>,
    buffered: usize,
    last_flush: Instant,
    flush_every: usize,
    flush_interval: Duration,
    /// Length of the file up to its last durable frame.
    len: u64,
    max_frame: usize,
    fence: Fence,
}

impl Journal {
    /// Open (or create) the journal, truncate a torn tail, check the header,
    /// and return the entries already recorded.
    pub fn open(
        path: &Path,
        header: &JournalHeader,
        flush_every: usize,
        flush_interval: Duration,
    ) -> Result<(Self, Vec<JournalEntry>)> {
        let mut file = fsio::open_nofollow(
            path,
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false),
        )?;
        let mut data = Vec::new();
        file.read_to_end(&mut data).map_err(io_err(path))?;
        let (frames, valid) = parse_frames(&data);
        let mut entries = Vec::new();
        let mut fresh = frames.is_empty();
        if let Some(h) = frames.first() {
            let found: JournalHeader =
                serde_json::from_slice(h).map_err(|e| jerr(path, format!("bad header: {e}")))?;
            if !found.same_job(header) {
                let mut why = header.fingerprint.changes_since(&found.fingerprint);
                if found.kind != header.kind || found.shard != header.shard {
                    why.push(format!(
                        "it is {} {} (this run: {} {})",
                        found.kind, found.shard, header.kind, header.shard
                    ));
                }
                if found.format != header.format {
                    why.push(format!(
                        "journal format {} (this build: {})",
                        found.format, header.format
                    ));
                }
                return Err(jerr(
                    path,
                    format!(
                        "belongs to another job: {}; to keep both, give this job a new `out` \
                         directory; to redo the shard with the new inputs, remove its files",
                        why.join("; ")
                    ),
                ));
            }
            for f in &frames[1..] {
                entries.push(
                    serde_json::from_slice(f).map_err(|e| jerr(path, format!("bad entry: {e}")))?,
                );
            }
        }
        if valid < data.len() {
            tracing::warn!(
                "{}: truncating {} bytes of torn journal tail",
                path.display(),
                data.len() - valid
            );
        }
        if fresh || valid < data.len() {
            file.set_len(valid as u64).map_err(io_err(path))?;
            file.sync_all().map_err(io_err(path))?;
        }
        let mut j = Self {
            file,
            path: path.to_path_buf(),
            buf: Vec::new(),
            buffered: 0,
            last_flush: Instant::now(),
            flush_every: flush_every.max(1),
            flush_interval,
            len: valid as u64,
            max_frame: MAX_FRAME as usize,
            fence: Fence::default(),
        };
        use std::io::Seek;
        j.file
            .seek(std::io::SeekFrom::Start(valid as u64))
            .map_err(io_err(path))?;
        if fresh {
            let h = serde_json::to_vec(header).map_err(|e| jerr(path, e.to_string()))?;
            frame(&h, &mut j.buf);
            crash::point("journal.header");
            j.write_out()?;
            if let Some(dir) = path.parent() {
                fsync_dir(dir)?;
            }
            fresh = false;
        }
        debug_assert!(!fresh);
        Ok((j, entries))
    }

    /// Refuse entries over `max` bytes (at most [`MAX_FRAME`]); tests use small limits.
    pub fn set_max_frame(&mut self, max: usize) {
        self.max_frame = max.min(MAX_FRAME as usize);
    }

    /// Check `fence` (the lease) before every write.
    pub fn set_fence(&mut self, fence: Fence) {
        self.fence = fence;
    }

    /// Queue one entry; written and fsynced at the next flush boundary.
    pub fn append(&mut self, entry: &JournalEntry) -> Result<()> {
        let p = serde_json::to_vec(entry).map_err(|e| jerr(&self.path, e.to_string()))?;
        if p.len() > self.max_frame {
            return Err(StoreError::FrameTooLarge {
                path: self.path.clone(),
                seed_id: entry.seed_id.clone(),
                bytes: p.len() as u64,
                max: self.max_frame as u64,
            });
        }
        frame(&p, &mut self.buf);
        self.buffered += 1;
        if self.buffered >= self.flush_every || self.last_flush.elapsed() >= self.flush_interval {
            self.flush()?;
        }
        Ok(())
    }

    /// Write and fsync everything queued.
    pub fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.write_out()?;
        self.buffered = 0;
        self.last_flush = Instant::now();
        Ok(())
    }

    fn write_out(&mut self) -> Result<()> {
        self.fence.check()?;
        let r = self.write_frames();
        match r {
            Ok(()) => {
                self.len += self.buf.len() as u64;
                self.buf.clear();
                Ok(())
            }
            Err(e) => {
                // Cut back to the last durable frame: a retry then writes each
                // frame once, even when the failed fsync did reach the disk.
                use std::io::Seek;
                let _ = self.file.set_len(self.len);
                let _ = self.file.seek(std::io::SeekFrom::Start(self.len));
                Err(e)
            }
        }
    }

    fn write_frames(&mut self) -> Result<()> {
        // Two writes so a crash point can sit inside a frame (a torn record).
        let half = self.buf.len() / 2;
        self.file
            .write_all(&self.buf[..half])
            .map_err(io_err(&self.path))?;
        crash::point("journal.mid_frame");
        self.file
            .write_all(&self.buf[half..])
            .map_err(io_err(&self.path))?;
        crash::point("journal.before_fsync");
        self.file.sync_data().map_err(io_err(&self.path))?;
        crash::point("journal.after_fsync");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> JournalHeader {
        JournalHeader {
            format: JOURNAL_FORMAT.into(),
            kind: "k".into(),
            shard: ShardSpec::single(),
            fingerprint: "f".into(),
        }
    }

    #[test]
    fn oversized_entry_is_refused_before_writing() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("j.log");
        let (mut j, _) = Journal::open(&p, &header(), 1, Duration::from_secs(60)).expect("open");
        j.set_max_frame(64);
        let mut big = entry(1);
        big.seed_id = "x".repeat(100);
        let e = j.append(&big).expect_err("too large");
        assert!(matches!(e, StoreError::FrameTooLarge { .. }), "{e}");
        j.append(&entry(2)).expect("small one");
        drop(j);
        let (_, e) = read_entries(&p).expect("read");
        assert_eq!(e, vec![entry(2)]);
    }

    fn entry(o: u64) -> JournalEntry {
        JournalEntry {
            ordinal: o,
            seed_id: format!("s{o}"),
            accepted: Vec::new(),
            rejected: Vec::new(),
        }
    }

    #[test]
    fn torn_tail_is_truncated_and_appends_continue() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("j.log");
        {
            let (mut j, e) =
                Journal::open(&p, &header(), 2, Duration::from_secs(60)).expect("open");
            assert!(e.is_empty());
            for o in 0..5 {
                j.append(&entry(o)).expect("append");
            }
            j.flush().expect("flush");
        }
        // Tear the last record: drop its last 3 bytes.
        let len = std::fs::metadata(&p).expect("meta").len();
        let f = OpenOptions::new().write(true).open(&p).expect("open");
        f.set_len(len - 3).expect("truncate");
        drop(f);
        let (mut j, e) = Journal::open(&p, &header(), 1, Duration::from_secs(60)).expect("reopen");
        assert_eq!(e, (0..4).map(entry).collect::<Vec<_>>());
        j.append(&entry(9)).expect("append");
        drop(j);
        let (_, e) = read_entries(&p).expect("read");
        assert_eq!(e.last(), Some(&entry(9)));
        assert_eq!(e.len(), 5);
    }

    #[test]
    fn corrupt_byte_drops_the_rest_and_header_mismatch_refuses() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("j.log");
        {
            let (mut j, _) =
                Journal::open(&p, &header(), 1, Duration::from_secs(60)).expect("open");
            for o in 0..3 {
                j.append(&entry(o)).expect("append");
            }
        }
        let mut data = std::fs::read(&p).expect("read");
        let n = data.len();
        data[n - 2] ^= 0xff;
        std::fs::write(&p, &data).expect("write");
        let (_, e) = Journal::open(&p, &header(), 1, Duration::from_secs(60)).expect("reopen");
        assert_eq!(e.len(), 2);
        let mut other = header();
        other.fingerprint = "g".into();
        assert!(!other.same_job(&header()));
        let err = Journal::open(&p, &other, 1, Duration::from_secs(60))
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|m| m.contains("another job")));
    }

    #[test]
    fn garbage_is_no_frame() {
        let (f, n) = parse_frames(&[0xff; 40]);
        assert!(f.is_empty());
        assert_eq!(n, 0);
    }
}
