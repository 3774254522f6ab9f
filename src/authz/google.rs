//! Google IAM as the policy source: Apigee's
//! `POST {apigee_url}/v1/organizations/{o}/environments/{e}/deployments/{api}:testIamPermissions`
//! asked with the caller's own token; invoke is allowed iff `apigee.deployments.invoke` comes
//! back. verifyiam's own admin API answers the same call, so one instance can be another's source.

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use serde::Deserialize;

use super::{INVOKE, RemoteSource, SourceError};
use crate::route::Target;

/// Largest answer read.
const MAX_BODY: usize = 64 * 1024;

/// The remote IAM client.
pub struct GoogleSource {
    http: reqwest::Client,
    base: String,
}

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    permissions: Vec<String>,
}

impl GoogleSource {
    /// Asks the Apigee API at `base` (e.g. `https://apigee.googleapis.com`).
    pub fn new(http: reqwest::Client, base: &str) -> GoogleSource {
        GoogleSource {
            http,
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    async fn ask(&self, token: &str, target: &Target) -> Result<bool, SourceError> {
        let url = format!("{}/v1/{}:testIamPermissions", self.base, target.name);
        let request = self
            .http
            .post(&url)
            .bearer_auth(token)
            .json(&serde_json::json!({ "permissions": [INVOKE] }));
        let reply = crate::upstream::send("iam", request, MAX_BODY)
            .await
            .map_err(|e| SourceError::Unavailable(format!("remote IAM: {e}")))?;
        match reply.status.as_u16() {
            200 => {}
            // The caller's token is not accepted there: not a verdict on the deployment.
            401 => return Err(SourceError::Unauthenticated),
            // "Permission denied (or it may not exist)": a verdict, the caller may not invoke.
            403 | 404 => return Ok(false),
            status => {
                reply.fail("status");
                return Err(SourceError::Unavailable(format!(
                    "remote IAM: HTTP {status}"
                )));
            }
        }
        let answer: Answer = serde_json::from_slice(&reply.body).map_err(|_| {
            reply.fail("body");
            SourceError::Unavailable(
                "remote IAM: answer is not a testIamPermissions response".to_owned(),
            )
        })?;
        Ok(answer.permissions.iter().any(|p| p == INVOKE))
    }
}

impl RemoteSource for GoogleSource {
    fn may_invoke<'a>(
        &'a self,
        token: &'a str,
        target: &'a Target,
    ) -> BoxFuture<'a, Result<bool, SourceError>> {
        self.ask(token, target).boxed()
    }
}
