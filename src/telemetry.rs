//! Logging and metrics set-up. Logs go to stderr (text or JSON); metrics are kept in a
//! process-wide Prometheus recorder and rendered by the admin listener's `/metrics`.
//!
//! Warnings a client can cause before it is authenticated are counted, not logged one per
//! client: rustls' illegal-SNI warning goes through [`IllegalSniGuard`].

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;

/// TLS handshakes whose ClientHello named the server illegally, by `kind`: `ip_address` (an IP
/// address sent as a host name, which the handshake ignores), `invalid_hostname`, `duplicate`.
pub const TLS_ILLEGAL_SNI_TOTAL: &str = "verifyiam_tls_illegal_sni_total";

/// The module of rustls that warns about an illegal SNI extension, once per ClientHello.
const RUSTLS_SNI_TARGET: &str = "rustls::msgs::handshake";
/// The illegal-SNI line is logged at most this often.
const ILLEGAL_SNI_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Check latency buckets, in seconds: fine below a millisecond, up to Envoy's 200 ms default.
const CHECK_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2,
    0.5,
];

/// Installs the tracing subscriber; `RUST_LOG` overrides the default `info` filter.
pub fn init_logging(json: bool) {
    let spec = std::env::var(tracing_subscriber::EnvFilter::DEFAULT_ENV).unwrap_or_default();
    let mut filter = tracing_subscriber::EnvFilter::try_new(&spec)
        .ok()
        .filter(|_| !spec.trim().is_empty())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    if !spec.contains(RUSTLS_SNI_TARGET) {
        // The guard counts rustls' illegal-SNI warnings whatever the filter lets through; they
        // never reach the log themselves (the guard's own line follows `RUST_LOG`).
        if let Ok(directive) = format!("{RUSTLS_SNI_TARGET}=warn").parse() {
            filter = filter.add_directive(directive);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour(
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            std::env::var_os("NO_COLOR").as_deref(),
        ))
        .with_writer(std::io::stderr);
    let guard = IllegalSniGuard::new();
    // A second initialisation (tests) is not an error worth reporting.
    let _ = if json {
        builder.json().finish().with(guard).try_init()
    } else {
        builder.finish().with(guard).try_init()
    };
}

/// Whether log lines carry colour codes: only on a terminal, and never with `NO_COLOR` set to
/// anything but the empty string (no-color.org), so a log redirected to a file stays plain text.
pub fn colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Keeps rustls' illegal-SNI warning out of the log: rustls writes one per ClientHello that
/// sends an IP address (or a malformed name) as SNI, before any authentication, so any client
/// could flood the log. Each is counted in [`TLS_ILLEGAL_SNI_TOTAL`] instead, and one line of
/// our own says so at most once a minute, with how many came since the last one.
pub struct IllegalSniGuard {
    log: LogThrottle,
}

/// Lets a warning that any request can provoke through at most once per interval: the first
/// one, then the first after each interval, each with how many came since the last line.
pub struct LogThrottle {
    interval: Duration,
    /// When the line was last let through, and how many were counted since.
    last: Mutex<(Option<Instant>, u64)>,
}

impl LogThrottle {
    /// A throttle that has let nothing through yet; usable in a `static`.
    pub const fn new(interval: Duration) -> LogThrottle {
        LogThrottle {
            interval,
            last: Mutex::new((None, 0)),
        }
    }

    /// Counts one occurrence at `now`; `Some(n)` when the line is due, `n` the occurrences it
    /// stands for (this one included).
    pub fn due(&self, now: Instant) -> Option<u64> {
        // Poisoning cannot leave the pair inconsistent: both are written together.
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.1 += 1;
        match last.0 {
            Some(at) if now.duration_since(at) < self.interval => None,
            _ => {
                let seen = std::mem::take(&mut last.1);
                last.0 = Some(now);
                Some(seen)
            }
        }
    }
}

impl Default for IllegalSniGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl IllegalSniGuard {
    /// A guard that has logged nothing yet.
    pub fn new() -> IllegalSniGuard {
        let _ = metrics_handle();
        IllegalSniGuard {
            log: LogThrottle::new(ILLEGAL_SNI_LOG_INTERVAL),
        }
    }

    /// Counts one warning of `kind`; whether the line is due (and how many it stands for).
    fn count(&self, kind: &'static str, now: Instant) -> Option<u64> {
        metrics::counter!(TLS_ILLEGAL_SNI_TOTAL, "kind" => kind).increment(1);
        self.log.due(now)
    }
}

/// The kind of an illegal-SNI warning of rustls, from its message.
fn illegal_sni_kind(message: &str) -> Option<&'static str> {
    let rest = message.strip_prefix("Illegal SNI ")?;
    if rest.starts_with("extension: ignoring IP address") {
        Some("ip_address")
    } else if rest.starts_with("hostname received") {
        Some("invalid_hostname")
    } else if rest.starts_with("extension: duplicate host_name") {
        Some("duplicate")
    } else {
        None
    }
}

/// Reads the target and message of an event that came through the `log` crate.
#[derive(Default)]
struct LogRecord {
    rustls_sni: bool,
    message: String,
}

impl Visit for LogRecord {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "log.target" {
            self.rustls_sni = value == RUSTLS_SNI_TARGET;
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        // `message` comes before `log.target`; only warnings get here, and they are rare.
        if field.name() == "message" {
            use std::fmt::Write as _;
            let _ = write!(self.message, "{value:?}");
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for IllegalSniGuard {
    fn event_enabled(&self, event: &tracing::Event<'_>, _: Context<'_, S>) -> bool {
        // rustls logs through the `log` crate: such records arrive as events of target "log",
        // their own target in the `log.target` field.
        let meta = event.metadata();
        if *meta.level() != tracing::Level::WARN || meta.target() != "log" {
            return true;
        }
        let mut record = LogRecord::default();
        event.record(&mut record);
        let Some(kind) = illegal_sni_kind(&record.message).filter(|_| record.rustls_sni) else {
            return true;
        };
        if let Some(seen) = self.count(kind, Instant::now()) {
            tracing::warn!(
                kind,
                since_last = seen,
                "a TLS client sent an illegal server name (SNI), ignored; each such handshake \
                 is counted in {TLS_ILLEGAL_SNI_TOTAL}, and this line is logged at most once a \
                 minute"
            );
        }
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn colour_only_on_a_terminal_and_never_with_no_color() {
        assert!(super::colour(true, None));
        assert!(super::colour(true, Some(std::ffi::OsStr::new(""))));
        assert!(!super::colour(false, None));
        assert!(!super::colour(true, Some(std::ffi::OsStr::new("1"))));
    }

    use super::*;

    #[test]
    fn rustls_illegal_sni_warnings_are_told_apart_from_the_rest() {
        assert_eq!(
            illegal_sni_kind(
                "Illegal SNI extension: ignoring IP address presented as hostname (3132)"
            ),
            Some("ip_address")
        );
        assert_eq!(
            illegal_sni_kind("Illegal SNI hostname received \"a b\""),
            Some("invalid_hostname")
        );
        assert_eq!(
            illegal_sni_kind("Illegal SNI extension: duplicate host_name received"),
            Some("duplicate")
        );
        assert_eq!(
            illegal_sni_kind("meaningless CertificateRequest message"),
            None
        );
    }

    #[test]
    fn the_illegal_sni_line_is_due_once_a_minute_with_the_count_since() {
        let guard = IllegalSniGuard::new();
        let start = Instant::now();
        assert_eq!(guard.count("ip_address", start), Some(1));
        for s in 1..60 {
            assert_eq!(
                guard.count("ip_address", start + Duration::from_secs(s)),
                None
            );
        }
        assert_eq!(
            guard.count("invalid_hostname", start + Duration::from_secs(60)),
            Some(60)
        );
    }
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
