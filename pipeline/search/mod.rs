//! search (see DESIGN.md).
