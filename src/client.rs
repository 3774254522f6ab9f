//! The admin API client behind the management commands (`verifyiam projects|environments|
//! deployments|roles|groups …`): REST calls with the caller's token, read-modify-write of policy
//! bindings with the etag (retried on `ABORTED` with jittered exponential backoff), output as
//! JSON or YAML, and the exit codes scripts rely on.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use serde_json::{Value, json};

/// How many times a read-modify-write is tried before giving up on concurrent changes.
pub const MAX_ATTEMPTS: u32 = 8;
const BACKOFF_BASE: Duration = Duration::from_millis(25);
const BACKOFF_CAP: Duration = Duration::from_secs(1);

/// Exit codes of the management commands.
pub mod exit {
    /// Done.
    pub const OK: u8 = 0;
    /// Bad arguments or a local input that cannot be used (unreadable or malformed file).
    pub const USAGE: u8 = 2;
    /// The server could not be reached, failed (5xx) or answered something unexpected.
    pub const UNAVAILABLE: u8 = 3;
    /// `UNAUTHENTICATED` (401) or `PERMISSION_DENIED` (403).
    pub const DENIED: u8 = 4;
    /// `NOT_FOUND` (404), including removing a binding or member that is not there.
    pub const NOT_FOUND: u8 = 5;
    /// `ABORTED` or `ALREADY_EXISTS` (409), after the retries for read-modify-write.
    pub const CONFLICT: u8 = 6;
    /// `INVALID_ARGUMENT` or `FAILED_PRECONDITION` (400).
    pub const INVALID: u8 = 7;
}

/// A failed command: what to print and how to exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    /// The process exit code (see [`exit`]).
    pub code: u8,
    /// One line for stderr.
    pub message: String,
}

impl ClientError {
    /// A usage error (exit 2).
    pub fn usage(message: impl Into<String>) -> ClientError {
        ClientError {
            code: exit::USAGE,
            message: message.into(),
        }
    }

    fn from_http(http: u16, body: &str) -> ClientError {
        let parsed: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        let status = parsed["error"]["status"].as_str().unwrap_or("").to_owned();
        let message = parsed["error"]["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| body.trim().chars().take(300).collect());
        let code = match (http, status.as_str()) {
            (401 | 403, _) => exit::DENIED,
            (404, _) => exit::NOT_FOUND,
            (409, _) => exit::CONFLICT,
            (400, _) => exit::INVALID,
            _ => exit::UNAVAILABLE,
        };
        let status = if status.is_empty() {
            format!("HTTP {http}")
        } else {
            status
        };
        ClientError {
            code,
            message: format!("{status}: {message}"),
        }
    }

    fn is_aborted(&self) -> bool {
        self.code == exit::CONFLICT && self.message.starts_with("ABORTED")
    }
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// Pretty-printed JSON.
    #[default]
    Json,
    /// YAML.
    Yaml,
}

impl Format {
    /// Renders a value.
    pub fn render(self, v: &Value) -> String {
        match self {
            Format::Json => {
                let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
                s.push('\n');
                s
            }
            Format::Yaml => yaml(v),
        }
    }
}

/// A client of one admin endpoint as one caller.
pub struct AdminClient {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl AdminClient {
    /// A client of `base` (e.g. `http://127.0.0.1:9002`) sending `token` as a bearer token.
    pub fn new(base: &str, token: Option<String>) -> Result<AdminClient, ClientError> {
        let parsed = url::Url::parse(base)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| {
                ClientError::usage(format!("--admin-url {base:?} is not an http(s) URL"))
            })?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("verifyiam-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError {
                code: exit::UNAVAILABLE,
                message: e.to_string(),
            })?;
        Ok(AdminClient {
            http,
            base: parsed.as_str().trim_end_matches('/').to_owned(),
            token,
        })
    }

    /// One call; the JSON answer, or the server's error as a [`ClientError`].
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url);
        if let Some(t) = &self.token {
            request = request.bearer_auth(t);
        }
        if let Some(b) = body {
            request = request
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let response = request.send().await.map_err(|e| ClientError {
            code: exit::UNAVAILABLE,
            message: format!("cannot reach {}: {e}", self.base),
        })?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| ClientError {
            code: exit::UNAVAILABLE,
            message: format!("reading the answer of {url}: {e}"),
        })?;
        if !(200..300).contains(&status) {
            return Err(ClientError::from_http(status, &text));
        }
        serde_json::from_str(&text).map_err(|e| ClientError {
            code: exit::UNAVAILABLE,
            message: format!("{url} answered something that is not JSON: {e}"),
        })
    }

    /// `:getIamPolicy` on a resource path (`/v1/projects/p`, …).
    pub async fn get_policy(&self, path: &str) -> Result<Value, ClientError> {
        self.call(reqwest::Method::GET, &format!("{path}:getIamPolicy"), None)
            .await
    }

    /// `:setIamPolicy` on a resource path.
    pub async fn set_policy(&self, path: &str, policy: &Value) -> Result<Value, ClientError> {
        let body = json!({ "policy": policy });
        self.call(
            reqwest::Method::POST,
            &format!("{path}:setIamPolicy"),
            Some(&body),
        )
        .await
    }

    /// Adds (`add`) or removes a `(role, member)` binding by read-modify-write with the etag,
    /// retrying on `ABORTED` (someone else wrote in between) with jittered exponential backoff,
    /// at most [`MAX_ATTEMPTS`] times. Returns the policy as stored.
    pub async fn change_binding(
        &self,
        path: &str,
        role: &str,
        member: &str,
        add: bool,
    ) -> Result<Value, ClientError> {
        let mut attempt = 0;
        loop {
            let mut policy = self.get_policy(path).await?;
            let changed = if add {
                add_binding(&mut policy, role, member)
            } else {
                remove_binding(&mut policy, role, member)
            };
            if !changed {
                if add {
                    return Ok(policy);
                }
                return Err(ClientError {
                    code: exit::NOT_FOUND,
                    message: format!("NOT_FOUND: the policy has no binding of {member} to {role}"),
                });
            }
            match self.set_policy(path, &policy).await {
                Err(e) if e.is_aborted() && attempt + 1 < MAX_ATTEMPTS => {
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

/// The pause before retry `attempt` (from 0): exponential from 25ms, capped at 1s, with jitter
/// over its upper half so concurrent writers spread out.
pub fn backoff(attempt: u32) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1 << attempt.min(16))
        .min(BACKOFF_CAP);
    let half = ceiling / 2;
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let jitter = half.as_nanos() as u64;
    half + Duration::from_nanos(if jitter == 0 { 0 } else { random % jitter })
}

/// Adds `member` to the unconditional binding of `role` (creating it); whether anything changed.
pub fn add_binding(policy: &mut Value, role: &str, member: &str) -> bool {
    if !policy["bindings"].is_array() {
        policy["bindings"] = json!([]);
    }
    let Some(bindings) = policy["bindings"].as_array_mut() else {
        return false;
    };
    let slot = bindings
        .iter_mut()
        .find(|b| b["role"] == role && b.get("condition").is_none());
    match slot {
        Some(binding) => {
            if !binding["members"].is_array() {
                binding["members"] = json!([]);
            }
            let Some(members) = binding["members"].as_array_mut() else {
                return false;
            };
            if members.iter().any(|m| m == member) {
                return false;
            }
            members.push(json!(member));
        }
        None => bindings.push(json!({"role": role, "members": [member]})),
    }
    true
}

/// Removes `member` from the unconditional binding of `role` (dropping it when empty);
/// whether anything changed.
pub fn remove_binding(policy: &mut Value, role: &str, member: &str) -> bool {
    let Some(bindings) = policy["bindings"].as_array_mut() else {
        return false;
    };
    let mut changed = false;
    for binding in bindings.iter_mut() {
        if binding["role"] == role && binding.get("condition").is_none() {
            if let Some(members) = binding["members"].as_array_mut() {
                let before = members.len();
                members.retain(|m| m != member);
                changed |= members.len() != before;
            }
        }
    }
    bindings.retain(|b| b["members"].as_array().is_some_and(|m| !m.is_empty()));
    changed
}

/// A small YAML emitter for JSON values: block style, strings double-quoted (JSON escapes are
/// valid YAML), keys plain when they are simple words.
pub fn yaml(v: &Value) -> String {
    let mut out = String::new();
    match v {
        Value::Object(_) | Value::Array(_) if !is_empty(v) => block(v, 0, &mut out),
        other => {
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
    out
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Object(_) => "{}".to_owned(),
        Value::Array(_) => "[]".to_owned(),
        other => other.to_string(),
    }
}

fn key(k: &str) -> String {
    if !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        k.to_owned()
    } else {
        Value::String(k.to_owned()).to_string()
    }
}

fn block(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(map) => {
            for (k, value) in map {
                out.push_str(&format!("{pad}{}:", key(k)));
                match value {
                    Value::Object(_) if !is_empty(value) => {
                        out.push('\n');
                        block(value, indent + 2, out);
                    }
                    Value::Array(_) if !is_empty(value) => {
                        out.push('\n');
                        block(value, indent, out);
                    }
                    other => out.push_str(&format!(" {}\n", scalar(other))),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                match item {
                    Value::Object(_) | Value::Array(_) if !is_empty(item) => {
                        let mut inner = String::new();
                        block(item, indent + 2, &mut inner);
                        // The item's first line moves up behind its dash.
                        out.push_str(&format!("{pad}- {}", &inner[indent + 2..]));
                    }
                    other => out.push_str(&format!("{pad}- {}\n", scalar(other))),
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", scalar(other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_and_remove_binding_edit_only_what_they_name() {
        let mut p = json!({"version": 1, "etag": "AAA="});
        assert!(add_binding(&mut p, "roles/r", "user:a@example.com"));
        assert!(!add_binding(&mut p, "roles/r", "user:a@example.com"));
        assert!(add_binding(&mut p, "roles/r", "user:b@example.com"));
        assert_eq!(
            p["bindings"],
            json!([{"role": "roles/r", "members": ["user:a@example.com", "user:b@example.com"]}])
        );
        assert!(remove_binding(&mut p, "roles/r", "user:a@example.com"));
        assert!(!remove_binding(&mut p, "roles/r", "user:a@example.com"));
        assert!(remove_binding(&mut p, "roles/r", "user:b@example.com"));
        assert_eq!(p["bindings"], json!([]));
        assert_eq!(p["etag"], "AAA=");
    }

    #[test]
    fn backoff_grows_and_stays_bounded() {
        for attempt in 0..40 {
            let d = backoff(attempt);
            let ceiling = (BACKOFF_BASE * 2u32.pow(attempt.min(16))).min(BACKOFF_CAP);
            assert!(d >= ceiling / 2 && d <= ceiling, "{attempt}: {d:?}");
        }
    }

    #[test]
    fn yaml_renders_a_policy_like_gcloud() {
        let p = json!({"bindings": [{"members": ["user:a@example.com"], "role": "roles/r"}],
                       "etag": "BwYT8i40Vwo=", "version": 1});
        assert_eq!(
            yaml(&p),
            "bindings:\n- members:\n  - \"user:a@example.com\"\n  role: \"roles/r\"\n\
             etag: \"BwYT8i40Vwo=\"\nversion: 1\n"
        );
        assert_eq!(yaml(&json!({})), "{}\n");
        assert_eq!(yaml(&json!({"a": [], "b": {}})), "a: []\nb: {}\n");
    }

    #[test]
    fn http_errors_map_to_documented_exit_codes() {
        let body = |s: &str| format!(r#"{{"error":{{"code":0,"message":"m","status":"{s}"}}}}"#);
        assert_eq!(
            ClientError::from_http(403, &body("PERMISSION_DENIED")).code,
            exit::DENIED
        );
        assert_eq!(
            ClientError::from_http(401, &body("UNAUTHENTICATED")).code,
            exit::DENIED
        );
        assert_eq!(
            ClientError::from_http(404, &body("NOT_FOUND")).code,
            exit::NOT_FOUND
        );
        let aborted = ClientError::from_http(409, &body("ABORTED"));
        assert_eq!(aborted.code, exit::CONFLICT);
        assert!(aborted.is_aborted());
        assert_eq!(
            ClientError::from_http(400, &body("INVALID_ARGUMENT")).code,
            exit::INVALID
        );
        assert_eq!(ClientError::from_http(500, "oops").code, exit::UNAVAILABLE);
        assert_eq!(
            ClientError::from_http(500, "oops").message,
            "HTTP 500: oops"
        );
    }
}
