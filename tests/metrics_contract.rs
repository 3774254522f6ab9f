//! The alerts and the dashboard in deploy/ query only what the server exports: a real server
//! (PostgreSQL store, a backend audience, a broken issuer) serves a few Checks, and every metric
//! named by a rule expression, a rule unit test's series or a dashboard query must be in its
//! `/metrics`, with every label the query names (and every literal value it matches on).
//!
//! A histogram's `_bucket`, `_sum` and `_count` count as the histogram. `job` and `instance`
//! are the scraper's labels, not the server's.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Labels Prometheus adds to every scraped series.
const TARGET_LABELS: [&str; 2] = ["job", "instance"];

/// The series of one scrape: metric name → the label sets seen; and the histogram/summary names.
#[derive(Default, Debug)]
struct Exported {
    series: BTreeMap<String, Vec<BTreeMap<String, String>>>,
    families: BTreeMap<String, String>,
}

impl Exported {
    /// Parses Prometheus text exposition.
    fn parse(text: &str) -> Exported {
        let mut out = Exported::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                    out.families.insert(name.to_owned(), kind.to_owned());
                }
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (name, labels) = match line.find('{') {
                Some(open) => {
                    let close = line.rfind('}').expect("a closing brace");
                    (&line[..open], parse_labels(&line[open + 1..close]))
                }
                None => (
                    line.split_whitespace().next().unwrap_or(""),
                    BTreeMap::new(),
                ),
            };
            out.series.entry(name.to_owned()).or_default().push(labels);
        }
        out
    }

    /// The label sets of `name`: its own series, or a histogram's or summary's parts.
    fn label_sets(&self, name: &str) -> Option<Vec<&BTreeMap<String, String>>> {
        let mut sets: Vec<_> = self.series.get(name).into_iter().flatten().collect();
        if matches!(
            self.families.get(name).map(String::as_str),
            Some("histogram" | "summary")
        ) {
            for part in ["_bucket", "_sum", "_count"] {
                sets.extend(
                    self.series
                        .get(&format!("{name}{part}"))
                        .into_iter()
                        .flatten(),
                );
            }
        }
        // `x_bucket` of a histogram `x` is named as such in the scrape already.
        (!sets.is_empty()).then_some(sets)
    }
}

/// `a="1",b="2"` (values may hold escaped quotes and commas).
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = text;
    while let Some(eq) = rest.find('=') {
        let name = rest[..eq].trim().trim_start_matches(',').trim().to_owned();
        let (value, after) = quoted(&rest[eq + 1..]).expect("a quoted label value");
        out.insert(name, value);
        rest = after;
    }
    out
}

/// A double-quoted string at the start of `text`, unescaped, and what follows it.
fn quoted(text: &str) -> Option<(String, &str)> {
    let text = text.trim_start();
    let quote = text.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    let mut value = String::new();
    let mut chars = text.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => {
                if let Some((_, n)) = chars.next() {
                    value.push(n);
                }
            }
            c if c == quote => return Some((value, &text[i + 1..])),
            c => value.push(c),
        }
    }
    None
}

/// One label matcher of a selector.
#[derive(Debug, Clone, PartialEq)]
struct Matcher {
    label: String,
    op: String,
    value: String,
}

/// A metric a query names, with its label matchers.
#[derive(Debug, Clone, PartialEq)]
struct Selector {
    metric: String,
    matchers: Vec<Matcher>,
}

/// The `verifyiam_` selectors of a PromQL expression, and the labels its `by`/`without`/`on`/
/// `ignoring` clauses name. Strings are skipped, so a name inside quotes is not a metric.
fn parse_promql(expr: &str) -> (Vec<Selector>, BTreeSet<String>) {
    let bytes = expr.as_bytes();
    let mut selectors = Vec::new();
    let mut grouping = BTreeSet::new();
    let is_ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'"' || c == b'\'' {
            i = match quoted(&expr[i..]) {
                Some((_, rest)) => expr.len() - rest.len(),
                None => expr.len(),
            };
            continue;
        }
        if !(c.is_ascii_alphabetic() || c == b'_') {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && is_ident(bytes[i]) {
            i += 1;
        }
        let word = &expr[start..i];
        let rest = &expr[i..];
        let after = rest.trim_start();
        if matches!(word, "by" | "without" | "on" | "ignoring") && after.starts_with('(') {
            let close = after.find(')').expect("a closing parenthesis");
            for label in after[1..close].split(',') {
                let label = label.trim();
                if !label.is_empty() {
                    grouping.insert(label.to_owned());
                }
            }
            i = expr.len() - after.len() + close + 1;
            continue;
        }
        if !word.starts_with("verifyiam_") {
            continue;
        }
        let mut matchers = Vec::new();
        if let Some(mut body) = after.strip_prefix('{') {
            loop {
                body = body.trim_start().trim_start_matches(',').trim_start();
                if let Some(end) = body.strip_prefix('}') {
                    i = expr.len() - end.len();
                    break;
                }
                let name_end = body
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .expect("a matcher");
                let label = body[..name_end].to_owned();
                body = body[name_end..].trim_start();
                let op_len =
                    if body.starts_with("=~") || body.starts_with("!~") || body.starts_with("!=") {
                        2
                    } else {
                        assert!(body.starts_with('='), "no operator after {label} in {expr}");
                        1
                    };
                let op = body[..op_len].to_owned();
                let (value, after_value) = quoted(&body[op_len..])
                    .unwrap_or_else(|| panic!("no quoted value for {label} in {expr}"));
                matchers.push(Matcher { label, op, value });
                body = after_value;
            }
        }
        selectors.push(Selector {
            metric: word.to_owned(),
            matchers,
        });
    }
    (selectors, grouping)
}

/// What `expr` (from `source`) names that the scrape does not have; empty when all is there.
fn problems(source: &str, expr: &str, exported: &Exported) -> Vec<String> {
    let (selectors, grouping) = parse_promql(expr);
    let mut out = Vec::new();
    let mut labels_seen: BTreeSet<&str> = TARGET_LABELS.into_iter().collect();
    for s in &selectors {
        let Some(sets) = exported.label_sets(&s.metric) else {
            out.push(format!("{source}: {} is not exported", s.metric));
            continue;
        };
        labels_seen.extend(sets.iter().flat_map(|l| l.keys().map(String::as_str)));
        for m in &s.matchers {
            if TARGET_LABELS.contains(&m.label.as_str()) {
                continue;
            }
            let values: BTreeSet<&str> = sets
                .iter()
                .filter_map(|l| l.get(&m.label).map(String::as_str))
                .collect();
            if values.is_empty() {
                out.push(format!("{source}: {} has no label {}", s.metric, m.label));
                continue;
            }
            // A literal the query matches on must be a value the server gives the label: a
            // misspelt value selects nothing, silently. Grafana variables are not literals.
            let literals: Vec<&str> = match m.op.as_str() {
                "=" => vec![m.value.as_str()],
                "=~" if m
                    .value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_|.+".contains(c)) =>
                {
                    m.value.split('|').collect()
                }
                _ => vec![],
            };
            for literal in literals.into_iter().filter(|v| !v.contains('$')) {
                if !values.contains(literal) {
                    out.push(format!(
                        "{source}: {}{{{}{}\"{literal}\"}} matches no exported series (values: {values:?})",
                        s.metric, m.label, m.op
                    ));
                }
            }
        }
    }
    for label in &grouping {
        if !selectors.is_empty() && !labels_seen.contains(label.as_str()) {
            out.push(format!(
                "{source}: groups by {label}, which no metric of `{}` carries",
                expr.trim()
            ));
        }
    }
    out
}

/// Every `expr:` of a rules file, and every `series:` of a rule unit-test file: the value on
/// the line, or the block scalar below it.
fn yaml_values(text: &str, key: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start().trim_start_matches("- ");
        let Some(value) = trimmed.strip_prefix(&format!("{key}:")) else {
            continue;
        };
        let indent = line.len() - line.trim_start().len();
        let value = value.trim();
        if value.starts_with('|') || value.starts_with('>') {
            let block: Vec<&str> = lines[n + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
                .map(|l| l.trim())
                .collect();
            out.push(block.join(" "));
        } else {
            out.push(
                value
                    .trim_matches(|c| c == '\'' || c == '"')
                    .replace("\\\"", "\""),
            );
        }
    }
    out
}

/// Every PromQL query of a Grafana dashboard: panel targets and query variables.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push((format!("panel {}", panel["title"]), expr.to_owned()));
            }
        }
    }
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let query = var["query"]["query"].as_str().or(var["query"].as_str());
        if let Some(q) = query.filter(|q| q.contains("verifyiam_")) {
            // label_values(metric, label): the metric must exist and carry the label (or be
            // a scraper's label).
            let expr = match q
                .strip_prefix("label_values(")
                .and_then(|r| r.strip_suffix(')'))
            {
                Some(args) => match args.rsplit_once(',') {
                    Some((metric, label)) => format!("sum by ({}) ({metric})", label.trim()),
                    None => args.to_owned(),
                },
                None => q.to_owned(),
            };
            out.push((format!("variable {}", var["name"]), expr));
        }
    }
    out
}

/// Every query of deploy/: (where, PromQL).
fn deploy_queries() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let rules = std::fs::read_to_string(root.join("prometheus/alerts.yaml")).unwrap();
    let exprs = yaml_values(&rules, "expr");
    let alerts = rules.matches("- alert:").count();
    assert!(
        alerts >= 9 && exprs.len() == alerts,
        "{alerts} alerts, {} expressions",
        exprs.len()
    );
    let tests = std::fs::read_to_string(root.join("prometheus/alerts.test.yaml")).unwrap();
    let series = yaml_values(&tests, "series");
    assert!(!series.is_empty());
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("grafana/verifyiam.json")).unwrap(),
    )
    .unwrap();
    let panels = dashboard_queries(&dashboard);
    assert!(panels.len() >= 10, "{panels:?}");
    exprs
        .into_iter()
        .map(|e| ("deploy/prometheus/alerts.yaml".to_owned(), e))
        .chain(
            series
                .into_iter()
                .map(|s| ("deploy/prometheus/alerts.test.yaml".to_owned(), s)),
        )
        .chain(
            panels
                .into_iter()
                .map(|(w, e)| (format!("deploy/grafana/verifyiam.json {w}"), e)),
        )
        .collect()
}

/// A self-signed certificate and key for 127.0.0.1 that expires at the start of 2100.
fn certificate(dir: &Path) -> (String, String) {
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    params.not_after = rcgen::date_time_ymd(2100, 1, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_file, key_file) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    (
        cert_file.display().to_string(),
        key_file.display().to_string(),
    )
}

async fn scrape(s: &Server) -> String {
    let r = reqwest::get(s.admin_url("/metrics")).await.unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_alerts_and_dashboard_query_is_exported() {
    // The store metrics exist only with PostgreSQL.
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let upstream = Upstream::start().await;
    upstream.publish(&[rsa(), ec()]);
    upstream.set("/broken-jwks", Reply::status(500, "down"));
    let extra = format!(
        "[[token.jwt]]\nissuer = \"https://broken.test\"\njwks_uri = \"{}\"\n\
         [backend_auth]\nsource = \"metadata\"\nmetadata_url = \"{}\"\n",
        upstream.url("/broken-jwks"),
        upstream.url("/metadata"),
    );
    let store = TestStore {
        dir: tempfile::tempdir().unwrap(),
        database: Some(database),
    };
    let s = Server::start_with(Options {
        extra,
        upstream: Some(upstream),
        store: Some(Arc::new(store)),
        ..Default::default()
    })
    .await;

    // Allowed (a cold token, then the same token warm), denied, and a 503 from a key set
    // that cannot be fetched; an allowed Check toward a backend whose ID token cannot be had.
    let admin = format!("Bearer {}", token(ADMIN));
    assert!(s.check(Some(&admin), "prod", "orders").await.allowed());
    assert!(s.check(Some(&admin), "prod", "orders").await.allowed());
    let stranger = s
        .check(
            Some(&format!("Bearer {}", token("stranger@example.com"))),
            "prod",
            "orders",
        )
        .await;
    assert_eq!(stranger.http, 403, "{stranger:#?}");
    let mut broken = claims("someone@example.com");
    broken["iss"] = "https://broken.test".into();
    let unavailable = s
        .check(
            Some(&format!("Bearer {}", rsa().sign(&broken))),
            "prod",
            "orders",
        )
        .await;
    assert_eq!(unavailable.http, 503, "{unavailable:#?}");
    let mut to_backend = routed_request(Some(&admin), "prod", "orders");
    to_backend
        .attributes
        .as_mut()
        .unwrap()
        .context_extensions
        .insert(
            "backend_audience".into(),
            "https://orders.example.com".into(),
        );
    let backend = s.send(to_backend).await;
    assert_eq!(backend.http, 503, "{backend:#?}");

    // A second server in the process serves TLS: the certificate-expiry gauge is
    // process-wide, like every metric, so the first server's /metrics shows it.
    let tls_dir = tempfile::tempdir().unwrap();
    let not_after: u64 = 4_102_444_800; // 2100-01-01T00:00:00Z
    let (cert_file, key_file) = certificate(tls_dir.path());
    let tls = Server::start_with(Options {
        extra: format!("[server.tls]\ncert_file = \"{cert_file}\"\nkey_file = \"{key_file}\"\n"),
        ..Default::default()
    })
    .await;

    let queries = deploy_queries();
    // Gauges set by background tasks (staleness, cache entries) appear within moments.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (text, missing) = loop {
        let text = scrape(&s).await;
        let exported = Exported::parse(&text);
        let missing: Vec<String> = queries
            .iter()
            .flat_map(|(source, expr)| problems(source, expr, &exported))
            .collect();
        if missing.is_empty() || tokio::time::Instant::now() > deadline {
            break (text, missing);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        missing.is_empty(),
        "queried but not exported:\n{}\n\n/metrics:\n{text}",
        missing.join("\n")
    );

    // The gauge holds the served certificate's notAfter, read from the certificate itself.
    let exported = Exported::parse(&text);
    let expiry = &exported.series["verifyiam_tls_certificate_expiry_timestamp_seconds"];
    assert!(
        expiry
            .iter()
            .any(|l| l.get("listener").map(String::as_str) == Some("server.tls")),
        "{expiry:?}"
    );
    let line = text
        .lines()
        .find(|l| {
            l.starts_with(
                "verifyiam_tls_certificate_expiry_timestamp_seconds{listener=\"server.tls\"}",
            )
        })
        .unwrap();
    let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(value, not_after as f64, "{line}");
    tls.stop().await;
    s.stop().await;
}

/// The checker itself: a misspelt metric, a label the metric lacks, a value it never takes and
/// a grouping by a label nobody carries are each reported; a correct query is not.
#[test]
fn the_checker_reports_misspelt_metrics_labels_and_values() {
    let exported = Exported::parse(
        "# TYPE verifyiam_checks_total counter\n\
         verifyiam_checks_total{decision=\"allow\",reason=\"ok\"} 3\n\
         verifyiam_checks_total{decision=\"deny\",reason=\"unavailable\"} 1\n\
         # TYPE verifyiam_check_duration_seconds histogram\n\
         verifyiam_check_duration_seconds_bucket{le=\"0.1\"} 4\n\
         verifyiam_check_duration_seconds_bucket{le=\"+Inf\"} 4\n\
         verifyiam_check_duration_seconds_sum 0.01\n\
         verifyiam_check_duration_seconds_count 4\n",
    );
    let good = "sum by (job, reason) (rate(verifyiam_checks_total{job=~\"$job\", reason=\"unavailable\"}[5m])) \
                / on (job) histogram_quantile(0.99, sum by (le) (rate(verifyiam_check_duration_seconds_bucket[5m])))";
    assert_eq!(problems("good", good, &exported), Vec::<String>::new());
    assert_eq!(
        problems(
            "h",
            "verifyiam_check_duration_seconds_count + verifyiam_check_duration_seconds",
            &exported
        ),
        Vec::<String>::new()
    );
    let cases = [
        (
            "rate(verifyiam_check_total[5m])",
            "verifyiam_check_total is not exported",
        ),
        (
            "verifyiam_checks_total{status=\"ok\"}",
            "has no label status",
        ),
        (
            "verifyiam_checks_total{reason=\"unavaliable\"}",
            "matches no exported series",
        ),
        (
            "verifyiam_checks_total{reason=~\"ok|unavaliable\"}",
            "matches no exported series",
        ),
        (
            "sum by (upstream) (verifyiam_checks_total)",
            "groups by upstream",
        ),
    ];
    for (expr, want) in cases {
        let found = problems("bad", expr, &exported);
        assert!(
            found.len() == 1 && found[0].contains(want),
            "{expr}: {found:?}"
        );
    }
    // A metric name inside a string (a label value) is not a metric.
    assert_eq!(
        parse_promql(
            "label_replace(verifyiam_checks_total, \"x\", \"verifyiam_nope\", \"\", \"\")"
        )
        .0,
        vec![Selector {
            metric: "verifyiam_checks_total".into(),
            matchers: vec![]
        }]
    );
}

#[test]
fn rule_files_yield_their_expressions() {
    let text = "groups:\n  - rules:\n      - alert: A\n        expr: |\n          sum(verifyiam_a)\n            > 1\n        for: 1m\n      - alert: B\n        expr: verifyiam_b == 0\n";
    assert_eq!(
        yaml_values(text, "expr"),
        vec!["sum(verifyiam_a) > 1", "verifyiam_b == 0"]
    );
    let series = "      - series: 'verifyiam_c{job=\"x\"}'\n        values: '1x2'\n";
    assert_eq!(
        yaml_values(series, "series"),
        vec!["verifyiam_c{job=\"x\"}"]
    );
}
