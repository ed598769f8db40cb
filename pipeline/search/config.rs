//! Search settings. One serde struct so a job file, the CLI and tests all
//! describe a search the same way; unknown keys are rejected so a typo never
//! silently falls back to a default.

use serde::{Deserialize, Serialize};

use super::judge::JudgeConfig;
use super::prompts::SearchPrompts;
use super::value::ValueSpec;
use super::SearchError;

/// How much text one action (one tree edge) covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Granularity {
    /// Up to the step delimiter (default a blank line), bounded by `step_max_tokens`.
    #[serde(rename = "step")]
    Step,
    /// Fixed 32-token actions.
    #[serde(rename = "mini-step-32")]
    MiniStep32,
    /// Fixed 64-token actions.
    #[serde(rename = "mini-step-64")]
    MiniStep64,
    /// One token per action.
    #[serde(rename = "token")]
    Token,
}

names!(Granularity, "granularity", {
    Step => "step",
    MiniStep32 => "mini-step-32",
    MiniStep64 => "mini-step-64",
    Token => "token",
});

impl Granularity {
    /// Fixed action length in tokens, if this granularity has one.
    pub fn fixed_len(self) -> Option<u32> {
        match self {
            Granularity::Step => None,
            Granularity::MiniStep32 => Some(32),
            Granularity::MiniStep64 => Some(64),
            Granularity::Token => Some(1),
        }
    }
}

/// When a finished chain gets the reflection phrase and continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReflectionPolicy {
    /// Never.
    Off,
    /// When the seed has a reference answer and the chain's answer does not match it.
    OnWrong,
    /// When the chain's reward is below `low_reward_threshold`.
    OnLowReward,
    /// After every chain (up to `max_per_chain`).
    Always,
}

names!(ReflectionPolicy, "reflection policy", {
    Off => "off",
    OnWrong => "on_wrong",
    OnLowReward => "on_low_reward",
    Always => "always",
});

/// Reflection settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReflectionConfig {
    pub policy: ReflectionPolicy,
    /// At most this many reflections in one chain.
    pub max_per_chain: u32,
    /// `on_low_reward` reflects when the chain reward is below this.
    pub low_reward_threshold: f64,
}

impl Default for ReflectionConfig {
    fn default() -> Self {
        Self {
            policy: ReflectionPolicy::OnWrong,
            max_per_chain: 1,
            low_reward_threshold: 0.5,
        }
    }
}

/// Which terminal chain a tree reports as its pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SelectRule {
    /// The paper's rule: follow the most visited child from the root.
    MostVisited,
    /// The terminal chain with the highest value (the value function's
    /// score; with the default `confidence` value, the highest reward).
    HighestReward,
    /// The most frequent final answer over the tree's answered chains; of its
    /// chains, the one with the highest value.
    MajorityVote,
}

names!(SelectRule, "select rule", {
    MostVisited => "most_visited",
    HighestReward => "highest_reward",
    MajorityVote => "majority_vote",
});

/// Which of a tree's chains ship (the rest go to the rejected shard with the reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShipPolicy {
    /// Only the chain the selection rule picks (reason for the rest: `not-selected`).
    Selected,
    /// Every chain whose answer checks against the reference (`unverified` otherwise).
    Verified,
    /// The `ship_k` chains of highest value (`not-selected` for the rest).
    TopK,
    /// Every distinct chain (the filters still apply).
    All,
}

names!(ShipPolicy, "ship policy", {
    Selected => "selected",
    Verified => "verified",
    TopK => "top_k",
    All => "all",
});

impl ShipPolicy {
    /// The default: `verified` when the seed has a reference answer, else `selected`.
    pub fn default_for(has_reference: bool) -> Self {
        if has_reference {
            ShipPolicy::Verified
        } else {
            ShipPolicy::Selected
        }
    }
}

/// Everything that shapes one tree search. Defaults follow the paper where it
/// says something (c = 1.414, temperature 0.7, top-p 0.9, K = 3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SearchConfig {
    /// Root of every random choice; each tree derives its own from this and the seed id.
    pub seed: u64,
    pub granularity: Granularity,
    /// Step delimiter for `granularity = "step"`.
    pub step_delimiter: String,
    /// Longest step (tokens) before it is cut without a delimiter.
    pub step_max_tokens: u32,
    /// Children sampled per expansion (K).
    pub expand_k: u32,
    /// UCT exploration constant.
    pub c_puct: f64,
    pub temperature: f32,
    pub top_p: f32,
    /// Sampling temperature of the answer inside `<Output>`; 0 = greedy.
    pub answer_temperature: f32,
    /// Rollouts (generation streams) per tree.
    pub max_rollouts: u32,
    /// Most actions in one chain between reflections (a "step cap"). 0 = auto:
    /// 12 steps at `step` granularity; at a fixed granularity, as many actions
    /// as `max_thought_tokens` holds (12 actions of one token would cut every
    /// thought at 12 tokens).
    pub max_depth: u32,
    /// Most tokens sampled for one tree, answers included. Never exceeded.
    pub max_tree_tokens: u32,
    /// Most thought tokens in one chain between reflections.
    pub max_thought_tokens: u32,
    /// Most tokens of one answer (inside `<Output>`).
    pub answer_max_tokens: u32,
    /// Stop a tree once it has this many distinct terminal chains (0 = off).
    pub early_stop_chains: u32,
    /// Stop a tree once the root's best child holds this share of visits (0 = off)...
    pub early_stop_share: f64,
    /// ...but only after the root has this many visits.
    pub early_stop_min_visits: u32,
    pub reflection: ReflectionConfig,
    pub select: SelectRule,
    /// What a terminal chain is worth: one value function or a weighted mix.
    pub value: ValueSpec,
    /// Which chains ship; `None`: `verified` when the seed has a reference answer, else `selected`.
    pub ship: Option<ShipPolicy>,
    /// Chains `ship = "top_k"` ships per seed.
    pub ship_k: u32,
    /// Stop a tree once it has this many distinct verified chains (0 = off):
    /// a solved seed then leaves its budget unspent.
    pub stop_after_verified: u32,
    /// Trees of one batch that stop with budget left (solved: see
    /// `stop_after_verified`) pass it on to the batch's unsolved trees, which
    /// search on: a batch never samples more than its seeds' budgets together.
    pub pool_unspent: bool,
    /// The second engine of `value = "judge"`.
    pub judge: Option<JudgeConfig>,
    /// System prompt when the seed has none; `None` uses prompts/search.toml, `""` sends none.
    pub system_prompt: Option<String>,
    /// Override of the injected texts (tags, reflection phrase); `None` = prompts/search.toml.
    pub prompts: Option<SearchPrompts>,
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            granularity: Granularity::Step,
            step_delimiter: "\n\n".into(),
            step_max_tokens: 96,
            expand_k: 3,
            c_puct: 1.414,
            temperature: crate::engine::sampling::DEFAULT_TEMPERATURE,
            top_p: crate::engine::sampling::DEFAULT_TOP_P,
            answer_temperature: 0.0,
            max_rollouts: 12,
            max_depth: 0,
            max_tree_tokens: 8192,
            max_thought_tokens: 512,
            answer_max_tokens: 48,
            early_stop_chains: 0,
            early_stop_share: 0.0,
            early_stop_min_visits: 8,
            reflection: ReflectionConfig::default(),
            select: SelectRule::MostVisited,
            value: ValueSpec::default(),
            ship: None,
            ship_k: 3,
            stop_after_verified: 0,
            pool_unspent: false,
            judge: None,
            system_prompt: None,
            prompts: None,
        }
    }
}

impl SearchConfig {
    /// Parse a TOML table (a job file's `[search]` section).
    pub fn from_toml(text: &str) -> Result<Self, SearchError> {
        toml::from_str::<Self>(text)
            .map_err(|e| SearchError::Config(e.to_string()))?
            .build()
    }

    /// Validate and return the config; every search entry point calls this.
    pub fn build(self) -> Result<Self, SearchError> {
        let bad = |m: String| Err(SearchError::Config(m));
        if self.expand_k == 0 {
            return bad("expand_k must be >= 1".into());
        }
        if self.max_rollouts == 0 {
            return bad("max_rollouts must be >= 1".into());
        }
        if self.max_thought_tokens == 0 || self.answer_max_tokens == 0 {
            return bad("max_thought_tokens and answer_max_tokens must be >= 1".into());
        }
        if self.max_tree_tokens < self.answer_max_tokens + 1 {
            return bad(format!(
                "max_tree_tokens {} cannot fund one chain (answer_max_tokens {} + 1 thought token)",
                self.max_tree_tokens, self.answer_max_tokens
            ));
        }
        if self.granularity == Granularity::Step {
            if self.step_delimiter.is_empty() {
                return bad("step_delimiter must not be empty".into());
            }
            if self.step_max_tokens == 0 {
                return bad("step_max_tokens must be >= 1".into());
            }
        }
        if !(self.c_puct.is_finite() && self.c_puct >= 0.0) {
            return bad(format!("c_puct {} must be finite and >= 0", self.c_puct));
        }
        if !(self.temperature >= 0.0 && self.answer_temperature >= 0.0) {
            return bad("temperatures must be >= 0".into());
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p {} must be in (0, 1]", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.early_stop_share) {
            return bad("early_stop_share must be in [0, 1]".into());
        }
        self.value.build()?;
        if self.value.uses(super::value::ValueKind::Judge) && self.judge.is_none() {
            return bad(
                "value uses `judge` but no judge engine is set: add a [search.judge] table with its engine"
                    .into(),
            );
        }
        if let Some(j) = &self.judge {
            j.validate()?;
        }
        if self.ship == Some(ShipPolicy::TopK) && self.ship_k == 0 {
            return bad("ship = \"top_k\" needs ship_k >= 1".into());
        }
        if let (Some(len), d) = (self.granularity.fixed_len(), self.max_depth) {
            if d > 0 && d.saturating_mul(len) < self.max_thought_tokens {
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| {
                    tracing::warn!(
                        "max_depth = {d} at granularity {} caps every thought at {} tokens \
                         (max_thought_tokens is {}); set max_depth = 0 (auto) to let \
                         max_thought_tokens decide",
                        self.granularity,
                        d * len,
                        self.max_thought_tokens
                    )
                });
            }
        }
        Ok(self)
    }

    /// The depth cap in effect (see `max_depth`).
    pub fn effective_max_depth(&self) -> u32 {
        if self.max_depth > 0 {
            return self.max_depth;
        }
        match self.granularity.fixed_len() {
            None => 12,
            Some(len) => self.max_thought_tokens.div_ceil(len).max(1),
        }
    }

    /// The ship policy for a seed with or without a reference answer.
    pub fn ship_policy(&self, has_reference: bool) -> ShipPolicy {
        self.ship
            .unwrap_or_else(|| ShipPolicy::default_for(has_reference))
    }

    /// Prompts in effect: the override or the embedded file.
    pub fn prompts(&self) -> SearchPrompts {
        self.prompts.clone().unwrap_or_default()
    }

    /// Settings as compact JSON, for `Chain.settings`.
    pub fn settings_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_roundtrip_toml() {
        let c = SearchConfig::default().build().unwrap();
        let t = toml::to_string(&c).unwrap();
        assert_eq!(SearchConfig::from_toml(&t).unwrap(), c);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(SearchConfig::from_toml("expand_kk = 3").is_err());
        let c = SearchConfig::from_toml(
            "granularity = \"mini-step-32\"\n[reflection]\npolicy = \"always\"",
        )
        .unwrap();
        assert_eq!(c.granularity, Granularity::MiniStep32);
        assert_eq!(c.reflection.policy, ReflectionPolicy::Always);
    }

    #[test]
    fn impossible_budgets_are_rejected() {
        let c = SearchConfig {
            max_tree_tokens: 10,
            answer_max_tokens: 10,
            ..Default::default()
        };
        assert!(c.build().is_err());
    }
}
