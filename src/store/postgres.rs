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

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio_postgres::{AsyncMessage, Client, Row};
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_util::sync::CancellationToken;

use super::{Changes, Draft, PolicyStore, StoreError, decode, migrations};
use crate::iam::policy::Etag;

/// The channel every commit is announced on (payload: the new revision).
pub const CHANNEL: &str = "verifyiam_changes";
/// How often a replica asks for the revision even without a notification.
pub const REVISION_CHECK: Duration = Duration::from_secs(2);
/// The longest wait between reconnect attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(4);
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
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

/// How the connection is protected (libpq's `sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS if the server offers it, else plain; the certificate is not verified (libpq's
    /// `allow` and `prefer`, the default).
    Prefer,
    /// TLS, certificate not verified (libpq's `require`).
    Require,
    /// TLS, certificate chain verified, host name not (libpq's `verify-ca`).
    VerifyCa,
    /// TLS, certificate chain and host name verified (libpq's `verify-full`).
    VerifyFull,
}

/// A parsed `postgres://` / `postgresql://` URL (libpq style). Shows itself without password.
#[derive(Clone)]
pub struct PgUrl {
    config: tokio_postgres::Config,
    ssl: SslMode,
    root_cert: Option<PathBuf>,
    shown: String,
}

impl fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgUrl({})", self.shown)
    }
}

impl fmt::Display for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

fn decoded(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

impl PgUrl {
    /// Whether `store` names a PostgreSQL database rather than a directory.
    pub fn is_postgres(store: &str) -> bool {
        store.starts_with("postgres://") || store.starts_with("postgresql://")
    }

    /// Parses a URL; the password comes from the URL or else `PGPASSWORD`, the user from the
    /// URL or else `PGUSER`. The error never repeats the URL (it may hold a password).
    pub fn parse(text: &str) -> Result<PgUrl, String> {
        Self::parse_with(text, |k| std::env::var(k).ok())
    }

    fn parse_with(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<PgUrl, String> {
        if !Self::is_postgres(text) {
            return Err("must start with postgres:// or postgresql://".to_owned());
        }
        let url = url::Url::parse(text).map_err(|e| format!("not a valid URL: {e}"))?;
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or("needs a host (postgres://user@host:5432/dbname)")?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = url.port().unwrap_or(5432);
        let user = match decoded(url.username()) {
            u if !u.is_empty() => u,
            _ => env("PGUSER")
                .filter(|u| !u.is_empty())
                .ok_or("needs a user name (postgres://user@host/dbname, or PGUSER)")?,
        };
        let password = url
            .password()
            .map(decoded)
            .or_else(|| env("PGPASSWORD"))
            .filter(|p| !p.is_empty());
        let dbname = match decoded(url.path().trim_start_matches('/')) {
            d if d.is_empty() => user.clone(),
            d if d.contains('/') => return Err("the database name must not contain '/'".into()),
            d => d,
        };
        let mut config = tokio_postgres::Config::new();
        config
            .host(&host)
            .port(port)
            .user(&user)
            .dbname(&dbname)
            .application_name("verifyiam")
            .connect_timeout(CONNECT_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30));
        if let Some(p) = &password {
            config.password(p.as_bytes());
        }
        let mut ssl = SslMode::Prefer;
        let mut root_cert = None;
        for (key, value) in url.query_pairs() {
            match &*key {
                "sslmode" => {
                    ssl = match &*value {
                        "disable" => SslMode::Disable,
                        "allow" | "prefer" => SslMode::Prefer,
                        "require" => SslMode::Require,
                        "verify-ca" => SslMode::VerifyCa,
                        "verify-full" => SslMode::VerifyFull,
                        other => return Err(format!("unknown sslmode {other:?}")),
                    }
                }
                "sslrootcert" => root_cert = Some(PathBuf::from(&*value)),
                "application_name" => {
                    config.application_name(&*value);
                }
                "connect_timeout" => {
                    let secs: u64 = value
                        .parse()
                        .map_err(|_| "connect_timeout must be a number of seconds".to_owned())?;
                    config.connect_timeout(Duration::from_secs(secs.max(1)));
                }
                other => return Err(format!("unsupported URL parameter {other:?}")),
            }
        }
        config.ssl_mode(match ssl {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        let shown = if host.contains(':') {
            format!("{user}@[{host}]:{port}/{dbname}")
        } else {
            format!("{user}@{host}:{port}/{dbname}")
        };
        Ok(PgUrl {
            config,
            ssl,
            root_cert,
            shown,
        })
    }

    /// The `sslmode` in force.
    pub fn ssl_mode(&self) -> SslMode {
        self.ssl
    }

    /// The database name.
    pub fn dbname(&self) -> &str {
        self.config.get_dbname().unwrap_or_default()
    }

    fn tls(&self) -> Result<MakeRustlsConnect, StoreError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| StoreError::Io(format!("tls: {e}")))?;
        let config = match self.ssl {
            SslMode::Disable | SslMode::Prefer | SslMode::Require => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
                .with_no_client_auth(),
            SslMode::VerifyCa | SslMode::VerifyFull => {
                let mut roots = rustls::RootCertStore::empty();
                match &self.root_cert {
                    Some(path) => {
                        let pem = std::fs::read(path).map_err(|e| {
                            StoreError::Io(format!("sslrootcert {}: {e}", path.display()))
                        })?;
                        for cert in rustls_pemfile_certs(&pem) {
                            roots.add(cert).map_err(|e| {
                                StoreError::Io(format!("sslrootcert {}: {e}", path.display()))
                            })?;
                        }
                    }
                    None => {
                        for cert in rustls_native_certs::load_native_certs().certs {
                            let _ = roots.add(cert);
                        }
                    }
                }
                let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| StoreError::Io(format!("tls: {e}")))?;
                let builder = builder.dangerous();
                if self.ssl == SslMode::VerifyCa {
                    builder.with_custom_certificate_verifier(Arc::new(ChainOnly(verifier)))
                } else {
                    builder.with_custom_certificate_verifier(verifier)
                }
                .with_no_client_auth()
            }
        };
        Ok(MakeRustlsConnect::new(config))
    }

    /// Opens one connection; returns the client and its (not yet driven) connection.
    async fn connect(
        &self,
    ) -> Result<
        (
            Client,
            tokio_postgres::Connection<
                tokio_postgres::Socket,
                <MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<
                    tokio_postgres::Socket,
                >>::Stream,
            >,
        ),
        StoreError,
    > {
        let tls = self.tls()?;
        match tokio::time::timeout(CONNECT_TIMEOUT, self.config.connect(tls)).await {
            Ok(Ok(pair)) => Ok(pair),
            Ok(Err(e)) => Err(self.connect_error(e)),
            Err(_) => Err(StoreError::Unavailable(format!(
                "connecting to {} timed out",
                self.shown
            ))),
        }
    }

    /// A connection driven in the background, for writes and one-off commands.
    pub(super) async fn client(&self) -> Result<Client, StoreError> {
        let (client, connection) = self.connect().await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    fn connect_error(&self, e: tokio_postgres::Error) -> StoreError {
        let login = e.as_db_error().is_some_and(|db| {
            db.code() == &tokio_postgres::error::SqlState::INVALID_PASSWORD
                || db.code()
                    == &tokio_postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        });
        let text = match e.as_db_error() {
            Some(db) => db.message().to_owned(),
            None => e.to_string(),
        };
        if login || text.contains("password missing") {
            StoreError::Login {
                target: self.shown.clone(),
                reason: text,
            }
        } else {
            StoreError::Unavailable(format!("cannot connect to {}: {text}", self.shown))
        }
    }
}

/// PEM certificates from a file's bytes (`sslrootcert`).
fn rustls_pemfile_certs(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject as _;
    CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect()
}

/// libpq's `prefer`/`require`: encrypted, the server's certificate not checked.
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// libpq's `verify-ca`: the chain must lead to a trusted root; the host name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

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
    /// Whether the listening connection is up.
    pub(super) connected: AtomicBool,
}

impl Postgres {
    /// A backend for `url`; connects nothing yet.
    pub fn new(url: PgUrl) -> Postgres {
        Postgres {
            url,
            writer: tokio::sync::Mutex::new(None),
            connected: AtomicBool::new(false),
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
    let mut draft = Draft {
        current: &current,
        etag: Etag::from_version(epoch),
        changes: Changes::default(),
    };
    let out = change(&mut draft)?;
    let Draft { changes, .. } = draft;
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
        pg.connected.store(false, Ordering::Release);
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
    pg.connected.store(true, Ordering::Release);
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

    fn parse(url: &str, env: &[(&str, &str)]) -> Result<PgUrl, String> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        PgUrl::parse_with(url, |k| {
            env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn url_shows_no_password() {
        let u = parse(
            "postgres://app:s3cret@db.internal:6432/iam?sslmode=require",
            &[],
        )
        .unwrap();
        assert_eq!(u.to_string(), "app@db.internal:6432/iam");
        assert!(!format!("{u:?}").contains("s3cret"));
        assert_eq!(u.ssl_mode(), SslMode::Require);
        assert_eq!(u.config.get_password(), Some(&b"s3cret"[..]));
    }

    #[test]
    fn password_from_pgpassword_when_the_url_has_none() {
        let u = parse("postgresql://app@db/iam", &[("PGPASSWORD", "fromenv")]).unwrap();
        assert_eq!(u.config.get_password(), Some(&b"fromenv"[..]));
        assert_eq!(u.ssl_mode(), SslMode::Prefer);
        assert_eq!(u.to_string(), "app@db:5432/iam");
    }

    #[test]
    fn malformed_urls_are_refused_without_echoing_them() {
        for bad in [
            "postgres://",
            "postgres://app:pw@/db",
            "postgres://app:pw@db/iam?sslmode=sometimes",
            "postgres://app:pw@db/iam?bogus=1",
            "postgres://app:pw@db:notaport/iam",
        ] {
            let e = parse(bad, &[]).unwrap_err();
            assert!(!e.contains("pw"), "{bad}: {e}");
        }
        assert!(parse("mysql://a@b/c", &[]).is_err());
    }

    #[test]
    fn backoff_is_jittered_and_bounded() {
        for attempt in 0..40 {
            let d = backoff(attempt);
            assert!(d <= MAX_BACKOFF && d >= Duration::from_millis(50), "{d:?}");
        }
    }
}
