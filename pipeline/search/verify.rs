//! The answer check the search uses for the `on_wrong` reflection policy and
//! the `verifier` value. There is one answer parser
//! ([`crate::stages::answer`]); the search takes it as a [`Verifier`] so
//! tests can script verdicts.

/// Does `answer` agree with `reference`? Shared across trees and threads.
pub type Verifier = dyn Fn(&str, &str) -> bool + Send + Sync;
