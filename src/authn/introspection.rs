//! Opaque tokens checked by OAuth 2.0 token introspection (RFC 7662): the token is POSTed as a
//! form field to the configured endpoint (with HTTP Basic client authentication when
//! configured); `active: false` means invalid.

use serde::Deserialize;

use super::{AuthnError, Verified, unix_now};
use crate::config::IntrospectionConfig;

/// Largest introspection answer read.
const MAX_BODY: usize = 64 * 1024;

/// An introspection client.
pub struct Introspection {
    http: reqwest::Client,
    config: IntrospectionConfig,
}

#[derive(Deserialize)]
struct Answer {
    active: bool,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    exp: Option<serde_json::Value>,
    #[serde(default)]
    iss: Option<String>,
    #[serde(flatten)]
    rest: serde_json::Map<String, serde_json::Value>,
}

impl Introspection {
    /// A client for the configured endpoint.
    pub fn new(http: reqwest::Client, config: IntrospectionConfig) -> Introspection {
        Introspection { http, config }
    }

    /// Introspects `token`.
    pub async fn verify(
        &self,
        token: &str,
        required_scope: &str,
        leeway: u64,
    ) -> Result<Verified, AuthnError> {
        let mut request = self
            .http
            .post(&self.config.url)
            .header(http::header::ACCEPT, "application/json")
            .form(&[("token", token), ("token_type_hint", "access_token")]);
        if let (Some(id), Some(secret)) = (&self.config.client_id, &self.config.client_secret) {
            request = request.basic_auth(id, Some(secret));
        }
        let reply = crate::upstream::send("introspection", request, MAX_BODY)
            .await
            .map_err(|e| AuthnError::Unavailable(format!("introspection: {e}")))?;
        if super::tokeninfo::refuses_token(reply.status) {
            if reply.status == http::StatusCode::UNAUTHORIZED {
                // RFC 7662 reserves 401 for the client's own credentials: say so to the operator.
                tracing::warn!(
                    "introspection answered 401: check token.introspection.client_id and client_secret"
                );
            }
            reply.fail("status");
            return Err(AuthnError::InvalidToken(
                format!(
                    "the token was refused by introspection (HTTP {})",
                    reply.status
                )
                .into(),
            ));
        }
        if !reply.status.is_success() {
            // The endpoint refusing *us* (403), rate-limiting or failing is not the caller's fault.
            reply.fail("status");
            return Err(AuthnError::Unavailable(format!(
                "introspection: HTTP {}",
                reply.status
            )));
        }
        let answer: Answer = serde_json::from_slice(&reply.body).map_err(|_| {
            reply.fail("body");
            AuthnError::Unavailable("introspection: answer is not RFC 7662 JSON".into())
        })?;
        if !answer.active {
            return Err(AuthnError::InvalidToken(
                "the token is not active (introspection)".into(),
            ));
        }
        let now = unix_now();
        let expires_at = match answer.exp.as_ref().and_then(super::tokeninfo::number) {
            Some(exp) if exp.saturating_add(leeway) < now => {
                return Err(AuthnError::InvalidToken("the token has expired".into()));
            }
            Some(exp) => exp,
            // No expiry: remembered only briefly.
            None => now + 60,
        };
        let email = match self.config.email_field.as_str() {
            "username" => answer.username.clone(),
            "sub" => answer.sub.clone(),
            field => answer
                .rest
                .get(field)
                .and_then(|v| v.as_str())
                .map(str::to_owned),
        }
        .filter(|e| crate::iam::member::Member::parse(&format!("user:{e}")).is_ok());
        let has_scope = answer
            .scope
            .as_deref()
            .is_some_and(|s| s.split(' ').any(|x| x == required_scope));
        Ok(Verified {
            subject: answer.sub.or(answer.username).or_else(|| email.clone()),
            email,
            issuer: answer.iss.unwrap_or_else(|| self.config.url.clone()),
            expires_at,
            has_scope,
            federated: None,
        })
    }
}
