//! `verifyiam check` and the management commands as a user runs them against listeners that
//! speak TLS and mutual TLS (`--cacert`, `--cert`/`--key`, `--insecure`); every answer's reason,
//! principal and deployment printed; `check --explain` with the troubleshooter's reasons; and
//! every command's usage error exiting 2.

mod common;

use std::path::PathBuf;

use common::certs::{Ca, Leaf};
use common::*;
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_verifyiam");
const ALICE: &str = "alice@example.com";

async fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("VERIFYIAM_TOKEN")
        .env_remove("VERIFYIAM_ADMIN_URL")
        .env_remove("VERIFYIAM_ADMIN_TOKEN")
        .env_remove("VERIFYIAM_CACERT")
        .env_remove("VERIFYIAM_CERT")
        .env_remove("VERIFYIAM_KEY")
        .env_remove("VERIFYIAM_ORGANIZATION")
        .env_remove("VERIFYIAM_STORE")
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A listener's certificate files and the client's, in one directory.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new(server: &Leaf, server_ca: &Ca, client_ca: &Ca, client: &Leaf) -> Pki {
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
        };
        for (name, text) in [
            ("tls.crt", server.cert_pem.as_str()),
            ("tls.key", server.key_pem.as_str()),
            ("client.crt", client.cert_pem.as_str()),
            ("client.key", client.key_pem.as_str()),
        ] {
            std::fs::write(pki.path(name), text).unwrap();
        }
        std::fs::write(pki.path("ca.crt"), server_ca.pem()).unwrap();
        std::fs::write(pki.path("client-ca.crt"), client_ca.pem()).unwrap();
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).to_str().unwrap().to_owned()
    }

    /// The `--cacert`, `--cert` and `--key` arguments of a client that presents its certificate.
    fn client_files(&self) -> (String, String, String) {
        (
            self.arg("ca.crt"),
            self.arg("client.crt"),
            self.arg("client.key"),
        )
    }

    fn table(&self, table: &str, mtls: bool) -> String {
        let mut out = format!(
            "[server.{table}]\ncert_file = {:?}\nkey_file = {:?}\n",
            self.path("tls.crt"),
            self.path("tls.key"),
        );
        if mtls {
            out.push_str(&format!(
                "client_ca_file = {:?}\n",
                self.path("client-ca.crt")
            ));
        }
        out
    }
}

fn pki() -> Pki {
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("Envoy CA");
    Pki::new(
        &server_ca.server(),
        &server_ca,
        &client_ca,
        &client_ca.client("envoy"),
    )
}

async fn tls_server(table: String) -> Server {
    Server::start_with(Options {
        extra: table,
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn check_reaches_a_tls_listener_with_its_ca_and_says_why_without_it() {
    let pki = pki();
    let s = tls_server(pki.table("tls", false)).await;
    s.grant_deployment("prod", "orders", &format!("user:{ALICE}"), INVOKER)
        .await;
    let alice = token(ALICE);
    let https = format!("https://127.0.0.1:{}", s.extauthz.port());
    let base = check_args(&https, "prod/orders", &alice);
    let with = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let run_owned = |args: Vec<String>| async move {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&refs).await
    };

    let (code, out, err) = run_owned(with(&["--cacert", &pki.arg("ca.crt")])).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("decision: ALLOW"), "{out}");
    assert!(out.contains(&format!("principal: {ALICE}")), "{out}");

    // The same listener by name: the certificate names localhost too.
    let by_name = format!("https://localhost:{}", s.extauthz.port());
    let mut args = with(&["--cacert", &pki.arg("ca.crt")]);
    args[2] = by_name;
    let (code, out, err) = run_owned(args).await;
    assert_eq!(code, 0, "{out}{err}");

    // Without the CA, the certificate is not trusted: exit 3, and the reason is named.
    let (code, out, err) = run_owned(with(&[])).await;
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("certificate"), "{err}");

    // --insecure gets through, with a warning.
    let (code, out, err) = run_owned(with(&["--insecure"])).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("WARNING: --insecure"), "{err}");

    // A plaintext address to a TLS listener gets no answer and says what to try.
    let mut args = with(&[]);
    args[2] = format!("http://127.0.0.1:{}", s.extauthz.port());
    let (code, _, err) = run_owned(args).await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("https://"), "{err}");

    // A CA file that holds no certificate is a usage error naming the flag.
    std::fs::write(pki.path("empty.pem"), "").unwrap();
    let (code, _, err) = run_owned(with(&["--cacert", &pki.arg("empty.pem")])).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--cacert"), "{err}");
    s.stop().await;
}

#[tokio::test]
async fn check_presents_a_client_certificate_to_an_mtls_listener() {
    let pki = pki();
    let s = tls_server(pki.table("tls", true)).await;
    let https = format!("https://127.0.0.1:{}", s.extauthz.port());
    let alice = token(ALICE);
    let (ca, cert, key) = pki.client_files();
    let mut args = check_args(&https, "prod/orders", &alice);
    args.extend(["--cacert", &ca, "--cert", &cert, "--key", &key]);
    let (code, out, err) = run(&args).await;
    assert_eq!(code, 1, "answered, and denied: {out}{err}");
    assert!(out.contains("reason: permission_denied"), "{out}");

    // Without a client certificate the listener does not answer.
    let (code, out, err) = run(&[
        "check",
        "--addr",
        &https,
        "--deployment",
        "prod/orders",
        "--cacert",
        &ca,
    ])
    .await;
    assert_eq!(code, 3, "{out}{err}");

    // Half a client identity is a usage error.
    let (code, _, err) = run(&["check", "--addr", &https, "--cacert", &ca, "--cert", &cert]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--cert needs --key"), "{err}");
    s.stop().await;
}

#[tokio::test]
async fn management_commands_reach_an_mtls_admin_listener() {
    let pki = pki();
    let s = tls_server(pki.table("admin_tls", true)).await;
    let url = format!("https://127.0.0.1:{}", s.admin.port());
    let admin = token(ADMIN);
    let (ca, cert, key) = pki.client_files();
    // Every command below reaches the admin listener with the client's certificate.
    let through_mtls = [
        "--admin-url",
        &url,
        "--token",
        &admin,
        "--cacert",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key,
    ];
    let (code, out, err) = run(&[
        &[
            "projects",
            "add-iam-policy-binding",
            PROJECT,
            "--member",
            &format!("user:{ALICE}"),
            "--role",
            INVOKER,
        ][..],
        &through_mtls[..],
    ]
    .concat())
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("user:{ALICE}")), "{out}");

    let (code, out, err) = run(&[
        &[
            "policy",
            "troubleshoot",
            &format!("projects/{PROJECT}"),
            "--principal-email",
            ALICE,
        ][..],
        &through_mtls[..],
    ]
    .concat())
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with(&format!("{ALICE} CAN invoke")), "{out}");

    // No client certificate: the admin listener refuses, exit 3 with the reason.
    let (code, _, err) = run(&[
        "projects",
        "get-iam-policy",
        PROJECT,
        "--admin-url",
        &url,
        "--token",
        &admin,
        "--cacert",
        &ca,
    ])
    .await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("cannot reach"), "{err}");
    s.stop().await;
}

fn check_args<'a>(s: &'a str, deployment: &'a str, token: &'a str) -> Vec<&'a str> {
    vec![
        "check",
        "--addr",
        s,
        "--deployment",
        deployment,
        "--token",
        token,
    ]
}

#[tokio::test]
async fn every_answer_names_its_reason_principal_and_deployment() {
    let s = Server::start_with(Options {
        iam_extra: "strict_deployments = true".to_owned(),
        ..Options::default()
    })
    .await;
    let addr = format!("http://{}", s.extauthz);
    let alice = token(ALICE);
    let (status, answer) = s
        .call(
            reqwest::Method::POST,
            &format!(
                "/v1/organizations/{PROJECT}/environments/prod/apis/orders/revisions/1/deployments"
            ),
            Some(&token(ADMIN)),
            None,
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    // An environment-only grant: denied, and the reason says a grant there does not pass down.
    s.grant_environment("prod", &format!("user:{ALICE}"), INVOKER)
        .await;
    let (code, out, err) = run(&check_args(&addr, "prod/orders", &alice)).await;
    assert_eq!(code, 1, "{out}{err}");
    let orders =
        format!("deployment: organizations/{PROJECT}/environments/prod/deployments/orders");
    for expected in [
        "reason: permission_denied (",
        "environment does not pass down",
        &format!("principal: {ALICE}"),
        &orders,
        "http status: 403",
    ] {
        assert!(out.contains(expected), "{expected:?} missing from {out}");
    }

    // Strict mode, never deployed: the reason says so, though the 403 body stays generic.
    s.grant_project(&format!("user:{ALICE}"), INVOKER).await;
    let (code, out, _) = run(&check_args(&addr, "prod/payments", &alice)).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("reason: not_deployed ("), "{out}");
    assert!(out.contains("the API is not deployed"), "{out}");
    let body = out.split_once("body: ").map(|(_, b)| b).unwrap_or_default();
    assert!(
        !body.contains("deployed"),
        "the 403 body stays generic: {body}"
    );

    // A token that is not valid: the reason, and no principal.
    let (code, out, _) = run(&check_args(&addr, "prod/orders", "not-a-token")).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("reason: invalid_token ("), "{out}");
    assert!(!out.contains("principal:"), "{out}");

    // Deployed: allowed through the project grant, and the answer says so.
    let (code, out, _) = run(&check_args(&addr, "prod/orders", &alice)).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("reason: ok\n") && out.contains(&orders),
        "{out}"
    );
    s.stop().await;
}

#[tokio::test]
async fn explain_adds_the_troubleshooters_reasons_to_a_denial() {
    let s = Server::start().await;
    s.grant_environment("prod", &format!("user:{ALICE}"), INVOKER)
        .await;
    let addr = format!("http://{}", s.extauthz);
    let admin_url = format!("http://{}", s.admin);
    let (alice, admin) = (token(ALICE), token(ADMIN));
    let mut args = check_args(&addr, "prod/orders", &alice);
    args.extend([
        "--explain",
        "--admin-url",
        &admin_url,
        "--admin-token",
        &admin,
    ]);
    let (code, out, err) = run(&args).await;
    assert_eq!(code, 1, "{out}{err}");
    let explanation = out
        .split_once("\nexplanation:\n")
        .map(|(_, e)| e)
        .unwrap_or_else(|| panic!("no explanation in {out}"));
    assert!(
        explanation.starts_with(&format!("  {ALICE} CANNOT invoke prod/orders\n")),
        "{explanation}"
    );
    assert!(explanation.contains("does not pass down"), "{explanation}");

    // Asked with the caller's own token, who may not read the policies: the troubleshooter
    // says it cannot tell, and nothing of the policies is shown.
    let mut args = check_args(&addr, "prod/orders", &alice);
    args.extend(["--explain", "--admin-url", &admin_url]);
    let (code, out, _) = run(&args).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "explanation:\n  {ALICE} access UNKNOWN to invoke prod/orders"
        )),
        "{out}"
    );
    assert!(out.contains("A policy you may not read"), "{out}");
    assert!(!out.contains(&format!("user:{ALICE}")), "{out}");

    // Granted on the deployment: allowed, nothing to explain.
    s.grant_deployment("prod", "orders", &format!("user:{ALICE}"), INVOKER)
        .await;
    let mut args = check_args(&addr, "prod/orders", &alice);
    args.extend([
        "--explain",
        "--admin-url",
        &admin_url,
        "--admin-token",
        &admin,
    ]);
    let (code, out, _) = run(&args).await;
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("explanation:"), "{out}");

    // A Check that never reached a policy: said so, without asking.
    let mut args = check_args(&addr, "prod/orders", "not-a-token");
    args.extend(["--explain", "--admin-url", "http://127.0.0.1:9"]);
    let (code, out, _) = run(&args).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no authenticated principal"), "{out}");

    // The troubleshooter cannot be reached: the denial stands, and the explanation says why.
    let mut args = check_args(&addr, "prod/other", &alice);
    args.extend(["--explain", "--admin-url", "http://127.0.0.1:9"]);
    let (code, out, _) = run(&args).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("could not answer"), "{out}");
    s.stop().await;
}

#[tokio::test]
async fn usage_errors_exit_2_in_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let missing = missing.to_str().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[iam]\nproject = \"p\"\nnope = 1\n").unwrap();
    let bad = bad.to_str().unwrap();
    let data = dir.path().to_str().unwrap();
    let cases: Vec<Vec<&str>> = vec![
        vec!["check", "--deployment", "orders"],
        vec!["check", "--deployment", "prod/"],
        vec!["check", "--addr", "ftp://127.0.0.1:1"],
        vec!["check", "--addr", "http://127.0.0.1:1", "--cacert", missing],
        vec![
            "check",
            "--addr",
            "https://127.0.0.1:1",
            "--cacert",
            missing,
        ],
        vec![
            "check",
            "--addr",
            "https://127.0.0.1:1",
            "--insecure",
            "--cacert",
            bad,
        ],
        vec!["check", "--explain", "--admin-url", "nope"],
        vec!["check", "--no-such-flag"],
        vec!["serve", "--config", missing],
        vec!["serve", "--config", bad],
        vec!["serve"],
        vec!["config", "check", bad],
        vec!["config", "check", missing],
        vec!["config", "nope"],
        vec!["store", "migrate", "--config", bad],
        vec![
            "token",
            "mint",
            "--email",
            "a@example.com",
            "--data-dir",
            data,
        ],
        vec!["token", "mint"],
        vec![
            "backend-token",
            "--config",
            missing,
            "--audience",
            "https://a.example",
        ],
        vec!["projects", "get-iam-policy", "p", "--admin-url", "nope"],
        vec![
            "projects",
            "get-iam-policy",
            "p",
            "--admin-url",
            "http://127.0.0.1:1",
            "--insecure",
        ],
        vec![
            "environments",
            "get-iam-policy",
            "prod",
            "--admin-url",
            "http://127.0.0.1:1",
        ],
        vec!["deployments", "list", "--admin-url", "http://127.0.0.1:1"],
        vec!["roles", "describe", "--admin-url", "http://127.0.0.1:1"],
        vec!["groups", "nope"],
        vec![
            "policy",
            "troubleshoot",
            "orders",
            "--principal-email",
            "a@example.com",
        ],
        vec!["policy", "troubleshoot", "prod/orders"],
        vec!["no-such-command"],
    ];
    for case in cases {
        let (code, out, err) = run(&case).await;
        assert_eq!(code, 2, "{case:?}: {out}{err}");
        assert!(!err.trim().is_empty(), "{case:?}: says why");
    }
}

#[tokio::test]
async fn no_answer_exits_3() {
    // Nothing listens on port 1.
    let (code, _, err) = run(&["check", "--addr", "http://127.0.0.1:1"]).await;
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("cannot connect to http://127.0.0.1:1"),
        "{err}"
    );
    let (code, _, err) = run(&[
        "projects",
        "get-iam-policy",
        "p",
        "--admin-url",
        "http://127.0.0.1:1",
    ])
    .await;
    assert_eq!(code, 3, "{err}");
}
