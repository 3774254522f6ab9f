//! Which deployment a request targets: Envoy's per-route `context_extensions` first, then the
//! `[[routes]]` host/path table, matched on the normalised path ([`path`]) so that no spelling
//! of a path reaches a less specific route. A request that maps to nothing is denied, never
//! allowed; one whose path or host has no single reading is refused as malformed.

pub mod path;

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
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
    /// The host (`:authority`) is not a host name, an IPv4 address or a bracketed IPv6 address
    /// with an optional port.
    #[error(
        "the host (:authority) is malformed: it must be a host name, an IPv4 address or a bracketed IPv6 address, with an optional port from 1 to 65535"
    )]
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
                        None => HostPattern::Exact(pattern_host(h)),
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
            .find(|e| e.host.matches(&host) && prefix_matches(&e.prefix, &path))
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
/// `api.example.com`, and must not fall to a wider route), an IPv6 literal in its one canonical
/// spelling. Anything else that is not a host name, a dotted-quad IPv4 address or a bracketed
/// IPv6 literal, with an optional port from 1 to 65535, is malformed: a spelling a route was not
/// written for must not fall to a catch-all route. An empty host (none sent) matches only routes
/// that name no host.
fn normal_host(host: &str) -> Result<Cow<'_, str>, RouteError> {
    if host.is_empty() {
        return Ok(Cow::Borrowed(host));
    }
    let name = strip_port(host)?;
    if let Some(literal) = name.strip_prefix('[') {
        let address = literal
            .strip_suffix(']')
            .and_then(|a| a.parse::<Ipv6Addr>().ok())
            .ok_or(RouteError::BadHost)?;
        return Ok(Cow::Owned(format!("[{address}]")));
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    if !is_host_name(name) {
        return Err(RouteError::BadHost);
    }
    Ok(Cow::Borrowed(name))
}

/// The host without its port; the port, when present, must be a number from 1 to 65535 written
/// without sign or leading zeros (`:0443`, `:+443`, `:` and `:443:443` have no single reading).
fn strip_port(host: &str) -> Result<&str, RouteError> {
    let (name, port) = if host.starts_with('[') {
        match host.rfind(']') {
            Some(end) => match &host[end + 1..] {
                "" => (host, None),
                rest => (
                    &host[..=end],
                    Some(rest.strip_prefix(':').ok_or(RouteError::BadHost)?),
                ),
            },
            None => return Err(RouteError::BadHost),
        }
    } else {
        match host.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        }
    };
    match port {
        None => Ok(name),
        Some(port)
            if (1..=5).contains(&port.len())
                && port.bytes().all(|b| b.is_ascii_digit())
                && !port.starts_with('0')
                && port.parse::<u32>().is_ok_and(|p| p <= 65_535) =>
        {
            Ok(name)
        }
        Some(_) => Err(RouteError::BadHost),
    }
}

/// A DNS-style name (labels of letters, digits, `-` and `_`, none empty) or a dotted-quad IPv4
/// address in its canonical spelling. A name whose last label is numeric must be the address:
/// `127.1`, `0x7f.0.0.1` and `127.0.0.01` are read differently by different resolvers.
fn is_host_name(name: &str) -> bool {
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    let labels_ok = name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if !labels_ok {
        return false;
    }
    let last = name.rsplit('.').next().unwrap_or(name);
    if last.bytes().all(|b| b.is_ascii_digit()) {
        // `Ipv4Addr` parses only four decimal octets without leading zeros.
        return name.parse::<Ipv4Addr>().is_ok();
    }
    true
}

/// A configured exact host in the form [`normal_host`] gives requests: no trailing `.`, an IPv6
/// literal canonical, lower case.
fn pattern_host(host: &str) -> String {
    let host = host.strip_suffix('.').unwrap_or(host);
    match normal_host(host) {
        Ok(normal) if host.starts_with('[') => normal.to_ascii_lowercase(),
        _ => host.to_ascii_lowercase(),
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
    fn malformed_hosts_are_refused_not_routed() {
        let r = router();
        for host in [
            "api.example.com..",
            "api.example.com:abc",
            "api.example.com:443:443",
            "api.example.com:+443",
            "api.example.com:-1",
            "api.example.com:",
            "api.example.com.:",
            "api.example.com:65536",
            "api.example.com:4294967297",
            "api.example.com:0",
            "api.example.com:0443",
            "api.example.com: 443",
            ".api.example.com",
            "api..example.com",
            ".",
            "..",
            ":443",
            "api.example.com*",
            "api.example.com@evil.test",
            "api.example.com/x",
            "api.example.com,evil.test",
            "api.example.com\0",
            "api.example.com ",
            "caf\u{e9}.example.com",
            "[::1",
            "[::1]443",
            "[::1]:",
            "[::1]:0",
            "[::1]:443:443",
            "[zz]",
            "[]",
            "[v1.x]",
            "[::1%25eth0]",
            "[[::1]]",
            "::1",
            "::1:443",
            "127.0.0.01",
            "127.1",
            "256.0.0.1",
            "0x7f.0.0.1",
            "1.2.3.4.5",
        ]
        .map(str::to_owned)
        .into_iter()
        // A label past 63 bytes, a name past 253.
        .chain(["a".repeat(64), format!("{}com", "a.".repeat(127))])
        {
            assert_eq!(
                r.resolve(|_| None, &host, "/orders"),
                Err(RouteError::BadHost),
                "{host:?}"
            );
        }
    }

    #[test]
    fn well_formed_hosts_route_by_their_one_spelling() {
        let r = router();
        for host in [
            "api.example.com",
            "API.Example.com.",
            "api.example.com:1",
            "api.example.com:65535",
            "api.example.com.:8443",
        ] {
            assert_eq!(
                resolve(&r, host, "/orders").as_deref(),
                Some("orders"),
                "{host}"
            );
        }
        for host in [
            "",
            "localhost",
            "svc_1.internal",
            "127.0.0.1:9001",
            "0.0.0.0",
            "[::1]",
            "[::1]:443",
            "[2001:db8::1]",
        ] {
            assert_eq!(
                resolve(&r, host, "/").as_deref(),
                Some("catchall"),
                "{host}"
            );
        }
        // An IPv6 literal meets its route however it is spelled, in the table or the request.
        let v6 = Router::new(
            "demo",
            &[
                route(None, "/", "catchall"),
                route(Some("[2001:DB8:0:0:0:0:0:1]"), "/", "v6"),
            ],
        );
        for host in ["[2001:db8::1]", "[2001:0db8::0001]:443", "[2001:DB8:0::1]"] {
            assert_eq!(resolve(&v6, host, "/").as_deref(), Some("v6"), "{host}");
        }
    }

    #[test]
    fn encoded_sub_delimiters_meet_the_route_of_their_decoded_form() {
        let r = Router::new(
            "demo",
            &[
                route(None, "/api", "public"),
                route(None, "/api/v1/orders:cancel", "cancel"),
                // Written encoded in the configuration: decoded at load.
                route(None, "/api/users/%40admin", "users-admin"),
            ],
        );
        for (path, deployment) in [
            ("/api/v1/orders:cancel", "cancel"),
            ("/api/v1/orders%3Acancel", "cancel"),
            ("/api/v1/orders%3acancel/1", "cancel"),
            ("/api/users/@admin", "users-admin"),
            ("/api/users/%40admin", "users-admin"),
            ("/api/users/%40ADMIN/keys", "users-admin"),
            ("/api/users/alice%40example.com", "public"),
            ("/api/v1/orders:cancelled", "public"),
        ] {
            assert_eq!(
                resolve(&r, "h", path).as_deref(),
                Some(deployment),
                "{path}"
            );
        }
    }

    #[test]
    fn dot_segments_on_the_table_are_refused_not_resolved() {
        let r = Router::new(
            "demo",
            &[
                route(None, "/api", "public"),
                route(None, "/api/admin", "admin"),
            ],
        );
        for path in [
            "/api/admin/..",
            "/api/admin/%2e%2e",
            "/api/admin/.%2E",
            "/api/./admin",
        ] {
            assert_eq!(
                r.resolve(|_| None, "h", path),
                Err(RouteError::Malformed(path::PathError::DotSegment)),
                "{path}"
            );
        }
    }

    #[test]
    fn context_extensions_do_not_read_the_path_or_host() {
        // Envoy's route named the deployment; no spelling of the path can move it elsewhere.
        let r = router();
        let ext = |k: &str| match k {
            "environment" => Some("prod"),
            "deployment" => Some("pets"),
            _ => None,
        };
        for (host, path) in [
            ("api.example.com", "/orders/admin/.."),
            ("api.example.com..", "/orders/%2e%2e"),
        ] {
            assert_eq!(&*r.resolve(ext, host, path).unwrap().deployment, "pets");
        }
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
                route("/orders/admin/keys:rotate", "orders-admin-rotate"),
                route("/orders/@me", "orders-me"),
            ],
        )
    }

    const SEGMENTS: &[&str] = &[
        "orders",
        "admin",
        "keys",
        "orders-internal",
        "x",
        "1",
        "keys:rotate",
        "@me",
        "a+b=c",
    ];

    /// One way to write a segment that a lenient backend reads as `segment`.
    fn spell(segment: &'static str) -> impl Strategy<Value = String> {
        (
            proptest::collection::vec((any::<bool>(), 0..4u8), segment.len()),
            0..8u8,
        )
            .prop_map(move |(chars, prefix)| {
                let mut out = String::new();
                // Noise before the segment: an empty segment (merged), or a dot segment, which
                // some backends resolve and so is refused.
                match prefix {
                    0 => out.push_str("./"),
                    1 => out.push_str("junk/../"),
                    2 | 3 => out.push('/'),
                    _ => {}
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
            bad in proptest::sample::select(&[
                "%2f", "%2F", "%5c", "\\\\", ";", "%3b", "%25", "%0a", " ", "%zz",
                "/./", "/../", "/%2e/", "/%2E%2e/", "/.%2E/",
            ][..]),
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
