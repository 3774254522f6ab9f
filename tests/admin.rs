//! The admin REST API against a real server: the seed document's curl bodies, etag concurrency,
//! validation, the admin's own authorization, health, metrics and durability across restarts.

mod common;

use common::*;
use serde_json::{Value, json};

fn dep(verb: &str) -> String {
    format!("/v1/organizations/{PROJECT}/environments/prod/deployments/orders:{verb}")
}

fn error_status(v: &Value) -> &str {
    v["error"]["status"].as_str().unwrap_or("")
}

#[tokio::test]
async fn seed_curl_bodies_work_as_written() {
    let s = Server::start().await;
    let admin = token(ADMIN);
    let user = "alice@example.com";
    // setIamPolicy with the seed's exact body (its member placeholder filled in).
    let body = r#"{"policy":{"bindings":[{"members":["user:$user"],"role":"roles/apigee.deploymentInvoker"}]}}"#
        .replace("$user", user);
    // The seed sends `Bearer $TOKEN ` with a trailing space.
    let r = reqwest::Client::new()
        .post(s.admin_url(&dep("setIamPolicy")))
        .header("Authorization", format!("Bearer {admin} "))
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let set: Value = r.json().await.unwrap();
    assert_eq!(set["version"], 1);
    assert!(set["etag"].as_str().unwrap().ends_with('='), "{set}");
    assert_eq!(
        set["bindings"],
        json!([{"role": INVOKER, "members": [format!("user:{user}")]}])
    );

    // getIamPolicy as a plain GET, as the seed's curl sends it.
    let (status, got) = s.get(&dep("getIamPolicy"), Some(&admin)).await;
    assert_eq!(status, 200);
    assert_eq!(got, set);
    // … and as a POST.
    let (status, got) = s.post(&dep("getIamPolicy"), Some(&admin), "{}").await;
    assert_eq!((status, &got), (200, &set));

    // testIamPermissions with the user's own token.
    let body = r#"{"permissions":["apigee.deployments.invoke"]}"#;
    let (status, v) = s
        .post(&dep("testIamPermissions"), Some(&token(user)), body)
        .await;
    assert_eq!(
        (status, v),
        (200, json!({"permissions": ["apigee.deployments.invoke"]}))
    );

    // setIamPolicy with `{}` removes every binding.
    let (status, cleared) = s.post(&dep("setIamPolicy"), Some(&admin), "{}").await;
    assert_eq!(status, 200);
    assert_eq!(cleared["version"], 1);
    assert!(cleared.get("bindings").is_none());

    // …and the user then holds nothing: an empty answer.
    let (status, v) = s
        .post(&dep("testIamPermissions"), Some(&token(user)), body)
        .await;
    assert_eq!((status, v), (200, json!({})));
}

#[tokio::test]
async fn resource_without_policy_has_an_empty_policy_with_an_etag() {
    let s = Server::start().await;
    let (status, v) = s.get(&dep("getIamPolicy"), Some(&token(ADMIN))).await;
    assert_eq!(status, 200);
    assert_eq!(v, json!({"version": 1, "etag": "ACAB"}));
    let (status, v) = s
        .post(
            &format!("/v1/projects/{PROJECT}:getIamPolicy"),
            Some(&token(ADMIN)),
            "",
        )
        .await;
    assert_eq!((status, v), (200, json!({"version": 1, "etag": "ACAB"})));
}

#[tokio::test]
async fn stale_etag_is_aborted_and_current_etag_succeeds() {
    let s = Server::start().await;
    let admin = token(ADMIN);
    let (_, first) = s.get(&dep("getIamPolicy"), Some(&admin)).await;
    let etag = first["etag"].as_str().unwrap().to_owned();
    let write = |members: Vec<&str>, etag: &str| {
        json!({"policy": {"etag": etag, "bindings": [{"role": INVOKER, "members": members}]}})
            .to_string()
    };
    let (status, v) = s
        .post(
            &dep("setIamPolicy"),
            Some(&admin),
            &write(vec!["user:a@example.com"], &etag),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let new_etag = v["etag"].as_str().unwrap().to_owned();
    assert_ne!(new_etag, etag);
    // The same (now stale) etag again: 409 ABORTED, and nothing changes.
    let (status, v) = s
        .post(
            &dep("setIamPolicy"),
            Some(&admin),
            &write(vec!["user:b@example.com"], &etag),
        )
        .await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(error_status(&v), "ABORTED");
    assert_eq!(v["error"]["code"], 409);
    let (_, now) = s.get(&dep("getIamPolicy"), Some(&admin)).await;
    assert_eq!(now["bindings"][0]["members"], json!(["user:a@example.com"]));
    // With the current etag it goes through.
    let (status, _) = s
        .post(
            &dep("setIamPolicy"),
            Some(&admin),
            &write(vec!["user:b@example.com"], &new_etag),
        )
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn bad_policies_are_invalid_argument() {
    let s = Server::start().await;
    let admin = token(ADMIN);
    let many: Vec<String> = (0..1501)
        .map(|i| format!("user:u{i}@example.com"))
        .collect();
    let ok_many: Vec<String> = (0..1500)
        .map(|i| format!("user:u{i}@example.com"))
        .collect();
    let cases = vec![
        (
            json!({"policy": {"bindings": [{"role": INVOKER, "members": ["user:a@example.com"],
                "condition": {"expression": "request.time < timestamp('2030-01-01T00:00:00Z')", "title": "t"}}]}}),
            "conditions are not supported",
        ),
        (
            json!({"policy": {"bindings": [{"role": INVOKER, "members": many}]}}),
            "1500",
        ),
        (
            json!({"policy": {"bindings": [{"role": "roles/made.up", "members": ["user:a@example.com"]}]}}),
            "roles/made.up",
        ),
        (
            json!({"policy": {"bindings": [{"role": INVOKER, "members": ["bob"]}]}}),
            "bob",
        ),
        (json!({"policy": {"version": 2}}), "version"),
        (
            json!({"policy": {"bindings": []}, "surprise": 1}),
            "surprise",
        ),
    ];
    for (body, text) in cases {
        let (status, v) = s
            .post(&dep("setIamPolicy"), Some(&admin), &body.to_string())
            .await;
        assert_eq!(status, 400, "{text}: {v}");
        assert_eq!(error_status(&v), "INVALID_ARGUMENT");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(
            msg.to_lowercase().contains(&text.to_lowercase()),
            "{text}: {msg}"
        );
    }
    // Malformed JSON and a bad etag are refused the same way.
    for body in [
        "{\"policy\": ",
        "not json",
        "{\"policy\":{\"etag\":\"%%%\"}}",
    ] {
        let (status, v) = s.post(&dep("setIamPolicy"), Some(&admin), body).await;
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(error_status(&v), "INVALID_ARGUMENT");
    }
    // Exactly 1,500 principals is fine.
    let body = json!({"policy": {"bindings": [{"role": INVOKER, "members": ok_many}]}});
    let (status, v) = s
        .post(&dep("setIamPolicy"), Some(&admin), &body.to_string())
        .await;
    assert_eq!(status, 200, "{v}");
    // Nothing invalid was stored along the way.
    let (_, v) = s.get(&dep("getIamPolicy"), Some(&admin)).await;
    assert_eq!(v["bindings"][0]["members"].as_array().unwrap().len(), 1500);
}

#[tokio::test]
async fn callers_need_a_token_and_the_permission() {
    let s = Server::start().await;
    let body =
        json!({"policy": {"bindings": [{"role": INVOKER, "members": ["user:eve@example.com"]}]}})
            .to_string();
    // No token.
    let (status, v) = s.post(&dep("setIamPolicy"), None, &body).await;
    assert_eq!((status, error_status(&v)), (401, "UNAUTHENTICATED"), "{v}");
    // A bad token.
    let (status, v) = s
        .post(&dep("setIamPolicy"), Some("not-a-token"), &body)
        .await;
    assert_eq!((status, error_status(&v)), (401, "UNAUTHENTICATED"), "{v}");
    // A valid non-admin.
    let eve = token("eve@example.com");
    let (status, v) = s.post(&dep("setIamPolicy"), Some(&eve), &body).await;
    assert_eq!(
        (status, error_status(&v)),
        (403, "PERMISSION_DENIED"),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("apigee.deployments.setIamPolicy")
    );
    let (status, _) = s.get(&dep("getIamPolicy"), Some(&eve)).await;
    assert_eq!(status, 403);
    let (status, _) = s
        .post(
            &format!("/v1/projects/{PROJECT}:setIamPolicy"),
            Some(&eve),
            &body,
        )
        .await;
    assert_eq!(status, 403);
    // An invoker on the deployment is still not an administrator of it.
    s.grant_deployment(
        "prod",
        "orders",
        "user:eve@example.com",
        "roles/apigee.admin",
    )
    .await;
    let (status, _) = s.post(&dep("setIamPolicy"), Some(&eve), &body).await;
    assert_eq!(
        status, 403,
        "admin permissions bound on a deployment have no effect"
    );
    // testIamPermissions needs no permission, only a token.
    let (status, v) = s
        .post(
            &dep("testIamPermissions"),
            Some(&eve),
            r#"{"permissions":["apigee.deployments.invoke"]}"#,
        )
        .await;
    assert_eq!((status, v), (200, json!({})));
    let (status, _) = s
        .post(&dep("testIamPermissions"), None, r#"{"permissions":[]}"#)
        .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn environment_admins_manage_deployments_of_their_environment_only() {
    let s = Server::start().await;
    s.grant_environment("prod", "user:env-admin@example.com", "roles/apigee.admin")
        .await;
    let t = token("env-admin@example.com");
    let body =
        json!({"policy": {"bindings": [{"role": INVOKER, "members": ["user:x@example.com"]}]}})
            .to_string();
    let (status, v) = s.post(&dep("setIamPolicy"), Some(&t), &body).await;
    assert_eq!(status, 200, "{v}");
    let other =
        format!("/v1/organizations/{PROJECT}/environments/test/deployments/orders:setIamPolicy");
    let (status, _) = s.post(&other, Some(&t), &body).await;
    assert_eq!(status, 403);
    let (status, _) = s
        .post(
            &format!("/v1/projects/{PROJECT}:setIamPolicy"),
            Some(&t),
            &body,
        )
        .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn other_projects_and_organizations_are_not_ours() {
    let s = Server::start().await;
    let admin = token(ADMIN);
    let (status, v) = s
        .get(
            "/v1/organizations/other-org/environments/prod/deployments/orders:getIamPolicy",
            Some(&admin),
        )
        .await;
    assert_eq!((status, error_status(&v)), (403, "PERMISSION_DENIED"));
    let (status, _) = s
        .post(
            "/v1/projects/other-project:getIamPolicy",
            Some(&admin),
            "{}",
        )
        .await;
    assert_eq!(status, 403);
    let (status, v) = s.post(&dep("frobnicate"), Some(&admin), "{}").await;
    assert_eq!((status, error_status(&v)), (404, "NOT_FOUND"));
    let (status, _) = s.get(&dep("setIamPolicy"), Some(&admin)).await;
    assert_eq!(status, 404, "setIamPolicy is POST only");
}

#[tokio::test]
async fn test_iam_permissions_answers_for_the_caller() {
    let s = Server::start().await;
    s.grant_project("user:alice@example.com", "roles/viewer")
        .await;
    let asked = r#"{"permissions":["apigee.deployments.invoke","apigee.deployments.get","apigee.deployments.list"]}"#;
    let (status, v) = s
        .post(
            &dep("testIamPermissions"),
            Some(&token("alice@example.com")),
            asked,
        )
        .await;
    assert_eq!(
        (status, v),
        (
            200,
            json!({"permissions": ["apigee.deployments.get", "apigee.deployments.list"]})
        )
    );
    let (status, v) = s
        .post(&dep("testIamPermissions"), Some(&token(ADMIN)), asked)
        .await;
    assert_eq!(status, 200);
    assert_eq!(v["permissions"].as_array().unwrap().len(), 3);
    let (status, v) = s
        .post(
            &dep("testIamPermissions"),
            Some(&token(ADMIN)),
            r#"{"permissions":["apigee.made.up"]}"#,
        )
        .await;
    assert_eq!((status, error_status(&v)), (400, "INVALID_ARGUMENT"));
}

#[tokio::test]
async fn a_grant_survives_a_restart_on_the_same_store() {
    let s = Server::start().await;
    s.grant_deployment("prod", "orders", "user:alice@example.com", INVOKER)
        .await;
    let (_, before) = s.get(&dep("getIamPolicy"), Some(&token(ADMIN))).await;
    let upstream = s.upstream.clone();
    let store = s.stop().await;
    let s = Server::start_with(Options {
        store: Some(store),
        upstream: Some(upstream),
        ..Default::default()
    })
    .await;
    let (_, after) = s.get(&dep("getIamPolicy"), Some(&token(ADMIN))).await;
    assert_eq!(before, after);
    assert!(
        s.check(
            Some(&format!("Bearer {}", token("alice@example.com"))),
            "prod",
            "orders"
        )
        .await
        .allowed()
    );
    // The epoch goes on from where it was: a new write gets a new etag.
    let (status, v) = s
        .post(&dep("setIamPolicy"), Some(&token(ADMIN)), "{}")
        .await;
    assert_eq!(status, 200);
    assert_ne!(v["etag"], before["etag"]);
}

#[tokio::test]
async fn health_ready_and_metrics() {
    let s = Server::start().await;
    let (status, _) = s.get("/healthz", None).await;
    assert_eq!(status, 200);
    let (status, _) = s.get("/readyz", None).await;
    assert_eq!(status, 200);
    s.check(None, "prod", "orders").await;
    let (status, text) = s.get("/metrics", None).await;
    assert_eq!(status, 200);
    let text = text.as_str().unwrap().to_owned();
    assert!(
        text.contains("verifyiam_checks_total{decision=\"deny\",reason=\"invalid_request\"}"),
        "{text}"
    );
    assert!(
        text.contains("verifyiam_check_duration_seconds_bucket"),
        "{text}"
    );
    let (status, v) = s.get("/nope", None).await;
    assert_eq!((status, error_status(&v)), (404, "NOT_FOUND"));
}

#[tokio::test]
async fn tokens_never_appear_in_metrics_or_errors() {
    let s = Server::start().await;
    let t = token("alice@example.com");
    let o = s
        .check(Some(&format!("Bearer {t}")), "prod", "orders")
        .await;
    assert!(!format!("{:?}", o.raw).contains(&t));
    let (_, text) = s.get("/metrics", None).await;
    assert!(!text.as_str().unwrap().contains(&t[..40]));
}

/// `[[iam.groups]]` is the single source of the groups it names: the API refuses to change them
/// (so no start can undo an API change), a restart keeps them as configured, and groups the
/// configuration does not name stay the API's, across restarts too.
#[tokio::test]
async fn configured_groups_are_changed_only_by_the_configuration() {
    let seeded = "[[iam.groups]]\nemail = \"seeded@example.com\"\n\
                  members = [\"user:carol@example.com\", \"user:dave@example.com\"]\n";
    let s = Server::start_with(Options {
        iam_extra: seeded.into(),
        ..Options::default()
    })
    .await;
    let admin = token(ADMIN);
    for verb in ["removeMember", "addMember"] {
        let member = if verb == "removeMember" {
            "user:dave@example.com"
        } else {
            "user:eve@example.com"
        };
        let (status, v) = s
            .post(
                &format!("/v1/groups/seeded@example.com:{verb}"),
                Some(&admin),
                &json!({ "member": member }).to_string(),
            )
            .await;
        assert_eq!(status, 400, "{verb} on a configured group: {v}");
        assert_eq!(error_status(&v), "FAILED_PRECONDITION", "{v}");
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("[[iam.groups]]"), "{message}");
    }
    let (status, v) = s
        .post(
            "/v1/groups/ops@example.com:addMember",
            Some(&admin),
            r#"{"member":"user:alice@example.com"}"#,
        )
        .await;
    assert_eq!(status, 200, "a group the configuration does not name: {v}");

    let upstream = s.upstream.clone();
    let store = s.stop().await;
    let s = Server::start_with(Options {
        iam_extra: seeded.into(),
        store: Some(store),
        upstream: Some(upstream),
        ..Options::default()
    })
    .await;
    let (status, g) = s.get("/v1/groups/seeded@example.com", Some(&admin)).await;
    assert_eq!(status, 200, "{g}");
    assert_eq!(
        g["members"],
        json!(["user:carol@example.com", "user:dave@example.com"])
    );
    let (status, g) = s.get("/v1/groups/ops@example.com", Some(&admin)).await;
    assert_eq!(status, 200, "{g}");
    assert_eq!(g["members"], json!(["user:alice@example.com"]));
}
