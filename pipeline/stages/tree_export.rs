//! Preference pairs, KTO rows and step-level process-reward rows from the
//! marco_cot search trees (`cotforge export --format preference|kto|prm`).
//!
//! The chains of a seed are the shipped ones (`final/chains.parquet`) and the
//! ones the ship policy held back (rejects of stage
//! [`crate::recipes::marco::STAGE_SHIP`], the chain as JSON in `row`). Each is
//! mapped to its path in the seed's tree (`OUT/trees/<shard>/<seed>.json`) by
//! the data viewer's mapper ([`LoadedTree::find_chain`]), so there is one way
//! of doing that. Seeds with a decontamination reject are left out entirely:
//! a benchmark prompt must not come back through its held-back chains.
//!
//! Roles ([`roles`]): with a reference answer, verified chains are desirable
//! and wrong ones undesirable; without one, the selected chain is desirable
//! and chains whose value is at least `min_value_margin` below it are
//! undesirable (the rest is neither).
//! - preference: every (desirable, undesirable) pair of a seed's tree, those
//!   sharing the longest prefix of steps first (so the difference is in the
//!   steps), at most `max_pairs_per_seed` ([`pairs_for_seed`]);
//! - kto: one row per chain with a role, `label` = the role;
//! - prm: one row per chain whose seed has a reference; per step the Monte
//!   Carlo estimate of the step's node ([`mc_counts`]): the share of verified
//!   chains among the answered terminal nodes at or below it, with the node's
//!   visits; `label = value > prm_threshold`.
//!
//! Batches are built against `schemas/{preference,kto,prm}.json`, so the
//! documented schema is the written one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, ListArray, RecordBatch, StringArray, StructArray,
    UInt32Array,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, FieldRef, Fields, SchemaRef};

use super::export::{
    dataset_card_with, flat_prompt, system_of, write_export, ExportConfig, ExportFormat, ExportRow,
    ExportSummary,
};
use super::format::render;
use super::StageError;
use crate::recipes::marco::STAGE_SHIP;
use crate::record::{Chain, Recipe, Reject};
use crate::report::viewer::{load_tree, tree_files, LoadedTree};
use crate::store::schema::{kto_schema, preference_schema, prm_schema};

/// One chain of a seed's tree that may enter a row.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub chain: Chain,
    /// In the shipped chains (else held back by the ship policy).
    pub shipped: bool,
    /// Tree nodes root..=terminal; empty when the chain is not in a tree.
    pub path: Vec<u32>,
}

impl Candidate {
    /// The value function's score; the reward for rows written without one.
    pub fn value(&self) -> f64 {
        self.chain.value.unwrap_or(self.chain.reward)
    }
}

/// A seed's candidates (ordered by chain id) and its tree, when found.
pub struct SeedTree {
    pub seed_id: String,
    pub candidates: Vec<Candidate>,
    pub tree: Option<LoadedTree>,
}

/// The seeds of an output directory, and what was left out (counts).
pub struct Gathered {
    pub seeds: Vec<SeedTree>,
    pub notes: Vec<(String, usize)>,
}

/// Collects every marco_cot chain of `chains` (shipped) and of the ship
/// policy's rejects, grouped by seed, each mapped to its tree under `out`.
pub fn gather(chains: &[Chain], rejects: &[Reject], out: &Path) -> Gathered {
    let contaminated: BTreeSet<&str> = rejects
        .iter()
        .filter(|r| r.stage == super::decontam::STAGE)
        .map(|r| r.seed_id.as_str())
        .collect();
    let mut by_seed: BTreeMap<String, BTreeMap<String, Candidate>> = BTreeMap::new();
    let (mut unreadable, mut left_out) = (0, 0);
    let mut add = |chain: Chain, shipped: bool| {
        if chain.recipe != Some(Recipe::MarcoCot) {
            return;
        }
        if contaminated.contains(chain.seed_id.as_str()) {
            left_out += 1;
            return;
        }
        let seed = by_seed.entry(chain.seed_id.clone()).or_default();
        // A chain both shipped and held back (two inputs merged) counts once, as shipped.
        let entry = seed.entry(chain.id.clone()).or_insert(Candidate {
            chain: chain.clone(),
            shipped,
            path: Vec::new(),
        });
        if shipped && !entry.shipped {
            *entry = Candidate {
                chain,
                shipped,
                path: Vec::new(),
            };
        }
    };
    for c in chains {
        add(c.clone(), true);
    }
    for r in rejects.iter().filter(|r| r.stage == STAGE_SHIP) {
        match serde_json::from_str::<Chain>(&r.row) {
            Ok(c) => add(c, false),
            Err(e) => {
                tracing::warn!(
                    "held-back row of seed {} (chain {:?}) is not a chain ({e}); left out",
                    r.seed_id,
                    r.chain_id
                );
                unreadable += 1;
            }
        }
    }
    let files = tree_files(out);
    let (mut no_tree, mut not_found) = (0, 0);
    let seeds = by_seed
        .into_iter()
        .map(|(seed_id, cands)| {
            let tree = files.get(&seed_id).and_then(|f| load_tree(f, usize::MAX));
            let mut candidates: Vec<Candidate> = cands.into_values().collect();
            match &tree {
                Some(t) => {
                    for c in &mut candidates {
                        c.path = t
                            .find_chain(&c.chain.reasoning, &c.chain.answer)
                            .unwrap_or_default();
                        not_found += usize::from(c.path.is_empty());
                    }
                }
                None => no_tree += 1,
            }
            SeedTree {
                seed_id,
                candidates,
                tree,
            }
        })
        .collect();
    let notes = [
        ("chains of decontaminated seeds left out", left_out),
        ("held-back rows that are not chains", unreadable),
        ("seeds without a tree file", no_tree),
        ("chains not found in their tree", not_found),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .map(|(s, n)| (s.to_string(), n))
    .collect();
    Gathered { seeds, notes }
}

/// Per candidate: desirable (`Some(true)`), undesirable (`Some(false)`) or
/// neither. With a reference (some chain of the seed is verified either
/// way), the verification; without one, the selected chain is desirable and
/// chains at least `margin` below its value are undesirable.
pub fn roles(cands: &[Candidate], margin: f64) -> Vec<Option<bool>> {
    if cands.iter().any(|c| c.chain.verified.is_some()) {
        return cands.iter().map(|c| c.chain.verified).collect();
    }
    let selected = cands.iter().find(|c| c.chain.selected == Some(true));
    cands
        .iter()
        .map(|c| {
            let s = selected?;
            if c.chain.id == s.chain.id {
                Some(true)
            } else {
                (c.value() <= s.value() - margin).then_some(false)
            }
        })
        .collect()
}

/// Steps (tree nodes below the root) two paths share before they part.
pub fn shared_steps(a: &[u32], b: &[u32]) -> usize {
    a.iter()
        .zip(b)
        .take_while(|(x, y)| x == y)
        .count()
        .saturating_sub(1)
}

/// A pair by candidate index, and the steps both chains share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairIdx {
    pub chosen: usize,
    pub rejected: usize,
    pub shared: usize,
}

/// The pairs of one seed: every (desirable, undesirable) combination of
/// chains found in the tree, the longest shared prefix first (ties: higher
/// chosen value, lower rejected value, then chain ids), at most `max`.
pub fn pairs_for_seed(cands: &[Candidate], max: usize, margin: f64) -> Vec<PairIdx> {
    let roles = roles(cands, margin);
    let in_tree = |i: usize| !cands[i].path.is_empty();
    let good: Vec<usize> = (0..cands.len())
        .filter(|&i| roles[i] == Some(true) && in_tree(i))
        .collect();
    let bad: Vec<usize> = (0..cands.len())
        .filter(|&i| roles[i] == Some(false) && in_tree(i))
        .collect();
    let mut pairs: Vec<PairIdx> = good
        .iter()
        .flat_map(|&g| {
            bad.iter().map(move |&b| PairIdx {
                chosen: g,
                rejected: b,
                shared: shared_steps(&cands[g].path, &cands[b].path),
            })
        })
        .collect();
    pairs.sort_by(|x, y| {
        let (cx, rx, cy, ry) = (
            &cands[x.chosen],
            &cands[x.rejected],
            &cands[y.chosen],
            &cands[y.rejected],
        );
        y.shared
            .cmp(&x.shared)
            .then(cy.value().total_cmp(&cx.value()))
            .then(rx.value().total_cmp(&ry.value()))
            .then(cx.chain.id.cmp(&cy.chain.id))
            .then(rx.chain.id.cmp(&ry.chain.id))
    });
    pairs.truncate(max);
    pairs
}

/// Per node of the tree: (answered terminal nodes at or below it whose
/// verification is known, how many of them are verified).
pub fn mc_counts(tree: &LoadedTree) -> BTreeMap<u32, (u32, u32)> {
    let mut counts: BTreeMap<u32, (u32, u32)> = BTreeMap::new();
    for n in &tree.view.nodes {
        let Some(v) = n.verified.filter(|_| n.answer.is_some()) else {
            continue;
        };
        for id in tree.path_to(n.id) {
            let e = counts.entry(id).or_default();
            e.0 += 1;
            e.1 += u32::from(v);
        }
    }
    counts
}

/// One preference row.
#[derive(Debug, Clone, PartialEq)]
pub struct PairRow {
    pub id: String,
    pub seed_id: String,
    pub model: String,
    pub system: Option<String>,
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
    pub chosen_id: String,
    pub rejected_id: String,
    pub shared_steps: u32,
    pub chosen_verified: Option<bool>,
    pub rejected_verified: Option<bool>,
    pub chosen_value: f64,
    pub rejected_value: f64,
}

/// One KTO row.
#[derive(Debug, Clone, PartialEq)]
pub struct KtoRow {
    pub id: String,
    pub seed_id: String,
    pub model: String,
    pub system: Option<String>,
    pub prompt: String,
    pub completion: String,
    pub label: bool,
    pub verified: Option<bool>,
    pub value: f64,
}

/// One process-reward row.
#[derive(Debug, Clone, PartialEq)]
pub struct PrmRow {
    pub id: String,
    pub seed_id: String,
    pub model: String,
    pub prompt: String,
    pub completions: Vec<String>,
    pub labels: Vec<bool>,
    pub values: Vec<f64>,
    pub visits: Vec<u32>,
    pub verified: bool,
}

impl ExportRow for PairRow {
    fn id(&self) -> &str {
        &self.id
    }
    fn split_key(&self) -> &str {
        &self.seed_id
    }
}
impl ExportRow for KtoRow {
    fn id(&self) -> &str {
        &self.id
    }
    fn split_key(&self) -> &str {
        &self.seed_id
    }
}
impl ExportRow for PrmRow {
    fn id(&self) -> &str {
        &self.id
    }
    fn split_key(&self) -> &str {
        &self.seed_id
    }
}

/// The pair id: blake3 of the two chain ids.
fn pair_id(chosen: &str, rejected: &str) -> String {
    blake3::hash(format!("{chosen}\u{1f}{rejected}").as_bytes())
        .to_hex()
        .to_string()
}

/// Preference rows of every seed.
pub fn preference_rows(g: &Gathered, cfg: &ExportConfig) -> Vec<PairRow> {
    let mut out = Vec::new();
    for s in &g.seeds {
        for p in pairs_for_seed(&s.candidates, cfg.max_pairs_per_seed, cfg.min_value_margin) {
            let (c, r) = (&s.candidates[p.chosen], &s.candidates[p.rejected]);
            out.push(PairRow {
                id: pair_id(&c.chain.id, &r.chain.id),
                seed_id: s.seed_id.clone(),
                model: c.chain.model.clone(),
                system: system_of(&c.chain).map(str::to_string),
                prompt: c.chain.prompt.clone(),
                chosen: render(cfg.style, &c.chain.reasoning, &c.chain.answer),
                rejected: render(cfg.style, &r.chain.reasoning, &r.chain.answer),
                chosen_id: c.chain.id.clone(),
                rejected_id: r.chain.id.clone(),
                shared_steps: p.shared as u32,
                chosen_verified: c.chain.verified,
                rejected_verified: r.chain.verified,
                chosen_value: c.value(),
                rejected_value: r.value(),
            });
        }
    }
    out
}

/// KTO rows: every chain with a role (see [`roles`]).
pub fn kto_rows(g: &Gathered, cfg: &ExportConfig) -> Vec<KtoRow> {
    let mut out = Vec::new();
    for s in &g.seeds {
        for (c, role) in s
            .candidates
            .iter()
            .zip(roles(&s.candidates, cfg.min_value_margin))
        {
            let Some(label) = role else { continue };
            out.push(KtoRow {
                id: c.chain.id.clone(),
                seed_id: s.seed_id.clone(),
                model: c.chain.model.clone(),
                system: system_of(&c.chain).map(str::to_string),
                prompt: c.chain.prompt.clone(),
                completion: render(cfg.style, &c.chain.reasoning, &c.chain.answer),
                label,
                verified: c.chain.verified,
                value: c.value(),
            });
        }
    }
    out
}

/// The PRM row of one chain: `None` without a verification or a tree path,
/// or when its terminal's verification is not in the tree.
pub fn prm_row(
    c: &Candidate,
    tree: &LoadedTree,
    counts: &BTreeMap<u32, (u32, u32)>,
    threshold: f64,
) -> Option<PrmRow> {
    let verified = c.chain.verified?;
    let terminal = *c.path.last()?;
    let visits_of = |id: u32| {
        tree.view
            .nodes
            .iter()
            .find(|n| n.id == id)
            .map_or(0, |n| n.n.min(u32::MAX as u64) as u32)
    };
    let mut row = PrmRow {
        id: c.chain.id.clone(),
        seed_id: c.chain.seed_id.clone(),
        model: c.chain.model.clone(),
        prompt: flat_prompt(&c.chain),
        completions: Vec::new(),
        labels: Vec::new(),
        values: Vec::new(),
        visits: Vec::new(),
        verified,
    };
    for step in tree.steps(&c.path) {
        let node = step.node?;
        let (known, good) = counts.get(&node).copied().filter(|k| k.0 > 0)?;
        let value = f64::from(good) / f64::from(known);
        row.completions.push(step.text);
        row.values.push(value);
        row.labels.push(value > threshold);
        row.visits.push(visits_of(node));
    }
    let value = if verified { 1.0 } else { 0.0 };
    row.completions.push(c.chain.answer.trim().to_string());
    row.values.push(value);
    row.labels.push(value > threshold);
    row.visits.push(visits_of(terminal));
    Some(row)
}

/// PRM rows of every chain whose seed has a reference; the count of chains
/// left out for lack of a path or verification in the tree.
pub fn prm_rows(g: &Gathered, cfg: &ExportConfig) -> (Vec<PrmRow>, usize) {
    let (mut out, mut skipped) = (Vec::new(), 0);
    for s in &g.seeds {
        let Some(tree) = &s.tree else { continue };
        let counts = mc_counts(tree);
        for c in s.candidates.iter().filter(|c| c.chain.verified.is_some()) {
            match prm_row(c, tree, &counts, cfg.prm_threshold) {
                Some(r) => out.push(r),
                None => skipped += 1,
            }
        }
    }
    (out, skipped)
}

// ---- batches against the documented schemas ----

fn item_of(dt: &DataType) -> Result<FieldRef, StageError> {
    match dt {
        DataType::List(f) => Ok(f.clone()),
        other => Err(StageError::Config(format!(
            "schema: expected a list, found {other}"
        ))),
    }
}

fn struct_fields(dt: &DataType) -> Result<Fields, StageError> {
    match dt {
        DataType::Struct(f) => Ok(f.clone()),
        other => Err(StageError::Config(format!(
            "schema: expected a struct, found {other}"
        ))),
    }
}

/// A struct<role, content> array of messages.
fn message_structs(dt: &DataType, msgs: &[(&str, &str)]) -> Result<StructArray, StageError> {
    let fields = struct_fields(dt)?;
    let roles = StringArray::from_iter_values(msgs.iter().map(|m| m.0));
    let contents = StringArray::from_iter_values(msgs.iter().map(|m| m.1));
    Ok(StructArray::try_new(
        fields,
        vec![Arc::new(roles), Arc::new(contents)],
        None,
    )?)
}

/// A list<struct<role, content>> column.
fn messages_col(f: &Field, rows: &[Vec<(&str, &str)>]) -> Result<ArrayRef, StageError> {
    let item = item_of(f.data_type())?;
    let flat: Vec<(&str, &str)> = rows.iter().flatten().copied().collect();
    let values = message_structs(item.data_type(), &flat)?;
    let offsets = OffsetBuffer::from_lengths(rows.iter().map(Vec::len));
    Ok(Arc::new(ListArray::try_new(
        item,
        offsets,
        Arc::new(values),
        None,
    )?))
}

/// A list column of already-flattened values.
fn list_col(f: &Field, lens: &[usize], values: ArrayRef) -> Result<ArrayRef, StageError> {
    let item = item_of(f.data_type())?;
    let offsets = OffsetBuffer::from_lengths(lens.iter().copied());
    Ok(Arc::new(ListArray::try_new(item, offsets, values, None)?))
}

fn strs<'a>(v: impl Iterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(v))
}

fn prompt_msgs<'a>(system: Option<&'a str>, prompt: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut m = Vec::with_capacity(2);
    if let Some(s) = system {
        m.push(("system", s));
    }
    m.push(("user", prompt));
    m
}

/// The `prompt` column: system (when any) and user messages per row.
fn prompt_col<'a>(
    f: &Field,
    rows: impl Iterator<Item = (Option<&'a str>, &'a str)>,
) -> Result<ArrayRef, StageError> {
    let m: Vec<_> = rows.map(|(s, p)| prompt_msgs(s, p)).collect();
    messages_col(f, &m)
}

fn unknown(name: &str) -> StageError {
    StageError::Config(format!("schema column `{name}` has no builder"))
}

/// Builds a batch of `schema` column by column.
fn batch_of(
    schema: SchemaRef,
    col: impl Fn(&Field) -> Result<ArrayRef, StageError>,
) -> Result<RecordBatch, StageError> {
    let cols = schema
        .fields()
        .iter()
        .map(|f| col(f))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(schema, cols)?)
}

pub fn preference_batch(rows: &[&PairRow]) -> Result<RecordBatch, StageError> {
    batch_of(preference_schema(), |f| {
        let one = |pick: fn(&PairRow) -> &str| -> Vec<Vec<(&str, &str)>> {
            rows.iter().map(|r| vec![("assistant", pick(r))]).collect()
        };
        Ok(match f.name().as_str() {
            "prompt" => prompt_col(
                f,
                rows.iter()
                    .map(|r| (r.system.as_deref(), r.prompt.as_str())),
            )?,
            "chosen" => messages_col(f, &one(|r| &r.chosen))?,
            "rejected" => messages_col(f, &one(|r| &r.rejected))?,
            "chosen_message" => {
                let m: Vec<_> = rows.iter().map(|r| ("assistant", &*r.chosen)).collect();
                Arc::new(message_structs(f.data_type(), &m)?)
            }
            "rejected_message" => {
                let m: Vec<_> = rows.iter().map(|r| ("assistant", &*r.rejected)).collect();
                Arc::new(message_structs(f.data_type(), &m)?)
            }
            "id" => strs(rows.iter().map(|r| r.id.as_str())),
            "seed_id" => strs(rows.iter().map(|r| r.seed_id.as_str())),
            "model" => strs(rows.iter().map(|r| r.model.as_str())),
            "chosen_id" => strs(rows.iter().map(|r| r.chosen_id.as_str())),
            "rejected_id" => strs(rows.iter().map(|r| r.rejected_id.as_str())),
            "shared_steps" => Arc::new(UInt32Array::from_iter_values(
                rows.iter().map(|r| r.shared_steps),
            )),
            "chosen_verified" => Arc::new(BooleanArray::from_iter(
                rows.iter().map(|r| r.chosen_verified),
            )),
            "rejected_verified" => Arc::new(BooleanArray::from_iter(
                rows.iter().map(|r| r.rejected_verified),
            )),
            "chosen_value" => Arc::new(Float64Array::from_iter_values(
                rows.iter().map(|r| r.chosen_value),
            )),
            "rejected_value" => Arc::new(Float64Array::from_iter_values(
                rows.iter().map(|r| r.rejected_value),
            )),
            other => return Err(unknown(other)),
        })
    })
}

pub fn kto_batch(rows: &[&KtoRow]) -> Result<RecordBatch, StageError> {
    batch_of(kto_schema(), |f| {
        Ok(match f.name().as_str() {
            "prompt" => prompt_col(
                f,
                rows.iter()
                    .map(|r| (r.system.as_deref(), r.prompt.as_str())),
            )?,
            "completion" => {
                let m: Vec<_> = rows
                    .iter()
                    .map(|r| vec![("assistant", r.completion.as_str())])
                    .collect();
                messages_col(f, &m)?
            }
            "conversation" => {
                let m: Vec<_> = rows
                    .iter()
                    .map(|r| {
                        let mut m = prompt_msgs(r.system.as_deref(), &r.prompt);
                        m.push(("assistant", r.completion.as_str()));
                        m
                    })
                    .collect();
                messages_col(f, &m)?
            }
            "label" => Arc::new(BooleanArray::from_iter(rows.iter().map(|r| Some(r.label)))),
            "id" => strs(rows.iter().map(|r| r.id.as_str())),
            "seed_id" => strs(rows.iter().map(|r| r.seed_id.as_str())),
            "model" => strs(rows.iter().map(|r| r.model.as_str())),
            "verified" => Arc::new(BooleanArray::from_iter(rows.iter().map(|r| r.verified))),
            "value" => Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.value))),
            other => return Err(unknown(other)),
        })
    })
}

pub fn prm_batch(rows: &[&PrmRow]) -> Result<RecordBatch, StageError> {
    batch_of(prm_schema(), |f| {
        let lens: Vec<usize> = rows.iter().map(|r| r.completions.len()).collect();
        Ok(match f.name().as_str() {
            "prompt" => strs(rows.iter().map(|r| r.prompt.as_str())),
            "completions" => list_col(
                f,
                &lens,
                strs(
                    rows.iter()
                        .flat_map(|r| r.completions.iter().map(String::as_str)),
                ),
            )?,
            "labels" => list_col(
                f,
                &lens,
                Arc::new(BooleanArray::from_iter(
                    rows.iter().flat_map(|r| r.labels.iter().map(|&b| Some(b))),
                )),
            )?,
            "values" => list_col(
                f,
                &lens,
                Arc::new(Float64Array::from_iter_values(
                    rows.iter().flat_map(|r| r.values.iter().copied()),
                )),
            )?,
            "visits" => list_col(
                f,
                &lens,
                Arc::new(UInt32Array::from_iter_values(
                    rows.iter().flat_map(|r| r.visits.iter().copied()),
                )),
            )?,
            "id" => strs(rows.iter().map(|r| r.id.as_str())),
            "seed_id" => strs(rows.iter().map(|r| r.seed_id.as_str())),
            "model" => strs(rows.iter().map(|r| r.model.as_str())),
            "verified" => Arc::new(BooleanArray::from_iter(
                rows.iter().map(|r| Some(r.verified)),
            )),
            other => return Err(unknown(other)),
        })
    })
}

/// The chains the rows were made of, for the card.
fn used<'a>(g: &'a Gathered, ids: &BTreeSet<&str>) -> Vec<&'a Chain> {
    g.seeds
        .iter()
        .flat_map(|s| &s.candidates)
        .filter(|c| ids.contains(c.chain.id.as_str()))
        .map(|c| &c.chain)
        .collect()
}

/// The card's section on how the rows were made.
fn how_section(cfg: &ExportConfig, notes: &[(String, usize)]) -> String {
    let rule = match cfg.format {
        ExportFormat::Preference => format!(
            "Per seed, pairs of chains from the same search tree: chosen verified against the \
             reference answer and rejected not (seeds without a reference: chosen is the \
             selected chain, rejected a chain whose value is at least {} lower); pairs sharing \
             the longest prefix of steps first, at most {} per seed.",
            cfg.min_value_margin, cfg.max_pairs_per_seed
        ),
        ExportFormat::Kto => format!(
            "One row per chain: label true for verified chains and false for wrong ones \
             (seeds without a reference: true for the selected chain, false for chains whose \
             value is at least {} lower, the others left out).",
            cfg.min_value_margin
        ),
        _ => format!(
            "One row per chain of a seed with a reference answer. Each step is a node of the \
             search tree; `values` is the Monte Carlo estimate of the node: the share of \
             verified chains among the answered terminal nodes at or below it (Math-Shepherd); \
             `labels` is `value > {}`; `visits` the node's MCTS visits. The last completion is \
             the answer, valued by its own verification.",
            cfg.prm_threshold
        ),
    };
    let mut s = format!("## How the rows were made\n\n{rule}\n\n");
    let notes: Vec<&(String, usize)> = notes.iter().filter(|(_, n)| *n > 0).collect();
    if !notes.is_empty() {
        s.push_str("| left out | count |\n|---|---:|\n");
        for (what, n) in notes {
            s.push_str(&format!("| {what} | {n} |\n"));
        }
        s.push('\n');
    }
    s
}

/// `preference`, `kto` or `prm` export of a run's output (see the module docs).
pub fn export(
    chains: &[Chain],
    rejects: &[Reject],
    out: &Path,
    dir: &Path,
    cfg: &ExportConfig,
) -> Result<ExportSummary, StageError> {
    cfg.validate()?;
    let g = gather(chains, rejects, out);
    let mut notes = g.notes.clone();
    let summary = match cfg.format {
        ExportFormat::Preference => {
            let rows = preference_rows(&g, cfg);
            let ids: BTreeSet<&str> = rows
                .iter()
                .flat_map(|r| [r.chosen_id.as_str(), r.rejected_id.as_str()])
                .collect();
            let exported = used(&g, &ids);
            let seeds: BTreeSet<&str> = rows.iter().map(|r| r.seed_id.as_str()).collect();
            notes.push(("seeds without a pair".into(), g.seeds.len() - seeds.len()));
            let refs: Vec<&PairRow> = rows.iter().collect();
            write_export(&refs, dir, cfg, &preference_batch, &|s| {
                dataset_card_with(&exported, cfg, s, &how_section(cfg, &notes))
            })?
        }
        ExportFormat::Kto => {
            let rows = kto_rows(&g, cfg);
            let ids: BTreeSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
            let exported = used(&g, &ids);
            let all: usize = g.seeds.iter().map(|s| s.candidates.len()).sum();
            notes.push(("chains without a label".into(), all - rows.len()));
            let refs: Vec<&KtoRow> = rows.iter().collect();
            write_export(&refs, dir, cfg, &kto_batch, &|s| {
                dataset_card_with(&exported, cfg, s, &how_section(cfg, &notes))
            })?
        }
        ExportFormat::Prm => {
            let (rows, skipped) = prm_rows(&g, cfg);
            let ids: BTreeSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
            let exported = used(&g, &ids);
            let unverified = g
                .seeds
                .iter()
                .flat_map(|s| &s.candidates)
                .filter(|c| c.chain.verified.is_none())
                .count();
            notes.push(("chains of seeds without a reference".into(), unverified));
            notes.push(("chains without a tree path".into(), skipped));
            let refs: Vec<&PrmRow> = rows.iter().collect();
            write_export(&refs, dir, cfg, &prm_batch, &|s| {
                dataset_card_with(&exported, cfg, s, &how_section(cfg, &notes))
            })?
        }
        f => {
            return Err(StageError::Config(format!(
                "format {} is not built from the trees",
                f.as_str()
            )))
        }
    };
    notes.retain(|(_, n)| *n > 0);
    Ok(ExportSummary { notes, ..summary })
}
