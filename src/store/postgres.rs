//! The PostgreSQL backend: one database shared by any number of replicas.
//!
//! Every write is one transaction that locks the revision row (so writes are serial across the
//! fleet), catches this replica's snapshot up to the database, runs the caller's check-and-set
//! against it, writes the changed records stamped with the next revision, and `NOTIFY`s that
//! revision; it is acknowledged only after `COMMIT`. Each replica `LISTEN`s on a dedicated
//! connection and, on a notification, reads the records whose revision is past its snapshot's
//! and swaps in a new snapshot. A periodic revision check is the safety net for a lost
//! notification; after a reconnect the replica catches up from the last revision it saw.
//!
//! The URL's password is never logged: [`PgUrl`] shows itself as `user@host:port/dbname`.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio_postgres::{AsyncMessage, Client, Row};
use tokio_util::sync::CancellationToken;

use super::{Changes, Draft, PolicyStore, StoreError, decode, migrations};

mod url;
pub use url::{PgUrl, SslMode};

/// The channel every commit is announced on (payload: the new revision).
pub const CHANNEL: &str = "verifyiam_changes";
/// How often a replica asks for the revision even without a notification.
pub const REVISION_CHECK: Duration = Duration::from_secs(2);
/// The longest wait between reconnect attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(4);
/// How long a connection attempt may take.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one write (connect, lock, catch up, write, commit) may take before it is answered
/// 503; the caller is told it was not acknowledged.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a catch-up query may take before the connection is taken for dead.
const QUERY_TIMEOUT: Duration = Duration::from_secs(3);

const LOCK_REVISION: &str = "SELECT revision FROM verifyiam_meta WHERE id = 1 FOR UPDATE";
/// One statement, so one consistent view: the revision and every record written after `$1`.
const CHANGES_SINCE: &str = "SELECT m.revision, r.kind, r.name, r.value::text \
     FROM verifyiam_meta m LEFT JOIN verifyiam_records r ON r.revision > $1 \
     WHERE m.id = 1";
const UPSERT: &str = "INSERT INTO verifyiam_records (kind, name, value, revision) \
     VALUES ($1, $2, $3::text::jsonb, $4) \
     ON CONFLICT (kind, name) DO UPDATE SET value = EXCLUDED.value, revision = EXCLUDED.revision";

/// A database error as a store error (the messages of tokio-postgres never carry the password).
pub(super) fn pg_error(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => StoreError::Io(format!("{}: {}", db.code().code(), db.message())),
        None if e.is_closed() => StoreError::Unavailable("the database connection closed".into()),
        None => StoreError::Unavailable(e.to_string()),
    }
}

/// The PostgreSQL backend's state beside the shared snapshot.
pub struct Postgres {
    pub(super) url: PgUrl,
    /// The connection writes go through, and the writer's turn: held across a write's awaits
    /// (never on the Check path) and by every snapshot swap, so swaps stay in revision order.
    pub(super) writer: tokio::sync::Mutex<Option<Client>>,
}

impl Postgres {
    /// A backend for `url`; connects nothing yet.
    pub fn new(url: PgUrl) -> Postgres {
        Postgres {
            url,
            writer: tokio::sync::Mutex::new(None),
        }
    }
}

/// The records of `rows` (from [`CHANGES_SINCE`]) and the database's revision.
fn changes_of(rows: &[Row]) -> Result<(u64, Changes), StoreError> {
    let mut changes = Changes::default();
    let mut revision = 0i64;
    for row in rows {
        revision = row.get(0);
        let kind: Option<&str> = row.get(1);
        let (Some(kind), Some(name)) = (kind, row.get::<_, Option<String>>(2)) else {
            continue;
        };
        let value: Option<String> = row.get(3);
        let bytes = value.as_deref().map(str::as_bytes);
        match kind {
            "policy" => changes
                .policies
                .push((name.clone(), bytes.map(|b| decode(&name, b)).transpose()?)),
            "deployment" => {
                if let Some(b) = bytes {
                    let d = decode(&name, b)?;
                    changes.deployments.push((name, d));
                }
            }
            "role" => changes
                .roles
                .push((name.clone(), bytes.map(|b| decode(&name, b)).transpose()?)),
            "group" => changes
                .groups
                .push((name.clone(), bytes.map(|b| decode(&name, b)).transpose()?)),
            other => return Err(StoreError::Corrupt(format!("{other}/{name}"))),
        }
    }
    Ok((u64::try_from(revision).unwrap_or(0), changes))
}

/// Brings the snapshot up to the database's revision. The caller holds the writer's turn.
async fn catch_up(
    store: &PolicyStore,
    client: &impl tokio_postgres::GenericClient,
) -> Result<(), StoreError> {
    let mut from = store.snapshot.load().epoch;
    let rows = client
        .query(CHANGES_SINCE, &[&(from as i64)])
        .await
        .map_err(pg_error)?;
    let (mut revision, mut changes) = changes_of(&rows)?;
    if revision < from {
        // The database went back (restored from a backup): start again from nothing.
        tracing::warn!(
            database = revision,
            snapshot = from,
            "the PostgreSQL revision is behind this replica's; reloading everything"
        );
        from = 0;
        let rows = client
            .query(CHANGES_SINCE, &[&0i64])
            .await
            .map_err(pg_error)?;
        (revision, changes) = changes_of(&rows)?;
        store.snapshot.store(Arc::new(store.empty_snapshot()));
    }
    if revision > from {
        let current = store.snapshot.load_full();
        store
            .snapshot
            .store(Arc::new(store.apply(&current, revision, changes)));
        metrics::gauge!("verifyiam_store_revision").set(revision as f64);
    }
    store.confirm_fresh();
    Ok(())
}

/// One write through PostgreSQL (see [`PolicyStore::mutate`]).
pub(super) async fn mutate<T, E, F>(store: &PolicyStore, pg: &Postgres, change: F) -> Result<T, E>
where
    E: From<StoreError>,
    F: FnOnce(&mut Draft<'_>) -> Result<T, E>,
{
    let mut turn = pg.writer.lock().await;
    match tokio::time::timeout(WRITE_TIMEOUT, write(store, pg, &mut turn, change)).await {
        Ok(outcome) => outcome,
        Err(_) => {
            // Whatever state that connection is in, the next write starts on a new one.
            *turn = None;
            Err(E::from(StoreError::Unavailable(
                "the database did not answer in time; the change was not acknowledged".into(),
            )))
        }
    }
}

async fn write<T, E, F>(
    store: &PolicyStore,
    pg: &Postgres,
    slot: &mut Option<Client>,
    change: F,
) -> Result<T, E>
where
    E: From<StoreError>,
    F: FnOnce(&mut Draft<'_>) -> Result<T, E>,
{
    if slot.as_ref().is_none_or(Client::is_closed) {
        *slot = None;
        *slot = Some(pg.url.client().await?);
    }
    let Some(client) = slot.as_mut() else {
        return Err(E::from(StoreError::Unavailable("no connection".into())));
    };
    let tx = client.transaction().await.map_err(pg_error)?;
    let revision: i64 = tx
        .query_one(LOCK_REVISION, &[])
        .await
        .map_err(pg_error)?
        .get(0);
    // Under the revision lock: everything committed is visible, nothing else can commit.
    catch_up(store, &tx).await?;
    let current = store.snapshot.load_full();
    if current.epoch != revision as u64 {
        return Err(E::from(StoreError::Io(format!(
            "snapshot at revision {} after catching up to {revision}",
            current.epoch
        ))));
    }
    let epoch = current.epoch + 1;
    let (out, changes) = Draft::record(&current, epoch, change)?;
    if changes.is_empty() {
        // Dropping the transaction rolls it back.
        return Ok(out);
    }
    let upsert = tx.prepare(UPSERT).await.map_err(pg_error)?;
    let next = epoch as i64;
    let mut rows: Vec<(&str, &str, Option<String>)> = Vec::new();
    fn json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
        serde_json::to_string(value).map_err(super::io)
    }
    for (name, p) in &changes.policies {
        rows.push(("policy", name, p.as_ref().map(json).transpose()?));
    }
    for (name, d) in &changes.deployments {
        rows.push(("deployment", name, Some(json(d)?)));
    }
    for (name, r) in &changes.roles {
        rows.push(("role", name, r.as_ref().map(json).transpose()?));
    }
    for (name, g) in &changes.groups {
        rows.push(("group", name, g.as_ref().map(json).transpose()?));
    }
    for (kind, name, value) in &rows {
        tx.execute(&upsert, &[kind, name, value, &next])
            .await
            .map_err(pg_error)?;
    }
    tx.execute(
        "UPDATE verifyiam_meta SET revision = $1 WHERE id = 1",
        &[&next],
    )
    .await
    .map_err(pg_error)?;
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &next.to_string()])
        .await
        .map_err(pg_error)?;
    tx.commit().await.map_err(pg_error)?;
    store
        .snapshot
        .store(Arc::new(store.apply(&current, epoch, changes)));
    metrics::gauge!("verifyiam_store_revision").set(epoch as f64);
    metrics::counter!("verifyiam_policy_writes_total").increment(1);
    Ok(out)
}

/// The jittered wait before reconnect attempt `attempt` (0-based): doubling from 100 ms, at most
/// [`MAX_BACKOFF`], each wait drawn between half and all of it so replicas spread out.
pub fn backoff(attempt: u32) -> Duration {
    let ceiling = Duration::from_millis(100)
        .saturating_mul(1u32 << attempt.min(6))
        .min(MAX_BACKOFF);
    let half = ceiling / 2;
    half + half.mul_f64(jitter())
}

/// A number in [0, 1) that differs between processes and calls (no need for a strong source).
fn jitter() -> f64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Keeps the replica's snapshot in step with the database until `stop`: connects (retrying
/// with backoff), migrates on the first connection, `LISTEN`s, loads, then applies every
/// notified change and checks the revision every [`REVISION_CHECK`]. Returns an error only for
/// what retrying cannot fix before the first load (a refused login, a newer schema).
pub(super) async fn run(
    store: Arc<PolicyStore>,
    pg: &Postgres,
    stop: CancellationToken,
) -> Result<(), StoreError> {
    let mut attempt = 0u32;
    let mut migrated = false;
    loop {
        let outcome = session(&store, pg, &mut migrated, &mut attempt, &stop).await;
        let e = match outcome {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        metrics::counter!("verifyiam_store_connection_errors_total").increment(1);
        let fatal = matches!(
            e,
            StoreError::Login { .. } | StoreError::SchemaTooNew { .. }
        );
        if fatal && !store.is_loaded() {
            return Err(e);
        }
        let delay = backoff(attempt);
        attempt = attempt.saturating_add(1);
        if store.is_loaded() {
            tracing::warn!(error = %e, retry_in = ?delay, "lost the PostgreSQL policy store; answering from the last snapshot");
        } else {
            tracing::error!(error = %e, retry_in = ?delay, database = %pg.url, "cannot load the policy store from PostgreSQL yet; Checks answer 503 until it loads");
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

async fn session(
    store: &Arc<PolicyStore>,
    pg: &Postgres,
    migrated: &mut bool,
    attempt: &mut u32,
    stop: &CancellationToken,
) -> Result<(), StoreError> {
    let (mut client, mut connection) = tokio::select! {
        _ = stop.cancelled() => return Ok(()),
        c = pg.url.connect() => c?,
    };
    let (tx, mut notices) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(_)) => {
                    if tx.send(Ok(())).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Err(pg_error(e)));
                    break;
                }
            }
        }
    });
    let _driver = AbortOnDrop(driver);
    let timed = |what: &'static str| {
        move |_| StoreError::Unavailable(format!("{what} took longer than {QUERY_TIMEOUT:?}"))
    };
    if *migrated {
        migrations::refuse_newer(migrations::current(&client).await?)?;
    } else {
        let (applied, version) = migrations::migrate(&mut client).await?;
        *migrated = true;
        tracing::info!(?applied, version, database = %pg.url, "PostgreSQL schema ready");
    }
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .await
        .map_err(pg_error)?;
    {
        let _turn = pg.writer.lock().await;
        tokio::time::timeout(QUERY_TIMEOUT, catch_up(store, &client))
            .await
            .map_err(timed("catching up"))??;
    }
    *attempt = 0;
    if !store.is_loaded() {
        store.seed_pending().await?;
        store.mark_loaded();
        tracing::info!(revision = store.snapshot().epoch, database = %pg.url, "policy store loaded from PostgreSQL");
    } else {
        tracing::info!(
            revision = store.snapshot().epoch,
            "PostgreSQL policy store reconnected and caught up"
        );
    }
    let mut tick = tokio::time::interval(REVISION_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            notice = notices.recv() => match notice {
                Some(Ok(())) => {
                    metrics::counter!("verifyiam_store_notifications_total").increment(1);
                    // Several commits may have been announced at once: one catch-up serves all.
                    while let Ok(more) = notices.try_recv() {
                        more?;
                        metrics::counter!("verifyiam_store_notifications_total").increment(1);
                    }
                }
                Some(Err(e)) => return Err(e),
                None => return Err(StoreError::Unavailable("the listening connection closed".into())),
            },
            _ = tick.tick() => {}
        }
        let _turn = pg.writer.lock().await;
        tokio::time::timeout(QUERY_TIMEOUT, catch_up(store, &client))
            .await
            .map_err(timed("catching up"))??;
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `verifyiam store migrate`: applies the migrations the database lacks.
pub async fn migrate(url: &PgUrl) -> Result<(Vec<i64>, i64), StoreError> {
    let mut client = url.client().await?;
    migrations::migrate(&mut client).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_and_bounded() {
        for attempt in 0..40 {
            let d = backoff(attempt);
            assert!(d <= MAX_BACKOFF && d >= Duration::from_millis(50), "{d:?}");
        }
    }
}
