//! Cross-crate integration and end-to-end tests of eda (see `tests/`).
