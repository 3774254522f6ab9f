//! The IAM policy document in the google.iam.v1 JSON shape ([`Policy`], [`Binding`], [`Expr`],
//! [`Etag`]) and the rules a policy must satisfy before it is stored ([`normalize`]).

use std::collections::{HashMap, HashSet};
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::member::{Member, MemberError};
use super::roles::RoleCatalog;

/// The most principals a policy may hold (every occurrence in every binding counts).
pub const MAX_PRINCIPALS: usize = 1500;

/// The most `group:` principals a policy may hold (counted like [`MAX_PRINCIPALS`]).
pub const MAX_GROUPS: usize = 250;

/// The policy version written to the store; conditions are not supported, so 1 is enough.
pub const STORED_VERSION: i32 = 1;

/// A policy's etag: opaque bytes, base64 (standard alphabet, padded) in JSON.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Etag(pub Vec<u8>);

impl Etag {
    /// The etag of a resource that has no policy: `ACAB`, as Google returns.
    pub fn absent() -> Etag {
        Etag(vec![0x00, 0x20, 0x01])
    }

    /// The etag of the `n`th version of a policy: `n` as 8 big-endian bytes.
    pub fn from_version(n: u64) -> Etag {
        Etag(n.to_be_bytes().to_vec())
    }

    /// The version number this etag was made from by [`Etag::from_version`], if it is one.
    pub fn version(&self) -> Option<u64> {
        <[u8; 8]>::try_from(self.0.as_slice())
            .ok()
            .map(u64::from_be_bytes)
    }
}

impl fmt::Display for Etag {
    /// The base64 form, as in JSON.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(&self.0))
    }
}

impl Serialize for Etag {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Etag {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Etag, D::Error> {
        let text = String::deserialize(deserializer)?;
        STANDARD
            .decode(text.as_bytes())
            .map(Etag)
            .map_err(|e| serde::de::Error::custom(format!("invalid etag {text:?}: {e}")))
    }
}

/// A condition expression (google.type.Expr). Accepted in JSON only so that it can be refused
/// with a clear message: verifyiam does not support IAM conditions.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Expr {
    /// The CEL expression.
    #[serde(default)]
    pub expression: String,
    /// A short title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// A longer description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Where the expression came from, for error messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

/// A binding of members to a role.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Binding {
    /// The role granted, e.g. `roles/apigee.deploymentInvoker`.
    pub role: String,
    /// The members the role is granted to.
    #[serde(default)]
    pub members: Vec<String>,
    /// An IAM condition; always refused by [`normalize`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<Expr>,
}

/// An IAM policy (google.iam.v1.Policy). Fields are in the order Google prints them.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    /// The policy format version: 0, 1 or 3 accepted, 1 stored.
    #[serde(default)]
    pub version: i32,
    /// The etag for optimistic concurrency: a write carrying a stale etag is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<Etag>,
    /// The role bindings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bindings: Vec<Binding>,
    /// Audit logging configuration; always refused by [`normalize`] when present.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audit_configs: Vec<serde_json::Value>,
}

/// Why a policy was refused; each message names the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The version is not 0, 1 or 3.
    #[error("unsupported policy version {0}: use version 1 (0, 1 and 3 are accepted)")]
    UnsupportedVersion(i32),
    /// A binding carries a condition.
    #[error(
        "conditions are not supported on the binding of role {role:?}: \
         IAM conditions are not supported, remove the condition"
    )]
    ConditionNotSupported {
        /// The role of the binding with the condition.
        role: String,
    },
    /// The policy carries audit configs.
    #[error("audit configs are not supported: remove auditConfigs ({count} given)")]
    AuditConfigsNotSupported {
        /// How many audit configs were given.
        count: usize,
    },
    /// A binding names a role the catalogue does not know.
    #[error("unknown role {0:?}: use a known role such as roles/apigee.deploymentInvoker")]
    UnknownRole(String),
    /// A member string is malformed.
    #[error(transparent)]
    InvalidMember(#[from] MemberError),
    /// A binding has no role.
    #[error("binding {index} has an empty role: every binding needs a role")]
    EmptyRole {
        /// The binding's position in the policy, from 0.
        index: usize,
    },
    /// More principals than [`MAX_PRINCIPALS`].
    #[error("too many principals: {count} given, a policy holds at most {MAX_PRINCIPALS}")]
    TooManyPrincipals {
        /// How many principals the policy holds.
        count: usize,
    },
    /// More groups than [`MAX_GROUPS`].
    #[error("too many groups: {count} given, a policy holds at most {MAX_GROUPS}")]
    TooManyGroups {
        /// How many `group:` principals the policy holds.
        count: usize,
    },
}

/// Validates `policy` and returns the form to store.
///
/// Refused: a version other than 0, 1 or 3; audit configs; any binding with an empty role, a
/// condition, a role unknown to `roles` or a malformed member; more than [`MAX_PRINCIPALS`]
/// principals or [`MAX_GROUPS`] groups. Every binding is checked; the first error is returned.
///
/// Stored form: version 1, members canonical and de-duplicated within a binding (first-seen order
/// kept), bindings without members dropped, bindings of the same role merged (in order of first
/// appearance), etag as given. Principals are counted on this stored form.
pub fn normalize(policy: Policy, roles: &dyn RoleCatalog) -> Result<Policy, PolicyError> {
    if !matches!(policy.version, 0 | 1 | 3) {
        return Err(PolicyError::UnsupportedVersion(policy.version));
    }
    if !policy.audit_configs.is_empty() {
        return Err(PolicyError::AuditConfigsNotSupported {
            count: policy.audit_configs.len(),
        });
    }

    let mut first_error = None;
    let mut merged: Vec<(Binding, HashSet<String>)> = Vec::new();
    let mut by_role: HashMap<String, usize> = HashMap::new();
    for (index, binding) in policy.bindings.into_iter().enumerate() {
        let members = match check_binding(index, &binding, roles) {
            Ok(members) => members,
            Err(e) => {
                // Keep checking the other bindings; report the first problem.
                first_error.get_or_insert(e);
                continue;
            }
        };
        if first_error.is_some() || members.is_empty() {
            continue;
        }
        let slot = *by_role.entry(binding.role.clone()).or_insert_with(|| {
            merged.push((
                Binding {
                    role: binding.role,
                    members: Vec::new(),
                    condition: None,
                },
                HashSet::new(),
            ));
            merged.len() - 1
        });
        if let Some((target, seen)) = merged.get_mut(slot) {
            for member in members {
                if seen.insert(member.clone()) {
                    target.members.push(member);
                }
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }

    let bindings: Vec<Binding> = merged.into_iter().map(|(binding, _)| binding).collect();
    let principals: usize = bindings.iter().map(|b| b.members.len()).sum();
    if principals > MAX_PRINCIPALS {
        return Err(PolicyError::TooManyPrincipals { count: principals });
    }
    let groups = bindings
        .iter()
        .flat_map(|b| &b.members)
        .filter(|m| m.starts_with("group:"))
        .count();
    if groups > MAX_GROUPS {
        return Err(PolicyError::TooManyGroups { count: groups });
    }

    Ok(Policy {
        version: STORED_VERSION,
        etag: policy.etag,
        bindings,
        audit_configs: Vec::new(),
    })
}

/// Checks one binding and returns its canonical members, de-duplicated, in first-seen order.
fn check_binding(
    index: usize,
    binding: &Binding,
    roles: &dyn RoleCatalog,
) -> Result<Vec<String>, PolicyError> {
    if binding.role.is_empty() {
        return Err(PolicyError::EmptyRole { index });
    }
    if binding.condition.is_some() {
        return Err(PolicyError::ConditionNotSupported {
            role: binding.role.clone(),
        });
    }
    if roles.permissions(&binding.role).is_none() {
        return Err(PolicyError::UnknownRole(binding.role.clone()));
    }
    let mut members: Vec<String> = Vec::with_capacity(binding.members.len());
    let mut seen = HashSet::with_capacity(binding.members.len());
    for member in &binding.members {
        let canonical = Member::parse(member)?.to_string();
        if seen.insert(canonical.clone()) {
            members.push(canonical);
        }
    }
    Ok(members)
}

/// A `(role, member)` pair of a binding.
pub type RoleMember = (String, String);

/// The `(role, member)` pairs granted by `new` and not by `old` (added), and by `old` and not by
/// `new` (removed), each in policy order: what an audit event records about a policy write.
pub fn binding_changes(old: &Policy, new: &Policy) -> (Vec<RoleMember>, Vec<RoleMember>) {
    let pairs = |p: &Policy| -> Vec<RoleMember> {
        p.bindings
            .iter()
            .flat_map(|b| b.members.iter().map(|m| (b.role.clone(), m.clone())))
            .collect()
    };
    let (before, after) = (pairs(old), pairs(new));
    let before_set: HashSet<&RoleMember> = before.iter().collect();
    let after_set: HashSet<&RoleMember> = after.iter().collect();
    let added = after
        .iter()
        .filter(|p| !before_set.contains(p))
        .cloned()
        .collect();
    let removed = before
        .iter()
        .filter(|p| !after_set.contains(p))
        .cloned()
        .collect();
    (added, removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iam::roles::PredefinedRoles;
    use serde_json::json;

    const INVOKER: &str = "roles/apigee.deploymentInvoker";

    fn binding(role: &str, members: &[&str]) -> Binding {
        Binding {
            role: role.to_owned(),
            members: members.iter().map(|m| (*m).to_owned()).collect(),
            condition: None,
        }
    }

    fn policy(bindings: Vec<Binding>) -> Policy {
        Policy {
            bindings,
            ..Policy::default()
        }
    }

    fn normalized(p: Policy) -> Result<Policy, PolicyError> {
        normalize(p, &PredefinedRoles)
    }

    fn users(n: usize, kind: &str) -> Vec<String> {
        (0..n).map(|i| format!("{kind}:u{i}@example.com")).collect()
    }

    #[test]
    fn conditions_are_refused() {
        let mut b = binding(INVOKER, &["user:alice@example.com"]);
        b.condition = Some(Expr {
            expression: "request.time < timestamp('2030-01-01T00:00:00Z')".into(),
            title: Some("expires".into()),
            ..Expr::default()
        });
        let err = normalized(policy(vec![b])).unwrap_err();
        assert_eq!(
            err,
            PolicyError::ConditionNotSupported {
                role: INVOKER.into()
            }
        );
        let message = err.to_string();
        assert!(message.starts_with("conditions are not supported on "));
        assert!(message.contains("IAM conditions are not supported"));
        assert!(message.contains(INVOKER));

        // Also from JSON, even an empty condition, and on a binding with no members.
        let p: Policy =
            serde_json::from_value(json!({"bindings":[{"role": INVOKER, "condition": {}}]}))
                .unwrap();
        assert!(matches!(
            normalized(p),
            Err(PolicyError::ConditionNotSupported { .. })
        ));
    }

    #[test]
    fn audit_configs_are_refused() {
        let p: Policy = serde_json::from_value(json!({
            "auditConfigs": [{"service": "allServices", "auditLogConfigs": [{"logType": "DATA_READ"}]}]
        }))
        .unwrap();
        let err = normalized(p).unwrap_err();
        assert_eq!(err, PolicyError::AuditConfigsNotSupported { count: 1 });
        assert!(err.to_string().contains("audit configs are not supported"));
        // An empty list is no audit config at all.
        let p: Policy = serde_json::from_value(json!({"auditConfigs": []})).unwrap();
        assert!(normalized(p).is_ok());
    }

    #[test]
    fn version_two_is_refused() {
        let mut p = policy(vec![binding(INVOKER, &["user:alice@example.com"])]);
        p.version = 2;
        let err = normalized(p.clone()).unwrap_err();
        assert_eq!(err, PolicyError::UnsupportedVersion(2));
        assert!(err.to_string().contains("version 2"));
        for bad in [-1, 4, i32::MAX] {
            p.version = bad;
            assert_eq!(
                normalized(p.clone()),
                Err(PolicyError::UnsupportedVersion(bad))
            );
        }
    }

    #[test]
    fn versions_zero_one_and_three_are_stored_as_one() {
        for version in [0, 1, 3] {
            let mut p = policy(vec![binding(INVOKER, &["user:alice@example.com"])]);
            p.version = version;
            assert_eq!(normalized(p).map(|p| p.version), Ok(1), "{version}");
        }
    }

    #[test]
    fn at_most_1500_principals() {
        // Split over two roles: every binding's members count.
        let all = users(1500, "user");
        let (a, b) = all.split_at(1000);
        let mut p = policy(vec![
            Binding {
                role: INVOKER.into(),
                members: a.to_vec(),
                condition: None,
            },
            Binding {
                role: "roles/viewer".into(),
                members: b.to_vec(),
                condition: None,
            },
        ]);
        let stored = normalized(p.clone()).expect("1500 principals are allowed");
        assert_eq!(
            stored
                .bindings
                .iter()
                .map(|b| b.members.len())
                .sum::<usize>(),
            1500
        );
        // The same member under two roles counts twice.
        p.bindings[1].members.push(a[0].clone());
        let err = normalized(p.clone()).unwrap_err();
        assert_eq!(err, PolicyError::TooManyPrincipals { count: 1501 });
        assert!(err.to_string().contains("1501"));
        // Duplicates within a binding count once.
        p.bindings[1].members.pop();
        p.bindings[1].members.push(b[0].replace("user:u", "user:U"));
        assert!(normalized(p).is_ok());
    }

    #[test]
    fn at_most_250_groups() {
        let mut p = policy(vec![Binding {
            role: INVOKER.into(),
            members: users(250, "group"),
            condition: None,
        }]);
        p.bindings[0].members.extend(users(1000, "user"));
        assert!(normalized(p.clone()).is_ok());
        p.bindings
            .push(binding("roles/viewer", &["group:u0@example.com"]));
        let err = normalized(p).unwrap_err();
        assert_eq!(err, PolicyError::TooManyGroups { count: 251 });
        assert!(err.to_string().contains("251"));
    }

    #[test]
    fn unknown_role_is_refused() {
        let err = normalized(policy(vec![binding(
            "roles/apigee.superInvoker",
            &["user:alice@example.com"],
        )]))
        .unwrap_err();
        assert_eq!(
            err,
            PolicyError::UnknownRole("roles/apigee.superInvoker".into())
        );
        assert!(err.to_string().contains("\"roles/apigee.superInvoker\""));
        // Role names are case-sensitive.
        assert!(matches!(
            normalized(policy(vec![binding(
                "roles/Owner",
                &["user:alice@example.com"]
            )])),
            Err(PolicyError::UnknownRole(_))
        ));
    }

    #[test]
    fn empty_role_is_refused() {
        let err = normalized(policy(vec![
            binding(INVOKER, &["user:alice@example.com"]),
            binding("", &["user:bob@example.com"]),
        ]))
        .unwrap_err();
        assert_eq!(err, PolicyError::EmptyRole { index: 1 });
        assert!(err.to_string().contains("binding 1"));
    }

    #[test]
    fn invalid_member_is_refused() {
        let err = normalized(policy(vec![binding(
            INVOKER,
            &["user:alice@example.com", "bob"],
        )]))
        .unwrap_err();
        assert_eq!(
            err,
            PolicyError::InvalidMember(MemberError::UnknownType("bob".into()))
        );
        assert!(err.to_string().starts_with("invalid member \"bob\""));
    }

    #[test]
    fn every_binding_is_checked() {
        // A later bad binding is found even after an empty one that would be dropped.
        let err = normalized(policy(vec![
            binding(INVOKER, &[]),
            binding(INVOKER, &["user:alice@example.com"]),
            binding("roles/viewer", &["user:nobody"]),
        ]))
        .unwrap_err();
        assert_eq!(
            err,
            PolicyError::InvalidMember(MemberError::BadEmail("user:nobody".into()))
        );
        // The first error wins when several bindings are bad.
        let err = normalized(policy(vec![
            binding("roles/nope", &["user:alice@example.com"]),
            binding("", &["user:alice@example.com"]),
        ]))
        .unwrap_err();
        assert_eq!(err, PolicyError::UnknownRole("roles/nope".into()));
    }

    #[test]
    fn members_are_canonical_and_deduplicated() {
        let stored = normalized(policy(vec![binding(
            INVOKER,
            &[
                "user:Bob@Example.com",
                "user:alice@example.com",
                "user:bob@example.com",
                "domain:EXAMPLE.com",
                "user:ALICE@example.com",
                "allUsers",
            ],
        )]))
        .unwrap();
        assert_eq!(
            stored.bindings,
            [binding(
                INVOKER,
                &[
                    "user:bob@example.com",
                    "user:alice@example.com",
                    "domain:example.com",
                    "allUsers",
                ]
            )]
        );
    }

    #[test]
    fn empty_bindings_are_dropped() {
        let stored = normalized(policy(vec![
            binding("roles/viewer", &[]),
            binding(INVOKER, &["user:alice@example.com"]),
        ]))
        .unwrap();
        assert_eq!(
            stored.bindings,
            [binding(INVOKER, &["user:alice@example.com"])]
        );
        // `{}` removes every binding.
        let stored = normalized(serde_json::from_str("{}").unwrap()).unwrap();
        assert!(stored.bindings.is_empty());
        assert_eq!(serde_json::to_string(&stored).unwrap(), r#"{"version":1}"#);
    }

    #[test]
    fn same_role_bindings_merge() {
        let stored = normalized(policy(vec![
            binding(INVOKER, &["user:alice@example.com"]),
            binding("roles/viewer", &["user:carol@example.com"]),
            binding(INVOKER, &["user:bob@example.com", "user:Alice@example.com"]),
        ]))
        .unwrap();
        assert_eq!(
            stored.bindings,
            [
                binding(INVOKER, &["user:alice@example.com", "user:bob@example.com"]),
                binding("roles/viewer", &["user:carol@example.com"]),
            ]
        );
    }

    #[test]
    fn etag_is_kept_by_normalize() {
        let mut p = policy(vec![binding(INVOKER, &["user:alice@example.com"])]);
        p.etag = Some(Etag::from_version(7));
        assert_eq!(
            normalized(p).unwrap().etag,
            Some(Etag(vec![0, 0, 0, 0, 0, 0, 0, 7]))
        );
    }

    #[test]
    fn etag_is_base64_in_json() {
        let etag: Etag = serde_json::from_str(r#""BwYT8i40Vwo=""#).unwrap();
        assert_eq!(etag.0, [0x07, 0x06, 0x13, 0xf2, 0x2e, 0x34, 0x57, 0x0a]);
        assert_eq!(serde_json::to_string(&etag).unwrap(), r#""BwYT8i40Vwo=""#);
        assert_eq!(etag.to_string(), "BwYT8i40Vwo=");
        assert_eq!(
            serde_json::to_string(&Etag::from_version(1)).unwrap(),
            r#""AAAAAAAAAAE=""#
        );
        assert_eq!(Etag::from_version(258).version(), Some(258));
        assert_eq!(Etag::absent().version(), None);
    }

    #[test]
    fn bad_base64_etag_is_refused() {
        for bad in [r#""not base64!""#, r#""BwYT8i40Vwo""#, "12"] {
            assert!(serde_json::from_str::<Etag>(bad).is_err(), "{bad}");
        }
        let err = serde_json::from_str::<Policy>(r#"{"etag":"%%%"}"#).unwrap_err();
        assert!(err.to_string().contains("invalid etag"), "{err}");
    }

    #[test]
    fn absent_etag_is_acab() {
        assert_eq!(Etag::absent().0, [0x00, 0x20, 0x01]);
        assert_eq!(serde_json::to_string(&Etag::absent()).unwrap(), r#""ACAB""#);
    }

    #[test]
    fn seed_policy_json_round_trips() {
        let request: serde_json::Value = serde_json::from_str(
            r#"{"policy":{"bindings":[{"members":["user:alice@example.com"],"role":"roles/apigee.deploymentInvoker"}]}}"#,
        )
        .unwrap();
        let p: Policy = serde_json::from_value(request["policy"].clone()).unwrap();
        assert_eq!(p.version, 0);
        assert_eq!(p.etag, None);
        assert_eq!(p.bindings, [binding(INVOKER, &["user:alice@example.com"])]);

        let mut stored = normalized(p).unwrap();
        stored.etag = Some(serde_json::from_str(r#""BwYT8i40Vwo=""#).unwrap());
        let text = serde_json::to_string(&stored).unwrap();
        assert_eq!(
            text,
            r#"{"version":1,"etag":"BwYT8i40Vwo=","bindings":[{"role":"roles/apigee.deploymentInvoker","members":["user:alice@example.com"]}]}"#
        );
        let back: Policy = serde_json::from_str(&text).unwrap();
        assert_eq!(back, stored);
    }

    #[test]
    fn unknown_json_field_is_refused() {
        let err = serde_json::from_str::<Policy>(r#"{"version":1,"bindingz":[]}"#).unwrap_err();
        assert!(err.to_string().contains("bindingz"), "{err}");
        let err = serde_json::from_str::<Policy>(
            r#"{"bindings":[{"role":"roles/owner","members":[],"extra":1}]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("extra"), "{err}");
        // snake_case is not the JSON spelling.
        assert!(serde_json::from_str::<Policy>(r#"{"audit_configs":[]}"#).is_err());
    }

    #[test]
    fn binding_changes_name_added_and_removed_pairs() {
        let old = Policy {
            bindings: vec![Binding {
                role: "roles/apigee.deploymentInvoker".into(),
                members: vec!["user:a@example.com".into(), "user:b@example.com".into()],
                condition: None,
            }],
            ..Policy::default()
        };
        let new = Policy {
            bindings: vec![
                Binding {
                    role: "roles/apigee.deploymentInvoker".into(),
                    members: vec!["user:b@example.com".into(), "user:c@example.com".into()],
                    condition: None,
                },
                Binding {
                    role: "roles/viewer".into(),
                    members: vec!["user:a@example.com".into()],
                    condition: None,
                },
            ],
            ..Policy::default()
        };
        let pair = |r: &str, m: &str| (r.to_owned(), m.to_owned());
        let (added, removed) = binding_changes(&old, &new);
        assert_eq!(
            added,
            [
                pair("roles/apigee.deploymentInvoker", "user:c@example.com"),
                pair("roles/viewer", "user:a@example.com")
            ]
        );
        assert_eq!(
            removed,
            [pair("roles/apigee.deploymentInvoker", "user:a@example.com")]
        );
        assert_eq!(binding_changes(&new, &new), (vec![], vec![]));
    }
}
