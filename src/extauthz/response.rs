//! [`Decision`] → Envoy's `CheckResponse` (DESIGN §4). A denial is a successful reply with a
//! non-OK status and an explicit HTTP status, headers and a Google-style JSON body; an allow
//! overwrites `x-verifyiam-principal` so a client's copy never reaches the backend.

use std::collections::HashMap;

use bytes::BufMut;
use envoy_types::ext_authz::v3::pb::{
    CheckResponse, DeniedHttpResponse, HeaderAppendAction, HeaderValue, HeaderValueOption,
    HttpResponse, HttpStatus, HttpStatusCode, OkHttpResponse,
};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use envoy_types::pb::google::rpc;

use crate::authz::{Decision, Denial, Reason};
use crate::backend::IdToken;

/// The header that tells the backend who called.
pub const PRINCIPAL_HEADER: &str = "x-verifyiam-principal";
/// On a denied request that continues to the backend (continue on error): `denied`.
pub const RESULT_HEADER: &str = "x-verifyiam-result";
/// On a denied request that continues to the backend: the denial's reason label.
pub const REASON_HEADER: &str = "x-verifyiam-reason";
/// On an allow decided by the local store: the dynamic-metadata key naming the level whose
/// policy granted, `project` or `deployment`.
pub const LEVEL_KEY: &str = "level";
/// Where the caller's own `Authorization` goes when the backend gets the gateway's ID token.
pub const FORWARDED_AUTHORIZATION_HEADER: &str = "x-forwarded-authorization";
const REALM: &str = "verifyiam";

/// gRPC codes used in `CheckResponse.status`.
mod code {
    pub const OK: i32 = 0;
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const UNAVAILABLE: i32 = 14;
    pub const UNAUTHENTICATED: i32 = 16;
}

fn header(key: &str, value: impl Into<String>) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value: value.into(),
            ..Default::default()
        }),
        // The enum's default is append; Envoy versions differ on the deprecated `append`.
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

fn string(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    }
}

fn metadata(
    decision: &str,
    reason: &str,
    principal: Option<&str>,
    deployment: Option<&str>,
    level: Option<&str>,
) -> Struct {
    let mut fields = HashMap::with_capacity(5);
    fields.insert("decision".to_owned(), string(decision));
    fields.insert("reason".to_owned(), string(reason));
    if let Some(p) = principal {
        fields.insert("principal".to_owned(), string(p));
    }
    if let Some(d) = deployment {
        fields.insert("deployment".to_owned(), string(d));
    }
    if let Some(l) = level {
        fields.insert(LEVEL_KEY.to_owned(), string(l));
    }
    Struct { fields }
}

/// Google's JSON error body, written in one string (a denial is answered often).
pub fn error_body(http: u16, status: &str, message: &str) -> String {
    use std::fmt::Write as _;
    let mut body = String::with_capacity(64 + message.len() + status.len());
    let _ = write!(body, "{{\"error\":{{\"code\":{http},\"message\":");
    json_string(&mut body, message);
    body.push_str(",\"status\":");
    json_string(&mut body, status);
    body.push_str("}}");
    body
}

/// Appends `s` as a JSON string.
fn json_string(out: &mut String, s: &str) {
    use std::fmt::Write as _;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Quotes a value for an auth-param, dropping what cannot appear in a quoted-string.
fn quoted(s: &str) -> String {
    s.chars()
        .filter(|c| *c != '"' && *c != '\\' && !c.is_control())
        .collect()
}

/// The `CheckResponse` for a decision; `scope` is the required scope (named on
/// `insufficient_scope`).
pub fn check_response(decision: &Decision, scope: &str) -> CheckResponse {
    match decision {
        Decision::Allow {
            principal,
            target,
            level,
        } => CheckResponse {
            status: Some(rpc::Status {
                code: code::OK,
                ..Default::default()
            }),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers: vec![header(PRINCIPAL_HEADER, &*principal.id)],
                // The client's own copies of the continue-on-error marks never reach the backend.
                headers_to_remove: vec![RESULT_HEADER.to_owned(), REASON_HEADER.to_owned()],
                ..Default::default()
            })),
            dynamic_metadata: Some(metadata(
                "allow",
                "ok",
                Some(&principal.id),
                Some(&target.name),
                level.map(crate::iam::Level::as_str),
            )),
        },
        Decision::Deny(denial) => denied(denial, scope),
    }
}

/// What [`check_response`] builds for an allow, written straight into `out` as protobuf bytes:
/// no message, map or string is made on the way.
pub fn encode_allow(principal: &str, deployment: &str, level: Option<&str>, out: &mut impl BufMut) {
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
    fn str_len(tag: u32, s: &str) -> usize {
        key_len(tag) + encoded_len_varint(s.len() as u64) + s.len()
    }
    fn msg_len(tag: u32, inner: usize) -> usize {
        key_len(tag) + encoded_len_varint(inner as u64) + inner
    }
    fn put_head(tag: u32, len: usize, out: &mut impl BufMut) {
        encode_key(tag, WireType::LengthDelimited, out);
        encode_varint(len as u64, out);
    }
    fn put_str(tag: u32, s: &str, out: &mut impl BufMut) {
        put_head(tag, s.len(), out);
        out.put_slice(s.as_bytes());
    }
    let fields = [
        Some(("decision", "allow")),
        Some(("reason", "ok")),
        Some(("principal", principal)),
        Some(("deployment", deployment)),
        level.map(|l| (LEVEL_KEY, l)),
    ];
    // HeaderValueOption { header: HeaderValue { key, value }, append_action }.
    let header = str_len(1, PRINCIPAL_HEADER) + str_len(2, principal);
    let option = msg_len(1, header) + key_len(3) + 1;
    let ok = msg_len(2, option) + str_len(5, RESULT_HEADER) + str_len(5, REASON_HEADER);
    // Struct { fields: map<string, Value { string_value }> }.
    let entry = |(k, v): (&str, &str)| str_len(1, k) + msg_len(2, str_len(3, v));
    let metadata: usize = fields.iter().flatten().map(|f| msg_len(1, entry(*f))).sum();
    // status: an empty google.rpc.Status (code OK).
    put_head(1, 0, out);
    put_head(3, ok, out);
    put_head(2, option, out);
    put_head(1, header, out);
    put_str(1, PRINCIPAL_HEADER, out);
    put_str(2, principal, out);
    encode_key(3, WireType::Varint, out);
    encode_varint(HeaderAppendAction::OverwriteIfExistsOrAdd as u64, out);
    put_str(5, RESULT_HEADER, out);
    put_str(5, REASON_HEADER, out);
    put_head(4, metadata, out);
    for (k, v) in fields.into_iter().flatten() {
        put_head(1, entry((k, v)), out);
        put_str(1, k, out);
        put_head(2, str_len(3, v), out);
        put_str(3, v, out);
    }
}

/// Adds the backend's credentials to an allow: `authorization: Bearer <ID token>` and the
/// caller's original value as `x-forwarded-authorization` (both overwritten, as ESPv2 does), and
/// `backend_audience` in the dynamic metadata. A denial is left alone.
pub fn add_backend_identity(
    response: &mut CheckResponse,
    id_token: &IdToken,
    caller_authorization: Option<&str>,
) {
    let Some(HttpResponse::OkResponse(ok)) = &mut response.http_response else {
        return;
    };
    ok.headers
        .push(header("authorization", id_token.authorization()));
    match caller_authorization {
        Some(original) => ok
            .headers
            .push(header(FORWARDED_AUTHORIZATION_HEADER, original)),
        // Nothing to forward: a client's own copy must not pass for the caller's.
        None => ok
            .headers_to_remove
            .push(FORWARDED_AUTHORIZATION_HEADER.to_owned()),
    }
    if let (Some(meta), Some(aud)) = (&mut response.dynamic_metadata, &id_token.claims.aud) {
        meta.fields
            .insert("backend_audience".to_owned(), string(aud));
    }
}

/// The `CheckResponse` for a denial on a deployment marked continue-on-error: OK, so Envoy
/// forwards the request, with `x-verifyiam-result: denied` and `x-verifyiam-reason` set (overwrite)
/// for the backend.
///
/// Envoy applies `headers_to_remove` after `headers`, so only the header this answer does not
/// set is removed: the client's `x-verifyiam-principal` (no principal is vouched for here).
pub fn continued(d: &Denial) -> CheckResponse {
    CheckResponse {
        status: Some(rpc::Status {
            code: code::OK,
            ..Default::default()
        }),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers: vec![
                header(RESULT_HEADER, "denied"),
                header(REASON_HEADER, d.reason.label()),
            ],
            headers_to_remove: vec![PRINCIPAL_HEADER.to_owned()],
            ..Default::default()
        })),
        dynamic_metadata: Some(metadata(
            "continue",
            d.reason.label(),
            d.principal.as_ref().map(|p| &*p.id),
            d.target.as_ref().map(|t| &*t.name),
            None,
        )),
    }
}

fn denied(d: &Denial, scope: &str) -> CheckResponse {
    let (grpc, http, status, challenge) = match d.reason {
        Reason::InvalidRequest => (
            code::UNAUTHENTICATED,
            HttpStatusCode::Unauthorized,
            "UNAUTHENTICATED",
            Some(format!(
                "Bearer realm=\"{REALM}\", error=\"invalid_request\", error_description=\"{}\"",
                quoted(&d.message)
            )),
        ),
        Reason::MalformedRequest => (
            code::INVALID_ARGUMENT,
            HttpStatusCode::BadRequest,
            "INVALID_ARGUMENT",
            None,
        ),
        Reason::InvalidToken => (
            code::UNAUTHENTICATED,
            HttpStatusCode::Unauthorized,
            "UNAUTHENTICATED",
            Some(format!(
                "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{}\"",
                quoted(&d.message)
            )),
        ),
        Reason::InsufficientScope => (
            code::PERMISSION_DENIED,
            HttpStatusCode::Forbidden,
            "PERMISSION_DENIED",
            Some(format!(
                "Bearer realm=\"{REALM}\", error=\"insufficient_scope\", scope=\"{}\"",
                quoted(scope)
            )),
        ),
        Reason::PermissionDenied | Reason::NoRoute | Reason::NotDeployed => (
            code::PERMISSION_DENIED,
            HttpStatusCode::Forbidden,
            "PERMISSION_DENIED",
            None,
        ),
        Reason::Unavailable => (
            code::UNAVAILABLE,
            HttpStatusCode::ServiceUnavailable,
            "UNAVAILABLE",
            None,
        ),
    };
    let mut headers = vec![header("content-type", "application/json")];
    if let Some(c) = challenge {
        headers.push(header("www-authenticate", c));
    }
    if d.reason == Reason::Unavailable {
        headers.push(header("retry-after", "1"));
    }
    CheckResponse {
        status: Some(rpc::Status {
            code: grpc,
            message: d.message.to_string(),
            ..Default::default()
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code: http as i32 }),
            headers,
            body: error_body(http as i32 as u16, status, &d.message),
        })),
        dynamic_metadata: Some(metadata(
            "deny",
            d.reason.label(),
            d.principal.as_ref().map(|p| &*p.id),
            d.target.as_ref().map(|t| &*t.name),
            None,
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use prost::Message as _;

    use super::*;
    use crate::authn::Principal;
    use crate::iam::Level;
    use crate::route::Target;

    #[test]
    fn the_allow_written_directly_is_the_allow_built_as_a_message() {
        for (id, deployment) in [
            ("alice@example.com", ("org", "prod", "orders")),
            ("https://issuer.example#12345", ("o", "e", "d")),
            (
                &*"x".repeat(300),
                ("a-long-organization", "staging", &*"y".repeat(200)),
            ),
        ] {
            let principal = Arc::new(Principal {
                id: id.into(),
                key: [0; 32],
                members: Vec::new(),
                expires_at: 0,
                has_scope: true,
            });
            let target = Target::new(deployment.0, deployment.1, deployment.2);
            for level in [None, Some(Level::Project), Some(Level::Deployment)] {
                let mut out = Vec::new();
                encode_allow(
                    &principal.id,
                    &target.name,
                    level.map(Level::as_str),
                    &mut out,
                );
                let written = CheckResponse::decode(out.as_slice()).unwrap();
                let built = check_response(
                    &Decision::Allow {
                        principal: principal.clone(),
                        target: target.clone(),
                        level,
                    },
                    "scope",
                );
                assert_eq!(written, built);
                assert_eq!(out.len(), built.encoded_len());
                let fields = &built.dynamic_metadata.as_ref().unwrap().fields;
                assert_eq!(
                    fields.get(LEVEL_KEY).and_then(|v| v.kind.clone()),
                    level.map(|l| Kind::StringValue(l.as_str().to_owned()))
                );
            }
        }
    }

    #[test]
    fn error_bodies_are_the_json_they_say() {
        for message in [
            "plain",
            "quotes \" and \\ backslashes",
            "lines\nand\ttabs\r",
            "control \u{1} \u{7f} and \u{2028} and ünïcödé",
            "",
        ] {
            let body = error_body(403, "PERMISSION_DENIED", message);
            let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(
                parsed,
                serde_json::json!({"error": {"code": 403, "message": message, "status": "PERMISSION_DENIED"}})
            );
        }
    }
}
