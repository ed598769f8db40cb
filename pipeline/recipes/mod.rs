//! recipes (see DESIGN.md).
