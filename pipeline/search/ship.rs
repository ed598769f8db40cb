//! The ship policy: which of a tree's distinct chains ship, and for each the
//! reason. Chains that do not ship are kept (the recipe writes them to the
//! rejected shard with the reason), never dropped.

use serde::{Deserialize, Serialize};

use super::config::ShipPolicy;
use super::result::TreeResult;

/// Reason of a chain the policy holds back because another chain was picked.
pub const NOT_SELECTED: &str = "not-selected";
/// Reason of a chain the policy holds back because its answer does not check.
pub const UNVERIFIED: &str = "unverified";

/// What the policy decided for one chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShipDecision {
    pub ship: bool,
    /// Why it ships (`selected`, `verified`, `top-2 of 3`, `all`) or why not
    /// (starts with [`NOT_SELECTED`] or [`UNVERIFIED`]).
    pub why: String,
}

impl ShipDecision {
    fn yes(why: impl Into<String>) -> Self {
        Self {
            ship: true,
            why: why.into(),
        }
    }
    fn no(why: String) -> Self {
        Self { ship: false, why }
    }
}

/// One decision per chain of `r.chains`, in order.
pub fn decide(policy: ShipPolicy, k: u32, r: &TreeResult) -> Vec<ShipDecision> {
    let rule = r.tree.config.select;
    match policy {
        ShipPolicy::All => r.chains.iter().map(|_| ShipDecision::yes("all")).collect(),
        ShipPolicy::Selected => (0..r.chains.len())
            .map(|i| {
                if r.selected == Some(i) {
                    ShipDecision::yes(format!("selected ({rule})"))
                } else {
                    ShipDecision::no(format!(
                        "{NOT_SELECTED}: ship = \"selected\" ships the {rule} pick only"
                    ))
                }
            })
            .collect(),
        ShipPolicy::Verified => r
            .chains
            .iter()
            .map(|c| match c.verified {
                Some(true) => ShipDecision::yes("verified"),
                Some(false) => ShipDecision::no(format!(
                    "{UNVERIFIED}: the answer does not match the reference (ship = \"verified\")"
                )),
                None => ShipDecision::no(format!(
                    "{UNVERIFIED}: the seed has no reference answer; ship = \"selected\" or \"top_k\" ship without one"
                )),
            })
            .collect(),
        ShipPolicy::TopK => {
            let mut order: Vec<usize> = (0..r.chains.len()).collect();
            order.sort_by(|&a, &b| {
                let (ca, cb) = (&r.chains[a], &r.chains[b]);
                cb.value
                    .total_cmp(&ca.value)
                    .then(cb.reward.total_cmp(&ca.reward))
                    .then(a.cmp(&b))
            });
            let mut out = vec![ShipDecision::yes(""); r.chains.len()];
            for (rank, &i) in order.iter().enumerate() {
                out[i] = if rank < k as usize {
                    ShipDecision::yes(format!("top-{} of {k} by value", rank + 1))
                } else {
                    ShipDecision::no(format!(
                        "{NOT_SELECTED}: value rank {} > ship_k = {k}",
                        rank + 1
                    ))
                };
            }
            out
        }
    }
}
