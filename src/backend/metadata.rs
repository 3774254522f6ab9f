//! ID tokens from the metadata server of the machine verifyiam runs on (GKE with Workload
//! Identity, GCE, Cloud Run): the identity of its attached service account.

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;

use super::{FetchError, IdTokenSource};

/// The largest answer read (an ID token is about 1 KiB).
const MAX_ANSWER: usize = 16 * 1024;

/// `GET {base}/computeMetadata/v1/instance/service-accounts/default/identity?audience=…&format=full`
/// with `Metadata-Flavor: Google`; the body is the token.
pub struct MetadataSource {
    http: reqwest::Client,
    url: String,
}

impl MetadataSource {
    /// A source asking the metadata server at `base` (e.g. `http://metadata.google.internal`).
    pub fn new(http: reqwest::Client, base: &str) -> MetadataSource {
        MetadataSource {
            http,
            url: format!(
                "{}/computeMetadata/v1/instance/service-accounts/default/identity",
                base.trim_end_matches('/')
            ),
        }
    }
}

impl IdTokenSource for MetadataSource {
    fn label(&self) -> &'static str {
        "metadata"
    }

    fn fetch<'a>(&'a self, audience: &'a str) -> BoxFuture<'a, Result<String, FetchError>> {
        async move {
            // `format=full` puts the account's email (and more) in the token, as ESPv2 asks.
            let url = format!(
                "{}?audience={}&format=full",
                self.url,
                percent_encoding::utf8_percent_encode(audience, percent_encoding::NON_ALPHANUMERIC)
            );
            let request = self.http.get(url).header("Metadata-Flavor", "Google");
            let answer = crate::upstream::send("metadata", request, MAX_ANSWER)
                .await
                .map_err(FetchError::transport)?;
            if !answer.status.is_success() {
                answer.fail("status");
                return Err(FetchError::status(answer.status, &answer.body));
            }
            match String::from_utf8(answer.body) {
                Ok(token) => Ok(token.trim().to_owned()),
                Err(_) => Err(FetchError::Malformed("the answer is not text".into())),
            }
        }
        .boxed()
    }
}
