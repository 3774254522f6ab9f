//! The `dataops` suite against the PostgreSQL store: the same file, compiled again; the harness
//! picks the store from this crate's name (`tests/common`).

#[path = "dataops.rs"]
mod suite;
