//! `marco_cot`: MCTS synthesis with reflection (the search module), every
//! distinct terminal chain through the filters, verification against the
//! reference answer where the seed has one.

use std::sync::Arc;

use crate::engine::Engine;
use crate::record::{Recipe, Seed};
use crate::search::{run_many, ChainMeta, DriverConfig, SearchConfig, TreeSearch, Verifier};
use crate::stages::filter::FilterChain;
use crate::store::worker::{Processed, Processor};

use super::{filter_chains, reject_seed, RowMeta};

pub struct MarcoCot<'e> {
    pub engine: &'e mut dyn Engine,
    pub search: SearchConfig,
    pub driver: DriverConfig,
    pub verifier: Arc<Verifier>,
    pub filters: FilterChain,
    pub meta: RowMeta,
    /// Where to write each tree's JSON (`OUT/trees/<seed id>.json`), if anywhere.
    pub trees_dir: Option<std::path::PathBuf>,
}

impl Processor for MarcoCot<'_> {
    fn process(&mut self, seed: &Seed) -> Result<Processed, String> {
        self.process_batch(std::slice::from_ref(seed))
            .map(|mut v| v.pop().unwrap_or_default())
    }

    fn process_batch(&mut self, seeds: &[Seed]) -> Result<Vec<Processed>, String> {
        let mut out: Vec<Option<Processed>> = vec![None; seeds.len()];
        let mut trees = Vec::new();
        let mut idx = Vec::new();
        for (i, seed) in seeds.iter().enumerate() {
            match TreeSearch::new(&*self.engine, seed, &self.search, self.verifier.clone()) {
                Ok(t) => {
                    trees.push(t);
                    idx.push(i);
                }
                Err(e) => {
                    out[i] = Some(Processed {
                        accepted: vec![],
                        rejected: vec![reject_seed(
                            seed,
                            Recipe::MarcoCot,
                            "marco_cot.input",
                            e.to_string(),
                        )],
                    })
                }
            }
        }
        let (results, _report) = run_many(self.engine, trees, &self.driver, &mut |_, _| {})
            .map_err(|e| e.to_string())?;
        let meta = ChainMeta {
            model: self.meta.model.clone(),
            model_blake3: self.meta.model_blake3.clone(),
            created_at: self.meta.created_at,
        };
        for (i, r) in idx.into_iter().zip(results) {
            let seed = &seeds[i];
            if let Some(dir) = &self.trees_dir {
                // Seed ids are free text: keep the file name to a safe alphabet.
                let name: String = seed
                    .id
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                            c
                        } else {
                            '_'
                        }
                    })
                    .take(96)
                    .collect();
                let path = dir.join(format!("{name}.json"));
                if let Err(e) =
                    crate::store::parquet_io::commit_bytes(&path, r.tree.to_json().as_bytes())
                {
                    tracing::warn!("cannot write tree {}: {e}", path.display());
                }
            }
            let chains = r.to_chains(seed, &meta);
            out[i] = Some(if chains.is_empty() {
                Processed {
                    accepted: vec![],
                    rejected: vec![reject_seed(
                        seed,
                        Recipe::MarcoCot,
                        "marco_cot.search",
                        "the search reached no terminal chain within its budgets".into(),
                    )],
                }
            } else {
                filter_chains(&self.filters, seed, chains)
            });
        }
        Ok(out.into_iter().map(|o| o.unwrap_or_default()).collect())
    }
}
