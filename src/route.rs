//! Which deployment a request targets: Envoy's per-route `context_extensions` first, then the
//! `[[routes]]` host/path table, matched on the normalised path ([`path`]) so that no spelling
//! of a path reaches a less specific route. A request that maps to nothing is denied, never
//! allowed; one whose path or host has no single reading is refused as malformed.

pub mod path;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::config::{RouteConfig, is_segment};

/// A deployment a request targets, with its full resource name built once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Apigee organization.
    pub organization: Arc<str>,
    /// Environment.
    pub environment: Arc<str>,
    /// Deployment (API proxy) name.
    pub deployment: Arc<str>,
    /// `organizations/{o}/environments/{e}/deployments/{d}`.
    pub name: Arc<str>,
    /// The backend's ID-token audience, when the `[[routes]]` entry names one.
    pub backend_audience: Option<Arc<str>>,
}

impl Target {
    /// Builds a target and its resource name.
    pub fn new(organization: &str, environment: &str, deployment: &str) -> Target {
        Target {
            organization: organization.into(),
            environment: environment.into(),
            deployment: deployment.into(),
            name: format!(
                "organizations/{organization}/environments/{environment}/deployments/{deployment}"
            )
            .into(),
            backend_audience: None,
        }
    }

    /// The same target, with the audience of the ID token its backend takes.
    #[must_use]
    pub fn with_backend_audience(mut self, audience: Option<&str>) -> Target {
        self.backend_audience = audience.map(Arc::from);
        self
    }
}

/// Why no deployment could be named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// `context_extensions` names a deployment but is incomplete or malformed.
    #[error("the route's context_extensions are invalid: {0}")]
    BadExtensions(&'static str),
    /// Nothing in the route table matches.
    #[error("no deployment is mapped to this request")]
    Unmapped,
    /// The path (or host) cannot be read one way only, so no route can be chosen safely.
    #[error("{0}")]
    Malformed(#[from] path::PathError),
    /// The host (`:authority`) holds characters no host name has.
    #[error("the host (:authority) is malformed")]
    BadHost,
}

struct Entry {
    host: HostPattern,
    prefix: String,
    target: Target,
}

enum HostPattern {
    Any,
    Exact(String),
    /// `*.example.com` is stored as `.example.com`.
    Suffix(String),
}

impl HostPattern {
    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Any => true,
            HostPattern::Exact(h) => host.eq_ignore_ascii_case(h),
            HostPattern::Suffix(s) => {
                host.len() > s.len()
                    && host.is_char_boundary(host.len() - s.len())
                    && host[host.len() - s.len()..].eq_ignore_ascii_case(s)
            }
        }
    }

    /// Exact hosts beat wildcards, longer wildcards beat shorter, any host comes last.
    fn rank(&self) -> (u8, usize) {
        match self {
            HostPattern::Exact(h) => (2, h.len()),
            HostPattern::Suffix(s) => (1, s.len()),
            HostPattern::Any => (0, 0),
        }
    }
}

/// The resolver: organization default plus the compiled route table.
pub struct Router {
    organization: Arc<str>,
    entries: Vec<Entry>,
    /// Targets named by `context_extensions`, interned so a hot deployment costs no allocation.
    interned: RwLock<Interned>,
}

/// organization → environment → deployment → target; nested so lookups borrow `&str`.
type Interned = HashMap<Arc<str>, HashMap<Arc<str>, HashMap<Arc<str>, Target>>>;

const MAX_INTERNED: usize = 100_000;

impl Router {
    /// Compiles the table; `organization` is the default for routes and extensions that name none.
    pub fn new(organization: &str, routes: &[RouteConfig]) -> Router {
        let mut entries: Vec<Entry> = routes
            .iter()
            .map(|r| Entry {
                host: match r.host.as_deref() {
                    None => HostPattern::Any,
                    Some(h) => match h.strip_prefix('*') {
                        Some(suffix) => HostPattern::Suffix(suffix.to_ascii_lowercase()),
                        None => HostPattern::Exact(h.to_ascii_lowercase()),
                    },
                },
                // Validated at start (`Config::validate`): the prefix has a normal form.
                prefix: path::normalize(&r.path_prefix)
                    .unwrap_or_else(|_| r.path_prefix.to_ascii_lowercase()),
                target: Target::new(
                    r.organization.as_deref().unwrap_or(organization),
                    &r.environment,
                    &r.deployment,
                )
                .with_backend_audience(r.backend_audience.as_deref()),
            })
            .collect();
        // Longest prefix first; among equal prefixes the most specific host first.
        entries.sort_by(|a, b| {
            b.prefix
                .len()
                .cmp(&a.prefix.len())
                .then_with(|| b.host.rank().cmp(&a.host.rank()))
        });
        Router {
            organization: organization.into(),
            entries,
            interned: Default::default(),
        }
    }

    /// Resolves a request. `extension` looks up a `context_extensions` key.
    pub fn resolve<'a>(
        &self,
        extension: impl Fn(&str) -> Option<&'a str>,
        host: &str,
        path: &str,
    ) -> Result<Target, RouteError> {
        let environment = extension("environment");
        let deployment = extension("deployment");
        if environment.is_some() || deployment.is_some() {
            let (Some(environment), Some(deployment)) = (environment, deployment) else {
                return Err(RouteError::BadExtensions(
                    "both `environment` and `deployment` are required",
                ));
            };
            let organization = extension("organization").unwrap_or(&self.organization);
            if !(is_segment(organization) && is_segment(environment) && is_segment(deployment)) {
                return Err(RouteError::BadExtensions(
                    "names may hold only letters, digits, '-', '_' and '.'",
                ));
            }
            return Ok(self.intern(organization, environment, deployment));
        }
        if self.entries.is_empty() {
            return Err(RouteError::Unmapped);
        }
        self.lookup(host, path)?
            .cloned()
            .ok_or(RouteError::Unmapped)
    }

    fn intern(&self, organization: &str, environment: &str, deployment: &str) -> Target {
        if let Ok(map) = self.interned.read() {
            if let Some(t) = map
                .get(organization)
                .and_then(|e| e.get(environment))
                .and_then(|d| d.get(deployment))
            {
                return t.clone();
            }
        }
        let target = Target::new(organization, environment, deployment);
        if let Ok(mut map) = self.interned.write() {
            let size: usize = map
                .values()
                .map(|e| e.values().map(HashMap::len).sum::<usize>())
                .sum();
            if size < MAX_INTERNED {
                map.entry(target.organization.clone())
                    .or_default()
                    .entry(target.environment.clone())
                    .or_default()
                    .insert(target.deployment.clone(), target.clone());
            }
        }
        target
    }

    /// The route-table entry for a host and path: the most specific route for the path's
    /// normal form (query and fragment ignored), or why the request has none safely.
    pub fn lookup(&self, host: &str, raw_path: &str) -> Result<Option<&Target>, RouteError> {
        let host = normal_host(host)?;
        let path = path::normalize(raw_path)?;
        Ok(self
            .entries
            .iter()
            .find(|e| e.host.matches(host) && prefix_matches(&e.prefix, &path))
            .map(|e| &e.target))
    }
}

/// Whole-segment prefix match: `/orders` matches `/orders` and `/orders/1`, never `/ordersx`,
/// so a route never silently covers a sibling API that merely shares a prefix.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
    }
}

/// The host as routes see it: without its port and a trailing `.` (`api.example.com.` is
/// `api.example.com`, and must not fall to a wider route). Characters no host name holds make
/// the request malformed.
fn normal_host(host: &str) -> Result<&str, RouteError> {
    if host
        .bytes()
        .any(|b| b.is_ascii_control() || b >= 0x80 || b" /\\@?#%;,".contains(&b))
    {
        return Err(RouteError::BadHost);
    }
    let host = strip_port(host);
    Ok(host.strip_suffix('.').unwrap_or(host))
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // IPv6 literal: keep the brackets, drop a trailing port.
        return host
            .split_once("]:")
            .map_or(host, |(h, _)| &host[..h.len() + 1]);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: Option<&str>, prefix: &str, deployment: &str) -> RouteConfig {
        RouteConfig {
            host: host.map(str::to_owned),
            path_prefix: prefix.to_owned(),
            organization: None,
            environment: "prod".to_owned(),
            deployment: deployment.to_owned(),
            backend_audience: None,
        }
    }

    fn router() -> Router {
        Router::new(
            "demo",
            &[
                route(None, "/", "catchall"),
                route(Some("api.example.com"), "/orders", "orders"),
                route(Some("api.example.com"), "/orders/admin", "orders-admin"),
                route(Some("*.example.com"), "/orders", "orders-wild"),
            ],
        )
    }

    fn resolve(r: &Router, host: &str, path: &str) -> Option<String> {
        r.resolve(|_| None, host, path)
            .ok()
            .map(|t| t.deployment.to_string())
    }

    #[test]
    fn longest_prefix_wins() {
        let r = router();
        assert_eq!(
            resolve(&r, "api.example.com", "/orders/admin/x").as_deref(),
            Some("orders-admin")
        );
        assert_eq!(
            resolve(&r, "api.example.com", "/orders/1").as_deref(),
            Some("orders")
        );
    }

    #[test]
    fn prefix_matches_whole_segments_only() {
        let r = Router::new("demo", &[route(None, "/orders", "orders")]);
        assert_eq!(resolve(&r, "h", "/orders").as_deref(), Some("orders"));
        assert_eq!(resolve(&r, "h", "/ordersx"), None);
    }

    #[test]
    fn query_is_ignored_and_port_stripped() {
        let r = router();
        assert_eq!(
            resolve(&r, "API.example.com:8443", "/orders?x=/admin").as_deref(),
            Some("orders")
        );
    }

    #[test]
    fn exact_host_beats_wildcard_and_wildcard_needs_a_label() {
        let r = router();
        assert_eq!(
            resolve(&r, "eu.example.com", "/orders").as_deref(),
            Some("orders-wild")
        );
        assert_eq!(
            resolve(&r, "example.com", "/orders").as_deref(),
            Some("catchall")
        );
    }

    #[test]
    fn unmapped_request_is_an_error() {
        let r = Router::new(
            "demo",
            &[route(Some("api.example.com"), "/orders", "orders")],
        );
        assert_eq!(
            r.resolve(|_| None, "other.com", "/orders"),
            Err(RouteError::Unmapped)
        );
    }

    #[test]
    fn context_extensions_win_and_default_the_organization() {
        let r = router();
        let ext = |k: &str| match k {
            "environment" => Some("test"),
            "deployment" => Some("pets"),
            _ => None,
        };
        let t = r.resolve(ext, "api.example.com", "/orders").unwrap();
        assert_eq!(
            &*t.name,
            "organizations/demo/environments/test/deployments/pets"
        );
        // Interned: the same target comes back.
        assert_eq!(r.resolve(ext, "", "/").unwrap(), t);
    }

    #[test]
    fn incomplete_or_malformed_extensions_are_refused() {
        let r = router();
        let only_dep = |k: &str| (k == "deployment").then_some("pets");
        assert!(matches!(
            r.resolve(only_dep, "", "/"),
            Err(RouteError::BadExtensions(_))
        ));
        let bad = |k: &str| match k {
            "environment" => Some("prod"),
            "deployment" => Some("../admin"),
            _ => None,
        };
        assert!(matches!(
            r.resolve(bad, "", "/"),
            Err(RouteError::BadExtensions(_))
        ));
    }
}

#[cfg(test)]
mod properties {
    //! No spelling of a path ever maps to a less specific route than its normal form.

    use proptest::prelude::*;

    use super::*;

    /// Nested routes, each more specific than the last, plus a sibling that shares a prefix.
    fn router() -> Router {
        let route = |prefix: &str, deployment: &str| RouteConfig {
            host: None,
            path_prefix: prefix.to_owned(),
            organization: None,
            environment: "prod".to_owned(),
            deployment: deployment.to_owned(),
            backend_audience: None,
        };
        Router::new(
            "demo",
            &[
                route("/", "root"),
                route("/orders", "orders"),
                route("/orders/admin", "orders-admin"),
                route("/orders/admin/keys", "orders-admin-keys"),
                route("/orders-internal", "orders-internal"),
            ],
        )
    }

    const SEGMENTS: &[&str] = &["orders", "admin", "keys", "orders-internal", "x", "1"];

    /// One way to write a segment that a lenient backend reads as `segment`.
    fn spell(segment: &'static str) -> impl Strategy<Value = String> {
        (
            proptest::collection::vec((any::<bool>(), 0..4u8), segment.len()),
            0..4u8,
        )
            .prop_map(move |(chars, prefix)| {
                let mut out = String::new();
                // Noise before the segment that resolves to nothing.
                match prefix {
                    0 => {}
                    1 => out.push_str("./"),
                    2 => out.push_str("junk/../"),
                    _ => out.push('/'),
                }
                for (c, (upper, encoding)) in segment.chars().zip(chars) {
                    let c = if upper { c.to_ascii_uppercase() } else { c };
                    match encoding {
                        0 => out.push_str(&format!("%{:02X}", c as u32)),
                        1 => out.push_str(&format!("%{:02x}", c as u32)),
                        _ => out.push(c),
                    }
                }
                out
            })
    }

    /// A normal path and a spelling of it.
    fn path_and_spelling() -> impl Strategy<Value = (String, String)> {
        proptest::collection::vec(proptest::sample::select(SEGMENTS), 0..5)
            .prop_flat_map(|segments| {
                let spelled: Vec<_> = segments.iter().map(|s| spell(s)).collect();
                (Just(segments), spelled, any::<bool>(), any::<bool>())
            })
            .prop_map(|(segments, spelled, slashes, trailing)| {
                let normal = format!("/{}", segments.join("/"));
                let sep = if slashes { "//" } else { "/" };
                let mut spelling = format!("{sep}{}", spelled.join(sep));
                if trailing {
                    spelling.push('/');
                }
                (normal, spelling)
            })
    }

    fn depth(r: &Router, target: &Target) -> usize {
        r.entries
            .iter()
            .find(|e| &e.target == target)
            .map_or(0, |e| e.prefix.len())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn no_spelling_reaches_a_less_specific_route((normal, spelling) in path_and_spelling()) {
            let r = router();
            let by_normal = r.lookup("h", &normal).unwrap().cloned();
            match r.lookup("h", &spelling) {
                // Refused outright: never routed at all.
                Err(_) => {}
                Ok(by_spelling) => {
                    let (a, b) = (by_normal.unwrap(), by_spelling.cloned().unwrap());
                    prop_assert!(
                        depth(&r, &b) >= depth(&r, &a),
                        "{spelling:?} → {} but {normal:?} → {}", b.deployment, a.deployment
                    );
                    prop_assert_eq!(a, b);
                }
            }
        }

        #[test]
        fn arbitrary_paths_never_panic_and_normal_forms_are_fixed_points(raw in "\\PC{0,40}") {
            if let Ok(normal) = path::normalize(&raw) {
                prop_assert_eq!(path::normalize(&normal), Ok(normal.clone()));
                prop_assert!(normal.starts_with('/'));
            }
        }

        #[test]
        fn ambiguous_bytes_anywhere_are_refused(
            (_, spelling) in path_and_spelling(),
            at in any::<proptest::sample::Index>(),
            bad in proptest::sample::select(&["%2f", "%2F", "%5c", "\\\\", ";", "%3b", "%25", "%0a", " ", "%zz"][..]),
        ) {
            let i = at.index(spelling.len() + 1);
            // Insert where it cannot split a %xx escape.
            if spelling[..i].ends_with('%') || spelling[..i.saturating_sub(1)].ends_with('%') {
                return Ok(());
            }
            let bad_path = format!("{}{bad}{}", &spelling[..i], &spelling[i..]);
            prop_assert!(path::normalize(&bad_path).is_err(), "{bad_path:?} was accepted");
        }
    }
}
