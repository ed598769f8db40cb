//! Helpers shared by integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

pub mod wrap;

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
pub mod py;

/// A path in the repository.
pub fn repo(p: &str) -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// Runs the cotforge binary of this build (`bin` is `env!("CARGO_BIN_EXE_cotforge")`
/// of the calling test) and returns stdout + stderr; panics when it fails.
pub fn run_ok(bin: &str, args: &[&str]) -> String {
    let o = std::process::Command::new(bin).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "cotforge {args:?} failed:\n{text}");
    text
}

/// `data/jobs/scripted.toml` with absolute seed paths and `out` in `dir`,
/// changed by `edit`; returns (job file, output directory).
pub fn scripted_job(
    dir: &std::path::Path,
    name: &str,
    edit: impl Fn(String) -> String,
) -> (PathBuf, PathBuf) {
    let text = std::fs::read_to_string(repo("data/jobs/scripted.toml")).unwrap();
    let out = dir.join(format!("out-{name}"));
    let text = text
        .replace(
            "out = \"out/scripted\"",
            &format!("out = {:?}", out.display().to_string()),
        )
        .replace(
            "\"data/seeds/",
            &format!("\"{}/data/seeds/", env!("CARGO_MANIFEST_DIR")),
        );
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, edit(text)).unwrap();
    (p, out)
}

/// The scripted job's `marco_cot` ships every chain (`ship = "all"`), as
/// before ship policies: the scripted model is never right, so with the
/// default (`verified`) almost none would ship. For tests of what happens to
/// shipped chains downstream (report, gate), not of the policy.
pub fn ship_all(text: String) -> String {
    let marco = "kind = \"marco_cot\"";
    let at = text.find(marco).expect("a marco_cot recipe");
    let search = at
        + text[at..]
            .find("[recipe.search]\n")
            .expect("its [recipe.search]");
    let end = search + "[recipe.search]\n".len();
    format!("{}ship = \"all\"\n{}", &text[..end], &text[end..])
}

/// Copies a directory tree.
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for e in walkdir::WalkDir::new(from) {
        let e = e.unwrap();
        let dest = to.join(e.path().strip_prefix(from).unwrap());
        if e.file_type().is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// The scripted engine (default script) with `n_parallel` × `n_seq_max`
/// sequences and a context and batch so large that a search never runs out.
pub fn roomy_scripted(n_parallel: usize, n_seq_max: usize) -> cotforge::engine::ScriptedEngine {
    scripted_with(cotforge::engine::CoreLimits {
        n_ctx: 1 << 20,
        n_batch: 1 << 16,
        n_parallel,
        n_seq_max,
    })
}

/// The scripted engine with the limits of the scripted test jobs
/// (`n_ctx` 8192, `n_batch` 1024, 4 parallel, 16 sequences).
pub fn job_scripted() -> cotforge::engine::ScriptedEngine {
    scripted_with(cotforge::engine::CoreLimits {
        n_ctx: 8192,
        n_batch: 1024,
        n_parallel: 4,
        n_seq_max: 16,
    })
}

fn scripted_with(limits: cotforge::engine::CoreLimits) -> cotforge::engine::ScriptedEngine {
    cotforge::engine::ScriptedEngine::scripted(cotforge::engine::ScriptedConfig::default(), limits)
}

/// Loads `model` with llama.cpp at the smallest settings (512 context, one
/// sequence pair, 2 threads): for tests of what loading a bad path says.
#[cfg(feature = "llama")]
pub fn load_tiny(
    model: &std::path::Path,
) -> Result<cotforge::engine::LlamaEngine, cotforge::engine::EngineError> {
    cotforge::engine::LlamaEngine::load(&cotforge::engine::LlamaConfig {
        model: model.to_path_buf(),
        n_ctx: 512,
        n_batch: 64,
        n_parallel: 1,
        n_seq_max: 2,
        threads: 2,
        ..Default::default()
    })
}

/// The recipe tables of the small-model end-to-end jobs, 3 seeds each from
/// the committed samples: open_o1 on cot_demo (when `open_o1`), marco_cot on
/// gsm8k with small budgets, instruction on self_instruct; each keeps chains
/// of reward 0.3 or more (and open_o1 and marco_cot check the format).
pub fn small_model_recipes(open_o1: bool) -> String {
    let table = |kind: &str, seeds: &str, body: &str, format: bool| {
        let format = if format {
            "[[recipe.filters]]\ntype = \"format\"\n"
        } else {
            ""
        };
        format!(
            "[[recipe]]\nkind = \"{kind}\"\nseeds = [{:?}]\nlimit = 3\n{body}{format}[[recipe.filters]]\ntype = \"reward\"\nmin_reward = 0.3\n\n",
            repo(seeds).display().to_string()
        )
    };
    let mut text = String::new();
    if open_o1 {
        text += &table("open_o1", "data/seeds/cot_demo.parquet", "", true);
    }
    // SmolLM2 is wrong on nearly every GSM8K question, and by default only
    // verified chains ship: ship every chain, so the tests check the
    // machinery, not accuracy.
    let search = "[recipe.search]\nship = \"all\"\nmax_rollouts = 3\nexpand_k = 2\nmax_tree_tokens = 400\nmax_thought_tokens = 160\nanswer_max_tokens = 24\n";
    text += &table("marco_cot", "data/seeds/gsm8k.parquet", search, true);
    let instruction = "[recipe.instruction]\nn = 2\nmax_tokens = 48\n";
    text += &table(
        "instruction",
        "data/seeds/self_instruct.parquet",
        instruction,
        false,
    );
    text
}

/// The accepted rows of `recipe` in the summary table `cotforge run` prints
/// (the line `<recipe> <accepted> <rejected>`), 0 when it has no such line.
pub fn accepted_rows(text: &str, recipe: &str) -> usize {
    let line = text.lines().find(|l| {
        l.trim_start().starts_with(recipe) && !l.contains('|') && l.split_whitespace().count() == 3
    });
    line.and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}
