//! Rendering of reasoning + answer into the export styles, and the format
//! check of rendered Marco text. Chains store reasoning and answer apart; the
//! tags exist only here, so a chain whose reasoning leaked a tag fails the
//! check once rendered.

use serde::{Deserialize, Serialize};

pub const THOUGHT_OPEN: &str = "<Thought>";
pub const THOUGHT_CLOSE: &str = "</Thought>";
pub const OUTPUT_OPEN: &str = "<Output>";
pub const OUTPUT_CLOSE: &str = "</Output>";

/// How the assistant turn is written in exported data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Style {
    /// `<Thought>\n…\n</Thought>\n<Output>\n…\n</Output>` (Marco-o1).
    #[default]
    Marco,
    /// `<think>\n…\n</think>\n\n…` (R1/Qwen-style).
    Think,
    /// The answer alone.
    Plain,
}

impl std::str::FromStr for Style {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "marco" => Ok(Style::Marco),
            "think" => Ok(Style::Think),
            "plain" => Ok(Style::Plain),
            _ => Err(format!(
                "unknown style '{s}' (expected marco, think or plain)"
            )),
        }
    }
}

impl Style {
    pub fn as_str(self) -> &'static str {
        match self {
            Style::Marco => "marco",
            Style::Think => "think",
            Style::Plain => "plain",
        }
    }
}

/// The assistant text for `style`. An empty reasoning (the `instruction`
/// recipe) renders as the answer alone in every style: an empty thought block
/// would teach the model to think nothing.
pub fn render(style: Style, reasoning: &str, answer: &str) -> String {
    let (r, a) = (reasoning.trim(), answer.trim());
    if r.is_empty() {
        return a.to_string();
    }
    match style {
        Style::Marco => {
            format!("{THOUGHT_OPEN}\n{r}\n{THOUGHT_CLOSE}\n{OUTPUT_OPEN}\n{a}\n{OUTPUT_CLOSE}")
        }
        Style::Think => format!("<think>\n{r}\n</think>\n\n{a}"),
        Style::Plain => a.to_string(),
    }
}

/// Why rendered text is not a well-formed Marco chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("tag {tag} appears {count} times (expected once)")]
    TagCount { tag: &'static str, count: usize },
    #[error("tags out of order")]
    Order,
    #[error("empty {0} block")]
    Empty(&'static str),
}

/// Checks that `<Thought>`, `</Thought>`, `<Output>`, `</Output>` each appear
/// exactly once, in that order, with non-empty thought and output.
pub fn check_format(text: &str) -> Result<(), FormatError> {
    let tags = [THOUGHT_OPEN, THOUGHT_CLOSE, OUTPUT_OPEN, OUTPUT_CLOSE];
    let mut pos = [0usize; 4];
    for (i, tag) in tags.iter().enumerate() {
        let count = text.matches(tag).count();
        if count != 1 {
            return Err(FormatError::TagCount { tag, count });
        }
        pos[i] = text.find(tag).unwrap_or(0);
    }
    if !(pos[0] < pos[1] && pos[1] < pos[2] && pos[2] < pos[3]) {
        return Err(FormatError::Order);
    }
    if text[pos[0] + THOUGHT_OPEN.len()..pos[1]].trim().is_empty() {
        return Err(FormatError::Empty("Thought"));
    }
    if text[pos[2] + OUTPUT_OPEN.len()..pos[3]].trim().is_empty() {
        return Err(FormatError::Empty("Output"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_styles() {
        assert_eq!(
            render(Style::Marco, "r", "a"),
            "<Thought>\nr\n</Thought>\n<Output>\na\n</Output>"
        );
        assert_eq!(
            render(Style::Think, " r ", "a"),
            "<think>\nr\n</think>\n\na"
        );
        assert_eq!(render(Style::Plain, "r", "a"), "a");
        assert_eq!(render(Style::Marco, "", "a"), "a");
        assert!(check_format(&render(Style::Marco, "r", "a")).is_ok());
    }

    #[test]
    fn bad_formats() {
        assert_eq!(
            check_format("<Thought>x</Thought>"),
            Err(FormatError::TagCount {
                tag: OUTPUT_OPEN,
                count: 0
            })
        );
        assert_eq!(
            check_format("<Thought>x</Thought><Thought>y</Thought><Output>a</Output>"),
            Err(FormatError::TagCount {
                tag: THOUGHT_OPEN,
                count: 2
            })
        );
        assert_eq!(
            check_format("<Output>a</Output><Thought>x</Thought>"),
            Err(FormatError::Order)
        );
        assert_eq!(
            check_format("</Thought>x<Thought><Output>a</Output>"),
            Err(FormatError::Order)
        );
        assert_eq!(
            check_format("<Thought> \n</Thought><Output>a</Output>"),
            Err(FormatError::Empty("Thought"))
        );
        assert_eq!(
            check_format("<Thought>x</Thought><Output>\n</Output>"),
            Err(FormatError::Empty("Output"))
        );
    }
}
