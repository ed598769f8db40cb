//! The wire format: serde types for the OpenAI-compatible endpoints cotforge
//! uses, in the shapes llama-server (llama.cpp, the `llama-cpp-python==0.3.36`
//! vendored tree) and vLLM actually send, normalized into [`RawToken`]s.
//!
//! Two log-probability shapes exist for `/v1/completions`:
//! - llama-server: `logprobs.content[i] = {id, token, bytes, logprob,
//!   top_logprobs: [{id, token, bytes, logprob}]}` (ids always present);
//! - OpenAI legacy (vLLM, SGLang): `logprobs = {tokens, token_logprobs,
//!   top_logprobs: [{token: logprob}]}`, where tokens are ids only with
//!   `return_tokens_as_token_ids` (`"token_id:123"`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::super::Token;

/// `POST /v1/completions`. The prompt is sent as token ids, so the server
/// never re-tokenizes text (no drift at token boundaries).
#[derive(Debug, Clone, Serialize)]
pub struct CompletionRequest<'a> {
    pub model: &'a str,
    pub prompt: &'a [Token],
    pub max_tokens: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u32,
    /// Top log-probabilities per generated token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<u32>,
    /// Completions sharing the prompt: the server evaluates it once and
    /// shares its KV (llama-server gives completion `i` the seed `seed + i`).
    pub n: usize,
    pub stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub stop: &'a [String],
    /// vLLM: log-probabilities of the prompt tokens (teacher-forced scoring).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_logprobs: Option<u32>,
    /// vLLM / SGLang: report tokens as `token_id:N` instead of text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub return_tokens_as_token_ids: Option<bool>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub llama: Option<LlamaExtras>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct StreamOptions {
    pub include_usage: bool,
    /// vLLM: usage in every chunk, so a cancelled stream still reports its prompt.
    pub continuous_usage_stats: bool,
}

/// llama-server's own request fields: its default sampler chain (top-k 40,
/// min-p 0.05, ...) is replaced by the engine's (temperature, then nucleus over
/// the tempered distribution), prompt caching is on, and every streamed token
/// carries the slot's timings (`cache_n`, `predicted_n`).
#[derive(Debug, Clone, Serialize)]
pub struct LlamaExtras {
    pub cache_prompt: bool,
    pub top_k: i32,
    pub min_p: f32,
    pub typical_p: f32,
    pub repeat_penalty: f32,
    pub samplers: [&'static str; 2],
    pub timings_per_token: bool,
    /// No SSE comment pings: a silent stream is a hung server.
    pub sse_ping_interval: i32,
    /// The slot to run on (`None`: the server's choice).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_slot: Option<usize>,
}

impl Default for LlamaExtras {
    fn default() -> Self {
        Self {
            cache_prompt: true,
            top_k: 0,
            min_p: 0.0,
            typical_p: 1.0,
            repeat_penalty: 1.0,
            samplers: ["temperature", "top_p"],
            timings_per_token: true,
            sse_ping_interval: -1,
            id_slot: None,
        }
    }
}

/// One JSON object of a completion response (a whole response, or one SSE event).
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionChunk {
    #[serde(default)]
    pub choices: Vec<Choice>,
    pub usage: Option<Usage>,
    pub timings: Option<Timings>,
    pub error: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Choice {
    #[serde(default)]
    pub index: usize,
    pub logprobs: Option<Logprobs>,
    pub finish_reason: Option<String>,
    /// vLLM: the stop string or token id that ended the completion; null for EOS.
    pub stop_reason: Option<serde_json::Value>,
    /// vLLM: per prompt token `{token id: {logprob, rank}}` (the first is null).
    pub prompt_logprobs: Option<Vec<Option<BTreeMap<String, PromptLogprob>>>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Logprobs {
    Content {
        content: Vec<ContentLogprob>,
    },
    Legacy {
        #[serde(default)]
        tokens: Vec<String>,
        #[serde(default)]
        token_logprobs: Vec<Option<f64>>,
        #[serde(default)]
        top_logprobs: Vec<Option<BTreeMap<String, f64>>>,
    },
}

#[derive(Debug, Clone, Deserialize)]
pub struct ContentLogprob {
    pub id: Token,
    pub logprob: f64,
    #[serde(default)]
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TopLogprob {
    pub id: Token,
    pub logprob: f64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PromptLogprob {
    pub logprob: f64,
    pub rank: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct PromptTokensDetails {
    pub cached_tokens: Option<u64>,
}

/// llama-server's slot timings.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Timings {
    /// Prompt tokens reused from the slot's cache.
    pub cache_n: Option<i64>,
    /// Prompt tokens evaluated.
    pub prompt_n: Option<i64>,
    /// Tokens generated so far (withheld ones included).
    pub predicted_n: Option<i64>,
}

/// One generated token, normalized: id, its log-probability, and the top
/// log-probabilities (largest first, lower id first on ties, at most 5).
#[derive(Debug, Clone, PartialEq)]
pub struct RawToken {
    pub token: Token,
    pub logprob: f32,
    pub top: Vec<(Token, f32)>,
}

/// Parse vLLM's `token_id:123`.
fn token_id(s: &str) -> Result<Token, String> {
    s.strip_prefix("token_id:")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| {
            format!(
                "the server named a token {s:?} instead of its id (a vLLM server needs \
                 return_tokens_as_token_ids, which cotforge sends; upgrade the server)"
            )
        })
}

/// Largest first, lower id on ties, then the first `k` (as `top_k_logits` orders logits).
pub fn sort_top(mut top: Vec<(Token, f32)>, k: usize) -> Vec<(Token, f32)> {
    top.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    top.dedup_by_key(|t| t.0);
    top.truncate(k);
    top
}

impl Logprobs {
    /// The generated tokens of this chunk, in order.
    pub fn tokens(&self, k: usize) -> Result<Vec<RawToken>, String> {
        match self {
            Logprobs::Content { content } => Ok(content
                .iter()
                .map(|c| RawToken {
                    token: c.id,
                    logprob: c.logprob as f32,
                    top: sort_top(
                        c.top_logprobs
                            .iter()
                            .map(|t| (t.id, t.logprob as f32))
                            .collect(),
                        k,
                    ),
                })
                .collect()),
            Logprobs::Legacy {
                tokens,
                token_logprobs,
                top_logprobs,
            } => {
                let mut out = Vec::with_capacity(tokens.len());
                for (i, t) in tokens.iter().enumerate() {
                    let lp = token_logprobs
                        .get(i)
                        .copied()
                        .flatten()
                        .ok_or_else(|| format!("token {i} has no log-probability"))?;
                    let top = match top_logprobs.get(i).and_then(|m| m.as_ref()) {
                        Some(m) => m
                            .iter()
                            .map(|(k, v)| Ok((token_id(k)?, *v as f32)))
                            .collect::<Result<Vec<_>, String>>()?,
                        None => return Err(format!("token {i} has no top log-probabilities")),
                    };
                    out.push(RawToken {
                        token: token_id(t)?,
                        logprob: lp as f32,
                        top: sort_top(top, k),
                    });
                }
                Ok(out)
            }
        }
    }
}

/// Teacher-forced log-probabilities of `prompt[from..]` from vLLM's
/// `prompt_logprobs`: for each position the prompt token's own value and the
/// entries ranked 1..=k.
pub fn prompt_tokens(
    rows: &[Option<BTreeMap<String, PromptLogprob>>],
    prompt: &[Token],
    from: usize,
    k: usize,
) -> Result<Vec<RawToken>, String> {
    if rows.len() != prompt.len() {
        return Err(format!(
            "prompt_logprobs has {} rows for a prompt of {} tokens",
            rows.len(),
            prompt.len()
        ));
    }
    let mut out = Vec::with_capacity(prompt.len().saturating_sub(from));
    for (pos, &tok) in prompt.iter().enumerate().skip(from) {
        let row = rows[pos]
            .as_ref()
            .ok_or_else(|| format!("prompt position {pos} has no log-probabilities"))?;
        let mut own = None;
        let mut top = Vec::new();
        for (key, v) in row {
            let id: Token = key
                .parse()
                .map_err(|_| format!("prompt_logprobs key {key:?} is not a token id"))?;
            if id == tok {
                own = Some(v.logprob as f32);
            }
            if v.rank.is_some_and(|r| r as usize <= k) {
                top.push((id, v.logprob as f32));
            }
        }
        let logprob = own.ok_or_else(|| {
            format!("prompt position {pos}: token {tok} missing from its own log-probabilities")
        })?;
        out.push(RawToken {
            token: tok,
            logprob,
            top: sort_top(top, k),
        });
    }
    Ok(out)
}

/// `GET /v1/models`.
#[derive(Debug, Clone, Deserialize)]
pub struct ModelList {
    #[serde(default)]
    pub data: Vec<ModelInfo>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ModelInfo {
    pub id: String,
    #[serde(default)]
    pub owned_by: String,
    /// vLLM: the context length.
    pub max_model_len: Option<usize>,
    /// llama-server: vocabulary and context sizes.
    pub meta: Option<ModelMeta>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ModelMeta {
    pub n_vocab: Option<usize>,
    pub n_ctx: Option<usize>,
}

/// llama-server's `GET /props` (the fields cotforge reads).
#[derive(Debug, Clone, Deserialize)]
pub struct Props {
    pub total_slots: Option<usize>,
    pub eos_token: Option<String>,
    pub build_info: Option<String>,
    pub default_generation_settings: Option<GenerationSettings>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct GenerationSettings {
    pub n_ctx: Option<usize>,
}

/// llama-server's `POST /tokenize`.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenizeResponse<T> {
    pub tokens: Vec<T>,
}

/// A token with its piece: text when valid UTF-8, else the bytes.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenPiece {
    pub id: Token,
    pub piece: Piece,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Piece {
    Text(String),
    Bytes(Vec<u8>),
}

impl Piece {
    pub fn into_bytes(self) -> Vec<u8> {
        match self {
            Piece::Text(s) => s.into_bytes(),
            Piece::Bytes(b) => b,
        }
    }
}

/// `POST /apply-template` (llama-server): the chat template rendered by the server.
#[derive(Debug, Clone, Serialize)]
pub struct ApplyTemplateRequest<'a> {
    pub messages: &'a [super::super::ChatMessage],
}

#[derive(Debug, Clone, Deserialize)]
pub struct ApplyTemplateResponse {
    pub prompt: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_llama_server_stream_event() {
        let ev = r#"{"choices":[{"text":" the","index":0,"logprobs":{"content":[{"id":260,"token":" the","bytes":[32,116,104,101],"logprob":-0.25,"top_logprobs":[{"id":17,"token":"a","bytes":[97],"logprob":-2.5},{"id":260,"token":" the","bytes":[32,116,104,101],"logprob":-0.25}]}]},"finish_reason":null}],"created":1,"model":"m","object":"text_completion","id":"x","timings":{"cache_n":40,"prompt_n":3,"predicted_n":1}}"#;
        let c: CompletionChunk = serde_json::from_str(ev).unwrap();
        let t = c.choices[0].logprobs.as_ref().unwrap().tokens(5).unwrap();
        assert_eq!(
            t,
            vec![RawToken {
                token: 260,
                logprob: -0.25,
                top: vec![(260, -0.25), (17, -2.5)]
            }]
        );
        assert_eq!(c.timings.unwrap().cache_n, Some(40));
    }

    #[test]
    fn parses_vllm_legacy_logprobs_with_token_ids() {
        let ev = r#"{"id":"c","object":"text_completion","created":1,"model":"m","choices":[{"index":1,"text":" 4","logprobs":{"text_offset":[0],"token_logprobs":[-0.1],"tokens":["token_id:220"],"top_logprobs":[{"token_id:220":-0.1,"token_id:19":-2.0,"token_id:5":-3.0,"token_id:7":-3.0,"token_id:9":-4.0,"token_id:11":-9.0}]},"finish_reason":"stop","stop_reason":null}],"usage":{"prompt_tokens":12,"completion_tokens":1,"total_tokens":13,"prompt_tokens_details":{"cached_tokens":8}}}"#;
        let c: CompletionChunk = serde_json::from_str(ev).unwrap();
        let ch = &c.choices[0];
        assert_eq!(ch.index, 1);
        let t = ch.logprobs.as_ref().unwrap().tokens(5).unwrap();
        // Six candidates: the five largest, ties by lower id.
        assert_eq!(
            t[0].top,
            vec![(220, -0.1), (19, -2.0), (5, -3.0), (7, -3.0), (9, -4.0)]
        );
        let u = c.usage.unwrap();
        assert_eq!(u.prompt_tokens_details.unwrap().cached_tokens, Some(8));
    }

    #[test]
    fn token_strings_instead_of_ids_are_an_error_that_says_why() {
        let lp = Logprobs::Legacy {
            tokens: vec!["Ġthe".into()],
            token_logprobs: vec![Some(-1.0)],
            top_logprobs: vec![None],
        };
        let e = lp.tokens(5).unwrap_err();
        assert!(
            e.contains("return_tokens_as_token_ids") || e.contains("top log"),
            "{e}"
        );
    }

    #[test]
    fn parses_vllm_prompt_logprobs() {
        let j = r#"[null,{"5":{"logprob":-1.5,"rank":3,"decoded_token":"a"},"9":{"logprob":-0.2,"rank":1},"2":{"logprob":-0.9,"rank":2}},{"77":{"logprob":-8.0,"rank":40},"1":{"logprob":-0.1,"rank":1}}]"#;
        let rows: Vec<Option<BTreeMap<String, PromptLogprob>>> = serde_json::from_str(j).unwrap();
        let t = prompt_tokens(&rows, &[1, 5, 77], 1, 5).unwrap();
        assert_eq!(t[0].token, 5);
        assert_eq!(t[0].logprob, -1.5);
        assert_eq!(t[0].top, vec![(9, -0.2), (2, -0.9), (5, -1.5)]);
        // Outside the top k: its own value is the numerator, not part of the top.
        assert_eq!(t[1].logprob, -8.0);
        assert_eq!(t[1].top, vec![(1, -0.1)]);
        assert!(prompt_tokens(&rows, &[1, 5], 1, 5).is_err());
    }

    #[test]
    fn llama_extras_serialize_into_the_request() {
        let r = CompletionRequest {
            model: "m",
            prompt: &[1, 2],
            max_tokens: 8,
            temperature: 0.7,
            top_p: 0.9,
            seed: 7,
            logprobs: Some(5),
            n: 1,
            stream: true,
            stream_options: None,
            stop: &[],
            prompt_logprobs: None,
            return_tokens_as_token_ids: None,
            llama: Some(LlamaExtras::default()),
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["samplers"], serde_json::json!(["temperature", "top_p"]));
        assert_eq!(v["top_k"], 0);
        assert!(v.get("stop").is_none() && v.get("prompt_logprobs").is_none());
    }
}
