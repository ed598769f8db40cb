//! Answer checks the search needs for the `on_wrong` reflection policy. The
//! real normalizer lives with the filters; the search takes any
//! [`Verifier`], and [`numbers_match`] is a simple default.

/// Does `answer` agree with `reference`? Shared across trees and threads.
pub type Verifier = dyn Fn(&str, &str) -> bool + Send + Sync;

/// The last number in `text` (commas, `$` and a trailing `.` tolerated).
pub fn last_number(text: &str) -> Option<f64> {
    let mut best: Option<f64> = None;
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let starts =
            b[i].is_ascii_digit() || (b[i] == b'-' && i + 1 < b.len() && b[i + 1].is_ascii_digit());
        if !starts {
            i += 1;
            continue;
        }
        let mut j = i + 1;
        while j < b.len()
            && (b[j].is_ascii_digit()
                || ((b[j] == b',' || b[j] == b'.') && j + 1 < b.len() && b[j + 1].is_ascii_digit()))
        {
            j += 1;
        }
        let s: String = text[i..j].chars().filter(|&c| c != ',').collect();
        if let Ok(v) = s.parse::<f64>() {
            best = Some(v);
        }
        i = j;
    }
    best
}

/// The reference answer a seed field holds: GSM8K answers end with `#### 72`.
pub fn reference_from_field(answer: &str) -> String {
    match answer.rfind("####") {
        Some(p) => answer[p + 4..].trim().to_string(),
        None => answer.trim().to_string(),
    }
}

/// Default verifier: equal last numbers when the reference has one, else
/// equal trimmed, lowercased text.
pub fn numbers_match(answer: &str, reference: &str) -> bool {
    match (last_number(answer), last_number(reference)) {
        (Some(a), Some(r)) => (a - r).abs() <= 1e-6 * r.abs().max(1.0),
        (None, Some(_)) => false,
        _ => answer.trim().to_lowercase() == reference.trim().to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_found_and_compared() {
        assert_eq!(last_number("so 48 + 24 = 72."), Some(72.0));
        assert_eq!(last_number("$1,250.50 total"), Some(1250.5));
        assert_eq!(last_number("none"), None);
        assert!(numbers_match("The answer is 72", "72"));
        assert!(!numbers_match("The answer is 71", "72"));
        assert!(numbers_match("Paris", " paris "));
        assert_eq!(reference_from_field("a\nb\n#### 72"), "72");
    }
}
