//! The management side against a real server: the deployment lifecycle (undeploy deletes the
//! policy and denies, redeploy starts empty), strict mode, custom roles, groups, continue on
//! error, and every bad input's clear error.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

const ORG: &str = PROJECT;

fn dep(api: &str) -> String {
    format!("/v1/organizations/{ORG}/environments/prod/deployments/{api}")
}

fn revision(api: &str, rev: &str) -> String {
    format!("/v1/organizations/{ORG}/environments/prod/apis/{api}/revisions/{rev}/deployments")
}

fn status(v: &Value) -> &str {
    v["error"]["status"].as_str().unwrap_or("")
}

fn message(v: &Value) -> &str {
    v["error"]["message"].as_str().unwrap_or("")
}

fn bearer(email: &str) -> String {
    format!("Bearer {}", token(email))
}

async fn deploy(s: &Server, api: &str, rev: &str, query: &str) -> (u16, Value) {
    s.call(
        Method::POST,
        &format!("{}{query}", revision(api, rev)),
        Some(&token(ADMIN)),
        None,
    )
    .await
}

async fn undeploy(s: &Server, api: &str, rev: &str) -> (u16, Value) {
    s.call(
        Method::DELETE,
        &revision(api, rev),
        Some(&token(ADMIN)),
        None,
    )
    .await
}

#[tokio::test]
async fn undeploy_deletes_the_policy_denies_and_redeploy_starts_empty() {
    let s = Server::start().await;
    let admin = token(ADMIN);
    let (st, v) = deploy(&s, "orders", "1", "").await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["apiProxy"], "orders");
    assert_eq!(v["revision"], "1");
    assert_eq!(v["environment"], "prod");
    assert_eq!(v["continueOnError"], false);
    s.grant_deployment("prod", "orders", "user:alice@example.com", INVOKER)
        .await;
    // A project-level grant too: undeployed APIs are denied whatever grants exist.
    s.grant_project("user:bob@example.com", INVOKER).await;
    assert!(
        s.check(Some(&bearer("alice@example.com")), "prod", "orders")
            .await
            .allowed()
    );
    assert!(
        s.check(Some(&bearer("bob@example.com")), "prod", "orders")
            .await
            .allowed()
    );

    // Listed and described.
    let (st, list) = s
        .get(
            &format!("/v1/organizations/{ORG}/environments/prod/deployments"),
            Some(&admin),
        )
        .await;
    assert_eq!(st, 200, "{list}");
    assert_eq!(list["deployments"][0]["apiProxy"], "orders");
    let (st, one) = s.get(&dep("orders"), Some(&admin)).await;
    assert_eq!((st, &one["revision"]), (200, &json!("1")));

    // Undeploying another revision is refused and changes nothing.
    let (st, v) = undeploy(&s, "orders", "2").await;
    assert_eq!((st, status(&v)), (404, "NOT_FOUND"), "{v}");
    assert!(message(&v).contains("revision 1"), "{v}");

    let (st, v) = undeploy(&s, "orders", "1").await;
    assert_eq!(st, 200, "{v}");
    // Policy gone, Checks denied (even through the project grant), 403 like any denial.
    let (_, policy) = s
        .get(&format!("{}:getIamPolicy", dep("orders")), Some(&admin))
        .await;
    assert_eq!(policy, json!({"version": 1, "etag": "ACAB"}));
    for who in ["alice@example.com", "bob@example.com"] {
        let o = s.check(Some(&bearer(who)), "prod", "orders").await;
        o.assert_denied(PERMISSION_DENIED, 403, None);
        assert_eq!(o.metadata["reason"], "not_deployed");
        assert!(o.message().contains("(or it may not exist)"), "{o:?}");
    }
    // No longer listed or described.
    let (_, list) = s
        .get(
            &format!("/v1/organizations/{ORG}/environments/prod/deployments"),
            Some(&admin),
        )
        .await;
    assert_eq!(list, json!({}));
    let (st, v) = s.get(&dep("orders"), Some(&admin)).await;
    assert_eq!((st, status(&v)), (404, "NOT_FOUND"), "{v}");
    // Undeploying twice: not found.
    let (st, _) = undeploy(&s, "orders", "1").await;
    assert_eq!(st, 404);

    // Redeploy: it starts with no policy; the project grant applies again, alice's does not.
    let (st, v) = deploy(&s, "orders", "2", "").await;
    assert_eq!(st, 200, "{v}");
    let (_, policy) = s
        .get(&format!("{}:getIamPolicy", dep("orders")), Some(&admin))
        .await;
    assert!(policy.get("bindings").is_none(), "{policy}");
    assert!(
        !s.check(Some(&bearer("alice@example.com")), "prod", "orders")
            .await
            .allowed()
    );
    assert!(
        s.check(Some(&bearer("bob@example.com")), "prod", "orders")
            .await
            .allowed()
    );
}

#[tokio::test]
async fn implicit_deployments_come_into_being_with_a_policy_and_can_be_undeployed() {
    let s = Server::start().await;
    let admin = token(ADMIN);
    s.grant_deployment("prod", "payments", "user:alice@example.com", INVOKER)
        .await;
    let (st, v) = s.get(&dep("payments"), Some(&admin)).await;
    assert_eq!(st, 200, "{v}");
    assert!(v.get("revision").is_none(), "implicit: no revision: {v}");
    // Any revision undeploys an implicit deployment; then it is denied.
    let (st, v) = undeploy(&s, "payments", "7").await;
    assert_eq!(st, 200, "{v}");
    assert!(
        !s.check(Some(&bearer("alice@example.com")), "prod", "payments")
            .await
            .allowed()
    );
    // Not strict: setting a policy again brings it back into being.
    s.grant_deployment("prod", "payments", "user:alice@example.com", INVOKER)
        .await;
    assert!(
        s.check(Some(&bearer("alice@example.com")), "prod", "payments")
            .await
            .allowed()
    );
    // An API nobody named does not exist.
    let (st, _) = s.get(&dep("nothing"), Some(&admin)).await;
    assert_eq!(st, 404);
}

#[tokio::test]
async fn deployment_calls_need_their_permissions_and_refuse_bad_input() {
    let s = Server::start().await;
    let alice = token("alice@example.com");
    let list = format!("/v1/organizations/{ORG}/environments/prod/deployments");
    for (method, path, perm) in [
        (Method::GET, list.clone(), "apigee.deployments.list"),
        (Method::GET, dep("orders"), "apigee.deployments.get"),
        (
            Method::POST,
            revision("orders", "1"),
            "apigee.deployments.create",
        ),
        (
            Method::DELETE,
            revision("orders", "1"),
            "apigee.deployments.delete",
        ),
        (Method::PATCH, dep("orders"), "apigee.deployments.update"),
    ] {
        let (st, v) = s
            .call(
                method.clone(),
                &path,
                Some(&alice),
                Some(r#"{"continueOnError":true}"#),
            )
            .await;
        assert_eq!(
            (st, status(&v)),
            (403, "PERMISSION_DENIED"),
            "{method} {path}: {v}"
        );
        assert!(message(&v).contains(perm), "{v}");
        let (st, _) = s.call(method, &path, None, None).await;
        assert_eq!(st, 401);
    }
    // A viewer at project level may list and describe but not deploy.
    s.grant_project("user:alice@example.com", "roles/viewer")
        .await;
    let (st, _) = s.get(&list, Some(&alice)).await;
    assert_eq!(st, 200);
    // Environment-level admin may deploy in that environment.
    s.grant_environment("prod", "user:carol@example.com", "roles/apigee.admin")
        .await;
    let (st, v) = s
        .call(
            Method::POST,
            &revision("orders", "1"),
            Some(&token("carol@example.com")),
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");

    // Bad input, each with a clear error.
    for (rev, query, needle) in [
        ("0", "", "invalid revision"),
        ("latest", "", "invalid revision"),
        ("1", "?continueOnError=yes", "use true or false"),
        ("1", "?force=true", "Invalid query parameter"),
    ] {
        let (st, v) = deploy(&s, "orders", rev, query).await;
        assert_eq!(
            (st, status(&v)),
            (400, "INVALID_ARGUMENT"),
            "{rev}{query}: {v}"
        );
        assert!(message(&v).contains(needle), "{needle}: {v}");
    }
    let (st, v) = s
        .call(
            Method::PATCH,
            &dep("orders"),
            Some(&token(ADMIN)),
            Some(r#"{"continueOnError":"x"}"#),
        )
        .await;
    assert_eq!((st, status(&v)), (400, "INVALID_ARGUMENT"), "{v}");
    let (st, v) = s
        .call(
            Method::PATCH,
            &dep("orders"),
            Some(&token(ADMIN)),
            Some(r#"{"revision":"2"}"#),
        )
        .await;
    assert_eq!((st, status(&v)), (400, "INVALID_ARGUMENT"), "{v}");
    assert!(message(&v).contains("unknown field"), "{v}");
}

#[tokio::test]
async fn strict_mode_accepts_policies_only_on_deployed_apis() {
    let s = Server::start_with(Options {
        iam_extra: "strict_deployments = true".into(),
        extra: "[[routes]]\npath_prefix = \"/orders\"\nenvironment = \"prod\"\ndeployment = \"orders\"\n"
            .into(),
        ..Options::default()
    })
    .await;
    let admin = token(ADMIN);
    s.grant_project("user:bob@example.com", INVOKER).await;
    let body =
        json!({"policy": {"bindings": [{"role": INVOKER, "members": ["user:alice@example.com"]}]}})
            .to_string();
    let set = format!("{}:setIamPolicy", dep("orders"));
    let (st, v) = s.post(&set, Some(&admin), &body).await;
    assert_eq!((st, status(&v)), (404, "NOT_FOUND"), "{v}");
    assert!(message(&v).contains("deploy it before"), "{v}");
    // Even a route naming it does not make it exist; Checks on it are denied.
    let o = s
        .check(Some(&bearer("bob@example.com")), "prod", "orders")
        .await;
    o.assert_denied(PERMISSION_DENIED, 403, None);
    assert_eq!(o.metadata["reason"], "not_deployed");
    let (st, _) = s.get(&dep("orders"), Some(&admin)).await;
    assert_eq!(st, 404);

    let (st, _) = deploy(&s, "orders", "1", "").await;
    assert_eq!(st, 200);
    let (st, v) = s.post(&set, Some(&admin), &body).await;
    assert_eq!(st, 200, "{v}");
    assert!(
        s.check(Some(&bearer("alice@example.com")), "prod", "orders")
            .await
            .allowed()
    );
    assert!(
        s.check(Some(&bearer("bob@example.com")), "prod", "orders")
            .await
            .allowed()
    );
}

#[tokio::test]
async fn routes_name_deployments_that_exist_until_undeployed() {
    let s = Server::start_with(Options {
        extra: "[[routes]]\npath_prefix = \"/orders\"\nenvironment = \"prod\"\ndeployment = \"orders\"\n"
            .into(),
        ..Options::default()
    })
    .await;
    let admin = token(ADMIN);
    let (st, list) = s
        .get(
            &format!("/v1/organizations/{ORG}/environments/prod/deployments"),
            Some(&admin),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(list["deployments"][0]["apiProxy"], "orders", "{list}");
    let (st, _) = undeploy(&s, "orders", "1").await;
    assert_eq!(st, 200);
    let (_, list) = s
        .get(
            &format!("/v1/organizations/{ORG}/environments/prod/deployments"),
            Some(&admin),
        )
        .await;
    assert_eq!(list, json!({}));
}

// ---- custom roles ---------------------------------------------------------------------------

fn roles() -> String {
    format!("/v1/projects/{PROJECT}/roles")
}

#[tokio::test]
async fn custom_role_with_invoke_grants_and_refusals_are_clear() {
    let s = Server::start().await;
    let admin = token(ADMIN);
    let (st, role) = s
        .post(
            &roles(),
            Some(&admin),
            &json!({"roleId": "apiCaller", "role": {"title": "API caller", "description": "calls",
                    "includedPermissions": ["apigee.deployments.invoke"], "stage": "GA"}})
            .to_string(),
        )
        .await;
    assert_eq!(st, 200, "{role}");
    let name = format!("projects/{PROJECT}/roles/apiCaller");
    assert_eq!(role["name"], name);
    assert_eq!(
        role["includedPermissions"],
        json!(["apigee.deployments.invoke"])
    );
    assert_eq!(role["stage"], "GA");
    assert!(role["etag"].is_string());

    // Usable in bindings: grants invoke on the next Check.
    s.grant_deployment("prod", "orders", "user:alice@example.com", &name)
        .await;
    assert!(
        s.check(Some(&bearer("alice@example.com")), "prod", "orders")
            .await
            .allowed()
    );

    // get / list.
    let (st, got) = s.get(&format!("{}/apiCaller", roles()), Some(&admin)).await;
    assert_eq!((st, &got), (200, &role));
    let (st, list) = s.get(&roles(), Some(&admin)).await;
    assert_eq!((st, &list["roles"][0]["name"]), (200, &json!(name)));

    // Patch takes invoke away: the very next Check is denied (policies recompiled).
    let (st, patched) = s
        .call(
            Method::PATCH,
            &format!("{}/apiCaller?updateMask=includedPermissions", roles()),
            Some(&admin),
            Some(
                &json!({"includedPermissions": ["apigee.deployments.get"], "title": "ignored"})
                    .to_string(),
            ),
        )
        .await;
    assert_eq!(st, 200, "{patched}");
    assert_eq!(patched["title"], "API caller", "masked out");
    assert!(
        !s.check(Some(&bearer("alice@example.com")), "prod", "orders")
            .await
            .allowed()
    );
    // A stale etag on patch: ABORTED.
    let (st, v) = s
        .call(
            Method::PATCH,
            &format!("{}/apiCaller", roles()),
            Some(&admin),
            Some(&json!({"title": "t", "etag": role["etag"]}).to_string()),
        )
        .await;
    assert_eq!((st, status(&v)), (409, "ABORTED"), "{v}");

    // Delete while bound: refused, naming the resource that uses it.
    let (st, v) = s
        .call(
            Method::DELETE,
            &format!("{}/apiCaller", roles()),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!((st, status(&v)), (400, "FAILED_PRECONDITION"), "{v}");
    assert!(message(&v).contains(&dep("orders")[4..]), "{v}");
    // Unbind, then delete works; the role is then unknown in bindings.
    let (st, _) = s
        .post(
            &format!("{}:setIamPolicy", dep("orders")),
            Some(&admin),
            "{}",
        )
        .await;
    assert_eq!(st, 200);
    let (st, v) = s
        .call(
            Method::DELETE,
            &format!("{}/apiCaller", roles()),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let body =
        json!({"policy": {"bindings": [{"role": name, "members": ["user:alice@example.com"]}]}});
    let (st, v) = s
        .post(
            &format!("{}:setIamPolicy", dep("orders")),
            Some(&admin),
            &body.to_string(),
        )
        .await;
    assert_eq!((st, status(&v)), (400, "INVALID_ARGUMENT"), "{v}");
    assert!(message(&v).contains("unknown role"), "{v}");
    let (st, _) = s.get(&format!("{}/apiCaller", roles()), Some(&admin)).await;
    assert_eq!(st, 404);
}

#[tokio::test]
async fn custom_role_bad_input_and_permissions() {
    let s = Server::start().await;
    let admin = token(ADMIN);
    let create = |body: Value| body.to_string();
    for (body, code, needle) in [
        (
            json!({"roleId": "caller", "role": {"includedPermissions": ["apigee.deployments.fly"]}}),
            "INVALID_ARGUMENT",
            "apigee.deployments.fly",
        ),
        (
            json!({"roleId": "a-b", "role": {}}),
            "INVALID_ARGUMENT",
            "invalid role id",
        ),
        (json!({"role": {}}), "INVALID_ARGUMENT", "roleId"),
        (
            json!({"roleId": "caller", "role": {"stage": "SOON"}}),
            "INVALID_ARGUMENT",
            "SOON",
        ),
        (
            json!({"roleId": "caller", "role": {"color": "red"}}),
            "INVALID_ARGUMENT",
            "color",
        ),
    ] {
        let (st, v) = s.post(&roles(), Some(&admin), &create(body.clone())).await;
        assert_eq!((st, status(&v)), (400, code), "{body}: {v}");
        assert!(message(&v).contains(needle), "{needle}: {v}");
    }
    let ok = json!({"roleId": "caller", "role": {"includedPermissions": []}});
    assert_eq!(s.post(&roles(), Some(&admin), &ok.to_string()).await.0, 200);
    let (st, v) = s.post(&roles(), Some(&admin), &ok.to_string()).await;
    assert_eq!((st, status(&v)), (409, "ALREADY_EXISTS"), "{v}");
    let (st, v) = s
        .call(
            Method::PATCH,
            &format!("{}/caller?updateMask=name", roles()),
            Some(&admin),
            Some("{}"),
        )
        .await;
    assert_eq!((st, status(&v)), (400, "INVALID_ARGUMENT"), "{v}");
    // Another project's roles are not ours: denied.
    let (st, _) = s.get("/v1/projects/other/roles", Some(&admin)).await;
    assert_eq!(st, 403);
    // Without iam.roles.* a caller is denied, naming the permission.
    let alice = token("alice@example.com");
    for (method, path, perm) in [
        (Method::GET, roles(), "iam.roles.list"),
        (Method::POST, roles(), "iam.roles.create"),
        (Method::GET, format!("{}/caller", roles()), "iam.roles.get"),
        (
            Method::PATCH,
            format!("{}/caller", roles()),
            "iam.roles.update",
        ),
        (
            Method::DELETE,
            format!("{}/caller", roles()),
            "iam.roles.delete",
        ),
    ] {
        let (st, v) = s.call(method, &path, Some(&alice), Some("{}")).await;
        assert_eq!(st, 403, "{path}: {v}");
        assert!(message(&v).contains(perm), "{v}");
    }
    let (st, _) = s.get(&format!("{}/missing", roles()), Some(&admin)).await;
    assert_eq!(st, 404);
}

// ---- groups ---------------------------------------------------------------------------------

#[tokio::test]
async fn group_membership_grants_and_its_removal_applies_to_the_next_check() {
    let s = Server::start_with(Options {
        iam_extra: "[[iam.groups]]\nemail = \"seeded@example.com\"\nmembers = [\"user:carol@example.com\"]\n".into(),
        ..Options::default()
    })
    .await;
    let admin = token(ADMIN);
    s.grant_deployment("prod", "orders", "group:ops@example.com", INVOKER)
        .await;
    let alice = bearer("alice@example.com");
    // Cache alice's principal before she joins: membership is evaluated per Check.
    assert!(!s.check(Some(&alice), "prod", "orders").await.allowed());

    let add = r#"{"member":"user:Alice@Example.com"}"#;
    let (st, g) = s
        .post("/v1/groups/ops@example.com:addMember", Some(&admin), add)
        .await;
    assert_eq!(st, 200, "{g}");
    assert_eq!(g["members"], json!(["user:alice@example.com"]));
    assert_eq!(g["name"], "groups/ops@example.com");
    assert!(s.check(Some(&alice), "prod", "orders").await.allowed());
    // testIamPermissions sees it too.
    let (_, v) = s
        .post(
            &format!("{}:testIamPermissions", dep("orders")),
            Some(&token("alice@example.com")),
            r#"{"permissions":["apigee.deployments.invoke"]}"#,
        )
        .await;
    assert_eq!(v, json!({"permissions": ["apigee.deployments.invoke"]}));

    let (st, list) = s.get("/v1/groups", Some(&admin)).await;
    assert_eq!(st, 200);
    let emails: Vec<&str> = list["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["email"].as_str().unwrap())
        .collect();
    assert_eq!(emails, ["ops@example.com", "seeded@example.com"]);
    let (st, seeded) = s.get("/v1/groups/seeded@example.com", Some(&admin)).await;
    assert_eq!(
        (st, &seeded["members"]),
        (200, &json!(["user:carol@example.com"]))
    );

    let (st, _) = s
        .post(
            "/v1/groups/ops@example.com:removeMember",
            Some(&admin),
            r#"{"member":"user:alice@example.com"}"#,
        )
        .await;
    assert_eq!(st, 200);
    assert!(!s.check(Some(&alice), "prod", "orders").await.allowed());
    let (st, v) = s.get("/v1/groups/ops@example.com", Some(&admin)).await;
    assert_eq!(
        (st, status(&v)),
        (404, "NOT_FOUND"),
        "emptied groups are gone: {v}"
    );
}

#[tokio::test]
async fn group_bad_input_and_permissions() {
    let s = Server::start().await;
    let admin = token(ADMIN);
    for (path, body, needle) in [
        (
            "/v1/groups/ops@example.com:addMember",
            r#"{"member":"group:other@example.com"}"#,
            "user:EMAIL and serviceAccount:EMAIL",
        ),
        (
            "/v1/groups/ops@example.com:addMember",
            r#"{"member":"alice"}"#,
            "invalid member",
        ),
        (
            "/v1/groups/ops:addMember",
            r#"{"member":"user:a@example.com"}"#,
            "invalid group",
        ),
        (
            "/v1/groups/ops@example.com:addMember",
            r#"{"members":[]}"#,
            "unknown field",
        ),
    ] {
        let (st, v) = s.post(path, Some(&admin), body).await;
        assert_eq!(
            (st, status(&v)),
            (400, "INVALID_ARGUMENT"),
            "{path} {body}: {v}"
        );
        assert!(message(&v).contains(needle), "{needle}: {v}");
    }
    let (st, v) = s
        .post(
            "/v1/groups/ops@example.com:removeMember",
            Some(&admin),
            r#"{"member":"user:a@example.com"}"#,
        )
        .await;
    assert_eq!((st, status(&v)), (404, "NOT_FOUND"), "{v}");
    let (st, _) = s
        .post("/v1/groups/ops@example.com:rename", Some(&admin), "{}")
        .await;
    assert_eq!(st, 404);
    // Managing groups needs resourcemanager.projects.setIamPolicy; reading, getIamPolicy.
    let alice = token("alice@example.com");
    let (st, v) = s
        .post(
            "/v1/groups/ops@example.com:addMember",
            Some(&alice),
            r#"{"member":"user:alice@example.com"}"#,
        )
        .await;
    assert_eq!(st, 403);
    assert!(
        message(&v).contains("resourcemanager.projects.setIamPolicy"),
        "{v}"
    );
    let (st, v) = s.get("/v1/groups", Some(&alice)).await;
    assert_eq!(st, 403);
    assert!(
        message(&v).contains("resourcemanager.projects.getIamPolicy"),
        "{v}"
    );
    let (st, _) = s.get("/v1/groups", None).await;
    assert_eq!(st, 401);
}

// ---- continue on error ----------------------------------------------------------------------

#[tokio::test]
async fn continue_on_error_forwards_denials_marked_and_strips_spoofed_headers() {
    let s = Server::start().await;
    let (st, v) = deploy(&s, "orders", "1", "?continueOnError=true").await;
    assert_eq!((st, &v["continueOnError"]), (200, &json!(true)), "{v}");
    s.grant_deployment("prod", "orders", "user:alice@example.com", INVOKER)
        .await;
    let spoofed = [
        ("x-verifyiam-result", "allowed"),
        ("x-verifyiam-reason", "none"),
        ("x-verifyiam-principal", "root@example.com"),
    ];

    // Denied (no grant): answered OK, marked, the client's principal header removed.
    let o = s
        .check_with(Some(&bearer("bob@example.com")), "prod", "orders", &spoofed)
        .await;
    assert!(o.allowed(), "{o:?}");
    assert_eq!(o.header("x-verifyiam-result"), Some("denied"));
    assert_eq!(o.header("x-verifyiam-reason"), Some("permission_denied"));
    assert!(o.header("x-verifyiam-principal").is_none());
    assert!(
        o.headers.iter().all(|(_, _, action)| *action == 2),
        "OVERWRITE_IF_EXISTS_OR_ADD: {o:?}"
    );
    let ok = match &o.raw.http_response {
        Some(
            envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse::OkResponse(ok),
        ) => ok.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(ok.headers_to_remove, ["x-verifyiam-principal"]);
    assert_eq!(o.metadata["decision"], "continue");

    // No token at all: continues too, with its reason.
    let o = s.check_with(None, "prod", "orders", &spoofed).await;
    assert!(o.allowed());
    assert_eq!(o.header("x-verifyiam-reason"), Some("invalid_request"));

    // Allowed: the principal is set and the client's copies of both marks are removed, never
    // a header that the same answer sets.
    let o = s
        .check_with(
            Some(&bearer("alice@example.com")),
            "prod",
            "orders",
            &spoofed,
        )
        .await;
    assert!(o.allowed());
    assert_eq!(o.header("x-verifyiam-principal"), Some("alice@example.com"));
    let ok = match &o.raw.http_response {
        Some(
            envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse::OkResponse(ok),
        ) => ok.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        ok.headers_to_remove,
        ["x-verifyiam-result", "x-verifyiam-reason"]
    );
    for set in &o.headers {
        assert!(!ok.headers_to_remove.contains(&set.0), "{o:?}");
    }

    // Counted.
    let (_, metrics) = s.get("/metrics", None).await;
    let text = metrics.as_str().unwrap_or_default();
    assert!(
        text.lines().any(|l| l.starts_with("verifyiam_checks_total")
            && l.contains("decision=\"continue\"")
            && l.contains("reason=\"permission_denied\"")),
        "{text}"
    );

    // Switched off with PATCH: denials stop again.
    let (st, v) = s
        .call(
            Method::PATCH,
            &dep("orders"),
            Some(&token(ADMIN)),
            Some(r#"{"continueOnError":false}"#),
        )
        .await;
    assert_eq!((st, &v["continueOnError"]), (200, &json!(false)), "{v}");
    let o = s
        .check(Some(&bearer("bob@example.com")), "prod", "orders")
        .await;
    o.assert_denied(PERMISSION_DENIED, 403, None);
    // And on again; a redeploy keeps the setting, an undeploy drops it.
    s.call(
        Method::PATCH,
        &dep("orders"),
        Some(&token(ADMIN)),
        Some(r#"{"continueOnError":true}"#),
    )
    .await;
    let (_, v) = deploy(&s, "orders", "2", "").await;
    assert_eq!(v["continueOnError"], true);
    undeploy(&s, "orders", "2").await;
    let o = s
        .check(Some(&bearer("bob@example.com")), "prod", "orders")
        .await;
    o.assert_denied(PERMISSION_DENIED, 403, None);
}

#[tokio::test]
async fn continue_on_error_does_not_cover_outages() {
    // A second issuer whose key set cannot be fetched: its tokens are UNAVAILABLE (503).
    let up = Upstream::start().await;
    up.publish(&[rsa(), ec()]);
    let s = Server::start_with(Options {
        extra: format!(
            "[[token.jwt]]\nissuer = \"https://broken.test\"\njwks_uri = \"{}\"\n",
            up.url("/missing-jwks")
        ),
        upstream: Some(up),
        ..Options::default()
    })
    .await;
    let (st, _) = deploy(&s, "orders", "1", "?continueOnError=true").await;
    assert_eq!(st, 200);
    let mut claims = claims("eve@example.com");
    claims["iss"] = json!("https://broken.test");
    let o = s
        .check_with(
            Some(&format!("Bearer {}", rsa().sign(&claims))),
            "prod",
            "orders",
            &[],
        )
        .await;
    o.assert_denied(UNAVAILABLE, 503, None);
    assert!(o.header("x-verifyiam-result").is_none(), "{o:?}");
    assert_eq!(o.metadata["decision"], "deny");
}
