//! `verifyiam policy troubleshoot` as a user runs it: the binary against a live server. The
//! answer comes first, an environment grant that does not pass down is said in words, the exit
//! code follows the answer as `check`'s does, and `--format json` gives the API's answer.
//! `verifyiam policy analyze` the same way: who can invoke a deployment (groups expanded), and
//! which deployments a principal can invoke with the level that grants each.

mod common;

use common::*;
use serde_json::{Value, json};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_verifyiam");
const PROD: &str = "organizations/demo-project/environments/prod";
const ORDERS: &str = "organizations/demo-project/environments/prod/deployments/orders";
const ALICE: &str = "alice@example.com";

async fn set_policy(s: &Server, resource: &str, role: &str, member: &str) {
    let body = json!({"policy": {"bindings": [{"role": role, "members": [member]}]}});
    let (status, answer) = s
        .post(
            &format!("/v1/{resource}:setIamPolicy"),
            Some(&token(ADMIN)),
            &body.to_string(),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
}

async fn troubleshoot(s: &Server, caller: Option<&str>, args: &[&str]) -> (i32, String, String) {
    policy(s, caller, "troubleshoot", args).await
}

async fn analyze(s: &Server, caller: Option<&str>, args: &[&str]) -> (i32, String, String) {
    policy(s, caller, "analyze", args).await
}

async fn policy(
    s: &Server,
    caller: Option<&str>,
    command: &str,
    args: &[&str],
) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(["policy", command])
        .args(args)
        .arg("--admin-url")
        .arg(format!("http://{}", s.admin))
        .env_remove("VERIFYIAM_TOKEN")
        .env("VERIFYIAM_ORGANIZATION", PROJECT);
    if let Some(c) = caller {
        cmd.env("VERIFYIAM_TOKEN", token(c));
    }
    let out = cmd.output().await.unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn troubleshoot_says_an_environment_grant_does_not_pass_down_and_exits_1() {
    let s = Server::start().await;
    set_policy(&s, PROD, INVOKER, &format!("user:{ALICE}")).await;
    let (code, out, err) = troubleshoot(
        &s,
        Some(ADMIN),
        &["prod/orders", "--principal-email", ALICE],
    )
    .await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.starts_with("alice@example.com CANNOT invoke prod/orders\n"),
        "{out}"
    );
    assert!(out.contains("does not pass down"), "{out}");
    assert!(out.contains(&format!("user:{ALICE}")), "{out}");
    assert!(
        !s.check(Some(&format!("Bearer {}", token(ALICE))), "prod", "orders")
            .await
            .allowed()
    );
}

#[tokio::test]
async fn troubleshoot_names_the_granting_binding_and_exits_0() {
    let s = Server::start().await;
    set_policy(&s, ORDERS, INVOKER, "domain:example.com").await;
    let (code, out, err) = troubleshoot(
        &s,
        Some(ADMIN),
        &["prod/orders", "--principal-email", ALICE],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("alice@example.com CAN invoke prod/orders\n"),
        "{out}"
    );
    assert!(
        out.contains("roles/apigee.deploymentInvoker carries apigee.deployments.invoke and is granted to domain:example.com"),
        "{out}"
    );

    // The full name, another permission, and the API's own answer for scripts.
    let full = format!("//apigee.googleapis.com/{ORDERS}");
    let (code, out, _) = troubleshoot(
        &s,
        Some(ADMIN),
        &[
            &full,
            "--principal-email",
            ALICE,
            "--permission",
            "apigee.deployments.get",
            "--format",
            "json",
        ],
    )
    .await;
    assert_eq!(code, 1, "{out}");
    let answer: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["overallAccessState"], "CANNOT_ACCESS");
    assert_eq!(answer["accessTuple"]["fullResourceName"], full);
}

#[tokio::test]
async fn troubleshoot_unknown_usage_and_denied_exit_codes() {
    let s = Server::start().await;
    set_policy(&s, ORDERS, INVOKER, &format!("user:{ALICE}")).await;
    // A caller who may read no policy: the answer is UNKNOWN, nothing of the policies shown.
    let (code, out, _) = troubleshoot(
        &s,
        Some("eve@example.org"),
        &["prod/orders", "--principal-email", ALICE],
    )
    .await;
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("alice@example.com access UNKNOWN"), "{out}");
    assert!(out.contains("may not read every policy"), "{out}");
    assert!(!out.contains("user:alice"), "{out}");

    // Bad RESOURCE: usage (2), before any call.
    let (code, _, err) =
        troubleshoot(&s, Some(ADMIN), &["orders", "--principal-email", ALICE]).await;
    assert_eq!(code, 2, "{err}");
    // The server refuses a bad principal: INVALID_ARGUMENT (7).
    let (code, _, err) = troubleshoot(
        &s,
        Some(ADMIN),
        &["prod/orders", "--principal-email", "not-an-email"],
    )
    .await;
    assert_eq!(code, 7, "{err}");
    // No token: UNAUTHENTICATED (4).
    let (code, _, err) = troubleshoot(&s, None, &["prod/orders", "--principal-email", ALICE]).await;
    assert_eq!(code, 4, "{err}");
}

async fn deploy(s: &Server, env: &str, api: &str) {
    let path = format!(
        "/v1/organizations/{PROJECT}/environments/{env}/apis/{api}/revisions/1/deployments"
    );
    let (status, v) = s.post(&path, Some(&token(ADMIN)), "").await;
    assert_eq!(status, 200, "{v}");
}

/// Orders and payments deployed; group eng (dave) holds invoke on the project, alice on orders,
/// bob on the environment prod.
async fn analyzed() -> Server {
    let s = Server::start().await;
    deploy(&s, "prod", "orders").await;
    deploy(&s, "prod", "payments").await;
    let (status, v) = s
        .post(
            "/v1/groups/eng@example.com:addMember",
            Some(&token(ADMIN)),
            r#"{"member":"user:dave@example.com"}"#,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    set_policy(
        &s,
        "projects/demo-project",
        INVOKER,
        "group:eng@example.com",
    )
    .await;
    set_policy(&s, ORDERS, INVOKER, &format!("user:{ALICE}")).await;
    set_policy(&s, PROD, INVOKER, "user:bob@example.com").await;
    s
}

#[tokio::test]
async fn analyze_deployment_lists_who_can_invoke_with_groups_expanded() {
    let s = analyzed().await;
    let (code, out, err) = analyze(&s, Some(ADMIN), &["--deployment", "prod/orders"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("Who can invoke prod/orders:\n"), "{out}");
    assert!(
        out.contains("user:alice@example.com  (deployment policy: roles/apigee.deploymentInvoker)"),
        "{out}"
    );
    assert!(
        out.contains(
            "user:dave@example.com  (project policy: roles/apigee.deploymentInvoker, as a member of group:eng@example.com)"
        ),
        "{out}"
    );
    // The environment's grant does not pass down: bob is not listed, and may not invoke.
    assert!(!out.contains("bob"), "{out}");
    for (who, listed) in [
        ("alice@example.com", true),
        ("dave@example.com", true),
        ("bob@example.com", false),
    ] {
        let allowed = s
            .check(Some(&format!("Bearer {}", token(who))), "prod", "orders")
            .await
            .allowed();
        assert_eq!(allowed, listed, "{who}");
    }
    // --format json: the API's answer.
    let (code, out, _) = analyze(
        &s,
        Some(ADMIN),
        &["--deployment", "prod/orders", "--format", "json"],
    )
    .await;
    assert_eq!(code, 0);
    let answer: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["fullyExplored"], true);
    assert!(
        answer["mainAnalysis"]["analysisResults"]
            .as_array()
            .unwrap()
            .len()
            >= 2
    );
}

#[tokio::test]
async fn analyze_principal_lists_deployments_with_the_granting_level() {
    let s = analyzed().await;
    let (code, out, err) =
        analyze(&s, Some(ADMIN), &["--principal", "user:dave@example.com"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out,
        "user:dave@example.com can invoke:\n  \
         prod/orders  (project policy: roles/apigee.deploymentInvoker)\n  \
         prod/payments  (project policy: roles/apigee.deploymentInvoker)\n"
    );
    let (code, out, _) = analyze(&s, Some(ADMIN), &["--principal", ALICE]).await;
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "user:alice@example.com can invoke:\n  \
         prod/orders  (deployment policy: roles/apigee.deploymentInvoker)\n"
    );
    let (code, out, _) = analyze(&s, Some(ADMIN), &["--principal", "user:bob@example.com"]).await;
    assert_eq!(code, 0);
    assert!(
        out.starts_with("user:bob@example.com can invoke no deployment.\n"),
        "{out}"
    );
    assert!(out.contains("environment prod"), "{out}");
    assert!(out.contains("does not pass down"), "{out}");
}

#[tokio::test]
async fn analyze_usage_denied_and_refused_exit_codes() {
    let s = analyzed().await;
    // Neither question, or both: usage (2) from the argument parser.
    let (code, _, err) = analyze(&s, Some(ADMIN), &[]).await;
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = analyze(
        &s,
        Some(ADMIN),
        &["--deployment", "prod/orders", "--principal", ALICE],
    )
    .await;
    assert_eq!(code, 2, "{err}");
    // Not ENV/API: usage.
    let (code, _, err) = analyze(&s, Some(ADMIN), &["--deployment", "orders"]).await;
    assert_eq!(code, 2, "{err}");
    // A member the analyzer refuses: INVALID_ARGUMENT (7).
    let (code, _, err) = analyze(&s, Some(ADMIN), &["--principal", "allUsers"]).await;
    assert_eq!(code, 7, "{err}");
    assert!(err.contains("identity_selector"), "{err}");
    // alice may not read the project's policies: PERMISSION_DENIED.
    let (code, out, err) = analyze(&s, Some(ALICE), &["--deployment", "prod/orders"]).await;
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("ERROR"), "{err}");
    assert!(!out.contains("dave"), "{out}");
    // No token: UNAUTHENTICATED (4).
    let (code, _, err) = analyze(&s, None, &["--deployment", "prod/orders"]).await;
    assert_eq!(code, 4, "{err}");
}
