//! llama.cpp backend (in progress).
