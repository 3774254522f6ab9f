//! Members (principals) of IAM bindings: parsing and the canonical string form of
//! `user:`, `serviceAccount:`, `group:`, `domain:`, `allUsers`, `allAuthenticatedUsers`,
//! `principal://` and `principalSet://`, and the member set an authenticated principal matches.

use std::fmt;

const ALL_USERS: &str = "allUsers";
const ALL_AUTHENTICATED_USERS: &str = "allAuthenticatedUsers";
const SERVICE_ACCOUNT_SUFFIX: &str = ".gserviceaccount.com";
const MAX_DOMAIN_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

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
    /// `principal://IDENTIFIER`: a single federated identity.
    Principal(String),
    /// `principalSet://IDENTIFIER`: a set of federated identities.
    PrincipalSet(String),
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
            principal(rest).map(Member::Principal)
        } else if let Some(rest) = s.strip_prefix("principalSet://") {
            principal(rest).map(Member::PrincipalSet)
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
        }
    }
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
        assert_eq!(
            canonical("principal://Pool/Subject"),
            "principal://Pool/Subject"
        );
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
            ("deleted:user:alice@example.com", MemberError::UnknownType),
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
