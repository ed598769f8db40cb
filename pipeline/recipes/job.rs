//! Job files (TOML): one nightly job = engine settings, recipes with their
//! stage settings, output directory, shard count, seed. Parsed into the
//! low-level [`JobFile`] (serde, unknown keys refused), then validated into a
//! [`Job`] before any work starts. Every error names the file, the line and
//! column, and the key (`file:line:col: recipe[0].filters[1].min_reward: ...`),
//! all from the spans of toml's parser, and says what to do.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::{EngineConfig, EngineKind};
use crate::record::Recipe;
use crate::search::{DriverConfig, SearchConfig};
use crate::stages::dedup::DedupConfig;
use crate::stages::export::ExportConfig;
use crate::stages::filter::FilterConfig;

use super::instruction::InstructionConfig;
use super::open_o1::OpenO1Config;
use super::RecipeError;

/// The longest journal flush interval accepted (a day; longer is a typo).
pub const MAX_FLUSH_SECONDS: f64 = 86_400.0;

/// Storage settings of a job (`[store]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// Journal fsync after this many results...
    pub flush_every: usize,
    /// ...or after this many seconds.
    pub flush_seconds: f64,
    /// Seeds processed together (their work shares decode batches).
    pub batch_seeds: usize,
    /// Parquet row-group size of shard files.
    pub row_group_rows: usize,
    /// Longest prompt accepted (characters); longer rows are rejected at ingest.
    pub max_prompt_chars: usize,
    /// Lease lifetime (seconds) beside each lock, for shared storage whose
    /// flock does not work across nodes (see `store::lease`); 0 turns it off.
    pub lease_seconds: u64,
}

impl Default for StoreSection {
    fn default() -> Self {
        Self {
            flush_every: 16,
            flush_seconds: 5.0,
            batch_seeds: 16,
            row_group_rows: 10_000,
            max_prompt_chars: 16_000,
            lease_seconds: crate::store::lease::DEFAULT_TTL_SECONDS,
        }
    }
}

/// `[dedup]`: near and exact dedup across all shards, and against earlier runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DedupSection {
    pub enabled: bool,
    /// Persistent signature index shared by nightly runs (a path outside `out`).
    pub index: Option<PathBuf>,
    pub params: DedupConfig,
}

impl Default for DedupSection {
    fn default() -> Self {
        Self {
            enabled: true,
            index: None,
            params: DedupConfig::default(),
        }
    }
}

/// `[export]`: the SFT-ready dataset written once every shard is done.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportSection {
    pub enabled: bool,
    /// Default: `<out>/export`.
    pub to: Option<PathBuf>,
    pub options: ExportConfig,
}

impl Default for ExportSection {
    fn default() -> Self {
        Self {
            enabled: true,
            to: None,
            options: ExportConfig::default(),
        }
    }
}

/// One `[[recipe]]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipeSpec {
    pub kind: Recipe,
    /// Seed Parquet files (see `cotforge seeds import`).
    pub seeds: Vec<PathBuf>,
    /// Only the first N input rows (across the seed files, before sharding).
    pub limit: Option<u64>,
    /// Filters in order; default: the recipe's own list.
    pub filters: Option<Vec<FilterConfig>>,
    /// `marco_cot` only.
    pub search: Option<SearchConfig>,
    /// `marco_cot` only: how trees share the engine.
    pub driver: Option<DriverConfig>,
    /// `open_o1` only.
    pub open_o1: Option<OpenO1Config>,
    /// `instruction` only.
    pub instruction: Option<InstructionConfig>,
}

/// The job file as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobFile {
    /// Root of every random choice in the job.
    #[serde(default)]
    pub seed: u64,
    /// Output directory (plain directory; shared storage for array jobs).
    pub out: PathBuf,
    #[serde(default = "one")]
    pub num_shards: u32,
    /// Unix seconds stamped on every row; default: the first run's time (kept on reruns).
    pub created_at: Option<i64>,
    #[serde(default)]
    pub engine: EngineConfig,
    #[serde(default)]
    pub store: StoreSection,
    #[serde(rename = "recipe")]
    pub recipes: Vec<RecipeSpec>,
    #[serde(default)]
    pub dedup: DedupSection,
    #[serde(default)]
    pub export: ExportSection,
    /// `[decontaminate]`: n-gram overlap with benchmark files, applied in finalize.
    #[serde(default)]
    pub decontaminate: Option<crate::stages::decontam::DecontamConfig>,
    /// `[gate]`: bounds that make finalize mark the output not shippable.
    #[serde(default)]
    pub gate: Option<crate::report::gate::GateConfig>,
}

fn one() -> u32 {
    1
}

/// A validated job: what the library runs.
#[derive(Debug, Clone)]
pub struct Job {
    pub path: PathBuf,
    pub file: JobFile,
    pub recipes: Vec<ValidRecipe>,
    /// blake3 of the job's effective settings (every recipe, dedup, export):
    /// names the job in leases and in the dedup index. A whitespace or comment
    /// edit of the file does not change it. Shards carry a fuller per-recipe
    /// fingerprint (settings + seed bytes + model; see [`Job::recipe_settings`]).
    pub fingerprint: String,
}

#[derive(Debug, Clone)]
pub struct ValidRecipe {
    pub spec: RecipeSpec,
    pub filters: Vec<FilterConfig>,
    pub search: SearchConfig,
}

impl Job {
    pub fn export_dir(&self) -> PathBuf {
        self.file
            .export
            .to
            .clone()
            .unwrap_or_else(|| self.file.out.join("export"))
    }

    /// The effective settings that determine one recipe's shards, as canonical
    /// JSON (sorted keys): parsed values with defaults filled in, not the job
    /// text. Left out, because they do not change what a shard holds: `out`,
    /// engine `threads` and the model *path* (the model is identified by its
    /// blake3), the journal cadence, the lease, the other recipes, `[dedup]`
    /// and `[export]` (finalize reads those afresh every time), seed *paths*
    /// (the seed files are identified by their blake3).
    pub fn recipe_settings(&self, r: &ValidRecipe) -> serde_json::Value {
        let f = &self.file;
        let mut engine = serde_json::to_value(&f.engine).unwrap_or_default();
        if let Some(m) = engine.as_object_mut() {
            m.remove("threads");
            m.remove("model");
        }
        let spec = &r.spec;
        let instruction = (spec.kind == Recipe::Instruction).then(|| {
            let mut c = spec.instruction.clone().unwrap_or_default();
            if c.seed == 0 {
                c.seed = f.seed;
            }
            c
        });
        serde_json::json!({
            "format": "cotforge-settings/1",
            "seed": f.seed,
            "num_shards": f.num_shards,
            "created_at": f.created_at,
            "engine": engine,
            "store": {
                "batch_seeds": f.store.batch_seeds,
                "row_group_rows": f.store.row_group_rows,
                "max_prompt_chars": f.store.max_prompt_chars,
            },
            "recipe": {
                "kind": spec.kind,
                "limit": spec.limit,
                "filters": r.filters,
                "search": (spec.kind == Recipe::MarcoCot).then_some(&r.search),
                "driver": (spec.kind == Recipe::MarcoCot)
                    .then(|| spec.driver.clone().unwrap_or_default()),
                "open_o1": (spec.kind == Recipe::OpenO1)
                    .then(|| spec.open_o1.clone().unwrap_or_default()),
                "instruction": instruction,
            },
        })
    }
}

/// blake3 of the effective settings of the whole job.
fn job_digest(job: &Job) -> String {
    let recipes: Vec<serde_json::Value> =
        job.recipes.iter().map(|r| job.recipe_settings(r)).collect();
    let all = serde_json::json!({
        "recipes": recipes,
        "dedup": job.file.dedup,
        "export": job.file.export,
    });
    blake3::hash(all.to_string().as_bytes())
        .to_hex()
        .to_string()
}

/// Filters a recipe runs when its job file lists none.
pub fn default_filters(kind: Recipe) -> Vec<FilterConfig> {
    use crate::stages::filter::{
        FormatConfig, LengthConfig, RepetitionConfig, RewardConfig, VerifyConfig,
    };
    match kind {
        Recipe::Instruction => vec![
            FilterConfig::Length(LengthConfig::default()),
            FilterConfig::Repetition(RepetitionConfig::default()),
            FilterConfig::Reward(RewardConfig::default()),
        ],
        Recipe::OpenO1 | Recipe::MarcoCot => vec![
            FilterConfig::Format(FormatConfig::default()),
            FilterConfig::Length(LengthConfig::default()),
            FilterConfig::Repetition(RepetitionConfig::default()),
            FilterConfig::Verify(VerifyConfig::default()),
            FilterConfig::Reward(RewardConfig::default()),
        ],
    }
}

/// A located error: `file:line:col: key: message`.
fn err(
    path: &Path,
    text: &str,
    table: &str,
    key: Option<&str>,
    msg: impl std::fmt::Display,
) -> RecipeError {
    let full = match key {
        Some(k) if table.is_empty() => k.to_string(),
        Some(k) => format!("{table}.{k}"),
        None => table.to_string(),
    };
    let line = position(text, table, key)
        .map(|(l, c)| format!(":{l}:{c}"))
        .unwrap_or_default();
    RecipeError::Job(format!("{}{line}: {full}: {msg}", path.display()))
}

/// Read, parse and validate a job file. Nothing is written.
pub fn load(path: &Path) -> Result<Job, RecipeError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        RecipeError::Job(format!("{}: cannot read the job file: {e}", path.display()))
    })?;
    parse(path, &text)
}

/// Validate a job built in code (the hidden `shard-worker`) with exactly the
/// checks of a job file: it is written as TOML and parsed.
pub fn from_file(file: &JobFile) -> Result<Job, RecipeError> {
    let text = toml::to_string(file)
        .map_err(|e| RecipeError::Job(format!("job settings: cannot be written as TOML: {e}")))?;
    parse(Path::new("<job settings>"), &text)
}

/// Parse and validate job text (`path` is used in messages only).
pub fn parse(path: &Path, text: &str) -> Result<Job, RecipeError> {
    let file: JobFile = toml::from_str(text).map_err(|e| {
        // The error's span names the place and, through the parsed tree, the
        // key; toml's own text (below) shows the line.
        let at = e.span().map(|s| s.start);
        let pos = at
            .and_then(|o| line_col(text, o))
            .map(|(l, c)| format!(":{l}:{c}"))
            .unwrap_or_default();
        let key = at
            .and_then(|o| key_at(text, o))
            .map(|k| format!(" {k}:"))
            .unwrap_or_default();
        RecipeError::Job(format!(
            "{}{pos}:{key} {}",
            path.display(),
            e.to_string().trim_end()
        ))
    })?;
    let e = |table: &str, key: Option<&str>, msg: String| err(path, text, table, key, msg);

    if file.num_shards == 0 {
        return Err(e("", Some("num_shards"), "must be at least 1".into()));
    }
    let fs = file.store.flush_seconds;
    if !(fs.is_finite() && (0.0..=MAX_FLUSH_SECONDS).contains(&fs)) {
        return Err(e(
            "store",
            Some("flush_seconds"),
            format!("must be a number of seconds from 0 to {MAX_FLUSH_SECONDS}, got {fs}"),
        ));
    }
    let eng = &file.engine;
    if eng.n_parallel == 0 {
        return Err(e(
            "engine",
            Some("n_parallel"),
            "must be at least 1 (sequences per decode call)".into(),
        ));
    }
    if eng.n_seq_max < eng.n_parallel {
        return Err(e(
            "engine",
            Some("n_seq_max"),
            format!("must be >= n_parallel ({})", eng.n_parallel),
        ));
    }
    if let Err(x) = eng.validate() {
        return Err(e("engine", None, x.to_string()));
    }
    if eng.kind == EngineKind::Llama && eng.model.is_dir() {
        return Err(e(
            "engine",
            Some("model"),
            format!(
                "{} is a directory, not a GGUF file (point it at the .gguf file inside)",
                eng.model.display()
            ),
        ));
    }
    if eng.kind == EngineKind::Llama && !eng.model.is_file() {
        return Err(e(
            "engine",
            Some("model"),
            format!(
                "{} does not exist (run scripts/setup.sh, or point it at a GGUF file)",
                eng.model.display()
            ),
        ));
    }
    if file.recipes.is_empty() {
        return Err(e(
            "",
            None,
            "no [[recipe]] table: a job needs at least one recipe".into(),
        ));
    }
    let mut recipes = Vec::new();
    for (i, spec) in file.recipes.iter().enumerate() {
        let t = format!("recipe[{i}]");
        if spec.seeds.is_empty() {
            return Err(e(&t, Some("seeds"), "lists no seed file".into()));
        }
        for s in &spec.seeds {
            if s.is_dir() {
                return Err(e(
                    &t,
                    Some("seeds"),
                    format!(
                        "{} is a directory, not a seed Parquet file (list the .parquet files inside it)",
                        s.display()
                    ),
                ));
            }
            if !s.is_file() {
                return Err(e(
                    &t,
                    Some("seeds"),
                    format!(
                        "seed file {} does not exist (create it with `cotforge seeds import`)",
                        s.display()
                    ),
                ));
            }
        }
        let wrong = |section: &str, only: Recipe| {
            e(
                &format!("{t}.{section}"),
                None,
                format!(
                    "this section applies to {only} only, this recipe is {}",
                    spec.kind
                ),
            )
        };
        if spec.kind != Recipe::MarcoCot {
            if spec.search.is_some() {
                return Err(wrong("search", Recipe::MarcoCot));
            }
            if spec.driver.is_some() {
                return Err(wrong("driver", Recipe::MarcoCot));
            }
        }
        if spec.kind != Recipe::OpenO1 && spec.open_o1.is_some() {
            return Err(wrong("open_o1", Recipe::OpenO1));
        }
        if spec.kind != Recipe::Instruction && spec.instruction.is_some() {
            return Err(wrong("instruction", Recipe::Instruction));
        }
        if let Some(o) = &spec.open_o1 {
            if o.step_delimiter.is_empty() {
                return Err(e(
                    &format!("{t}.open_o1"),
                    Some("step_delimiter"),
                    "must not be empty (the default is a blank line, \"\\n\\n\")".into(),
                ));
            }
        }
        let filters = spec
            .filters
            .clone()
            .unwrap_or_else(|| default_filters(spec.kind));
        for (j, f) in filters.iter().enumerate() {
            if let Err(x) = f.build() {
                // Point at the first key of this filter's table the message
                // names (filter messages start with the setting's name).
                let msg = x.to_string();
                let table = format!("{t}.filters[{j}]");
                let key = msg
                    .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .find(|k| !k.is_empty() && has_key(text, &table, k))
                    .map(str::to_string);
                return Err(e(&table, key.as_deref(), msg));
            }
        }
        let mut search = spec.search.clone().unwrap_or_default();
        if spec.search.as_ref().is_none_or(|s| s.seed == 0) {
            search.seed = file.seed;
        }
        let search = search
            .build()
            .map_err(|x| e(&format!("{t}.search"), None, x.to_string()))?;
        recipes.push(ValidRecipe {
            spec: spec.clone(),
            filters,
            search,
        });
    }
    let mut kinds: HashMap<Recipe, usize> = HashMap::new();
    for (i, r) in file.recipes.iter().enumerate() {
        if let Some(prev) = kinds.insert(r.kind, i) {
            return Err(e(
                &format!("recipe[{i}]"),
                Some("kind"),
                format!(
                    "{} appears twice (also recipe[{prev}]); list all its seed files in one recipe",
                    r.kind
                ),
            ));
        }
    }
    if file.dedup.enabled {
        file.dedup
            .params
            .build()
            .map_err(|x| e("dedup.params", None, x.to_string()))?;
    }
    file.export
        .options
        .validate()
        .map_err(|x| e("export.options", None, x.to_string()))?;
    if let Some(d) = &file.decontaminate {
        d.validate()
            .map_err(|x| e("decontaminate", None, x.to_string()))?;
    }
    if let Some(g) = &file.gate {
        g.validate().map_err(|x| e("gate", None, x))?;
    }
    let mut job = Job {
        path: path.to_path_buf(),
        fingerprint: String::new(),
        recipes,
        file,
    };
    job.fingerprint = job_digest(&job);
    Ok(job)
}

/// Line and column (1-based) of `key` inside `table` (`""` = root, `engine`,
/// `recipe[1].filters[0]`, ...), or of the table itself (its header, or its
/// inline value) when `key` is None or not in it; `None` when the table is
/// not in the file (a default section). Positions come from the spans of
/// toml's parser, so inline tables and arrays are found like headers.
pub fn position(text: &str, table: &str, key: Option<&str>) -> Option<(usize, usize)> {
    use toml::de::{DeTable, DeValue};
    let doc = DeTable::parse(text).ok()?;
    let mut span = 0..0;
    let mut cur: &DeTable = doc.get_ref();
    let mut at_root = true;
    for seg in table.split('.').filter(|s| !s.is_empty()) {
        let (name, index) = match seg.strip_suffix(']').and_then(|s| s.split_once('[')) {
            Some((n, i)) => (n, Some(i.parse::<usize>().ok()?)),
            None => (seg, None),
        };
        let mut v = cur.get(name)?;
        if let Some(i) = index {
            let DeValue::Array(a) = v.get_ref() else {
                return None;
            };
            v = a.get(i)?;
        }
        let DeValue::Table(t) = v.get_ref() else {
            return None;
        };
        span = v.span();
        cur = t;
        at_root = false;
    }
    if let Some((k, _)) = key.and_then(|k| cur.get_key_value(k)) {
        span = k.span();
    } else if at_root {
        return Some((1, 1));
    }
    line_col(text, span.start)
}

/// Line and column (1-based, in characters) of byte `offset` of `text`.
fn line_col(text: &str, offset: usize) -> Option<(usize, usize)> {
    let before = text.get(..offset)?;
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Some((line, col))
}

/// The dotted path (`engine.n_parallel`, `recipe[0].filters[1].min_reward`)
/// of the innermost key whose key or value covers byte `offset`; `None`
/// when the text does not parse or no key is there.
pub fn key_at(text: &str, offset: usize) -> Option<String> {
    use toml::de::{DeTable, DeValue};
    use toml::Spanned;
    fn walk(t: &DeTable, offset: usize, path: &str) -> Option<String> {
        for (k, v) in t.iter() {
            let here = if path.is_empty() {
                k.get_ref().to_string()
            } else {
                format!("{path}.{}", k.get_ref())
            };
            if let Some(p) = inside(v, offset, &here) {
                return Some(p);
            }
            if k.span().contains(&offset) || v.span().contains(&offset) {
                return Some(here);
            }
        }
        None
    }
    fn inside(v: &Spanned<DeValue>, offset: usize, path: &str) -> Option<String> {
        match v.get_ref() {
            DeValue::Table(t) => walk(t, offset, path),
            DeValue::Array(a) => a.iter().enumerate().find_map(|(i, x)| {
                let p = format!("{path}[{i}]");
                inside(x, offset, &p).or_else(|| x.span().contains(&offset).then_some(p))
            }),
            _ => None,
        }
    }
    walk(DeTable::parse(text).ok()?.get_ref(), offset, "")
}

/// Whether `table` of the file sets `key`.
fn has_key(text: &str, table: &str, key: &str) -> bool {
    position(text, table, Some(key)) != position(text, table, None)
}

/// The line of [`position`].
pub fn locate(text: &str, table: &str, key: Option<&str>) -> Option<usize> {
    position(text, table, key).map(|(line, _)| line)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "seed = 1\nout = \"x\"\n\n[engine]\nn_parallel = 0\n\n[[recipe]]\nkind = \"open_o1\"\n\n[[recipe]]\nkind = \"marco_cot\"\n[recipe.search]\nexpand_k = 0\n[[recipe.filters]]\ntype = \"format\"\n[[recipe.filters]]\ntype = \"reward\"\nmin_reward = 1.5\n";

    #[test]
    fn locates_keys_in_tables_and_arrays() {
        assert_eq!(locate(DOC, "", Some("out")), Some(2));
        assert_eq!(locate(DOC, "engine", Some("n_parallel")), Some(5));
        assert_eq!(locate(DOC, "recipe[0]", Some("kind")), Some(8));
        assert_eq!(locate(DOC, "recipe[1]", Some("kind")), Some(11));
        assert_eq!(locate(DOC, "recipe[1].search", Some("expand_k")), Some(13));
        assert_eq!(
            locate(DOC, "recipe[1].filters[1]", Some("min_reward")),
            Some(18)
        );
        assert_eq!(locate(DOC, "recipe[1].filters[1]", None), Some(16));
        assert_eq!(locate(DOC, "recipe[1].filters[0]", Some("nope")), Some(14));
    }

    /// Inline tables and arrays of them (the old header scanner saw neither),
    /// with columns.
    #[test]
    fn locates_keys_in_inline_tables() {
        let doc = "out = \"x\"\nengine = { kind = \"scripted\", n_parallel = 0 }\n\n[[recipe]]\nkind = \"open_o1\"\nseeds = []\nfilters = [\n  { type = \"format\" },\n  { type = \"reward\", min_reward = 1.5 },\n]\n";
        assert_eq!(position(doc, "engine", Some("n_parallel")), Some((2, 31)));
        assert_eq!(position(doc, "engine", None), Some((2, 10)));
        assert_eq!(
            position(doc, "recipe[0].filters[1]", Some("min_reward")),
            Some((9, 22))
        );
        assert_eq!(position(doc, "recipe[0].filters[1]", None), Some((9, 3)));
        assert_eq!(position(doc, "dedup", None), None);
        let e = parse(Path::new("j.toml"), doc).expect_err("n_parallel = 0");
        assert!(
            e.to_string()
                .starts_with("j.toml:2:31: engine.n_parallel: "),
            "{e}"
        );
    }
}
