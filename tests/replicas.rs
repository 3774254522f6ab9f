//! Several `verifyiam serve` processes on one PostgreSQL database: started together on an empty
//! database, changes made through one replica applied by another, etags spent once across the
//! fleet, concurrent CLI writers through different replicas, a replica killed mid-write-storm,
//! a replica cut off from the database (through a TCP proxy the test controls), a backup
//! restored with pg_restore under running replicas, and a COMMIT slower than the write timeout.
//!
//! Each test creates its own database; with no PostgreSQL server reachable they say so and pass,
//! unless `VERIFYIAM_REQUIRE_POSTGRES=1`.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_verifyiam");
const ALICE: &str = "alice@example.com";

/// A `verifyiam serve` process.
struct Replica {
    child: Child,
    server: Server,
    /// Every line it has logged so far.
    logs: Arc<Mutex<Vec<String>>>,
    _config: tempfile::TempDir,
}

/// The config every replica of a test shares, but for the store URL and `extra` `[iam]` keys.
fn config_text(upstream: &Upstream, store: &str, iam_extra: &str) -> String {
    format!(
        r#"
[server]
extauthz_addr = "127.0.0.1:0"
admin_addr = "127.0.0.1:0"
check_deadline = "2s"
[iam]
project = "{PROJECT}"
store = "{store}"
bootstrap_admins = ["user:{ADMIN}"]
{iam_extra}
[[token.jwt]]
issuer = "{ISSUER}"
jwks_uri = "{jwks}"
"#,
        jwks = upstream.url("/jwks"),
    )
}

impl Replica {
    /// Starts a replica and waits until it has said where it listens (not until it is ready).
    async fn spawn(upstream: &Upstream, store: &str, iam_extra: &str) -> Replica {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("verifyiam.toml");
        let text = config_text(upstream, store, iam_extra);
        std::fs::write(&path, &text).unwrap();
        let mut child = Command::new(BIN)
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let (extauthz, admin) = loop {
            let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
                .await
                .expect("replica logs its addresses")
                .unwrap()
                .expect("replica exited before serving");
            if line.contains("serving") {
                let addrs: Vec<SocketAddr> = line
                    .split(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
                    .filter(|w| w.starts_with("127.0.0.1:"))
                    .filter_map(|w| w.parse().ok())
                    .collect();
                assert_eq!(addrs.len(), 2, "{line}");
                break (addrs[0], addrs[1]);
            }
        };
        // Keep draining its log so the process never blocks on a full pipe.
        let logs: Arc<Mutex<Vec<String>>> = Default::default();
        let kept = logs.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if std::env::var("VERIFYIAM_TEST_SHOW_REPLICA_LOGS").is_ok() {
                    eprintln!("[{admin}] {line}");
                }
                kept.lock().unwrap().push(line);
            }
        });
        let server = Server::external(
            extauthz,
            admin,
            upstream.clone(),
            verifyiam::config::Config::parse(&text).unwrap(),
        );
        Replica {
            child,
            server,
            logs,
            _config: dir,
        }
    }

    async fn ready(&self) {
        wait_ready(self.server.admin, self.server.extauthz).await;
    }

    fn logged(&self, text: &str) -> bool {
        self.logs.lock().unwrap().iter().any(|l| l.contains(text))
    }
}

impl std::ops::Deref for Replica {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.server
    }
}

async fn upstream() -> Upstream {
    let u = Upstream::start().await;
    u.publish(&[rsa(), ec()]);
    u
}

fn dep_path(api: &str, verb: &str) -> String {
    format!("/v1/organizations/{PROJECT}/environments/prod/deployments/{api}:{verb}")
}

async fn set_policy(s: &Server, api: &str, policy: Value) -> (u16, Value) {
    s.post(
        &dep_path(api, "setIamPolicy"),
        Some(&token(ADMIN)),
        &json!({ "policy": policy }).to_string(),
    )
    .await
}

fn invokers(members: &[&str]) -> Value {
    json!({"bindings": [{"role": INVOKER, "members": members}]})
}

/// Polls `check` until it returns `want`; the time it took.
async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if check().await {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("{what}: not within 60 s");
}

/// Two replicas started together and both ready: `a` on `store_a` with `iam_a` in its `[iam]`
/// section, `b` on `store_b` with the defaults.
async fn two_ready(up: &Upstream, store_a: &str, iam_a: &str, store_b: &str) -> (Replica, Replica) {
    let (a, b) = tokio::join!(
        Replica::spawn(up, store_a, iam_a),
        Replica::spawn(up, store_b, "")
    );
    tokio::join!(a.ready(), b.ready());
    (a, b)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::test]
async fn three_replicas_started_together_on_an_empty_database_all_serve() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let up = upstream().await;
    let (a, b, c) = tokio::join!(
        Replica::spawn(&up, &db.url, ""),
        Replica::spawn(&up, &db.url, ""),
        Replica::spawn(&up, &db.url, ""),
    );
    tokio::join!(a.ready(), b.ready(), c.ready());
    a.grant_deployment("prod", "orders", &format!("user:{ALICE}"), INVOKER)
        .await;
    let bearer = format!("Bearer {}", token(ALICE));
    for r in [&a, &b, &c] {
        until("grant visible on every replica", async || {
            r.check(Some(&bearer), "prod", "orders").await.allowed()
        })
        .await;
    }
}

#[tokio::test]
async fn changes_through_one_replica_apply_on_another_within_a_second() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let up = upstream().await;
    let (a, b) = two_ready(&up, &db.url, "", &db.url).await;
    let bearer = format!("Bearer {}", token(ALICE));
    let alice = format!("user:{ALICE}");
    let mut client = b.client().await;
    let mut check_b = async || {
        let req = routed_request(Some(&bearer), "prod", "orders");
        Outcome::from(client.check(req).await.unwrap().into_inner()).allowed()
    };
    assert!(!check_b().await);
    // 120 changes: 60 grants each followed by a revoke.
    let mut lags = Vec::new();
    for i in 0..120 {
        let grant = i % 2 == 0;
        let policy = if grant {
            invokers(&[&alice])
        } else {
            json!({})
        };
        let (status, v) = set_policy(&a, "orders", policy).await;
        assert_eq!(status, 200, "{v}");
        let written = Instant::now();
        until("change applied on the other replica", async || {
            check_b().await == grant
        })
        .await;
        lags.push(written.elapsed());
    }
    let first: Vec<Duration> = {
        let mut v = lags[..20].to_vec();
        v.sort();
        v
    };
    lags.sort();
    println!(
        "propagation A→B over the first 20 changes: p50 {:?}, max {:?}",
        percentile(&first, 0.5),
        first.last().unwrap()
    );
    println!(
        "propagation A→B over {} changes: p50 {:?}, p99 {:?}, max {:?}",
        lags.len(),
        percentile(&lags, 0.5),
        percentile(&lags, 0.99),
        lags.last().unwrap()
    );
}

#[tokio::test]
async fn an_etag_read_on_one_replica_is_spent_once_across_the_fleet() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let up = upstream().await;
    let (a, b) = two_ready(&up, &db.url, "", &db.url).await;
    let (status, read) = a
        .post(
            &dep_path("orders", "getIamPolicy"),
            Some(&token(ADMIN)),
            "{}",
        )
        .await;
    assert_eq!(status, 200, "{read}");
    let etag = read["etag"].as_str().unwrap().to_owned();
    let mut policy = invokers(&["user:bob@example.com"]);
    policy["etag"] = json!(etag);
    let (status, v) = set_policy(&b, "orders", policy.clone()).await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = set_policy(&a, "orders", policy).await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["error"]["status"], "ABORTED", "{v}");
}

#[tokio::test]
async fn two_cli_processes_through_two_replicas_keep_all_thirty_bindings() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let up = upstream().await;
    let (a, b) = two_ready(&up, &db.url, "", &db.url).await;
    let admin = token(ADMIN);
    let writer = |replica: &Replica, who: &'static str| {
        let url = format!("http://{}", replica.admin);
        let admin = admin.clone();
        async move {
            for i in 0..15 {
                let member = format!("user:{who}-{i}@example.com");
                let out = Command::new(BIN)
                    .args([
                        "deployments",
                        "add-iam-policy-binding",
                        "orders",
                        "--organization",
                        PROJECT,
                        "--environment",
                        "prod",
                        "--member",
                        &member,
                        "--role",
                        INVOKER,
                        "--admin-url",
                        &url,
                    ])
                    .env("VERIFYIAM_TOKEN", &admin)
                    .output()
                    .await
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    };
    tokio::join!(writer(&a, "a"), writer(&b, "b"));
    for r in [&a, &b] {
        until("all 30 bindings on each replica", async || {
            let (_, p) = r
                .post(&dep_path("orders", "getIamPolicy"), Some(&admin), "{}")
                .await;
            p["bindings"][0]["members"]
                .as_array()
                .is_some_and(|m| m.len() == 30)
        })
        .await;
    }
}

#[tokio::test]
async fn a_replica_killed_during_a_write_storm_loses_no_acknowledged_write() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let up = upstream().await;
    let (mut a, b) = two_ready(&up, &db.url, "", &db.url).await;
    // Eight writers, each on its own deployment, writing generation after generation through A.
    let acked: Arc<Mutex<Vec<u32>>> = Arc::new(Mutex::new(vec![0; 8]));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..8usize {
        let (acked, stop, admin_url) = (acked.clone(), stop.clone(), a.admin_url(""));
        writers.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let admin = token(ADMIN);
            for generation in 1u32.. {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let body =
                    json!({"policy": invokers(&[&format!("user:w{w}-g{generation}@example.com")])});
                let sent = http
                    .post(format!(
                        "{admin_url}{}",
                        dep_path(&format!("api{w}"), "setIamPolicy")
                    ))
                    .bearer_auth(&admin)
                    .json(&body)
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == 200 => acked.lock().unwrap()[w] = generation,
                    _ => break,
                }
            }
        }));
    }
    until("a few writes acknowledged", async || {
        acked.lock().unwrap().iter().all(|g| *g >= 3)
    })
    .await;
    a.child.start_kill().unwrap(); // SIGKILL
    a.child.wait().await.unwrap();
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let admin = token(ADMIN);
    for (w, generation) in acked.iter().enumerate() {
        let (status, p) = b
            .post(
                &dep_path(&format!("api{w}"), "getIamPolicy"),
                Some(&admin),
                "{}",
            )
            .await;
        assert_eq!(status, 200, "{p}");
        let member = p["bindings"][0]["members"][0].as_str().unwrap_or("");
        // The acknowledged generation, or one in flight when A died (committed, unacknowledged).
        let stored: u32 = member
            .trim_start_matches(&format!("user:w{w}-g"))
            .trim_end_matches("@example.com")
            .parse()
            .unwrap_or(0);
        assert!(
            stored == *generation || stored == generation + 1,
            "writer {w}: acknowledged generation {generation}, stored {member:?}"
        );
    }
}

/// A TCP proxy in front of PostgreSQL that the test can cut (every connection dropped, new ones
/// closed at once) and heal.
struct Proxy {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Proxy {
            addr: listener.local_addr().unwrap(),
            open: Arc::new(AtomicBool::new(true)),
            conns: Default::default(),
        };
        let (open, conns) = (proxy.open.clone(), proxy.conns.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !open.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns.lock().unwrap().push(task.abort_handle());
            }
        });
        proxy
    }

    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    fn heal(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Proxy {
    /// A proxy in front of the test database, and the store URL that reaches it through the proxy.
    async fn in_front_of(db: &TestDatabase) -> (Proxy, String) {
        let mut url = url::Url::parse(&db.url).unwrap();
        let target: SocketAddr =
            format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432))
                .parse()
                .expect("the test server is addressed by IP");
        let proxy = Proxy::start(target).await;
        url.set_port(Some(proxy.addr.port())).unwrap();
        (proxy, url.into())
    }
}

#[tokio::test]
async fn a_replica_cut_off_from_the_database_fails_static_then_closed_and_catches_up() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let (proxy, url) = Proxy::in_front_of(&db).await;
    let up = upstream().await;
    let (a, b) = two_ready(&up, &url, "max_staleness = \"8s\"", &db.url).await;
    let alice = format!("user:{ALICE}");
    let bearer = format!("Bearer {}", token(ALICE));
    b.grant_deployment("prod", "orders", &alice, INVOKER).await;
    until("grant reaches A", async || {
        a.check(Some(&bearer), "prod", "orders").await.allowed()
    })
    .await;

    proxy.cut();
    // Known decisions are still answered from the snapshot.
    assert!(a.check(Some(&bearer), "prod", "orders").await.allowed());
    // Writes through the cut-off replica fail with 503, promptly.
    let started = Instant::now();
    let (status, v) = set_policy(&a, "other", invokers(&[&alice])).await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["status"], "UNAVAILABLE", "{v}");
    println!(
        "write through a cut-off replica answered 503 after {:?}",
        started.elapsed()
    );
    // A revoke through the other replica meanwhile.
    let (status, v) = set_policy(&b, "orders", json!({})).await;
    assert_eq!(status, 200, "{v}");
    // Past max_staleness the cut-off replica refuses Checks that need the store, and is not ready.
    until("stale replica answers 503", async || {
        a.check(Some(&bearer), "prod", "orders").await.http == 503
    })
    .await;
    let (status, _) = a.get("/readyz", None).await;
    assert_eq!(status, 503);

    proxy.heal();
    let lag = until("revoke applied after the cut heals", async || {
        let o = a.check(Some(&bearer), "prod", "orders").await;
        !o.allowed() && o.http == 403
    })
    .await;
    println!("revoke made during the cut applied {lag:?} after it healed");
    let (status, _) = a.get("/readyz", None).await;
    assert_eq!(status, 200);
    let (_, metrics) = a.get("/metrics", None).await;
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    for name in [
        "verifyiam_store_revision",
        "verifyiam_store_staleness_seconds",
        "verifyiam_store_notifications_total",
        "verifyiam_store_connection_errors_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
}

#[tokio::test]
async fn an_unreachable_database_at_start_is_retried_until_it_answers() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let (proxy, url) = Proxy::in_front_of(&db).await;
    proxy.cut();
    let up = upstream().await;
    let mut a = Replica::spawn(&up, &url, "").await;
    until("the failed attempt is logged", async || {
        a.logged("cannot load the policy store from PostgreSQL yet")
    })
    .await;
    // Still running, not ready, and Checks that need the store are 503, never allowed.
    assert!(a.child.try_wait().unwrap().is_none());
    let (status, body) = a.get("/readyz", None).await;
    assert_eq!(status, 503, "{body}");
    assert!(!serving(a.extauthz).await);
    let bearer = format!("Bearer {}", token(ALICE));
    assert_eq!(a.check(Some(&bearer), "prod", "orders").await.http, 503);
    proxy.heal();
    a.ready().await;
    a.grant_deployment("prod", "orders", &format!("user:{ALICE}"), INVOKER)
        .await;
    assert!(a.check(Some(&bearer), "prod", "orders").await.allowed());
}

/// A server that speaks just enough of the PostgreSQL protocol to refuse every login the way
/// PostgreSQL does (SQLSTATE 28P01), for the wrong-password case on a server that trusts all.
async fn refusing_server() -> SocketAddr {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                loop {
                    let Ok(len) = socket.read_u32().await else {
                        return;
                    };
                    let mut body = vec![0; (len as usize).saturating_sub(4)];
                    if socket.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    if body.starts_with(&80877103u32.to_be_bytes()) {
                        // SSLRequest: no TLS here.
                        let _ = socket.write_all(b"N").await;
                        continue;
                    }
                    let mut fields = Vec::new();
                    for (code, text) in [
                        (b'S', "FATAL"),
                        (b'V', "FATAL"),
                        (b'C', "28P01"),
                        (b'M', "password authentication failed for user \"app\""),
                    ] {
                        fields.push(code);
                        fields.extend_from_slice(text.as_bytes());
                        fields.push(0);
                    }
                    fields.push(0);
                    let mut msg = vec![b'E'];
                    msg.extend_from_slice(&(fields.len() as u32 + 4).to_be_bytes());
                    msg.extend_from_slice(&fields);
                    let _ = socket.write_all(&msg).await;
                    return;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_refused_login_stops_serve_with_exit_2_and_what_to_do_without_the_password() {
    let addr = refusing_server().await;
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("verifyiam.toml");
    let store = format!("postgres://app:Wr0ngSecret@{addr}/iam?sslmode=disable");
    std::fs::write(&path, config_text(&up, &store, "")).unwrap();
    for args in [&["store", "migrate"][..], &["serve"][..]] {
        let out = Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(&path)
            .env("NO_COLOR", "1")
            .output()
            .await
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("check the user and password"),
            "{args:?}: {err}"
        );
        assert!(
            err.contains(&format!("PostgreSQL at app@{addr}/iam refused the login")),
            "{args:?}: {err}"
        );
        assert!(err.contains("password authentication failed"), "{err}");
        assert!(!err.contains("Wr0ngSecret"), "{args:?}: {err}");
    }
}

/// Runs the binary with `args` and `--config path`; the exit code, stdout and stderr.
async fn with_config(args: &[&str], path: &std::path::Path) -> (Option<i32>, String, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(BIN)
            .args(args)
            .arg(path)
            .env("NO_COLOR", "1")
            .env_remove("VERIFYIAM_STORE")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{args:?} did not exit: retried what it should refuse"))
    .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_missing_database_is_a_configuration_error_not_retried() {
    // The server must be there for the database to be missing from it.
    let Some(_db) = TestDatabase::create().await else {
        return;
    };
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("verifyiam.toml");
    let mut store = url::Url::parse(&database_server_url()).unwrap();
    let missing = format!("verifyiam_missing_{}", std::process::id());
    store.set_path(&format!("/{missing}"));
    std::fs::write(&path, config_text(&up, store.as_str(), "")).unwrap();
    for args in [
        &["serve", "--config"][..],
        &["store", "migrate", "--config"][..],
    ] {
        let (code, _, err) = with_config(args, &path).await;
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(
            err.contains(&format!("the database \"{missing}\" does not exist"))
                && err.contains(&format!("CREATE DATABASE {missing};")),
            "{args:?}: {err}"
        );
    }
    let (code, out, err) = with_config(&["config", "check", "--connect"], &path).await;
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(out.contains("iam.store: FAILED: PostgreSQL at"), "{out}");
    assert!(out.contains("token.jwt[0].jwks_uri: ok ("), "{out}");
}

#[tokio::test]
async fn a_missing_permission_is_a_configuration_error_that_says_what_to_grant() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    // A role that may log in but not create tables in the database's schema.
    let role = format!("verifyiam_limited_{}", std::process::id());
    let admin = |sql: String, url: String| async move {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client.batch_execute(&sql).await.unwrap();
    };
    admin(
        format!("DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN"),
        database_server_url(),
    )
    .await;
    admin(
        format!("REVOKE CREATE ON SCHEMA public FROM PUBLIC, {role}"),
        db.url.clone(),
    )
    .await;
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("verifyiam.toml");
    let mut store = url::Url::parse(&db.url).unwrap();
    store.set_username(&role).unwrap();
    std::fs::write(&path, config_text(&up, store.as_str(), "")).unwrap();
    let (code, out, err) = with_config(&["config", "check", "--connect"], &path).await;
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(out.contains("lacks a permission verifyiam needs"), "{out}");
    for args in [
        &["serve", "--config"][..],
        &["store", "migrate", "--config"][..],
    ] {
        let (code, _, err) = with_config(args, &path).await;
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(
            err.contains("lacks a permission verifyiam needs") && err.contains("GRANT"),
            "{args:?}: {err}"
        );
    }
    drop(db);
    admin(format!("DROP ROLE IF EXISTS {role}"), database_server_url()).await;
}

#[tokio::test]
async fn config_check_connect_reports_each_dependency() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("verifyiam.toml");
    std::fs::write(&path, config_text(&up, &db.url, "")).unwrap();
    let (code, out, err) = with_config(&["config", "check", "--connect"], &path).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("iam.store: ok (connected to "), "{out}");
    assert!(out.contains("token.jwt[0].jwks_uri: ok ("), "{out}");
    assert!(out.contains(" 2 keys)"), "{out}");

    // The key set answers 404, the database is unreachable: each said, exit 3.
    up.set("/jwks", Reply::status(404, "not here"));
    let unreachable = "postgres://app@127.0.0.1:1/iam?sslmode=disable";
    std::fs::write(&path, config_text(&up, unreachable, "")).unwrap();
    let (code, out, err) = with_config(&["config", "check", "--connect"], &path).await;
    assert_eq!(code, Some(3), "{out}{err}");
    assert!(
        out.contains("iam.store: FAILED: the policy store is unavailable"),
        "{out}"
    );
    assert!(out.contains("token.jwt[0].jwks_uri: FAILED: "), "{out}");
    assert!(out.contains("HTTP 404"), "{out}");
}

#[tokio::test]
async fn store_migrate_applies_the_schema_and_a_newer_schema_is_refused() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("verifyiam.toml");
    std::fs::write(&path, config_text(&up, &db.url, "")).unwrap();
    let migrate = || async {
        Command::new(BIN)
            .args(["store", "migrate", "--config"])
            .arg(&path)
            .output()
            .await
            .unwrap()
    };
    let out = migrate().await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("applied [1, 2, 3]"));
    let out = migrate().await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("already at version 3"));

    let (client, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(
            "INSERT INTO verifyiam_schema (version, name) VALUES (999, 'from the future')",
        )
        .await
        .unwrap();
    drop(client);
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .env("NO_COLOR", "1")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("schema is at version 999"), "{err}");
}

#[tokio::test]
async fn a_malformed_store_url_is_a_config_error_naming_iam_store() {
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("verifyiam.toml");
    std::fs::write(
        &path,
        config_text(
            &up,
            "postgres://app:Wr0ngSecret@db/iam?sslmode=sometimes",
            "",
        ),
    )
    .unwrap();
    for args in [&["config", "check"][..], &["serve", "--config"][..]] {
        let out = Command::new(BIN)
            .args(args)
            .arg(&path)
            .output()
            .await
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("iam.store"), "{err}");
        assert!(!err.contains("Wr0ngSecret"), "{err}");
    }
}

/// A plain SQL connection to a test database.
async fn sql(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

/// Whether `pg_dump` and `pg_restore` can be run; without them the restore tests say so and
/// pass, unless PostgreSQL is required.
fn restore_tools() -> bool {
    let found = ["pg_dump", "pg_restore"].iter().all(|tool| {
        std::process::Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !found {
        assert!(
            !postgres_required(),
            "pg_dump and pg_restore are required (VERIFYIAM_REQUIRE_POSTGRES=1) but not found"
        );
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "\n*** pg_dump / pg_restore not found: SKIPPING the restore tests ***\n"
        );
    }
    found
}

/// `pg_dump` of the whole database, in the custom format.
async fn pg_dump(url: &str, file: &std::path::Path) {
    let out = Command::new("pg_dump")
        .arg("--format=custom")
        .arg(format!("--file={}", file.display()))
        .arg(format!("--dbname={url}"))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What an operator types to go back to a dump, and nothing more: `pg_restore --clean` under
/// the running replicas.
async fn pg_restore(url: &str, file: &std::path::Path) {
    let out = Command::new("pg_restore")
        .args([
            "--clean",
            "--if-exists",
            "--single-transaction",
            "--no-owner",
        ])
        .arg(format!("--dbname={url}"))
        .arg(file)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two replicas on one database, two unrelated writes granting bob (revisions 1 and 2), and a
/// dump of the database at revision 2: where both restore tests start.
struct DumpedAtRevision2 {
    a: Replica,
    b: Replica,
    dump: std::path::PathBuf,
    _dir: tempfile::TempDir,
    _up: Upstream,
    db: TestDatabase,
}

impl DumpedAtRevision2 {
    /// `None` (the test skips, loudly) without PostgreSQL or its dump and restore tools.
    async fn start() -> Option<DumpedAtRevision2> {
        let db = TestDatabase::create().await?;
        if !restore_tools() {
            return None;
        }
        let up = upstream().await;
        let (a, b) = two_ready(&up, &db.url, "", &db.url).await;
        for api in ["unrelated-1", "unrelated-2"] {
            let bob = "user:bob@example.com";
            assert_eq!(set_policy(&a, api, invokers(&[bob])).await.0, 200);
        }
        let dir = tempfile::tempdir().unwrap();
        let dump = dir.path().join("revision-2.dump");
        pg_dump(&db.url, &dump).await;
        Some(DumpedAtRevision2 {
            a,
            b,
            dump,
            _dir: dir,
            _up: up,
            db,
        })
    }
}

/// Two replicas, two unrelated writes (revisions 1 and 2), a dump, a grant (revision 3) applied
/// by both; the dump restored; two unrelated writes through B (revisions 3 and 4 again, another
/// history). A must drop the grant that no longer exists, in Checks and in getIamPolicy.
#[tokio::test]
async fn a_restored_older_dump_is_noticed_though_two_writes_pass_the_replicas_revision() {
    // Every field bound: the dump's directory and the upstream must live to the test's end.
    let Some(DumpedAtRevision2 {
        a,
        b,
        dump,
        _dir,
        _up,
        db,
    }) = DumpedAtRevision2::start().await
    else {
        return;
    };
    let bob = "user:bob@example.com";

    let alice = format!("user:{ALICE}");
    assert_eq!(set_policy(&a, "orders", invokers(&[&alice])).await.0, 200);
    let as_alice = format!("Bearer {}", token(ALICE));
    for r in [&a, &b] {
        until("the grant applied on both replicas", async || {
            r.check(Some(&as_alice), "prod", "orders").await.allowed()
        })
        .await;
    }

    pg_restore(&db.url, &dump).await;
    for api in ["unrelated-3", "unrelated-4"] {
        let (status, body) = set_policy(&b, api, invokers(&[bob])).await;
        assert_eq!(status, 200, "{body}");
    }
    let as_bob = format!("Bearer {}", token("bob@example.com"));
    until("A applies the writes made after the restore", async || {
        a.check(Some(&as_bob), "prod", "unrelated-4")
            .await
            .allowed()
    })
    .await;
    for (name, r) in [("A", &a), ("B", &b)] {
        let outcome = r.check(Some(&as_alice), "prod", "orders").await;
        assert!(
            !outcome.allowed(),
            "replica {name} still allows a grant the restore removed"
        );
        let (status, policy) = r
            .get(&dep_path("orders", "getIamPolicy"), Some(&token(ADMIN)))
            .await;
        assert_eq!(status, 200, "{policy}");
        assert!(
            !policy.to_string().contains(ALICE),
            "replica {name} shows a policy the restore removed: {policy}"
        );
    }
}

/// Revisions 1 and 2, a dump, a grant at revision 3 that A allows (and caches); the dump
/// restored and one unrelated write through B: revision 3 again, naming another history. A's
/// decision cached at the old revision 3 must not be answered.
#[tokio::test]
async fn a_decision_cached_before_a_restore_is_not_answered_at_the_same_revision_number() {
    // Every field bound: the dump's directory and the upstream must live to the test's end.
    let Some(DumpedAtRevision2 {
        a,
        b,
        dump,
        _dir,
        _up,
        db,
    }) = DumpedAtRevision2::start().await
    else {
        return;
    };
    let bob = "user:bob@example.com";

    let alice = format!("user:{ALICE}");
    assert_eq!(set_policy(&a, "orders", invokers(&[&alice])).await.0, 200);
    let as_alice = format!("Bearer {}", token(ALICE));
    // Decided (and cached) on A at revision 3.
    assert!(a.check(Some(&as_alice), "prod", "orders").await.allowed());
    until("the grant applied on B", async || {
        b.check(Some(&as_alice), "prod", "orders").await.allowed()
    })
    .await;

    pg_restore(&db.url, &dump).await;
    let (status, body) = set_policy(&b, "unrelated-3", invokers(&[bob])).await;
    assert_eq!(status, 200, "{body}");
    until(
        "A stops allowing the grant the restore removed (its revision 3 names another history)",
        async || !a.check(Some(&as_alice), "prod", "orders").await.allowed(),
    )
    .await;
    let as_bob = format!("Bearer {}", token("bob@example.com"));
    assert!(
        a.check(Some(&as_bob), "prod", "unrelated-3")
            .await
            .allowed()
    );
}

/// A write whose COMMIT takes longer than the write timeout (5 s): a deferred constraint
/// trigger makes COMMIT sleep 6 s. The write is in the database, so the caller must be told it
/// was applied, not "not applied".
#[tokio::test]
async fn a_write_whose_commit_outlasts_the_write_timeout_is_acknowledged_once_committed() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let up = upstream().await;
    let a = Replica::spawn(&up, &db.url, "").await;
    a.ready().await;
    let client = sql(&db.url).await;
    client
        .batch_execute(
            "CREATE FUNCTION test_slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN PERFORM pg_sleep(6); RETURN NULL; END $$; \
             CREATE CONSTRAINT TRIGGER test_slow_commit AFTER UPDATE ON verifyiam_meta \
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION test_slow_commit();",
        )
        .await
        .unwrap();
    let alice = format!("user:{ALICE}");
    let (status, body) = set_policy(&a, "orders", invokers(&[&alice])).await;
    until("the write's revision committed", async || {
        let row = client
            .query_one("SELECT revision FROM verifyiam_meta WHERE id = 1", &[])
            .await
            .unwrap();
        row.get::<_, i64>(0) == 1
    })
    .await;
    assert_eq!(
        status, 200,
        "answered {status} {body} though the write committed"
    );
    assert!(body.to_string().contains(ALICE), "{body}");
    let as_alice = format!("Bearer {}", token(ALICE));
    assert!(a.check(Some(&as_alice), "prod", "orders").await.allowed());
    assert!(
        !a.logged("not acknowledged"),
        "a committed write was logged as not acknowledged"
    );
}

/// Takes the fleet-wide writer's lock (the revision row every write locks) in an open
/// transaction of `client`, until it ends.
async fn hold_writer_lock(client: &tokio_postgres::Client) {
    client
        .batch_execute("BEGIN; SELECT revision FROM verifyiam_meta WHERE id = 1 FOR UPDATE")
        .await
        .unwrap();
}

/// How many sessions of this database are waiting for a lock.
async fn lock_waiters(monitor: &tokio_postgres::Client) -> i64 {
    monitor
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

const MALLORY: &str = "mallory@example.com";

/// The owner revokes mallory's `roles/apigee.admin` through B; mallory, who still holds it in
/// A's snapshot, grants herself invoke through A. Both wait for the writer's lock (held by a
/// test session), the revoke first. Once it is released the revoke commits first, so mallory's
/// write must be judged on the state without her role: 403, and nothing of hers stored.
#[tokio::test]
async fn a_revoke_queued_before_a_self_grant_refuses_the_self_grant() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let up = upstream().await;
    let (a, b) = two_ready(&up, &db.url, "", &db.url).await;
    let project = format!("/v1/projects/{PROJECT}:setIamPolicy");
    let mallory = format!("user:{MALLORY}");
    let grant =
        json!({"policy": {"bindings": [{"role": "roles/apigee.admin", "members": [&mallory]}]}});
    let (status, v) = a
        .post(&project, Some(&token(ADMIN)), &grant.to_string())
        .await;
    assert_eq!(status, 200, "{v}");

    let (holder, monitor) = (sql(&db.url).await, sql(&db.url).await);
    hold_writer_lock(&holder).await;
    let owner = token(ADMIN);
    let revoke = b.post(&project, Some(&owner), r#"{"policy":{}}"#);
    let self_grant = async {
        until("the revoke waits for the writer's lock", async || {
            lock_waiters(&monitor).await == 1
        })
        .await;
        let body = json!({ "policy": invokers(&[&mallory]) });
        a.post(
            &dep_path("orders", "setIamPolicy"),
            Some(&token(MALLORY)),
            &body.to_string(),
        )
        .await
    };
    let release = async {
        until("both writes wait for the writer's lock", async || {
            lock_waiters(&monitor).await == 2
        })
        .await;
        holder.batch_execute("COMMIT").await.unwrap();
    };
    let ((revoked, rv), (granted, gv), ()) = tokio::join!(revoke, self_grant, release);
    assert_eq!(revoked, 200, "{rv}");
    assert_eq!(granted, 403, "mallory's self-grant after the revoke: {gv}");
    assert_eq!(gv["error"]["status"], "PERMISSION_DENIED", "{gv}");
    let (status, policy) = b
        .post(
            &dep_path("orders", "getIamPolicy"),
            Some(&token(ADMIN)),
            "{}",
        )
        .await;
    assert_eq!(status, 200, "{policy}");
    assert!(!policy.to_string().contains(MALLORY), "{policy}");
}

/// A write queued behind another one that waits for the database does not wait for ever: past
/// the bound on the writer's turn it is answered 503, saying it was not applied.
#[tokio::test]
async fn a_write_queued_behind_a_stuck_write_answers_503_not_applied() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let up = upstream().await;
    let a = Replica::spawn(&up, &db.url, "").await;
    a.ready().await;
    let (holder, monitor) = (sql(&db.url).await, sql(&db.url).await);
    hold_writer_lock(&holder).await;
    let bob = "user:bob@example.com";
    let first = set_policy(&a, "first", invokers(&[bob]));
    let second = async {
        until("the first write waits for the writer's lock", async || {
            lock_waiters(&monitor).await == 1
        })
        .await;
        let started = Instant::now();
        let answer = set_policy(&a, "second", invokers(&[bob])).await;
        println!("the queued write answered after {:?}", started.elapsed());
        holder.batch_execute("ROLLBACK").await.unwrap();
        answer
    };
    let ((first, fv), (status, v)) = tokio::join!(first, second);
    println!("the first write answered {first}: {fv}");
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["status"], "UNAVAILABLE", "{v}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("waited") && message.contains("not applied"),
        "{message}"
    );
    let (status, policy) = a
        .post(
            &dep_path("second", "getIamPolicy"),
            Some(&token(ADMIN)),
            "{}",
        )
        .await;
    assert_eq!(status, 200, "{policy}");
    assert!(!policy.to_string().contains(bob), "{policy}");
}

/// Past `iam.max_staleness` without the database, every admin read answers 503 like Checks do,
/// testIamPermissions included; once the database is back they answer again.
#[tokio::test]
async fn a_stale_replica_answers_admin_reads_503() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let (proxy, url) = Proxy::in_front_of(&db).await;
    let up = upstream().await;
    let a = Replica::spawn(&up, &url, "max_staleness = \"4s\"").await;
    a.ready().await;
    let alice = format!("user:{ALICE}");
    assert_eq!(set_policy(&a, "orders", invokers(&[&alice])).await.0, 200);
    let admin = token(ADMIN);
    let env = format!("/v1/organizations/{PROJECT}/environments/prod");
    let reads: Vec<(String, String, Option<&str>)> = vec![
        (
            "POST".into(),
            dep_path("orders", "getIamPolicy"),
            Some("{}"),
        ),
        (
            "POST".into(),
            format!("/v1/projects/{PROJECT}:getIamPolicy"),
            Some("{}"),
        ),
        ("GET".into(), format!("{env}/deployments"), None),
        ("GET".into(), format!("{env}/deployments/orders"), None),
        ("GET".into(), format!("/v1/projects/{PROJECT}/roles"), None),
        ("GET".into(), "/v1/groups".into(), None),
    ];
    let test_permissions = async |token: &str| {
        a.post(
            &dep_path("orders", "testIamPermissions"),
            Some(token),
            r#"{"permissions":["apigee.deployments.invoke"]}"#,
        )
        .await
    };
    let read = async |(method, path, body): &(String, String, Option<&str>)| match method.as_str() {
        "POST" => a.post(path, Some(&admin), body.unwrap_or("{}")).await,
        _ => a.get(path, Some(&admin)).await,
    };
    for r in &reads {
        let (status, v) = read(r).await;
        assert_eq!(status, 200, "{} before the cut: {v}", r.1);
    }
    assert_eq!(test_permissions(&token(ALICE)).await.0, 200);

    proxy.cut();
    until("getIamPolicy answers 503 once stale", async || {
        read(&reads[0]).await.0 == 503
    })
    .await;
    for r in &reads {
        let (status, v) = read(r).await;
        assert_eq!(status, 503, "{} while stale: {v}", r.1);
        assert_eq!(v["error"]["status"], "UNAVAILABLE", "{v}");
    }
    let (status, v) = test_permissions(&token(ALICE)).await;
    assert_eq!(status, 503, "testIamPermissions while stale: {v}");

    proxy.heal();
    until("reads answer again once the database is back", async || {
        read(&reads[0]).await.0 == 200
    })
    .await;
    assert_eq!(test_permissions(&token(ALICE)).await.0, 200);
}

/// Read-your-writes across replicas: a write acknowledged through one replica is in the very
/// next admin read through the other, every time (the read barrier), in both directions. Prints
/// what an admin read costs with the barrier, and the barrier alone.
#[tokio::test]
async fn a_write_through_one_replica_is_read_back_through_another_at_once_every_time() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let up = upstream().await;
    let (a, b) = two_ready(&up, &db.url, "", &db.url).await;
    let admin = token(ADMIN);
    for i in 0..100 {
        let (writer, reader) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let member = format!("user:n{i}@example.com");
        let (status, written) = set_policy(writer, "orders", invokers(&[&member])).await;
        assert_eq!(status, 200, "{written}");
        let (status, read) = reader
            .post(&dep_path("orders", "getIamPolicy"), Some(&admin), "{}")
            .await;
        assert_eq!(status, 200, "{read}");
        assert_eq!(read, written, "read {i} through the other replica");
        let (status, listed) = reader
            .get(
                &format!("/v1/organizations/{PROJECT}/environments/prod/deployments/orders"),
                Some(&admin),
            )
            .await;
        assert_eq!(status, 200, "{listed}");
    }

    // What the barrier costs: admin reads through B, then the barrier alone, in this process.
    let n = 300;
    let started = Instant::now();
    for _ in 0..n {
        let (status, _) = b
            .post(&dep_path("orders", "getIamPolicy"), Some(&admin), "{}")
            .await;
        assert_eq!(status, 200);
    }
    let per_read = started.elapsed() / n;
    let store = Arc::new(verifyiam::store::PolicyStore::postgres(
        verifyiam::store::PgUrl::parse(&db.url).unwrap(),
        PROJECT,
        &[],
        Duration::from_secs(300),
    ));
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(store.clone().run(stop.clone()));
    store.loaded().await;
    let started = Instant::now();
    for _ in 0..n {
        store.read_barrier(Duration::from_secs(2)).await.unwrap();
    }
    let per_barrier = started.elapsed() / n;
    println!(
        "admin getIamPolicy through a replica with the read barrier: {per_read:?} per read \
         ({:.0}/s, one client); the barrier alone: {per_barrier:?}",
        1.0 / per_read.as_secs_f64()
    );
    stop.cancel();
    running.await.unwrap().unwrap();
}

/// A replica cut off from the database answers admin reads 503 at once, well inside
/// `iam.max_staleness` (5 minutes here), rather than from a snapshot a write through another
/// replica has left behind; once the database is back it reads the new state.
#[tokio::test]
async fn a_replica_that_cannot_reach_the_database_answers_admin_reads_503_not_stale() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let (proxy, url) = Proxy::in_front_of(&db).await;
    let up = upstream().await;
    let (a, b) = two_ready(&up, &url, "", &db.url).await;
    let alice = format!("user:{ALICE}");
    assert_eq!(set_policy(&b, "orders", invokers(&[&alice])).await.0, 200);
    let admin = token(ADMIN);
    let read = async || {
        a.post(&dep_path("orders", "getIamPolicy"), Some(&admin), "{}")
            .await
    };
    let (status, v) = read().await;
    assert_eq!(status, 200, "{v}");
    assert!(v.to_string().contains(ALICE), "{v}");

    proxy.cut();
    let (status, v) = set_policy(&b, "orders", invokers(&["user:bob@example.com"])).await;
    assert_eq!(status, 200, "{v}");
    for _ in 0..3 {
        let (status, v) = read().await;
        assert_eq!(status, 503, "A answered a read it could not confirm: {v}");
        assert_eq!(v["error"]["status"], "UNAVAILABLE", "{v}");
    }
    // Checks still answer from the snapshot (static stability), as documented.
    let as_alice = format!("Bearer {}", token(ALICE));
    assert!(a.check(Some(&as_alice), "prod", "orders").await.allowed());

    proxy.heal();
    until("A reads the write made while it was cut off", async || {
        let (status, v) = read().await;
        status == 200 && v.to_string().contains("bob@example.com")
    })
    .await;
}

/// An older state restored under two running replicas: the admin reads right after the
/// restore, through either replica, show the restored state, never the vanished newer one.
/// First with `pg_restore` of a dump, then with `store import --replace` of an export.
#[tokio::test]
async fn right_after_a_restore_no_replica_answers_from_the_vanished_state() {
    let Some(DumpedAtRevision2 {
        a,
        b,
        dump,
        _dir,
        _up,
        db,
    }) = DumpedAtRevision2::start().await
    else {
        return;
    };
    let admin = token(ADMIN);
    let config = _dir.path().join("cli.toml");
    std::fs::write(
        &config,
        format!("[iam]\nproject = \"{PROJECT}\"\nstore = \"{}\"\n", db.url),
    )
    .unwrap();
    let export = _dir.path().join("revision-2.jsonl");
    let out = Command::new(BIN)
        .args(["store", "export", "--config"])
        .arg(&config)
        .arg("--output")
        .arg(&export)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let alice = format!("user:{ALICE}");
    let as_alice = format!("Bearer {}", token(ALICE));

    for restore in ["pg_restore", "store import --replace"] {
        assert_eq!(set_policy(&a, "orders", invokers(&[&alice])).await.0, 200);
        for r in [&a, &b] {
            until("the grant applied on both replicas", async || {
                r.check(Some(&as_alice), "prod", "orders").await.allowed()
            })
            .await;
        }
        if restore == "pg_restore" {
            pg_restore(&db.url, &dump).await;
        } else {
            let out = Command::new(BIN)
                .args(["store", "import", "--replace", "--config"])
                .arg(&config)
                .arg(&export)
                .output()
                .await
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for (name, r) in [("A", &a), ("B", &b)] {
            let (status, policy) = r
                .post(&dep_path("orders", "getIamPolicy"), Some(&admin), "{}")
                .await;
            assert_eq!(status, 200, "{policy}");
            assert!(
                !policy.to_string().contains(ALICE),
                "{restore}: replica {name} answered from the vanished state: {policy}"
            );
            let (status, kept) = r
                .post(&dep_path("unrelated-2", "getIamPolicy"), Some(&admin), "{}")
                .await;
            assert_eq!(status, 200, "{kept}");
            assert!(kept.to_string().contains("bob@example.com"), "{kept}");
            // The admin read brought the replica's snapshot back: Checks follow at once.
            assert!(
                !r.check(Some(&as_alice), "prod", "orders").await.allowed(),
                "{restore}: replica {name} allows a grant the restore removed"
            );
        }
    }
}

/// `store copy` from an embedded store (its server stopped: two policies and the deployment one
/// of them implies) into the PostgreSQL database a
/// replica is already serving: verified, and the replica answers the copied policies with
/// their etags.
#[tokio::test]
async fn store_copy_from_embedded_into_a_database_a_replica_serves() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let up = upstream().await;
    let replica = Replica::spawn(&up, &db.url, "").await;
    replica.ready().await;

    let embedded = Server::start().await;
    let alice = format!("user:{ALICE}");
    let (status, policy) = set_policy(&embedded, "orders", invokers(&[&alice])).await;
    assert_eq!(status, 200, "{policy}");
    embedded
        .grant_project("user:bob@example.com", "roles/viewer")
        .await;
    let store = embedded.stop().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("embedded.toml");
    std::fs::write(
        &config,
        format!(
            "[iam]\nproject = \"{PROJECT}\"\nstore = \"{}\"\n",
            store.location()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["store", "copy", "--from"])
        .arg(&config)
        .args(["--to", &db.url])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("verified: 3 records, etags equal"), "{text}");
    let (status, read) = replica
        .post(
            &dep_path("orders", "getIamPolicy"),
            Some(&token(ADMIN)),
            "{}",
        )
        .await;
    assert_eq!((status, &read), (200, &policy));
    let as_alice = format!("Bearer {}", token(ALICE));
    until("the replica allows the copied grant", async || {
        replica
            .check(Some(&as_alice), "prod", "orders")
            .await
            .allowed()
    })
    .await;
}

/// Deletions are pruned past the horizon; a replica that was away since before the pruned
/// revisions does not keep the deleted policy (it could not see the deletion), it reloads.
#[tokio::test]
async fn a_replica_away_past_the_tombstone_horizon_reloads_and_drops_what_was_deleted() {
    use verifyiam::store::{Draft, PgUrl, PolicyStore, StoreError};
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let open = || {
        Arc::new(PolicyStore::postgres(
            PgUrl::parse(&db.url).unwrap(),
            PROJECT,
            &[],
            Duration::from_secs(300),
        ))
    };
    let (a, c) = (open(), open());
    let (stop_a, stop_c) = (
        tokio_util::sync::CancellationToken::new(),
        tokio_util::sync::CancellationToken::new(),
    );
    let run_a = tokio::spawn(a.clone().run(stop_a.clone()));
    let run_c = tokio::spawn(c.clone().run(stop_c.clone()));
    tokio::join!(a.loaded(), c.loaded());
    let name = format!("organizations/{PROJECT}/environments/prod/deployments/orders");
    let policy: verifyiam::iam::policy::Policy =
        serde_json::from_value(invokers(&[&format!("user:{ALICE}")])).unwrap();
    let put = name.clone();
    a.mutate(move |d: &mut Draft<'_>| {
        d.put_policy(&put, policy);
        Ok::<_, StoreError>(())
    })
    .await
    .unwrap();
    c.read_barrier(Duration::from_secs(5)).await.unwrap();
    assert!(c.snapshot().entry(&name).is_some());
    // C goes away holding the policy.
    stop_c.cancel();
    run_c.await.unwrap().unwrap();

    let gone = name.clone();
    a.mutate(move |d: &mut Draft<'_>| {
        d.delete_policy(&gone);
        Ok::<_, StoreError>(())
    })
    .await
    .unwrap();
    a.mutate(|d: &mut Draft<'_>| {
        d.put_group("team@example.com", vec!["user:bob@example.com".into()]);
        Ok::<_, StoreError>(())
    })
    .await
    .unwrap();
    let sql = sql(&db.url).await;
    let tombstones = async || -> i64 {
        sql.query_one(
            "SELECT count(*) FROM verifyiam_records WHERE value IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0)
    };
    assert_eq!(tombstones().await, 1);
    // A horizon of zero: everything committed before now is past it.
    assert_eq!(a.prune_tombstones(Duration::ZERO).await.unwrap(), 1);
    assert_eq!(tombstones().await, 0);

    // C comes back: its revision's entry is gone, so it reloads rather than catch up.
    let stop_c = tokio_util::sync::CancellationToken::new();
    let run_c = tokio::spawn(c.clone().run(stop_c.clone()));
    c.read_barrier(Duration::from_secs(5)).await.unwrap();
    assert_eq!(c.snapshot().epoch, a.snapshot().epoch);
    assert!(
        c.snapshot().entry(&name).is_none(),
        "the returning replica still holds a policy deleted while it was away"
    );
    assert!(c.snapshot().group("team@example.com").is_some());
    for (stop, run) in [(stop_a, run_a), (stop_c, run_c)] {
        stop.cancel();
        run.await.unwrap().unwrap();
    }
}
