//! What a finished tree hands on: its distinct terminal chains, the picked
//! chain, counters, and a JSON export of the whole tree for inspection.

use serde::{Deserialize, Serialize};

use crate::engine::Token;
use crate::record::{Chain, Recipe, RowMeta, Seed};

use super::config::{SearchConfig, SelectRule};
use super::tree::{Answer, NodeId, TerminalCause};

/// Why a tree stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// `max_rollouts` reached.
    Rollouts,
    /// `max_tree_tokens` cannot fund another chain.
    TokenBudget,
    /// `early_stop_chains` distinct terminal chains found.
    EnoughChains,
    /// The root's best child holds `early_stop_share` of the visits.
    BestChildShare,
    /// No expandable node is left.
    Exhausted,
    /// `stop_after_verified` distinct verified chains found.
    EnoughVerified,
}

/// One distinct terminal chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainResult {
    /// Terminal node.
    pub node: NodeId,
    /// Root..=node.
    pub path: Vec<NodeId>,
    pub reasoning: String,
    pub answer: String,
    /// Mean confidence of every generated token of the chain, answer included.
    pub reward: f64,
    /// Mean confidence of each generated action on the path.
    pub step_confidences: Vec<f64>,
    pub reflections: u32,
    /// Generated tokens in the chain (thought + answer).
    pub tokens: u32,
    pub verified: Option<bool>,
    pub terminal: Option<TerminalCause>,
    /// Visits of the terminal node.
    pub visits: u32,
    /// The value function's score of the chain (whole-chain confidence, the
    /// tree's final votes).
    #[serde(default)]
    pub value: f64,
    /// Share of the tree's answered chains that give the same final answer.
    #[serde(default)]
    pub agreement: f64,
    /// The vote key of the answer (`None`: nothing could be extracted).
    #[serde(default)]
    pub answer_key: Option<String>,
    /// The judge's score, with `value = "judge"`.
    #[serde(default)]
    pub judge: Option<f64>,
}

/// Index into `chains` of the chain each selection rule picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Picks {
    pub most_visited: Option<usize>,
    pub highest_reward: Option<usize>,
    #[serde(default)]
    pub majority_vote: Option<usize>,
}

impl Picks {
    pub fn get(&self, rule: SelectRule) -> Option<usize> {
        match rule {
            SelectRule::MostVisited => self.most_visited,
            SelectRule::HighestReward => self.highest_reward,
            SelectRule::MajorityVote => self.majority_vote,
        }
    }
    pub fn set(&mut self, rule: SelectRule, chain: usize) {
        let slot = match rule {
            SelectRule::MostVisited => &mut self.most_visited,
            SelectRule::HighestReward => &mut self.highest_reward,
            SelectRule::MajorityVote => &mut self.majority_vote,
        };
        *slot = Some(chain);
    }
}

/// Counters of one tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TreeStats {
    pub rollouts: u32,
    pub iterations: u32,
    pub nodes: u32,
    pub max_depth: u32,
    /// Tokens sampled for this tree (thoughts and answers).
    pub tokens_sampled: u32,
    /// Tokens in the tree's trie (prompt, actions, close tags, answers).
    pub distinct_tokens: u64,
    /// Evaluated tokens cut out again (an answer marker the model wrote itself).
    #[serde(default)]
    pub discarded_tokens: u64,
    /// Tokens the engine evaluated for this tree (driver accounting).
    pub engine_tokens_evaluated: u64,
    /// What a search that resends the whole path for every rollout would evaluate.
    pub resend_tokens: u64,
    /// What a search that sends every action (and answer) as its own request,
    /// whole path included, would evaluate (Marco-o1's released code does this).
    #[serde(default)]
    pub resend_per_action_tokens: u64,
    pub stop: Option<StopReason>,
}

/// One node as exported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeExport {
    pub id: NodeId,
    pub parent: Option<NodeId>,
    pub children: Vec<NodeId>,
    pub text: String,
    pub tokens: Vec<Token>,
    pub confidences: Vec<f32>,
    pub n: u32,
    pub q: f64,
    /// Rollouts whose chain ended at this node.
    pub own: u32,
    pub depth: u32,
    pub reflection: bool,
    pub terminal: Option<TerminalCause>,
    pub answer: Option<Answer>,
}

/// The tree as JSON (what `cotforge inspect-tree` reads). Depends only on the
/// seed, the config and the model, never on batching or caching.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TreeExport {
    pub seed_id: String,
    pub prompt: String,
    pub reference_answer: Option<String>,
    pub config: SearchConfig,
    pub stop: Option<StopReason>,
    /// Root..=selected terminal.
    pub best_path: Vec<NodeId>,
    pub nodes: Vec<NodeExport>,
}

impl TreeExport {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// Everything a finished tree yields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TreeResult {
    pub seed_id: String,
    pub prompt: String,
    pub system: Option<String>,
    pub reference_answer: Option<String>,
    /// Every distinct terminal chain (by reasoning and answer text), in node order.
    pub chains: Vec<ChainResult>,
    /// Index into `chains` of the pick under the configured rule.
    pub selected: Option<usize>,
    /// The pick under every rule (for comparing rules on one search).
    #[serde(default)]
    pub picks: Picks,
    pub stats: TreeStats,
    #[serde(skip)]
    pub tree: TreeExport,
}

impl TreeResult {
    /// All terminal chains as `record::Chain` rows (recipe `marco_cot`).
    /// The id is blake3 of seed id, recipe and the chain's node path.
    pub fn to_chains(&self, seed: &Seed, meta: &RowMeta) -> Vec<Chain> {
        let settings = self.tree.config.settings_json();
        self.chains
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let path: Vec<String> = c.path.iter().map(|n| n.0.to_string()).collect();
                Chain {
                    system: self.system.clone(),
                    reasoning: c.reasoning.clone(),
                    answer: c.answer.clone(),
                    reward: c.reward,
                    step_confidences: c.step_confidences.clone(),
                    tokens: c.tokens,
                    reflections: c.reflections,
                    verified: c.verified,
                    reference_answer: self.reference_answer.clone(),
                    selected: Some(self.selected == Some(i)),
                    value: Some(c.value),
                    agreement: Some(c.agreement),
                    ..meta.chain(seed, Recipe::MarcoCot, &path.join("/"), &settings)
                }
            })
            .collect()
    }
}
