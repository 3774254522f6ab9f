//! `docs/production.md`, run: its configuration and its commands, as written, against local
//! stand-ins — a fresh PostgreSQL database, a local JWK-set server as the OIDC issuer, generated
//! certificates, a local token endpoint for the backend's ID token — with only the host names,
//! the issuer and the database replaced. Two replicas run from the one file; the grant made
//! through one is seen through the other. So the walkthrough cannot rot.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::certs::Ca;
use common::google::{FakeGoogle, key_file_json};
use common::*;
use serde_json::json;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_verifyiam");
const AUDIENCE: &str = "https://api.example.com";

fn page() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/production.md")).unwrap()
}

/// The fenced blocks of `lang`, in order.
fn fences(text: &str, lang: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match &mut current {
            None if line.trim() == format!("```{lang}") => current = Some(String::new()),
            Some(block) if line.trim() == "```" => {
                out.push(std::mem::take(block));
                current = None;
            }
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
    }
    out
}

/// The shell commands of the page: continuation lines joined, comments kept (for `# exit N`).
fn commands(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for block in fences(text, "sh") {
        let mut pending = String::new();
        for line in block.lines() {
            let line = line.trim();
            if let Some(head) = line.strip_suffix('\\') {
                pending.push_str(head);
                continue;
            }
            pending.push_str(line);
            if !pending.trim().is_empty() {
                out.push(std::mem::take(&mut pending));
            }
            pending.clear();
        }
    }
    out
}

/// A free port on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn mint(email: &str) -> String {
    let mut claims = claims(email);
    claims["aud"] = json!(AUDIENCE);
    rsa().sign(&claims)
}

/// Runs one command of the page with bash in `dir`, the binary first on the PATH.
async fn run(dir: &Path, exports: &str, command: &str, env: &[(&str, String)]) -> (i32, String) {
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(format!("{exports}\n{command}"))
        .current_dir(dir)
        .env("PATH", path)
        .env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().await.unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Starts `verifyiam serve` as the page says, in `dir`, with `extra` arguments.
fn serve(dir: &Path, command: &str, store: &str, extra: &[String]) -> Child {
    let args: Vec<&str> = command.split_whitespace().skip(1).collect();
    Command::new(BIN)
        .args(args)
        .args(extra)
        .current_dir(dir)
        .env("VERIFYIAM_STORE", store)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Waits for the replica's `serving` log line; returns it.
async fn serving(child: &mut Child) -> String {
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let found = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("serving") {
                // Keep draining, so the replica never blocks on a full pipe.
                tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
                return line;
            }
        }
        panic!("the replica exited before serving");
    };
    tokio::time::timeout(Duration::from_secs(60), found)
        .await
        .expect("the replica serves")
}

#[tokio::test]
async fn the_production_walkthrough_runs_as_written() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let issuer = Upstream::start().await;
    issuer.publish(&[rsa(), ec()]);
    let google = FakeGoogle::start().await;
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();

    // Step 2's files: one CA for the replicas' certificate and Envoy's client certificate.
    let ca = Ca::new("production CA");
    let (server, envoy) = (ca.server(), ca.client("envoy"));
    std::fs::create_dir(work.join("tls")).unwrap();
    for (name, text) in [
        ("tls.crt", &server.cert_pem),
        ("tls.key", &server.key_pem),
        ("envoy.crt", &envoy.cert_pem),
        ("envoy.key", &envoy.key_pem),
        ("ca.crt", &ca.pem()),
    ] {
        std::fs::write(work.join("tls").join(name), text).unwrap();
    }
    // Step 3's key file.
    std::fs::write(
        work.join("gateway-key.json"),
        key_file_json(&google.token_url()),
    )
    .unwrap();

    // The stand-ins replace the page's hosts, issuer and database.
    let (a1, a2, b1, b2) = (free_port(), free_port(), free_port(), free_port());
    let local = |text: &str| {
        text.replace(
            "postgres://verifyiam:change-me@db.example.internal:5432/verifyiam?sslmode=verify-full",
            &db.url,
        )
        .replace(
            "postgres://verifyiam@db.example.internal:5432/verifyiam?sslmode=verify-full",
            &db.url,
        )
        .replace(
            "https://issuer.example.com/.well-known/jwks.json",
            &issuer.url("/jwks"),
        )
        .replace("https://issuer.example.com", ISSUER)
        .replace("https://oauth2.googleapis.com/token", &google.token_url())
        .replace("0.0.0.0:9001", &format!("127.0.0.1:{a1}"))
        .replace("0.0.0.0:9002", &format!("127.0.0.1:{a2}"))
        .replace(
            "verifyiam-a.example.internal:9001",
            &format!("localhost:{a1}"),
        )
        .replace(
            "verifyiam-a.example.internal:9002",
            &format!("localhost:{a2}"),
        )
        .replace(
            "verifyiam-b.example.internal:9001",
            &format!("localhost:{b1}"),
        )
        .replace(
            "verifyiam-b.example.internal:9002",
            &format!("localhost:{b2}"),
        )
    };
    let text = local(&page());

    // Step 4: the configuration, written as the page shows it; it parses with the real files.
    let tomls = fences(&text, "toml");
    assert_eq!(tomls.len(), 1, "one configuration file");
    std::fs::write(work.join("verifyiam.toml"), &tomls[0]).unwrap();
    let cwd = std::env::current_dir().unwrap();
    let config = {
        std::env::set_current_dir(work).unwrap();
        let parsed = verifyiam::config::Config::load(&work.join("verifyiam.toml"));
        std::env::set_current_dir(cwd).unwrap();
        parsed.unwrap_or_else(|e| panic!("docs/production.md's configuration: {e}"))
    };
    assert!(config.server.tls.as_ref().unwrap().client_ca_file.is_some());
    assert_eq!(
        config.routes[0].backend_audience.as_deref(),
        Some("https://orders-7x2kq-uc.a.run.app")
    );

    let commands = commands(&text);
    let exports: String = commands
        .iter()
        .filter(|c| c.starts_with("export "))
        .map(|c| format!("{c}\n"))
        .collect();
    assert!(exports.contains("VERIFYIAM_STORE"), "{exports}");
    let env = [
        ("TOKEN", mint("alice@example.com")),
        ("BOB_TOKEN", mint("bob@example.com")),
        ("ADMIN_TOKEN", mint(ADMIN)),
    ];
    let mut replicas = Vec::new();
    let mut ran = Vec::new();
    for command in commands.iter().filter(|c| c.starts_with("verifyiam ")) {
        if command.starts_with("verifyiam serve ") {
            // Two replicas from the one file: the second on its own ports (another host).
            let mut a = serve(work, command, &db.url, &[]);
            let mut b = serve(
                work,
                command,
                &db.url,
                &[
                    format!("--extauthz-addr=127.0.0.1:{b1}"),
                    format!("--admin-addr=127.0.0.1:{b2}"),
                ],
            );
            for line in [serving(&mut a).await, serving(&mut b).await] {
                assert!(
                    line.contains("extauthz_tls=mtls") && line.contains("admin_tls=tls"),
                    "{line}"
                );
            }
            for port in [a2, b2] {
                wait_ready_tls(port, &ca).await;
            }
            replicas.push(a);
            replicas.push(b);
            continue;
        }
        let expected = command
            .split_once("# exit ")
            .and_then(|(_, n)| n.split_whitespace().next())
            .map_or(0, |n| n.parse().unwrap());
        let (code, out) = run(work, &exports, command, &env).await;
        assert_eq!(code, expected, "{command}\n{out}");
        ran.push((command.clone(), out));
    }
    assert_eq!(replicas.len(), 2, "the page starts the replicas");
    // config check twice, store migrate, the grant, alice's and bob's Checks.
    assert!(ran.len() >= 6, "{ran:?}");

    let output = |prefix: &str| {
        ran.iter()
            .find(|(c, _)| c.starts_with(prefix))
            .map(|(_, out)| out.clone())
            .unwrap_or_else(|| panic!("the page runs `{prefix}`"))
    };
    let connect = output("verifyiam config check --connect");
    assert!(
        connect.contains("iam.store: ok (connected to "),
        "{connect}"
    );
    assert!(connect.contains("token.jwt[0].jwks_uri: ok ("), "{connect}");
    // The grant went through replica a; alice's Check went through replica b.
    let allowed = ran
        .iter()
        .find(|(c, _)| c.contains("\"$TOKEN\""))
        .map(|(_, out)| out.clone())
        .expect("alice's check");
    for expected in [
        "decision: ALLOW",
        "principal: alice@example.com",
        "deployment: organizations/demo-project/environments/prod/deployments/orders",
        "upstream header: x-verifyiam-principal: alice@example.com",
        "aud: https://orders-7x2kq-uc.a.run.app",
        "upstream header: x-forwarded-authorization: Bearer ",
    ] {
        assert!(
            allowed.contains(expected),
            "{expected:?} missing from {allowed}"
        );
    }
    assert_eq!(google.total(), 1, "one ID token minted for the backend");
    let denied = ran
        .iter()
        .find(|(c, _)| c.contains("\"$BOB_TOKEN\""))
        .map(|(_, out)| out.clone())
        .expect("bob's check");
    assert!(denied.contains("reason: permission_denied ("), "{denied}");
    assert!(
        denied.contains("explanation:\n  bob@example.com CANNOT invoke prod/orders"),
        "{denied}"
    );

    // "Without --cert/--key the Check listener refuses the connection (exit 3)."
    let (code, out) = run(
        work,
        &exports,
        &format!(
            "verifyiam check --addr https://localhost:{a1} --cacert tls/ca.crt \
             --host api.example.com --path /orders/42 --token \"$TOKEN\""
        ),
        &env,
    )
    .await;
    assert_eq!(code, 3, "{out}");
    for mut replica in replicas {
        replica.kill().await.unwrap();
    }
}

/// Waits until the admin listener on `port` answers `/readyz` 200 over TLS.
async fn wait_ready_tls(port: u16, ca: &Ca) {
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    for _ in 0..600 {
        if let Ok(r) = client
            .get(format!("https://localhost:{port}/readyz"))
            .send()
            .await
        {
            if r.status().is_success() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("replica on {port} not ready");
}
