//! The data viewer's payload: a sample of shipped and rejected rows with
//! their steps, and the search trees they came from (`OUT/trees/<shard>/<seed
//! id>.json`). The report embeds it as JSON ([`script_json`]) and its inline
//! script draws the list, a chain and a tree.
//!
//! Rows are read as JSON objects, not as [`Chain`] fields, so columns other
//! branches add (`selected`, `value`, `agreement`, ...) show up as extras
//! without this module knowing them. Trees are read the same way, so a tree
//! written by another version still draws.
//!
//! Large runs show a sample: at most [`ViewerOptions::max_rows`] rows, half
//! shipped and half rejected when both have more, picked by the blake3 of
//! the row key (deterministic), with the totals alongside.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use super::reason_category;
use crate::record::{Chain, Reject};

/// Limits of the embedded payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewerOptions {
    pub max_rows: usize,
    /// Trees embedded (the first rows' seeds); later rows show no tree.
    pub max_trees: usize,
    /// Characters of node text kept per tree node.
    pub max_node_text: usize,
}

impl Default for ViewerOptions {
    fn default() -> Self {
        Self {
            max_rows: 1000,
            max_trees: 200,
            max_node_text: 400,
        }
    }
}

/// One step of a chain: an action of the tree path, or a blank-line
/// separated part of the reasoning when there is no tree.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    pub text: String,
    /// Mean token confidence of the step (None: injected text, or unknown).
    pub conf: Option<f64>,
    pub reflection: bool,
    /// The tree node of the step.
    pub node: Option<u32>,
}

/// One row of the list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// Unique in the payload (the chain id, or `seed:<id>#<n>` for seed rejects).
    pub key: String,
    /// `shipped` or `rejected`.
    pub status: &'static str,
    pub id: Option<String>,
    pub seed: String,
    pub recipe: String,
    pub reward: Option<f64>,
    pub verified: Option<bool>,
    pub tokens: Option<u64>,
    pub reflections: Option<u64>,
    pub stage: Option<String>,
    pub reason: Option<String>,
    /// The reason with numbers, ids and quotes elided (the filter's values).
    pub category: Option<String>,
    pub prompt: String,
    pub system: Option<String>,
    pub reasoning: String,
    pub answer: String,
    pub reference: Option<String>,
    pub steps: Vec<Step>,
    /// Other non-null columns of the row (`model`, and any a newer schema adds).
    pub extra: BTreeMap<String, Value>,
    /// Key into [`ViewerData::trees`].
    pub tree: Option<String>,
    /// Tree nodes of the chain, root first.
    pub path: Vec<u32>,
}

/// One node of an embedded tree.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeView {
    pub id: u32,
    pub parent: Option<u32>,
    pub n: u64,
    pub q: f64,
    pub conf: Option<f64>,
    pub reflection: bool,
    pub terminal: Option<String>,
    pub answer: Option<String>,
    pub reward: Option<f64>,
    pub verified: Option<bool>,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TreeView {
    pub seed: String,
    pub file: String,
    pub stop: Option<String>,
    /// The path the search selected.
    pub best: Vec<u32>,
    pub nodes: Vec<NodeView>,
}

/// The viewer's payload.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ViewerData {
    pub shipped_total: usize,
    pub rejected_total: usize,
    pub shipped_shown: usize,
    pub rejected_shown: usize,
    /// Tree files found under `OUT/trees`.
    pub trees_found: usize,
    pub rows: Vec<Row>,
    pub trees: BTreeMap<String, TreeView>,
}

/// Columns shown in their own places (everything else non-null is an extra).
const SHOWN: &[&str] = &[
    "id",
    "seed_id",
    "recipe",
    "system",
    "prompt",
    "reasoning",
    "answer",
    "reward",
    "step_confidences",
    "tokens",
    "reflections",
    "verified",
    "reference_answer",
    "model_blake3",
    "settings",
    "created_at",
    "response",
    "source",
    "lang",
    "meta",
];

fn s(v: &Value, k: &str) -> Option<String> {
    match v.get(k)? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

fn floats(v: Option<&Value>) -> Vec<f64> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

/// First 52 bits of blake3(key): the sampling order.
fn rank(key: &str) -> u64 {
    let h = blake3::hash(key.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_le_bytes(b)
}

/// Positions of the `k` items with the smallest rank, in input order.
fn sample(keys: &[String], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..keys.len()).collect();
    if keys.len() > k {
        idx.sort_by_key(|&i| (rank(&keys[i]), i));
        idx.truncate(k);
        idx.sort_unstable();
    }
    idx
}

/// Steps from the reasoning text: blank-line separated parts, the
/// reflection phrase marked, confidences paired when the counts agree.
fn text_steps(reasoning: &str, confs: &[f64], reflection: &str) -> Vec<Step> {
    let parts: Vec<&str> = reasoning
        .split("\n\n")
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    let is_refl = |p: &str| !reflection.is_empty() && p == reflection.trim();
    let actions = parts.iter().filter(|p| !is_refl(p)).count();
    let mut confs = confs.iter().copied();
    let pair = actions == confs.len();
    parts
        .into_iter()
        .map(|p| {
            let reflection = is_refl(p);
            Step {
                text: p.to_string(),
                conf: (!reflection && pair).then(|| confs.next()).flatten(),
                reflection,
                node: None,
            }
        })
        .collect()
}

/// A tree file as the viewer needs it, plus each answered node's chain text.
/// Also what the preference / KTO / PRM export reads trees with
/// ([`crate::stages::tree_export`]), so a chain maps to its tree path one way.
pub struct LoadedTree {
    pub view: TreeView,
    /// Raw node texts by node id (untruncated), for matching chains.
    texts: HashMap<u32, String>,
    confs: HashMap<u32, Option<f64>>,
    parents: HashMap<u32, Option<u32>>,
}

/// Reads a tree file; `None` (with a warning when it is not JSON) when unreadable.
pub fn load_tree(path: &Path, max_text: usize) -> Option<LoadedTree> {
    let text = std::fs::read_to_string(path).ok()?;
    let v: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!("{}: unreadable tree ({e}); not shown", path.display());
            return None;
        }
    };
    let mut nodes = Vec::new();
    let (mut texts, mut confs, mut parents) = (HashMap::new(), HashMap::new(), HashMap::new());
    for n in v.get("nodes")?.as_array()? {
        let id = n.get("id")?.as_u64()? as u32;
        let parent = n.get("parent").and_then(Value::as_u64).map(|p| p as u32);
        let t = s(n, "text").unwrap_or_default();
        let conf = mean(&floats(n.get("confidences")));
        let answer = n.get("answer").filter(|a| !a.is_null());
        let short: String = if t.chars().count() > max_text {
            t.chars().take(max_text).chain(['…']).collect()
        } else {
            t.clone()
        };
        nodes.push(NodeView {
            id,
            parent,
            n: n.get("n").and_then(Value::as_u64).unwrap_or(0),
            q: n.get("q").and_then(Value::as_f64).unwrap_or(0.0),
            conf,
            reflection: n
                .get("reflection")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            terminal: s(n, "terminal"),
            answer: answer.and_then(|a| s(a, "text")),
            reward: answer.and_then(|a| a.get("reward")).and_then(Value::as_f64),
            verified: answer
                .and_then(|a| a.get("verified"))
                .and_then(Value::as_bool),
            text: short,
        });
        texts.insert(id, t);
        confs.insert(id, conf);
        parents.insert(id, parent);
    }
    let best = v
        .get("best_path")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_u64().map(|x| x as u32))
                .collect()
        })
        .unwrap_or_default();
    Some(LoadedTree {
        view: TreeView {
            seed: s(&v, "seed_id").unwrap_or_default(),
            file: path.display().to_string(),
            stop: s(&v, "stop"),
            best,
            nodes,
        },
        texts,
        confs,
        parents,
    })
}

impl LoadedTree {
    /// Root..=`node` by parent links.
    pub fn path_to(&self, node: u32) -> Vec<u32> {
        let mut p = vec![node];
        let mut cur = node;
        while let Some(Some(parent)) = self.parents.get(&cur) {
            if p.len() > self.parents.len() {
                break; // a cycle in a damaged file
            }
            p.push(*parent);
            cur = *parent;
        }
        p.reverse();
        p
    }

    /// The first answered node (export order) whose chain text is `reasoning` / `answer`.
    pub fn find_chain(&self, reasoning: &str, answer: &str) -> Option<Vec<u32>> {
        self.view.nodes.iter().find_map(|n| {
            if n.answer.as_deref() != Some(answer) {
                return None;
            }
            let path = self.path_to(n.id);
            let text: String = path
                .iter()
                .skip(1)
                .filter_map(|id| self.texts.get(id).map(String::as_str))
                .collect();
            (text.trim() == reasoning).then_some(path)
        })
    }

    /// The steps of a path: its nodes after the root whose text is not blank (trimmed).
    pub fn steps(&self, path: &[u32]) -> Vec<Step> {
        let by_id: HashMap<u32, &NodeView> = self.view.nodes.iter().map(|n| (n.id, n)).collect();
        path.iter()
            .skip(1)
            .filter_map(|id| {
                let n = by_id.get(id)?;
                let text = self.texts.get(id).cloned().unwrap_or_default();
                (!text.trim().is_empty()).then(|| Step {
                    text: text.trim().to_string(),
                    conf: self.confs.get(id).copied().flatten(),
                    reflection: n.reflection,
                    node: Some(*id),
                })
            })
            .collect()
    }
}

/// seed id -> tree file, from the head of each `OUT/trees/*/*.json`
/// (`seed_id` is the export's first field; other files are read whole).
pub fn tree_files(out: &Path) -> BTreeMap<String, PathBuf> {
    let mut map = BTreeMap::new();
    let re = regex::Regex::new(r#""seed_id"\s*:\s*("(?:[^"\\]|\\.)*")"#).ok();
    for entry in walkdir::WalkDir::new(out.join("trees"))
        .max_depth(2)
        .sort_by_file_name()
        .into_iter()
        .flatten()
    {
        let p = entry.path();
        let name = entry.file_name().to_string_lossy();
        if !entry.file_type().is_file() || !name.ends_with(".json") || name.starts_with('.') {
            continue;
        }
        let mut head = vec![0u8; 2048];
        let n = std::fs::File::open(p)
            .and_then(|mut f| f.read(&mut head))
            .unwrap_or(0);
        let head = String::from_utf8_lossy(&head[..n]).into_owned();
        let seed = re
            .as_ref()
            .and_then(|re| re.captures(&head))
            .and_then(|c| serde_json::from_str::<String>(&c[1]).ok())
            .or_else(|| {
                let v: Value = serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()?;
                s(&v, "seed_id")
            });
        if let Some(seed) = seed {
            map.entry(seed).or_insert_with(|| p.to_path_buf());
        }
    }
    map
}

struct Source<'a> {
    key: String,
    status: &'static str,
    value: Value,
    reject: Option<&'a Reject>,
}

impl ViewerData {
    /// The payload for `chains` (shipped) and `rejects`, with trees from `out` when given.
    pub fn build(
        chains: &[Chain],
        rejects: &[Reject],
        out: Option<&Path>,
        opts: &ViewerOptions,
    ) -> Self {
        let ship_keys: Vec<String> = chains.iter().map(|c| c.id.clone()).collect();
        let rej_keys: Vec<String> = rejects
            .iter()
            .enumerate()
            .map(|(i, r)| match &r.chain_id {
                Some(id) => format!("{}:{id}", r.stage),
                None => format!("seed:{}#{i}", r.seed_id),
            })
            .collect();
        let ship_quota = chains
            .len()
            .min((opts.max_rows / 2).max(opts.max_rows.saturating_sub(rejects.len())));
        let rej_quota = rejects.len().min(opts.max_rows.saturating_sub(ship_quota));
        let mut sources: Vec<Source> = Vec::new();
        for i in sample(&ship_keys, ship_quota) {
            sources.push(Source {
                key: ship_keys[i].clone(),
                status: "shipped",
                value: serde_json::to_value(&chains[i]).unwrap_or(Value::Null),
                reject: None,
            });
        }
        for i in sample(&rej_keys, rej_quota) {
            let r = &rejects[i];
            sources.push(Source {
                key: rej_keys[i].clone(),
                status: "rejected",
                value: serde_json::from_str(&r.row).unwrap_or(Value::Null),
                reject: Some(r),
            });
        }
        let files = out.map(tree_files).unwrap_or_default();
        let reflection = crate::search::SearchPrompts::default().reflection;
        let mut loaded: BTreeMap<String, Option<LoadedTree>> = BTreeMap::new();
        let mut rows = Vec::with_capacity(sources.len());
        for src in sources {
            let v = &src.value;
            let r = src.reject;
            let seed = r
                .map(|r| r.seed_id.clone())
                .or_else(|| s(v, "seed_id"))
                .unwrap_or_default();
            let recipe = r
                .and_then(|r| r.recipe)
                .map(|x| x.as_str().to_string())
                .or_else(|| s(v, "recipe"))
                .unwrap_or_else(|| "unknown".into());
            let reasoning = s(v, "reasoning").unwrap_or_default();
            let answer = s(v, "answer").unwrap_or_default();
            let is_chain = v.get("reasoning").is_some();
            let confs = floats(v.get("step_confidences"));
            let mut tree = None;
            let mut path = Vec::new();
            if is_chain {
                if let Some(file) = files.get(&seed) {
                    let room = loaded.len() < opts.max_trees;
                    if room || loaded.contains_key(&seed) {
                        let t = loaded
                            .entry(seed.clone())
                            .or_insert_with(|| load_tree(file, opts.max_node_text));
                        if let Some(t) = t {
                            if let Some(p) = t.find_chain(&reasoning, &answer) {
                                path = p;
                            }
                            tree = Some(seed.clone());
                        }
                    }
                }
            }
            let steps = match loaded.get(&seed).and_then(Option::as_ref) {
                Some(t) if !path.is_empty() => t.steps(&path),
                _ => text_steps(&reasoning, &confs, &reflection),
            };
            let extra = v
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter(|(k, x)| !SHOWN.contains(&k.as_str()) && !x.is_null())
                        .map(|(k, x)| (k.clone(), x.clone()))
                        .collect()
                })
                .unwrap_or_default();
            rows.push(Row {
                key: src.key,
                status: src.status,
                id: r
                    .and_then(|r| r.chain_id.clone())
                    .or_else(|| s(v, "id").filter(|_| is_chain)),
                seed,
                recipe,
                reward: is_chain
                    .then(|| v.get("reward").and_then(Value::as_f64))
                    .flatten(),
                verified: v.get("verified").and_then(Value::as_bool),
                tokens: is_chain
                    .then(|| v.get("tokens").and_then(Value::as_u64))
                    .flatten(),
                reflections: is_chain
                    .then(|| v.get("reflections").and_then(Value::as_u64))
                    .flatten(),
                stage: r.map(|r| r.stage.to_string()),
                reason: r.map(|r| r.reason.clone()),
                category: r
                    .map(|r| format!("{}: {}", r.stage, reason_category(r.stage, &r.reason))),
                prompt: s(v, "prompt").unwrap_or_default(),
                system: s(v, "system"),
                reasoning,
                answer,
                reference: s(v, "reference_answer"),
                steps,
                extra,
                tree,
                path,
            });
        }
        let shipped_shown = rows.iter().filter(|r| r.status == "shipped").count();
        ViewerData {
            shipped_total: chains.len(),
            rejected_total: rejects.len(),
            shipped_shown,
            rejected_shown: rows.len() - shipped_shown,
            trees_found: files.len(),
            trees: loaded
                .into_iter()
                .filter_map(|(k, t)| t.map(|t| (k, t.view)))
                .collect(),
            rows,
        }
    }
}

/// JSON safe inside `<script type="application/json">`: `<`, `>`, `&` and
/// the JavaScript line separators are written as `\uXXXX` escapes (they can
/// only occur inside JSON strings, where the escape means the same), so seed
/// text such as `</script>` cannot end the element.
pub fn script_json<T: Serialize>(v: &T) -> String {
    let raw = serde_json::to_string(v).unwrap_or_else(|_| "null".into());
    let mut out = String::with_capacity(raw.len() + raw.len() / 16);
    for c in raw.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_json_cannot_close_the_script_element() {
        let v = serde_json::json!({"p": "</script><script>alert(1)</script> & \u{2028}"});
        let j = script_json(&v);
        assert!(!j.contains('<') && !j.contains('>') && !j.contains('&'));
        let back: Value = serde_json::from_str(&j).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn text_steps_pair_confidences_and_mark_reflections() {
        let r = "Wait! Maybe I made some mistakes! I need to rethink from scratch.";
        let steps = text_steps(&format!("a\n\nb\n\n{r}\n\nc"), &[0.1, 0.2, 0.3], r);
        assert_eq!(steps.len(), 4);
        assert_eq!(
            steps.iter().map(|s| s.conf).collect::<Vec<_>>(),
            [Some(0.1), Some(0.2), None, Some(0.3)]
        );
        assert!(steps[2].reflection);
        // Counts disagree: no confidences rather than misplaced ones.
        assert!(text_steps("a\n\nb", &[0.5], r)
            .iter()
            .all(|s| s.conf.is_none()));
    }

    #[test]
    fn sample_is_deterministic_and_ordered() {
        let keys: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
        let a = sample(&keys, 10);
        assert_eq!(a.len(), 10);
        assert_eq!(a, sample(&keys, 10));
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(sample(&keys, 200).len(), 100);
    }
}
