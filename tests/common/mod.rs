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
