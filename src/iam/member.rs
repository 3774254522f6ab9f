//! Members (principals) of IAM bindings: parsing and the canonical string form of
//! `user:`, `serviceAccount:`, `group:`, `domain:`, `allUsers`, `allAuthenticatedUsers`,
//! workload and workforce identity pool `principal://` and `principalSet://` members, and
//! Google's `deleted:` members; and the member set an authenticated principal matches.

use std::fmt;

const ALL_USERS: &str = "allUsers";
const ALL_AUTHENTICATED_USERS: &str = "allAuthenticatedUsers";
const SERVICE_ACCOUNT_SUFFIX: &str = ".gserviceaccount.com";
const MAX_DOMAIN_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;
/// The host every federated identifier starts with.
const IAM_HOST: &str = "iam.googleapis.com/";
/// Google's bound on `google.subject`, in bytes.
pub const MAX_SUBJECT_LEN: usize = 127;
/// Google's bound on a custom attribute's name (`attribute.NAME`), in characters.
pub const MAX_ATTRIBUTE_NAME_LEN: usize = 100;
/// The longest pool id accepted.
const MAX_POOL_ID_LEN: usize = 63;
/// The longest group or attribute value accepted in a member (verifyiam's own bound).
pub const MAX_FEDERATED_VALUE_LEN: usize = 1024;

/// A member of an IAM binding.
///
/// Email and domain payloads are held in their canonical (ASCII-lowercased) form;
/// `Principal` and `PrincipalSet` hold what follows `principal://` / `principalSet://`, verbatim.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Member {
    /// `user:EMAIL`.
    User(String),
    /// `serviceAccount:EMAIL`.
    ServiceAccount(String),
    /// `group:EMAIL`.
    Group(String),
    /// `domain:DOMAIN`.
    Domain(String),
    /// `allUsers`: anyone, authenticated or not.
    AllUsers,
    /// `allAuthenticatedUsers`: anyone with a valid token.
    AllAuthenticatedUsers,
    /// `principal://iam.googleapis.com/POOL/subject/SUBJECT`: a single identity of a workload
    /// or workforce identity pool (held verbatim, after the scheme).
    Principal(String),
    /// `principalSet://iam.googleapis.com/POOL/{group/G | attribute.NAME/VALUE | *}`: a set of
    /// a pool's identities (held verbatim, after the scheme).
    PrincipalSet(String),
    /// `deleted:user:EMAIL?uid=N`, `deleted:serviceAccount:…`, `deleted:group:…`: a principal
    /// Google has deleted. Accepted so that a policy read from Google can be set here; it
    /// matches nothing. Held after `deleted:`, the email lowercased.
    Deleted(String),
}

/// Why a member string was refused; every variant names the member.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemberError {
    /// The member string is empty.
    #[error("invalid member \"\": a member cannot be empty")]
    Empty,
    /// The member string contains whitespace or control characters.
    #[error("invalid member {0:?}: members cannot contain whitespace")]
    Whitespace(String),
    /// The member string has no known type prefix.
    #[error(
        "invalid member {0:?}: expected user:EMAIL, serviceAccount:EMAIL, group:EMAIL, \
         domain:DOMAIN, allUsers, allAuthenticatedUsers, principal://... or principalSet://..."
    )]
    UnknownType(String),
    /// A `user:`, `serviceAccount:` or `group:` member whose email is malformed.
    #[error("invalid member {0:?}: expected an email address like name@example.com")]
    BadEmail(String),
    /// A `domain:` member whose domain is malformed.
    #[error("invalid member {0:?}: expected a DNS domain name like example.com")]
    BadDomain(String),
    /// A `principal://` or `principalSet://` member with nothing after the scheme.
    #[error("invalid member {0:?}: the principal identifier after :// is empty")]
    EmptyPrincipal(String),
    /// A `principal://` member that does not name one identity of a pool.
    #[error(
        "invalid member {0:?}: expected principal://iam.googleapis.com/projects/NUMBER/locations/\
         global/workloadIdentityPools/POOL/subject/SUBJECT or principal://iam.googleapis.com/\
         locations/global/workforcePools/POOL/subject/SUBJECT (SUBJECT at most 127 bytes)"
    )]
    BadPrincipal(String),
    /// A `principalSet://` member that does not name a set of a pool's identities.
    #[error(
        "invalid member {0:?}: expected principalSet://iam.googleapis.com/POOL/group/GROUP, \
         principalSet://iam.googleapis.com/POOL/attribute.NAME/VALUE (NAME of [a-z0-9_]) or \
         principalSet://iam.googleapis.com/POOL/*, where POOL is projects/NUMBER/locations/\
         global/workloadIdentityPools/POOL_ID or locations/global/workforcePools/POOL_ID"
    )]
    BadPrincipalSet(String),
    /// A `deleted:` member that is not one of Google's deleted-principal forms.
    #[error(
        "invalid member {0:?}: expected deleted:user:EMAIL?uid=NUMBER, \
         deleted:serviceAccount:EMAIL?uid=NUMBER or deleted:group:EMAIL?uid=NUMBER"
    )]
    BadDeleted(String),
}

impl Member {
    /// Parses a member string, refusing anything that is not one of the documented forms.
    ///
    /// Type prefixes are case-sensitive; emails and domains are lowercased.
    pub fn parse(s: &str) -> Result<Member, MemberError> {
        if s.is_empty() {
            return Err(MemberError::Empty);
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(MemberError::Whitespace(s.to_owned()));
        }
        match s {
            ALL_USERS => return Ok(Member::AllUsers),
            ALL_AUTHENTICATED_USERS => return Ok(Member::AllAuthenticatedUsers),
            _ => {}
        }
        let email = |rest: &str| {
            let lower = rest.to_ascii_lowercase();
            if is_email(&lower) {
                Ok(lower)
            } else {
                Err(MemberError::BadEmail(s.to_owned()))
            }
        };
        let principal = |rest: &str| {
            if rest.is_empty() {
                Err(MemberError::EmptyPrincipal(s.to_owned()))
            } else {
                Ok(rest.to_owned())
            }
        };
        if let Some(rest) = s.strip_prefix("user:") {
            email(rest).map(Member::User)
        } else if let Some(rest) = s.strip_prefix("serviceAccount:") {
            email(rest).map(Member::ServiceAccount)
        } else if let Some(rest) = s.strip_prefix("group:") {
            email(rest).map(Member::Group)
        } else if let Some(rest) = s.strip_prefix("domain:") {
            let lower = rest.to_ascii_lowercase();
            if is_domain(&lower) {
                Ok(Member::Domain(lower))
            } else {
                Err(MemberError::BadDomain(s.to_owned()))
            }
        } else if let Some(rest) = s.strip_prefix("principal://") {
            principal(rest)?;
            match federated(rest) {
                Some(Federated::Subject) => Ok(Member::Principal(rest.to_owned())),
                _ => Err(MemberError::BadPrincipal(s.to_owned())),
            }
        } else if let Some(rest) = s.strip_prefix("principalSet://") {
            principal(rest)?;
            match federated(rest) {
                Some(Federated::Set) => Ok(Member::PrincipalSet(rest.to_owned())),
                _ => Err(MemberError::BadPrincipalSet(s.to_owned())),
            }
        } else if let Some(rest) = s.strip_prefix("deleted:") {
            deleted(rest)
                .map(Member::Deleted)
                .ok_or_else(|| MemberError::BadDeleted(s.to_owned()))
        } else {
            Err(MemberError::UnknownType(s.to_owned()))
        }
    }
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Lowercase on output too, so a hand-built member still prints canonically.
        let lower = |f: &mut fmt::Formatter<'_>, prefix: &str, value: &str| {
            f.write_str(prefix)?;
            value
                .chars()
                .try_for_each(|c| fmt::Write::write_char(f, c.to_ascii_lowercase()))
        };
        match self {
            Member::User(email) => lower(f, "user:", email),
            Member::ServiceAccount(email) => lower(f, "serviceAccount:", email),
            Member::Group(email) => lower(f, "group:", email),
            Member::Domain(domain) => lower(f, "domain:", domain),
            Member::AllUsers => f.write_str(ALL_USERS),
            Member::AllAuthenticatedUsers => f.write_str(ALL_AUTHENTICATED_USERS),
            Member::Principal(rest) => write!(f, "principal://{rest}"),
            Member::PrincipalSet(rest) => write!(f, "principalSet://{rest}"),
            Member::Deleted(rest) => write!(f, "deleted:{rest}"),
        }
    }
}

/// Which kind of federated identifier the part after `principal://` / `principalSet://` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Federated {
    /// `POOL/subject/SUBJECT`.
    Subject,
    /// `POOL/group/G`, `POOL/attribute.NAME/VALUE` or `POOL/*`.
    Set,
}

/// Parses `iam.googleapis.com/POOL/…` into its kind, or `None` when it is neither form.
fn federated(rest: &str) -> Option<Federated> {
    let rest = rest.strip_prefix(IAM_HOST)?;
    let tail = pool_prefix(rest)?;
    let tail = tail.strip_prefix('/')?;
    if tail == "*" {
        return Some(Federated::Set);
    }
    let (kind, value) = tail.split_once('/')?;
    if value.is_empty() {
        return None;
    }
    match kind {
        "subject" if value.len() <= MAX_SUBJECT_LEN => Some(Federated::Subject),
        "group" if value.len() <= MAX_FEDERATED_VALUE_LEN => Some(Federated::Set),
        _ => {
            let name = kind.strip_prefix("attribute.")?;
            (is_attribute_name(name) && value.len() <= MAX_FEDERATED_VALUE_LEN)
                .then_some(Federated::Set)
        }
    }
}

/// The rest of `s` after a pool's resource name at its start, or `None` when it does not start
/// with one: `projects/NUMBER/locations/global/workloadIdentityPools/POOL` or
/// `locations/global/workforcePools/POOL`.
fn pool_prefix(s: &str) -> Option<&str> {
    let pool_id = |s: &str| -> Option<usize> {
        let end = s.find('/').unwrap_or(s.len());
        is_pool_id(&s[..end]).then_some(end)
    };
    if let Some(rest) = s.strip_prefix("projects/") {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let rest = rest[digits..].strip_prefix("/locations/global/workloadIdentityPools/")?;
        let end = pool_id(rest)?;
        Some(&rest[end..])
    } else {
        let rest = s.strip_prefix("locations/global/workforcePools/")?;
        let end = pool_id(rest)?;
        Some(&rest[end..])
    }
}

/// Whether `pool` is the resource name of a workload or workforce identity pool.
pub fn is_pool(pool: &str) -> bool {
    pool_prefix(pool).is_some_and(str::is_empty)
}

/// A pool id: 1 to 63 of `[a-z0-9-]`, not starting or ending with `-`.
fn is_pool_id(id: &str) -> bool {
    (1..=MAX_POOL_ID_LEN).contains(&id.len())
        && !id.starts_with('-')
        && !id.ends_with('-')
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A custom attribute's name: 1 to 100 of `[a-z0-9_]` (Google's rule).
pub fn is_attribute_name(name: &str) -> bool {
    (1..=MAX_ATTRIBUTE_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// `user:EMAIL?uid=N` (or `serviceAccount:`, `group:`), the email lowercased.
fn deleted(rest: &str) -> Option<String> {
    let (kind, rest) = rest.split_once(':')?;
    if !matches!(kind, "user" | "serviceAccount" | "group") {
        return None;
    }
    let (email, uid) = rest.split_once("?uid=")?;
    let email = email.to_ascii_lowercase();
    (is_email(&email) && !uid.is_empty() && uid.bytes().all(|b| b.is_ascii_digit()))
        .then(|| format!("{kind}:{email}?uid={uid}"))
}

/// Whether `email` (already lowercased) looks like `local@domain.tld`.
fn is_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !local.chars().any(|c| c.is_whitespace() || c.is_control())
        && !domain.contains('@')
        && is_domain(domain)
}

/// Whether `domain` (already lowercased) is a DNS name with at least two labels.
fn is_domain(domain: &str) -> bool {
    domain.len() <= MAX_DOMAIN_LEN
        && domain.contains('.')
        && domain.split('.').all(|label| {
            (1..=MAX_LABEL_LEN).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// The canonical members an authenticated principal matches.
///
/// - `email`: `serviceAccount:EMAIL` if it ends with `.gserviceaccount.com`, else `user:EMAIL`,
///   plus `domain:DOMAIN` of the email (all lowercased); a malformed email adds nothing.
/// - `groups`: `group:G` for each group email (a leading `group:` is accepted); malformed ones add nothing.
/// - `subject_member`: added verbatim (e.g. a `principal://…` form).
/// - `allAuthenticatedUsers` and `allUsers`, always.
///
/// No member appears twice. Compute this once per principal and cache it: the hot path
/// then evaluates policies against it without allocating.
pub fn principal_members(
    email: Option<&str>,
    groups: &[String],
    subject_member: Option<&str>,
) -> Vec<Box<str>> {
    let mut members: Vec<Box<str>> = Vec::with_capacity(groups.len() + 5);
    let mut push = |member: String| {
        if !members.iter().any(|m| **m == *member) {
            members.push(member.into_boxed_str());
        }
    };
    if let Some(email) = email {
        let email = email.to_ascii_lowercase();
        if is_email(&email) {
            let kind = if email.ends_with(SERVICE_ACCOUNT_SUFFIX) {
                "serviceAccount"
            } else {
                "user"
            };
            push(format!("{kind}:{email}"));
            if let Some((_, domain)) = email.split_once('@') {
                push(format!("domain:{domain}"));
            }
        }
    }
    for group in groups {
        let group = group.strip_prefix("group:").unwrap_or(group);
        let group = group.to_ascii_lowercase();
        if is_email(&group) {
            push(format!("group:{group}"));
        }
    }
    if let Some(subject) = subject_member.filter(|s| !s.is_empty()) {
        push(subject.to_owned());
    }
    push(ALL_AUTHENTICATED_USERS.to_owned());
    push(ALL_USERS.to_owned());
    members
}

/// The `principal://` name of `subject` in `pool`: what a pool identity is called in headers,
/// metadata and audit.
pub fn pool_principal(pool: &str, subject: &str) -> String {
    format!("principal://{IAM_HOST}{pool}/subject/{subject}")
}

/// The canonical members an identity of `pool` matches: its `principal://…/subject/SUBJECT`,
/// `principalSet://…/group/G` for each of its groups, `principalSet://…/attribute.NAME/VALUE`
/// for each of its attribute values, the pool-wide `principalSet://…/*`, and
/// `allAuthenticatedUsers` and `allUsers`. Never a `user:`, `serviceAccount:`, `group:` or
/// `domain:` member: a pool identity has no Google account, whatever its claims say.
pub fn pool_members(
    pool: &str,
    subject: &str,
    groups: &[String],
    attributes: &[(String, String)],
) -> Vec<Box<str>> {
    let mut members: Vec<Box<str>> = Vec::with_capacity(groups.len() + attributes.len() + 4);
    let mut push = |member: String| {
        if !members.iter().any(|m| **m == *member) {
            members.push(member.into_boxed_str());
        }
    };
    push(pool_principal(pool, subject));
    for group in groups {
        push(format!("principalSet://{IAM_HOST}{pool}/group/{group}"));
    }
    for (name, value) in attributes {
        push(format!(
            "principalSet://{IAM_HOST}{pool}/attribute.{name}/{value}"
        ));
    }
    push(format!("principalSet://{IAM_HOST}{pool}/*"));
    push(ALL_AUTHENTICATED_USERS.to_owned());
    push(ALL_USERS.to_owned());
    members
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(s: &str) -> String {
        match Member::parse(s) {
            Ok(member) => member.to_string(),
            Err(e) => panic!("{s} should parse: {e}"),
        }
    }

    #[test]
    fn every_member_form_parses() {
        let cases = [
            (
                "user:alice@example.com",
                Member::User("alice@example.com".into()),
            ),
            (
                "serviceAccount:svc@demo-project.iam.gserviceaccount.com",
                Member::ServiceAccount("svc@demo-project.iam.gserviceaccount.com".into()),
            ),
            (
                "group:admins@example.com",
                Member::Group("admins@example.com".into()),
            ),
            ("domain:example.com", Member::Domain("example.com".into())),
            ("allUsers", Member::AllUsers),
            ("allAuthenticatedUsers", Member::AllAuthenticatedUsers),
            (
                "principal://iam.googleapis.com/locations/global/workforcePools/p/subject/s",
                Member::Principal(
                    "iam.googleapis.com/locations/global/workforcePools/p/subject/s".into(),
                ),
            ),
            (
                "principalSet://iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/*",
                Member::PrincipalSet(
                    "iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/*"
                        .into(),
                ),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(Member::parse(text).as_ref(), Ok(&expected), "{text}");
            assert_eq!(expected.to_string(), text, "display of {text}");
        }
    }

    #[test]
    fn emails_and_domains_are_lowercased() {
        assert_eq!(
            canonical("user:Alice@Example.COM"),
            "user:alice@example.com"
        );
        assert_eq!(canonical("group:Ops@Example.com"), "group:ops@example.com");
        assert_eq!(canonical("domain:EXAMPLE.com"), "domain:example.com");
        assert_eq!(
            canonical("serviceAccount:SVC@P.iam.gserviceaccount.com"),
            "serviceAccount:svc@p.iam.gserviceaccount.com"
        );
        // Federated identifiers are kept verbatim.
        let subject =
            "principal://iam.googleapis.com/locations/global/workforcePools/p/subject/Alice";
        assert_eq!(canonical(subject), subject);
        assert_eq!(
            Member::User("Bob@Example.com".into()).to_string(),
            "user:bob@example.com"
        );
    }

    #[test]
    fn bad_members_are_refused() {
        type Case = (&'static str, fn(String) -> MemberError);
        let cases: &[Case] = &[
            ("bob", MemberError::UnknownType),
            ("User:alice@example.com", MemberError::UnknownType),
            ("allusers", MemberError::UnknownType),
            (
                "Deleted:user:alice@example.com?uid=1",
                MemberError::UnknownType,
            ),
            ("user:", MemberError::BadEmail),
            ("user:alice", MemberError::BadEmail),
            ("user:@example.com", MemberError::BadEmail),
            ("user:alice@", MemberError::BadEmail),
            ("user:alice@example", MemberError::BadEmail),
            ("user:alice@@example.com", MemberError::BadEmail),
            ("user:a@b@example.com", MemberError::BadEmail),
            ("user:alice@-example.com", MemberError::BadEmail),
            ("user:alice@example-.com", MemberError::BadEmail),
            ("user:alice@example..com", MemberError::BadEmail),
            ("user:alice@example.com.", MemberError::BadEmail),
            ("user:alice@exa_mple.com", MemberError::BadEmail),
            ("serviceAccount:svc", MemberError::BadEmail),
            ("group:admins", MemberError::BadEmail),
            ("domain:", MemberError::BadDomain),
            ("domain:localhost", MemberError::BadDomain),
            ("domain:alice@example.com", MemberError::BadDomain),
            ("principal://", MemberError::EmptyPrincipal),
            ("principalSet://", MemberError::EmptyPrincipal),
            (" user:alice@example.com", MemberError::Whitespace),
            ("user:alice@example.com ", MemberError::Whitespace),
            ("user:al ice@example.com", MemberError::Whitespace),
            ("principal://pool/sub ject", MemberError::Whitespace),
            ("principal://pool/subject/x", MemberError::BadPrincipal),
            ("principalSet://pool/*", MemberError::BadPrincipalSet),
            ("user:alice@example.com\n", MemberError::Whitespace),
        ];
        for (text, variant) in cases {
            assert_eq!(
                Member::parse(text),
                Err(variant(text.to_string())),
                "{text}"
            );
        }
        assert_eq!(Member::parse(""), Err(MemberError::Empty));
    }

    const WORKLOAD: &str =
        "iam.googleapis.com/projects/123456/locations/global/workloadIdentityPools/k8s";
    const WORKFORCE: &str = "iam.googleapis.com/locations/global/workforcePools/staff";

    #[test]
    fn pool_members_of_both_pool_kinds_parse() {
        for pool in [WORKLOAD, WORKFORCE] {
            for (text, set) in [
                (
                    format!("principal://{pool}/subject/system:serviceaccount:default:orders"),
                    false,
                ),
                (
                    format!("principal://{pool}/subject/repo:org/repo:ref:refs/heads/main"),
                    false,
                ),
                (format!("principalSet://{pool}/group/admins"), true),
                (
                    format!("principalSet://{pool}/attribute.repository/org/repo"),
                    true,
                ),
                (format!("principalSet://{pool}/attribute.name_2/x"), true),
                (format!("principalSet://{pool}/*"), true),
            ] {
                let member = Member::parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
                assert_eq!(matches!(member, Member::PrincipalSet(_)), set, "{text}");
                assert_eq!(member.to_string(), text);
            }
        }
    }

    #[test]
    fn malformed_pool_members_are_refused_naming_the_expected_form() {
        let long = "s".repeat(MAX_SUBJECT_LEN + 1);
        let bad_principals = [
            format!("principal://{WORKLOAD}/subject/"),
            format!("principal://{WORKLOAD}/subject/{long}"),
            format!("principal://{WORKLOAD}/group/admins"),
            format!("principal://{WORKLOAD}/*"),
            format!("principal://{WORKLOAD}"),
            "principal://iam.googleapis.com/projects/demo/locations/global/workloadIdentityPools/k8s/subject/a".into(),
            "principal://iam.googleapis.com/projects/1/locations/us/workloadIdentityPools/k8s/subject/a".into(),
            "principal://iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/K8S/subject/a".into(),
            "principal://iam.googleapis.com/locations/global/workforcePools//subject/a".into(),
            "principal://example.com/locations/global/workforcePools/p/subject/a".into(),
        ];
        for text in bad_principals {
            let e = Member::parse(&text).unwrap_err();
            assert_eq!(e, MemberError::BadPrincipal(text.clone()), "{text}");
            assert!(e.to_string().contains("/subject/SUBJECT"), "{e}");
        }
        let bad_sets = [
            format!("principalSet://{WORKLOAD}/subject/a"),
            format!("principalSet://{WORKLOAD}/group/"),
            format!("principalSet://{WORKLOAD}/attribute.Repo/x"),
            format!("principalSet://{WORKLOAD}/attribute./x"),
            format!("principalSet://{WORKLOAD}/attribute.repo/"),
            format!("principalSet://{WORKLOAD}/attribute.{}/x", "a".repeat(101)),
            format!("principalSet://{WORKLOAD}/namespace/default"),
            format!("principalSet://{WORKLOAD}/**"),
            format!("principalSet://{WORKLOAD}"),
        ];
        for text in bad_sets {
            let e = Member::parse(&text).unwrap_err();
            assert_eq!(e, MemberError::BadPrincipalSet(text.clone()), "{text}");
            assert!(e.to_string().contains("/attribute.NAME/VALUE"), "{e}");
        }
    }

    #[test]
    fn deleted_members_parse_and_keep_their_uid() {
        assert_eq!(
            canonical("deleted:user:Alice@Example.com?uid=123456789012345678901"),
            "deleted:user:alice@example.com?uid=123456789012345678901"
        );
        for text in [
            "deleted:serviceAccount:svc@p.iam.gserviceaccount.com?uid=1",
            "deleted:group:ops@example.com?uid=42",
        ] {
            assert_eq!(canonical(text), text);
        }
        for text in [
            "deleted:user:alice@example.com",
            "deleted:user:alice@example.com?uid=",
            "deleted:user:alice@example.com?uid=12a",
            "deleted:domain:example.com?uid=1",
            "deleted:user:alice?uid=1",
            "deleted:",
        ] {
            let e = Member::parse(text).unwrap_err();
            assert_eq!(e, MemberError::BadDeleted(text.into()), "{text}");
            assert!(
                e.to_string().contains("deleted:user:EMAIL?uid=NUMBER"),
                "{e}"
            );
        }
    }

    #[test]
    fn pool_identity_expands_to_its_pool_members_only() {
        let pool = "projects/123456/locations/global/workloadIdentityPools/k8s";
        let members = pool_members(
            pool,
            "system:serviceaccount:default:orders",
            &["admins".into()],
            &[("namespace".into(), "default".into())],
        );
        let p = format!("iam.googleapis.com/{pool}");
        assert_eq!(
            members.iter().map(|m| &**m).collect::<Vec<_>>(),
            [
                format!("principal://{p}/subject/system:serviceaccount:default:orders").as_str(),
                &format!("principalSet://{p}/group/admins"),
                &format!("principalSet://{p}/attribute.namespace/default"),
                &format!("principalSet://{p}/*"),
                "allAuthenticatedUsers",
                "allUsers",
            ]
        );
        // Each is what a policy member of the same text canonicalises to.
        for m in &members[..4] {
            assert_eq!(canonical(m), **m);
        }
        assert!(is_pool(pool));
        assert!(is_pool("locations/global/workforcePools/staff"));
        assert!(!is_pool("locations/global/workforcePools/staff/"));
        assert!(!is_pool(
            "projects/x/locations/global/workloadIdentityPools/k8s"
        ));
    }

    #[test]
    fn domain_labels_and_length_are_bounded() {
        let label63 = "a".repeat(63);
        assert!(Member::parse(&format!("domain:{label63}.com")).is_ok());
        assert!(Member::parse(&format!("domain:{label63}a.com")).is_err());
        let long = format!("{label63}.{label63}.{label63}.{}.com", "a".repeat(57));
        assert_eq!(long.len(), 253);
        assert!(Member::parse(&format!("domain:{long}")).is_ok());
        assert!(Member::parse(&format!("domain:a.{long}")).is_err());
        assert!(Member::parse("domain:xn--bcher-kva.example").is_ok());
    }

    #[test]
    fn member_errors_name_the_member() {
        let message = Member::parse("bob").map(|_| ()).unwrap_err().to_string();
        assert!(message.starts_with("invalid member \"bob\": "), "{message}");
        let message = Member::parse("user:nobody")
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(message.contains("\"user:nobody\""), "{message}");
    }

    #[test]
    fn service_account_email_expands_to_service_account_member() {
        let members = principal_members(
            Some("Builder@Demo-Project.iam.gserviceaccount.com"),
            &[],
            None,
        );
        assert_eq!(
            members.iter().map(|m| &**m).collect::<Vec<_>>(),
            [
                "serviceAccount:builder@demo-project.iam.gserviceaccount.com",
                "domain:demo-project.iam.gserviceaccount.com",
                "allAuthenticatedUsers",
                "allUsers",
            ]
        );
    }

    #[test]
    fn email_expands_to_domain_member() {
        let groups = vec![
            "Admins@Example.com".to_string(),
            "group:ops@example.com".to_string(),
            "admins@example.com".to_string(),
            "not-an-email".to_string(),
        ];
        let members = principal_members(
            Some("Alice@Example.com"),
            &groups,
            Some("principal://iam.googleapis.com/pool/subject/alice"),
        );
        assert_eq!(
            members.iter().map(|m| &**m).collect::<Vec<_>>(),
            [
                "user:alice@example.com",
                "domain:example.com",
                "group:admins@example.com",
                "group:ops@example.com",
                "principal://iam.googleapis.com/pool/subject/alice",
                "allAuthenticatedUsers",
                "allUsers",
            ]
        );
    }

    #[test]
    fn principal_without_email_matches_only_the_public_members() {
        let members = principal_members(None, &[], None);
        assert_eq!(
            members.iter().map(|m| &**m).collect::<Vec<_>>(),
            ["allAuthenticatedUsers", "allUsers"]
        );
        let members = principal_members(Some("not an email"), &[], Some("allUsers"));
        assert_eq!(
            members.iter().map(|m| &**m).collect::<Vec<_>>(),
            ["allUsers", "allAuthenticatedUsers"]
        );
    }

    #[test]
    fn expanded_members_match_canonical_policy_members() {
        let members = principal_members(Some("ALICE@example.com"), &[], None);
        assert!(
            members
                .iter()
                .any(|m| **m == canonical("user:Alice@EXAMPLE.com"))
        );
    }
}
