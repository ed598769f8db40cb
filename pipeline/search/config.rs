//! Search settings. One serde struct so a job file, the CLI and tests all
//! describe a search the same way; unknown keys are rejected so a typo never
//! silently falls back to a default.

use serde::{Deserialize, Serialize};

use super::prompts::SearchPrompts;
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

impl Granularity {
    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Step => "step",
            Granularity::MiniStep32 => "mini-step-32",
            Granularity::MiniStep64 => "mini-step-64",
            Granularity::Token => "token",
        }
    }
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

impl std::str::FromStr for Granularity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            Granularity::Step,
            Granularity::MiniStep32,
            Granularity::MiniStep64,
            Granularity::Token,
        ]
        .into_iter()
        .find(|g| g.as_str() == s)
        .ok_or_else(|| {
            format!(
                "unknown granularity '{s}' (expected step, mini-step-32, mini-step-64 or token)"
            )
        })
    }
}

impl std::fmt::Display for Granularity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
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

impl std::str::FromStr for ReflectionPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(Self::Off),
            "on_wrong" | "on-wrong" => Ok(Self::OnWrong),
            "on_low_reward" | "on-low-reward" => Ok(Self::OnLowReward),
            "always" => Ok(Self::Always),
            _ => Err(format!(
                "unknown reflection policy '{s}' (expected off, on_wrong, on_low_reward or always)"
            )),
        }
    }
}

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
    /// The terminal chain with the highest reward.
    HighestReward,
}

impl std::str::FromStr for SelectRule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "most_visited" | "most-visited" => Ok(Self::MostVisited),
            "highest_reward" | "highest-reward" => Ok(Self::HighestReward),
            _ => Err(format!(
                "unknown select rule '{s}' (expected most_visited or highest_reward)"
            )),
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
    /// Most actions in one chain between reflections (a "step cap").
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
            temperature: 0.7,
            top_p: 0.9,
            answer_temperature: 0.0,
            max_rollouts: 12,
            max_depth: 12,
            max_tree_tokens: 8192,
            max_thought_tokens: 512,
            answer_max_tokens: 48,
            early_stop_chains: 0,
            early_stop_share: 0.0,
            early_stop_min_visits: 8,
            reflection: ReflectionConfig::default(),
            select: SelectRule::MostVisited,
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
        if self.max_depth == 0 {
            return bad("max_depth must be >= 1".into());
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
        Ok(self)
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
