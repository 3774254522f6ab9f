//! Logging and metrics set-up. Logs go to stderr (text or JSON); metrics are kept in a
//! process-wide Prometheus recorder and rendered by the admin listener's `/metrics`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Check latency buckets, in seconds: fine below a millisecond, up to Envoy's 200 ms default.
const CHECK_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2,
    0.5,
];

/// Installs the tracing subscriber; `RUST_LOG` overrides the default `info` filter.
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second initialisation (tests) is not an error worth reporting.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// The process-wide Prometheus handle, installing the recorder on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("verifyiam_check_duration_seconds".to_owned()),
                    CHECK_BUCKETS,
                )
                .map(PrometheusBuilder::build_recorder)
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            // Fails only when another recorder is installed already; ours then stays unused.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Measures one call to an upstream (key set, tokeninfo, introspection, remote IAM):
/// in flight while alive, then its latency; [`UpstreamCall::fail`] counts why it failed.
pub struct UpstreamCall {
    upstream: &'static str,
    started: std::time::Instant,
}

impl UpstreamCall {
    /// Starts measuring a call to `upstream`.
    pub fn start(upstream: &'static str) -> UpstreamCall {
        metrics::gauge!("verifyiam_upstream_in_flight", "upstream" => upstream).increment(1.0);
        metrics::counter!("verifyiam_upstream_requests_total", "upstream" => upstream).increment(1);
        UpstreamCall {
            upstream,
            started: std::time::Instant::now(),
        }
    }

    /// Counts a failure: `timeout`, `connect`, `status`, `body`.
    pub fn fail(&self, kind: &'static str) {
        metrics::counter!("verifyiam_upstream_errors_total", "upstream" => self.upstream, "kind" => kind)
            .increment(1);
    }

    /// Counts a reqwest failure by its kind.
    pub fn fail_with(&self, e: &reqwest::Error) {
        self.fail(if e.is_timeout() {
            "timeout"
        } else if e.is_connect() {
            "connect"
        } else if e.is_status() {
            "status"
        } else {
            "body"
        });
    }
}

impl Drop for UpstreamCall {
    fn drop(&mut self) {
        metrics::gauge!("verifyiam_upstream_in_flight", "upstream" => self.upstream).decrement(1.0);
        metrics::histogram!("verifyiam_upstream_duration_seconds", "upstream" => self.upstream)
            .record(self.started.elapsed().as_secs_f64());
    }
}

/// Request counters of one cache, registered once so the hot path only adds to an atomic.
#[derive(Clone)]
pub struct CacheCounters {
    /// Answered from the cache.
    pub hit: metrics::Counter,
    /// Not in the cache (or expired).
    pub miss: metrics::Counter,
    /// Expired, served while its refresh failed.
    pub stale: metrics::Counter,
}

impl CacheCounters {
    /// The counters of `cache` (`verifyiam_cache_requests_total{cache,result}`).
    pub fn new(cache: &'static str) -> CacheCounters {
        let _ = metrics_handle();
        let c = |result: &'static str| metrics::counter!("verifyiam_cache_requests_total", "cache" => cache, "result" => result);
        CacheCounters {
            hit: c("hit"),
            miss: c("miss"),
            stale: c("stale"),
        }
    }
}
