//! ID tokens signed by the development issuer (`serve --dev`), shaped like Google's, so the
//! backend headers can be seen offline with `verifyiam check`. Never for production: no backend
//! but a test one trusts this key.

use std::sync::Arc;

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use serde_json::json;

use super::{FetchError, IdTokenSource};
use crate::authn::dev::DevIssuer;

/// How long a development ID token lives, as Google's do.
const LIFETIME_SECS: u64 = 3600;

/// The development gateway account of `project`.
pub fn gateway_email(project: &str) -> String {
    format!("verifyiam-gateway@{project}.iam.gserviceaccount.com")
}

/// Signs ID tokens with the development issuer's key.
pub struct DevSource {
    issuer: Arc<DevIssuer>,
    email: String,
}

impl DevSource {
    /// ID tokens for `email`, signed by `issuer`.
    pub fn new(issuer: Arc<DevIssuer>, email: &str) -> DevSource {
        DevSource {
            issuer,
            email: email.to_owned(),
        }
    }
}

impl IdTokenSource for DevSource {
    fn label(&self) -> &'static str {
        "dev"
    }

    fn fetch<'a>(&'a self, audience: &'a str) -> BoxFuture<'a, Result<String, FetchError>> {
        let now = crate::authn::unix_now();
        let claims = json!({
            "iss": self.issuer.issuer(), "sub": self.email, "azp": self.email,
            "email": self.email, "email_verified": true, "aud": audience,
            "iat": now, "exp": now + LIFETIME_SECS,
        });
        let signed = self
            .issuer
            .sign(&claims)
            .map_err(|e| FetchError::Sign(e.to_string()));
        async move { signed }.boxed()
    }
}
