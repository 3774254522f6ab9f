//! The `verifyiam` binary as a user runs it: `serve --dev`, `token mint`, `check`, `config check`,
//! `config example`, `backend-token`.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_verifyiam");

async fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().await.unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn addr_after<'a>(line: &'a str, label: &str) -> Option<&'a str> {
    line.trim_start()
        .strip_prefix(label)?
        .split_whitespace()
        .next()
        .map(|a| a.trim_start_matches("http://"))
}

/// Starts `serve --dev` on free loopback ports; returns the process and the two addresses its
/// banner names.
async fn start_dev(data: &str) -> (tokio::process::Child, String, String) {
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--dev",
            "--data-dir",
            data,
            "--extauthz-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut extauthz, mut admin) = (None, None);
    let read = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(a) = addr_after(&line, "ext_authz gRPC") {
                extauthz = Some(a.to_owned());
            }
            if let Some(a) = addr_after(&line, "admin HTTP") {
                admin = Some(a.to_owned());
            }
            if extauthz.is_some() && admin.is_some() {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("banner printed");
    (
        child,
        extauthz.expect("banner names ext_authz"),
        admin.expect("banner names admin"),
    )
}

#[tokio::test]
async fn dev_walkthrough_mint_grant_check_revoke() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let (mut server, extauthz, admin) = start_dev(data).await;
    assert!(
        extauthz.starts_with("127.0.0.1:") && admin.starts_with("127.0.0.1:"),
        "loopback only"
    );

    let (code, admin_token, err) = run(&[
        "token",
        "mint",
        "--email",
        "admin@example.com",
        "--data-dir",
        data,
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    let (_, alice, _) = run(&[
        "token",
        "mint",
        "--email",
        "alice@example.com",
        "--data-dir",
        data,
    ])
    .await;
    let (admin_token, alice) = (admin_token.trim().to_owned(), alice.trim().to_owned());
    let addr = format!("http://{extauthz}");
    let check_args = [
        "check",
        "--addr",
        &addr,
        "--deployment",
        "prod/orders",
        "--token",
        &alice,
    ];
    let check = || run(&check_args);

    let (code, out, _) = check().await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("decision: DENY") && out.contains("http status: 403"),
        "{out}"
    );

    let url = format!(
        "http://{admin}/v1/organizations/dev-project/environments/prod/deployments/orders:setIamPolicy"
    );
    let grant = r#"{"policy":{"bindings":[{"members":["user:alice@example.com"],"role":"roles/apigee.deploymentInvoker"}]}}"#;
    let client = reqwest::Client::new();
    let r = client
        .post(&url)
        .bearer_auth(&admin_token)
        .header("content-type", "application/json")
        .body(grant)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let (code, out, _) = check().await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("decision: ALLOW") && out.contains("x-verifyiam-principal: alice@example.com"),
        "{out}"
    );

    // Offline, the backend's headers: an ID token signed by the development key.
    let audience = "https://orders-7x2kq-uc.a.run.app";
    let mut with_backend = check_args.to_vec();
    with_backend.extend(["--backend-audience", audience]);
    let (code, out, _) = run(&with_backend).await;
    assert_eq!(code, 0, "{out}");
    for expected in [
        "upstream header: authorization: Bearer ",
        "(ID token: iss: verifyiam-dev, email: verifyiam-gateway@dev-project.iam.gserviceaccount.com",
        &format!("aud: {audience}, exp: "),
        "upstream header: x-forwarded-authorization: Bearer ",
    ] {
        assert!(out.contains(expected), "{expected:?} missing from {out}");
    }
    assert!(!out.contains(&alice), "tokens are shortened: {out}");

    let r = client
        .post(&url)
        .bearer_auth(&admin_token)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (code, out, _) = check().await;
    assert_eq!(code, 1, "{out}");

    // The dev issuer's key set is published on the admin port.
    let jwks: serde_json::Value = reqwest::get(format!("http://{admin}/dev/jwks.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"][0]["alg"], "ES256");
    // The key is kept: a second mint uses the same kid.
    assert!(Path::new(data).join("dev-issuer-key.pem").exists());
    server.kill().await.unwrap();
}

#[tokio::test]
async fn config_check_validates_without_serving() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[iam]\nproject = \"demo\"\n").unwrap();
    let (code, out, _) = run(&["config", "check", good.to_str().unwrap()]).await;
    assert_eq!(code, 0);
    assert!(out.contains("ok"));

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[iam]\nproject = \"demo\"\n[server]\ncheck_deadlin = \"1s\"\n",
    )
    .unwrap();
    let (code, _, err) = run(&["config", "check", bad.to_str().unwrap()]).await;
    assert_eq!(code, 2);
    assert!(err.contains("check_deadlin"), "{err}");

    let bad = dir.path().join("bad2.toml");
    std::fs::write(&bad, "[iam]\nproject = \"demo\"\n[[routes]]\npath_prefix = \"x\"\nenvironment = \"e\"\ndeployment = \"d\"\n").unwrap();
    let (code, _, err) = run(&["config", "check", bad.to_str().unwrap()]).await;
    assert_eq!(code, 2);
    assert!(err.contains("routes[0].path_prefix"), "{err}");

    let (code, _, err) = run(&["config", "check", "/no/such/file.toml"]).await;
    assert_eq!(code, 2);
    assert!(err.contains("cannot read"), "{err}");
}

/// `config example` prints the whole example, and what it prints is a configuration `config check`
/// accepts as it stands.
#[tokio::test]
async fn config_example_prints_a_configuration_that_checks() {
    let (code, out, err) = run(&["config", "example"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, verifyiam::config::EXAMPLE);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("example.toml");
    std::fs::write(&file, &out).unwrap();
    let (code, out, err) = run(&["config", "check", file.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ok"), "{out}");
}

#[tokio::test]
async fn serve_with_a_bad_config_exits_2_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[iam]\nproject = \"demo\"\nbootstrap_admins = [\"nobody\"]\n",
    )
    .unwrap();
    let (code, _, err) = run(&["serve", "--config", bad.to_str().unwrap()]).await;
    assert_eq!(code, 2);
    assert!(err.contains("iam.bootstrap_admins[0]"), "{err}");
}

#[tokio::test]
async fn token_mint_without_a_dev_key_explains_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = run(&[
        "token",
        "mint",
        "--email",
        "a@example.com",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 2);
    assert!(err.contains("serve --dev"), "{err}");
}

/// An acknowledged policy write survives `kill -9` right after it returns.
#[tokio::test]
async fn acknowledged_write_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_owned();
    let (mut child, _, admin) = start_dev(&data).await;
    let (_, token, _) = run(&[
        "token",
        "mint",
        "--email",
        "admin@example.com",
        "--data-dir",
        &data,
    ])
    .await;
    let url = format!(
        "http://{admin}/v1/organizations/dev-project/environments/prod/deployments/orders:setIamPolicy"
    );
    let body = r#"{"policy":{"bindings":[{"members":["user:alice@example.com"],"role":"roles/apigee.deploymentInvoker"}]}}"#;
    let r = reqwest::Client::new()
        .post(&url)
        .bearer_auth(token.trim())
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let written: serde_json::Value = r.json().await.unwrap();
    // SIGKILL: no shutdown path runs.
    child.start_kill().unwrap();
    child.wait().await.unwrap();

    let (mut child, _, admin) = start_dev(&data).await;
    let url = format!(
        "http://{admin}/v1/organizations/dev-project/environments/prod/deployments/orders:getIamPolicy"
    );
    let read: serde_json::Value = reqwest::Client::new()
        .get(&url)
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(read, written);
    child.kill().await.unwrap();
}

/// A config file using the fake metadata server at `metadata_url` (none: the default applies).
fn backend_config(dir: &Path, backend_auth: &str) -> std::path::PathBuf {
    let path = dir.join("verifyiam.toml");
    let text = format!(
        "[iam]\nproject = \"demo-project\"\nstore = \"{}\"\n[backend_auth]\n{backend_auth}\n",
        dir.join("store").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn backend_token_prints_the_claims_and_the_token_only_when_asked() {
    use common::google::{FakeGoogle, GATEWAY, verified_claims};
    let fake = FakeGoogle::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = backend_config(
        dir.path(),
        &format!("source = \"metadata\"\nmetadata_url = \"{}\"", fake.url()),
    );
    let config = config.to_str().unwrap();
    let audience = "https://orders-7x2kq-uc.a.run.app";
    let args = ["backend-token", "--config", config, "--audience", audience];
    let (code, out, err) = run(&args).await;
    assert_eq!(code, 0, "{err}");
    for expected in [
        "iss: https://accounts.google.com\n",
        &format!("email: {GATEWAY}\n"),
        &format!("aud: {audience}\n"),
        "exp: ",
    ] {
        assert!(out.contains(expected), "{expected:?} missing from {out}");
    }
    assert!(
        !out.contains("eyJ"),
        "no token without --print-token: {out}"
    );

    let mut printing = args.to_vec();
    printing.push("--print-token");
    let (code, out, err) = run(&printing).await;
    assert_eq!(code, 0, "{err}");
    let token = out.trim();
    assert_eq!(out.lines().count(), 1, "the token alone: {out}");
    assert_eq!(verified_claims(token)["aud"], audience);
    assert!(err.contains(&format!("email: {GATEWAY}")), "{err}");
    assert_eq!(
        fake.fetches(audience),
        2,
        "each run fetches, as serve would"
    );
}

#[tokio::test]
async fn backend_token_finds_the_metadata_server_by_gce_metadata_host() {
    use common::google::FakeGoogle;
    let fake = FakeGoogle::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = backend_config(dir.path(), "source = \"metadata\"");
    let out = tokio::process::Command::new(BIN)
        .args(["backend-token", "--config", config.to_str().unwrap()])
        .args(["--audience", "https://a.example.com"])
        .env("GCE_METADATA_HOST", fake.addr.to_string())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(fake.fetches("https://a.example.com"), 1);
}

#[tokio::test]
async fn backend_token_failures_exit_non_zero_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 1.
    let config = backend_config(
        dir.path(),
        "source = \"metadata\"\nmetadata_url = \"http://127.0.0.1:1\"\nfetch_timeout = \"2s\"",
    );
    let config = config.to_str().unwrap();
    let (code, out, err) = run(&[
        "backend-token",
        "--config",
        config,
        "--audience",
        "https://a.example.com",
    ])
    .await;
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        err.starts_with("backend-token: no ID token for \"https://a.example.com\""),
        "{err}"
    );
    assert!(out.is_empty(), "{out}");

    let (code, _, err) = run(&[
        "backend-token",
        "--config",
        config,
        "--audience",
        "https://bigquery.googleapis.com",
    ])
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("access tokens"), "{err}");

    let bare = dir.path().join("bare.toml");
    std::fs::write(&bare, "[iam]\nproject = \"p\"\n").unwrap();
    let (code, _, err) = run(&[
        "backend-token",
        "--config",
        bare.to_str().unwrap(),
        "--audience",
        "https://a.example.com",
    ])
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no [backend_auth]"), "{err}");
}

/// The dev banner names the command as it was run and passes `--data-dir` on to `token mint`;
/// the start-up log says where each listener is and whether it speaks TLS, without colour codes
/// when the log is not a terminal.
#[tokio::test]
async fn dev_banner_and_startup_log_say_what_was_run_plainly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--dev",
            "--data-dir",
            data,
            "--extauthz-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .env_remove("CARGO")
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut banner = String::new();
    let read = async {
        while let Some(line) = stdout.next_line().await.unwrap() {
            let last = line.contains("--backend-audience");
            banner.push_str(&line);
            banner.push('\n');
            if last {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("banner printed");
    assert!(!banner.contains("cargo run"), "{banner}");
    assert!(
        banner.contains(&format!(
            "ADMIN=$({BIN} token mint --email admin@example.com --data-dir {data})"
        )),
        "{banner}"
    );
    assert!(
        banner.contains(&format!("  {BIN} check --addr http://")),
        "{banner}"
    );

    // The log line that says it serves: addresses as addresses, TLS named.
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let serving = async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            if line.contains("serving") {
                return line;
            }
        }
        String::new()
    };
    let line = tokio::time::timeout(Duration::from_secs(30), serving)
        .await
        .expect("serving logged");
    assert!(
        !line.contains('\x1b'),
        "no colour codes off a terminal: {line:?}"
    );
    assert!(!line.contains("Some("), "{line}");
    assert!(
        line.contains("extauthz=127.0.0.1:") && line.contains("extauthz_tls=off"),
        "{line}"
    );
    assert!(line.contains("admin_tls=off"), "{line}");
    child.kill().await.unwrap();

    // Under `cargo run` the banner says so.
    let banner = verifyiam::cli::dev_banner(
        "127.0.0.1:9001".parse().unwrap(),
        "127.0.0.1:9002".parse().unwrap(),
        Path::new(verifyiam::cli::DEFAULT_DATA_DIR),
        "cargo run -q --",
    );
    assert!(
        banner.contains("ADMIN=$(cargo run -q -- token mint --email admin@example.com)\n"),
        "the default data directory needs no flag: {banner}"
    );
}
