//! The SQLite adapter (feature `sqlite`).
