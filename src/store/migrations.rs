//! The PostgreSQL schema: versioned migrations compiled into the binary, applied in order, each
//! in its own transaction, under a PostgreSQL advisory lock so that replicas starting together
//! on an empty database apply them once and all come up. A database whose schema is newer than
//! this binary knows is refused.

use tokio_postgres::Client;

use super::StoreError;
use super::postgres::pg_error;

/// The migrations: (version, what it does, SQL). Append only; never edit a released one.
pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "records, revision",
        include_str!("migrations/0001_records.sql"),
    ),
    (
        2,
        "revision chain",
        include_str!("migrations/0002_revision_chain.sql"),
    ),
    (
        3,
        "tombstone horizon",
        include_str!("migrations/0003_tombstone_horizon.sql"),
    ),
];

/// The schema version this binary knows.
pub fn latest() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

/// `pg_advisory_lock` key: "verifyiam" hashed to a fixed 64-bit number, so other applications
/// sharing the database do not collide with it by accident.
const LOCK_KEY: i64 = 0x7665_7269_6679_6961;

const SCHEMA_TABLE: &str = "CREATE TABLE IF NOT EXISTS verifyiam_schema (
    version    bigint PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)";

/// The schema version of the database (0: none yet).
pub async fn current(client: &Client) -> Result<i64, StoreError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('verifyiam_schema') IS NOT NULL", &[])
        .await
        .map_err(pg_error)?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let row = client
        .query_one(
            "SELECT COALESCE(max(version), 0) FROM verifyiam_schema",
            &[],
        )
        .await
        .map_err(pg_error)?;
    Ok(row.get(0))
}

/// Refuses a schema newer than this binary knows.
pub fn refuse_newer(found: i64) -> Result<(), StoreError> {
    if found > latest() {
        return Err(StoreError::SchemaTooNew {
            found,
            known: latest(),
        });
    }
    Ok(())
}

/// Applies every migration the database lacks; returns the versions applied and the version
/// the schema is at.
pub async fn migrate(client: &mut Client) -> Result<(Vec<i64>, i64), StoreError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await
        .map_err(pg_error)?;
    let outcome = migrate_locked(client).await;
    // Released with the session too, should this fail.
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await
        .map_err(pg_error);
    let outcome = outcome?;
    unlocked?;
    Ok(outcome)
}

async fn migrate_locked(client: &mut Client) -> Result<(Vec<i64>, i64), StoreError> {
    client.batch_execute(SCHEMA_TABLE).await.map_err(pg_error)?;
    let found = current(client).await?;
    refuse_newer(found)?;
    let mut applied = Vec::new();
    for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > found) {
        let tx = client.transaction().await.map_err(pg_error)?;
        tx.batch_execute(sql).await.map_err(pg_error)?;
        tx.execute(
            "INSERT INTO verifyiam_schema (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await
        .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        tracing::info!(version, name, "applied PostgreSQL schema migration");
        applied.push(*version);
    }
    Ok((applied, found.max(latest())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_increasing_from_one() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.0, i as i64 + 1);
        }
    }

    #[test]
    fn a_newer_schema_is_refused() {
        assert!(refuse_newer(latest()).is_ok());
        assert!(matches!(
            refuse_newer(latest() + 1),
            Err(StoreError::SchemaTooNew { .. })
        ));
    }
}
