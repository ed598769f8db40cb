//! `marco_cot`: MCTS synthesis with reflection (the search module), the ship
//! policy over every distinct terminal chain, then the filters. What does not
//! ship goes to the rejected shard with the reason.
//!
//! [`MarcoCot::run`] is the one MCTS pipeline: the shard worker calls it
//! through [`Processor`], `cotforge search` on one seed file, and the
//! benchmarks, so a benchmark measures exactly what ships.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::engine::Engine;
use crate::record::{Chain, Recipe, Reject, Seed, Stage};
use crate::search::driver::Outcome;
use crate::search::ship::decide;
use crate::search::{
    run_trees, DriverConfig, DriverReport, Judge, Progress, SearchConfig, TreeResult, TreeSearch,
    Verifier,
};
use crate::stages::filter::FilterChain;
use crate::stages::reject_for;
use crate::store::worker::{ProcessError, Processed, Processor};

use super::{filter_chains, reject_seed, RecipeError, RowMeta};

/// Stage of a seed the search could not run (a bad prompt, a budget that does not fit).
pub const STAGE_INPUT: Stage = Stage::MarcoCotInput;
/// Stage of a tree that failed or reached no chain.
pub const STAGE_SEARCH: Stage = Stage::MarcoCotSearch;
/// Stage of a chain the ship policy held back.
pub const STAGE_SHIP: Stage = Stage::MarcoCotShip;

pub struct MarcoCot<'e> {
    pub engine: &'e mut dyn Engine,
    pub search: SearchConfig,
    pub driver: DriverConfig,
    pub verifier: Arc<Verifier>,
    pub filters: FilterChain,
    pub meta: RowMeta,
    /// Where to write each tree's JSON (`OUT/trees/<seed id>.json`), if anywhere.
    pub trees_dir: Option<PathBuf>,
    /// The judge of `value = "judge"`; built from `search.judge` on first use when `None`.
    pub judge: Option<Box<dyn Judge>>,
}

/// One distinct chain of a tree: the row, whether it shipped, and why (the
/// ship policy's reason, or the stage and reason that held it back).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainOutcome {
    #[serde(flatten)]
    pub chain: Chain,
    pub shipped: bool,
    pub why: String,
}

/// One seed through the recipe.
#[derive(Debug, Clone, Default)]
pub struct SeedOutcome {
    /// The tree, when the search ran to the end.
    pub result: Option<TreeResult>,
    /// What goes to the shard files.
    pub processed: Processed,
    /// Every distinct chain of the tree, shipped or not, in chain order.
    pub chains: Vec<ChainOutcome>,
}

/// A file name for a seed id: `[A-Za-z0-9._-]` kept, the rest `_`, at most
/// 96 characters, never hidden. Seed ids are free text.
pub fn tree_file_stem(id: &str) -> String {
    let s: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(96)
        .collect();
    if s.is_empty() || s.starts_with('.') {
        format!("seed{s}")
    } else {
        s
    }
}

fn seed_reject(seed: &Seed, stage: Stage, reason: String) -> SeedOutcome {
    SeedOutcome {
        processed: Processed {
            accepted: vec![],
            rejected: vec![reject_seed(seed, Recipe::MarcoCot, stage, reason)],
        },
        ..Default::default()
    }
}

impl MarcoCot<'_> {
    fn ensure_judge(&mut self) -> Result<(), RecipeError> {
        if self.judge.is_none() && self.search.value.uses(crate::search::ValueKind::Judge) {
            let cfg = self.search.judge.as_ref().ok_or_else(|| {
                RecipeError::Job("value uses `judge` but [search.judge] is not set".into())
            })?;
            self.judge = Some(Box::new(cfg.build()?));
        }
        Ok(())
    }

    /// Search every seed (their trees share the engine's decode calls), apply
    /// the ship policy and the filters. A seed that cannot be searched, or
    /// whose tree fails, becomes a reject naming the seed, the stage and what
    /// to do; the other seeds are not affected. `on_tree` sees each tree as
    /// it finishes.
    pub fn run(
        &mut self,
        seeds: &[Seed],
        on_tree: &mut dyn FnMut(Outcome<'_>, &Progress),
    ) -> Result<(Vec<SeedOutcome>, DriverReport), RecipeError> {
        self.ensure_judge()?;
        let mut out: Vec<Option<SeedOutcome>> = vec![None; seeds.len()];
        let mut trees = Vec::new();
        let mut idx = Vec::new();
        for (i, seed) in seeds.iter().enumerate() {
            match TreeSearch::new(&*self.engine, seed, &self.search, self.verifier.clone()) {
                Ok(t) => {
                    trees.push(t);
                    idx.push(i);
                }
                Err(e) => {
                    out[i] = Some(seed_reject(
                        seed,
                        STAGE_INPUT,
                        format!("seed {}: {e}", seed.id),
                    ))
                }
            }
        }
        let judge: Option<&mut dyn Judge> = match self.judge.as_mut() {
            Some(j) => Some(j.as_mut()),
            None => None,
        };
        let (results, report) = run_trees(self.engine, judge, trees, &self.driver, on_tree)?;
        for (i, r) in idx.into_iter().zip(results) {
            let seed = &seeds[i];
            out[i] = Some(match r {
                Err(f) => seed_reject(
                    seed,
                    STAGE_SEARCH,
                    format!("seed {}: the search failed: {}", seed.id, f.error),
                ),
                Ok(r) => {
                    self.write_tree(seed, &r);
                    self.ship(seed, r)
                }
            });
        }
        Ok((
            out.into_iter().map(|o| o.unwrap_or_default()).collect(),
            report,
        ))
    }

    fn write_tree(&self, seed: &Seed, r: &TreeResult) {
        let Some(dir) = &self.trees_dir else { return };
        let path = dir.join(format!("{}.json", tree_file_stem(&seed.id)));
        if let Err(e) = crate::store::parquet_io::commit_bytes(&path, r.tree.to_json().as_bytes()) {
            tracing::warn!("cannot write tree {}: {e}", path.display());
        }
    }

    /// The ship policy, then the filters over what ships.
    fn ship(&self, seed: &Seed, r: TreeResult) -> SeedOutcome {
        let rows = r.to_chains(seed, &self.meta);
        if rows.is_empty() {
            let mut o = seed_reject(
                seed,
                STAGE_SEARCH,
                format!(
                    "seed {}: the search reached no terminal chain within its budgets \
                     (raise max_tree_tokens or max_rollouts)",
                    seed.id
                ),
            );
            o.result = Some(r);
            return o;
        }
        let has_ref = seed
            .reference_answer
            .as_deref()
            .is_some_and(|a| !a.trim().is_empty());
        let policy = self.search.ship_policy(has_ref);
        let decisions = decide(policy, self.search.ship_k, &r);
        let mut held: Vec<Reject> = Vec::new();
        let mut to_filter = Vec::new();
        let mut why = Vec::with_capacity(rows.len());
        for (row, d) in rows.iter().zip(&decisions) {
            why.push(d.why.clone());
            if d.ship {
                to_filter.push(row.clone());
            } else {
                held.push(reject_for(row, STAGE_SHIP, d.why.clone()));
            }
        }
        let mut processed = filter_chains(&self.filters, seed, to_filter);
        let chains = rows
            .into_iter()
            .zip(why)
            .map(|(row, why)| {
                let accepted = processed.accepted.iter().find(|c| c.id == row.id);
                let filtered = processed
                    .rejected
                    .iter()
                    .find(|x| x.chain_id.as_deref() == Some(row.id.as_str()));
                match (accepted, filtered) {
                    // The filters may annotate a chain (verify sets `verified`).
                    (Some(c), _) => ChainOutcome {
                        chain: c.clone(),
                        shipped: true,
                        why,
                    },
                    (None, Some(x)) => ChainOutcome {
                        chain: row,
                        shipped: false,
                        why: format!("{}: {}", x.stage, x.reason),
                    },
                    (None, None) => ChainOutcome {
                        chain: row,
                        shipped: false,
                        why,
                    },
                }
            })
            .collect();
        processed.rejected.extend(held);
        SeedOutcome {
            result: Some(r),
            processed,
            chains,
        }
    }
}

impl Processor for MarcoCot<'_> {
    fn tokens(&self) -> u64 {
        super::engine_tokens(&*self.engine)
    }

    fn process_batch(&mut self, seeds: &[Seed]) -> Result<Vec<Processed>, ProcessError> {
        let (outcomes, _) = self
            .run(seeds, &mut |_, _| {})
            .map_err(|e| ProcessError::Fatal(Box::new(e)))?;
        Ok(outcomes.into_iter().map(|o| o.processed).collect())
    }
}
