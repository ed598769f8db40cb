//! The Python readers the export tests check their output with:
//! `tests/py/check_export.py` (pyarrow, datasets, polars, duckdb) and
//! `tests/py/check_trl.py` (datasets, transformers, gguf, trl; no torch).
//! scripts/test.sh installs them; COTFORGE_SKIP_PY=1 skips the Python half
//! (and says so), otherwise a missing package fails the test.

use std::path::Path;
use std::process::Command;

pub fn python() -> String {
    std::env::var("COTFORGE_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn ready(imports: &str, install: &str) -> bool {
    let skip = std::env::var("COTFORGE_SKIP_PY").is_ok_and(|v| v == "1");
    let probe = Command::new(python())
        .args(["-c", &format!("import {imports}")])
        .output();
    match probe {
        Ok(o) if o.status.success() => true,
        other => {
            let why = match other {
                Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                Err(e) => format!("cannot run {}: {e}", python()),
            };
            if skip {
                eprintln!("SKIPPED python export checks (COTFORGE_SKIP_PY=1): {why}");
                false
            } else {
                panic!(
                    "python export checks need python3 with {imports} ({install}), \
                     or set COTFORGE_SKIP_PY=1 to skip: {why}"
                );
            }
        }
    }
}

/// True when check_export.py can run.
pub fn python_ready() -> bool {
    ready(
        "pyarrow, polars, datasets, duckdb, yaml",
        "pip install pyarrow polars datasets duckdb",
    )
}

/// True when check_trl.py can run.
pub fn trl_ready() -> bool {
    ready(
        "datasets, transformers, gguf, trl.data_utils",
        "see scripts/test.sh: pip install transformers gguf, and trl with --no-deps",
    )
}

fn run(script: &str, args: &[String], ok: &str) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(script);
    let out = Command::new(python())
        .arg(&script)
        .args(args)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} {args:?} failed:\n{stdout}\n{stderr}",
        script.display()
    );
    assert!(stdout.contains(ok), "{stdout}");
    println!("{}", stdout.trim());
    stdout.into_owned()
}

/// check_export.py on one export directory.
pub fn check_export(dir: &Path, format: &str, style: &str, row_group_rows: usize, expect: usize) {
    let args = vec![
        dir.display().to_string(),
        "--format".into(),
        format.into(),
        "--style".into(),
        style.into(),
        "--row-group-rows".into(),
        row_group_rows.to_string(),
        "--expect-rows".into(),
        expect.to_string(),
    ];
    run("check_export.py", &args, "check_export: OK");
}

/// check_trl.py on `(format, dir)` exports with the GGUF's tokenizer.
pub fn check_trl(gguf: &Path, exports: &[(&str, &Path)], prm_threshold: f64) {
    let mut args = vec![
        "--gguf".to_string(),
        gguf.display().to_string(),
        "--prm-threshold".into(),
        prm_threshold.to_string(),
    ];
    args.extend(exports.iter().map(|(f, d)| format!("{f}={}", d.display())));
    let out = run("check_trl.py", &args, "check_trl: OK");
    for (f, _) in exports {
        assert!(out.contains(&format!("check_trl: OK {f}:")), "{out}");
    }
}
