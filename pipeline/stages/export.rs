//! SFT export in the Hugging Face layout:
//! `data/{split}-{i:05d}-of-{n:05d}.parquet` (zstd, bounded row groups), a
//! README.md dataset card whose YAML `configs` map splits to files, and a
//! LLaMA-Factory `dataset_info.json`. Deterministic: rows are split by a hash
//! of their id and ordered by id, so the same chains give the same bytes.
//!
//! Crash-safe: the new `data/` is written complete (every file and the
//! directory fsynced) beside the old one as `.data.new/`, then switched in
//! with one atomic exchange (see `store::fsio::switch_dir`), so a reader or a
//! crash sees the old set or the new set, never a mix or a gap; the card and
//! `dataset_info.json` are replaced atomically after it. Leftovers of an
//! interrupted export are removed by the next one. Entries that are
//! symbolic links are refused, not followed.
//!
//! Columns per format (every format also carries `id`, `seed_id`, `model`,
//! `recipe`, `reward`, `verified`):
//! - `messages`: `messages: list<struct<role: string, content: string>>`
//!   (system if any, user, assistant) — TRL's conversational format.
//! - `prompt-completion`: `prompt: string` (system, blank line, prompt when a
//!   system prompt exists), `completion: string`.
//! - `alpaca`: `instruction`, `input` (empty), `output`, `system` (nullable).
//! - `sharegpt`: `conversations: list<struct<from: string, value: string>>`
//!   (`human`/`gpt`), `system` (nullable).
//!
//! `preference`, `kto` and `prm` are built from the search trees, not only
//! from the shipped chains ([`super::tree_export`], schemas
//! `schemas/{preference,kto,prm}.json`); they go through the same writer,
//! card and `dataset_info.json` here, via [`export_out`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, ListArray, RecordBatch, StringArray, StructArray,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use super::format::{render, Style};
use super::StageError;
use crate::record::{Chain, Recipe, Reject};
use crate::store::{crash, fsio};

/// Column layout of the exported rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExportFormat {
    #[default]
    Messages,
    PromptCompletion,
    Alpaca,
    Sharegpt,
    /// (chosen, rejected) pairs from one tree (TRL's conversational preference layout).
    Preference,
    /// One row per chain with a boolean `label` (TRL's unpaired preference layout).
    Kto,
    /// Per-step Monte Carlo labels from the tree (TRL's stepwise supervision layout).
    Prm,
}

impl ExportFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ExportFormat::Messages => "messages",
            ExportFormat::PromptCompletion => "prompt-completion",
            ExportFormat::Alpaca => "alpaca",
            ExportFormat::Sharegpt => "sharegpt",
            ExportFormat::Preference => "preference",
            ExportFormat::Kto => "kto",
            ExportFormat::Prm => "prm",
        }
    }

    /// Formats that read the held-back chains and the trees, not only the shipped chains.
    pub fn from_trees(self) -> bool {
        matches!(
            self,
            ExportFormat::Preference | ExportFormat::Kto | ExportFormat::Prm
        )
    }
}

impl std::str::FromStr for ExportFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "messages" => Ok(Self::Messages),
            "prompt-completion" => Ok(Self::PromptCompletion),
            "alpaca" => Ok(Self::Alpaca),
            "sharegpt" => Ok(Self::Sharegpt),
            "preference" => Ok(Self::Preference),
            "kto" => Ok(Self::Kto),
            "prm" => Ok(Self::Prm),
            _ => Err(format!(
                "unknown format '{s}' (expected messages, prompt-completion, alpaca, sharegpt, \
                 preference, kto or prm)"
            )),
        }
    }
}

/// A held-out split and the share of rows it takes (the rest is `train`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitSpec {
    pub name: String,
    pub fraction: f64,
}

impl std::str::FromStr for SplitSpec {
    type Err = String;
    /// `validation=0.02`
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, frac) = s
            .split_once('=')
            .ok_or_else(|| format!("split '{s}' must look like name=fraction"))?;
        let fraction: f64 = frac.parse().map_err(|_| format!("bad fraction in '{s}'"))?;
        let name = name.trim().to_string();
        let valid_name = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && name != "train";
        if !valid_name {
            return Err(format!(
                "split name '{name}' must be [A-Za-z0-9_]+ and not 'train'"
            ));
        }
        if !(0.0..1.0).contains(&fraction) {
            return Err(format!("split fraction {fraction} not in [0, 1)"));
        }
        Ok(SplitSpec { name, fraction })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExportConfig {
    pub format: ExportFormat,
    pub style: Style,
    pub splits: Vec<SplitSpec>,
    /// Only these recipes (all when empty).
    pub recipes: Vec<Recipe>,
    pub max_rows_per_file: usize,
    pub row_group_rows: usize,
    /// Dataset name in the card and the LLaMA-Factory entry.
    pub name: String,
    /// Salt of the split hash (changing it reshuffles the splits).
    pub split_seed: u64,
    /// `preference`: at most this many pairs per seed.
    pub max_pairs_per_seed: usize,
    /// `preference` / `kto` for seeds without a reference answer: a chain is
    /// dispreferred when its value is at least this much below the selected
    /// chain's (values are in [0, 1]).
    pub min_value_margin: f64,
    /// `prm`: a step's label is `value > prm_threshold` (0: some chain
    /// through the step reaches the right answer).
    pub prm_threshold: f64,
}

impl Default for ExportConfig {
    fn default() -> Self {
        Self {
            format: ExportFormat::Messages,
            style: Style::Marco,
            splits: vec![SplitSpec {
                name: "validation".into(),
                fraction: 0.02,
            }],
            recipes: Vec::new(),
            max_rows_per_file: 100_000,
            row_group_rows: 1_000,
            name: "cotforge".into(),
            split_seed: 0,
            max_pairs_per_seed: 4,
            min_value_margin: 0.05,
            prm_threshold: 0.0,
        }
    }
}

impl ExportConfig {
    pub fn validate(&self) -> Result<(), StageError> {
        let total: f64 = self.splits.iter().map(|s| s.fraction).sum();
        if total >= 1.0 {
            return Err(StageError::Config(format!(
                "split fractions sum to {total} >= 1"
            )));
        }
        if self.max_rows_per_file == 0 || self.row_group_rows == 0 {
            return Err(StageError::Config(
                "max_rows_per_file and row_group_rows must be > 0".into(),
            ));
        }
        let mut names: Vec<&str> = self.splits.iter().map(|s| s.name.as_str()).collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return Err(StageError::Config("duplicate split name".into()));
        }
        if self.max_pairs_per_seed == 0 {
            return Err(StageError::Config("max_pairs_per_seed must be > 0".into()));
        }
        if !(0.0..=1.0).contains(&self.min_value_margin) {
            return Err(StageError::Config(format!(
                "min_value_margin {} not in [0, 1]",
                self.min_value_margin
            )));
        }
        if !(0.0..1.0).contains(&self.prm_threshold) {
            return Err(StageError::Config(format!(
                "prm_threshold {} not in [0, 1)",
                self.prm_threshold
            )));
        }
        Ok(())
    }
}

/// What an export wrote.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExportSummary {
    /// Split name -> (rows, files relative to the export dir), `train` first.
    pub splits: Vec<(String, usize, Vec<String>)>,
    pub skipped_by_recipe: usize,
    /// Tree formats: what was left out and why, with counts.
    pub notes: Vec<(String, usize)>,
}

impl ExportSummary {
    pub fn rows(&self) -> usize {
        self.splits.iter().map(|s| s.1).sum()
    }
}

/// A licence-bearing seed set, recognised from seed ids.
struct SeedSet {
    key: &'static [&'static str],
    name: &'static str,
    license: &'static str,
    hf_license: &'static str,
}

const SEED_SETS: &[SeedSet] = &[
    SeedSet {
        key: &["gsm8k"],
        name: "GSM8K (openai/gsm8k)",
        license: "MIT",
        hf_license: "mit",
    },
    SeedSet {
        key: &["marco"],
        name: "Marco-o1 CoT demo and letter-count problems (AIDC-AI/Marco-o1)",
        license: "Apache-2.0",
        hf_license: "apache-2.0",
    },
    SeedSet {
        key: &[
            "self_instruct",
            "self-instruct",
            "selfinstruct",
            "seed_task",
        ],
        name: "self-instruct seed tasks (yizhongw/self-instruct)",
        license: "Apache-2.0",
        hf_license: "apache-2.0",
    },
];

/// Which split an id falls in: a blake3 hash of `seed:id` mapped to [0, 1).
pub fn split_of<'a>(id: &str, cfg: &'a ExportConfig) -> &'a str {
    let h = blake3::hash(format!("{}:{id}", cfg.split_seed).as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    let x = (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64;
    let mut acc = 0.0;
    for s in &cfg.splits {
        acc += s.fraction;
        if x < acc {
            return &s.name;
        }
    }
    "train"
}

fn struct_list(name: &str, keys: [&str; 2], rows: &[Vec<(String, String)>]) -> (Field, ArrayRef) {
    let fields = Fields::from(vec![
        Field::new(keys[0], DataType::Utf8, false),
        Field::new(keys[1], DataType::Utf8, false),
    ]);
    let flat = rows.iter().flatten();
    let a = StringArray::from_iter_values(flat.clone().map(|(r, _)| r.as_str()));
    let b = StringArray::from_iter_values(flat.map(|(_, c)| c.as_str()));
    let values = StructArray::new(fields.clone(), vec![Arc::new(a), Arc::new(b)], None);
    let item = Arc::new(Field::new("item", DataType::Struct(fields), false));
    let offsets = OffsetBuffer::from_lengths(rows.iter().map(Vec::len));
    let list = ListArray::new(item.clone(), offsets, Arc::new(values), None);
    (
        Field::new(name, DataType::List(item), false),
        Arc::new(list),
    )
}

fn text_col(name: &str, vals: impl Iterator<Item = String>) -> (Field, ArrayRef) {
    (
        Field::new(name, DataType::Utf8, false),
        Arc::new(StringArray::from_iter_values(vals)),
    )
}

fn opt_text_col<'a>(name: &str, vals: impl Iterator<Item = Option<&'a str>>) -> (Field, ArrayRef) {
    (
        Field::new(name, DataType::Utf8, true),
        Arc::new(StringArray::from_iter(vals)),
    )
}

pub(crate) fn system_of(c: &Chain) -> Option<&str> {
    c.system.as_deref().filter(|s| !s.trim().is_empty())
}

/// The prompt as one string: system prompt, blank line, prompt when there is a system prompt.
pub(crate) fn flat_prompt(c: &Chain) -> String {
    match system_of(c) {
        Some(s) => format!("{s}\n\n{}", c.prompt),
        None => c.prompt.clone(),
    }
}

/// A row of an export: its id orders the rows of a file, its split key
/// picks the split (a hash, see [`split_of`]).
pub(crate) trait ExportRow {
    fn id(&self) -> &str;
    fn split_key(&self) -> &str;
}

impl ExportRow for Chain {
    fn id(&self) -> &str {
        &self.id
    }
    fn split_key(&self) -> &str {
        &self.id
    }
}

/// The Arrow batch of exported rows.
pub fn export_batch(rows: &[&Chain], cfg: &ExportConfig) -> Result<RecordBatch, StageError> {
    let assistant = |c: &Chain| render(cfg.style, &c.reasoning, &c.answer);
    let mut cols: Vec<(Field, ArrayRef)> = Vec::new();
    match cfg.format {
        ExportFormat::Messages => {
            let msgs: Vec<Vec<(String, String)>> = rows
                .iter()
                .map(|c| {
                    let mut m = Vec::with_capacity(3);
                    if let Some(s) = system_of(c) {
                        m.push(("system".to_string(), s.to_string()));
                    }
                    m.push(("user".to_string(), c.prompt.clone()));
                    m.push(("assistant".to_string(), assistant(c)));
                    m
                })
                .collect();
            cols.push(struct_list("messages", ["role", "content"], &msgs));
        }
        ExportFormat::PromptCompletion => {
            cols.push(text_col("prompt", rows.iter().map(|c| flat_prompt(c))));
            cols.push(text_col("completion", rows.iter().map(|c| assistant(c))));
        }
        ExportFormat::Alpaca => {
            cols.push(text_col(
                "instruction",
                rows.iter().map(|c| c.prompt.clone()),
            ));
            cols.push(text_col("input", rows.iter().map(|_| String::new())));
            cols.push(text_col("output", rows.iter().map(|c| assistant(c))));
            cols.push(opt_text_col("system", rows.iter().map(|c| system_of(c))));
        }
        ExportFormat::Sharegpt => {
            let conv: Vec<Vec<(String, String)>> = rows
                .iter()
                .map(|c| {
                    vec![
                        ("human".to_string(), c.prompt.clone()),
                        ("gpt".to_string(), assistant(c)),
                    ]
                })
                .collect();
            cols.push(struct_list("conversations", ["from", "value"], &conv));
            cols.push(opt_text_col("system", rows.iter().map(|c| system_of(c))));
        }
        f => {
            return Err(StageError::Config(format!(
                "format {} is built from the trees (stages::tree_export), not from chains alone",
                f.as_str()
            )))
        }
    }
    cols.push(text_col("id", rows.iter().map(|c| c.id.clone())));
    cols.push(text_col("seed_id", rows.iter().map(|c| c.seed_id.clone())));
    cols.push(text_col("model", rows.iter().map(|c| c.model.clone())));
    cols.push(opt_text_col(
        "recipe",
        rows.iter().map(|c| c.recipe.map(Recipe::as_str)),
    ));
    cols.push((
        Field::new("reward", DataType::Float64, false),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|c| c.reward),
        )),
    ));
    cols.push((
        Field::new("verified", DataType::Boolean, true),
        Arc::new(BooleanArray::from_iter(rows.iter().map(|c| c.verified))),
    ));
    let (fields, arrays): (Vec<Field>, Vec<ArrayRef>) = cols.into_iter().unzip();
    let schema: SchemaRef = Arc::new(Schema::new(fields));
    Ok(RecordBatch::try_new(schema, arrays)?)
}

/// Remove what an interrupted export left: the half-written new set and the
/// old set the non-atomic fallback parks aside.
fn remove_leftovers(dir: &Path) -> Result<(), StageError> {
    for p in [dir.join(".data.new"), fsio::old_path(&dir.join("data"))] {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {
                std::fs::remove_dir_all(&p).map_err(|e| StageError::io(&p, e))?
            }
            Ok(_) => std::fs::remove_file(&p).map_err(|e| StageError::io(&p, e))?,
            Err(_) => {}
        }
    }
    Ok(())
}

/// The export of a run's output in any format: the SFT formats from the
/// shipped `chains`; `preference`, `kto` and `prm` also from the chains the
/// ship policy held back (in `rejects`) and the trees under `out`.
pub fn export_out(
    chains: &[Chain],
    rejects: &[Reject],
    out: &Path,
    dir: &Path,
    cfg: &ExportConfig,
) -> Result<ExportSummary, StageError> {
    if cfg.format.from_trees() {
        super::tree_export::export(chains, rejects, out, dir, cfg)
    } else {
        export(chains, dir, cfg)
    }
}

/// Writes the SFT export of `chains` into `dir` (created if needed): `data/`
/// is replaced as a whole by the new set, so no stale file of a previous
/// export survives, and a crash at any point leaves the previous export or
/// the new one.
pub fn export(
    chains: &[Chain],
    dir: &Path,
    cfg: &ExportConfig,
) -> Result<ExportSummary, StageError> {
    cfg.validate()?;
    if cfg.format.from_trees() {
        return Err(StageError::Config(format!(
            "format {} needs the run's rejects and trees: use export_out",
            cfg.format.as_str()
        )));
    }
    let kept: Vec<&Chain> = chains
        .iter()
        .filter(|c| cfg.recipes.is_empty() || c.recipe.is_some_and(|r| cfg.recipes.contains(&r)))
        .collect();
    let mut summary = write_export(&kept, dir, cfg, &|rows| export_batch(rows, cfg), &|s| {
        dataset_card(&kept, cfg, s)
    })?;
    summary.skipped_by_recipe = chains.len() - kept.len();
    Ok(summary)
}

/// The batch of one data file.
pub(crate) type BatchFn<'a, R> = dyn Fn(&[&R]) -> Result<RecordBatch, StageError> + 'a;

/// The machinery every format shares: `rows` split, sorted, written as the
/// HF layout into `dir/.data.new`, switched in atomically, then the card
/// (`card` of the summary) and `dataset_info.json`.
pub(crate) fn write_export<R: ExportRow>(
    rows: &[&R],
    dir: &Path,
    cfg: &ExportConfig,
    batch: &BatchFn<'_, R>,
    card: &dyn Fn(&ExportSummary) -> String,
) -> Result<ExportSummary, StageError> {
    cfg.validate()?;
    std::fs::create_dir_all(dir).map_err(|e| StageError::io(dir, e))?;
    remove_leftovers(dir)?;
    let data = dir.join("data");
    let new = dir.join(".data.new");
    for p in [
        &data,
        &dir.join("README.md"),
        &dir.join("dataset_info.json"),
    ] {
        fsio::refuse_symlink(p)?;
    }
    std::fs::create_dir(&new).map_err(|e| StageError::io(&new, e))?;

    // A failed write (a full disk) removes the half-written set.
    let summary = match write_set(rows, &new, cfg, batch) {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&new);
            return Err(e);
        }
    };
    crash::point("export.before_switch");
    fsio::switch_dir(&new, &data)?;

    let card = card(&summary);
    fsio::commit_bytes(&dir.join("README.md"), card.as_bytes())?;
    let info = serde_json::to_string_pretty(&llama_factory_info(cfg, &summary))?;
    fsio::commit_bytes(
        &dir.join("dataset_info.json"),
        format!("{info}\n").as_bytes(),
    )?;
    crash::point("export.card");
    fsio::fsync_dir(dir)?;
    Ok(summary)
}

/// Write every data file of the export into `new` (fsynced); their names are
/// recorded relative to the export directory (`data/...`).
fn write_set<R: ExportRow>(
    rows: &[&R],
    new: &Path,
    cfg: &ExportConfig,
    batch: &BatchFn<'_, R>,
) -> Result<ExportSummary, StageError> {
    let mut by_split: BTreeMap<&str, Vec<&R>> = BTreeMap::new();
    by_split.insert("train", Vec::new());
    for s in &cfg.splits {
        by_split.insert(&s.name, Vec::new());
    }
    for &r in rows {
        by_split
            .entry(split_of(r.split_key(), cfg))
            .or_default()
            .push(r);
    }

    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
        .set_max_row_group_row_count(Some(cfg.row_group_rows))
        .set_created_by("cotforge".into())
        .build();
    let mut summary = ExportSummary::default();
    let order = std::iter::once("train").chain(cfg.splits.iter().map(|s| s.name.as_str()));
    for split in order {
        let mut rows = by_split.remove(split).unwrap_or_default();
        rows.sort_by(|a, b| a.id().cmp(b.id()));
        rows.dedup_by(|a, b| a.id() == b.id());
        let n_files = rows.len().div_ceil(cfg.max_rows_per_file);
        let mut files = Vec::new();
        for (i, chunk) in rows.chunks(cfg.max_rows_per_file).enumerate() {
            let name = format!("{split}-{i:05}-of-{n_files:05}.parquet");
            let path = new.join(&name);
            // Errors name the file where it will live (it is written beside it).
            let shown = parent_of(new).join("data").join(&name);
            let batch = batch(chunk)?;
            let file = fsio::open_nofollow(
                &path,
                std::fs::OpenOptions::new().write(true).create_new(true),
            )?;
            let mut w = ArrowWriter::try_new(file, batch.schema(), Some(props.clone()))?;
            w.write(&batch).map_err(|e| parquet_err(&shown, e))?;
            let file = w.into_inner().map_err(|e| parquet_err(&shown, e))?;
            file.sync_all().map_err(|e| StageError::io(&shown, e))?;
            crash::point("export.file_written");
            files.push(format!("data/{name}"));
        }
        summary.splits.push((split.to_string(), rows.len(), files));
    }

    fsio::fsync_dir(new)?;
    Ok(summary)
}

fn parent_of(p: &Path) -> &Path {
    p.parent().unwrap_or(Path::new("."))
}

/// A Parquet writer error on `path`; a full disk becomes the store's clear message.
fn parquet_err(path: &Path, e: parquet::errors::ParquetError) -> StageError {
    if let Some(io) = crate::store::parquet_io::disk_full_in(&e) {
        return StageError::io(path, io);
    }
    StageError::Parquet(e)
}

/// LLaMA-Factory entries: one per split (per file when a split spans several
/// files, since LLaMA-Factory's `file_name` is a single file or directory).
///
/// Preference: LLaMA-Factory's sharegpt ranking reader wants `chosen` and
/// `rejected` as single messages, hence the `*_message` columns; KTO: its
/// reader wants one message list and the `kto_tag` column. PRM: LLaMA-Factory
/// has no process-reward format, so there are no entries (`{}`).
pub fn llama_factory_info(cfg: &ExportConfig, summary: &ExportSummary) -> serde_json::Value {
    use serde_json::json;
    let tags = json!({"role_tag": "role", "content_tag": "content", "user_tag": "user",
                      "assistant_tag": "assistant", "system_tag": "system"});
    let spec = match cfg.format {
        ExportFormat::Messages => json!({
            "formatting": "sharegpt",
            "columns": {"messages": "messages"},
            "tags": tags
        }),
        ExportFormat::Preference => json!({
            "formatting": "sharegpt",
            "ranking": true,
            "columns": {"messages": "prompt", "chosen": "chosen_message", "rejected": "rejected_message"},
            "tags": tags
        }),
        ExportFormat::Kto => json!({
            "formatting": "sharegpt",
            "columns": {"messages": "conversation", "kto_tag": "label"},
            "tags": tags
        }),
        ExportFormat::Prm => return json!({}),
        ExportFormat::Sharegpt => json!({
            "formatting": "sharegpt",
            "columns": {"messages": "conversations", "system": "system"},
            "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human",
                     "assistant_tag": "gpt"}
        }),
        ExportFormat::Alpaca => json!({
            "formatting": "alpaca",
            "columns": {"prompt": "instruction", "query": "input", "response": "output", "system": "system"}
        }),
        ExportFormat::PromptCompletion => json!({
            "formatting": "alpaca",
            "columns": {"prompt": "prompt", "response": "completion"}
        }),
    };
    let mut out = serde_json::Map::new();
    for (split, _, files) in &summary.splits {
        for (i, f) in files.iter().enumerate() {
            let key = if files.len() == 1 {
                format!("{}_{split}", cfg.name)
            } else {
                format!("{}_{split}_{i:05}", cfg.name)
            };
            let mut entry = spec.clone();
            if let Some(obj) = entry.as_object_mut() {
                obj.insert("file_name".into(), json!(f));
            }
            out.insert(key, entry);
        }
    }
    serde_json::Value::Object(out)
}

fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn size_category(n: usize) -> &'static str {
    match n {
        0..1_000 => "n<1K",
        1_000..10_000 => "1K<n<10K",
        10_000..100_000 => "10K<n<100K",
        100_000..1_000_000 => "100K<n<1M",
        _ => "1M<n<10M",
    }
}

/// README.md with YAML front matter (`configs`, `dataset_info` splits with row
/// counts, licences) and a prose description of how the data was made.
///
/// `exported` are the chains the rows were made of; `how` (tree formats) is
/// a section on how the rows were made.
pub fn dataset_card(exported: &[&Chain], cfg: &ExportConfig, summary: &ExportSummary) -> String {
    dataset_card_with(exported, cfg, summary, "")
}

pub(crate) fn dataset_card_with(
    exported: &[&Chain],
    cfg: &ExportConfig,
    summary: &ExportSummary,
    how: &str,
) -> String {
    let mut models: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut settings: BTreeMap<String, usize> = BTreeMap::new();
    let mut recipes: BTreeMap<String, usize> = BTreeMap::new();
    for c in exported {
        *models
            .entry((c.model.clone(), c.model_blake3.clone()))
            .or_default() += 1;
        *settings.entry(c.settings.clone()).or_default() += 1;
        *recipes
            .entry(c.recipe.map_or("unknown", Recipe::as_str).to_string())
            .or_default() += 1;
    }
    let mut sets: Vec<&SeedSet> = SEED_SETS
        .iter()
        .filter(|s| {
            exported.iter().any(|c| {
                let id = c.seed_id.to_lowercase();
                s.key.iter().any(|k| id.contains(k))
            })
        })
        .collect();
    let inferred = !sets.is_empty();
    if !inferred {
        sets = SEED_SETS.iter().collect();
    }
    let mut licenses: Vec<&str> = sets.iter().map(|s| s.hf_license).collect();
    licenses.sort_unstable();
    licenses.dedup();

    let mut y = format!("---\npretty_name: {}\n", yaml_str(&cfg.name));
    y.push_str("license:\n");
    for l in &licenses {
        y.push_str(&format!("- {l}\n"));
    }
    y.push_str(
        "task_categories:\n- text-generation\ntags:\n- chain-of-thought\n- synthetic\n- cotforge\n",
    );
    y.push_str(&format!(
        "size_categories:\n- {}\n",
        size_category(summary.rows())
    ));
    y.push_str("configs:\n- config_name: default\n  data_files:\n");
    for (split, n, _) in &summary.splits {
        if *n > 0 {
            y.push_str(&format!("  - split: {split}\n    path: data/{split}-*\n"));
        }
    }
    y.push_str("dataset_info:\n  config_name: default\n  splits:\n");
    for (split, n, _) in &summary.splits {
        if *n > 0 {
            y.push_str(&format!("  - name: {split}\n    num_examples: {n}\n"));
        }
    }
    y.push_str("---\n\n");

    let mut b = y;
    b.push_str(&format!("# {}\n\n", cfg.name));
    let what = match cfg.format {
        ExportFormat::Preference => "Chain-of-thought preference pairs (DPO / ORPO)",
        ExportFormat::Kto => "Chain-of-thought unpaired preference data (KTO)",
        ExportFormat::Prm => "Step-level process-reward data (PRM)",
        _ => "Chain-of-thought supervised fine-tuning data",
    };
    b.push_str(&format!(
        "{what} synthesized by cotforge with the Marco-o1 \
         method (arXiv 2411.14405): confidence-guided MCTS over a local GGUF model, reflection, \
         reward and answer filters, exact and MinHash near-duplicate removal.\n\n",
    ));
    b.push_str("## Splits\n\n| split | rows | files |\n|---|---:|---:|\n");
    for (split, n, files) in &summary.splits {
        b.push_str(&format!("| {split} | {n} | {} |\n", files.len()));
    }
    let keyed = if cfg.format.from_trees() {
        "seed id (all rows of a seed are in one split)"
    } else {
        "row id"
    };
    b.push_str(&format!(
        "\nSplits are assigned by a blake3 hash of each {keyed} (split seed {}), so they are stable \
         across re-exports.\n\n",
        cfg.split_seed
    ));
    b.push_str("## Format\n\n");
    b.push_str(&format!(
        "- format: `{}`; assistant style: `{}`\n",
        cfg.format.as_str(),
        cfg.style.as_str()
    ));
    let cols = match cfg.format {
        ExportFormat::Messages => {
            "`messages` (list of {role, content}: system if any, user, assistant)"
        }
        ExportFormat::PromptCompletion => "`prompt`, `completion`",
        ExportFormat::Alpaca => "`instruction`, `input`, `output`, `system`",
        ExportFormat::Sharegpt => "`conversations` (list of {from, value}: human, gpt), `system`",
        ExportFormat::Preference => {
            "`prompt` (list of {role, content}: system if any, user), `chosen`, `rejected` (one \
             assistant message each) — TRL's conversational preference format; `chosen_message`, \
             `rejected_message` (the same as single messages, for LLaMA-Factory)"
        }
        ExportFormat::Kto => {
            "`prompt` (list of {role, content}), `completion` (one assistant message), `label` \
             (bool) — TRL's conversational unpaired preference format; `conversation` (prompt + \
             completion, for LLaMA-Factory)"
        }
        ExportFormat::Prm => {
            "`prompt` (string), `completions` (list of step strings, the answer last), `labels` \
             (list of bool), `values` (list of float: the Monte Carlo estimate per step), \
             `visits` (list of uint32) — TRL's stepwise supervision format"
        }
    };
    let meta = match cfg.format {
        ExportFormat::Preference => {
            "`id`, `seed_id`, `model`, `chosen_id`, `rejected_id`, `shared_steps`, \
             `chosen_verified`, `rejected_verified`, `chosen_value`, `rejected_value`"
        }
        ExportFormat::Kto => "`id`, `seed_id`, `model`, `verified`, `value`",
        ExportFormat::Prm => "`id`, `seed_id`, `model`, `verified`",
        _ => {
            "`id`, `seed_id`, `model`, `recipe`, `reward` (mean token confidence), \
             `verified` (against the reference answer, null when none)"
        }
    };
    b.push_str(&format!("- columns: {cols}; metadata {meta}\n"));
    let lf = if cfg.format == ExportFormat::Prm {
        "LLaMA-Factory has no process-reward format (`dataset_info.json` is empty)".to_string()
    } else {
        format!(
            "LLaMA-Factory: `dataset_info.json` (entries `{}_<split>`)",
            cfg.name
        )
    };
    b.push_str(&format!(
        "- load: `datasets.load_dataset(\"parquet\", data_files={{\"train\": \"data/train-*.parquet\"}})`; \
         {lf}\n\n"
    ));
    b.push_str(how);
    b.push_str("## Recipes\n\n| recipe | rows |\n|---|---:|\n");
    for (r, n) in &recipes {
        b.push_str(&format!("| {r} | {n} |\n"));
    }
    b.push_str("\n## Model\n\n| model | blake3 | rows |\n|---|---|---:|\n");
    for ((m, h), n) in &models {
        b.push_str(&format!("| {m} | `{h}` | {n} |\n"));
    }
    b.push_str("\n## Settings\n\n");
    let mut by_count: Vec<(&String, &usize)> = settings.iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (s, n) in by_count.iter().take(10) {
        let s = if s.is_empty() { "{}" } else { s.as_str() };
        b.push_str(&format!("- {n} rows: `{s}`\n"));
    }
    if by_count.len() > 10 {
        let rest: usize = by_count[10..].iter().map(|x| *x.1).sum();
        b.push_str(&format!(
            "- {rest} rows: {} other settings\n",
            by_count.len() - 10
        ));
    }
    b.push_str("\n## Seed sets and licences\n\n");
    if !inferred {
        b.push_str(
            "Seed sets could not be inferred from seed ids; the sets cotforge ships with:\n\n",
        );
    }
    for s in &sets {
        b.push_str(&format!("- {}: {}\n", s.name, s.license));
    }
    b
}

/// Used by the CLI to report where an export went.
pub fn describe(summary: &ExportSummary, dir: &Path) -> String {
    let mut s = String::new();
    for (split, n, files) in &summary.splits {
        s.push_str(&format!("{split}: {n} rows in {} file(s)\n", files.len()));
    }
    for (what, n) in &summary.notes {
        s.push_str(&format!("{what}: {n}\n"));
    }
    let p: PathBuf = dir.join("README.md");
    s.push_str(&format!("card: {}\n", p.display()));
    s
}
