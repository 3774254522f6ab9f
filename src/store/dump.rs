//! The export format and its import: everything a store holds, at one revision, as JSON Lines.
//!
//! The first line is a [`Header`] (format name, format version, the revision exported, the
//! project and how many records follow); then one [`Record`] per line, policies, deployments,
//! custom roles and groups in that order, each kind sorted by name, so two exports of the same
//! state are the same bytes. Etags are kept as stored: a client's read-modify-write goes on
//! working across a migration.
//!
//! [`parse`] reads a whole file before anything is written and refuses it, naming the line,
//! if any line does not parse, a record is not valid, a name comes twice, or fewer or more
//! records follow than the header says (a truncated file). [`PolicyStore::import`] then applies
//! it as one write.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;

use serde::{Deserialize, Serialize};

use super::{Deployment, Draft, Group, PolicyStore, Snapshot, StoreError};
use crate::iam::custom::{Catalog, CustomRole};
use crate::iam::eval::Resource;
use crate::iam::policy::{Etag, Policy, normalize};

/// The `format` of the header line.
pub const FORMAT: &str = "verifyiam-export";
/// The format version this verifyiam writes and reads.
pub const VERSION: u32 = 1;

/// The first line of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// Always [`FORMAT`].
    pub format: String,
    /// The format version ([`VERSION`]).
    pub version: u32,
    /// The store's revision the records were read at.
    pub revision: u64,
    /// The project of the store exported.
    pub project: String,
    /// How many record lines follow.
    pub records: usize,
}

/// One stored record, as one line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Record {
    /// A resource's policy, with its etag.
    Policy {
        /// The resource name.
        name: String,
        /// The policy as stored.
        policy: Policy,
    },
    /// A deployment record (undeployed ones too).
    Deployment {
        /// The full deployment name.
        name: String,
        /// Its state.
        deployment: Deployment,
    },
    /// A custom role, with its etag.
    Role {
        /// `projects/{project}/roles/{id}`.
        name: String,
        /// The role as stored.
        role: CustomRole,
    },
    /// A group's membership, with its etag.
    Group {
        /// The group's email.
        name: String,
        /// The membership as stored.
        group: Group,
    },
}

impl Record {
    fn key(&self) -> (&'static str, &str) {
        match self {
            Record::Policy { name, .. } => ("policy", name),
            Record::Deployment { name, .. } => ("deployment", name),
            Record::Role { name, .. } => ("role", name),
            Record::Group { name, .. } => ("group", name),
        }
    }

    /// The etag version the record carries, if its etag is one verifyiam made.
    fn etag_version(&self) -> Option<u64> {
        match self {
            Record::Policy { policy, .. } => policy.etag.as_ref().and_then(Etag::version),
            Record::Deployment { .. } => None,
            Record::Role { role, .. } => role.etag.as_ref().and_then(Etag::version),
            Record::Group { group, .. } => group.etag.version(),
        }
    }
}

/// A parsed export.
#[derive(Debug, Clone, PartialEq)]
pub struct Dump {
    /// Its header.
    pub header: Header,
    /// Its records, in file order.
    pub records: Vec<Record>,
}

/// Why an export file was refused.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// A line that is not what the format says.
    #[error("line {line}: {reason}")]
    Malformed {
        /// 1-based.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The file ends before (or goes on after) the records its header counts.
    #[error(
        "the file is truncated: the header announces {expected} records, {found} follow \
         (line {line} is the last)"
    )]
    Truncated {
        /// Records announced.
        expected: usize,
        /// Records found.
        found: usize,
        /// The last line read.
        line: usize,
    },
}

/// Every record of `snapshot`, in export order.
pub fn records(snapshot: &Snapshot) -> Vec<Record> {
    let mut policies: Vec<_> = snapshot
        .entries()
        .map(|(name, e)| Record::Policy {
            name: name.to_owned(),
            policy: e.policy.clone(),
        })
        .collect();
    let mut deployments: Vec<_> = snapshot
        .deployments()
        .map(|(name, d)| Record::Deployment {
            name: name.to_owned(),
            deployment: d.clone(),
        })
        .collect();
    policies.sort_by(|a, b| a.key().cmp(&b.key()));
    deployments.sort_by(|a, b| a.key().cmp(&b.key()));
    // Roles and groups are kept in name order already.
    let roles = snapshot.roles().map(|r| Record::Role {
        name: r.name.clone(),
        role: (**r).clone(),
    });
    let groups = snapshot.groups().map(|(name, g)| Record::Group {
        name: name.to_owned(),
        group: (**g).clone(),
    });
    policies
        .into_iter()
        .chain(deployments)
        .chain(roles)
        .chain(groups)
        .collect()
}

/// Writes `snapshot` as an export of `project`: the header, then every record.
pub fn write(snapshot: &Snapshot, project: &str, out: &mut dyn Write) -> std::io::Result<usize> {
    let records = records(snapshot);
    let header = Header {
        format: FORMAT.to_owned(),
        version: VERSION,
        revision: snapshot.epoch,
        project: project.to_owned(),
        records: records.len(),
    };
    serde_json::to_writer(&mut *out, &header)?;
    out.write_all(b"\n")?;
    for r in &records {
        serde_json::to_writer(&mut *out, r)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(records.len())
}

/// Reads a whole export; refuses it (naming the line) unless every line is a complete, valid
/// record and the count matches the header.
pub fn parse(text: &str) -> Result<Dump, DumpError> {
    let malformed = |line: usize, reason: String| DumpError::Malformed { line, reason };
    let mut lines = text.split_inclusive('\n').enumerate();
    let Some((_, first)) = lines.next() else {
        return Err(malformed(1, "the file is empty: no header line".into()));
    };
    let header: Header = serde_json::from_str(first.trim_end_matches('\n'))
        .map_err(|e| malformed(1, format!("not an export header: {e}")))?;
    if header.format != FORMAT {
        return Err(malformed(
            1,
            format!("format {:?}, not {FORMAT:?}", header.format),
        ));
    }
    if header.version != VERSION {
        return Err(malformed(
            1,
            format!(
                "format version {} is not one this verifyiam reads ({VERSION})",
                header.version
            ),
        ));
    }
    if !first.ends_with('\n') {
        return Err(DumpError::Truncated {
            expected: header.records,
            found: 0,
            line: 1,
        });
    }
    let mut records = Vec::new();
    let mut seen = HashSet::new();
    let mut last = 1;
    for (i, raw) in lines {
        let line = i + 1;
        last = line;
        if !raw.ends_with('\n') {
            // The last line of an export ends with a newline: one without was cut short.
            return Err(DumpError::Truncated {
                expected: header.records,
                found: records.len(),
                line,
            });
        }
        let record: Record = serde_json::from_str(raw.trim_end_matches('\n'))
            .map_err(|e| malformed(line, format!("not a record: {e}")))?;
        check(&record).map_err(|reason| malformed(line, reason))?;
        let (kind, name) = record.key();
        if !seen.insert((kind, name.to_owned())) {
            return Err(malformed(line, format!("{kind} {name} appears twice")));
        }
        records.push(record);
    }
    if records.len() != header.records {
        return Err(DumpError::Truncated {
            expected: header.records,
            found: records.len(),
            line: last,
        });
    }
    // Policies may bind the file's custom roles: validated once every role is known.
    let catalog = Catalog::new(records.iter().filter_map(|r| match r {
        Record::Role { role, .. } => Some(role),
        _ => None,
    }));
    for (i, r) in records.iter().enumerate() {
        if let Record::Policy { name, policy } = r {
            normalize(policy.clone(), &catalog)
                .map_err(|e| malformed(i + 2, format!("policy of {name}: {e}")))?;
        }
    }
    Ok(Dump { header, records })
}

/// What a record must be on its own.
fn check(record: &Record) -> Result<(), String> {
    match record {
        Record::Policy { name, policy } => {
            Resource::parse(name).ok_or_else(|| format!("{name:?} is not a resource name"))?;
            if policy.etag.is_none() {
                return Err(format!("the policy of {name} has no etag"));
            }
        }
        Record::Deployment { name, .. } => match Resource::parse(name) {
            Some(Resource::Deployment { .. }) => {}
            _ => return Err(format!("{name:?} is not a deployment name")),
        },
        Record::Role { name, role } => {
            if *name != role.name || !name.starts_with("projects/") || !name.contains("/roles/") {
                return Err(format!("{name:?} is not the role's name"));
            }
        }
        Record::Group { name, group } => {
            if !name.contains('@') || name.to_lowercase() != *name {
                return Err(format!("{name:?} is not a group email (lowercase)"));
            }
            for m in &group.members {
                if !(m.starts_with("user:") || m.starts_with("serviceAccount:")) {
                    return Err(format!(
                        "group {name}: member {m:?} is not a user or a service account"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// How an import treats what the store holds already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportMode {
    /// Into an empty store: refused if the store holds a record the file does not, or holds
    /// it otherwise (the same file imported again changes nothing).
    Empty,
    /// Everything replaced: the store holds the file's records and nothing else.
    Replace,
}

/// One change an import makes (or, with `--dry-run`, would make).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A record the store lacks.
    Add(&'static str, String),
    /// A record the store holds otherwise.
    Change(&'static str, String),
    /// A record the file lacks (only when replacing).
    Delete(&'static str, String),
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Add(k, n) => write!(f, "add {k} {n}"),
            Step::Change(k, n) => write!(f, "change {k} {n}"),
            Step::Delete(k, n) => write!(f, "delete {k} {n}"),
        }
    }
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// The changes, in export order (deletions last).
    pub steps: Vec<Step>,
    /// The store's revision after it (before it, for a dry run or no change).
    pub revision: u64,
}

/// The records of `current` in the form of an export, by (kind, name).
fn by_key(current: &Snapshot) -> BTreeMap<(&'static str, String), Record> {
    records(current)
        .into_iter()
        .map(|r| {
            let (kind, name) = r.key();
            ((kind, name.to_owned()), r)
        })
        .collect()
}

/// The steps that make `current` hold `dump` under `mode`, or why it may not.
fn plan(current: &Snapshot, dump: &Dump, mode: ImportMode) -> Result<Vec<Step>, StoreError> {
    let mut held = by_key(current);
    let mut steps = Vec::new();
    for r in &dump.records {
        let (kind, name) = r.key();
        match held.remove(&(kind, name.to_owned())) {
            None => steps.push(Step::Add(kind, name.to_owned())),
            Some(h) if h == *r => {}
            Some(_) => steps.push(Step::Change(kind, name.to_owned())),
        }
    }
    if mode == ImportMode::Replace {
        steps.extend(held.into_keys().map(|(k, n)| Step::Delete(k, n)));
    } else if let Some(step) = steps.iter().find(|s| matches!(s, Step::Change(..))) {
        return Err(StoreError::NotEmpty(format!(
            "it holds records the file does not match (first: {step}); import with --replace \
             to replace everything"
        )));
    } else if let Some(((kind, name), _)) = held.into_iter().next() {
        return Err(StoreError::NotEmpty(format!(
            "it holds records the file does not (first: {kind} {name}); import with --replace \
             to replace everything"
        )));
    }
    Ok(steps)
}

/// Records `steps` of `dump` in `draft`, keeping every record's etag.
fn apply(draft: &mut Draft<'_>, dump: &Dump, steps: &[Step]) {
    let wanted: HashSet<(&str, &str)> = steps
        .iter()
        .filter_map(|s| match s {
            Step::Add(k, n) | Step::Change(k, n) => Some((*k, n.as_str())),
            Step::Delete(..) => None,
        })
        .collect();
    for r in &dump.records {
        if !wanted.contains(&r.key()) {
            continue;
        }
        let c = &mut draft.changes;
        match r.clone() {
            Record::Policy { name, policy } => c.policies.push((name, Some(policy))),
            Record::Deployment { name, deployment } => c.deployments.push((name, Some(deployment))),
            Record::Role { name, role } => c.roles.push((name, Some(role))),
            Record::Group { name, group } => c.groups.push((name, Some(group))),
        }
    }
    for s in steps {
        let c = &mut draft.changes;
        if let Step::Delete(kind, name) = s {
            let name = name.clone();
            match *kind {
                "policy" => c.policies.push((name, None)),
                "deployment" => c.deployments.push((name, None)),
                "role" => c.roles.push((name, None)),
                _ => c.groups.push((name, None)),
            }
        }
    }
    if !steps.is_empty() {
        // Past every etag the file carries, so no later write hands one of them out again.
        let top = dump.records.iter().filter_map(Record::etag_version).max();
        draft.changes.floor = top.map_or(0, |t| t + 1);
    }
}

impl PolicyStore {
    /// Loads `dump` as one write (nothing, for `dry_run`: the steps are what it would do).
    /// Importing the same dump again finds nothing to do and writes nothing.
    pub async fn import(
        self: &std::sync::Arc<Self>,
        dump: Dump,
        mode: ImportMode,
        dry_run: bool,
    ) -> Result<Imported, StoreError> {
        self.mutate(move |draft: &mut Draft<'_>| {
            let steps = plan(draft.current, &dump, mode)?;
            if !dry_run {
                apply(draft, &dump, &steps);
            }
            Ok::<_, StoreError>(steps)
        })
        .await
        .map(|steps| Imported {
            steps,
            revision: self.snapshot().epoch,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str =
        r#"{"format":"verifyiam-export","version":1,"revision":3,"project":"p","records":1}"#;

    fn text(lines: &[&str]) -> String {
        lines.iter().map(|l| format!("{l}\n")).collect()
    }

    #[test]
    fn a_record_count_short_of_the_header_is_a_truncated_file() {
        let e = parse(&text(&[&HEADER.replace("\"records\":1", "\"records\":2"),
            r#"{"kind":"deployment","name":"organizations/p/environments/e/deployments/a","deployment":{"deployed":true}}"#]))
            .unwrap_err();
        assert!(
            matches!(
                e,
                DumpError::Truncated {
                    expected: 2,
                    found: 1,
                    line: 2
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn a_line_cut_short_is_refused_with_its_number() {
        let mut t = text(&[HEADER]);
        t.push_str(r#"{"kind":"deployment","name":"organizations/p/environments/e/deployments/a","deployment":{"deployed":true}}"#);
        let e = parse(&t).unwrap_err();
        assert!(matches!(e, DumpError::Truncated { line: 2, .. }), "{e}");
        let e = parse(&text(&[
            HEADER,
            r#"{"kind":"policy","name":"projects/p","polic"#,
        ]))
        .unwrap_err();
        assert!(e.to_string().starts_with("line 2: not a record"), "{e}");
    }

    #[test]
    fn a_wrong_format_or_version_is_refused_on_line_one() {
        for bad in [
            HEADER.replace("verifyiam-export", "other"),
            HEADER.replace("\"version\":1", "\"version\":2"),
            "{}".to_owned(),
        ] {
            let e = parse(&text(&[&bad])).unwrap_err();
            assert!(e.to_string().starts_with("line 1:"), "{e}");
        }
        assert!(parse("").unwrap_err().to_string().starts_with("line 1:"));
    }

    #[test]
    fn invalid_records_are_refused_with_their_line() {
        let cases = [
            r#"{"kind":"policy","name":"not/a/resource","policy":{"etag":"AAAAAAAAAAE="}}"#,
            r#"{"kind":"policy","name":"projects/p","policy":{"bindings":[{"role":"roles/nope","members":["user:a@example.com"]}],"etag":"AAAAAAAAAAE="}}"#,
            r#"{"kind":"policy","name":"projects/p","policy":{}}"#,
            r#"{"kind":"deployment","name":"projects/p","deployment":{"deployed":true}}"#,
            r#"{"kind":"group","name":"Team@Example.com","group":{"members":[],"etag":"AAAAAAAAAAE="}}"#,
            r#"{"kind":"group","name":"t@example.com","group":{"members":["domain:x.com"],"etag":"AAAAAAAAAAE="}}"#,
            r#"{"kind":"widget","name":"x"}"#,
        ];
        for case in cases {
            let e = parse(&text(&[HEADER, case])).unwrap_err();
            assert!(e.to_string().starts_with("line 2:"), "{case}: {e}");
        }
        let dup = r#"{"kind":"deployment","name":"organizations/p/environments/e/deployments/a","deployment":{"deployed":true}}"#;
        let e = parse(&text(&[
            &HEADER.replace("\"records\":1", "\"records\":2"),
            dup,
            dup,
        ]))
        .unwrap_err();
        assert!(
            e.to_string().starts_with("line 3:") && e.to_string().contains("twice"),
            "{e}"
        );
    }
}
