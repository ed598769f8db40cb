//! The recipes llama-server can serve, over HTTP on the committed seed
//! samples: chains, rejects and manifests in the store's schema (the one the
//! native engine writes), `cotforge verify` passes; open_o1 refuses clearly.
#![cfg(feature = "llama")]

mod common;
mod http_support;

use std::path::Path;
use std::process::Command;

use cotforge::store::manifest::Manifest;
use cotforge::store::parquet_io::read_parquet;
use cotforge::store::schema::{chains_schema, rejects_schema};
use http_support::{http_job_head, start_server};

fn repo(p: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(p)
        .display()
        .to_string()
}

fn cotforge(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cotforge"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn marco_cot_and_instruction_run_over_llama_server() {
    let Some(model) = common::model_path() else {
        return;
    };
    // The server's own tokenizer and (legacy) template: no GGUF on the client.
    let server = start_server(&model, 8);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let job = format!(
        "{}\n[store]\nbatch_seeds = 4\n\n{}",
        http_job_head(3, &out, 2, 8, &server.url(), "stop = [\"</Output>\"]"),
        common::small_model_recipes(false),
    );
    let p = dir.path().join("job.toml");
    std::fs::write(&p, job).unwrap();
    let o = cotforge(&["run", p.to_str().unwrap(), "--no-progress"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "run failed:\n{text}");
    for recipe in ["marco_cot", "instruction"] {
        let accepted = common::accepted_rows(&text, recipe);
        assert!(accepted > 0, "{recipe} accepted no rows:\n{text}");
    }
    let v = cotforge(&["verify", out.to_str().unwrap()]);
    assert!(
        v.status.success(),
        "verify: {}",
        String::from_utf8_lossy(&v.stderr)
    );
    // Every shard file in the store's schema, every manifest readable.
    let mut files = 0;
    for e in walkdir::WalkDir::new(out.join("shards"))
        .into_iter()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        let want = if name.starts_with("shard-") && name.ends_with(".parquet") {
            Some(chains_schema())
        } else if name.starts_with("rejected-") && name.ends_with(".parquet") {
            Some(rejects_schema())
        } else {
            None
        };
        if let Some(want) = want {
            for b in read_parquet(e.path()).unwrap() {
                assert_eq!(b.schema().fields(), want.fields(), "{}", e.path().display());
            }
            files += 1;
        }
        if name.starts_with("manifest-") {
            let m: Manifest = serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
            assert!(!m.files.is_empty(), "{}", e.path().display());
        }
    }
    assert!(
        files >= 4,
        "only {files} shard files under {}",
        out.display()
    );
}

#[test]
fn open_o1_refuses_over_llama_server_before_writing_anything() {
    let Some(model) = common::model_path() else {
        return;
    };
    let server = start_server(&model, 2);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let job = format!(
        "out = {out:?}\n[engine]\nkind = \"http\"\n[engine.http]\nbase_urls = [{url:?}]\ntokenizer = {model:?}\n\n[[recipe]]\nkind = \"open_o1\"\nseeds = [{cot:?}]\nlimit = 2\n",
        out = out.display().to_string(),
        url = server.url(),
        model = model.display().to_string(),
        cot = repo("data/seeds/cot_demo.parquet"),
    );
    let p = dir.path().join("job.toml");
    std::fs::write(&p, job).unwrap();
    let o = cotforge(&["run", p.to_str().unwrap(), "--no-progress"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "open_o1 ran over llama-server:\n{err}");
    assert!(
        err.contains(&server.url()) && err.contains("prompt") && err.contains("llama-server"),
        "{err}"
    );
    let chains = walkdir::WalkDir::new(&out)
        .into_iter()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".parquet"))
        .count();
    assert_eq!(chains, 0, "open_o1 wrote output over llama-server");
}

#[test]
fn the_http_job_file_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/jobs/http.toml");
    let job =
        cotforge::recipes::job::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let e = &job.file.engine;
    assert_eq!(e.kind, cotforge::engine::EngineKind::Http);
    assert_eq!(e.http.base_urls, vec!["http://127.0.0.1:8080".to_string()]);
    assert_eq!(e.http.max_in_flight, 16);
    assert!(job.recipes.len() >= 2);
    // A typo in [engine.http] is rejected with the key, as everywhere else.
    let bad = std::fs::read_to_string(&path)
        .unwrap()
        .replace("chunk_tokens =", "chunk_token =");
    let p = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(p.path(), bad).unwrap();
    let err = cotforge::recipes::job::load(p.path())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("chunk_token"), "{err}");
}
