//! The embedded durable store: the project's, each environment's and each deployment's policy
//! with its etag, the deployments, the custom roles and the group memberships, in a redb file
//! under `iam.store`. A write is committed (fsync'd) before it is acknowledged, and every write
//! moves an epoch and swaps in a new in-memory [`Snapshot`], so the next Check on this instance
//! sees it. The hot path only loads the snapshot: no lock, no I/O.
//!
//! Every change goes through [`PolicyStore::mutate`]: the caller's closure reads the current
//! snapshot and records its changes in a [`Draft`] under the writer's turn, so check-and-set
//! rules (etags, "role still in use", "deployment exists") hold against concurrent writers.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, Guard};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::iam::custom::{Catalog, CustomRole};
use crate::iam::eval::{CompiledPolicy, PolicyLookup, Resource};
use crate::iam::policy::{Etag, Policy};
use crate::iam::roles::{PermissionSet, RoleCatalog};

const POLICIES: TableDefinition<&str, &[u8]> = TableDefinition::new("policies");
const DEPLOYMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("deployments");
const ROLES: TableDefinition<&str, &[u8]> = TableDefinition::new("roles");
const GROUPS: TableDefinition<&str, &[u8]> = TableDefinition::new("groups");
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
    #[error("stored record for {0} is corrupt")]
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
    policies: Vec<(String, Option<Policy>)>,
    deployments: Vec<(String, Deployment)>,
    roles: Vec<(String, Option<CustomRole>)>,
    groups: Vec<(String, Option<Group>)>,
}

impl Draft<'_> {
    /// The etag every record written by this write carries.
    pub fn etag(&self) -> Etag {
        self.etag.clone()
    }

    /// Stores a (validated, normalised) policy; returns it as stored (version 1, new etag).
    pub fn put_policy(&mut self, name: &str, mut policy: Policy) -> Policy {
        policy.version = 1;
        policy.etag = Some(self.etag());
        self.policies.push((name.to_owned(), Some(policy.clone())));
        policy
    }

    /// Deletes a resource's policy.
    pub fn delete_policy(&mut self, name: &str) {
        self.policies.push((name.to_owned(), None));
    }

    /// Stores a deployment record.
    pub fn put_deployment(&mut self, name: &str, deployment: Deployment) {
        self.deployments.push((name.to_owned(), deployment));
    }

    /// Stores a custom role; returns it as stored (new etag).
    pub fn put_role(&mut self, mut role: CustomRole) -> CustomRole {
        role.etag = Some(self.etag());
        self.roles.push((role.name.clone(), Some(role.clone())));
        role
    }

    /// Deletes a custom role.
    pub fn delete_role(&mut self, name: &str) {
        self.roles.push((name.to_owned(), None));
    }

    /// Stores a group's membership; returns it as stored.
    pub fn put_group(&mut self, email: &str, members: Vec<String>) -> Group {
        let group = Group {
            members,
            etag: self.etag(),
        };
        self.groups.push((email.to_owned(), Some(group.clone())));
        group
    }

    /// Deletes a group.
    pub fn delete_group(&mut self, email: &str) {
        self.groups.push((email.to_owned(), None));
    }

    fn is_empty(&self) -> bool {
        self.policies.is_empty()
            && self.deployments.is_empty()
            && self.roles.is_empty()
            && self.groups.is_empty()
    }
}

/// The store.
pub struct PolicyStore {
    db: Arc<Database>,
    snapshot: ArcSwap<Snapshot>,
    /// Writers take turns; held only inside blocking write sections, never across an await.
    writer: Mutex<()>,
    bootstrap: Vec<Box<str>>,
}

fn decode<T: serde::de::DeserializeOwned>(name: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|_| StoreError::Corrupt(name.to_owned()))
}

fn read_table<T: serde::de::DeserializeOwned>(
    read: &redb::ReadTransaction,
    table: TableDefinition<&str, &[u8]>,
) -> Result<Vec<(String, T)>, StoreError> {
    let mut out = Vec::new();
    for row in read.open_table(table).map_err(io)?.iter().map_err(io)? {
        let (k, v) = row.map_err(io)?;
        let name = k.value().to_owned();
        let value = decode(&name, v.value())?;
        out.push((name, value));
    }
    Ok(out)
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
        // Make sure every table exists so readers never meet a missing table.
        let txn = db.begin_write().map_err(io)?;
        {
            for table in [POLICIES, DEPLOYMENTS, ROLES, GROUPS] {
                txn.open_table(table).map_err(io)?;
            }
            txn.open_table(META).map_err(io)?;
        }
        txn.commit().map_err(io)?;

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
        let roles: BTreeMap<Box<str>, Arc<CustomRole>> = read_table::<CustomRole>(&read, ROLES)?
            .into_iter()
            .map(|(k, v)| (k.into_boxed_str(), Arc::new(v)))
            .collect();
        let catalog = Catalog::new(roles.values().map(|r| &**r));
        let mut entries = HashMap::new();
        for (name, policy) in read_table::<Policy>(&read, POLICIES)? {
            let compiled = CompiledPolicy::compile(&policy, &catalog);
            entries.insert(name.into_boxed_str(), Arc::new(Entry { policy, compiled }));
        }
        let deployments = read_table::<Deployment>(&read, DEPLOYMENTS)?
            .into_iter()
            .map(|(k, v)| (k.into_boxed_str(), v))
            .collect();
        let groups = read_table::<Group>(&read, GROUPS)?
            .into_iter()
            .map(|(k, v)| (k.into_boxed_str(), Arc::new(v)))
            .collect();
        drop(read);
        let project_name: Box<str> = Resource::Project {
            project: project.to_owned(),
        }
        .name()
        .into();
        let store = PolicyStore {
            db: Arc::new(db),
            snapshot: ArcSwap::from_pointee(Snapshot {
                epoch: 0,
                entries: HashMap::new(),
                project: CompiledPolicy::default(),
                project_name: project_name.clone(),
                catalog: Catalog::default(),
                roles: BTreeMap::new(),
                deployments: HashMap::new(),
                groups: BTreeMap::new(),
                groups_of: HashMap::new(),
            }),
            writer: Mutex::new(()),
            bootstrap,
        };
        store.snapshot.store(Arc::new(store.build(Snapshot {
            epoch,
            entries,
            project: CompiledPolicy::default(),
            project_name,
            catalog,
            roles,
            deployments,
            groups,
            groups_of: HashMap::new(),
        })));
        Ok(store)
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
    /// `change`, or a draft with no changes, writes nothing.
    pub async fn mutate<T, E, F>(self: &Arc<Self>, change: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&mut Draft<'_>) -> Result<T, E> + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.mutate_blocking(change))
            .await
            .map_err(|e| E::from(io(e)))?
    }

    /// [`PolicyStore::mutate`] on the calling thread (for start-up, outside the runtime's workers).
    pub fn mutate_blocking<T, E, F>(&self, change: F) -> Result<T, E>
    where
        E: From<StoreError>,
        F: FnOnce(&mut Draft<'_>) -> Result<T, E>,
    {
        let _turn = self
            .writer
            .lock()
            .map_err(|_| E::from(io("writer lock poisoned")))?;
        let current = self.snapshot.load_full();
        let epoch = current.epoch + 1;
        let mut draft = Draft {
            current: &current,
            etag: Etag::from_version(epoch),
            policies: Vec::new(),
            deployments: Vec::new(),
            roles: Vec::new(),
            groups: Vec::new(),
        };
        let out = change(&mut draft)?;
        if draft.is_empty() {
            return Ok(out);
        }
        let Draft {
            policies,
            deployments,
            roles,
            groups,
            ..
        } = draft;
        self.commit(epoch, &policies, &deployments, &roles, &groups)
            .map_err(E::from)?;
        self.snapshot.store(Arc::new(self.apply(
            &current,
            epoch,
            policies,
            deployments,
            roles,
            groups,
        )));
        metrics::counter!("verifyiam_policy_writes_total").increment(1);
        Ok(out)
    }

    fn commit(
        &self,
        epoch: u64,
        policies: &[(String, Option<Policy>)],
        deployments: &[(String, Deployment)],
        roles: &[(String, Option<CustomRole>)],
        groups: &[(String, Option<Group>)],
    ) -> Result<(), StoreError> {
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
        write(&txn, POLICIES, policies)?;
        let deployments: Vec<(String, Option<&Deployment>)> = deployments
            .iter()
            .map(|(k, v)| (k.clone(), Some(v)))
            .collect();
        write(&txn, DEPLOYMENTS, &deployments)?;
        write(&txn, ROLES, roles)?;
        write(&txn, GROUPS, groups)?;
        txn.open_table(META)
            .map_err(io)?
            .insert(EPOCH, epoch)
            .map_err(io)?;
        // Durability::Immediate (redb's default): fsync'd before commit returns.
        txn.commit().map_err(io)
    }

    fn apply(
        &self,
        current: &Snapshot,
        epoch: u64,
        policies: Vec<(String, Option<Policy>)>,
        deployments: Vec<(String, Deployment)>,
        roles: Vec<(String, Option<CustomRole>)>,
        groups: Vec<(String, Option<Group>)>,
    ) -> Snapshot {
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
            all_deployments.insert(name.into_boxed_str(), d);
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
