//! JWT access tokens verified offline: the configured issuers' key sets, Google service-account
//! self-signed JWTs (per-account key sets), and the development issuer's fixed key.
//! Asymmetric algorithms only; `exp`, `nbf` and `iat` checked with the configured leeway.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;

use super::keys::{KeyError, KeySet, KeySets};
use super::{AuthnError, Verified, unix_now};
use crate::config::TokenConfig;

/// Where an issuer's keys come from.
pub enum KeySource {
    /// A key set fetched from this URL.
    Remote(String),
    /// Keys held in process (the development issuer).
    Fixed(Arc<KeySet>),
}

struct Issuer {
    keys: KeySource,
    audiences: Vec<String>,
}

/// Verifies JWTs from every trusted issuer.
pub struct JwtVerifier {
    issuers: HashMap<String, Issuer>,
    service_account_template: Option<String>,
    key_sets: KeySets,
    leeway: u64,
}

#[derive(Deserialize)]
struct Peek {
    #[serde(default)]
    iss: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    iss: String,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    email_verified: Option<serde_json::Value>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    scp: Option<Scopes>,
    exp: f64,
    #[serde(default)]
    iat: Option<f64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Scopes {
    List(Vec<String>),
    One(String),
}

const ACCEPTED: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// RFC 3986 unreserved characters stay; everything else (the `@` above all) is encoded.
const UNRESERVED_KEPT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn invalid(reason: &'static str) -> AuthnError {
    AuthnError::InvalidToken(reason.into())
}

impl JwtVerifier {
    /// A verifier for the `[token]` configuration; `fixed` adds in-process issuers.
    pub fn new(token: &TokenConfig, key_sets: KeySets, fixed: Vec<(String, Arc<KeySet>)>) -> Self {
        let mut issuers: HashMap<String, Issuer> = token
            .jwt
            .iter()
            .map(|j| {
                (
                    j.issuer.clone(),
                    Issuer {
                        keys: KeySource::Remote(j.jwks_uri.clone()),
                        audiences: j.audiences.clone(),
                    },
                )
            })
            .collect();
        for (issuer, set) in fixed {
            issuers.insert(
                issuer,
                Issuer {
                    keys: KeySource::Fixed(set),
                    audiences: Vec::new(),
                },
            );
        }
        JwtVerifier {
            issuers,
            service_account_template: token
                .google_service_accounts
                .as_ref()
                .map(|s| s.jwks_uri_template.clone()),
            key_sets,
            leeway: token.leeway.as_secs(),
        }
    }

    /// Verifies a JWT and returns who it names, its scopes and its expiry.
    pub async fn verify(&self, token: &str, required_scope: &str) -> Result<Verified, AuthnError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| invalid("the token's JWT header is malformed"))?;
        if !ACCEPTED.contains(&header.alg) {
            return Err(invalid(
                "the token's algorithm is not accepted (asymmetric algorithms only)",
            ));
        }
        let iss = peek_issuer(token)?;
        let service_account = !self.issuers.contains_key(&iss);
        let (url, fixed, audiences): (Option<String>, Option<&Arc<KeySet>>, &[String]) = match self
            .issuers
            .get(&iss)
        {
            Some(Issuer {
                keys: KeySource::Remote(u),
                audiences,
            }) => (Some(u.clone()), None, audiences),
            Some(Issuer {
                keys: KeySource::Fixed(set),
                audiences,
            }) => (None, Some(set), audiences),
            None => match (&self.service_account_template, is_service_account(&iss)) {
                (Some(template), true) => (
                    Some(template.replace(
                        "{email}",
                        &percent_encoding::utf8_percent_encode(&iss, UNRESERVED_KEPT).to_string(),
                    )),
                    None,
                    &[],
                ),
                _ => return Err(invalid("the token's issuer is not trusted")),
            },
        };
        let kid = header.kid.as_deref();
        let key = match (fixed, url) {
            (Some(set), _) => set.find(kid).ok_or(KeyError::UnknownKey),
            (None, Some(url)) => self.key_sets.key(&url, kid).await,
            (None, None) => Err(KeyError::UnknownKey),
        }
        .map_err(|e| match e {
            KeyError::UnknownKey => {
                invalid("the token's signing key (kid) is unknown to its issuer")
            }
            KeyError::Unavailable(m) => AuthnError::Unavailable(m),
        })?;
        if key.alg.is_some_and(|a| a != header.alg) {
            return Err(invalid("the token's algorithm does not match its key"));
        }

        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        validation.set_issuer(&[&iss]);
        validation.set_required_spec_claims(&["exp", "iss"]);
        if audiences.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(audiences);
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation)
            .map_err(|e| {
                AuthnError::InvalidToken(
                    match e.kind() {
                        ErrorKind::ExpiredSignature => "the token has expired",
                        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)",
                        ErrorKind::InvalidIssuer => "the token's issuer is not accepted",
                        ErrorKind::InvalidAudience => "the token's audience is not accepted",
                        ErrorKind::InvalidSignature => "the token's signature does not verify",
                        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidKeyFormat => {
                            "the token's algorithm does not match its key"
                        }
                        ErrorKind::MissingRequiredClaim(_) => {
                            "the token lacks a required claim (exp, iss)"
                        }
                        _ => "the token is malformed",
                    }
                    .into(),
                )
            })?
            .claims;
        let now = unix_now();
        if claims
            .iat
            .is_some_and(|iat| iat > (now + self.leeway) as f64)
        {
            return Err(invalid("the token was issued in the future (iat)"));
        }
        let email = if service_account {
            // Self-signed: the account signs for itself, so `sub` must be the account too.
            if claims.sub.as_deref().is_some_and(|s| s != claims.iss) {
                return Err(invalid(
                    "a service account's self-signed token must have sub = iss",
                ));
            }
            Some(claims.iss.clone())
        } else {
            let verified = !matches!(claims.email_verified, Some(serde_json::Value::Bool(false)))
                && !matches!(&claims.email_verified, Some(serde_json::Value::String(s)) if s == "false");
            claims.email.clone().filter(|_| verified)
        };
        let has_scope = claims
            .scope
            .as_deref()
            .is_some_and(|s| s.split(' ').any(|x| x == required_scope))
            || match &claims.scp {
                Some(Scopes::List(l)) => l.iter().any(|x| x == required_scope),
                Some(Scopes::One(s)) => s.split(' ').any(|x| x == required_scope),
                None => false,
            };
        let subject = claims.sub.clone().or_else(|| email.clone());
        Ok(Verified {
            email,
            subject,
            issuer: claims.iss,
            expires_at: claims.exp.max(0.0) as u64,
            has_scope,
        })
    }
}

/// Reads `iss` before verification so the right key set can be chosen.
fn peek_issuer(token: &str) -> Result<String, AuthnError> {
    let payload = token
        .split('.')
        .nth(1)
        .ok_or_else(|| invalid("the token is not a JWT"))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| invalid("the token's claims are not base64url"))?;
    let peek: Peek =
        serde_json::from_slice(&bytes).map_err(|_| invalid("the token's claims are not JSON"))?;
    peek.iss
        .ok_or_else(|| invalid("the token has no issuer (iss)"))
}

/// A Google service account: `name@project.iam.gserviceaccount.com` and the like.
fn is_service_account(iss: &str) -> bool {
    match iss.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.ends_with(".gserviceaccount.com")
                && !iss.contains(['/', '?', '#', ' '])
        }
        None => false,
    }
}
