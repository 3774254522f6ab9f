//! The embedded durable policy store: the project's, each environment's and each deployment's
//! policy with its etag, in a redb file under `iam.store`. A write is committed (fsync'd) before
//! it is acknowledged, and every write moves an epoch and swaps in a new in-memory [`Snapshot`],
//! so the next Check on this instance sees it. The hot path only loads the snapshot: no lock, no I/O.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, Guard};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::iam::eval::{CompiledPolicy, PolicyLookup, Resource};
use crate::iam::policy::{Etag, Policy};
use crate::iam::roles::{PermissionSet, PredefinedRoles, RoleCatalog};

const POLICIES: TableDefinition<&str, &[u8]> = TableDefinition::new("policies");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const EPOCH: &str = "epoch";
/// The store's file inside the `iam.store` directory.
pub const FILE_NAME: &str = "verifyiam.redb";

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
    #[error("stored policy for {0} is corrupt")]
    Corrupt(String),
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

/// One resource's stored policy and its evaluation form.
pub struct Entry {
    /// The policy as stored (version 1, with its etag).
    pub policy: Policy,
    /// The policy compiled for evaluation.
    pub compiled: CompiledPolicy,
}

/// An immutable view of every policy at one epoch.
pub struct Snapshot {
    /// Moves on every write.
    pub epoch: u64,
    entries: HashMap<Box<str>, Arc<Entry>>,
    /// The project policy plus the bootstrap administrators' `roles/owner`.
    project: CompiledPolicy,
    project_name: Box<str>,
}

impl Snapshot {
    /// The stored entry for a resource name.
    pub fn entry(&self, name: &str) -> Option<&Arc<Entry>> {
        self.entries.get(name)
    }

    /// How many resources hold a policy.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no resource holds a policy.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl PolicyLookup for Snapshot {
    fn policy(&self, resource_name: &str) -> Option<&CompiledPolicy> {
        if resource_name == &*self.project_name {
            return Some(&self.project);
        }
        self.entries.get(resource_name).map(|e| &e.compiled)
    }
}

/// The policy store.
pub struct PolicyStore {
    db: Arc<Database>,
    snapshot: ArcSwap<Snapshot>,
    /// Writers take turns; held only inside blocking write sections, never across an await.
    writer: Mutex<()>,
    roles: Arc<dyn RoleCatalog + Send + Sync>,
    bootstrap: Vec<Box<str>>,
}

impl PolicyStore {
    /// Opens (or creates) the store in `dir`; `bootstrap_admins` always hold `roles/owner` on
    /// `project`.
    pub fn open(
        dir: &Path,
        project: &str,
        bootstrap_admins: &[String],
    ) -> Result<PolicyStore, StoreError> {
        let path = dir.join(FILE_NAME);
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
        // Make sure both tables exist so readers never meet a missing table.
        let txn = db.begin_write().map_err(io)?;
        {
            txn.open_table(POLICIES).map_err(io)?;
            txn.open_table(META).map_err(io)?;
        }
        txn.commit().map_err(io)?;

        let roles: Arc<dyn RoleCatalog + Send + Sync> = Arc::new(PredefinedRoles);
        let bootstrap: Vec<Box<str>> = bootstrap_admins
            .iter()
            .filter_map(|m| crate::iam::member::Member::parse(m).ok())
            .map(|m| m.to_string().into_boxed_str())
            .collect();
        let read = db.begin_read().map_err(io)?;
        let epoch = read
            .open_table(META)
            .map_err(io)?
            .get(EPOCH)
            .map_err(io)?
            .map(|v| v.value())
            .unwrap_or(0);
        let mut entries = HashMap::new();
        for row in read.open_table(POLICIES).map_err(io)?.iter().map_err(io)? {
            let (k, v) = row.map_err(io)?;
            let name = k.value().to_owned();
            let policy: Policy =
                serde_json::from_slice(v.value()).map_err(|_| StoreError::Corrupt(name.clone()))?;
            let compiled = CompiledPolicy::compile(&policy, roles.as_ref());
            entries.insert(name.into_boxed_str(), Arc::new(Entry { policy, compiled }));
        }
        let store = PolicyStore {
            db: Arc::new(db),
            snapshot: ArcSwap::from_pointee(Snapshot {
                epoch: 0,
                entries: HashMap::new(),
                project: CompiledPolicy::default(),
                project_name: "".into(),
            }),
            writer: Mutex::new(()),
            roles,
            bootstrap,
        };
        let project_name = Resource::Project {
            project: project.to_owned(),
        }
        .name();
        store
            .snapshot
            .store(Arc::new(store.build(epoch, entries, project_name.into())));
        Ok(store)
    }

    fn build(
        &self,
        epoch: u64,
        entries: HashMap<Box<str>, Arc<Entry>>,
        project_name: Box<str>,
    ) -> Snapshot {
        let mut project = entries
            .get(&project_name)
            .map(|e| e.compiled.clone())
            .unwrap_or_default();
        let owner = self
            .roles
            .permissions("roles/owner")
            .unwrap_or(PermissionSet::EMPTY);
        for m in &self.bootstrap {
            project.grant(m, owner);
        }
        Snapshot {
            epoch,
            entries,
            project,
            project_name,
        }
    }

    /// The current snapshot; cheap, lock-free, for the hot path.
    pub fn snapshot(&self) -> Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    /// The role catalogue policies are validated and compiled against.
    pub fn roles(&self) -> &(dyn RoleCatalog + Send + Sync) {
        self.roles.as_ref()
    }

    /// A resource's policy; a resource without one has an empty policy with the absent etag.
    pub fn policy(&self, resource: &Resource) -> Policy {
        match self.snapshot().entry(&resource.name()) {
            Some(e) => e.policy.clone(),
            None => Policy {
                version: 1,
                etag: Some(Etag::absent()),
                ..Policy::default()
            },
        }
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
        let store = self.clone();
        let name = resource.name();
        tokio::task::spawn_blocking(move || store.write_blocking(name, policy, expected))
            .await
            .map_err(io)?
    }

    fn write_blocking(
        &self,
        name: String,
        mut policy: Policy,
        expected: Option<Etag>,
    ) -> Result<Policy, StoreError> {
        let _turn = self.writer.lock().map_err(|_| io("writer lock poisoned"))?;
        let current = self.snapshot.load_full();
        if let Some(expected) = expected {
            let now = current
                .entry(&name)
                .and_then(|e| e.policy.etag.clone())
                .unwrap_or_else(Etag::absent);
            if now != expected {
                return Err(StoreError::Aborted);
            }
        }
        let epoch = current.epoch + 1;
        policy.version = 1;
        policy.etag = Some(Etag::from_version(epoch));
        let bytes = serde_json::to_vec(&policy).map_err(io)?;
        let txn = self.db.begin_write().map_err(io)?;
        {
            txn.open_table(POLICIES)
                .map_err(io)?
                .insert(name.as_str(), bytes.as_slice())
                .map_err(io)?;
            txn.open_table(META)
                .map_err(io)?
                .insert(EPOCH, epoch)
                .map_err(io)?;
        }
        // Durability::Immediate (redb's default): fsync'd before commit returns.
        txn.commit().map_err(io)?;
        let compiled = CompiledPolicy::compile(&policy, self.roles.as_ref());
        let mut entries = current.entries.clone();
        entries.insert(
            name.into_boxed_str(),
            Arc::new(Entry {
                policy: policy.clone(),
                compiled,
            }),
        );
        self.snapshot.store(Arc::new(self.build(
            epoch,
            entries,
            current.project_name.clone(),
        )));
        metrics::counter!("verifyiam_policy_writes_total").increment(1);
        Ok(policy)
    }
}
