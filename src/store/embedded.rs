//! The embedded backend: everything in one redb file under `iam.store`, one process at a time.
//! A commit is fsync'd before it returns (redb's `Durability::Immediate`), so a write
//! acknowledged after it survives a crash. Each revision's [`Chain`] is kept beside it, as
//! with PostgreSQL, so a copy of the store says which history its revision belongs to.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;

use super::{Chain, Changes, StoreError, decode, io};

const POLICIES: TableDefinition<&str, &[u8]> = TableDefinition::new("policies");
const DEPLOYMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("deployments");
const ROLES: TableDefinition<&str, &[u8]> = TableDefinition::new("roles");
const GROUPS: TableDefinition<&str, &[u8]> = TableDefinition::new("groups");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Revision → its chain (32 bytes).
const REVISIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("revisions");
const EPOCH: &str = "epoch";
/// The store's file inside the `iam.store` directory.
pub const FILE_NAME: &str = "verifyiam.redb";

/// An open redb store.
pub struct Embedded {
    db: Database,
    /// Writers take turns; held only inside blocking write sections, never across an await.
    pub(super) writer: Mutex<()>,
    /// The queue of asynchronous writers in front of `writer`, waited on with a bound
    /// ([`super::WRITER_WAIT`]); start-up writes take `writer` alone.
    pub(super) turn: tokio::sync::Mutex<()>,
}

fn read_table<T: serde::de::DeserializeOwned>(
    read: &redb::ReadTransaction,
    table: TableDefinition<&str, &[u8]>,
) -> Result<Vec<(String, Option<T>)>, StoreError> {
    let mut out = Vec::new();
    for row in read.open_table(table).map_err(io)?.iter().map_err(io)? {
        let (k, v) = row.map_err(io)?;
        let name = k.value().to_owned();
        let value = decode(&name, v.value())?;
        out.push((name, Some(value)));
    }
    Ok(out)
}

impl Embedded {
    /// Opens (or creates) the store in `dir`; returns it with everything stored, its epoch and
    /// the epoch's chain (one of its own if the file predates chains).
    pub fn open(dir: &Path) -> Result<(Embedded, Changes, u64, Chain), StoreError> {
        let path: PathBuf = dir.join(FILE_NAME);
        let open_err = |reason: String| StoreError::Open {
            path: path.clone(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                open_err("it is in use by another verifyiam process".to_owned())
            }
            other => open_err(other.to_string()),
        })?;
        // Make sure every table exists so readers never meet a missing table.
        let txn = db.begin_write().map_err(io)?;
        {
            for table in [POLICIES, DEPLOYMENTS, ROLES, GROUPS] {
                txn.open_table(table).map_err(io)?;
            }
            txn.open_table(META).map_err(io)?;
            txn.open_table(REVISIONS).map_err(io)?;
        }
        txn.commit().map_err(io)?;

        let read = db.begin_read().map_err(io)?;
        let epoch = read
            .open_table(META)
            .map_err(io)?
            .get(EPOCH)
            .map_err(io)?
            .map(|v| v.value())
            .unwrap_or(0);
        let stored = read
            .open_table(REVISIONS)
            .map_err(io)?
            .get(epoch)
            .map_err(io)?
            .and_then(|v| Chain::from_slice(v.value()));
        let chain = match stored {
            Some(c) => c,
            None if epoch == 0 => Chain::GENESIS,
            None => Chain::unique(epoch),
        };
        let all = Changes {
            policies: read_table(&read, POLICIES)?,
            deployments: read_table(&read, DEPLOYMENTS)?,
            roles: read_table(&read, ROLES)?,
            groups: read_table(&read, GROUPS)?,
            floor: 0,
        };
        drop(read);
        Ok((
            Embedded {
                db,
                writer: Mutex::new(()),
                turn: tokio::sync::Mutex::new(()),
            },
            all,
            epoch,
            chain,
        ))
    }

    /// Writes one change set, the new epoch and its chain in one durable transaction.
    pub fn commit(&self, epoch: u64, chain: Chain, changes: &Changes) -> Result<(), StoreError> {
        fn write<T: Serialize>(
            txn: &redb::WriteTransaction,
            table: TableDefinition<&str, &[u8]>,
            rows: &[(String, Option<T>)],
        ) -> Result<(), StoreError> {
            let mut t = txn.open_table(table).map_err(io)?;
            for (key, value) in rows {
                match value {
                    Some(v) => {
                        let bytes = serde_json::to_vec(v).map_err(io)?;
                        t.insert(key.as_str(), bytes.as_slice()).map_err(io)?;
                    }
                    None => {
                        t.remove(key.as_str()).map_err(io)?;
                    }
                }
            }
            Ok(())
        }
        let txn = self.db.begin_write().map_err(io)?;
        write(&txn, POLICIES, &changes.policies)?;
        write(&txn, DEPLOYMENTS, &changes.deployments)?;
        write(&txn, ROLES, &changes.roles)?;
        write(&txn, GROUPS, &changes.groups)?;
        txn.open_table(META)
            .map_err(io)?
            .insert(EPOCH, epoch)
            .map_err(io)?;
        txn.open_table(REVISIONS)
            .map_err(io)?
            .insert(epoch, chain.0.as_slice())
            .map_err(io)?;
        // Durability::Immediate (redb's default): fsync'd before commit returns.
        txn.commit().map_err(io)
    }
}
