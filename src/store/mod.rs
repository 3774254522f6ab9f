//! The policy store: the project's, each environment's and each deployment's policy with its
//! etag, the deployments, the custom roles and the group memberships. One interface,
//! [`PolicyStore`], over two backends: [`embedded`] (a redb file under `iam.store`, one replica)
//! and [`postgres`] (one PostgreSQL database shared by any number of replicas). A write is
//! durable before it is acknowledged, and every write moves an epoch (the PostgreSQL store's
//! global revision) and swaps in a new in-memory [`Snapshot`], so the next Check on this instance
//! sees it; with PostgreSQL every other replica applies it when the commit's notification
//! arrives. The hot path only loads the snapshot: no lock, no I/O.
//!
//! Every change goes through [`PolicyStore::mutate`]: the caller's closure reads the current
//! snapshot and records its changes in a [`Draft`] under the writer's turn (with PostgreSQL: the
//! database-wide revision row lock, after catching up), so check-and-set rules (etags, "role
//! still in use", "deployment exists") hold against concurrent writers on any replica.
//!
//! Every revision also names its history: [`Chain`], a SHA-256 chained over the changes
//! (`chain(n) = H(chain(n-1) || canonical changes of n)`), stored with the revision. A replica
//! remembers the chain of the revision it holds and, catching up, compares the database's entry
//! for that revision: a mismatch or a missing entry (a restored backup) means a full reload,
//! which starts a new [`Snapshot::generation`]. Decisions are cached by generation and epoch, so
//! one revision number never stands for two histories.

pub mod dump;
pub mod embedded;
pub mod migrations;
pub mod postgres;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, Guard};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::iam::custom::{Catalog, CustomRole};
use crate::iam::eval::{CompiledPolicy, PolicyLookup, Resource};
use crate::iam::policy::{Etag, Policy};
use crate::iam::roles::{PermissionSet, RoleCatalog};

pub use embedded::FILE_NAME;
pub use postgres::PgUrl;

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The etag sent is not the policy's current one (HTTP 409 / gRPC `ABORTED`).
    #[error("there were concurrent policy changes; read the policy again and retry with its etag")]
    Aborted,
    /// The store could not be opened.
    #[error("cannot open the store at {path}: {reason}")]
    Open {
        /// The store file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Reading or writing failed; nothing was acknowledged.
    #[error("store i/o failed: {0}")]
    Io(String),
    /// A stored record does not parse.
    #[error("stored record for {0} is corrupt")]
    Corrupt(String),
    /// The database cannot be reached (or answered too late); nothing was acknowledged
    /// (HTTP 503 / gRPC `UNAVAILABLE`).
    #[error("the policy store is unavailable: {0}")]
    Unavailable(String),
    /// The database refused our credentials. The message never carries the password.
    #[error(
        "PostgreSQL at {target} refused the login: {reason}; check the user and password of \
         iam.store (or VERIFYIAM_STORE) and the server's pg_hba.conf"
    )]
    Login {
        /// The database, as `user@host:port/dbname` (no password).
        target: String,
        /// The server's reason.
        reason: String,
    },
    /// The server is there but the database named in `iam.store` is not.
    #[error(
        "PostgreSQL at {target}: the database {database:?} does not exist; create it \
         (`CREATE DATABASE {database};` as an administrator, or `createdb {database}`) or name \
         an existing one in iam.store"
    )]
    MissingDatabase {
        /// The database, as `user@host:port/dbname` (no password).
        target: String,
        /// The database name.
        database: String,
    },
    /// The database refused an operation the store needs (creating its tables, reading them).
    #[error(
        "the PostgreSQL role of iam.store lacks a permission verifyiam needs ({0}); grant it on \
         the database's schema and tables (e.g. `GRANT CREATE, USAGE ON SCHEMA public TO <role>;` \
         and `GRANT ALL ON ALL TABLES IN SCHEMA public TO <role>;`), or let the schema's owner \
         run `verifyiam store migrate` first"
    )]
    Privilege(String),
    /// The COMMIT was sent but its answer was lost, and the database could not be asked in time
    /// whether it took effect: the change may or may not have been applied (HTTP 503 / gRPC
    /// `UNAVAILABLE`, never "not applied").
    #[error("the outcome of the change is unknown ({0}); read it back before retrying")]
    OutcomeUnknown(String),
    /// The write waited [`WRITER_WAIT`] for the writes ahead of it (on this replica) and gave up
    /// before sending anything: nothing was applied (HTTP 503 / gRPC `UNAVAILABLE`).
    #[error("the write waited {0:?} for the writes ahead of it; the change was not applied")]
    Busy(Duration),
    /// An import into a store that holds other records (without `--replace`); nothing was
    /// written.
    #[error("the store is not empty: {0}")]
    NotEmpty(String),
    /// The database's schema is newer than this binary knows.
    #[error(
        "the PostgreSQL schema is at version {found}, newer than the {known} this verifyiam knows; \
         run a newer verifyiam (or the one that migrated it)"
    )]
    SchemaTooNew {
        /// The database's version.
        found: i64,
        /// The newest this binary has.
        known: i64,
    },
}

impl StoreError {
    /// Whether retrying cannot help until the configuration (or the database's set-up) changes:
    /// a refused login, a missing database or permission. `serve` and `store migrate` exit 2.
    pub fn is_configuration(&self) -> bool {
        matches!(
            self,
            StoreError::Login { .. }
                | StoreError::MissingDatabase { .. }
                | StoreError::Privilege(_)
        )
    }
}

/// How long a write waits for the writer's turn (the writes of this replica ahead of it, and
/// with PostgreSQL a catch-up in progress) before it is answered [`StoreError::Busy`]. Shorter
/// than the PostgreSQL write timeout, so a write queued behind one stuck on the database is
/// answered before that one gives up and lets it in.
pub const WRITER_WAIT: Duration = Duration::from_secs(3);

/// How long an admin read waits for the read barrier ([`PolicyStore::read_barrier`]) before it
/// is answered 503 (never from a snapshot that may be behind).
pub const READ_BARRIER_DEADLINE: Duration = Duration::from_secs(2);

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

fn decode<T: serde::de::DeserializeOwned>(name: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|_| StoreError::Corrupt(name.to_owned()))
}

/// The records one write changed (or, at load, every record stored): `None` deletes.
/// The API never deletes a deployment (an undeployed one stays, `deployed: false`, so its
/// API is denied); only an import that replaces everything does.
#[derive(Default)]
pub struct Changes {
    /// Policies by resource name.
    pub policies: Vec<(String, Option<Policy>)>,
    /// Deployment records by full name.
    pub deployments: Vec<(String, Option<Deployment>)>,
    /// Custom roles by full name.
    pub roles: Vec<(String, Option<CustomRole>)>,
    /// Groups by email.
    pub groups: Vec<(String, Option<Group>)>,
    /// The least revision this write may take (0: the next one): an import keeps the etags it
    /// loads, so the store's revision moves past every one of them and no later write can
    /// make an etag a client already holds again.
    pub floor: u64,
}

impl Changes {
    fn is_empty(&self) -> bool {
        self.policies.is_empty()
            && self.deployments.is_empty()
            && self.roles.is_empty()
            && self.groups.is_empty()
    }

    /// The changed records as stored: (kind, name, JSON value or `None` for a deletion), in the
    /// order they were recorded (a later entry for the same record wins).
    pub(crate) fn rows(&self) -> Result<Vec<Row<'_>>, StoreError> {
        fn json<T: Serialize>(value: &T) -> Result<String, StoreError> {
            serde_json::to_string(value).map_err(io)
        }
        let mut rows = Vec::new();
        for (name, p) in &self.policies {
            rows.push(("policy", name.as_str(), p.as_ref().map(json).transpose()?));
        }
        for (name, d) in &self.deployments {
            rows.push((
                "deployment",
                name.as_str(),
                d.as_ref().map(json).transpose()?,
            ));
        }
        for (name, r) in &self.roles {
            rows.push(("role", name.as_str(), r.as_ref().map(json).transpose()?));
        }
        for (name, g) in &self.groups {
            rows.push(("group", name.as_str(), g.as_ref().map(json).transpose()?));
        }
        Ok(rows)
    }
}

/// One stored record as the chain sees it: (kind, name, JSON value or `None` for a deletion).
pub type Row<'a> = (&'a str, &'a str, Option<String>);

/// The hash naming a revision's whole history: `H(previous chain || canonical changes)`.
/// Revision 0 of an empty store has [`Chain::GENESIS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Chain(pub [u8; 32]);

impl Chain {
    /// The chain of the empty store at revision 0.
    pub const GENESIS: Chain = Chain([0; 32]);

    /// The chain of the revision after `self` that wrote `rows` (see [`Changes::rows`]).
    /// Canonical: the rows sorted by (kind, name) (stable, so a later write of the same record
    /// stays later), each field length-prefixed, a deletion marked apart from any value.
    pub fn next(&self, rows: &[Row<'_>]) -> Chain {
        use sha2::{Digest as _, Sha256};
        let mut sorted: Vec<_> = rows.iter().collect();
        sorted.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let mut h = Sha256::new();
        h.update(b"verifyiam-revision-v1");
        h.update(self.0);
        h.update((sorted.len() as u64).to_be_bytes());
        for (kind, name, value) in sorted {
            for field in [Some(*kind), Some(*name), value.as_deref()] {
                match field {
                    Some(f) => {
                        h.update([1]);
                        h.update((f.len() as u64).to_be_bytes());
                        h.update(f.as_bytes());
                    }
                    None => h.update([0]),
                }
            }
        }
        Chain(h.finalize().into())
    }

    /// A chain no other history shares, for a revision whose history is not known (a store
    /// written before revisions carried chains): whatever follows it names a history of its own.
    pub fn unique(epoch: u64) -> Chain {
        use sha2::{Digest as _, Sha256};
        use std::hash::{BuildHasher as _, Hasher as _};
        let mut h = Sha256::new();
        h.update(b"verifyiam-unknown-history");
        h.update(epoch.to_be_bytes());
        h.update(std::process::id().to_be_bytes());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        h.update(now.to_be_bytes());
        let mut r = std::collections::hash_map::RandomState::new().build_hasher();
        r.write_u128(now);
        h.update(r.finish().to_be_bytes());
        Chain(h.finalize().into())
    }

    /// From stored bytes; `None` unless exactly 32.
    pub fn from_slice(bytes: &[u8]) -> Option<Chain> {
        bytes.try_into().ok().map(Chain)
    }
}

/// One resource's stored policy and its evaluation form.
pub struct Entry {
    /// The policy as stored (version 1, with its etag).
    pub policy: Policy,
    /// The policy compiled for evaluation.
    pub compiled: CompiledPolicy,
}

/// A deployment record, keyed by its full resource name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    /// `false` once undeployed: the record stays as a tombstone so the API is denied.
    pub deployed: bool,
    /// The deployed revision; `None` for a deployment that came into being implicitly (a policy
    /// was set on it before anything deployed it).
    #[serde(default)]
    pub revision: Option<String>,
    /// Denied Checks go on to the backend, marked (VerifyIAM's `continueOnError`).
    #[serde(default)]
    pub continue_on_error: bool,
    /// When it was deployed (or came into being), milliseconds since the epoch.
    #[serde(default)]
    pub deploy_start_time: u64,
}

/// A group's membership: canonical `user:` / `serviceAccount:` members, sorted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// The members.
    pub members: Vec<String>,
    /// Changes with every write.
    pub etag: Etag,
}

/// An immutable view of everything stored, at one epoch.
pub struct Snapshot {
    /// Moves on every write.
    pub epoch: u64,
    /// Which full load this snapshot descends from: a new one for every full reload (a restored
    /// database), so (`generation`, `epoch`) names one history even when a restore makes a
    /// revision number come round again.
    pub generation: u64,
    /// The chain of `epoch` (`None`: not known, e.g. written by an older verifyiam; the next
    /// catch-up reloads).
    chain: Option<Chain>,
    entries: HashMap<Box<str>, Arc<Entry>>,
    /// The project policy plus the bootstrap administrators' `roles/owner`.
    project: CompiledPolicy,
    project_name: Box<str>,
    catalog: Catalog,
    roles: BTreeMap<Box<str>, Arc<CustomRole>>,
    deployments: HashMap<Box<str>, Deployment>,
    groups: BTreeMap<Box<str>, Arc<Group>>,
    /// `user:…`/`serviceAccount:…` → the `group:…` members it belongs to (for evaluation).
    groups_of: HashMap<Box<str>, Box<[Box<str>]>>,
}

impl Snapshot {
    /// The chain naming this snapshot's history, if known.
    pub fn chain(&self) -> Option<Chain> {
        self.chain
    }

    /// The stored entry for a resource name.
    pub fn entry(&self, name: &str) -> Option<&Arc<Entry>> {
        self.entries.get(name)
    }

    /// Every stored policy, by resource name (unordered).
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Arc<Entry>)> {
        self.entries.iter().map(|(k, v)| (&**k, v))
    }

    /// A resource's policy; a resource without one has an empty policy with the absent etag.
    pub fn policy_of(&self, name: &str) -> Policy {
        match self.entries.get(name) {
            Some(e) => e.policy.clone(),
            None => Policy {
                version: 1,
                etag: Some(Etag::absent()),
                ..Policy::default()
            },
        }
    }

    /// How many resources hold a policy.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no resource holds a policy.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The role catalogue: predefined roles and this snapshot's custom roles.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The custom roles, by full name.
    pub fn roles(&self) -> impl Iterator<Item = &Arc<CustomRole>> {
        self.roles.values()
    }

    /// One custom role by full name (`projects/p/roles/id`).
    pub fn role(&self, name: &str) -> Option<&Arc<CustomRole>> {
        self.roles.get(name)
    }

    /// The first resource (by name) whose policy binds `role`, if any.
    pub fn role_used_by(&self, role: &str) -> Option<&str> {
        self.entries
            .iter()
            .filter(|(_, e)| e.policy.bindings.iter().any(|b| b.role == role))
            .map(|(name, _)| &**name)
            .min()
    }

    /// The deployment record of a full deployment name.
    pub fn deployment(&self, name: &str) -> Option<&Deployment> {
        self.deployments.get(name)
    }

    /// Every deployment record (tombstones included), by full name.
    pub fn deployments(&self) -> impl Iterator<Item = (&str, &Deployment)> {
        self.deployments.iter().map(|(k, v)| (&**k, v))
    }

    /// Whether Checks may be allowed on a deployment: deployed, or (unless `strict`) never
    /// undeployed.
    pub fn is_deployed(&self, name: &str, strict: bool) -> bool {
        match self.deployments.get(name) {
            Some(d) => d.deployed,
            None => !strict,
        }
    }

    /// Whether denied Checks on a deployment go on to the backend.
    pub fn continues_on_error(&self, name: &str) -> bool {
        self.deployments
            .get(name)
            .is_some_and(|d| d.deployed && d.continue_on_error)
    }

    /// The groups, by email.
    pub fn groups(&self) -> impl Iterator<Item = (&str, &Arc<Group>)> {
        self.groups.iter().map(|(k, v)| (&**k, v))
    }

    /// One group by email (lowercase).
    pub fn group(&self, email: &str) -> Option<&Arc<Group>> {
        self.groups.get(email)
    }
}

impl PolicyLookup for Snapshot {
    fn policy(&self, resource_name: &str) -> Option<&CompiledPolicy> {
        if resource_name == &*self.project_name {
            return Some(&self.project);
        }
        self.entries.get(resource_name).map(|e| &e.compiled)
    }

    fn groups_of(&self, member: &str) -> &[Box<str>] {
        self.groups_of.get(member).map_or(&[], |g| g)
    }
}

/// The changes of one write, recorded by a [`PolicyStore::mutate`] closure.
pub struct Draft<'a> {
    /// The snapshot the write is based on (the current one, under the writer's turn).
    pub current: &'a Snapshot,
    etag: Etag,
    changes: Changes,
}

impl<'a> Draft<'a> {
    /// Runs a write's closure against `current` as the write of `epoch`: its result and the
    /// changes it recorded. Both stores write this way; only how the changes are kept differs.
    pub(crate) fn record<R, E>(
        current: &'a Snapshot,
        epoch: u64,
        change: impl FnOnce(&mut Draft<'a>) -> Result<R, E>,
    ) -> Result<(R, Changes), E> {
        let mut draft = Draft {
            current,
            etag: Etag::from_version(epoch),
            changes: Changes::default(),
        };
        let out = change(&mut draft)?;
        Ok((out, draft.changes))
    }

    /// The etag every record written by this write carries.
    pub fn etag(&self) -> Etag {
        self.etag.clone()
    }

    /// Stores a (validated, normalised) policy; returns it as stored (version 1, new etag).
    pub fn put_policy(&mut self, name: &str, mut policy: Policy) -> Policy {
        policy.version = 1;
        policy.etag = Some(self.etag());
        self.changes
            .policies
            .push((name.to_owned(), Some(policy.clone())));
        policy
    }

    /// Deletes a resource's policy.
    pub fn delete_policy(&mut self, name: &str) {
        self.changes.policies.push((name.to_owned(), None));
    }

    /// Stores a deployment record.
    pub fn put_deployment(&mut self, name: &str, deployment: Deployment) {
        self.changes
            .deployments
            .push((name.to_owned(), Some(deployment)));
    }

    /// Stores a custom role; returns it as stored (new etag).
    pub fn put_role(&mut self, mut role: CustomRole) -> CustomRole {
        role.etag = Some(self.etag());
        self.changes
            .roles
            .push((role.name.clone(), Some(role.clone())));
        role
    }

    /// Deletes a custom role.
    pub fn delete_role(&mut self, name: &str) {
        self.changes.roles.push((name.to_owned(), None));
    }

    /// Stores a group's membership; returns it as stored.
    pub fn put_group(&mut self, email: &str, members: Vec<String>) -> Group {
        let group = Group {
            members,
            etag: self.etag(),
        };
        self.changes
            .groups
            .push((email.to_owned(), Some(group.clone())));
        group
    }

    /// Deletes a group.
    pub fn delete_group(&mut self, email: &str) {
        self.changes.groups.push((email.to_owned(), None));
    }
}

/// Where the records live.
enum Backend {
    Embedded(embedded::Embedded),
    Postgres(Box<postgres::Postgres>),
}

/// A write applied once at start (e.g. `[[iam.groups]]`); with PostgreSQL, after the first
/// load, and again after a failed attempt. It returns what to do once its write is durable
/// (log what it changed).
pub type Seed = Arc<dyn Fn(&mut Draft<'_>) -> Result<SeedDone, StoreError> + Send + Sync>;

/// What a [`Seed`] does once its write is durable.
pub type SeedDone = Box<dyn FnOnce() + Send>;

/// The store: the current snapshot (lock-free for Checks) over one backend.
pub struct PolicyStore {
    backend: Backend,
    snapshot: ArcSwap<Snapshot>,
    bootstrap: Vec<Box<str>>,
    project_name: Box<str>,
    /// Whether the snapshot holds a full load (always, for the embedded store).
    loaded: AtomicBool,
    loaded_tx: watch::Sender<bool>,
    /// When the snapshot was last known to match the database: milliseconds after `origin`.
    confirmed_ms: AtomicU64,
    origin: Instant,
    max_staleness: Duration,
    seed: Mutex<Option<Seed>>,
    /// The groups a start sets from configuration (emails): theirs alone, see
    /// [`PolicyStore::set_configured_groups`].
    configured_groups: std::sync::OnceLock<Vec<String>>,
    /// The last [`Snapshot::generation`] handed out.
    generations: AtomicU64,
    /// PostgreSQL: deletions older than this are pruned (`iam.tombstone_horizon`).
    tombstone_horizon: Duration,
}

impl PolicyStore {
    /// Opens (or creates) the embedded store in `dir`; `bootstrap_admins` always hold
    /// `roles/owner` on `project`.
    pub fn open(
        dir: &Path,
        project: &str,
        bootstrap_admins: &[String],
    ) -> Result<PolicyStore, StoreError> {
        let (db, all, epoch, chain) = embedded::Embedded::open(dir)?;
        let store = Self::with(
            Backend::Embedded(db),
            project,
            bootstrap_admins,
            Duration::MAX,
        );
        let empty = store.empty_snapshot();
        store
            .snapshot
            .store(Arc::new(store.apply(&empty, epoch, Some(chain), all)));
        store.mark_loaded();
        Ok(store)
    }

    /// The PostgreSQL store at `url`. Connects nothing: [`PolicyStore::run`] connects, migrates
    /// and loads; until then Checks that need the store answer 503. Past `max_staleness` without
    /// hearing from the database, likewise.
    pub fn postgres(
        url: PgUrl,
        project: &str,
        bootstrap_admins: &[String],
        max_staleness: Duration,
    ) -> PolicyStore {
        Self::with(
            Backend::Postgres(Box::new(postgres::Postgres::new(url))),
            project,
            bootstrap_admins,
            max_staleness,
        )
    }

    /// The store `[iam]` configures: a PostgreSQL URL, or else the embedded directory.
    pub fn from_config(iam: &crate::config::IamConfig) -> Result<PolicyStore, StoreError> {
        let location = iam.store.to_string_lossy();
        if PgUrl::is_postgres(&location) {
            let url = PgUrl::parse(&location)
                .map_err(|reason| StoreError::Io(format!("iam.store: {reason}")))?;
            let mut store =
                Self::postgres(url, &iam.project, &iam.bootstrap_admins, iam.max_staleness);
            store.tombstone_horizon = iam.tombstone_horizon;
            Ok(store)
        } else {
            Self::open(&iam.store, &iam.project, &iam.bootstrap_admins)
        }
    }

    fn with(
        backend: Backend,
        project: &str,
        bootstrap_admins: &[String],
        max_staleness: Duration,
    ) -> PolicyStore {
        let bootstrap: Vec<Box<str>> = bootstrap_admins
            .iter()
            .filter_map(|m| crate::iam::member::Member::parse(m).ok())
            .map(|m| m.to_string().into_boxed_str())
            .collect();
        let project_name: Box<str> = Resource::Project {
            project: project.to_owned(),
        }
        .name()
        .into();
        let store = PolicyStore {
            backend,
            snapshot: ArcSwap::from_pointee(Snapshot {
                epoch: 0,
                generation: 0,
                chain: None,
                entries: HashMap::new(),
                project: CompiledPolicy::default(),
                project_name: project_name.clone(),
                catalog: Catalog::default(),
                roles: BTreeMap::new(),
                deployments: HashMap::new(),
                groups: BTreeMap::new(),
                groups_of: HashMap::new(),
            }),
            bootstrap,
            project_name,
            loaded: AtomicBool::new(false),
            loaded_tx: watch::Sender::new(false),
            confirmed_ms: AtomicU64::new(0),
            origin: Instant::now(),
            max_staleness,
            seed: Mutex::new(None),
            configured_groups: std::sync::OnceLock::new(),
            generations: AtomicU64::new(0),
            tombstone_horizon: Duration::from_secs(7 * 24 * 3600),
        };
        store.snapshot.store(Arc::new(store.empty_snapshot()));
        store
    }

    /// Whether this is the PostgreSQL store.
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// A description for logs: the directory, or `user@host:port/db` (never the password).
    pub fn location(&self) -> String {
        match &self.backend {
            Backend::Embedded(_) => "embedded".to_owned(),
            Backend::Postgres(pg) => pg.url.to_string(),
        }
    }

    /// The empty store at revision 0, as the start of a new generation (a full load).
    fn empty_snapshot(&self) -> Snapshot {
        self.build(Snapshot {
            epoch: 0,
            generation: self.generations.fetch_add(1, Ordering::AcqRel) + 1,
            chain: Some(Chain::GENESIS),
            entries: HashMap::new(),
            project: CompiledPolicy::default(),
            project_name: self.project_name.clone(),
            catalog: Catalog::new(std::iter::empty()),
            roles: BTreeMap::new(),
            deployments: HashMap::new(),
            groups: BTreeMap::new(),
            groups_of: HashMap::new(),
        })
    }

    /// Whether the snapshot holds a full load.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    fn mark_loaded(&self) {
        self.confirm_fresh();
        self.loaded.store(true, Ordering::Release);
        self.loaded_tx.send_replace(true);
    }

    /// Waits until the snapshot holds a full load.
    pub async fn loaded(&self) {
        let mut rx = self.loaded_tx.subscribe();
        let _ = rx.wait_for(|l| *l).await;
    }

    fn confirm_fresh(&self) {
        let ms = self.origin.elapsed().as_millis() as u64;
        self.confirmed_ms.fetch_max(ms, Ordering::AcqRel);
    }

    /// How long since the snapshot was last known to match the database (`None` before the
    /// first load; zero for the embedded store, which is the database).
    pub fn staleness(&self) -> Option<Duration> {
        if !self.is_loaded() {
            return None;
        }
        match self.backend {
            Backend::Embedded(_) => Some(Duration::ZERO),
            Backend::Postgres(_) => {
                let confirmed = Duration::from_millis(self.confirmed_ms.load(Ordering::Acquire));
                Some(self.origin.elapsed().saturating_sub(confirmed))
            }
        }
    }

    /// Whether Checks may be answered from the snapshot: loaded, and heard from the database
    /// within `iam.max_staleness`. Cheap (two atomic loads and a clock read): on the hot path.
    pub fn is_fresh(&self) -> bool {
        self.staleness().is_some_and(|s| s <= self.max_staleness)
    }

    /// The read barrier of the admin API: returns once this replica's snapshot holds every
    /// write the database had committed when it was called (any replica's), catching up if it
    /// must, or fails once `deadline` has passed. The embedded store is its own database: always
    /// current. Checks do not use it: they read the snapshot as it is.
    pub async fn read_barrier(&self, deadline: Duration) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Embedded(_) => Ok(()),
            Backend::Postgres(pg) => {
                match tokio::time::timeout(deadline, postgres::read_barrier(self, pg)).await {
                    Ok(done) => done,
                    Err(_) => {
                        postgres::forget_reader(pg);
                        Err(StoreError::Unavailable(format!(
                            "could not confirm the policy store is current within {deadline:?}"
                        )))
                    }
                }
            }
        }
    }

    /// PostgreSQL: deletes the tombstones (deleted records' NULL rows) and revision entries
    /// of revisions committed more than `horizon` ago; how many tombstones went. A replica
    /// holding a revision older than that finds its revision's entry gone and reloads fully
    /// instead of catching up (it could not see those deletions). Serving replicas run it with
    /// `iam.tombstone_horizon` about once a minute. Nothing to do for the embedded store, whose
    /// deletions remove the record.
    pub async fn prune_tombstones(&self, horizon: Duration) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Embedded(_) => Ok(0),
            Backend::Postgres(pg) => postgres::prune(pg, horizon).await,
        }
    }

    /// Loads the store once without keeping it in step (for commands that do not serve); a
    /// writing command (`migrate`) brings a PostgreSQL schema up to date first.
    pub async fn load_now(&self, migrate: bool) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Embedded(_) => Ok(()),
            Backend::Postgres(pg) => postgres::load_once(self, pg, migrate).await,
        }
    }

    /// Keeps the snapshot in step with a shared database until `stop` (returns at once for the
    /// embedded store). An error means the store can never load (a refused login, a schema
    /// newer than this binary).
    pub async fn run(self: Arc<Self>, stop: CancellationToken) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Embedded(_) => Ok(()),
            Backend::Postgres(pg) => postgres::run(self.clone(), pg, stop).await,
        }
    }

    /// Applies `seed` now (embedded) or after the first load (PostgreSQL).
    pub fn seed_at_start(&self, seed: Seed) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Embedded(_) => {
                let done = self.mutate_blocking(|draft: &mut Draft<'_>| seed(draft))?;
                done();
                Ok(())
            }
            Backend::Postgres(_) => {
                *self.seed.lock().map_err(|_| io("seed lock poisoned"))? = Some(seed);
                Ok(())
            }
        }
    }

    /// Records the groups the configuration owns (emails, canonical), once, at start: the admin
    /// API refuses to change them, so a start's seeding never undoes an API change.
    pub fn set_configured_groups(&self, emails: Vec<String>) {
        // Once per store: the configuration does not change while it runs.
        let _ = self.configured_groups.set(emails);
    }

    /// Whether the configuration owns group `email` (canonical).
    pub fn is_configured_group(&self, email: &str) -> bool {
        self.configured_groups
            .get()
            .is_some_and(|g| g.iter().any(|e| e == email))
    }

    async fn seed_pending(&self) -> Result<(), StoreError> {
        let seed = self
            .seed
            .lock()
            .map_err(|_| io("seed lock poisoned"))?
            .clone();
        if let (Some(seed), Backend::Postgres(pg)) = (seed, &self.backend) {
            let done = postgres::mutate(self, pg, move |draft: &mut Draft<'_>| seed(draft)).await?;
            done();
        }
        Ok(())
    }

    /// Fills in the derived parts of a snapshot: the project policy with the bootstrap owners
    /// and the member → groups index.
    fn build(&self, mut s: Snapshot) -> Snapshot {
        let mut project = s
            .entries
            .get(&s.project_name)
            .map(|e| e.compiled.clone())
            .unwrap_or_default();
        let owner = s
            .catalog
            .permissions("roles/owner")
            .unwrap_or(PermissionSet::EMPTY);
        for m in &self.bootstrap {
            project.grant(m, owner);
        }
        s.project = project;
        let mut groups_of: HashMap<Box<str>, Vec<Box<str>>> = HashMap::new();
        for (email, group) in &s.groups {
            for member in &group.members {
                groups_of
                    .entry(member.clone().into_boxed_str())
                    .or_default()
                    .push(format!("group:{email}").into_boxed_str());
            }
        }
        s.groups_of = groups_of
            .into_iter()
            .map(|(k, v)| (k, v.into_boxed_slice()))
            .collect();
        s
    }

    /// The configured bootstrap administrators (canonical members), who hold `roles/owner` on
    /// the project outside any stored policy.
    pub fn bootstrap_admins(&self) -> &[Box<str>] {
        &self.bootstrap
    }

    /// The current snapshot; cheap, lock-free, for the hot path.
    pub fn snapshot(&self) -> Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    /// A resource's policy; a resource without one has an empty policy with the absent etag.
    pub fn policy(&self, resource: &Resource) -> Policy {
        self.snapshot().policy_of(&resource.name())
    }

    /// Replaces a resource's policy. `policy` must already be validated and normalised.
    /// With `expected` set, the write happens only if it is the current etag.
    /// Returns the stored policy (with its new etag) once it is durable.
    pub async fn set_policy(
        self: &Arc<Self>,
        resource: &Resource,
        policy: Policy,
        expected: Option<Etag>,
    ) -> Result<Policy, StoreError> {
        let name = resource.name();
        self.mutate(move |draft: &mut Draft<'_>| {
            if let Some(expected) = expected {
                let now = draft
                    .current
                    .entry(&name)
                    .and_then(|e| e.policy.etag.clone())
                    .unwrap_or_else(Etag::absent);
                if now != expected {
                    return Err(StoreError::Aborted);
                }
            }
            Ok(draft.put_policy(&name, policy))
        })
        .await
    }

    /// Runs one write: `change` reads the current snapshot and records changes in the draft;
    /// they are committed (durable) and then swapped in as the new snapshot. An error from
    /// `change`, or a draft with no changes, writes nothing. With PostgreSQL, `change` sees the
    /// snapshot caught up to the database under the fleet-wide write lock.
    pub async fn mutate<T, E, F>(self: &Arc<Self>, change: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&mut Draft<'_>) -> Result<T, E> + Send + 'static,
    {
        match &self.backend {
            Backend::Embedded(db) => {
                // Queued here, not on the blocking lock, so the wait is bounded and holds no
                // blocking thread.
                let Ok(_turn) = tokio::time::timeout(WRITER_WAIT, db.turn.lock()).await else {
                    return Err(E::from(StoreError::Busy(WRITER_WAIT)));
                };
                let store = self.clone();
                tokio::task::spawn_blocking(move || store.mutate_blocking(change))
                    .await
                    .map_err(|e| E::from(io(e)))?
            }
            Backend::Postgres(pg) => postgres::mutate(self, pg, change).await,
        }
    }

    /// The embedded store's writer's turn, held by a test to queue writes behind it in order.
    #[cfg(test)]
    pub(crate) async fn writer_turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match &self.backend {
            Backend::Embedded(db) => Some(db.turn.lock().await),
            Backend::Postgres(_) => None,
        }
    }

    /// [`PolicyStore::mutate`] on the calling thread (embedded store only: for start-up, outside
    /// the runtime's workers).
    pub fn mutate_blocking<T, E, F>(&self, change: F) -> Result<T, E>
    where
        E: From<StoreError>,
        F: FnOnce(&mut Draft<'_>) -> Result<T, E>,
    {
        let Backend::Embedded(db) = &self.backend else {
            return Err(E::from(io("a blocking write needs the embedded store")));
        };
        let _turn = db
            .writer
            .lock()
            .map_err(|_| E::from(io("writer lock poisoned")))?;
        let current = self.snapshot.load_full();
        let epoch = current.epoch + 1;
        let (out, changes) = Draft::record(&current, epoch, change)?;
        if changes.is_empty() {
            return Ok(out);
        }
        let epoch = epoch.max(changes.floor);
        let chain = current
            .chain
            .unwrap_or_else(|| Chain::unique(current.epoch))
            .next(&changes.rows().map_err(E::from)?);
        db.commit(epoch, chain, &changes).map_err(E::from)?;
        self.snapshot
            .store(Arc::new(self.apply(&current, epoch, Some(chain), changes)));
        metrics::counter!("verifyiam_policy_writes_total").increment(1);
        Ok(out)
    }

    /// `current` with `changes` applied, at `epoch` (whose chain is `chain`).
    fn apply(
        &self,
        current: &Snapshot,
        epoch: u64,
        chain: Option<Chain>,
        changes: Changes,
    ) -> Snapshot {
        let Changes {
            policies,
            deployments,
            roles,
            groups,
            floor: _,
        } = changes;
        let roles_changed = !roles.is_empty();
        let mut custom = current.roles.clone();
        for (name, role) in roles {
            match role {
                Some(r) => custom.insert(name.into_boxed_str(), Arc::new(r)),
                None => custom.remove(name.as_str()),
            };
        }
        let catalog = if roles_changed {
            Catalog::new(custom.values().map(|r| &**r))
        } else {
            current.catalog.clone()
        };
        let mut entries = current.entries.clone();
        if roles_changed {
            // A role's permissions changed: every policy that may bind it is compiled again.
            for entry in entries.values_mut() {
                *entry = Arc::new(Entry {
                    compiled: CompiledPolicy::compile(&entry.policy, &catalog),
                    policy: entry.policy.clone(),
                });
            }
        }
        for (name, policy) in policies {
            match policy {
                Some(policy) => {
                    let compiled = CompiledPolicy::compile(&policy, &catalog);
                    entries.insert(name.into_boxed_str(), Arc::new(Entry { policy, compiled }));
                }
                None => {
                    entries.remove(name.as_str());
                }
            }
        }
        let mut all_deployments = current.deployments.clone();
        for (name, d) in deployments {
            match d {
                Some(d) => all_deployments.insert(name.into_boxed_str(), d),
                None => all_deployments.remove(name.as_str()),
            };
        }
        let mut all_groups = current.groups.clone();
        for (email, group) in groups {
            match group {
                Some(g) => all_groups.insert(email.into_boxed_str(), Arc::new(g)),
                None => all_groups.remove(email.as_str()),
            };
        }
        self.build(Snapshot {
            epoch,
            generation: current.generation,
            chain,
            entries,
            project: CompiledPolicy::default(),
            project_name: current.project_name.clone(),
            catalog,
            roles: custom,
            deployments: all_deployments,
            groups: all_groups,
            groups_of: HashMap::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row<'a>(kind: &'a str, name: &'a str, value: Option<&str>) -> Row<'a> {
        (kind, name, value.map(str::to_owned))
    }

    #[test]
    fn a_chain_depends_on_its_history_and_its_changes_not_their_order() {
        let a = row("policy", "x", Some("{}"));
        let b = row("group", "g", None);
        let one = Chain::GENESIS.next(&[a.clone(), b.clone()]);
        assert_eq!(one, Chain::GENESIS.next(&[b.clone(), a.clone()]));
        assert_ne!(one, Chain::GENESIS.next(std::slice::from_ref(&a)));
        let just_a = std::slice::from_ref(&a);
        assert_ne!(one.next(just_a), Chain::GENESIS.next(just_a));
        // A deletion is not an empty value, and fields do not run into each other.
        assert_ne!(
            Chain::GENESIS.next(&[row("policy", "x", None)]),
            Chain::GENESIS.next(&[row("policy", "x", Some(""))])
        );
        assert_ne!(
            Chain::GENESIS.next(&[row("policy", "ab", Some("c"))]),
            Chain::GENESIS.next(&[row("policy", "a", Some("bc"))])
        );
        assert_ne!(Chain::unique(3), Chain::unique(3));
    }

    #[test]
    fn the_embedded_store_keeps_each_revisions_chain_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let chain = {
            let store = PolicyStore::open(dir.path(), "p", &[]).unwrap();
            assert_eq!(store.snapshot().chain(), Some(Chain::GENESIS));
            store
                .mutate_blocking(|d: &mut Draft<'_>| {
                    d.delete_group("g@example.com");
                    Ok::<_, StoreError>(())
                })
                .unwrap();
            let s = store.snapshot();
            assert_eq!(s.epoch, 1);
            s.chain().unwrap()
        };
        assert_ne!(chain, Chain::GENESIS);
        let store = PolicyStore::open(dir.path(), "p", &[]).unwrap();
        assert_eq!(store.snapshot().chain(), Some(chain));
    }

    /// A write behind a writer that does not finish is answered, not queued for ever.
    #[tokio::test]
    async fn a_write_waits_for_the_writers_turn_only_so_long() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(PolicyStore::open(dir.path(), "p", &[]).unwrap());
        let Backend::Embedded(db) = &store.backend else {
            unreachable!("an embedded store")
        };
        let held = db.turn.lock().await;
        let write = store.mutate(|d: &mut Draft<'_>| {
            d.delete_group("g@example.com");
            Ok::<_, StoreError>(())
        });
        let answered = tokio::time::timeout(Duration::from_secs(60), write).await;
        assert!(
            matches!(answered, Ok(Err(StoreError::Busy(_)))),
            "{answered:?}"
        );
        drop(held);
        // Nothing was written, and the next write goes through.
        assert_eq!(store.snapshot().epoch, 0);
        store
            .mutate(|d: &mut Draft<'_>| {
                d.delete_group("g@example.com");
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        assert_eq!(store.snapshot().epoch, 1);
    }
}
