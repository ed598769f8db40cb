//! stages (see DESIGN.md).
