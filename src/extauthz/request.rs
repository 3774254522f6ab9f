//! Envoy's `CheckRequest` → the few things a decision needs, borrowed, not copied: from the
//! request's bytes ([`AuthzRequest::from_wire`], the gRPC path, through [`super::wire`]) or from
//! a decoded message ([`AuthzRequest::from_check`]); both read the same way.
//! Envoy sends header keys lowercased in `headers`, or (with `encode_raw_headers`) as bytes in
//! `header_map`; both are read, and names are matched without regard to case either way.

use envoy_types::ext_authz::v3::pb::CheckRequest;

use super::wire::{self, WireError};
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
    extensions: Extensions<'a>,
}

impl<'a> AuthzRequest<'a> {
    /// Reads a `CheckRequest` from its protobuf encoding.
    pub fn from_wire(bytes: &'a [u8]) -> Result<AuthzRequest<'a>, WireError> {
        wire::read(bytes).map(Collected::into_request)
    }

    /// Reads a decoded `CheckRequest`.
    pub fn from_check(check: &'a CheckRequest) -> AuthzRequest<'a> {
        let mut out = Collected::default();
        let Some(attributes) = &check.attributes else {
            return out.into_request();
        };
        for (k, v) in &attributes.context_extensions {
            out.extensions.insert(k, v);
        }
        let Some(http) = attributes.request.as_ref().and_then(|r| r.http.as_ref()) else {
            return out.into_request();
        };
        out.has_http = true;
        (out.id, out.path, out.host) = (&http.id, &http.path, &http.host);
        for (k, v) in &http.headers {
            if let Some(header) = Wanted::of(k.as_bytes()) {
                out.headers.map_entry(header, k, v);
            }
        }
        for h in http.header_map.iter().flat_map(|m| &m.headers) {
            if let Some(header) = Wanted::of(h.key.as_bytes()) {
                let value = if h.raw_value.is_empty() {
                    h.value.as_str()
                } else {
                    // Non-UTF-8 bytes cannot be a valid bearer token; they become a malformed value.
                    std::str::from_utf8(&h.raw_value).unwrap_or("\u{fffd}")
                };
                out.headers.raw_entry(header, value);
            }
        }
        out.into_request()
    }

    /// A `context_extensions` value.
    pub fn extension(&self, key: &str) -> Option<&'a str> {
        self.extensions.get(key)
    }
}

/// The request headers a decision reads.
#[derive(Clone, Copy)]
pub(super) enum Wanted {
    Authorization,
    Authority,
    Host,
    Path,
    RequestId,
}

impl Wanted {
    const ALL: [(Wanted, &'static str); 5] = [
        (Wanted::Authorization, "authorization"),
        (Wanted::Authority, ":authority"),
        (Wanted::Host, "host"),
        (Wanted::Path, ":path"),
        (Wanted::RequestId, "x-request-id"),
    ];

    /// The header a name is, whatever its case.
    pub(super) fn of(name: &[u8]) -> Option<Wanted> {
        Wanted::ALL
            .iter()
            .find(|(_, n)| n.len() == name.len() && n.as_bytes().eq_ignore_ascii_case(name))
            .map(|(w, _)| *w)
    }

    fn name(self) -> &'static str {
        Wanted::ALL[self as usize].1
    }
}

/// Every value one header was given, as far as a decision cares: the lowercase key's value in
/// `headers`, other spellings of the key there, and `header_map`'s entries.
#[derive(Default, Clone, Copy)]
struct Seen<'a> {
    exact: Option<&'a str>,
    /// Another spelling's key and value (the least such key).
    other: Option<(&'a str, &'a str)>,
    /// Whether a second other spelling appeared.
    others: bool,
    raw_first: Option<&'a str>,
    raw_count: usize,
}

impl<'a> Seen<'a> {
    fn first(&self) -> Option<&'a str> {
        self.exact.or(self.other.map(|(_, v)| v)).or(self.raw_first)
    }

    /// The single value; `Err` when there is more than one.
    fn only(&self) -> Result<Option<&'a str>, ()> {
        let count = usize::from(self.exact.is_some())
            + usize::from(self.other.is_some())
            + usize::from(self.others)
            + self.raw_count;
        if count > 1 { Err(()) } else { Ok(self.first()) }
    }
}

/// The wanted headers seen so far.
#[derive(Default)]
pub(super) struct Headers<'a> {
    seen: [Seen<'a>; Wanted::ALL.len()],
}

impl<'a> Headers<'a> {
    /// An entry of `headers` (a map: a key given again replaces its value).
    pub(super) fn map_entry(&mut self, header: Wanted, key: &'a str, value: &'a str) {
        let seen = &mut self.seen[header as usize];
        if key == header.name() {
            seen.exact = Some(value);
            return;
        }
        // Of several other spellings, the least key's value: the same whatever the order of
        // the entries (a decoded map has none).
        match seen.other {
            None => seen.other = Some((key, value)),
            Some((k, _)) if k == key => seen.other = Some((key, value)),
            Some((k, _)) => {
                seen.others = true;
                if key < k {
                    seen.other = Some((key, value));
                }
            }
        }
    }

    /// An entry of `header_map` (a list: every entry counts).
    pub(super) fn raw_entry(&mut self, header: Wanted, value: &'a str) {
        let seen = &mut self.seen[header as usize];
        seen.raw_first = seen.raw_first.or(Some(value));
        seen.raw_count += 1;
    }

    fn get(&self, header: Wanted) -> &Seen<'a> {
        &self.seen[header as usize]
    }
}

/// `context_extensions`: a few pairs kept inline; a key given again replaces its value.
#[derive(Default)]
pub(super) struct Extensions<'a> {
    inline: [(&'a str, &'a str); 6],
    len: usize,
    more: Vec<(&'a str, &'a str)>,
}

impl<'a> Extensions<'a> {
    pub(super) fn insert(&mut self, key: &'a str, value: &'a str) {
        if self.len < self.inline.len() {
            self.inline[self.len] = (key, value);
            self.len += 1;
        } else {
            self.more.push((key, value));
        }
    }

    /// The last value given for `key`.
    fn get(&self, key: &str) -> Option<&'a str> {
        self.more
            .iter()
            .rev()
            .chain(self.inline[..self.len].iter().rev())
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
    }
}

/// What the reader collected, before it is made into an [`AuthzRequest`].
#[derive(Default)]
pub(super) struct Collected<'a> {
    /// Whether `attributes.request.http` was there at all.
    pub(super) has_http: bool,
    pub(super) id: &'a str,
    pub(super) path: &'a str,
    pub(super) host: &'a str,
    pub(super) headers: Headers<'a>,
    pub(super) extensions: Extensions<'a>,
}

impl<'a> Collected<'a> {
    fn into_request(self) -> AuthzRequest<'a> {
        if !self.has_http {
            return AuthzRequest {
                token: Err(BearerError::Missing),
                authorization: None,
                host: "",
                path: "",
                request_id: "",
                extensions: self.extensions,
            };
        }
        let headers = &self.headers;
        let only = headers.get(Wanted::Authorization).only();
        let token = match only {
            Ok(Some(v)) => bearer::parse(v),
            Ok(None) => Err(BearerError::Missing),
            Err(()) => Err(BearerError::Multiple),
        };
        let host = if self.host.is_empty() {
            headers
                .get(Wanted::Authority)
                .first()
                .or_else(|| headers.get(Wanted::Host).first())
                .unwrap_or("")
        } else {
            self.host
        };
        let path = if self.path.is_empty() {
            headers.get(Wanted::Path).first().unwrap_or("")
        } else {
            self.path
        };
        let request_id = headers.get(Wanted::RequestId).first().unwrap_or(self.id);
        AuthzRequest {
            token,
            authorization: only.ok().flatten(),
            host,
            path,
            request_id,
            extensions: self.extensions,
        }
    }
}
