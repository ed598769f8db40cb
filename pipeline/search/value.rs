//! Value functions: what a terminal chain is worth to the search (the value
//! backed up along its path) and to the selection and ship rules.
//!
//! Each is a small type behind [`ValueFunction`]; a [`ValueSpec`] names one
//! (`value = "self_consistency"`) or mixes several with weights
//! (`value = { confidence = 0.3, self_consistency = 0.7 }`), and
//! [`ValueSpec::build`] turns it into the runtime [`Value`].

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::SearchError;

/// The value functions a search can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueKind {
    /// The paper's reward: mean top-5 confidence of the generated tokens.
    Confidence,
    /// 1 when the answer checks against the seed's reference answer, else 0
    /// (confidence breaks ties); plain confidence when the seed has none.
    Verifier,
    /// Share of the tree's answered chains whose final answer agrees with this one.
    SelfConsistency,
    /// A second model's score of the chain under the rubric of prompts/judge.toml.
    Judge,
}

names!(ValueKind, "value function", {
    Confidence => "confidence",
    Verifier => "verifier",
    SelfConsistency => "self_consistency",
    Judge => "judge",
});

/// The value as configured: one function, or a weighted mix.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueSpec {
    /// (function, weight); one entry with any weight means that function alone.
    pub parts: Vec<(ValueKind, f64)>,
}

impl Default for ValueSpec {
    fn default() -> Self {
        Self::one(ValueKind::Confidence)
    }
}

impl ValueSpec {
    pub fn one(kind: ValueKind) -> Self {
        Self {
            parts: vec![(kind, 1.0)],
        }
    }

    /// A weighted mix (weights are normalized by [`ValueSpec::build`]).
    pub fn mix(parts: &[(ValueKind, f64)]) -> Self {
        Self {
            parts: parts.to_vec(),
        }
    }

    pub fn uses(&self, kind: ValueKind) -> bool {
        self.parts.iter().any(|&(k, w)| k == kind && w > 0.0)
    }

    /// A short name for tables: `verifier`, `confidence=0.3+self_consistency=0.7`.
    pub fn label(&self) -> String {
        if let [(k, _)] = self.parts.as_slice() {
            return k.to_string();
        }
        self.parts
            .iter()
            .map(|(k, w)| format!("{k}={w}"))
            .collect::<Vec<_>>()
            .join("+")
    }

    /// Validate the weights and build the runtime value.
    pub fn build(&self) -> Result<Value, SearchError> {
        let bad = |m: String| Err(SearchError::Config(format!("value: {m}")));
        if self.parts.is_empty() {
            return bad("names no value function".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for &(k, w) in &self.parts {
            if !(w.is_finite() && w >= 0.0) {
                return bad(format!("weight of {k} must be finite and >= 0, got {w}"));
            }
            if !seen.insert(k) {
                return bad(format!("{k} appears twice"));
            }
        }
        let sum: f64 = self.parts.iter().map(|p| p.1).sum();
        if sum <= 0.0 {
            return bad("the weights sum to 0".into());
        }
        Ok(Value {
            parts: self
                .parts
                .iter()
                .filter(|p| p.1 > 0.0)
                .map(|&(k, w)| (w / sum, function(k)))
                .collect(),
            spec: self.clone(),
        })
    }
}

impl Serialize for ValueSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if let [(k, w)] = self.parts.as_slice() {
            if *w == 1.0 {
                return s.serialize_str(k.as_str());
            }
        }
        let m: BTreeMap<&str, f64> = self.parts.iter().map(|(k, w)| (k.as_str(), *w)).collect();
        m.serialize(s)
    }
}

impl<'de> Deserialize<'de> for ValueSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ValueSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a value function name (\"confidence\", \"verifier\", \"self_consistency\", \"judge\") \
                     or a table of weights such as { confidence = 0.3, self_consistency = 0.7 }",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ValueSpec, E> {
                v.parse().map(ValueSpec::one).map_err(E::custom)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<ValueSpec, A::Error> {
                let mut parts = Vec::new();
                while let Some((k, w)) = m.next_entry::<String, f64>()? {
                    let k: ValueKind = k.parse().map_err(de::Error::custom)?;
                    parts.push((k, w));
                }
                Ok(ValueSpec { parts })
            }
        }
        d.deserialize_any(V)
    }
}

/// What a value function sees of one answered chain.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChainView<'a> {
    /// Mean confidence (of the rollout while searching, of the whole chain after).
    pub confidence: f64,
    pub verified: Option<bool>,
    /// The answer's vote key ([`crate::stages::answer::answer_key`]).
    pub key: Option<&'a str>,
    pub judge: Option<f64>,
}

/// The final-answer votes of a tree's answered chains (one vote per answered terminal).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Votes {
    counts: BTreeMap<String, u32>,
    total: u32,
}

impl Votes {
    pub fn add(&mut self, key: Option<&str>) {
        self.total += 1;
        if let Some(k) = key {
            *self.counts.entry(k.to_string()).or_default() += 1;
        }
    }
    /// Answered chains counted.
    pub fn total(&self) -> u32 {
        self.total
    }
    pub fn count(&self, key: Option<&str>) -> u32 {
        key.and_then(|k| self.counts.get(k)).copied().unwrap_or(0)
    }
    /// Share of the votes that `key` holds; 0 for an answer without a key.
    pub fn share(&self, key: Option<&str>) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.count(key) as f64 / self.total as f64
        }
    }
}

/// One value function. Values are in [0, 1].
pub trait ValueFunction: Send + Sync + fmt::Debug {
    fn value(&self, chain: &ChainView<'_>, votes: &Votes) -> f64;
}

#[derive(Debug)]
struct Confidence;
impl ValueFunction for Confidence {
    fn value(&self, c: &ChainView<'_>, _: &Votes) -> f64 {
        c.confidence
    }
}

/// Weight of confidence inside the verifier's value: enough to order chains
/// that verify alike, never enough to lift a wrong chain over a right one.
const VERIFIER_TIE_BREAK: f64 = 0.1;

#[derive(Debug)]
struct Verifier;
impl ValueFunction for Verifier {
    fn value(&self, c: &ChainView<'_>, _: &Votes) -> f64 {
        let t = VERIFIER_TIE_BREAK * c.confidence;
        match c.verified {
            Some(true) => 1.0 - VERIFIER_TIE_BREAK + t,
            Some(false) => t,
            None => c.confidence,
        }
    }
}

#[derive(Debug)]
struct SelfConsistency;
impl ValueFunction for SelfConsistency {
    fn value(&self, c: &ChainView<'_>, votes: &Votes) -> f64 {
        votes.share(c.key)
    }
}

#[derive(Debug)]
struct Judge;
impl ValueFunction for Judge {
    fn value(&self, c: &ChainView<'_>, _: &Votes) -> f64 {
        // Every answered chain is judged before its value is read; an
        // unjudged one (the judge failed) counts as undecided.
        c.judge.unwrap_or(0.5)
    }
}

fn function(k: ValueKind) -> Box<dyn ValueFunction> {
    match k {
        ValueKind::Confidence => Box::new(Confidence),
        ValueKind::Verifier => Box::new(Verifier),
        ValueKind::SelfConsistency => Box::new(SelfConsistency),
        ValueKind::Judge => Box::new(Judge),
    }
}

/// The runtime value: a weighted sum of value functions (weights sum to 1).
#[derive(Debug)]
pub struct Value {
    parts: Vec<(f64, Box<dyn ValueFunction>)>,
    spec: ValueSpec,
}

impl Value {
    pub fn spec(&self) -> &ValueSpec {
        &self.spec
    }
    /// Whether chains must be judged before their value is known.
    pub fn needs_judge(&self) -> bool {
        self.spec.uses(ValueKind::Judge)
    }
}

impl ValueFunction for Value {
    fn value(&self, chain: &ChainView<'_>, votes: &Votes) -> f64 {
        let v: f64 = self
            .parts
            .iter()
            .map(|(w, f)| w * f.value(chain, votes))
            .sum();
        v.clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(confidence: f64, verified: Option<bool>, key: Option<&str>) -> ChainView<'_> {
        ChainView {
            confidence,
            verified,
            key,
            judge: None,
        }
    }

    #[test]
    fn names_and_mixes_parse_from_toml() {
        #[derive(Deserialize, Serialize, Debug, PartialEq)]
        struct T {
            value: ValueSpec,
        }
        let one: T = toml::from_str("value = \"self_consistency\"").unwrap();
        assert_eq!(one.value, ValueSpec::one(ValueKind::SelfConsistency));
        let mix: T =
            toml::from_str("value = { confidence = 0.3, self_consistency = 0.7 }").unwrap();
        assert_eq!(
            mix.value,
            ValueSpec::mix(&[
                (ValueKind::Confidence, 0.3),
                (ValueKind::SelfConsistency, 0.7)
            ])
        );
        for t in [&one, &mix] {
            let back: T = toml::from_str(&toml::to_string(t).unwrap()).unwrap();
            assert_eq!(&back, t);
        }
        let e = toml::from_str::<T>("value = \"confidance\"").unwrap_err();
        assert!(e.to_string().contains("unknown value function"), "{e}");
        let e = toml::from_str::<T>("value = { verifer = 1.0 }").unwrap_err();
        assert!(e.to_string().contains("unknown value function"), "{e}");
        assert!(ValueSpec::mix(&[(ValueKind::Confidence, -1.0)])
            .build()
            .is_err());
        assert!(ValueSpec::mix(&[(ValueKind::Confidence, 0.0)])
            .build()
            .is_err());
    }

    #[test]
    fn each_function_scores_as_documented() {
        let mut votes = Votes::default();
        for k in [Some("7"), Some("7"), Some("5"), None] {
            votes.add(k);
        }
        let v = |k: ValueKind, c: &ChainView| ValueSpec::one(k).build().unwrap().value(c, &votes);
        let right = view(0.4, Some(true), Some("7"));
        let wrong = view(0.9, Some(false), Some("5"));
        assert_eq!(v(ValueKind::Confidence, &right), 0.4);
        // The verifier ranks every right chain above every wrong one, confidence inside.
        assert!(v(ValueKind::Verifier, &right) > v(ValueKind::Verifier, &wrong));
        assert!(
            v(ValueKind::Verifier, &view(0.5, Some(true), None))
                > v(ValueKind::Verifier, &view(0.4, Some(true), None))
        );
        assert_eq!(v(ValueKind::Verifier, &view(0.3, None, None)), 0.3);
        assert_eq!(v(ValueKind::SelfConsistency, &right), 0.5);
        assert_eq!(v(ValueKind::SelfConsistency, &wrong), 0.25);
        assert_eq!(v(ValueKind::SelfConsistency, &view(0.9, None, None)), 0.0);
        let judged = ChainView {
            judge: Some(0.8),
            ..right
        };
        assert_eq!(v(ValueKind::Judge, &judged), 0.8);
        let mix = ValueSpec::mix(&[
            (ValueKind::Confidence, 3.0),
            (ValueKind::SelfConsistency, 7.0),
        ])
        .build()
        .unwrap();
        assert!((mix.value(&right, &votes) - (0.3 * 0.4 + 0.7 * 0.5)).abs() < 1e-12);
        assert!(!mix.needs_judge());
        assert!(ValueSpec::one(ValueKind::Judge)
            .build()
            .unwrap()
            .needs_judge());
    }
}
