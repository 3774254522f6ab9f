//! Envoy's `CheckRequest` → the few things a decision needs, borrowed, not copied.
//! Envoy sends header keys lowercased in `headers`, or (with `encode_raw_headers`) as bytes in
//! `header_map`; both are read, and names are matched without regard to case either way.

use std::collections::HashMap;

use envoy_types::ext_authz::v3::pb::CheckRequest;

use crate::authn::bearer::{self, BearerError};

/// What a decision needs from a Check.
pub struct AuthzRequest<'a> {
    /// The bearer token, or why there is none.
    pub token: Result<&'a str, BearerError>,
    /// The caller's `Authorization` value as sent (for `x-forwarded-authorization`).
    pub authorization: Option<&'a str>,
    /// `:authority` / host.
    pub host: &'a str,
    /// `:path`, with its query.
    pub path: &'a str,
    /// `x-request-id`, for the span.
    pub request_id: &'a str,
    /// The route's `context_extensions`.
    pub extensions: Option<&'a HashMap<String, String>>,
}

static EMPTY: std::sync::LazyLock<HashMap<String, String>> = std::sync::LazyLock::new(HashMap::new);

impl<'a> AuthzRequest<'a> {
    /// Reads a `CheckRequest`.
    pub fn from_check(check: &'a CheckRequest) -> AuthzRequest<'a> {
        let attributes = check.attributes.as_ref();
        let http = attributes
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        let extensions = attributes.map(|a| &a.context_extensions);
        let Some(http) = http else {
            return AuthzRequest {
                token: Err(BearerError::Missing),
                authorization: None,
                host: "",
                path: "",
                request_id: "",
                extensions,
            };
        };
        let headers = Headers {
            map: &http.headers,
            raw: http
                .header_map
                .as_ref()
                .map(|m| m.headers.as_slice())
                .unwrap_or(&[]),
        };
        let only = headers.only("authorization");
        let token = match only {
            Ok(Some(v)) => bearer::parse(v),
            Ok(None) => Err(BearerError::Missing),
            Err(()) => Err(BearerError::Multiple),
        };
        let host = if http.host.is_empty() {
            headers
                .first(":authority")
                .or_else(|| headers.first("host"))
                .unwrap_or("")
        } else {
            &http.host
        };
        let path = if http.path.is_empty() {
            headers.first(":path").unwrap_or("")
        } else {
            &http.path
        };
        let request_id = headers.first("x-request-id").unwrap_or(&http.id);
        AuthzRequest {
            token,
            authorization: only.ok().flatten(),
            host,
            path,
            request_id,
            extensions,
        }
    }

    /// A `context_extensions` value.
    pub fn extension(&self, key: &str) -> Option<&'a str> {
        self.extensions
            .unwrap_or(&EMPTY)
            .get(key)
            .map(String::as_str)
    }
}

struct Headers<'a> {
    map: &'a HashMap<String, String>,
    raw: &'a [envoy_types::pb::envoy::config::core::v3::HeaderValue],
}

impl<'a> Headers<'a> {
    /// Every value of a header, whatever the case of its name.
    fn all(&self, name: &'static str) -> impl Iterator<Item = &'a str> + use<'a> {
        let exact = self.map.get(name).map(String::as_str);
        let map = self.map;
        // Keys from Envoy are lowercase; a mixed-case key (another client) is found by scanning.
        let others = map
            .iter()
            .filter(move |(k, _)| k.as_str() != name && k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str());
        let raw = self
            .raw
            .iter()
            .filter(move |h| h.key.eq_ignore_ascii_case(name))
            .map(|h| {
                if h.raw_value.is_empty() {
                    h.value.as_str()
                } else {
                    // Non-UTF-8 bytes cannot be a valid bearer token; they become a malformed value.
                    std::str::from_utf8(&h.raw_value).unwrap_or("\u{fffd}")
                }
            });
        exact.into_iter().chain(others).chain(raw)
    }

    fn first(&self, name: &'static str) -> Option<&'a str> {
        self.all(name).next()
    }

    /// The single value of a header; `Err` when it appears more than once.
    fn only(&self, name: &'static str) -> Result<Option<&'a str>, ()> {
        let mut values = self.all(name);
        let first = values.next();
        if values.next().is_some() {
            Err(())
        } else {
            Ok(first)
        }
    }
}
