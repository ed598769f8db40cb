//! Benchmarks whose logic lives in the library (the CLI only parses and
//! prints): each compares against a baseline measured in the same run.

pub mod http;
