//! TLS and mutual TLS on the listeners (`[server.tls]`, `[server.admin_tls]`), with
//! certificates made here: Check over TLS, clients refused under mTLS, rotation of the
//! certificate and of the client CA without a restart, and bad files named at start.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tonic::transport::Endpoint;

use common::certs::{Ca, Leaf};
use common::{ADMIN, ISSUER, Options, Outcome, PROJECT, Server, Upstream, check_request, rsa};
use verifyiam::config::Config;
use verifyiam::server::{self, Listeners};

/// The files of one listener's TLS.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new(server: &Leaf, client_ca: Option<&Ca>) -> Files {
        let files = Files {
            dir: tempfile::tempdir().unwrap(),
        };
        files.write_server(server);
        if let Some(ca) = client_ca {
            std::fs::write(files.path("ca.crt"), ca.pem()).unwrap();
        }
        files
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write_server(&self, leaf: &Leaf) {
        std::fs::write(self.path("tls.crt"), &leaf.cert_pem).unwrap();
        std::fs::write(self.path("tls.key"), &leaf.key_pem).unwrap();
    }

    /// The TOML table `[server.<table>]` for these files.
    fn table(&self, table: &str, mtls: bool) -> String {
        let mut out = format!(
            "[server.{table}]\ncert_file = {:?}\nkey_file = {:?}\nreload_interval = \"50ms\"\n",
            self.path("tls.crt"),
            self.path("tls.key"),
        );
        if mtls {
            out.push_str(&format!("client_ca_file = {:?}\n", self.path("ca.crt")));
        }
        out
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A client trusting `ca`, presenting `identity` when given.
fn client_config(ca: &Ca, identity: Option<&Leaf>, alpn: &[u8]) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der()).unwrap();
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(leaf) => builder
            .with_client_auth_cert(vec![leaf.der.clone()], leaf.key())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

fn localhost() -> ServerName<'static> {
    ServerName::try_from("localhost").unwrap()
}

/// A Check (no token, so a 401 when answered) over TLS with `config`.
async fn check_over_tls(addr: SocketAddr, config: Arc<ClientConfig>) -> Result<Outcome, String> {
    let connector = TlsConnector::from(config);
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let connector = connector.clone();
            async move {
                let tcp = TcpStream::connect(addr).await?;
                let tls = connector.connect(localhost(), tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut request = check_request(None, "api.example.com", "/");
    let extensions = &mut request.attributes.as_mut().unwrap().context_extensions;
    extensions.insert("environment".into(), "prod".into());
    extensions.insert("deployment".into(), "orders".into());
    AuthorizationClient::new(channel)
        .check(request)
        .await
        .map(|r| Outcome::from(r.into_inner()))
        .map_err(|s| format!("check: {s}"))
}

/// The certificate the listener presents to a new connection.
async fn served_certificate(addr: SocketAddr, ca: &Ca) -> Option<CertificateDer<'static>> {
    let tcp = TcpStream::connect(addr).await.ok()?;
    let tls = TlsConnector::from(client_config(ca, None, b"h2"))
        .connect(localhost(), tcp)
        .await
        .ok()?;
    tls.get_ref().1.peer_certificates()?.first().cloned()
}

/// Polls until `done` holds; fails the test past a generous bound.
async fn eventually<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..1000 {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what}: not within the bound");
}

async fn start_with_tls(extra: String) -> Server {
    Server::start_with(Options {
        extra,
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn check_over_tls_and_plaintext_refused() {
    let ca = Ca::new("server CA");
    let files = Files::new(&ca.server(), None);
    let server = start_with_tls(files.table("tls", false)).await;

    let outcome = check_over_tls(server.extauthz, client_config(&ca, None, b"h2"))
        .await
        .expect("Check over TLS is answered");
    assert_eq!(outcome.http, 401);

    // A plaintext (h2c) client gets no answer.
    let plain = async {
        let mut client = AuthorizationClient::connect(format!("http://{}", server.extauthz))
            .await
            .map_err(|e| e.to_string())?;
        client
            .check(check_request(None, "api.example.com", "/"))
            .await
            .map_err(|e| e.to_string())
    };
    assert!(plain.await.is_err());
    server.stop().await;
}

#[tokio::test]
async fn mtls_admits_only_clients_with_a_certificate_from_the_ca() {
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("Envoy CA");
    let other_ca = Ca::new("another CA");
    let files = Files::new(&server_ca.server(), Some(&client_ca));
    let server = start_with_tls(files.table("tls", true)).await;

    let envoy = client_ca.client("envoy");
    let outcome = check_over_tls(
        server.extauthz,
        client_config(&server_ca, Some(&envoy), b"h2"),
    )
    .await
    .expect("a client with a certificate from the CA is answered");
    assert_eq!(outcome.http, 401);

    let none = check_over_tls(server.extauthz, client_config(&server_ca, None, b"h2")).await;
    assert!(none.is_err(), "no client certificate: {none:?}");

    let stranger = other_ca.client("stranger");
    let other = check_over_tls(
        server.extauthz,
        client_config(&server_ca, Some(&stranger), b"h2"),
    )
    .await;
    assert!(other.is_err(), "certificate from another CA: {other:?}");
    server.stop().await;
}

#[tokio::test]
async fn rotated_certificate_and_client_ca_are_used_without_a_restart() {
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("Envoy CA");
    let first = server_ca.server();
    let files = Files::new(&first, Some(&client_ca));
    let server = start_with_tls(files.table("tls", true)).await;
    let envoy = client_ca.client("envoy");
    assert_eq!(
        served_certificate_mtls(server.extauthz, &server_ca, &envoy).await,
        Some(first.der.clone())
    );

    // cert-manager writes a new pair: the next connections see the new certificate.
    let second = server_ca.server();
    files.write_server(&second);
    eventually("the new certificate is served", || {
        let (ca, envoy, want) = (&server_ca, &envoy, second.der.clone());
        async move { served_certificate_mtls(server.extauthz, ca, envoy).await == Some(want) }
    })
    .await;
    let outcome = check_over_tls(
        server.extauthz,
        client_config(&server_ca, Some(&envoy), b"h2"),
    )
    .await
    .expect("Check over the rotated certificate");
    assert_eq!(outcome.http, 401);

    // The client CA rotates too: clients of the new CA get in, the old CA's no longer.
    let new_client_ca = Ca::new("Envoy CA 2");
    let new_envoy = new_client_ca.client("envoy");
    std::fs::write(files.path("ca.crt"), new_client_ca.pem()).unwrap();
    eventually("a client of the new CA is admitted", || {
        let config = client_config(&server_ca, Some(&new_envoy), b"h2");
        async move { check_over_tls(server.extauthz, config).await.is_ok() }
    })
    .await;
    let old = check_over_tls(
        server.extauthz,
        client_config(&server_ca, Some(&envoy), b"h2"),
    )
    .await;
    assert!(old.is_err(), "the old CA's client after rotation: {old:?}");
    server.stop().await;
}

async fn served_certificate_mtls(
    addr: SocketAddr,
    ca: &Ca,
    identity: &Leaf,
) -> Option<CertificateDer<'static>> {
    let tcp = TcpStream::connect(addr).await.ok()?;
    let tls = TlsConnector::from(client_config(ca, Some(identity), b"h2"))
        .connect(localhost(), tcp)
        .await
        .ok()?;
    tls.get_ref().1.peer_certificates()?.first().cloned()
}

#[tokio::test]
async fn broken_half_of_a_rotation_keeps_the_old_certificate() {
    let ca = Ca::new("server CA");
    let first = ca.server();
    let files = Files::new(&first, None);
    let server = start_with_tls(files.table("tls", false)).await;
    // Only the certificate changes: the key no longer matches, so nothing changes.
    let second = ca.server();
    std::fs::write(files.path("tls.crt"), &second.cert_pem).unwrap();
    // Give the watcher several intervals to look at the broken pair.
    for _ in 0..10 {
        assert_eq!(
            served_certificate(server.extauthz, &ca).await,
            Some(first.der.clone())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The key arrives: the pair is whole again and goes into force.
    std::fs::write(files.path("tls.key"), &second.key_pem).unwrap();
    eventually("the completed pair is served", || {
        let (ca, want) = (&ca, second.der.clone());
        async move { served_certificate(server.extauthz, ca).await == Some(want) }
    })
    .await;
    server.stop().await;
}

/// `[server]` text for a config with `tables` appended (TLS tables name real files).
fn config_with(tables: &str) -> Result<Config, String> {
    Config::parse(&format!("[iam]\nproject = \"{PROJECT}\"\n{tables}")).map_err(|e| e.to_string())
}

#[test]
fn bad_tls_files_are_config_errors_naming_the_field() {
    let ca = Ca::new("server CA");
    let files = Files::new(&ca.server(), Some(&ca));
    assert!(config_with(&files.table("tls", true)).is_ok());
    assert!(config_with(&files.table("admin_tls", true)).is_ok());

    let missing = files.table("tls", false).replace("tls.crt", "nope.crt");
    let err = config_with(&missing).unwrap_err();
    assert!(
        err.starts_with("server.tls.cert_file: cannot read"),
        "{err}"
    );

    std::fs::write(files.path("garbage.key"), "not a key").unwrap();
    let garbage = files.table("tls", false).replace("tls.key", "garbage.key");
    let err = config_with(&garbage).unwrap_err();
    assert!(err.starts_with("server.tls.key_file"), "{err}");

    let other = ca.server();
    std::fs::write(files.path("other.key"), &other.key_pem).unwrap();
    let mismatched = files
        .table("admin_tls", false)
        .replace("tls.key", "other.key");
    let err = config_with(&mismatched).unwrap_err();
    assert!(err.starts_with("server.admin_tls.key_file"), "{err}");
    assert!(err.contains("does not go with"), "{err}");

    std::fs::write(files.path("empty.pem"), "").unwrap();
    let empty_ca = files
        .table("admin_tls", true)
        .replace("ca.crt", "empty.pem");
    let err = config_with(&empty_ca).unwrap_err();
    assert!(err.starts_with("server.admin_tls.client_ca_file"), "{err}");
    let empty_cert = files.table("tls", false).replace("tls.crt", "empty.pem");
    let err = config_with(&empty_cert).unwrap_err();
    assert!(err.starts_with("server.tls.cert_file"), "{err}");

    let unknown = format!("{}extra = 1\n", files.table("tls", false));
    let err = config_with(&unknown).unwrap_err();
    assert!(err.contains("extra"), "{err}");
}

/// Sends `GET path` over TLS on the admin listener; the response head.
async fn admin_get(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    path: &str,
) -> Result<String, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut tls = TlsConnector::from(config)
        .connect(localhost(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), tls.read_to_end(&mut out))
        .await
        .map_err(|_| "no answer".to_owned())?
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test]
async fn admin_listener_has_its_own_tls() {
    let ca = Ca::new("admin CA");
    let operators = Ca::new("operators CA");
    let files = Files::new(&ca.server(), Some(&operators));
    let upstream = Upstream::start().await;
    upstream.publish(&[rsa()]);
    let store = tempfile::tempdir().unwrap();
    let config = Config::parse(&format!(
        "[iam]\nproject = \"{PROJECT}\"\nstore = {:?}\nbootstrap_admins = [\"user:{ADMIN}\"]\n\
         [[token.jwt]]\nissuer = \"{ISSUER}\"\njwks_uri = \"{}\"\n{}",
        store.path(),
        upstream.url("/jwks"),
        files.table("admin_tls", true),
    ))
    .unwrap();
    let extauthz = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (extauthz_addr, admin_addr) = (extauthz.local_addr().unwrap(), admin.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server::run(
        Listeners { extauthz, admin },
        config,
        async move {
            let _ = stopped.await;
        },
    ));

    let operator = operators.client("ops");
    let with_cert = client_config(&ca, Some(&operator), b"http/1.1");
    let mut answer = String::new();
    for _ in 0..1000 {
        if let Ok(a) = admin_get(admin_addr, with_cert.clone(), "/healthz").await {
            answer = a;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let refused = admin_get(
        admin_addr,
        client_config(&ca, None, b"http/1.1"),
        "/healthz",
    )
    .await;
    assert!(
        !refused.as_deref().unwrap_or("").starts_with("HTTP/1.1 200"),
        "no client certificate: {refused:?}"
    );
    // The ext_authz listener stays plaintext when only [server.admin_tls] is set.
    let mut client = AuthorizationClient::connect(format!("http://{extauthz_addr}"))
        .await
        .unwrap();
    client
        .check(check_request(None, "api.example.com", "/"))
        .await
        .expect("plaintext Check");
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

#[test]
fn mtls_overlay_config_is_valid_with_real_files() {
    mtls_overlay_config_with_real_files("mtls");
}

#[test]
fn replicated_mtls_overlay_config_is_valid_with_real_files() {
    let config = mtls_overlay_config_with_real_files("replicated-mtls");
    assert!(verifyiam::store::PgUrl::is_postgres(
        &config.iam.store.to_string_lossy()
    ));
}

/// The overlay's verifyiam.toml, its TLS files replaced by real ones, parsed and checked.
fn mtls_overlay_config_with_real_files(overlay: &str) -> Config {
    let text = std::fs::read_to_string(format!(
        "{}/deploy/kubernetes-overlays/{overlay}/configmap.yaml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let toml: Vec<&str> = text
        .lines()
        .skip_while(|l| l.trim() != "verifyiam.toml: |")
        .skip(1)
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect();
    let ca = Ca::new("cluster CA");
    let files = Files::new(&ca.server(), Some(&ca));
    let mut toml = toml.join("\n");
    for name in ["tls.crt", "tls.key", "ca.crt"] {
        toml = toml.replace(
            &format!("\"/etc/verifyiam-tls/{name}\""),
            &format!("{:?}", files.path(name)),
        );
    }
    let config = Config::parse(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
    let (tls, admin_tls) = (
        config.server.tls.clone().expect("[server.tls]"),
        config.server.admin_tls.clone().expect("[server.admin_tls]"),
    );
    assert!(tls.client_ca_file.is_some(), "Check needs mutual TLS");
    assert!(
        admin_tls.client_ca_file.is_none(),
        "the kubelet's probes present no certificate"
    );
    config
}

#[tokio::test]
async fn files_gone_by_the_time_the_server_starts_stop_it_naming_the_field() {
    let ca = Ca::new("server CA");
    let files = Files::new(&ca.server(), None);
    let store = tempfile::tempdir().unwrap();
    let config = Config::parse(&format!(
        "[iam]\nproject = \"{PROJECT}\"\nstore = {:?}\n{}",
        store.path(),
        files.table("tls", false)
    ))
    .unwrap();
    std::fs::remove_file(files.path("tls.key")).unwrap();
    let listeners = Listeners {
        extauthz: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        admin: TcpListener::bind("127.0.0.1:0").await.unwrap(),
    };
    let err = server::run(listeners, config, std::future::pending())
        .await
        .expect_err("no key, no server");
    assert!(
        err.to_string()
            .starts_with("server.tls.key_file: cannot read"),
        "{err}"
    );
}

/// A TLS 1.2 ClientHello whose SNI extension carries `name` as its host_name, as some clients
/// send an IP address (rustls' own client never does, so it is built by hand).
fn client_hello_with_sni(name: &str) -> Vec<u8> {
    let name = name.as_bytes();
    let len16 = |n: usize| u16::try_from(n).unwrap().to_be_bytes();
    let mut list = vec![0]; // host_name
    list.extend_from_slice(&len16(name.len()));
    list.extend_from_slice(name);
    let mut extension = 0u16.to_be_bytes().to_vec(); // server_name
    extension.extend_from_slice(&len16(list.len() + 2));
    extension.extend_from_slice(&len16(list.len()));
    extension.extend_from_slice(&list);
    let mut body = vec![3, 3]; // TLS 1.2
    body.extend_from_slice(&[7; 32]); // random
    body.push(0); // no session id
    body.extend_from_slice(&[0, 4, 0xc0, 0x2b, 0xc0, 0x2f]); // ECDHE AES-128-GCM suites
    body.extend_from_slice(&[1, 0]); // null compression
    body.extend_from_slice(&len16(extension.len()));
    body.extend_from_slice(&extension);
    let mut handshake = vec![1]; // client_hello
    handshake.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let mut record = vec![22, 3, 1]; // handshake record
    record.extend_from_slice(&len16(handshake.len()));
    record.extend_from_slice(&handshake);
    record
}

/// Opens a connection, sends `hello`, and waits for the listener's answer (or its close).
async fn say_hello(addr: SocketAddr, hello: &[u8]) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(hello).await.unwrap();
    let mut buf = [0u8; 512];
    // Whatever comes back (a ServerHello, an alert, the close): the hello has been read.
    let _ = tokio::time::timeout(Duration::from_secs(30), tcp.read(&mut buf)).await;
}

#[tokio::test]
async fn clients_sending_an_ip_address_as_sni_are_counted_and_logged_once_a_minute() {
    const BIN: &str = env!("CARGO_BIN_EXE_verifyiam");
    const IP_HELLOS: usize = 25;
    const BAD_NAME_HELLOS: usize = 5;
    let ca = Ca::new("server CA");
    let files = Files::new(&ca.server(), None);
    let upstream = Upstream::start().await;
    upstream.publish(&[rsa()]);
    let text = format!(
        "[server]\nextauthz_addr = \"127.0.0.1:0\"\nadmin_addr = \"127.0.0.1:0\"\n{}\
         [iam]\nproject = \"{PROJECT}\"\nstore = {:?}\nbootstrap_admins = [\"user:{ADMIN}\"]\n\
         [[token.jwt]]\nissuer = \"{ISSUER}\"\njwks_uri = \"{}\"\n",
        files.table("tls", false),
        files.path("store"),
        upstream.url("/jwks"),
    );
    let config = files.path("verifyiam.toml");
    std::fs::write(&config, &text).unwrap();
    let mut child = tokio::process::Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    use tokio::io::AsyncBufReadExt as _;
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut logged = Vec::new();
    let (extauthz, admin) = loop {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("it logs its addresses")
            .unwrap()
            .expect("it exited before serving");
        if line.contains("serving") {
            let addrs: Vec<SocketAddr> = line
                .split(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
                .filter(|w| w.starts_with("127.0.0.1:"))
                .filter_map(|w| w.parse().ok())
                .collect();
            assert_eq!(addrs.len(), 2, "{line}");
            break (addrs[0], addrs[1]);
        }
        logged.push(line);
    };
    // Keep draining the log so the process never blocks on a full pipe.
    let drain = tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            logged.push(line);
        }
        logged
    });
    common::wait_readyz(admin).await;

    for _ in 0..IP_HELLOS {
        say_hello(extauthz, &client_hello_with_sni("127.0.0.1")).await;
    }
    for _ in 0..BAD_NAME_HELLOS {
        say_hello(extauthz, &client_hello_with_sni("bad name")).await;
    }
    // The listener still serves a well-behaved client.
    let outcome = check_over_tls(extauthz, client_config(&ca, None, b"h2"))
        .await
        .expect("Check over TLS is answered");
    assert_eq!(outcome.http, 401);

    let metrics = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let count = |kind: &str| {
        let prefix = format!("verifyiam_tls_illegal_sni_total{{kind=\"{kind}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.trim().parse::<usize>().ok())
    };
    assert_eq!(count("ip_address"), Some(IP_HELLOS), "{metrics}");
    assert_eq!(
        count("invalid_hostname"),
        Some(BAD_NAME_HELLOS),
        "{metrics}"
    );

    // Every line it wrote, up to its end.
    child.start_kill().unwrap();
    let _ = child.wait().await;
    let logged = drain.await.unwrap();
    let ours = logged
        .iter()
        .filter(|l| l.contains("verifyiam_tls_illegal_sni_total"))
        .count();
    let theirs = logged.iter().filter(|l| l.contains("Illegal SNI")).count();
    assert_eq!((ours, theirs), (1, 0), "{logged:#?}");
}
