//! Which seeds a shard owns, and which shard this process is.
//!
//! Assignment hashes the seed id, so it does not depend on input order or on
//! which other seeds exist: a seed keeps its shard when seeds are added, and
//! duplicates of an id always land in the same shard (where ingest rejects them).

use std::collections::HashMap;

/// Shard `index` of `count` (0-based).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ShardSpec {
    pub index: u32,
    pub count: u32,
}

impl ShardSpec {
    pub fn single() -> Self {
        Self { index: 0, count: 1 }
    }
    /// `00003-of-00008`, the suffix of every file of the shard.
    pub fn suffix(&self) -> String {
        format!("{:05}-of-{:05}", self.index, self.count)
    }
    pub fn owns(&self, seed_id: &str) -> bool {
        shard_of(seed_id, self.count) == self.index
    }
}

impl std::fmt::Display for ShardSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "shard {}/{}", self.index, self.count)
    }
}

/// The shard of a seed: first 8 bytes of blake3(id), little-endian, mod `count`.
pub fn shard_of(seed_id: &str, count: u32) -> u32 {
    if count <= 1 {
        return 0;
    }
    let h = blake3::hash(seed_id.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    (u64::from_le_bytes(b) % count as u64) as u32
}

/// Why the shard could not be determined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardEnvError {
    #[error("environment variable {var}={value} is not a non-negative integer")]
    BadValue { var: String, value: String },
    #[error("shard index {index} is out of range for {count} shards")]
    OutOfRange { index: u32, count: u32 },
    #[error("--num-shards must be at least 1")]
    ZeroShards,
    #[error(
        "shard index {index} comes from {var}, but the shard count is unknown: pass --num-shards"
    )]
    UnknownCount { index: u32, var: String },
}

fn num(env: &HashMap<String, String>, var: &str) -> Result<Option<u32>, ShardEnvError> {
    match env.get(var) {
        None => Ok(None),
        Some(v) if v.trim().is_empty() => Ok(None),
        Some(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| ShardEnvError::BadValue {
                var: var.into(),
                value: v.clone(),
            }),
    }
}

/// Resolve `--shard-index/--num-shards`, defaulting from the scheduler:
/// Slurm arrays (the index is `SLURM_ARRAY_TASK_ID` itself: `SLURM_ARRAY_TASK_MIN`
/// is the lowest index of one submission, so subtracting it would send a
/// resubmitted `--array=2` to shard 0; count `SLURM_ARRAY_TASK_COUNT`) and Kubernetes
/// Indexed Jobs (`JOB_COMPLETION_INDEX`; the count must be given, e.g. with
/// `--num-shards` or `COTFORGE_NUM_SHARDS`, since Kubernetes does not export it).
/// Explicit values win; with nothing set the job is one shard.
pub fn resolve_shard(
    index: Option<u32>,
    count: Option<u32>,
    env: &HashMap<String, String>,
) -> Result<ShardSpec, ShardEnvError> {
    let slurm_id = num(env, "SLURM_ARRAY_TASK_ID")?;
    let k8s = num(env, "JOB_COMPLETION_INDEX")?;
    let (index, var) = match (index, slurm_id, k8s) {
        (Some(i), _, _) => (i, None),
        (None, Some(id), _) => (id, Some("SLURM_ARRAY_TASK_ID".to_string())),
        (None, None, Some(i)) => (i, Some("JOB_COMPLETION_INDEX".to_string())),
        (None, None, None) => (0, None),
    };
    let count = match count {
        Some(c) => c,
        None => match num(env, "COTFORGE_NUM_SHARDS")? {
            Some(c) => c,
            None => match (slurm_id, num(env, "SLURM_ARRAY_TASK_COUNT")?) {
                (Some(_), Some(c)) => c,
                _ => match var {
                    Some(var) => return Err(ShardEnvError::UnknownCount { index, var }),
                    None => 1,
                },
            },
        },
    };
    if count == 0 {
        return Err(ShardEnvError::ZeroShards);
    }
    if index >= count {
        return Err(ShardEnvError::OutOfRange { index, count });
    }
    Ok(ShardSpec { index, count })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn explicit_values_win() {
        let e = env(&[
            ("SLURM_ARRAY_TASK_ID", "5"),
            ("SLURM_ARRAY_TASK_COUNT", "8"),
        ]);
        assert_eq!(
            resolve_shard(Some(2), Some(4), &e),
            Ok(ShardSpec { index: 2, count: 4 })
        );
    }

    #[test]
    fn slurm_array_task_id_is_the_shard() {
        // What Slurm sets for `sbatch --array=2` resubmitting shard 2 of a 4-shard job.
        let e = env(&[
            ("SLURM_ARRAY_TASK_ID", "2"),
            ("SLURM_ARRAY_TASK_MIN", "2"),
            ("SLURM_ARRAY_TASK_MAX", "2"),
            ("SLURM_ARRAY_TASK_COUNT", "1"),
        ]);
        assert_eq!(
            resolve_shard(None, Some(4), &e),
            Ok(ShardSpec { index: 2, count: 4 })
        );
        let e = env(&[
            ("SLURM_ARRAY_TASK_ID", "7"),
            ("SLURM_ARRAY_TASK_COUNT", "8"),
        ]);
        assert_eq!(
            resolve_shard(None, None, &e),
            Ok(ShardSpec { index: 7, count: 8 })
        );
    }

    #[test]
    fn kubernetes_index_needs_a_count() {
        let e = env(&[("JOB_COMPLETION_INDEX", "3")]);
        assert!(matches!(
            resolve_shard(None, None, &e),
            Err(ShardEnvError::UnknownCount { index: 3, .. })
        ));
        assert_eq!(
            resolve_shard(None, Some(4), &e),
            Ok(ShardSpec { index: 3, count: 4 })
        );
        let e = env(&[("JOB_COMPLETION_INDEX", "3"), ("COTFORGE_NUM_SHARDS", "6")]);
        assert_eq!(
            resolve_shard(None, None, &e),
            Ok(ShardSpec { index: 3, count: 6 })
        );
    }

    #[test]
    fn defaults_and_errors() {
        assert_eq!(
            resolve_shard(None, None, &env(&[])),
            Ok(ShardSpec::single())
        );
        assert_eq!(
            resolve_shard(Some(4), Some(4), &env(&[])),
            Err(ShardEnvError::OutOfRange { index: 4, count: 4 })
        );
        assert_eq!(
            resolve_shard(None, Some(0), &env(&[])),
            Err(ShardEnvError::ZeroShards)
        );
        assert!(matches!(
            resolve_shard(None, None, &env(&[("SLURM_ARRAY_TASK_ID", "x")])),
            Err(ShardEnvError::BadValue { .. })
        ));
    }

    #[test]
    fn assignment_is_stable_and_spread() {
        let mut counts = [0u32; 8];
        for i in 0..8000 {
            let id = format!("seed-{i}");
            let s = shard_of(&id, 8);
            assert_eq!(s, shard_of(&id, 8));
            counts[s as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 850 && c < 1150), "{counts:?}");
        assert_eq!(shard_of("anything", 1), 0);
    }
}
