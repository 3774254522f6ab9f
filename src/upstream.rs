//! Calls to upstreams (key sets, tokeninfo, introspection, remote IAM) in one place: send,
//! read at most a bounded body (streamed, so a huge answer is never buffered), and measure the
//! call (in flight, latency, failures by kind).

use http::{HeaderMap, StatusCode};

use crate::telemetry::UpstreamCall;

/// An upstream's answer, with the measurement still running until it is dropped.
pub struct Answer {
    /// HTTP status.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// The body (at most the limit given to [`send`]).
    pub body: Vec<u8>,
    call: UpstreamCall,
}

impl Answer {
    /// Counts the answer as a failure of `kind` (`status`, `body`) when the caller rejects it.
    pub fn fail(&self, kind: &'static str) {
        self.call.fail(kind);
    }
}

/// A short reason for a transport failure (the URL is logged separately, if at all).
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".to_owned()
    } else {
        let mut s = e.to_string();
        if let Some(url) = e.url() {
            s = s
                .replace(&format!(" ({url})"), "")
                .replace(url.as_str(), "");
        }
        s
    }
}

/// Sends `request` to `upstream` and reads at most `limit` bytes of the answer.
pub async fn send(
    upstream: &'static str,
    request: reqwest::RequestBuilder,
    limit: usize,
) -> Result<Answer, String> {
    let call = UpstreamCall::start(upstream);
    let mut response = match request.send().await {
        Ok(r) => r,
        Err(e) => {
            call.fail_with(&e);
            return Err(describe(&e));
        }
    };
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    call.fail("body");
                    return Err(format!("the answer is larger than {} KiB", limit / 1024));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => {
                call.fail_with(&e);
                return Err(format!("reading the answer failed: {}", describe(&e)));
            }
        }
    }
    Ok(Answer {
        status: response.status(),
        headers: std::mem::take(response.headers_mut()),
        body,
        call,
    })
}
