//! The `judge` value function's second model: it reads a question and one
//! chain under the rubric of prompts/judge.toml and gives P(yes) for the
//! verdict, from its logits at the first token of the reply (one forward
//! pass, nothing generated, deterministic). For open-ended seeds, where no
//! answer can be extracted or checked.

use serde::{Deserialize, Serialize};

use crate::engine::{ChatMessage, Engine, EngineConfig, Token};

use super::tree::NodeId;
use super::SearchError;

/// The embedded prompts/judge.toml.
pub const JUDGE_PROMPTS_TOML: &str = include_str!("../../prompts/judge.toml");

/// The rubric: system and user templates and the two verdict words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgePrompts {
    pub system: String,
    /// With `{question}`, `{reasoning}` and `{answer}`.
    pub user: String,
    pub yes: String,
    pub no: String,
}

impl JudgePrompts {
    /// The embedded rubric (a unit test keeps it parseable).
    pub fn embedded() -> Result<Self, SearchError> {
        toml::from_str(JUDGE_PROMPTS_TOML)
            .map_err(|e| SearchError::Config(format!("prompts/judge.toml: {e}")))
    }
}

/// `[search.judge]`: the judge engine and how much of a chain it reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JudgeConfig {
    /// Any engine: another GGUF, the same file again, or the scripted one in tests.
    pub engine: EngineConfig,
    /// Longest reasoning shown (characters; the end is kept, where the answer is).
    pub max_reasoning_chars: usize,
    /// Override of prompts/judge.toml.
    pub prompts: Option<JudgePrompts>,
}

impl Default for JudgeConfig {
    fn default() -> Self {
        Self {
            engine: EngineConfig {
                n_ctx: 4096,
                n_parallel: 4,
                n_seq_max: 8,
                ..EngineConfig::default()
            },
            max_reasoning_chars: 4000,
            prompts: None,
        }
    }
}

impl JudgeConfig {
    pub fn validate(&self) -> Result<(), SearchError> {
        self.engine
            .validate()
            .map_err(|e| SearchError::Config(format!("judge engine: {e}")))?;
        if self.max_reasoning_chars == 0 {
            return Err(SearchError::Config(
                "judge.max_reasoning_chars must be >= 1".into(),
            ));
        }
        Ok(())
    }

    /// Load the judge engine and tokenize the verdict words.
    pub fn build(&self) -> Result<EngineJudge, SearchError> {
        self.validate()?;
        let engine = self.engine.build()?;
        EngineJudge::new(engine, self)
    }
}

/// One chain to judge.
#[derive(Debug, Clone, PartialEq)]
pub struct JudgeRequest {
    /// The terminal node the chain ends at.
    pub node: NodeId,
    pub question: String,
    pub reasoning: String,
    pub answer: String,
}

/// Something that scores chains in [0, 1].
pub trait Judge {
    /// One score per request, in order.
    fn judge(&mut self, requests: &[JudgeRequest]) -> Result<Vec<f64>, SearchError>;
}

/// A [`Judge`] over an engine.
pub struct EngineJudge {
    engine: Box<dyn Engine>,
    prompts: JudgePrompts,
    yes: Token,
    no: Token,
    max_chars: usize,
}

fn first_token(engine: &dyn Engine, word: &str) -> Result<Token, SearchError> {
    engine
        .tokenize(word, false)?
        .first()
        .copied()
        .ok_or_else(|| {
            SearchError::Config(format!("judge verdict word {word:?} tokenizes to nothing"))
        })
}

/// The last `max` characters of `text`, marked as cut.
fn tail(text: &str, max: usize) -> String {
    let n = text.chars().count();
    if n <= max {
        return text.to_string();
    }
    let kept: String = text.chars().skip(n - max).collect();
    format!("[...]{kept}")
}

impl EngineJudge {
    pub fn new(engine: Box<dyn Engine>, cfg: &JudgeConfig) -> Result<Self, SearchError> {
        let prompts = match &cfg.prompts {
            Some(p) => p.clone(),
            None => JudgePrompts::embedded()?,
        };
        let yes = first_token(&*engine, &prompts.yes)?;
        let no = first_token(&*engine, &prompts.no)?;
        if yes == no {
            return Err(SearchError::Config(format!(
                "judge verdict words {:?} and {:?} start with the same token",
                prompts.yes, prompts.no
            )));
        }
        Ok(Self {
            engine,
            prompts,
            yes,
            no,
            max_chars: cfg.max_reasoning_chars,
        })
    }

    pub fn engine(&self) -> &dyn Engine {
        &*self.engine
    }

    fn context(&self, r: &JudgeRequest) -> Result<Vec<Token>, SearchError> {
        let user = self
            .prompts
            .user
            .replace("{question}", r.question.trim())
            .replace("{reasoning}", &tail(r.reasoning.trim(), self.max_chars))
            .replace("{answer}", r.answer.trim());
        let mut msgs = Vec::new();
        if !self.prompts.system.is_empty() {
            msgs.push(ChatMessage::system(self.prompts.system.clone()));
        }
        msgs.push(ChatMessage::user(user));
        let text = self.engine.apply_chat_template(&msgs)?;
        let mut toks = self.engine.tokenize(&text, true)?;
        // Keep the end (rubric question and the assistant turn) when too long.
        let room = self.engine.n_ctx().saturating_sub(2);
        if toks.len() > room {
            toks.drain(..toks.len() - room);
        }
        Ok(toks)
    }
}

impl Judge for EngineJudge {
    fn judge(&mut self, requests: &[JudgeRequest]) -> Result<Vec<f64>, SearchError> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let contexts = requests
            .iter()
            .map(|r| self.context(r))
            .collect::<Result<Vec<_>, _>>()?;
        let verdict = [self.yes];
        let items: Vec<(&[Token], &[Token])> = contexts
            .iter()
            .map(|c| (c.as_slice(), &verdict[..]))
            .collect();
        let outs = self.engine.score_many(&items)?;
        Ok(outs
            .iter()
            .map(|o| {
                let Some(t) = o.first() else { return 0.5 };
                // The "no" logit when it is among the top 5; otherwise it is
                // at most the 5th largest, a bound that favours "no" least.
                let l_no = t
                    .top
                    .iter()
                    .find(|(k, _)| *k == self.no)
                    .map(|x| x.1)
                    .or_else(|| t.top.last().map(|x| x.1))
                    .unwrap_or(t.logit);
                let p = 1.0 / (1.0 + ((l_no - t.logit) as f64).exp());
                if p.is_finite() {
                    p
                } else {
                    0.5
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineKind;

    #[test]
    fn embedded_rubric_parses_and_scores_in_unit_range() {
        let p = JudgePrompts::embedded().unwrap();
        assert!(p.user.contains("{question}") && p.user.contains("{reasoning}"));
        let cfg = JudgeConfig {
            engine: EngineConfig {
                kind: EngineKind::Scripted,
                ..JudgeConfig::default().engine
            },
            ..Default::default()
        };
        let mut j = cfg.build().unwrap();
        let reqs: Vec<JudgeRequest> = (0..3)
            .map(|i| JudgeRequest {
                node: NodeId(i),
                question: "What is 2 + 3?".into(),
                reasoning: format!("We add 2 and 3 to get {}.", 4 + i),
                answer: format!("{}", 4 + i),
            })
            .collect();
        let a = j.judge(&reqs).unwrap();
        assert_eq!(a.len(), 3);
        assert!(a.iter().all(|p| (0.0..=1.0).contains(p)), "{a:?}");
        assert_eq!(a, j.judge(&reqs).unwrap(), "judging is deterministic");
        assert_eq!(tail("abcdef", 3), "[...]def");
    }
}
