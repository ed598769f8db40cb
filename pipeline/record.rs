//! The in-memory rows that flow between stages. `store` maps them to Arrow
//! (the schemas in `schemas/` are the contract); every other module passes
//! these structs around.

use serde::{Deserialize, Serialize};

/// The three recipes, each writing its own shard kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Recipe {
    /// Teacher-forced scoring of an existing chain (Open-O1 style).
    OpenO1,
    /// MCTS synthesis with reflection (Marco style).
    MarcoCot,
    /// Best-of-n sampling on instructions.
    Instruction,
}

impl Recipe {
    pub const ALL: [Recipe; 3] = [Recipe::OpenO1, Recipe::MarcoCot, Recipe::Instruction];
    pub fn as_str(self) -> &'static str {
        match self {
            Recipe::OpenO1 => "open_o1",
            Recipe::MarcoCot => "marco_cot",
            Recipe::Instruction => "instruction",
        }
    }
}

impl std::fmt::Display for Recipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Recipe {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Recipe::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!("unknown recipe '{s}' (expected open_o1, marco_cot or instruction)")
            })
    }
}

/// One seed prompt (schemas/seeds.json).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Seed {
    pub id: String,
    pub prompt: String,
    pub system: Option<String>,
    pub reference_answer: Option<String>,
    /// An already-written response (Open-O1 input), with or without tags.
    pub response: Option<String>,
    pub source: Option<String>,
    pub lang: Option<String>,
    /// Free-form JSON object as text.
    pub meta: Option<String>,
}

/// One generated or scored chain (schemas/chains.json).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Chain {
    /// Stable id: blake3 of seed id, recipe and chain path/index.
    pub id: String,
    pub seed_id: String,
    pub recipe: Option<Recipe>,
    pub system: Option<String>,
    pub prompt: String,
    /// Text inside `<Thought>…</Thought>`, tags not included. Empty for `instruction`.
    pub reasoning: String,
    /// Text inside `<Output>…</Output>`, tags not included.
    pub answer: String,
    /// Mean token confidence over the chain, in (0, 1].
    pub reward: f64,
    /// Mean confidence of each step (action) along the chain.
    pub step_confidences: Vec<f64>,
    /// Generated (or scored) tokens in the chain.
    pub tokens: u32,
    pub reflections: u32,
    /// Against the seed's reference answer: Some(true/false), None when there is none.
    pub verified: Option<bool>,
    pub reference_answer: Option<String>,
    pub model: String,
    pub model_blake3: String,
    /// Search / sampling settings as a JSON object text.
    pub settings: String,
    /// Unix seconds, fixed per job (job setting, SOURCE_DATE_EPOCH, or the
    /// output directory's first run) so reruns are byte-identical.
    pub created_at: i64,
    /// `marco_cot`: whether the configured selection rule picked this chain.
    #[serde(default)]
    pub selected: Option<bool>,
    /// `marco_cot`: the value function's score of the chain, in [0, 1].
    #[serde(default)]
    pub value: Option<f64>,
    /// `marco_cot`: share of the tree's answered chains giving the same final answer.
    #[serde(default)]
    pub agreement: Option<f64>,
}

/// The stable id of a chain: blake3 of seed id, recipe and a discriminator
/// (the chain's node path for `marco_cot`, its index otherwise), hex.
pub fn chain_id(seed_id: &str, recipe: Recipe, discriminator: &str) -> String {
    blake3::hash(format!("{seed_id}\u{1f}{recipe}\u{1f}{discriminator}").as_bytes())
        .to_hex()
        .to_string()
}

/// A seed id as a 64-bit number (the first 8 bytes of its blake3, little
/// endian): what per-seed random streams are derived from, so a seed's draws
/// do not depend on its position in the file.
pub fn seed_hash(id: &str) -> u64 {
    let h = blake3::hash(id.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_le_bytes(b)
}

/// Job-level facts every chain row carries (the search and the recipes do
/// not know them; the runner does).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RowMeta {
    pub model: String,
    pub model_blake3: String,
    pub created_at: i64,
}

impl RowMeta {
    /// A chain row of `seed` with every seed- and job-level field filled; the
    /// recipe sets the generated parts with struct-update syntax.
    pub fn chain(&self, seed: &Seed, recipe: Recipe, discriminator: &str, settings: &str) -> Chain {
        Chain {
            id: chain_id(&seed.id, recipe, discriminator),
            seed_id: seed.id.clone(),
            recipe: Some(recipe),
            system: seed.system.clone(),
            prompt: seed.prompt.clone(),
            reference_answer: seed.reference_answer.clone(),
            model: self.model.clone(),
            model_blake3: self.model_blake3.clone(),
            settings: settings.to_string(),
            created_at: self.created_at,
            ..Chain::default()
        }
    }
}

/// Which stage rejected a row. The names are the `stage` column of the
/// reject files (schemas/rejects.json): part of the schema, never renamed.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
    strum::Display,
    strum::EnumString,
    strum::AsRefStr,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
pub enum Stage {
    /// The seed file's row cannot be a seed (empty prompt, bad field).
    #[default]
    #[strum(serialize = "ingest")]
    Ingest,
    /// The engine failed on the seed (the scripted shard worker).
    #[strum(serialize = "engine")]
    Engine,
    /// A journaled row that cannot be read back.
    #[strum(serialize = "store.journal")]
    StoreJournal,
    #[strum(serialize = "open_o1.input")]
    OpenO1Input,
    #[strum(serialize = "open_o1.prompt")]
    OpenO1Prompt,
    #[strum(serialize = "open_o1.score")]
    OpenO1Score,
    #[strum(serialize = "instruction.input")]
    InstructionInput,
    #[strum(serialize = "instruction.prompt")]
    InstructionPrompt,
    #[strum(serialize = "instruction.sample")]
    InstructionSample,
    /// A seed the search could not run (a bad prompt, a budget that does not fit).
    #[strum(serialize = "marco_cot.input")]
    MarcoCotInput,
    /// A tree that failed or reached no chain.
    #[strum(serialize = "marco_cot.search")]
    MarcoCotSearch,
    /// A chain the ship policy held back.
    #[strum(serialize = "marco_cot.ship")]
    MarcoCotShip,
    #[strum(serialize = "filter.reward")]
    FilterReward,
    #[strum(serialize = "filter.verify")]
    FilterVerify,
    #[strum(serialize = "filter.format")]
    FilterFormat,
    #[strum(serialize = "filter.length")]
    FilterLength,
    #[strum(serialize = "filter.repetition")]
    FilterRepetition,
    #[strum(serialize = "filter.language")]
    FilterLanguage,
    /// A near-duplicate of an earlier chain.
    #[strum(serialize = "dedup")]
    Dedup,
    /// Overlaps a benchmark's text.
    #[strum(serialize = "decontaminate")]
    Decontaminate,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl PartialEq<str> for Stage {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Stage {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Serialize for Stage {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Stage {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|_| serde::de::Error::custom(format!("unknown reject stage '{s}'")))
    }
}

/// A row that did not ship, with why (schemas/rejects.json).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Reject {
    pub seed_id: String,
    /// Set when a chain (not the seed itself) was rejected.
    pub chain_id: Option<String>,
    pub recipe: Option<Recipe>,
    /// Which stage rejected it: `ingest`, `filter.reward`, `dedup`, ...
    pub stage: Stage,
    /// Human-readable reason, e.g. `reward 0.41 < 0.60`, `duplicate-of <id>`.
    pub reason: String,
    /// The rejected seed or chain as JSON text, so nothing is lost.
    pub row: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use strum::VariantArray;

    /// The `stage` column values are part of the reject schema: pinned here,
    /// and each one parses back to its variant.
    #[test]
    fn stage_names_are_the_schema_strings() {
        let names: Vec<&str> = Stage::VARIANTS.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            [
                "ingest",
                "engine",
                "store.journal",
                "open_o1.input",
                "open_o1.prompt",
                "open_o1.score",
                "instruction.input",
                "instruction.prompt",
                "instruction.sample",
                "marco_cot.input",
                "marco_cot.search",
                "marco_cot.ship",
                "filter.reward",
                "filter.verify",
                "filter.format",
                "filter.length",
                "filter.repetition",
                "filter.language",
                "dedup",
                "decontaminate",
            ]
        );
        for s in Stage::VARIANTS {
            assert_eq!(s.as_str().parse::<Stage>().ok(), Some(*s));
            assert_eq!(s.to_string(), s.as_str());
            let json = serde_json::to_string(s).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
        }
        assert!("filter.bogus".parse::<Stage>().is_err());
    }
}
