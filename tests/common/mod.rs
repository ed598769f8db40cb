//! Helpers shared by integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// The default model, or None when tests are told to skip real-model checks.
/// Absent without COTFORGE_SKIP_MODEL=1 is a failure: CI must have fetched it.
pub fn model_path() -> Option<PathBuf> {
    let p = std::env::var_os("COTFORGE_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("data/models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    if p.exists() {
        return Some(p);
    }
    if std::env::var("COTFORGE_SKIP_MODEL").as_deref() == Ok("1") {
        eprintln!(
            "skipping real-model test: {} absent and COTFORGE_SKIP_MODEL=1",
            p.display()
        );
        return None;
    }
    panic!(
        "model {} not found: run scripts/setup.sh (or set COTFORGE_MODEL, or COTFORGE_SKIP_MODEL=1 to skip)",
        p.display()
    );
}

pub mod play;
