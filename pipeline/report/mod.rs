//! report: stats and the HTML report over an output directory.

pub mod io;
