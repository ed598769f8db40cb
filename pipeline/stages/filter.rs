//! The chain filters. Each has a serde config (`*Config`) whose `build()`
//! validates it into the runtime filter; [`FilterConfig`] is the closed list
//! a recipe's TOML names, and [`FilterChain`] applies them in order, turning
//! every failure into a [`Reject`] with the stage name and a reason.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::answer::{answers_match, extract_final_answer};
use super::format::{check_format, render, Style};
use super::{reject_for, StageError};
use crate::record::{Chain, Reject, Stage};

/// Everything a filter may look at besides the chain itself.
#[derive(Debug, Default, Clone)]
pub struct FilterContext {
    /// Seed id -> seed language (BCP-47-ish code such as `en`, `zh`, `ru`).
    pub seed_lang: HashMap<String, String>,
}

impl FilterContext {
    /// Context from the job's seeds (those with a `lang`).
    pub fn from_seeds<'a>(seeds: impl IntoIterator<Item = &'a crate::record::Seed>) -> Self {
        Self {
            seed_lang: seeds
                .into_iter()
                .filter_map(|s| s.lang.as_ref().map(|l| (s.id.clone(), l.clone())))
                .collect(),
        }
    }
}

/// The closed set of filter configs (serde tag `type`), in the order a recipe lists them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FilterConfig {
    Reward(RewardConfig),
    Verify(VerifyConfig),
    Format(FormatConfig),
    Length(LengthConfig),
    Repetition(RepetitionConfig),
    Language(LanguageConfig),
}

impl FilterConfig {
    pub fn build(&self) -> Result<Filter, StageError> {
        Ok(match self {
            FilterConfig::Reward(c) => Filter::Reward(c.build()?),
            FilterConfig::Verify(c) => Filter::Verify(c.build()?),
            FilterConfig::Format(c) => Filter::Format(c.build()?),
            FilterConfig::Length(c) => Filter::Length(c.build()?),
            FilterConfig::Repetition(c) => Filter::Repetition(c.build()?),
            FilterConfig::Language(c) => Filter::Language(c.build()?),
        })
    }
}

/// A built filter.
#[derive(Debug, Clone)]
pub enum Filter {
    Reward(RewardFilter),
    Verify(VerifyFilter),
    Format(FormatFilter),
    Length(LengthFilter),
    Repetition(RepetitionFilter),
    Language(LanguageFilter),
}

impl Filter {
    /// The `Reject.stage` name.
    pub fn stage(&self) -> Stage {
        match self {
            Filter::Reward(_) => Stage::FilterReward,
            Filter::Verify(_) => Stage::FilterVerify,
            Filter::Format(_) => Stage::FilterFormat,
            Filter::Length(_) => Stage::FilterLength,
            Filter::Repetition(_) => Stage::FilterRepetition,
            Filter::Language(_) => Stage::FilterLanguage,
        }
    }

    /// `Ok` to keep (the chain may be annotated, e.g. `verified`), `Err(reason)` to reject.
    pub fn check(&self, chain: &mut Chain, ctx: &FilterContext) -> Result<(), String> {
        match self {
            Filter::Reward(f) => f.check(chain),
            Filter::Verify(f) => f.check(chain),
            Filter::Format(f) => f.check(chain),
            Filter::Length(f) => f.check(chain),
            Filter::Repetition(f) => f.check(chain),
            Filter::Language(f) => f.check(chain, ctx),
        }
    }
}

/// Filters applied in order; the first failure rejects the chain.
#[derive(Debug, Clone, Default)]
pub struct FilterChain {
    pub filters: Vec<Filter>,
}

impl FilterChain {
    pub fn from_configs(configs: &[FilterConfig]) -> Result<Self, StageError> {
        Ok(Self {
            filters: configs
                .iter()
                .map(FilterConfig::build)
                .collect::<Result<_, _>>()?,
        })
    }

    /// Splits chains into kept and rejected (order of kept chains preserved).
    pub fn apply(&self, chains: Vec<Chain>) -> (Vec<Chain>, Vec<Reject>) {
        self.apply_with(chains, &FilterContext::default())
    }

    pub fn apply_with(&self, chains: Vec<Chain>, ctx: &FilterContext) -> (Vec<Chain>, Vec<Reject>) {
        let mut kept = Vec::with_capacity(chains.len());
        let mut rejected = Vec::new();
        'chains: for mut chain in chains {
            for f in &self.filters {
                if let Err(reason) = f.check(&mut chain, ctx) {
                    rejected.push(reject_for(&chain, f.stage(), reason));
                    continue 'chains;
                }
            }
            kept.push(chain);
        }
        (kept, rejected)
    }
}

fn check_unit(name: &str, v: f64) -> Result<(), StageError> {
    if (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(StageError::Config(format!(
            "{name} must be in [0, 1], got {v}"
        )))
    }
}

// ---------------------------------------------------------------- reward

/// Reward threshold: mean confidence of the chain and the weakest step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RewardConfig {
    /// Minimum `Chain.reward` (mean token confidence).
    pub min_reward: f64,
    /// Minimum confidence of every step; 0 disables.
    pub min_step_confidence: f64,
}

impl Default for RewardConfig {
    fn default() -> Self {
        Self {
            min_reward: 0.6,
            min_step_confidence: 0.0,
        }
    }
}

impl RewardConfig {
    pub fn build(&self) -> Result<RewardFilter, StageError> {
        check_unit("min_reward", self.min_reward)?;
        check_unit("min_step_confidence", self.min_step_confidence)?;
        Ok(RewardFilter { cfg: self.clone() })
    }
}

#[derive(Debug, Clone)]
pub struct RewardFilter {
    cfg: RewardConfig,
}

impl RewardFilter {
    fn check(&self, c: &Chain) -> Result<(), String> {
        if c.reward.is_nan() || c.reward < self.cfg.min_reward {
            return Err(format!(
                "reward {:.3} < {:.3}",
                c.reward, self.cfg.min_reward
            ));
        }
        if self.cfg.min_step_confidence > 0.0 {
            for (i, &s) in c.step_confidences.iter().enumerate() {
                if s.is_nan() || s < self.cfg.min_step_confidence {
                    return Err(format!(
                        "step {i} confidence {s:.3} < {:.3}",
                        self.cfg.min_step_confidence
                    ));
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- verify

/// Reference-answer verification.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VerifyConfig {
    /// Reject chains whose seed has no reference answer (default: keep them, `verified = None`).
    pub require_reference: bool,
}

impl VerifyConfig {
    pub fn build(&self) -> Result<VerifyFilter, StageError> {
        Ok(VerifyFilter { cfg: self.clone() })
    }
}

#[derive(Debug, Clone)]
pub struct VerifyFilter {
    cfg: VerifyConfig,
}

impl VerifyFilter {
    /// Sets `chain.verified` and rejects a wrong answer.
    fn check(&self, c: &mut Chain) -> Result<(), String> {
        let Some(reference) = c
            .reference_answer
            .as_deref()
            .filter(|r| !r.trim().is_empty())
        else {
            c.verified = None;
            return if self.cfg.require_reference {
                Err("no reference answer".into())
            } else {
                Ok(())
            };
        };
        let ok = answers_match(&c.answer, reference);
        c.verified = Some(ok);
        if ok {
            Ok(())
        } else {
            let got = extract_final_answer(&c.answer).unwrap_or_default();
            let want = extract_final_answer(reference).unwrap_or_default();
            Err(format!(
                "answer '{}' != reference '{}'",
                clip(&got, 60),
                clip(&want, 60)
            ))
        }
    }
}

fn clip(s: &str, n: usize) -> String {
    let mut out: String = s.chars().take(n).collect();
    if s.chars().count() > n {
        out.push('…');
    }
    out.replace('\n', " ")
}

// ---------------------------------------------------------------- format

/// Well-formed `<Thought>/<Output>` rendering.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FormatConfig {
    /// Chains with empty reasoning fail (off for the `instruction` recipe).
    pub require_reasoning: bool,
}

impl Default for FormatConfig {
    fn default() -> Self {
        Self {
            require_reasoning: true,
        }
    }
}

impl FormatConfig {
    pub fn build(&self) -> Result<FormatFilter, StageError> {
        Ok(FormatFilter { cfg: self.clone() })
    }
}

#[derive(Debug, Clone)]
pub struct FormatFilter {
    cfg: FormatConfig,
}

impl FormatFilter {
    fn check(&self, c: &Chain) -> Result<(), String> {
        if c.reasoning.trim().is_empty() {
            if self.cfg.require_reasoning {
                return Err("empty reasoning".into());
            }
            return if c.answer.trim().is_empty() {
                Err("empty answer".into())
            } else {
                Ok(())
            };
        }
        check_format(&render(Style::Marco, &c.reasoning, &c.answer)).map_err(|e| e.to_string())
    }
}

// ---------------------------------------------------------------- length

/// Length bounds in tokens (`Chain.tokens`; when 0, estimated as chars/4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LengthConfig {
    pub min_tokens: u32,
    pub max_tokens: u32,
}

impl Default for LengthConfig {
    fn default() -> Self {
        Self {
            min_tokens: 8,
            max_tokens: 8192,
        }
    }
}

impl LengthConfig {
    pub fn build(&self) -> Result<LengthFilter, StageError> {
        if self.min_tokens > self.max_tokens {
            return Err(StageError::Config(format!(
                "min_tokens {} > max_tokens {}",
                self.min_tokens, self.max_tokens
            )));
        }
        Ok(LengthFilter { cfg: self.clone() })
    }
}

#[derive(Debug, Clone)]
pub struct LengthFilter {
    cfg: LengthConfig,
}

/// Token count of a chain: the engine's count when present, else ~4 chars a token.
pub fn chain_tokens(c: &Chain) -> u32 {
    if c.tokens > 0 {
        c.tokens
    } else {
        let chars = c.reasoning.chars().count() + c.answer.chars().count();
        u32::try_from(chars.div_ceil(4)).unwrap_or(u32::MAX)
    }
}

impl LengthFilter {
    fn check(&self, c: &Chain) -> Result<(), String> {
        let t = chain_tokens(c);
        if t < self.cfg.min_tokens {
            Err(format!("tokens {t} < {}", self.cfg.min_tokens))
        } else if t > self.cfg.max_tokens {
            Err(format!("tokens {t} > {}", self.cfg.max_tokens))
        } else {
            Ok(())
        }
    }
}

// ---------------------------------------------------------------- repetition

/// Share of word n-gram occurrences that repeat an earlier one (loops).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RepetitionConfig {
    pub ngram: usize,
    /// Reject when the repeated share exceeds this.
    pub max_repeated_share: f64,
    /// Texts with fewer n-grams than this are not judged.
    pub min_ngrams: usize,
}

impl Default for RepetitionConfig {
    fn default() -> Self {
        Self {
            ngram: 4,
            max_repeated_share: 0.3,
            min_ngrams: 20,
        }
    }
}

impl RepetitionConfig {
    pub fn build(&self) -> Result<RepetitionFilter, StageError> {
        if self.ngram == 0 {
            return Err(StageError::Config("ngram must be >= 1".into()));
        }
        check_unit("max_repeated_share", self.max_repeated_share)?;
        Ok(RepetitionFilter { cfg: self.clone() })
    }
}

#[derive(Debug, Clone)]
pub struct RepetitionFilter {
    cfg: RepetitionConfig,
}

/// Share of word `n`-grams of `text` that already occurred earlier in it,
/// and the number of n-grams.
pub fn repeated_ngram_share(text: &str, n: usize) -> (f64, usize) {
    let words: Vec<String> = text
        .split_whitespace()
        .map(|w| {
            w.trim_matches(|c: char| !c.is_alphanumeric())
                .to_lowercase()
        })
        .filter(|w| !w.is_empty())
        .collect();
    if n == 0 || words.len() < n {
        return (0.0, 0);
    }
    let total = words.len() + 1 - n;
    let mut seen: HashSet<&[String]> = HashSet::with_capacity(total);
    let repeated = words.windows(n).filter(|w| !seen.insert(w)).count();
    (repeated as f64 / total as f64, total)
}

impl RepetitionFilter {
    fn check(&self, c: &Chain) -> Result<(), String> {
        let text = format!("{}\n{}", c.reasoning, c.answer);
        let (share, total) = repeated_ngram_share(&text, self.cfg.ngram);
        if total >= self.cfg.min_ngrams && share > self.cfg.max_repeated_share {
            Err(format!(
                "repeated {}-gram share {share:.2} > {:.2}",
                self.cfg.ngram, self.cfg.max_repeated_share
            ))
        } else {
            Ok(())
        }
    }
}

// ---------------------------------------------------------------- language

/// Writing system of a character, coarse enough to tell languages apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Script {
    Latin,
    Cyrillic,
    Greek,
    Arabic,
    Hebrew,
    Devanagari,
    Thai,
    Han,
    Kana,
    Hangul,
    Other,
}

impl Script {
    pub fn of(c: char) -> Option<Script> {
        if !c.is_alphabetic() {
            return None;
        }
        let u = c as u32;
        Some(match u {
            0x41..=0x24F | 0x1E00..=0x1EFF => Script::Latin,
            0x370..=0x3FF | 0x1F00..=0x1FFF => Script::Greek,
            0x400..=0x52F => Script::Cyrillic,
            0x590..=0x5FF => Script::Hebrew,
            0x600..=0x6FF | 0x750..=0x77F | 0xFB50..=0xFDFF | 0xFE70..=0xFEFF => Script::Arabic,
            0x900..=0x97F => Script::Devanagari,
            0xE00..=0xE7F => Script::Thai,
            0x3040..=0x30FF | 0x31F0..=0x31FF => Script::Kana,
            0x1100..=0x11FF | 0x3130..=0x318F | 0xAC00..=0xD7AF => Script::Hangul,
            0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0x20000..=0x2FFFF => Script::Han,
            _ => Script::Other,
        })
    }

    /// Scripts a language is written in; `None` for languages not listed.
    pub fn for_lang(lang: &str) -> Option<&'static [Script]> {
        let primary = lang
            .split(['-', '_'])
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        Some(match primary.as_str() {
            "en" | "fr" | "de" | "es" | "it" | "pt" | "nl" | "sv" | "da" | "no" | "nb" | "fi"
            | "pl" | "cs" | "sk" | "ro" | "hu" | "tr" | "id" | "ms" | "vi" | "sw" | "ca" | "hr"
            | "sl" | "et" | "lv" | "lt" | "tl" => &[Script::Latin],
            "ru" | "uk" | "bg" | "sr" | "mk" | "be" | "kk" => &[Script::Cyrillic],
            "el" => &[Script::Greek],
            "ar" | "fa" | "ur" => &[Script::Arabic],
            "he" | "yi" => &[Script::Hebrew],
            "hi" | "mr" | "ne" => &[Script::Devanagari],
            "th" => &[Script::Thai],
            "zh" => &[Script::Han],
            "ja" => &[Script::Han, Script::Kana],
            "ko" => &[Script::Hangul, Script::Han],
            _ => return None,
        })
    }
}

/// The answer is written in the seed language's script.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LanguageConfig {
    /// Minimum share of the answer's letters in the expected scripts.
    pub min_share: f64,
    /// Answers with fewer letters than this (numbers, symbols) pass.
    pub min_letters: usize,
}

impl Default for LanguageConfig {
    fn default() -> Self {
        Self {
            min_share: 0.6,
            min_letters: 8,
        }
    }
}

impl LanguageConfig {
    pub fn build(&self) -> Result<LanguageFilter, StageError> {
        check_unit("min_share", self.min_share)?;
        Ok(LanguageFilter { cfg: self.clone() })
    }
}

#[derive(Debug, Clone)]
pub struct LanguageFilter {
    cfg: LanguageConfig,
}

/// Share of letters of `text` written in one of `scripts`, and the letter count.
pub fn script_share(text: &str, scripts: &[Script]) -> (f64, usize) {
    let (mut hit, mut letters) = (0usize, 0usize);
    for s in text.chars().filter_map(Script::of) {
        letters += 1;
        if scripts.contains(&s) {
            hit += 1;
        }
    }
    if letters == 0 {
        (1.0, 0)
    } else {
        (hit as f64 / letters as f64, letters)
    }
}

impl LanguageFilter {
    fn check(&self, c: &Chain, ctx: &FilterContext) -> Result<(), String> {
        let Some(lang) = ctx.seed_lang.get(&c.seed_id) else {
            return Ok(());
        };
        let Some(scripts) = Script::for_lang(lang) else {
            return Ok(());
        };
        let (share, letters) = script_share(&c.answer, scripts);
        if letters >= self.cfg.min_letters && share < self.cfg.min_share {
            Err(format!(
                "answer script share {share:.2} < {:.2} for lang '{lang}'",
                self.cfg.min_share
            ))
        } else {
            Ok(())
        }
    }
}
