//! The management commands as a user runs them: the `verifyiam` binary against a live server.
//! Grant, revoke, concurrent read-modify-write from two processes with no lost update, output
//! formats and the documented exit codes.

mod common;

use common::*;
use serde_json::{Value, json};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_verifyiam");

async fn run(s: &Server, token: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .arg("--admin-url")
        .arg(format!("http://{}", s.admin))
        .env_remove("VERIFYIAM_TOKEN")
        .env_remove("VERIFYIAM_ORGANIZATION");
    if let Some(t) = token {
        cmd.env("VERIFYIAM_TOKEN", t);
    }
    let out = cmd.output().await.unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json_out(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn dep_args<'a>(verb: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "deployments",
        verb,
        "orders",
        "--organization",
        PROJECT,
        "--environment",
        "prod",
    ];
    v.extend_from_slice(rest);
    v
}

#[tokio::test]
async fn cli_grants_and_revokes_on_a_deployment() {
    let s = Server::start().await;
    let admin = token(ADMIN);
    let alice = format!("Bearer {}", token("alice@example.com"));
    let (code, out, err) = run(
        &s,
        Some(&admin),
        &dep_args(
            "add-iam-policy-binding",
            &["--member", "user:alice@example.com", "--role", INVOKER],
        ),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("Updated IAM policy for deployment [orders]."),
        "{err}"
    );
    assert_eq!(
        json_out(&out)["bindings"],
        json!([{"role": INVOKER, "members": ["user:alice@example.com"]}])
    );
    assert!(s.check(Some(&alice), "prod", "orders").await.allowed());

    // get-iam-policy in YAML, as gcloud prints it.
    let (code, out, _) = run(
        &s,
        Some(&admin),
        &dep_args("get-iam-policy", &["--format", "yaml"]),
    )
    .await;
    assert_eq!(code, 0);
    assert!(
        out.starts_with("bindings:\n- members:\n  - \"user:alice@example.com\"\n"),
        "{out}"
    );
    assert!(out.contains("\nversion: 1\n"), "{out}");

    // test-iam-permissions as alice.
    let (code, out, _) = run(
        &s,
        Some(&token("alice@example.com")),
        &dep_args(
            "test-iam-permissions",
            &[
                "--permissions",
                "apigee.deployments.invoke,apigee.deployments.get",
            ],
        ),
    )
    .await;
    assert_eq!(code, 0);
    assert_eq!(
        json_out(&out),
        json!({"permissions": ["apigee.deployments.invoke"]})
    );

    let (code, out, err) = run(
        &s,
        Some(&admin),
        &dep_args(
            "remove-iam-policy-binding",
            &["--member", "user:alice@example.com", "--role", INVOKER],
        ),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(json_out(&out).get("bindings").is_none(), "{out}");
    assert!(!s.check(Some(&alice), "prod", "orders").await.allowed());

    // Removing it again: not found, exit 5.
    let (code, _, err) = run(
        &s,
        Some(&admin),
        &dep_args(
            "remove-iam-policy-binding",
            &["--member", "user:alice@example.com", "--role", INVOKER],
        ),
    )
    .await;
    assert_eq!(code, 5, "{err}");
    assert!(err.starts_with("ERROR: NOT_FOUND:"), "{err}");
}

#[tokio::test]
async fn two_concurrent_cli_processes_lose_no_update() {
    let s = Server::start().await;
    let admin = token(ADMIN);
    for round in 0..3 {
        let members: Vec<String> = (0..2)
            .map(|i| format!("user:r{round}-p{i}@example.com"))
            .collect();
        let args: Vec<Vec<&str>> = members
            .iter()
            .map(|m| {
                dep_args(
                    "add-iam-policy-binding",
                    &["--member", m, "--role", INVOKER],
                )
            })
            .collect();
        let (a, b) = tokio::join!(
            run(&s, Some(&admin), &args[0]),
            run(&s, Some(&admin), &args[1])
        );
        assert_eq!(a.0, 0, "{}", a.2);
        assert_eq!(b.0, 0, "{}", b.2);
        let (_, out, _) = run(&s, Some(&admin), &dep_args("get-iam-policy", &[])).await;
        let policy = json_out(&out);
        let held: Vec<&str> = policy["bindings"][0]["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap())
            .collect();
        for m in &members {
            assert!(
                held.contains(&m.as_str()),
                "round {round}: {m} lost: {policy}"
            );
        }
    }
}

#[tokio::test]
async fn cli_project_set_policy_from_a_file_and_exit_codes() {
    let s = Server::start().await;
    let admin = token(ADMIN);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.json");
    std::fs::write(
        &file,
        json!({"bindings": [{"role": INVOKER, "members": ["user:bob@example.com"]}]}).to_string(),
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let (code, out, err) = run(
        &s,
        Some(&admin),
        &["projects", "set-iam-policy", PROJECT, f],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        json_out(&out)["bindings"][0]["members"],
        json!(["user:bob@example.com"])
    );
    assert!(
        s.check(
            Some(&format!("Bearer {}", token("bob@example.com"))),
            "prod",
            "any"
        )
        .await
        .allowed()
    );

    // A stale etag in the file: ABORTED, exit 6.
    std::fs::write(&file, json!({"etag": "ACAB", "bindings": []}).to_string()).unwrap();
    let (code, _, err) = run(
        &s,
        Some(&admin),
        &["projects", "set-iam-policy", PROJECT, f],
    )
    .await;
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("ABORTED"), "{err}");
    // A bad policy: exit 7 with the server's message.
    std::fs::write(
        &file,
        json!({"bindings": [{"role": INVOKER, "members": ["bob"]}]}).to_string(),
    )
    .unwrap();
    let (code, _, err) = run(
        &s,
        Some(&admin),
        &["projects", "set-iam-policy", PROJECT, f],
    )
    .await;
    assert_eq!(code, 7, "{err}");
    assert!(
        err.contains("INVALID_ARGUMENT") && err.contains("invalid member"),
        "{err}"
    );
    // Not JSON, or missing: usage, exit 2.
    std::fs::write(&file, "bindings: []").unwrap();
    let (code, _, err) = run(
        &s,
        Some(&admin),
        &["projects", "set-iam-policy", PROJECT, f],
    )
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is not a JSON policy"), "{err}");
    let (code, _, _) = run(
        &s,
        Some(&admin),
        &["projects", "set-iam-policy", PROJECT, "/nonexistent.json"],
    )
    .await;
    assert_eq!(code, 2);
    // No token: exit 4; another caller without permission: exit 4.
    let (code, _, err) = run(&s, None, &["projects", "get-iam-policy", PROJECT]).await;
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("UNAUTHENTICATED"), "{err}");
    let (code, _, err) = run(
        &s,
        Some(&token("eve@example.com")),
        &["projects", "get-iam-policy", PROJECT],
    )
    .await;
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("PERMISSION_DENIED"), "{err}");
    // Missing --organization: usage.
    let (code, _, err) = run(
        &s,
        Some(&admin),
        &["environments", "get-iam-policy", "prod"],
    )
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--organization is required"), "{err}");
    // Nothing listening: exit 3.
    let out = Command::new(BIN)
        .args([
            "projects",
            "get-iam-policy",
            PROJECT,
            "--admin-url",
            "http://127.0.0.1:1",
        ])
        .env("VERIFYIAM_TOKEN", &admin)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
}

#[tokio::test]
async fn cli_deployments_roles_and_groups() {
    let s = Server::start().await;
    let admin = token(ADMIN);
    let (code, out, err) = run(
        &s,
        Some(&admin),
        &dep_args(
            "deploy",
            &["--revision", "3", "--continue-on-error", "true"],
        ),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(json_out(&out)["continueOnError"], true);
    let (code, out, _) = run(
        &s,
        Some(&admin),
        &[
            "deployments",
            "list",
            "--organization",
            PROJECT,
            "--environment",
            "prod",
        ],
    )
    .await;
    assert_eq!(code, 0);
    assert_eq!(json_out(&out)["deployments"][0]["revision"], "3");
    let (code, out, _) = run(&s, Some(&admin), &dep_args("describe", &[])).await;
    assert_eq!(
        (code, json_out(&out)["apiProxy"].clone()),
        (0, json!("orders"))
    );
    let (code, out, _) = run(
        &s,
        Some(&admin),
        &dep_args("update", &["--continue-on-error", "false"]),
    )
    .await;
    assert_eq!(
        (code, json_out(&out)["continueOnError"].clone()),
        (0, json!(false))
    );

    // A custom role through the CLI, then a group member granted through it.
    let role = format!("projects/{PROJECT}/roles/caller");
    let (code, out, err) = run(
        &s,
        Some(&admin),
        &[
            "roles",
            "create",
            "caller",
            "--project",
            PROJECT,
            "--title",
            "Caller",
            "--permissions",
            "apigee.deployments.invoke",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(json_out(&out)["name"], role);
    let (code, _, err) = run(
        &s,
        Some(&admin),
        &[
            "roles",
            "create",
            "bad",
            "--project",
            PROJECT,
            "--permissions",
            "apigee.deployments.fly",
        ],
    )
    .await;
    assert_eq!(code, 7, "{err}");
    let (code, _, err) = run(
        &s,
        Some(&admin),
        &dep_args(
            "add-iam-policy-binding",
            &["--member", "group:ops@example.com", "--role", &role],
        ),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(
        &s,
        Some(&admin),
        &[
            "groups",
            "add-member",
            "ops@example.com",
            "--member",
            "user:dana@example.com",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(json_out(&out)["members"], json!(["user:dana@example.com"]));
    let dana = format!("Bearer {}", token("dana@example.com"));
    assert!(s.check(Some(&dana), "prod", "orders").await.allowed());
    let (code, out, _) = run(&s, Some(&admin), &["groups", "list", "--format", "yaml"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("email: \"ops@example.com\""), "{out}");
    let (code, _, err) = run(
        &s,
        Some(&admin),
        &["roles", "delete", "caller", "--project", PROJECT],
    )
    .await;
    assert_eq!(code, 7, "{err}");
    assert!(err.contains("FAILED_PRECONDITION"), "{err}");
    let (code, _, _) = run(
        &s,
        Some(&admin),
        &[
            "groups",
            "remove-member",
            "ops@example.com",
            "--member",
            "user:dana@example.com",
        ],
    )
    .await;
    assert_eq!(code, 0);
    assert!(!s.check(Some(&dana), "prod", "orders").await.allowed());
    let (code, _, err) = run(
        &s,
        Some(&admin),
        &dep_args("undeploy", &["--revision", "3"]),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let (code, _, _) = run(&s, Some(&admin), &dep_args("describe", &[])).await;
    assert_eq!(code, 5);
}
