//! Opaque Google access tokens (`ya29.…`), asked of Google's tokeninfo endpoint. The token
//! travels as the form field `access_token` of a POST (Google's documented form), never in a
//! URL. Tokeninfo's numbers arrive as JSON strings; `email` is present only with the
//! `userinfo.email` scope and counts only with `email_verified: "true"`; HTTP 400 with
//! `invalid_token` means the token is bad.

use serde::Deserialize;

use super::{AuthnError, Verified, unix_now};

/// Largest tokeninfo answer read.
const MAX_BODY: usize = 64 * 1024;

/// A tokeninfo client.
pub struct Tokeninfo {
    http: reqwest::Client,
    url: String,
}

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    email_verified: Option<serde_json::Value>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    exp: Option<serde_json::Value>,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
    #[serde(default)]
    error: Option<String>,
}

/// Whether an upstream's HTTP status is a verdict on the token (400, 401, 413, 431) rather
/// than on the service (429, 5xx, anything else unexpected).
pub(crate) fn refuses_token(status: http::StatusCode) -> bool {
    matches!(status.as_u16(), 400 | 401 | 413 | 431)
}

/// `email_verified` as issuers send it: `true` or `"true"`; anything else, or nothing, is not.
pub(crate) fn vouched(email_verified: Option<&serde_json::Value>) -> bool {
    match email_verified {
        Some(serde_json::Value::Bool(b)) => *b,
        Some(serde_json::Value::String(s)) => s == "true",
        _ => false,
    }
}

/// A number that may arrive as a JSON number or a JSON string.
pub(crate) fn number(v: &serde_json::Value) -> Option<u64> {
    match v {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

impl Tokeninfo {
    /// A client for `url`.
    pub fn new(http: reqwest::Client, url: String) -> Tokeninfo {
        Tokeninfo { http, url }
    }

    /// Asks tokeninfo about `token`.
    pub async fn verify(
        &self,
        token: &str,
        required_scope: &str,
        leeway: u64,
    ) -> Result<Verified, AuthnError> {
        let request = self
            .http
            .post(&self.url)
            .header(http::header::ACCEPT, "application/json")
            .form(&[("access_token", token)]);
        let reply = crate::upstream::send("tokeninfo", request, MAX_BODY)
            .await
            .map_err(|e| AuthnError::Unavailable(format!("tokeninfo: {e}")))?;
        let status = reply.status;
        let answer: Option<Answer> = serde_json::from_slice(&reply.body).ok();
        if refuses_token(status) {
            // 400 invalid_token: the token is bad, not the service; 413/431: too large to be one.
            return Err(AuthnError::InvalidToken(
                match answer.and_then(|a| a.error).as_deref() {
                    Some("invalid_token") | None => "the token is not valid (tokeninfo)",
                    Some(_) => "the token was refused by tokeninfo",
                }
                .into(),
            ));
        }
        if !status.is_success() {
            // Rate limits (429) and server errors say nothing about the token.
            reply.fail("status");
            return Err(AuthnError::Unavailable(format!("tokeninfo: HTTP {status}")));
        }
        if answer.is_none() {
            reply.fail("body");
        }
        let answer = answer
            .ok_or_else(|| AuthnError::Unavailable("tokeninfo: answer is not JSON".into()))?;
        let now = unix_now();
        let expires_at = answer
            .exp
            .as_ref()
            .and_then(number)
            .or_else(|| {
                answer
                    .expires_in
                    .as_ref()
                    .and_then(number)
                    .map(|s| now.saturating_add(s))
            })
            .ok_or_else(|| AuthnError::Unavailable("tokeninfo: answer has no expiry".into()))?;
        if expires_at.saturating_add(leeway) < now {
            return Err(AuthnError::InvalidToken("the token has expired".into()));
        }
        let email = answer
            .email
            .filter(|_| vouched(answer.email_verified.as_ref()));
        let has_scope = answer
            .scope
            .as_deref()
            .is_some_and(|s| s.split(' ').any(|x| x == required_scope));
        Ok(Verified {
            subject: answer.sub.or_else(|| email.clone()),
            email,
            issuer: "https://accounts.google.com".to_owned(),
            expires_at,
            has_scope,
            federated: None,
        })
    }
}
