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
//! A restored backup is noticed at the next catch-up: each revision's [`Chain`] is stored in
//! `verifyiam_revisions`, and a replica compares the entry for the revision it holds with the
//! chain it remembers. A different chain or none means the revision now names another history:
//! the replica reloads everything, as a new snapshot generation.
//!
//! A write whose COMMIT was sent but not answered in time is not guessed at: a fresh connection
//! waits (bounded) for that transaction's row lock and reads whether the write's revision holds
//! the write's chain. Committed: acknowledged; rolled back: "not applied"; still unknown:
//! [`StoreError::OutcomeUnknown`].
//!
//! The URL's password is never logged: [`PgUrl`] shows itself as `user@host:port/dbname`.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio_postgres::{AsyncMessage, Client, Row};
use tokio_util::sync::CancellationToken;

use super::{
    Chain, Changes, Draft, PolicyStore, Snapshot, StoreError, WRITER_WAIT, decode, migrations,
};

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
/// How long finding out whether a COMMIT whose answer was lost took effect may take.
const OUTCOME_TIMEOUT: Duration = Duration::from_secs(5);

const LOCK_REVISION: &str = "SELECT revision FROM verifyiam_meta WHERE id = 1 FOR UPDATE";
/// One statement, so one consistent view: the revision, its chain, the chain stored for `$1`
/// (the revision the replica holds), the schema version, and every record written after `$1`.
const CHANGES_SINCE: &str = "SELECT m.revision, h.chain, f.chain, s.version, \
     r.kind, r.name, r.value::text \
     FROM verifyiam_meta m \
     LEFT JOIN verifyiam_revisions h ON h.revision = m.revision \
     LEFT JOIN verifyiam_revisions f ON f.revision = $1 \
     CROSS JOIN (SELECT max(version) AS version FROM verifyiam_schema) s \
     LEFT JOIN verifyiam_records r ON r.revision > $1 \
     WHERE m.id = 1";
const INSERT_CHAIN: &str = "INSERT INTO verifyiam_revisions (revision, chain) VALUES ($1, $2) \
     ON CONFLICT (revision) DO UPDATE SET chain = EXCLUDED.chain";
const UPSERT: &str = "INSERT INTO verifyiam_records (kind, name, value, revision) \
     VALUES ($1, $2, $3::text::jsonb, $4) \
     ON CONFLICT (kind, name) DO UPDATE SET value = EXCLUDED.value, revision = EXCLUDED.revision";

/// A database error as a store error (the messages of tokio-postgres never carry the password).
pub(super) fn pg_error(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) if db.code() == &tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE => {
            StoreError::Privilege(db.message().to_owned())
        }
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
    /// The connection read barriers ask the revision on: shared (queries pipeline on it), and
    /// replaced when it closes; the mutex is only held to open a new one.
    reader: tokio::sync::Mutex<Option<Arc<Client>>>,
}

impl Postgres {
    /// A backend for `url`; connects nothing yet.
    pub fn new(url: PgUrl) -> Postgres {
        Postgres {
            url,
            writer: tokio::sync::Mutex::new(None),
            reader: tokio::sync::Mutex::new(None),
        }
    }
}

/// What one [`CHANGES_SINCE`] read saw.
struct Seen {
    /// The database's revision.
    revision: u64,
    /// Its chain (`None`: written without one, by an older verifyiam).
    head: Option<Chain>,
    /// The chain stored for the revision asked about (`None`: no such entry).
    at_from: Option<Chain>,
    /// The schema version.
    schema: i64,
    /// Every record written after the revision asked about.
    changes: Changes,
}

/// The records of `rows` (from [`CHANGES_SINCE`]), the database's revision and chains.
fn changes_of(rows: &[Row]) -> Result<Seen, StoreError> {
    let mut changes = Changes::default();
    let mut seen = Seen {
        revision: 0,
        head: None,
        at_from: None,
        schema: 0,
        changes: Changes::default(),
    };
    let chain = |row: &Row, i| row.get::<_, Option<&[u8]>>(i).and_then(Chain::from_slice);
    for row in rows {
        seen.revision = u64::try_from(row.get::<_, i64>(0)).unwrap_or(0);
        seen.head = chain(row, 1);
        seen.at_from = chain(row, 2);
        seen.schema = row.get::<_, Option<i64>>(3).unwrap_or(0);
        let kind: Option<&str> = row.get(4);
        let (Some(kind), Some(name)) = (kind, row.get::<_, Option<String>>(5)) else {
            continue;
        };
        let value: Option<String> = row.get(6);
        let bytes = value.as_deref().map(str::as_bytes);
        match kind {
            "policy" => changes
                .policies
                .push((name.clone(), bytes.map(|b| decode(&name, b)).transpose()?)),
            "deployment" => changes
                .deployments
                .push((name.clone(), bytes.map(|b| decode(&name, b)).transpose()?)),
            "role" => changes
                .roles
                .push((name.clone(), bytes.map(|b| decode(&name, b)).transpose()?)),
            "group" => changes
                .groups
                .push((name.clone(), bytes.map(|b| decode(&name, b)).transpose()?)),
            other => return Err(StoreError::Corrupt(format!("{other}/{name}"))),
        }
    }
    seen.changes = changes;
    Ok(seen)
}

async fn read_since(
    client: &impl tokio_postgres::GenericClient,
    from: u64,
) -> Result<Seen, StoreError> {
    let rows = client
        .query(CHANGES_SINCE, &[&(from as i64)])
        .await
        .map_err(pg_error)?;
    changes_of(&rows)
}

/// Brings the snapshot up to the database's revision, reloading everything when the revision
/// the replica holds no longer names the same history. The caller holds the writer's turn.
async fn catch_up(
    store: &PolicyStore,
    client: &impl tokio_postgres::GenericClient,
) -> Result<(), StoreError> {
    let current = store.snapshot.load_full();
    let from = current.epoch;
    let mut seen = read_since(client, from).await?;
    if seen.schema < migrations::latest() {
        // A dump taken before the last migration was restored: migrate again (a fresh chain,
        // so every replica then reloads) before trusting anything read.
        return Err(StoreError::Unavailable(format!(
            "the PostgreSQL schema went back to version {} (a restored backup?); migrating again",
            seen.schema
        )));
    }
    // From revision 0 everything is read anyway; past it the chains must agree.
    let same_history = from == 0 || (current.chain().is_some() && seen.at_from == current.chain());
    let base: Arc<Snapshot> = if same_history {
        current
    } else {
        tracing::warn!(
            database = seen.revision,
            snapshot = from,
            "the database no longer holds this replica's revision with the same history \
             (restored from a backup?); reloading everything"
        );
        metrics::counter!("verifyiam_store_reloads_total").increment(1);
        seen = read_since(client, 0).await?;
        Arc::new(store.empty_snapshot())
    };
    if !same_history || seen.revision != from {
        store.snapshot.store(Arc::new(store.apply(
            &base,
            seen.revision,
            seen.head,
            seen.changes,
        )));
        metrics::gauge!("verifyiam_store_revision").set(seen.revision as f64);
    }
    store.confirm_fresh();
    Ok(())
}

/// The database's revision and its chain, in one read.
const HEAD: &str = "SELECT m.revision, h.chain FROM verifyiam_meta m \
     LEFT JOIN verifyiam_revisions h ON h.revision = m.revision WHERE m.id = 1";

/// The read barrier (see [`PolicyStore::read_barrier`]): asks the database for its revision
/// and chain; when the snapshot holds them already, it is current; otherwise this replica
/// catches up (in the writer's turn, as every snapshot swap) before the read goes on.
pub(super) async fn read_barrier(store: &PolicyStore, pg: &Postgres) -> Result<(), StoreError> {
    let client = {
        let mut slot = pg.reader.lock().await;
        match slot.as_ref() {
            Some(c) if !c.is_closed() => c.clone(),
            _ => {
                *slot = None;
                let c = Arc::new(pg.url.client().await?);
                *slot = Some(c.clone());
                c
            }
        }
    };
    let row = match client.query_one(HEAD, &[]).await {
        Ok(row) => row,
        Err(e) => {
            forget_reader(pg);
            return Err(pg_error(e));
        }
    };
    let revision = u64::try_from(row.get::<_, i64>(0)).unwrap_or(0);
    let head = row.get::<_, Option<&[u8]>>(1).and_then(Chain::from_slice);
    let current = store.snapshot.load();
    if current.epoch == revision && head.is_some() && current.chain() == head {
        store.confirm_fresh();
        return Ok(());
    }
    drop(current);
    let _turn = pg.writer.lock().await;
    catch_up(store, &*client).await
}

/// Drops the read barrier's connection (it failed or did not answer in time): the next read
/// opens a new one rather than wait on a connection that may be dead.
pub(super) fn forget_reader(pg: &Postgres) {
    if let Ok(mut slot) = pg.reader.try_lock() {
        *slot = None;
    }
}

/// A write ready to commit: what the caller gets and what the snapshot becomes once it has.
struct Prepared<T> {
    out: T,
    current: Arc<Snapshot>,
    epoch: u64,
    chain: Chain,
    changes: Changes,
}

/// How [`write`] ended without an error.
enum Written<T> {
    /// The closure changed nothing; nothing was written.
    Unchanged(T),
    /// Committed; the [`Prepared`] write is durable.
    Committed,
    /// COMMIT was sent and its answer lost (why).
    InDoubt(String),
}

/// One write through PostgreSQL (see [`PolicyStore::mutate`]).
pub(super) async fn mutate<T, E, F>(store: &PolicyStore, pg: &Postgres, change: F) -> Result<T, E>
where
    E: From<StoreError>,
    F: FnOnce(&mut Draft<'_>) -> Result<T, E>,
{
    // Bounded: behind a write stuck on the database, give up before sending anything.
    let Ok(mut turn) = tokio::time::timeout(WRITER_WAIT, pg.writer.lock()).await else {
        return Err(E::from(StoreError::Busy(WRITER_WAIT)));
    };
    // Filled just before COMMIT is sent: if it is still empty, nothing can have committed.
    let mut prepared: Option<Prepared<T>> = None;
    let outcome = tokio::time::timeout(
        WRITE_TIMEOUT,
        write(store, pg, &mut turn, change, &mut prepared),
    )
    .await;
    let why = match outcome {
        Ok(Ok(Written::Unchanged(out))) => return Ok(out),
        Ok(Ok(Written::Committed)) => None,
        Ok(Ok(Written::InDoubt(why))) => Some(why),
        Ok(Err(e)) => return Err(e),
        Err(_) if prepared.is_none() => {
            *turn = None;
            return Err(E::from(StoreError::Unavailable(
                "the database did not answer in time; the change was not acknowledged".into(),
            )));
        }
        Err(_) => Some(format!("COMMIT did not answer within {WRITE_TIMEOUT:?}")),
    };
    let Some(p) = prepared else {
        return Err(E::from(StoreError::Io(
            "a committed write lost its changes".into(),
        )));
    };
    if let Some(why) = why {
        // Whatever state that connection is in, the next write starts on a new one.
        *turn = None;
        match tokio::time::timeout(OUTCOME_TIMEOUT, committed(pg, p.epoch, p.chain)).await {
            Ok(Ok(true)) => {
                tracing::warn!(revision = p.epoch, %why, "the COMMIT's answer was lost, but the write is in the database: acknowledged");
            }
            Ok(Ok(false)) => {
                return Err(E::from(StoreError::Unavailable(format!(
                    "{why}; the database shows the change was not applied"
                ))));
            }
            Ok(Err(e)) => {
                return Err(E::from(StoreError::OutcomeUnknown(format!(
                    "{why}; asking the database failed: {e}"
                ))));
            }
            Err(_) => {
                return Err(E::from(StoreError::OutcomeUnknown(format!(
                    "{why}; the database did not say within {OUTCOME_TIMEOUT:?}"
                ))));
            }
        }
    }
    store.snapshot.store(Arc::new(store.apply(
        &p.current,
        p.epoch,
        Some(p.chain),
        p.changes,
    )));
    metrics::gauge!("verifyiam_store_revision").set(p.epoch as f64);
    metrics::counter!("verifyiam_policy_writes_total").increment(1);
    Ok(p.out)
}

/// Whether revision `epoch` committed with `chain`, once the transaction that wrote it (or
/// failed to) has ended: taking the revision row lock waits for it.
async fn committed(pg: &Postgres, epoch: u64, chain: Chain) -> Result<bool, StoreError> {
    let mut client = pg.url.client().await?;
    let tx = client.transaction().await.map_err(pg_error)?;
    tx.query_one(LOCK_REVISION, &[]).await.map_err(pg_error)?;
    let row = tx
        .query_opt(
            "SELECT chain FROM verifyiam_revisions WHERE revision = $1",
            &[&(epoch as i64)],
        )
        .await
        .map_err(pg_error)?;
    // Dropping the transaction rolls it back and releases the lock.
    Ok(row.and_then(|r| Chain::from_slice(r.get(0))) == Some(chain))
}

async fn write<T, E, F>(
    store: &PolicyStore,
    pg: &Postgres,
    slot: &mut Option<Client>,
    change: F,
    prepared: &mut Option<Prepared<T>>,
) -> Result<Written<T>, E>
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
        return Ok(Written::Unchanged(out));
    }
    let epoch = epoch.max(changes.floor);
    let rows = changes.rows()?;
    let chain = current
        .chain()
        .unwrap_or_else(|| Chain::unique(current.epoch))
        .next(&rows);
    let upsert = tx.prepare(UPSERT).await.map_err(pg_error)?;
    let next = epoch as i64;
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
    tx.execute(INSERT_CHAIN, &[&next, &chain.0.as_slice()])
        .await
        .map_err(pg_error)?;
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &next.to_string()])
        .await
        .map_err(pg_error)?;
    *prepared = Some(Prepared {
        out,
        current,
        epoch,
        chain,
        changes,
    });
    match tx.commit().await {
        Ok(()) => Ok(Written::Committed),
        // The server refused the COMMIT with an ERROR: the transaction rolled back.
        Err(e)
            if e.as_db_error().is_some_and(|d| {
                d.parsed_severity() == Some(tokio_postgres::error::Severity::Error)
            }) =>
        {
            Err(E::from(pg_error(e)))
        }
        Err(e) => Ok(Written::InDoubt(format!("COMMIT failed: {}", pg_error(e)))),
    }
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
/// what retrying cannot fix before the first load (a refused login, a missing database or
/// permission, a newer schema).
pub(super) async fn run(
    store: Arc<PolicyStore>,
    pg: &Postgres,
    stop: CancellationToken,
) -> Result<(), StoreError> {
    let mut attempt = 0u32;
    let mut migrated = false;
    // Beside the staleness, so an alert can say how close a replica is to refusing Checks.
    metrics::gauge!("verifyiam_store_max_staleness_seconds").set(store.max_staleness.as_secs_f64());
    let connected = metrics::gauge!("verifyiam_store_connected");
    connected.set(0.0);
    // Registered at zero: a counter that first appears at 1 hides that increase from rate().
    metrics::counter!("verifyiam_store_connection_errors_total").increment(0);
    loop {
        let outcome = session(&store, pg, &mut migrated, &mut attempt, &stop).await;
        connected.set(0.0);
        let e = match outcome {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        metrics::counter!("verifyiam_store_connection_errors_total").increment(1);
        // Only an unreachable server is worth waiting for; these need someone to act.
        let fatal = e.is_configuration() || matches!(e, StoreError::SchemaTooNew { .. });
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
    let found = migrations::current(&client).await?;
    migrations::refuse_newer(found)?;
    // Again whenever the schema is behind: a restored dump may predate a migration.
    if !*migrated || found < migrations::latest() {
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
    metrics::gauge!("verifyiam_store_connected").set(1.0);
    // Set here too: a catch-up that found nothing new (an empty database) sets nothing.
    metrics::gauge!("verifyiam_store_revision").set(store.snapshot().epoch as f64);
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
    let mut pruned_at: Option<tokio::time::Instant> = None;
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
            _ = tick.tick() => {
                if pruned_at.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
                    pruned_at = Some(tokio::time::Instant::now());
                    if let Err(e) = prune(pg, store.tombstone_horizon).await {
                        tracing::warn!(error = %e, "pruning tombstones failed; retried later");
                    }
                }
            }
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

/// Loads the snapshot once, for a command that reads or writes the store without serving
/// (`store export`, `import`, `copy`): migrates the schema when `migrate` (a writing
/// command), else refuses a schema that is not this binary's.
pub(super) async fn load_once(
    store: &PolicyStore,
    pg: &Postgres,
    migrate: bool,
) -> Result<(), StoreError> {
    let mut client = pg.url.client().await?;
    let found = migrations::current(&client).await?;
    migrations::refuse_newer(found)?;
    if migrate {
        migrations::migrate(&mut client).await?;
    } else if found < migrations::latest() {
        return Err(StoreError::Unavailable(format!(
            "the PostgreSQL schema is at version {found}, not {}: run `verifyiam store migrate` \
             first",
            migrations::latest()
        )));
    }
    let _turn = pg.writer.lock().await;
    catch_up(store, &client).await?;
    store.mark_loaded();
    Ok(())
}

/// How often a serving replica prunes tombstones past `iam.tombstone_horizon`.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// See [`PolicyStore::prune_tombstones`]. Under the revision row lock, so it is serial with
/// writes, and in one transaction with the revision entries it removes, so a replica either
/// finds both (and catches up) or neither (and reloads).
pub(super) async fn prune(pg: &Postgres, horizon: Duration) -> Result<u64, StoreError> {
    let mut client = pg.url.client().await?;
    let tx = client.transaction().await.map_err(pg_error)?;
    tx.query_one(LOCK_REVISION, &[]).await.map_err(pg_error)?;
    let below: Option<i64> = tx
        .query_one(
            "SELECT max(revision) FROM verifyiam_revisions \
             WHERE committed_at < now() - make_interval(secs => $1)",
            &[&horizon.as_secs_f64()],
        )
        .await
        .map_err(pg_error)?
        .get(0);
    let Some(below) = below.filter(|b| *b > 0) else {
        return Ok(0);
    };
    let pruned = tx
        .execute(
            "DELETE FROM verifyiam_records WHERE value IS NULL AND revision <= $1",
            &[&below],
        )
        .await
        .map_err(pg_error)?;
    // The entry of `below` itself stays: a replica holding it missed no deletion.
    tx.execute(
        "DELETE FROM verifyiam_revisions WHERE revision < $1",
        &[&below],
    )
    .await
    .map_err(pg_error)?;
    tx.commit().await.map_err(pg_error)?;
    if pruned > 0 {
        tracing::info!(
            pruned,
            below = below,
            "pruned deletions past the tombstone horizon"
        );
        metrics::counter!("verifyiam_store_tombstones_pruned_total").increment(pruned);
    }
    Ok(pruned)
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
