//! Seeds from JSONL for `cotforge search` and the benchmarks (jobs read seed
//! Parquet through `store::ingest`): one object per line with `id`, `prompt` or `question`, and an
//! optional `reference_answer` or `answer` (GSM8K's `#### 72` is understood).

use serde_json::Value;

use crate::record::Seed;

use super::SearchError;
use crate::stages::answer::reference_from_field;

/// Parse JSONL text into seeds; a missing id becomes `line-<n>` (1-based).
pub fn seeds_from_jsonl(text: &str) -> Result<Vec<Seed>, SearchError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = |m: String| SearchError::Config(format!("seeds line {}: {m}", i + 1));
        let v: Value = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let id = match v.get("id") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => format!("line-{}", i + 1),
        };
        let prompt = s("prompt")
            .or_else(|| s("question"))
            .ok_or_else(|| bad("no `prompt` or `question` field".into()))?;
        let reference = s("reference_answer")
            .or_else(|| s("answer"))
            .map(|a| reference_from_field(&a));
        out.push(Seed {
            id,
            prompt,
            system: s("system"),
            reference_answer: reference,
            source: s("source"),
            ..Default::default()
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gsm8k_lines_become_seeds() {
        let t =
            "{\"question\":\"q1\",\"answer\":\"work\\n#### 72\"}\n\n{\"id\":7,\"prompt\":\"p\"}\n";
        let s = seeds_from_jsonl(t).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].id, "line-1");
        assert_eq!(s[0].reference_answer.as_deref(), Some("72"));
        assert_eq!(s[1].id, "7");
        assert_eq!(s[1].reference_answer, None);
        assert!(seeds_from_jsonl("{\"id\":1}").is_err());
    }
}
