//! cotforge: chain-of-thought training data from a GGUF model, the Marco-o1 way.
//!
//! One module per concern: [`engine`] talks to the model, [`search`] runs the
//! confidence-guided MCTS, [`stages`] filter and dedup, [`store`] owns Parquet,
//! journals and shards, [`recipes`] join them into the three shard kinds,
//! [`report`] summarizes, [`bench`] measures against baselines, [`cli`]
//! turns arguments into typed jobs.

pub mod bench;
pub mod cli;
pub mod engine;
pub mod recipes;
pub mod record;
pub mod report;
pub mod search;
pub mod stages;
pub mod store;
