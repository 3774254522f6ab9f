//! Groups: the membership verifyiam keeps for `group:` members (list, describe, add and remove a
//! member), read and written under the project's policy permissions; and the seeding of
//! `[[iam.groups]]` from configuration at start.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::audit::{Change, etag_text};
use super::operation::{Operation, invalid};
use super::{AdminState, ApiError};
use crate::authn::Principal;
use crate::config::GroupConfig;
use crate::iam::member::Member;
use crate::iam::policy::Etag;
use crate::iam::roles::PermissionSet;
use crate::store::{Draft, Group, PolicyStore, StoreError};

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

/// Seeds `[[iam.groups]]` from configuration: each listed group's membership becomes exactly the
/// configured members (other groups are left alone). Runs once at start.
pub fn seed_groups(store: &PolicyStore, groups: &[GroupConfig]) -> Result<(), StoreError> {
    if groups.is_empty() {
        return Ok(());
    }
    let mut wanted = Vec::with_capacity(groups.len());
    for g in groups {
        // Config validation already checked these; canonicalise for storage.
        let email = g.email.to_ascii_lowercase();
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
        for (email, members) in &wanted {
            let same = draft
                .current
                .group(email)
                .is_some_and(|g| g.members == *members);
            if !same {
                draft.put_group(email, members.clone());
            }
        }
        Ok(())
    }))
}

impl AdminState {
    /// Loads the state and refuses unless the caller may read (or, `write`, change) groups:
    /// the project's policy permissions, since membership decides what a policy grants.
    fn require_groups<'a>(
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
    }

    /// Every group (`resourcemanager.projects.getIamPolicy`), by email.
    pub fn list_groups(&self, caller: &Principal) -> Result<Vec<GroupView>, ApiError> {
        let op = self.require_groups(caller, false)?;
        Ok(op
            .snapshot()
            .groups()
            .map(|(email, g)| GroupView::new(email, g))
            .collect())
    }

    /// One group (`resourcemanager.projects.getIamPolicy`).
    pub fn describe_group(&self, caller: &Principal, email: &str) -> Result<GroupView, ApiError> {
        let op = self.require_groups(caller, false)?;
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
        let op = self.require_groups(caller, true)?;
        let email = group_email(email)?;
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
