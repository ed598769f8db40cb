//! The shard worker: lock, journal, resume, commit, completion marker.
//!
//! Recipes plug in as a [`Processor`]; the worker owns everything that makes a
//! rerun of a killed job safe:
//! 1. take the shard lock (a second worker fails at once naming the holder)
//!    and the lease beside it (a live lease of another node is refused; see
//!    [`super::lease`]); the lease is checked again before every commit;
//! 2. a shard with a completion marker is not redone, if the marker's
//!    fingerprint is this run's (else a clear error says what changed);
//! 3. replay the journal (a torn tail is truncated), skip input rows already
//!    recorded, process the rest, journaling results (fsync per flush);
//! 4. when the input is exhausted, build the two shard files *from the
//!    journal*, sorted, so an interrupted+resumed run and an uninterrupted one
//!    write the same bytes; files already committed and matching the manifest
//!    are kept; then the manifest, then the marker; then the journal goes.
//!    A row number journaled twice is written once.
//!
//! One bad seed never stops the shard: a result too large for a journal
//! frame becomes a reject; a processor error stops it naming the seeds of
//! the batch (recipes turn per-seed failures into rejects themselves).
//!
//! Wiring a recipe (`recipes::run` wires the real ones; this is the minimum):
//! ```no_run
//! use cotforge::record::{Chain, Recipe, Seed};
//! use cotforge::store::shard::resolve_shard;
//! use cotforge::store::{run_shard, Ingest, IngestOptions, Processed, ShardOptions};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let env = std::env::vars().collect();
//! let shard = resolve_shard(None, None, &env)?; // SLURM / Kubernetes defaults
//! let seeds = ["data/seeds/gsm8k.parquet"];
//! let ingest = Ingest::open(&seeds, IngestOptions { shard: Some(shard), ..Default::default() })?;
//! let mut opts = ShardOptions::new("out", Recipe::MarcoCot, shard);
//! opts.fingerprint = "blake3 of inputs + settings".into();
//! let mut recipe = |seed: &Seed| -> Result<Processed, String> {
//!     Ok(Processed { accepted: vec![Chain { seed_id: seed.id.clone(), ..Default::default() }], rejected: vec![] })
//! };
//! let outcome = run_shard(&opts, ingest, &mut recipe)?;
//! assert!(outcome.resumed <= outcome.seeds);
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use super::events::{Event, EventSink};
use super::fingerprint::Fingerprint;
use super::fsio;
use super::ingest::{IngestItem, IngestRow};
use super::journal::{
    read_entry, scan, FrameRef, Journal, JournalEntry, JournalHeader, JOURNAL_FORMAT, MAX_FRAME,
};
use super::lease::{fence_of, Fence, Lease, DEFAULT_TTL_SECONDS};
use super::lock::ShardLock;
use super::manifest::{read_json, write_json, DoneMarker, Manifest, ShardPaths, MARKER_FORMAT};
use super::parquet_io::{tmp_path, write_parquet, CommittedFile, WriteOptions};
use super::schema::{chains_schema, chains_to_batch, rejects_schema, rejects_to_batch};
use super::{blake3_output, crash, io_err, Result, ShardSpec, StoreError};
use crate::record::{Chain, Recipe, Reject, Seed};
use arrow::array::RecordBatch;

/// What a processor made of one seed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Processed {
    pub accepted: Vec<Chain>,
    pub rejected: Vec<Reject>,
}

/// A boxed error of the layer below (engine, search, ...), kept as its source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a processor returned no results for a batch. Every variant stops the
/// shard (work journaled so far is kept; a rerun resumes before the batch):
/// a failure that belongs to one seed's *input* is not an error but a reject.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The run was cancelled (a signal) before the batch.
    #[error("interrupted by a signal")]
    Cancelled,
    /// The engine failed on this seed for a reason that is not the seed's
    /// (a backend error); the seed is named so a rerun can be checked.
    #[error("engine failed on seed {seed_id}: {source}")]
    Seed {
        seed_id: String,
        #[source]
        source: BoxError,
    },
    /// The engine or the recipe failed as a whole.
    #[error("{0}")]
    Fatal(BoxError),
    /// A processor broke its contract: not one result per seed, in order.
    #[error("process_batch returned {got} results for {want} seeds")]
    Short { got: usize, want: usize },
}

impl From<String> for ProcessError {
    fn from(s: String) -> Self {
        ProcessError::Fatal(s.into())
    }
}

/// A recipe as the worker sees it. Must be deterministic: same seed, same result.
pub trait Processor {
    /// Process a batch of seeds at once (recipes put many seeds' sequences
    /// into one decode batch). Returns one result per seed, in order; fewer
    /// is an error ([`ProcessError::Short`]), never an empty result.
    fn process_batch(
        &mut self,
        seeds: &[Seed],
    ) -> std::result::Result<Vec<Processed>, ProcessError>;

    /// The work counter of the engine behind the processor (tokens sampled
    /// + evaluated), reported after each batch ([`Event::BatchDone`]).
    fn tokens(&self) -> u64 {
        0
    }
}

/// A closure over one seed is a processor (tests, small tools); its `Err`
/// is a [`ProcessError::Fatal`].
impl<F> Processor for F
where
    F: FnMut(&Seed) -> std::result::Result<Processed, String>,
{
    fn process_batch(
        &mut self,
        seeds: &[Seed],
    ) -> std::result::Result<Vec<Processed>, ProcessError> {
        seeds.iter().map(|s| self(s).map_err(Into::into)).collect()
    }
}

/// Settings of one shard run.
#[derive(Debug, Clone)]
pub struct ShardOptions {
    pub out_dir: PathBuf,
    /// The recipe whose shard this is; its name is the directory under
    /// `OUT/shards/` and the `kind` of the journal, manifest and marker.
    pub kind: Recipe,
    pub shard: ShardSpec,
    /// Journal fsync after this many results...
    pub flush_every: usize,
    /// ...or after this long, whichever comes first.
    pub flush_interval: Duration,
    /// Seeds handed to [`Processor::process_batch`] at once.
    pub batch_seeds: usize,
    pub write: WriteOptions,
    /// Identity of inputs and settings; a journal or marker of another job is refused.
    pub fingerprint: Fingerprint,
    /// Lease lifetime in seconds (0: no lease, flock only).
    pub lease_ttl: u64,
    /// Largest journal entry; a bigger result becomes a reject.
    pub max_frame: usize,
}

impl ShardOptions {
    pub fn new(out_dir: impl Into<PathBuf>, kind: Recipe, shard: ShardSpec) -> Self {
        Self {
            out_dir: out_dir.into(),
            kind,
            shard,
            flush_every: 64,
            flush_interval: Duration::from_secs(5),
            batch_seeds: 16,
            write: WriteOptions::default(),
            fingerprint: Fingerprint::default(),
            lease_ttl: DEFAULT_TTL_SECONDS,
            max_frame: MAX_FRAME as usize,
        }
    }
    pub fn paths(&self) -> ShardPaths {
        ShardPaths::new(&self.out_dir, self.kind.as_str(), self.shard)
    }
}

/// How the shard ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardState {
    /// The completion marker was already there; nothing was done.
    AlreadyDone,
    /// This run finished the shard.
    Completed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardOutcome {
    pub state: ShardState,
    /// Input rows of the shard.
    pub seeds: u64,
    pub accepted: u64,
    pub rejected: u64,
    /// Rows found already done in the journal at start (resumed work).
    pub resumed: u64,
    pub files: Vec<CommittedFile>,
}

/// Run (or resume, or confirm) one shard. `seeds` is the whole job input in
/// order (e.g. an [`super::Ingest`]); rows of other shards are skipped.
pub fn run_shard<I, P>(opts: &ShardOptions, seeds: I, processor: &mut P) -> Result<ShardOutcome>
where
    I: IntoIterator<Item = Result<IngestItem>>,
    P: Processor + ?Sized,
{
    run_shard_with(opts, seeds, processor, &mut ())
}

/// [`run_shard`], reporting what it journals and commits to `sink`.
pub fn run_shard_with<I, P>(
    opts: &ShardOptions,
    seeds: I,
    processor: &mut P,
    sink: &mut dyn EventSink,
) -> Result<ShardOutcome>
where
    I: IntoIterator<Item = Result<IngestItem>>,
    P: Processor + ?Sized,
{
    let paths = opts.paths();
    fsio::ensure_dir(
        &opts.out_dir,
        &std::path::Path::new("shards").join(opts.kind.as_str()),
    )?;
    let lock = ShardLock::acquire(&paths.lock())?;
    let lease = Lease::acquire_with(
        &paths.lease(),
        &opts.fingerprint.digest,
        opts.lease_ttl,
        lock.flock_works,
    )?;
    let fence = fence_of(&lease);
    crash::point("lock.acquired");

    for p in [
        paths.chains(),
        paths.rejects(),
        paths.manifest(),
        paths.done(),
        paths.journal(),
    ] {
        fsio::refuse_symlink(&p)?;
    }
    if paths.done().exists() {
        return Ok(committed_event(opts, already_done(opts, &paths)?, sink));
    }
    for p in [
        paths.chains(),
        paths.rejects(),
        paths.manifest(),
        paths.done(),
    ] {
        fsio::remove_if_exists(&tmp_path(&p))?;
    }

    let header = JournalHeader {
        format: JOURNAL_FORMAT.into(),
        kind: opts.kind.to_string(),
        shard: opts.shard,
        fingerprint: opts.fingerprint.clone(),
    };
    let (mut journal, done) = Journal::open(
        &paths.journal(),
        &header,
        opts.flush_every,
        opts.flush_interval,
    )?;
    journal.set_max_frame(opts.max_frame);
    journal.set_fence(fence.clone());
    let done: HashMap<u64, String> = done.into_iter().map(|e| (e.ordinal, e.seed_id)).collect();
    let resumed = done.len() as u64;
    if resumed > 0 {
        tracing::info!("{}: resuming, {resumed} rows already done", opts.shard);
        sink.event(&Event::Resumed {
            kind: opts.kind,
            shard: opts.shard,
            rows: resumed,
        });
    }

    let mut w = Writer {
        journal: &mut journal,
        sink,
    };
    let result = process_input(opts, &paths, seeds, processor, &mut w, &done);
    // Keep every finished result, also when the input or the processor failed.
    let flushed = journal.flush();
    result?;
    flushed?;
    drop(journal);
    let out = finish(opts, &paths, &fence)?;
    drop(lease);
    drop(lock);
    Ok(committed_event(opts, ShardOutcome { resumed, ..out }, sink))
}

/// Report the shard's end to `sink`; returns `out`.
fn committed_event(
    opts: &ShardOptions,
    out: ShardOutcome,
    sink: &mut dyn EventSink,
) -> ShardOutcome {
    sink.event(&Event::ShardCommitted {
        kind: opts.kind,
        shard: opts.shard,
        state: out.state,
        seeds: out.seeds,
        accepted: out.accepted,
        rejected: out.rejected,
    });
    out
}

/// The journal of a running shard, and the sink told what goes into it.
struct Writer<'a> {
    journal: &'a mut Journal,
    sink: &'a mut dyn EventSink,
}

impl Writer<'_> {
    /// Journal `entry` and report what was journaled.
    fn append(&mut self, entry: JournalEntry, seed_json: &str) -> Result<()> {
        let entry = append(self.journal, entry, seed_json)?;
        for c in &entry.accepted {
            self.sink.event(&Event::ChainAccepted {
                seed_id: c.seed_id.clone(),
                chain_id: c.id.clone(),
            });
        }
        for r in &entry.rejected {
            self.sink.event(&Event::ChainRejected {
                seed_id: r.seed_id.clone(),
                chain_id: r.chain_id.clone(),
                stage: r.stage,
            });
        }
        self.sink.event(&Event::SeedDone {
            seed_id: entry.seed_id,
            accepted: entry.accepted.len() as u64,
            rejected: entry.rejected.len() as u64,
        });
        Ok(())
    }
}

/// Journal `entry`; one too large for a frame is replaced by a reject saying
/// so. Returns the entry journaled.
fn append(journal: &mut Journal, entry: JournalEntry, seed_json: &str) -> Result<JournalEntry> {
    match journal.append(&entry) {
        Ok(()) => Ok(entry),
        Err(StoreError::FrameTooLarge { bytes, max, .. }) => {
            // Keep as much of the seed as fits, so the reject itself is journaled.
            let keep = (max as usize / 2).min(seed_json.len());
            let cut = (0..=keep)
                .rev()
                .find(|&i| seed_json.is_char_boundary(i))
                .unwrap_or(0);
            let row = if cut < seed_json.len() {
                format!(
                    "{}… (truncated from {} bytes)",
                    &seed_json[..cut],
                    seed_json.len()
                )
            } else {
                seed_json.to_string()
            };
            tracing::warn!(
                "seed {}: result of {bytes} bytes is over the journal's frame limit; rejected",
                entry.seed_id
            );
            let reject = JournalEntry {
                ordinal: entry.ordinal,
                seed_id: entry.seed_id.clone(),
                accepted: Vec::new(),
                rejected: vec![Reject {
                    seed_id: entry.seed_id,
                    chain_id: None,
                    recipe: None,
                    stage: crate::record::Stage::StoreJournal,
                    reason: format!(
                        "result too large to journal: {bytes} bytes > frame limit {max} bytes \
                         (lower the recipe's token budgets or split the seed)"
                    ),
                    row,
                }],
            };
            journal.append(&reject)?;
            Ok(reject)
        }
        Err(e) => Err(e),
    }
}

/// Feed this shard's not-yet-journaled rows to the processor, journaling results.
fn process_input<I, P>(
    opts: &ShardOptions,
    paths: &ShardPaths,
    seeds: I,
    processor: &mut P,
    w: &mut Writer<'_>,
    done: &HashMap<u64, String>,
) -> Result<()>
where
    I: IntoIterator<Item = Result<IngestItem>>,
    P: Processor + ?Sized,
{
    let mut batch: Vec<(u64, Seed)> = Vec::with_capacity(opts.batch_seeds.max(1));
    let batch = &mut batch;
    for item in seeds {
        let item = item?;
        if !opts.shard.owns(item.seed_id()) {
            continue;
        }
        if let Some(id) = done.get(&item.ordinal) {
            if id != item.seed_id() {
                return Err(StoreError::Journal {
                    path: paths.journal(),
                    reason: format!(
                        "input row {} was seed {id} and is now {}: the input changed; \
                         use a new output directory",
                        item.ordinal,
                        item.seed_id()
                    ),
                });
            }
            continue;
        }
        match item.row {
            IngestRow::Reject(r) => {
                let row = r.row.clone();
                w.append(
                    JournalEntry {
                        ordinal: item.ordinal,
                        seed_id: r.seed_id.clone(),
                        accepted: Vec::new(),
                        rejected: vec![r],
                    },
                    &row,
                )?
            }
            IngestRow::Seed(s) => {
                batch.push((item.ordinal, s));
                if batch.len() >= opts.batch_seeds.max(1) {
                    run_batch(batch, processor, w)?;
                }
            }
        }
    }
    run_batch(batch, processor, w)?;
    Ok(())
}

fn run_batch<P: Processor + ?Sized>(
    batch: &mut Vec<(u64, Seed)>,
    processor: &mut P,
    w: &mut Writer<'_>,
) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let seeds: Vec<Seed> = batch.iter().map(|(_, s)| s.clone()).collect();
    let results = processor
        .process_batch(&seeds)
        .and_then(|r| {
            if r.len() == seeds.len() {
                Ok(r)
            } else {
                Err(ProcessError::Short {
                    got: r.len(),
                    want: seeds.len(),
                })
            }
        })
        .map_err(|error| {
            // Name the seeds the failure happened on; a rerun resumes before them.
            let ids: Vec<&str> = seeds.iter().map(|s| s.id.as_str()).take(8).collect();
            let more = if seeds.len() > 8 {
                format!(" and {} more", seeds.len() - 8)
            } else {
                String::new()
            };
            StoreError::Processor {
                error,
                on: format!(
                    "on seeds {}{more}, input rows {}..={}",
                    ids.join(", "),
                    batch.first().map_or(0, |b| b.0),
                    batch.last().map_or(0, |b| b.0)
                ),
            }
        })?;
    crash::point("worker.processed");
    let n = batch.len() as u64;
    for ((ordinal, seed), p) in batch.drain(..).zip(results) {
        let json = serde_json::to_string(&seed).unwrap_or_default();
        w.append(
            JournalEntry {
                ordinal,
                seed_id: seed.id,
                accepted: p.accepted,
                rejected: p.rejected,
            },
            &json,
        )?;
    }
    w.sink.event(&Event::BatchDone {
        seeds: n,
        tokens: processor.tokens(),
    });
    Ok(())
}

/// The error for an output made by another configuration: what changed, and how to go on.
pub fn changed_error(path: &std::path::Path, what: &str, changes: &[String]) -> StoreError {
    StoreError::Changed {
        path: path.to_path_buf(),
        what: format!(
            "{what} was made by another configuration: {}; to keep both, give this job a new \
             `out` directory; to redo it with the new inputs, remove the shard's files \
             (or the whole output directory)",
            changes.join("; ")
        ),
    }
}

fn already_done(opts: &ShardOptions, paths: &ShardPaths) -> Result<ShardOutcome> {
    let m: DoneMarker = read_json(&paths.done())?;
    match &m.fingerprint {
        Some(f) => {
            let changes = opts.fingerprint.changes_since(f);
            if !changes.is_empty() {
                return Err(changed_error(&paths.done(), "this shard", &changes));
            }
        }
        None => tracing::warn!(
            "{}: marker of an older cotforge without a fingerprint; kept as it is",
            paths.done().display()
        ),
    }
    // A crash after the marker may leave the journal behind; it is no longer needed.
    fsio::remove_if_exists(&paths.journal())?;
    let manifest: Manifest = read_json(&paths.manifest())?;
    for f in &manifest.files {
        let p = paths.dir.join(&f.name);
        let len = std::fs::metadata(&p).map_err(io_err(&p))?.len();
        if len != f.bytes {
            return Err(StoreError::Corrupt {
                path: p,
                reason: format!(
                    "shard is marked done but the file has {len} bytes, manifest says {}; \
                     run `cotforge verify`",
                    f.bytes
                ),
            });
        }
    }
    Ok(ShardOutcome {
        state: ShardState::AlreadyDone,
        seeds: m.seeds,
        accepted: m.accepted,
        rejected: m.rejected,
        resumed: m.seeds,
        files: manifest.files,
    })
}

/// Whether `name` is committed per the manifest and the file on disk matches it.
fn committed(paths: &ShardPaths, manifest: &Manifest, name: &str) -> bool {
    let Some(entry) = manifest.get(name) else {
        return false;
    };
    matches!(blake3_output(&paths.dir.join(name)), Ok((h, n)) if h == entry.blake3 && n == entry.bytes)
}

/// Rows of the journal in canonical order, read back lazily: only sort keys
/// are held in memory, each entry is parsed again when its rows are written
/// (consecutive rows usually share one entry, which is cached).
struct Sorted {
    file: std::fs::File,
    path: PathBuf,
    frames: Vec<FrameRef>,
    cache: Option<(usize, JournalEntry)>,
}

impl Sorted {
    fn entry(&mut self, frame: usize) -> Result<&JournalEntry> {
        if self.cache.as_ref().map(|c| c.0) != Some(frame) {
            let e = read_entry(&self.file, &self.path, self.frames[frame])?;
            self.cache = Some((frame, e));
        }
        match &self.cache {
            Some((_, e)) => Ok(e),
            None => Err(StoreError::Journal {
                path: self.path.clone(),
                reason: "entry cache".into(),
            }),
        }
    }
    /// Chunks of rows picked by `(frame, index)` keys.
    fn chains(&mut self, keys: &[(usize, usize)]) -> Result<RecordBatch> {
        let mut rows = Vec::with_capacity(keys.len());
        for &(f, i) in keys {
            rows.push(self.entry(f)?.accepted[i].clone());
        }
        chains_to_batch(&rows)
    }
    fn rejects(&mut self, keys: &[(usize, usize)]) -> Result<RecordBatch> {
        let mut rows = Vec::with_capacity(keys.len());
        for &(f, i) in keys {
            rows.push(self.entry(f)?.rejected[i].clone());
        }
        rejects_to_batch(&rows)
    }
}

/// Write the shard's files from the journal, then the manifest and the marker.
fn finish(opts: &ShardOptions, paths: &ShardPaths, fence: &Fence) -> Result<ShardOutcome> {
    let jpath = paths.journal();
    let mut scanned = scan(&jpath)?;
    // A row journaled twice (a flush retried after its fsync did reach the
    // disk) is written once: the first frame of each row number wins.
    let mut seen = std::collections::HashSet::with_capacity(scanned.len());
    let before = scanned.len();
    scanned.retain(|(_, k)| seen.insert(k.ordinal));
    if scanned.len() < before {
        tracing::warn!(
            "{}: {} row(s) journaled twice; each is written once",
            jpath.display(),
            before - scanned.len()
        );
    }
    let seeds = scanned.len() as u64;
    // Canonical order: by seed, then chain id (chains) or input position (rejects).
    let mut chain_keys: Vec<(String, String, u64, usize, usize)> = Vec::new();
    let mut reject_keys: Vec<(String, u64, usize, usize)> = Vec::new();
    let mut frames = Vec::with_capacity(scanned.len());
    for (f, (frame, k)) in scanned.into_iter().enumerate() {
        frames.push(frame);
        for (i, c) in k.accepted.into_iter().enumerate() {
            chain_keys.push((c.seed_id, c.id, k.ordinal, f, i));
        }
        for i in 0..k.rejected.len() {
            reject_keys.push((k.seed_id.clone(), k.ordinal, f, i));
        }
    }
    chain_keys.sort();
    reject_keys.sort();
    let chain_rows: Vec<(usize, usize)> = chain_keys.into_iter().map(|k| (k.3, k.4)).collect();
    let reject_rows: Vec<(usize, usize)> = reject_keys.into_iter().map(|k| (k.2, k.3)).collect();
    let mut sorted = Sorted {
        file: fsio::open_read(&jpath)?,
        path: jpath.clone(),
        frames,
        cache: None,
    };

    let mut manifest = match read_json::<Manifest>(&paths.manifest()) {
        Ok(m) if m.kind == opts.kind.as_str() && m.shard_index == opts.shard.index => m,
        _ => Manifest::new(opts.kind.as_str(), opts.shard),
    };
    let rg = opts.write.row_group_rows.max(1);
    let name = |p: PathBuf| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let chains_name = name(paths.chains());
    if !committed(paths, &manifest, &chains_name) {
        fence.check()?;
        let f = write_parquet(
            &paths.chains(),
            chains_schema(),
            chain_rows.chunks(rg).map(|k| sorted.chains(k)),
            &opts.write,
        )?;
        manifest.put(f);
        write_json(&paths.manifest(), &manifest)?;
        crash::point("manifest.committed");
    }
    let rejects_name = name(paths.rejects());
    if !committed(paths, &manifest, &rejects_name) {
        fence.check()?;
        let f = write_parquet(
            &paths.rejects(),
            rejects_schema(),
            reject_rows.chunks(rg).map(|k| sorted.rejects(k)),
            &opts.write,
        )?;
        manifest.put(f);
        write_json(&paths.manifest(), &manifest)?;
        crash::point("manifest.committed");
    }
    // Canonical manifest bytes regardless of which run committed which file.
    manifest.files.sort_by(|a, b| a.name.cmp(&b.name));
    fence.check()?;
    let mbytes = write_json(&paths.manifest(), &manifest)?;
    crash::point("marker.before");
    let marker = DoneMarker {
        format: MARKER_FORMAT.into(),
        kind: opts.kind.to_string(),
        shard_index: opts.shard.index,
        num_shards: opts.shard.count,
        seeds,
        accepted: chain_rows.len() as u64,
        rejected: reject_rows.len() as u64,
        manifest_blake3: blake3::hash(&mbytes).to_hex().to_string(),
        fingerprint: Some(opts.fingerprint.clone()),
    };
    fence.check()?;
    write_json(&paths.done(), &marker)?;
    crash::point("marker.committed");
    drop(sorted);
    fsio::remove_if_exists(&jpath)?;
    super::parquet_io::fsync_dir(&paths.dir)?;
    Ok(ShardOutcome {
        state: ShardState::Completed,
        seeds,
        accepted: marker.accepted,
        rejected: marker.rejected,
        resumed: 0,
        files: manifest.files,
    })
}
