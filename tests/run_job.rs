//! `cotforge run` end to end on the scripted engine: array workers equal a
//! single worker, SIGTERM then rerun equals an uninterrupted run, and bad job
//! files fail before any work with the key and its line.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cotforge"))
}

fn repo(p: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(p)
        .display()
        .to_string()
}

/// The scripted demo job with absolute paths and `out` in `dir`.
fn scripted_job(dir: &Path, name: &str) -> PathBuf {
    common::scripted_job(dir, name, |t| t).0
}

fn out_of(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("out-{name}"))
}

fn run_ok(args: &[&str]) -> String {
    let mut a = args.to_vec();
    if args[0] == "run" {
        a.push("--no-progress");
    }
    common::run_ok(env!("CARGO_BIN_EXE_cotforge"), &a)
}

/// Every file of the final output and the export, as (relative path, bytes).
fn final_files(out: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    for sub in ["final/chains.parquet", "final/rejected-dedup.parquet"] {
        v.push((sub.to_string(), std::fs::read(out.join(sub)).unwrap()));
    }
    let mut data: Vec<_> = std::fs::read_dir(out.join("export/data"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    data.sort();
    assert!(!data.is_empty(), "export wrote no data files");
    for p in data {
        v.push((
            p.file_name().unwrap().to_string_lossy().into_owned(),
            std::fs::read(&p).unwrap(),
        ));
    }
    v
}

fn assert_same_output(a: &Path, b: &Path) {
    let (fa, fb) = (final_files(a), final_files(b));
    assert_eq!(fa.len(), fb.len());
    for ((na, ba), (nb, bb)) in fa.iter().zip(&fb) {
        assert_eq!(na, nb);
        assert!(
            ba == bb,
            "{na} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
}

#[test]
fn four_array_workers_equal_one_worker_and_reruns_are_identical() {
    let dir = tempfile::tempdir().unwrap();
    let single = scripted_job(dir.path(), "single");
    let text = run_ok(&["run", single.to_str().unwrap()]);
    assert!(text.contains("final:"), "{text}");

    // Four workers at once, as a Slurm array / k8s Indexed Job would start them.
    let multi = scripted_job(dir.path(), "multi");
    let children: Vec<_> = (0..4)
        .map(|i| {
            bin()
                .args(["run", multi.to_str().unwrap(), "--no-progress"])
                .env("SLURM_ARRAY_TASK_ID", i.to_string())
                .env("SLURM_ARRAY_TASK_COUNT", "4")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "worker failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(String::from_utf8_lossy(&o.stderr).contains("cotforge finalize"));
    }
    run_ok(&["finalize", multi.to_str().unwrap()]);
    assert_same_output(&out_of(dir.path(), "single"), &out_of(dir.path(), "multi"));

    // A rerun of a finished job changes nothing and verify passes.
    run_ok(&["run", single.to_str().unwrap()]);
    assert_same_output(&out_of(dir.path(), "single"), &out_of(dir.path(), "multi"));
    run_ok(&["verify", out_of(dir.path(), "single").to_str().unwrap()]);

    // Stats of a finalized run count the deduplicated chains of final/, not
    // the shard files' pre-dedup rows as well.
    let out = out_of(dir.path(), "single");
    let fin = cotforge::report::io::read_chains(&out.join("final/chains.parquet")).unwrap();
    let s = cotforge::report::Summary::from_out_dir(&out).unwrap();
    assert!(!fin.is_empty());
    assert_eq!(s.accepted, fin.len());
}

#[test]
fn sigterm_then_rerun_equals_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let reference = scripted_job(dir.path(), "reference");
    run_ok(&["run", reference.to_str().unwrap()]);

    let job = scripted_job(dir.path(), "interrupted");
    let mut interrupted = 0;
    for delay_ms in [300u64, 900, 1800, 3000] {
        let child = bin()
            .args(["run", job.to_str().unwrap(), "--no-progress"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        unsafe {
            libc_kill(child.id() as i32, 15);
        }
        let o = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        match o.status.code() {
            Some(130) => {
                interrupted += 1;
                assert!(err.contains("rerun"), "{err}");
            }
            Some(0) => {} // finished before the signal
            other => panic!("unexpected exit {other:?}: {err}"),
        }
    }
    assert!(
        interrupted >= 1,
        "no run was interrupted; the signal test tested nothing"
    );
    run_ok(&["run", job.to_str().unwrap()]);
    assert_same_output(
        &out_of(dir.path(), "reference"),
        &out_of(dir.path(), "interrupted"),
    );
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// Write `body` as a job file and return cotforge's error output.
fn job_error(dir: &Path, body: &str) -> String {
    let p = dir.join("bad.toml");
    std::fs::write(&p, body).unwrap();
    let o = bin()
        .args(["run", p.to_str().unwrap(), "--no-progress"])
        .output()
        .unwrap();
    assert!(!o.status.success(), "a bad job ran:\n{body}");
    assert!(!dir.join("never").exists(), "a bad job wrote output");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn the_committed_job_files_parse() {
    for name in ["demo.toml", "scripted.toml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("data/jobs")
            .join(name);
        let job = cotforge::recipes::job::load(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!job.recipes.is_empty(), "{name}");
        if name == "demo.toml" {
            // The search recipe's KV budget is read, not silently dropped.
            assert!(job.recipes.iter().any(|r| r
                .spec
                .driver
                .as_ref()
                .is_some_and(|d| d.max_cells == Some(2048))));
        }
    }
}

#[test]
fn bad_job_files_point_at_the_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let seeds = repo("data/seeds/gsm8k.parquet");
    let out = d.join("never").display().to_string();
    let base = |engine: &str, recipe_extra: &str| {
        format!("out = {out:?}\n\n[engine]\n{engine}\n\n[[recipe]]\nkind = \"marco_cot\"\nseeds = [{seeds:?}]\n{recipe_extra}")
    };
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        ("unknown key", base("kind = \"scripted\"\nn_paralel = 4", ""), vec!["bad.toml:5:1: engine.n_paralel:", "line 5", "n_paralel"]),
        ("wrong type", base("kind = \"scripted\"\nn_parallel = \"eight\"", ""), vec!["bad.toml:5:14: engine.n_parallel:", "line 5", "n_parallel"]),
        ("missing model", base("kind = \"llama\"\nmodel = \"/nowhere/model.gguf\"", ""), vec!["bad.toml:5:1: engine.model:", "/nowhere/model.gguf", "setup.sh"]),
        (
            "missing seed file",
            format!("out = {out:?}\n[engine]\nkind = \"scripted\"\n[[recipe]]\nkind = \"open_o1\"\nseeds = [\"/nowhere/seeds.parquet\"]\n"),
            vec!["bad.toml:6:1: recipe[0].seeds:", "/nowhere/seeds.parquet", "seeds import"],
        ),
        (
            "reward threshold outside [0, 1]",
            base("kind = \"scripted\"", "[[recipe.filters]]\ntype = \"format\"\n[[recipe.filters]]\ntype = \"reward\"\nmin_reward = 1.5\n"),
            vec!["bad.toml:13:1: recipe[0].filters[1].min_reward:", "[0, 1]"],
        ),
        (
            "inline filter table",
            base("kind = \"scripted\"", "filters = [{ type = \"format\" }, { type = \"reward\", min_reward = 1.5 }]\n"),
            vec!["bad.toml:9:52: recipe[0].filters[1].min_reward:", "[0, 1]"],
        ),
        ("n_parallel 0", base("kind = \"scripted\"\nn_parallel = 0", ""), vec!["bad.toml:5:1: engine.n_parallel:", "at least 1"]),
        ("no recipe", format!("out = {out:?}\n[engine]\nkind = \"scripted\"\n"), vec!["bad.toml", "recipe"]),
        (
            "section of another recipe",
            base("kind = \"scripted\"", "[recipe.instruction]\nn = 2\n"),
            vec!["bad.toml:9:1: recipe[0].instruction:", "instruction only"],
        ),
    ];
    for (name, body, needles) in cases {
        let err = job_error(d, &body);
        for n in needles {
            assert!(
                err.contains(n),
                "{name}: expected {n:?} in:\n{err}\n--- job:\n{body}"
            );
        }
    }
}

#[cfg(feature = "llama")]
#[test]
fn real_model_end_to_end_all_three_recipes() {
    let Some(model) = common::model_path() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // A handful of seeds per recipe, small budgets: the machinery, not accuracy.
    let job = format!(
        r#"seed = 3
out = {out:?}
num_shards = 2

[engine]
model = {model:?}
threads = 2
n_parallel = 8
n_ctx = 8192

[store]
batch_seeds = 8

{recipes}
"#,
        out = out.display().to_string(),
        model = model.display().to_string(),
        recipes = common::small_model_recipes(true),
    );
    let p = dir.path().join("job.toml");
    std::fs::write(&p, job).unwrap();
    let text = run_ok(&["run", p.to_str().unwrap()]);
    println!("{text}");
    for recipe in ["open_o1", "marco_cot", "instruction"] {
        let accepted = common::accepted_rows(&text, recipe);
        assert!(accepted > 0, "{recipe} accepted no rows:\n{text}");
    }
    run_ok(&["verify", out.to_str().unwrap()]);
    // The export loads with pyarrow (skipped only with COTFORGE_SKIP_PY=1).
    if std::env::var("COTFORGE_SKIP_PY").as_deref() != Ok("1") {
        let o = Command::new("python3")
            .args(["-c", "import sys, pyarrow.parquet as pq, glob; fs = glob.glob(sys.argv[1] + '/data/*.parquet'); n = sum(pq.read_table(f).num_rows for f in fs); assert fs and n > 0, (fs, n); print(n)"])
            .arg(out.join("export"))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "pyarrow could not read the export: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

#[test]
fn a_second_night_ships_nothing_the_first_night_shipped() {
    let dir = tempfile::tempdir().unwrap();
    let index = dir.path().join("dedup-index");
    let with_index = |name: &str| {
        let p = scripted_job(dir.path(), name);
        let text = std::fs::read_to_string(&p).unwrap().replace(
            "[dedup]\nenabled = true\n",
            &format!(
                "[dedup]\nenabled = true\nindex = {:?}\n",
                index.display().to_string()
            ),
        );
        assert!(
            text.contains("index ="),
            "job template changed: no [dedup] section to extend"
        );
        std::fs::write(&p, text).unwrap();
        p
    };
    let night1 = with_index("night1");
    run_ok(&["run", night1.to_str().unwrap()]);
    let first = final_files(&out_of(dir.path(), "night1"));
    // Rerunning the finished night compares against the index as it was before
    // that night, so it does not reject its own chains.
    run_ok(&["finalize", night1.to_str().unwrap()]);
    assert_eq!(first, final_files(&out_of(dir.path(), "night1")));

    // Night 2 makes the same chains (same seeds, same job seed): all are duplicates.
    let night2 = with_index("night2");
    let text = run_ok(&["run", night2.to_str().unwrap()]);
    assert!(
        text.contains("final: 0 chains"),
        "night 2 shipped chains again:\n{text}"
    );
}
