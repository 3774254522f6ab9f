//! JWT access tokens verified offline: the configured issuers' key sets, Google service-account
//! self-signed JWTs (per-account key sets), and the development issuer's fixed key.
//! Asymmetric algorithms only; `exp`, `nbf` and `iat` checked with the configured leeway.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use jsonwebtoken::Algorithm;
use serde::Deserialize;

use super::federation::Federation;
use super::keys::{KeyError, KeySet, KeySets, SignatureError};
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
    /// The pool the issuer belongs to, compiled; `Err` (every token refused) only for a
    /// configuration that was never validated (a CEL error, no audiences).
    federation: Option<Result<Arc<Federation>, String>>,
}

/// Verifies JWTs from every trusted issuer.
pub struct JwtVerifier {
    issuers: HashMap<String, Issuer>,
    service_accounts: Option<ServiceAccounts>,
    key_sets: KeySets,
    leeway: u64,
}

/// Self-signed service-account tokens: where each account's keys are, which audiences count.
struct ServiceAccounts {
    template: String,
    audiences: Vec<String>,
}

/// Google caps a self-signed service-account token's life at one hour.
const SERVICE_ACCOUNT_MAX_LIFETIME: u64 = 3600;

/// The claims verifyiam reads, decoded once, before the signature is checked, so that cheap
/// refusals (untrusted issuer, expired, wrong audience) cost no key fetch and no signature.
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    iss: Option<String>,
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
    #[serde(default)]
    aud: Option<serde_json::Value>,
    #[serde(default)]
    exp: Option<f64>,
    #[serde(default)]
    nbf: Option<f64>,
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
            .enumerate()
            .map(|(i, j)| {
                (
                    j.issuer.clone(),
                    Issuer {
                        keys: KeySource::Remote(j.jwks_uri.clone()),
                        audiences: j.audiences.clone(),
                        // Fails closed on a configuration that skipped validation: a pool
                        // token's audience is what binds it here, so none means no token.
                        federation: j.federation.as_ref().map(|f| {
                            if j.audiences.is_empty() {
                                return Err("an issuer in a pool must list its audiences".into());
                            }
                            f.compiled(&format!("token.jwt[{i}].federation"))
                                .map_err(|e| e.to_string())
                        }),
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
                    federation: None,
                },
            );
        }
        JwtVerifier {
            issuers,
            service_accounts: token
                .google_service_accounts
                .as_ref()
                .map(|s| ServiceAccounts {
                    template: s.jwks_uri_template.clone(),
                    audiences: s.audiences.clone(),
                }),
            key_sets,
            leeway: token.leeway.as_secs(),
        }
    }

    /// Verifies a JWT and returns who it names, its scopes and its expiry.
    ///
    /// The header and claims are decoded once; everything that can be refused without the key
    /// is refused first (algorithm, issuer, time, audience, identity claims), then the key is
    /// found and the signature checked over the token's first two parts.
    pub async fn verify(&self, token: &str, required_scope: &str) -> Result<Verified, AuthnError> {
        let (message, signature) = token
            .rsplit_once('.')
            .ok_or_else(|| invalid("the token is not a JWT"))?;
        let (_, payload) = message
            .split_once('.')
            .ok_or_else(|| invalid("the token is not a JWT"))?;
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| invalid("the token's JWT header is malformed"))?;
        if !ACCEPTED.contains(&header.alg) {
            return Err(invalid(
                "the token's algorithm is not accepted (asymmetric algorithms only)",
            ));
        }
        let claims = decode_claims(payload)?;
        let iss = claims
            .iss
            .as_deref()
            .ok_or_else(|| invalid("the token has no issuer (iss)"))?;
        let mut federation = None;
        let (source, audiences, service_account) = match self.issuers.get(iss) {
            Some(issuer) => {
                federation = issuer.federation.as_ref();
                (
                    match &issuer.keys {
                        KeySource::Remote(u) => Source::Url(u.clone()),
                        KeySource::Fixed(set) => Source::Fixed(set),
                    },
                    issuer.audiences.as_slice(),
                    false,
                )
            }
            None => match &self.service_accounts {
                Some(sa) if is_service_account(iss) => (
                    Source::Account(sa.template.replace(
                        "{email}",
                        &percent_encoding::utf8_percent_encode(iss, UNRESERVED_KEPT).to_string(),
                    )),
                    sa.audiences.as_slice(),
                    true,
                ),
                _ => return Err(invalid("the token's issuer is not trusted")),
            },
        };
        self.check_times(&claims, service_account)?;
        if service_account {
            // Self-signed: `aud` is optional, but when present it must name an accepted API.
            if claims.aud.is_some() && !audience_accepted(claims.aud.as_ref(), audiences) {
                return Err(invalid("the token's audience is not accepted"));
            }
            // The account signs for itself, so `sub` must be the account too.
            if claims.sub.as_deref().is_some_and(|s| s != iss) {
                return Err(invalid(
                    "a service account's self-signed token must have sub = iss",
                ));
            }
        } else if !audiences.is_empty() && !audience_accepted(claims.aud.as_ref(), audiences) {
            return Err(invalid("the token's audience is not accepted"));
        }

        let kid = header.kid.as_deref();
        let key = match source {
            Source::Fixed(set) => set.find(kid).ok_or(KeyError::UnknownKey),
            Source::Url(url) => self.key_sets.key(&url, kid).await,
            Source::Account(url) => self.key_sets.account_key(&url, kid).await,
        }
        .map_err(|e| match e {
            KeyError::UnknownKey => {
                invalid("the token's signing key (kid) is unknown to its issuer")
            }
            KeyError::NoKeys => invalid("the token's service account publishes no keys"),
            KeyError::Limited => AuthnError::Throttled(
                "too many never-seen service accounts are being looked up; try again shortly",
            ),
            KeyError::Unavailable(m) => AuthnError::Unavailable(m),
        })?;
        if key.alg.is_some_and(|a| a != header.alg) {
            return Err(invalid("the token's algorithm does not match its key"));
        }
        match key.verify(header.alg, message.as_bytes(), signature) {
            Ok(true) => {}
            Ok(false) => return Err(invalid("the token's signature does not verify")),
            Err(e @ (SignatureError::KeyMismatch | SignatureError::NotBase64)) => {
                return Err(AuthnError::InvalidToken(e.to_string().into()));
            }
        }

        let federated = match federation {
            None => None,
            Some(Err(e)) => {
                return Err(AuthnError::InvalidToken(
                    format!("the issuer's pool is misconfigured: {e}").into(),
                ));
            }
            // Only now, with the signature verified: the claims go through the pool's CEL.
            Some(Ok(pool)) => Some(
                pool.map(&decode_assertion(payload)?)
                    .map_err(|e| AuthnError::InvalidToken(e.into()))?,
            ),
        };
        let email = if federated.is_some() {
            // A pool identity is named by its pool; an email claim names no Google account.
            None
        } else if service_account {
            Some(iss.to_owned())
        } else {
            // Only an email its issuer vouches for names the caller.
            let vouched = super::tokeninfo::vouched(claims.email_verified.as_ref());
            claims.email.clone().filter(|_| vouched)
        };
        // A pool's token carries no OAuth scope (Google's pools check the audience instead,
        // and the issuer's `audiences` are required to be set for one): its audience binds it.
        let has_scope = federated.is_some()
            || claims
                .scope
                .as_deref()
                .is_some_and(|s| s.split(' ').any(|x| x == required_scope))
            || match &claims.scp {
                Some(Scopes::List(l)) => l.iter().any(|x| x == required_scope),
                Some(Scopes::One(s)) => s.split(' ').any(|x| x == required_scope),
                None => false,
            };
        let expires_at = claims.exp.unwrap_or(0.0).max(0.0) as u64;
        Ok(Verified {
            subject: claims.sub.or_else(|| email.clone()),
            email,
            issuer: iss.to_owned(),
            expires_at,
            has_scope,
            federated,
        })
    }

    /// `exp` (required), `nbf` and `iat` against the clock with the leeway; a self-signed
    /// service-account token also needs `iat` and at most an hour between `iat` and `exp`.
    fn check_times(&self, claims: &Claims, service_account: bool) -> Result<(), AuthnError> {
        let now = unix_now() as f64;
        let leeway = self.leeway as f64;
        let exp = claims
            .exp
            .ok_or_else(|| invalid("the token lacks a required claim (exp)"))?;
        if exp + leeway < now {
            return Err(invalid("the token has expired"));
        }
        if claims.nbf.is_some_and(|nbf| nbf > now + leeway) {
            return Err(invalid("the token is not valid yet (nbf)"));
        }
        if claims.iat.is_some_and(|iat| iat > now + leeway) {
            return Err(invalid("the token was issued in the future (iat)"));
        }
        if service_account {
            let iat = claims
                .iat
                .ok_or_else(|| invalid("a service account's self-signed token must carry iat"))?;
            if exp - iat > (SERVICE_ACCOUNT_MAX_LIFETIME + self.leeway) as f64 {
                return Err(invalid(
                    "a service account's self-signed token's lifetime (exp - iat) exceeds one hour",
                ));
            }
        }
        Ok(())
    }
}

/// Where a token's key comes from.
enum Source<'a> {
    Fixed(&'a Arc<KeySet>),
    Url(String),
    /// A service account's own key set: a 4xx there means the account has no keys.
    Account(String),
}

/// With audiences to check, `aud` must be a string or an array of strings, one of them listed.
/// Any other shape (missing, a number, an object, an array holding a non-string) is refused.
fn audience_accepted(aud: Option<&serde_json::Value>, accepted: &[String]) -> bool {
    let listed = |a: &str| accepted.iter().any(|x| x == a);
    match aud {
        Some(serde_json::Value::String(a)) => listed(a),
        Some(serde_json::Value::Array(list)) => {
            list.iter().all(serde_json::Value::is_string)
                && list.iter().filter_map(|a| a.as_str()).any(listed)
        }
        _ => false,
    }
}

/// Decodes the claims part (base64url, JSON object).
fn decode_claims(payload: &str) -> Result<Claims, AuthnError> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| invalid("the token's claims are not base64url"))?;
    serde_json::from_slice(&bytes).map_err(|_| invalid("the token's claims are malformed"))
}

/// The claims part as a whole JSON object: a pool's mapping may read any claim.
fn decode_assertion(payload: &str) -> Result<serde_json::Value, AuthnError> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| invalid("the token's claims are not base64url"))?;
    match serde_json::from_slice(&bytes) {
        Ok(v @ serde_json::Value::Object(_)) => Ok(v),
        _ => Err(invalid("the token's claims are malformed")),
    }
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
