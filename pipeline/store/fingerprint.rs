//! Resume identity: what determines a shard's output. A journal and a
//! completion marker carry the [`Fingerprint`] of the run that wrote them; a
//! rerun with other settings, other seed bytes or another model is refused
//! with a message naming what changed, instead of one output silently mixing
//! two configurations. The settings are the *parsed, effective* settings (a
//! whitespace or comment edit of the job file changes nothing).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One input file by content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputHash {
    /// The path as given (for messages; moving a file does not change the digest).
    pub path: String,
    pub blake3: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Fingerprint {
    /// blake3 over the parts below; journals and markers are compared by it.
    pub digest: String,
    /// The effective settings as canonical JSON.
    #[serde(default)]
    pub settings: Value,
    /// The seed files, in input order.
    #[serde(default)]
    pub seeds: Vec<InputHash>,
    /// blake3 of the model file (the scripted engine: its fixed id).
    #[serde(default)]
    pub model: String,
}

impl Fingerprint {
    pub fn new(settings: Value, seeds: Vec<InputHash>, model: String) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(b"cotforge-fingerprint/1\0");
        h.update(settings.to_string().as_bytes());
        for s in &seeds {
            h.update(b"\0seed\0");
            h.update(s.blake3.as_bytes());
        }
        h.update(b"\0model\0");
        h.update(model.as_bytes());
        Self {
            digest: h.finalize().to_hex().to_string(),
            settings,
            seeds,
            model,
        }
    }

    /// A caller-chosen digest with no parts (tests, simple processors).
    pub fn opaque(digest: impl Into<String>) -> Self {
        Self {
            digest: digest.into(),
            ..Self::default()
        }
    }

    /// What differs between `self` (this run) and `before` (what the output was
    /// made with), in words; empty when the digests agree.
    pub fn changes_since(&self, before: &Fingerprint) -> Vec<String> {
        if self.digest == before.digest {
            return Vec::new();
        }
        let mut out = Vec::new();
        if self.model != before.model && !before.model.is_empty() {
            out.push(format!(
                "the model changed (blake3 {} -> {})",
                short(&before.model),
                short(&self.model)
            ));
        }
        if self.seeds.len() != before.seeds.len() && !before.seeds.is_empty() {
            out.push(format!(
                "the seed files changed ({} files -> {})",
                before.seeds.len(),
                self.seeds.len()
            ));
        } else {
            for (a, b) in self.seeds.iter().zip(&before.seeds) {
                if a.blake3 != b.blake3 {
                    out.push(format!(
                        "the seed file {} changed (blake3 {} -> {})",
                        a.path,
                        short(&b.blake3),
                        short(&a.blake3)
                    ));
                }
            }
        }
        if self.settings != before.settings && !before.settings.is_null() {
            let mut diffs = Vec::new();
            diff("", &before.settings, &self.settings, &mut diffs);
            let n = diffs.len();
            diffs.truncate(6);
            let more = if n > 6 {
                format!(" (and {} more)", n - 6)
            } else {
                String::new()
            };
            out.push(format!(
                "the job's settings changed: {}{more}",
                diffs.join("; ")
            ));
        }
        if out.is_empty() {
            out.push(format!(
                "the job's fingerprint changed ({} -> {})",
                short(&before.digest),
                short(&self.digest)
            ));
        }
        out
    }
}

/// The blake3 of each input file, in order.
pub fn hash_inputs<P: AsRef<std::path::Path>>(paths: &[P]) -> super::Result<Vec<InputHash>> {
    paths
        .iter()
        .map(|p| {
            let p = p.as_ref();
            super::blake3_file(p).map(|(h, _)| InputHash {
                path: p.display().to_string(),
                blake3: h,
            })
        })
        .collect()
}

impl From<&str> for Fingerprint {
    fn from(s: &str) -> Self {
        Self::opaque(s)
    }
}

impl From<String> for Fingerprint {
    fn from(s: String) -> Self {
        Self::opaque(s)
    }
}

fn short(h: &str) -> &str {
    &h[..h.len().min(12)]
}

fn show(v: Option<&Value>) -> String {
    match v {
        None => "(absent)".into(),
        Some(v) => {
            let s = v.to_string();
            if s.len() > 60 {
                format!(
                    "{}…",
                    &s[..s.char_indices().nth(57).map_or(s.len(), |c| c.0)]
                )
            } else {
                s
            }
        }
    }
}

/// Paths (`engine.n_ctx`, `recipe.search.expand_k`) where `a` and `b` differ.
fn diff(at: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => diff(&p, u, v, out),
                    (u, v) => out.push(format!("{p}: {} -> {}", show(u), show(v))),
                }
            }
        }
        _ if a != b => out.push(format!("{at}: {} -> {}", show(Some(a)), show(Some(b)))),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_name_the_input() {
        let s = serde_json::json!({"engine": {"n_ctx": 8192}, "seed": 1});
        let seeds = vec![InputHash {
            path: "a.parquet".into(),
            blake3: "aaaa".into(),
        }];
        let before = Fingerprint::new(s.clone(), seeds.clone(), "m1".into());
        assert!(before.changes_since(&before).is_empty());
        let model = Fingerprint::new(s.clone(), seeds.clone(), "m2".into());
        assert_eq!(
            model.changes_since(&before),
            ["the model changed (blake3 m1 -> m2)"]
        );
        let mut other = seeds.clone();
        other[0].blake3 = "bbbb".into();
        let seed = Fingerprint::new(s, other, "m1".into());
        assert_eq!(
            seed.changes_since(&before),
            ["the seed file a.parquet changed (blake3 aaaa -> bbbb)"]
        );
        let set = Fingerprint::new(
            serde_json::json!({"engine": {"n_ctx": 4096}, "seed": 1}),
            seeds,
            "m1".into(),
        );
        assert_eq!(
            set.changes_since(&before),
            ["the job's settings changed: engine.n_ctx: 8192 -> 4096"]
        );
    }
}
