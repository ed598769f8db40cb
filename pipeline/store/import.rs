//! `cotforge seeds import`: JSON / JSONL seed sets to the seed Parquet schema.
//!
//! Field options take a path into each record: `a.b` follows objects, a
//! number indexes arrays (`instances.0.input`). Values that are numbers or
//! booleans become their JSON text (`3`, `true`); objects and arrays become
//! JSON text. Rules:
//! - `id`: the id field when given and non-empty, else [`derive_id`] of the prompt.
//! - prompt: the prompt field; with `--input-field`, a non-empty input is
//!   appended after a blank line: `instruction + "\n\n" + input` (self-instruct).
//! - answer: with `answer_extract = Auto`, a GSM8K-style answer (a line
//!   `#### N`) becomes `N` with commas removed, and the full worked solution is
//!   kept in `meta` as `{"solution": ...}`; other answers are kept as they are.
//! - records without a prompt (missing, null or blank) are skipped and counted,
//!   with their line/record number, in the [`ImportReport`].
//!
//! The four seed sets shipped in `../shared/data/seeds/` each import with one
//! command (see `scripts/import-seeds.sh`):
//! ```text
//! cotforge seeds import gsm8k_train.jsonl --prompt-field question --answer-field answer --source gsm8k --out gsm8k.parquet
//! cotforge seeds import marco_o1_letter_count.json --id-field id --prompt-field problem --answer-field solution --source marco_o1_letter_count --out letter_count.parquet
//! cotforge seeds import marco_o1_cot_demo.json --prompt-field instruction --response-field response --source marco_o1_cot_demo --out cot_demo.parquet
//! cotforge seeds import self_instruct_seed_tasks.jsonl --id-field id --prompt-field instruction --input-field instances.0.input --meta-field name --meta-field is_classification --source self_instruct --out self_instruct.parquet
//! ```

use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::ingest::derive_id;
use super::parquet_io::{CommittedFile, ParquetSink, WriteOptions};
use super::schema::{seeds_schema, seeds_to_batch};
use super::{io_err, Result, StoreError};
use crate::record::Seed;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    /// One JSON array of records (or a single object).
    Json,
    /// One JSON object per line.
    Jsonl,
}

impl InputFormat {
    /// From the extension: `.jsonl`/`.ndjson` are JSONL, everything else JSON.
    pub fn detect(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some("jsonl") | Some("ndjson") => InputFormat::Jsonl,
            _ => InputFormat::Json,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerExtract {
    /// GSM8K `#### N` answers are reduced to N; others kept.
    Auto,
    /// Keep answers verbatim.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportOptions {
    pub prompt_field: String,
    pub id_field: Option<String>,
    pub answer_field: Option<String>,
    pub response_field: Option<String>,
    pub system_field: Option<String>,
    pub input_field: Option<String>,
    pub meta_fields: Vec<String>,
    pub source: Option<String>,
    pub lang: Option<String>,
    /// None: detect per file from the extension.
    pub format: Option<InputFormat>,
    pub answer_extract: AnswerExtract,
    /// Stop after this many seeds (for committed samples).
    pub limit: Option<usize>,
    pub write: WriteOptions,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self {
            prompt_field: "prompt".into(),
            id_field: None,
            answer_field: None,
            response_field: None,
            system_field: None,
            input_field: None,
            meta_fields: Vec::new(),
            source: None,
            lang: None,
            format: None,
            answer_extract: AnswerExtract::Auto,
            limit: None,
            write: WriteOptions::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportReport {
    pub file: CommittedFile,
    pub seeds: u64,
    /// `path:record: why` for each skipped record.
    pub skipped: Vec<String>,
}

/// Follow a dotted path (`instances.0.input`) into a record.
pub fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |cur, key| match cur {
        Value::Object(m) => m.get(key),
        Value::Array(a) => key.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

pub(crate) fn as_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// `#### 1,234` anywhere (last occurrence) → `1234`: the pipeline's one answer parser.
pub use crate::stages::answer::gsm8k_answer;

/// Map one record to a seed; `Err(reason)` when it has no usable prompt.
pub fn record_to_seed(rec: &Value, o: &ImportOptions) -> std::result::Result<Seed, String> {
    let prompt = as_text(lookup(rec, &o.prompt_field))
        .ok_or_else(|| format!("no prompt field `{}`", o.prompt_field))?;
    if prompt.trim().is_empty() {
        return Err(format!("empty prompt field `{}`", o.prompt_field));
    }
    let prompt = match o
        .input_field
        .as_deref()
        .and_then(|f| as_text(lookup(rec, f)))
    {
        Some(input) if !input.trim().is_empty() => format!("{prompt}\n\n{input}"),
        _ => prompt,
    };
    let id = o
        .id_field
        .as_deref()
        .and_then(|f| as_text(lookup(rec, f)))
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| derive_id(&prompt));
    let mut meta = serde_json::Map::new();
    for f in &o.meta_fields {
        if let Some(v) = lookup(rec, f) {
            meta.insert(f.clone(), v.clone());
        }
    }
    let mut answer = o
        .answer_field
        .as_deref()
        .and_then(|f| as_text(lookup(rec, f)));
    if o.answer_extract == AnswerExtract::Auto {
        if let Some(full) = answer.clone() {
            if let Some(a) = gsm8k_answer(&full) {
                meta.insert("solution".into(), Value::String(full));
                answer = Some(a);
            }
        }
    }
    Ok(Seed {
        id,
        prompt,
        system: o
            .system_field
            .as_deref()
            .and_then(|f| as_text(lookup(rec, f))),
        reference_answer: answer,
        response: o
            .response_field
            .as_deref()
            .and_then(|f| as_text(lookup(rec, f))),
        source: o.source.clone(),
        lang: o.lang.clone(),
        meta: (!meta.is_empty()).then(|| Value::Object(meta).to_string()),
    })
}

fn ierr(path: &Path, reason: impl Into<String>) -> StoreError {
    StoreError::Import {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

pub(crate) type Records = Box<dyn Iterator<Item = Result<(usize, Value)>>>;

/// Records of one file with their 1-based record (JSON) or line (JSONL) number.
pub(crate) fn records(path: &Path, fmt: InputFormat) -> Result<Records> {
    if path.is_dir() {
        return Err(ierr(
            path,
            "is a directory, not a JSON or JSONL file (list the files inside it)",
        ));
    }
    let f = std::fs::File::open(path).map_err(io_err(path))?;
    match fmt {
        InputFormat::Json => {
            let v: Value = serde_json::from_reader(std::io::BufReader::new(f))
                .map_err(|e| ierr(path, format!("invalid JSON: {e}")))?;
            let items = match v {
                Value::Array(a) => a,
                obj @ Value::Object(_) => vec![obj],
                _ => return Err(ierr(path, "expected a JSON array of records")),
            };
            Ok(Box::new(
                items.into_iter().enumerate().map(|(i, v)| Ok((i + 1, v))),
            ))
        }
        InputFormat::Jsonl => {
            let p = path.to_path_buf();
            // Bytes, not `lines()`: invalid UTF-8 is reported with its line number.
            let lines = std::io::BufReader::new(f).split(b'\n').enumerate();
            Ok(Box::new(lines.filter_map(move |(i, line)| {
                let line = match line {
                    Ok(l) => l,
                    Err(e) => return Some(Err(io_err(&p)(e))),
                };
                let line = match String::from_utf8(line) {
                    Ok(l) => l,
                    Err(e) => {
                        return Some(Err(ierr(
                            &p,
                            format!(
                                "line {}: invalid UTF-8 at byte {} of the line; re-encode the file as UTF-8",
                                i + 1,
                                e.utf8_error().valid_up_to()
                            ),
                        )))
                    }
                };
                if line.trim().is_empty() {
                    return None;
                }
                Some(
                    serde_json::from_str(&line)
                        .map(|v| (i + 1, v))
                        .map_err(|e| ierr(&p, format!("line {}: invalid JSON: {e}", i + 1))),
                )
            })))
        }
    }
}

/// Import `inputs` (in order) into one seed Parquet file at `out`, committed
/// atomically; on any error the temporary file is removed and `out` is untouched.
pub fn import(inputs: &[PathBuf], out: &Path, o: &ImportOptions) -> Result<ImportReport> {
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let mut sink = ParquetSink::create(out, seeds_schema(), &o.write)?;
    let mut buf: Vec<Seed> = Vec::with_capacity(4096);
    let mut skipped = Vec::new();
    let mut seeds = 0u64;
    'files: for path in inputs {
        let fmt = o.format.unwrap_or_else(|| InputFormat::detect(path));
        for r in records(path, fmt)? {
            if o.limit.is_some_and(|l| seeds as usize >= l) {
                break 'files;
            }
            let (n, rec) = r?;
            match record_to_seed(&rec, o) {
                Ok(s) => {
                    buf.push(s);
                    seeds += 1;
                }
                Err(why) => skipped.push(format!("{}:{n}: {why}", path.display())),
            }
            if buf.len() >= 4096 {
                sink.write(&seeds_to_batch(&buf)?)?;
                buf.clear();
            }
        }
    }
    if !buf.is_empty() {
        sink.write(&seeds_to_batch(&buf)?)?;
    }
    let file = sink.commit()?;
    Ok(ImportReport {
        file,
        seeds,
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gsm8k_answers_are_extracted() {
        assert_eq!(gsm8k_answer("a\n#### 1,234").as_deref(), Some("1234"));
        assert_eq!(gsm8k_answer("no marker"), None);
        let o = ImportOptions {
            prompt_field: "question".into(),
            answer_field: Some("answer".into()),
            ..Default::default()
        };
        let s = record_to_seed(
            &serde_json::json!({"question": "Q?", "answer": "x\n#### 72"}),
            &o,
        )
        .expect("seed");
        assert_eq!(s.reference_answer.as_deref(), Some("72"));
        assert_eq!(s.id, derive_id("  Q? "));
        assert!(s.meta.is_some_and(|m| m.contains("solution")));
    }

    #[test]
    fn integers_become_strings_and_inputs_are_joined() {
        let o = ImportOptions {
            prompt_field: "problem".into(),
            answer_field: Some("solution".into()),
            id_field: Some("id".into()),
            ..Default::default()
        };
        let s = record_to_seed(
            &serde_json::json!({"id": "real_0", "problem": "P", "solution": 3}),
            &o,
        )
        .expect("seed");
        assert_eq!(
            (s.id.as_str(), s.reference_answer.as_deref()),
            ("real_0", Some("3"))
        );
        let o = ImportOptions {
            prompt_field: "instruction".into(),
            input_field: Some("instances.0.input".into()),
            ..Default::default()
        };
        let rec = serde_json::json!({"instruction": "Do", "instances": [{"input": "this"}]});
        assert_eq!(record_to_seed(&rec, &o).expect("seed").prompt, "Do\n\nthis");
        let rec = serde_json::json!({"instruction": "Do", "instances": [{"input": ""}]});
        assert_eq!(record_to_seed(&rec, &o).expect("seed").prompt, "Do");
        assert!(record_to_seed(&serde_json::json!({"x": 1}), &o).is_err());
    }
}
