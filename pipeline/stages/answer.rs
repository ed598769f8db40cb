//! Final-answer extraction and comparison against a reference answer.
//!
//! GSM8K-style references are numbers, but models write them in many forms
//! (`$1,234`, `1234.00`, `1,234 dollars`, `\boxed{1234}`, `#### 1234`, `50%`,
//! `1/2`). Numbers are compared by value; text answers by a SQuAD-style
//! normalized exact match. Both functions are pure so the search module can
//! call them when deciding whether to reflect.
//!
//! This is the one answer parser: the search (`on_wrong`, the `verifier`
//! and `self_consistency` values, `majority_vote`), the filters, the seed
//! importer (`gsm8k_answer`) and the benchmarks all use it.

use std::sync::OnceLock;

use regex::Regex;

/// Relative tolerance for numeric equality (covers `0.333` vs `1/3` only when
/// the model wrote enough digits; exact integers compare exactly).
const REL_TOL: f64 = 1e-6;

fn number_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        // thousands-separated | fraction | decimal/integer | leading-dot decimal; optional percent.
        Regex::new(
            r"(?x)
            (?P<neg>-)?
            (?P<num>
                \d{1,3}(?:,\d{3})+(?:\.\d+)?
              | \d+(?:\.\d+)?\s*/\s*\d+(?:\.\d+)?
              | \d+(?:\.\d+)?
              | \.\d+
            )
            (?P<pct>\s*(?:%|\\%|\s+percent\b))?",
        )
        .expect("static regex")
    })
}

fn answer_marker_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"(?i)(?:final answer|the answer|answer)\s*(?:is|:|=)\s*:?\s*(?P<a>[^\n]+)")
            .expect("static regex")
    })
}

/// The final answer written in `text`, or `None` when there is nothing.
///
/// Looks, in order, for `<Output>…</Output>`, the last `\boxed{…}`, a GSM8K
/// `#### N` line, and an "answer is / Answer:" phrase; otherwise the whole
/// trimmed text is the answer.
pub fn extract_final_answer(text: &str) -> Option<String> {
    let mut t = text.trim();
    if let Some(start) = t.rfind("<Output>") {
        let rest = &t[start + "<Output>".len()..];
        t = match rest.find("</Output>") {
            Some(end) => &rest[..end],
            None => rest,
        };
        t = t.trim();
    }
    if let Some(b) = last_boxed(t) {
        let b = b.trim();
        return (!b.is_empty()).then(|| b.to_string());
    }
    if let Some(line) = after_hashes(t) {
        return Some(line.to_string());
    }
    if let Some(c) = answer_marker_re().captures_iter(t).last() {
        let a = c["a"].trim().trim_end_matches('.').trim();
        if !a.is_empty() {
            return Some(a.to_string());
        }
    }
    (!t.is_empty()).then(|| t.to_string())
}

/// The GSM8K final-answer line: what follows the last `####`, trimmed.
fn after_hashes(t: &str) -> Option<&str> {
    let pos = t.rfind("####")?;
    let line = t[pos + 4..].lines().next().unwrap_or("").trim();
    (!line.is_empty()).then_some(line)
}

/// A GSM8K answer field's final answer: `work\n#### 1,234` → `1234`
/// (commas removed); `None` without a `####` line.
pub fn gsm8k_answer(text: &str) -> Option<String> {
    after_hashes(text).map(|a| a.chars().filter(|&c| c != ',').collect())
}

/// The reference answer a seed field holds: the GSM8K `####` answer when
/// there is one, else the trimmed text.
pub fn reference_from_field(answer: &str) -> String {
    gsm8k_answer(answer).unwrap_or_else(|| answer.trim().to_string())
}

/// What an answer stands for when answers are counted as votes
/// (self-consistency, majority vote): the value of its number when it has
/// one (`$1,234.00` and `1234` agree), else its normalized text. `None` when
/// nothing can be extracted.
pub fn answer_key(answer: &str) -> Option<String> {
    let a = extract_final_answer(answer)?;
    if let Some(n) = answer_number(&a) {
        let v = if n.value == 0.0 { 0.0 } else { n.value };
        // Integers print exactly; other values rounded past float noise.
        return Some(if v.fract() == 0.0 && v.abs() < 1e15 {
            format!("{}", v as i64)
        } else {
            format!("{:.6}", v).trim_end_matches('0').to_string()
        });
    }
    let t = normalize_text_answer(&a);
    (!t.is_empty()).then_some(t)
}

/// Content of the last `\boxed{…}` (or `\fbox{…}`), braces balanced.
fn last_boxed(t: &str) -> Option<&str> {
    let start = t
        .rfind("\\boxed{")
        .map(|p| p + "\\boxed{".len())
        .or_else(|| t.rfind("\\fbox{").map(|p| p + "\\fbox{".len()))?;
    let mut depth = 1usize;
    for (i, ch) in t[start..].char_indices() {
        match ch {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&t[start..start + i]);
                }
            }
            _ => {}
        }
    }
    None
}

/// A number as written: its value and whether it carried a percent sign.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Number {
    pub value: f64,
    pub percent: bool,
}

/// Strips LaTeX and currency decoration that would hide a number.
fn clean_for_numbers(s: &str) -> String {
    static FRAC: OnceLock<Regex> = OnceLock::new();
    let frac = FRAC.get_or_init(|| {
        Regex::new(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}").expect("static regex")
    });
    let s = frac.replace_all(s, "($1)/($2)");
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '$' | '€' | '£' | '¥' | '₹' | '(' | ')' | '{' | '}' => {}
            // thin / no-break spaces used as thousands separators become commas-free
            '\u{2009}' | '\u{202f}' | '\u{a0}' => {}
            '−' | '–' => out.push('-'),
            _ => out.push(ch),
        }
    }
    out.replace("\\text", " ")
        .replace("\\mathrm", " ")
        .replace("\\!", "")
        .replace("\\,", "")
        .replace("\\$", "")
}

fn parse_match(c: &regex::Captures<'_>) -> Option<Number> {
    let raw = c.name("num")?.as_str();
    let neg = c.name("neg").is_some();
    let percent = c.name("pct").is_some();
    let value = if let Some((a, b)) = raw.split_once('/') {
        let a: f64 = a.trim().replace(',', "").parse().ok()?;
        let b: f64 = b.trim().replace(',', "").parse().ok()?;
        if b == 0.0 {
            return None;
        }
        a / b
    } else {
        raw.replace(',', "").parse().ok()?
    };
    Some(Number {
        value: if neg { -value } else { value },
        percent,
    })
}

/// Every number in `s`, in order of appearance.
pub fn numbers_in(s: &str) -> Vec<Number> {
    let cleaned = clean_for_numbers(s);
    number_re()
        .captures_iter(&cleaned)
        .filter_map(|c| parse_match(&c))
        .collect()
}

/// The number an answer stands for: the last number written in it.
pub fn answer_number(s: &str) -> Option<Number> {
    numbers_in(s).pop()
}

/// Whether `s` is essentially a number (possibly with currency and a unit):
/// exactly one number and at most a few trailing words.
fn is_numeric_answer(s: &str) -> bool {
    let cleaned = clean_for_numbers(s);
    let nums: Vec<_> = number_re().find_iter(&cleaned).collect();
    if nums.len() != 1 {
        return false;
    }
    let rest = number_re().replace_all(&cleaned, " ");
    rest.split_whitespace().count() <= 3
}

fn numbers_equal(a: f64, b: f64) -> bool {
    if a == b {
        return true;
    }
    let scale = a.abs().max(b.abs()).max(1.0);
    (a - b).abs() <= REL_TOL * scale
}

fn number_matches(c: Number, r: Number) -> bool {
    if numbers_equal(c.value, r.value) {
        return true;
    }
    // "50%" vs "0.5": one side a percentage, the other its fraction.
    (c.percent && !r.percent && numbers_equal(c.value / 100.0, r.value))
        || (r.percent && !c.percent && numbers_equal(r.value / 100.0, c.value))
}

/// SQuAD-style text normalization: lowercase, no punctuation, no articles,
/// single spaces.
pub fn normalize_text_answer(s: &str) -> String {
    let lower = s.to_lowercase();
    let no_punct: String = lower
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c.is_whitespace() {
                c
            } else {
                ' '
            }
        })
        .collect();
    no_punct
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Does the candidate (a full answer or chain text) give the reference answer?
///
/// Both sides go through [`extract_final_answer`]. A numeric reference is
/// compared by value with the last number of the candidate's answer; a text
/// reference by normalized exact match.
pub fn answers_match(candidate: &str, reference: &str) -> bool {
    let (Some(c), Some(r)) = (
        extract_final_answer(candidate),
        extract_final_answer(reference),
    ) else {
        return false;
    };
    if is_numeric_answer(&r) {
        return match (answer_number(&c), answer_number(&r)) {
            (Some(cn), Some(rn)) => number_matches(cn, rn),
            _ => false,
        };
    }
    let (nc, nr) = (normalize_text_answer(&c), normalize_text_answer(&r));
    !nr.is_empty() && nc == nr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gsm8k_forms_match_1234() {
        for c in [
            "$1,234",
            "1234.00",
            "1,234 dollars",
            "\\boxed{1234}",
            "#### 1234",
            "The answer is 1234.",
            "So the total is $1,234.",
            "<Output>\nHe earns \\$1,234 per week.\n</Output>",
            "1 234",
        ] {
            if c == "1 234" {
                // a space is not a thousands separator we accept: two numbers, last is 234
                assert!(!answers_match(c, "1234"), "{c}");
                continue;
            }
            assert!(answers_match(c, "1234"), "{c}");
            assert!(
                answers_match(c, "Natalia sold 1234 clips.\n#### 1234"),
                "{c}"
            );
        }
        assert!(!answers_match("$1,235", "1234"));
        assert!(!answers_match("12.34", "1234"));
    }

    #[test]
    fn fractions_decimals_percent() {
        assert!(answers_match("1/2", "0.5"));
        assert!(answers_match("0.5", "1/2"));
        assert!(answers_match("\\frac{1}{2}", "0.5"));
        assert!(answers_match("\\boxed{\\dfrac{3}{4}}", "0.75"));
        assert!(answers_match("50%", "50"));
        assert!(answers_match("50%", "0.5"));
        assert!(answers_match("50 percent", "50%"));
        assert!(!answers_match("1/3", "0.5"));
        assert!(answers_match("-7", "−7"));
        assert!(!answers_match("7", "-7"));
    }

    #[test]
    fn text_answers_normalized() {
        assert!(answers_match("The Eiffel Tower.", "eiffel tower"));
        assert!(answers_match("Answer: Paris", "paris"));
        assert!(!answers_match("London", "Paris"));
        assert!(!answers_match("", "Paris"));
    }

    #[test]
    fn vote_keys_agree_where_answers_match() {
        assert_eq!(answer_key("$1,234.00").as_deref(), Some("1234"));
        assert_eq!(answer_key("The answer is 1234.").as_deref(), Some("1234"));
        assert_eq!(answer_key("0.50").as_deref(), Some("0.5"));
        assert_eq!(
            answer_key("The Eiffel Tower.").as_deref(),
            Some("eiffel tower")
        );
        assert_eq!(answer_key("   "), None);
        assert_ne!(answer_key("72"), answer_key("71"));
        assert_eq!(gsm8k_answer("a\n#### 1,234").as_deref(), Some("1234"));
        assert_eq!(gsm8k_answer("no hashes"), None);
        assert_eq!(reference_from_field("a\nb\n#### 72"), "72");
        assert_eq!(reference_from_field(" Paris "), "Paris");
    }

    #[test]
    fn extraction() {
        assert_eq!(
            extract_final_answer("x \\boxed{a{b}c} y").as_deref(),
            Some("a{b}c")
        );
        assert_eq!(extract_final_answer("step\n#### 72").as_deref(), Some("72"));
        assert_eq!(extract_final_answer("   ").as_deref(), None);
        assert_eq!(
            extract_final_answer("<Thought>t</Thought><Output> 5 </Output>").as_deref(),
            Some("5")
        );
    }
}
