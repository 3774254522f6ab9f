//! Groups: the membership verifyiam keeps for `group:` members (list, describe, add and remove a
//! member), read and written under the project's policy permissions; and the seeding of
//! `[[iam.groups]]` from configuration at start. A group the configuration names is the
//! configuration's alone: the API refuses to change it, and a start that changes it is audited.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::audit::{AuditEvent, Change, etag_text};
use super::operation::{Operation, invalid};
use super::{AdminState, ApiError};
use crate::authn::Principal;
use crate::config::GroupConfig;
use crate::iam::member::Member;
use crate::iam::policy::Etag;
use crate::iam::roles::PermissionSet;
use crate::store::{Draft, Group, PolicyStore, SeedDone, StoreError};

/// A group as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupView {
    /// `groups/{email}`.
    pub name: String,
    /// The group's email.
    pub email: String,
    /// `user:` and `serviceAccount:` members.
    pub members: Vec<String>,
    /// Changes with every write.
    pub etag: Etag,
}

impl GroupView {
    fn new(email: &str, group: &Group) -> GroupView {
        GroupView {
            name: format!("groups/{email}"),
            email: email.to_owned(),
            members: group.members.clone(),
            etag: group.etag.clone(),
        }
    }
}

/// Who a start's writes are audited as.
pub const CONFIG_CALLER: &str = "config:[[iam.groups]]";

/// The emails of the groups `[[iam.groups]]` names, canonical (lowercase, no `group:`).
pub fn configured_groups(groups: &[GroupConfig]) -> Vec<String> {
    // Config validation already checked the emails.
    groups
        .iter()
        .filter_map(|g| group_email(&g.email).ok())
        .collect()
}

/// Seeds `[[iam.groups]]` from configuration: each listed group's membership becomes exactly the
/// configured members (other groups are left alone). Runs once at start; every group it changes
/// is logged as an [`AuditEvent`] by [`CONFIG_CALLER`]. The API refuses to change these groups
/// ([`AdminState::change_group`], from [`PolicyStore::is_configured_group`]), so a start never
/// undoes what the API did.
pub fn seed_groups(store: &PolicyStore, groups: &[GroupConfig]) -> Result<(), StoreError> {
    store.set_configured_groups(configured_groups(groups));
    if groups.is_empty() {
        return Ok(());
    }
    let mut wanted = Vec::with_capacity(groups.len());
    for (email, g) in configured_groups(groups).into_iter().zip(groups) {
        // Config validation already checked these; canonicalise for storage.
        let mut members: Vec<String> = g
            .members
            .iter()
            .filter_map(|m| Member::parse(m).ok())
            .map(|m| m.to_string())
            .collect();
        members.sort();
        members.dedup();
        wanted.push((email, members));
    }
    store.seed_at_start(Arc::new(move |draft: &mut Draft<'_>| {
        let mut events = Vec::new();
        for (email, members) in &wanted {
            let old = draft.current.group(email);
            if old.is_some_and(|g| g.members == *members) {
                continue;
            }
            let before = old.map(|g| g.members.as_slice()).unwrap_or_default();
            let pairs = |from: &[String], without: &[String]| -> Vec<(String, String)> {
                from.iter()
                    .filter(|m| !without.contains(m))
                    .map(|m| (format!("group:{email}"), m.clone()))
                    .collect()
            };
            let (added, removed) = (pairs(members, before), pairs(before, members));
            let old_etag = etag_text(old.map(|g| &g.etag));
            let stored = draft.put_group(email, members.clone());
            events.push(AuditEvent {
                caller: CONFIG_CALLER.to_owned(),
                action: "configureGroup",
                resource: format!("groups/{email}"),
                old_etag,
                new_etag: etag_text(Some(&stored.etag)),
                added,
                removed,
            });
        }
        // Logged once the write is durable.
        Ok(Box::new(move || events.iter().for_each(AuditEvent::log)) as SeedDone)
    }))
}

impl AdminState {
    /// Loads the state and refuses unless the caller may read (or, `write`, change) groups:
    /// the project's policy permissions, since membership decides what a policy grants.
    async fn require_groups<'a>(
        &'a self,
        caller: &'a Principal,
        write: bool,
    ) -> Result<Operation<'a>, ApiError> {
        let permission = if write {
            PermissionSet::PROJECTS_SET_IAM_POLICY
        } else {
            PermissionSet::PROJECTS_GET_IAM_POLICY
        };
        self.require(caller, &self.project_resource(), permission)
            .await
    }

    /// Every group (`resourcemanager.projects.getIamPolicy`), by email.
    pub async fn list_groups(&self, caller: &Principal) -> Result<Vec<GroupView>, ApiError> {
        let op = self.require_groups(caller, false).await?;
        Ok(op
            .snapshot()
            .groups()
            .map(|(email, g)| GroupView::new(email, g))
            .collect())
    }

    /// One group (`resourcemanager.projects.getIamPolicy`).
    pub async fn describe_group(
        &self,
        caller: &Principal,
        email: &str,
    ) -> Result<GroupView, ApiError> {
        let op = self.require_groups(caller, false).await?;
        let email = group_email(email)?;
        op.snapshot()
            .group(&email)
            .map(|g| GroupView::new(&email, g))
            .ok_or_else(|| ApiError::NotFound(format!("group {email} has no members")))
    }

    /// Adds (`add` true) or removes a member (`resourcemanager.projects.setIamPolicy`). Takes
    /// effect on the next Check. A group whose last member leaves is deleted.
    pub async fn change_group(
        &self,
        caller: &Principal,
        email: &str,
        member: &str,
        add: bool,
    ) -> Result<GroupView, ApiError> {
        let op = self.require_groups(caller, true).await?;
        let email = group_email(email)?;
        if self.store.is_configured_group(&email) {
            // The configuration is the single source of these: a change here would be undone
            // by the next start, silently.
            return Err(ApiError::FailedPrecondition(format!(
                "group {email} is set by [[iam.groups]] in the configuration: change its \
                 members there (the API does not change configured groups)"
            )));
        }
        let member = match Member::parse(member).map_err(invalid)? {
            m @ (Member::User(_) | Member::ServiceAccount(_)) => m.to_string(),
            other => {
                return Err(ApiError::InvalidArgument(format!(
                    "invalid group member {:?}: a group holds user:EMAIL and \
                     serviceAccount:EMAIL members only",
                    other.to_string()
                )));
            }
        };
        let (e, m) = (email.clone(), member.clone());
        let change = move |draft: &mut Draft<'_>| {
            let old = draft.current.group(&e).map(|g| (**g).clone());
            let mut members = old.as_ref().map(|g| g.members.clone()).unwrap_or_default();
            let present = members.contains(&m);
            match (add, present) {
                (true, true) => return Ok((old.clone(), old)),
                (true, false) => {
                    members.push(m);
                    members.sort();
                }
                (false, false) => {
                    return Err(ApiError::NotFound(format!(
                        "{m} is not a member of group {e}"
                    )));
                }
                (false, true) => members.retain(|x| *x != m),
            }
            if members.is_empty() {
                draft.delete_group(&e);
                Ok((old, None))
            } else {
                Ok((old, Some(draft.put_group(&e, members))))
            }
        };
        let action = if add { "addMember" } else { "removeMember" };
        let (_, new) = op
            .write(action, change, |(old, new)| {
                // Adding a member already there changes nothing: nothing to record.
                if old == new {
                    return None;
                }
                let pair = vec![(format!("group:{email}"), member)];
                let (added, removed) = if add {
                    (pair, Vec::new())
                } else {
                    (Vec::new(), pair)
                };
                Some(Change {
                    resource: format!("groups/{email}"),
                    old_etag: etag_text(old.as_ref().map(|g| &g.etag)),
                    new_etag: etag_text(new.as_ref().map(|g| &g.etag)),
                    added,
                    removed,
                })
            })
            .await?;
        Ok(match new {
            Some(g) => GroupView::new(&email, &g),
            None => GroupView {
                name: format!("groups/{email}"),
                email,
                members: Vec::new(),
                etag: Etag::absent(),
            },
        })
    }
}

fn group_email(email: &str) -> Result<String, ApiError> {
    let email = email.strip_prefix("group:").unwrap_or(email);
    match Member::parse(&format!("group:{email}")) {
        Ok(Member::Group(e)) => Ok(e),
        _ => Err(ApiError::InvalidArgument(format!(
            "invalid group {email:?}: expected a group email like ops@example.com"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::audit::capture::{Fields, audit_events, field};

    fn group(email: &str, members: &[&str]) -> GroupConfig {
        GroupConfig {
            email: email.into(),
            members: members.iter().map(|m| (*m).to_owned()).collect(),
        }
    }

    /// Seeds `groups` into the store in `dir` (as a start does); the audit events it logged.
    fn start(dir: &std::path::Path, groups: &[GroupConfig]) -> Vec<Fields> {
        let store = PolicyStore::open(dir, "p", &[]).unwrap();
        let (seeded, events, _) = audit_events(|| seed_groups(&store, groups));
        seeded.unwrap();
        events
    }

    #[test]
    fn a_start_that_changes_a_configured_group_audits_it_and_one_that_does_not_is_silent() {
        let dir = tempfile::tempdir().unwrap();
        let first = [group(
            "group:Ops@Example.com",
            &["user:carol@example.com", "user:dave@example.com"],
        )];
        let events = start(dir.path(), &first);
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(field(&events[0], "caller"), CONFIG_CALLER);
        assert_eq!(field(&events[0], "action"), "configureGroup");
        assert_eq!(field(&events[0], "resource"), "groups/ops@example.com");
        assert!(field(&events[0], "added").contains("user:dave@example.com"));

        // The same configuration again: nothing written, nothing logged.
        assert!(start(dir.path(), &first).is_empty());

        let second = [group("ops@example.com", &["user:carol@example.com"])];
        let events = start(dir.path(), &second);
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(
            field(&events[0], "removed"),
            r#"[["group:ops@example.com","user:dave@example.com"]]"#
        );
        assert_eq!(field(&events[0], "added"), "[]");
    }
}
