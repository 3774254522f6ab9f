//! The `manage_cli` suite against the PostgreSQL store: the same file, compiled again; the harness
//! picks the store from this crate's name (`tests/common`).

#[path = "manage_cli.rs"]
mod suite;
