//! The texts the search injects (tags, reflection phrase, default system
//! prompt). They live in prompts/search.toml so they can be changed without
//! touching code; the file is embedded at build time.

use serde::{Deserialize, Serialize};

/// The embedded prompts/search.toml.
pub const SEARCH_PROMPTS_TOML: &str = include_str!("../../prompts/search.toml");

/// Injected texts of the search.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchPrompts {
    /// Default system prompt; empty = none.
    pub system: String,
    /// Pre-filled at the start of the assistant turn.
    pub thought_open: String,
    /// Appended at a terminal thought state to open the answer.
    pub thought_close: String,
    /// The model's answer ends at this marker.
    pub output_close: String,
    /// The reflection phrase.
    pub reflection: String,
    pub reflection_before: String,
    pub reflection_after: String,
}

impl Default for SearchPrompts {
    fn default() -> Self {
        // The embedded file is a build input, checked by a unit test; the
        // fallback only guards against a broken edit of it.
        toml::from_str(SEARCH_PROMPTS_TOML).unwrap_or_else(|e| {
            tracing::error!("prompts/search.toml does not parse ({e}); using built-in texts");
            Self {
                system: String::new(),
                thought_open: "<Thought>\n".into(),
                thought_close: "\n</Thought>\n<Output>\n".into(),
                output_close: "</Output>".into(),
                reflection: "Wait! Maybe I made some mistakes! I need to rethink from scratch."
                    .into(),
                reflection_before: "\n\n".into(),
                reflection_after: "\n\n".into(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_file_parses_with_the_paper_phrase() {
        let p: SearchPrompts = toml::from_str(SEARCH_PROMPTS_TOML).unwrap();
        assert_eq!(
            p.reflection,
            "Wait! Maybe I made some mistakes! I need to rethink from scratch."
        );
        assert_eq!(p.thought_open, "<Thought>\n");
        assert!(p.thought_close.contains("</Thought>") && p.thought_close.contains("<Output>"));
    }
}
