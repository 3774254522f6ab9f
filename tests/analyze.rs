//! The Policy Analyzer on the admin port, over REST (`GET /v1/{scope}:analyzeIamPolicy`) and
//! gRPC (`google.cloud.asset.v1.AssetService/AnalyzeIamPolicy`): "who can invoke D" agrees with
//! the next Checks, groups expand with their edges, "what can X invoke" expands a project grant
//! to every deployed deployment and an environment grant to none; refused combinations, callers
//! who may not read the project's policies and the other AssetService methods are refused.
//! (That every request is audited is a unit test of `admin::analyze`.)

mod common;

use common::*;
use serde_json::{Value, json};
use tonic::metadata::MetadataValue;

use pb::asset_service_client::AssetServiceClient;
use verifyiam::proto::google::cloud::asset::v1 as pb;

const PROD: &str = "organizations/demo-project/environments/prod";
const ORDERS: &str = "organizations/demo-project/environments/prod/deployments/orders";
const PAYMENTS: &str = "organizations/demo-project/environments/prod/deployments/payments";
const TEST_ORDERS: &str = "organizations/demo-project/environments/test/deployments/orders";
const INVOKE: &str = "apigee.deployments.invoke";

async fn set_policy(s: &Server, resource: &str, bindings: Value) {
    let body = json!({"policy": {"bindings": bindings}});
    let (status, answer) = s
        .post(
            &format!("/v1/{resource}:setIamPolicy"),
            Some(&token(ADMIN)),
            &body.to_string(),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
}

async fn deploy(s: &Server, env: &str, api: &str) {
    let path = format!(
        "/v1/organizations/demo-project/environments/{env}/apis/{api}/revisions/1/deployments"
    );
    let (status, v) = s.post(&path, Some(&token(ADMIN)), "").await;
    assert_eq!(status, 200, "{v}");
}

async fn add_member(s: &Server, group: &str, member: &str) {
    let (status, v) = s
        .post(
            &format!("/v1/groups/{group}:addMember"),
            Some(&token(ADMIN)),
            &json!({ "member": member }).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{v}");
}

/// The store of every test (ADMIN is its bootstrap owner): a group eng, a project grant to it, a deployment grant
/// to alice, an environment grant to bob; orders, payments and test/orders deployed.
async fn seeded() -> Server {
    let s = Server::start().await;
    for (env, api) in [("prod", "orders"), ("prod", "payments"), ("test", "orders")] {
        deploy(&s, env, api).await;
    }
    add_member(&s, "eng@example.com", "user:dave@example.com").await;
    set_policy(
        &s,
        "projects/demo-project",
        json!([{"role": INVOKER, "members": ["group:eng@example.com"]}]),
    )
    .await;
    set_policy(
        &s,
        ORDERS,
        json!([{"role": INVOKER, "members": ["user:alice@example.com"]}]),
    )
    .await;
    set_policy(
        &s,
        PROD,
        json!([{"role": INVOKER, "members": ["user:bob@example.com"]}]),
    )
    .await;
    s
}

async fn analyze(s: &Server, caller: &str, query: &str) -> (u16, Value) {
    s.get(
        &format!("/v1/projects/demo-project:analyzeIamPolicy?{query}"),
        Some(&token(caller)),
    )
    .await
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn results(answer: &Value) -> &Vec<Value> {
    answer["mainAnalysis"]["analysisResults"]
        .as_array()
        .unwrap_or_else(|| panic!("no results in {answer:#}"))
}

async fn allowed(s: &Server, email: &str, env: &str, api: &str) -> bool {
    s.check(Some(&format!("Bearer {}", token(email))), env, api)
        .await
        .allowed()
}

#[tokio::test]
async fn who_can_invoke_over_rest_lists_each_grant_with_group_members_and_agrees_with_check() {
    let s = seeded().await;
    let query = format!(
        "analysisQuery.resourceSelector.fullResourceName={}&analysisQuery.accessSelector.permissions={INVOKE}\
         &analysisQuery.options.expandGroups=true&analysisQuery.options.outputGroupEdges=true\
         &%24alt=json%3Benum-encoding%3Dint",
        enc(&format!("//apigee.googleapis.com/{ORDERS}"))
    );
    let (status, answer) = analyze(&s, ADMIN, &query).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["fullyExplored"], true);
    assert_eq!(
        answer["mainAnalysis"]["analysisQuery"]["options"]["expandGroups"],
        true
    );
    let results = results(&answer);
    let attached: Vec<&str> = results
        .iter()
        .map(|r| r["attachedResourceFullName"].as_str().unwrap_or_default())
        .collect();
    // The environment's grant to bob does not pass down: it is not listed.
    assert_eq!(
        attached,
        [
            "//cloudresourcemanager.googleapis.com/projects/demo-project",
            "//cloudresourcemanager.googleapis.com/projects/demo-project",
            &format!("//apigee.googleapis.com/{ORDERS}"),
        ]
    );
    // The bootstrap owner's grant first: it lives outside the stored document.
    assert_eq!(
        results[0]["iamBinding"],
        json!({"role": "roles/owner", "members": [format!("user:{ADMIN}")]})
    );
    let group = &results[1];
    assert_eq!(
        group["iamBinding"],
        json!({"role": INVOKER, "members": ["group:eng@example.com"]})
    );
    assert_eq!(
        group["accessControlLists"],
        json!([{"resources": [{"fullResourceName": format!("//apigee.googleapis.com/{ORDERS}")}],
                "accesses": [{"permission": INVOKE}]}])
    );
    assert_eq!(
        group["identityList"],
        json!({"identities": [{"name": "group:eng@example.com"}, {"name": "user:dave@example.com"}],
               "groupEdges": [{"sourceNode": "group:eng@example.com", "targetNode": "user:dave@example.com"}]})
    );
    assert_eq!(
        results[2]["identityList"]["identities"],
        json!([{"name": "user:alice@example.com"}])
    );
    // Everyone listed may invoke; bob, whose grant is on the environment, may not.
    let listed = answer.to_string();
    for (email, listed_here) in [
        ("dave@example.com", true),
        ("alice@example.com", true),
        (ADMIN, true),
        ("bob@example.com", false),
        ("eve@example.org", false),
    ] {
        assert_eq!(
            listed.contains(&format!("user:{email}")),
            listed_here,
            "{email}"
        );
        assert_eq!(
            allowed(&s, email, "prod", "orders").await,
            listed_here,
            "{email}"
        );
    }
}

#[tokio::test]
async fn what_can_an_identity_invoke_over_grpc_expands_project_grants_only() {
    let s = seeded().await;
    let mut client = AssetServiceClient::connect(format!("http://{}", s.admin))
        .await
        .unwrap();
    let ask = |identity: &str| {
        let mut request = tonic::Request::new(pb::AnalyzeIamPolicyRequest {
            analysis_query: Some(pb::IamPolicyAnalysisQuery {
                scope: "organizations/demo-project".into(),
                identity_selector: Some(pb::iam_policy_analysis_query::IdentitySelector {
                    identity: identity.into(),
                }),
                access_selector: Some(pb::iam_policy_analysis_query::AccessSelector {
                    roles: Vec::new(),
                    permissions: vec![INVOKE.into()],
                }),
                options: Some(pb::iam_policy_analysis_query::Options {
                    expand_resources: true,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let v: MetadataValue<_> = format!("Bearer {}", token(ADMIN)).parse().unwrap();
        request.metadata_mut().insert("authorization", v);
        request
    };
    let resources = |answer: &pb::AnalyzeIamPolicyResponse| -> Vec<String> {
        let main = answer.main_analysis.as_ref().unwrap();
        main.analysis_results
            .iter()
            .flat_map(|r| &r.access_control_lists)
            .flat_map(|acl| &acl.resources)
            .map(|r| r.full_resource_name.clone())
            .collect()
    };
    // dave, through the group: the project and every deployed deployment.
    let answer = client
        .analyze_iam_policy(ask("user:dave@example.com"))
        .await
        .unwrap()
        .into_inner();
    assert!(answer.fully_explored);
    let apigee = |n: &str| format!("//apigee.googleapis.com/{n}");
    assert_eq!(
        resources(&answer),
        [
            "//cloudresourcemanager.googleapis.com/projects/demo-project".to_owned(),
            apigee(ORDERS),
            apigee(PAYMENTS),
            apigee(TEST_ORDERS),
        ]
    );
    for (env, api) in [("prod", "orders"), ("prod", "payments"), ("test", "orders")] {
        assert!(allowed(&s, "dave@example.com", env, api).await);
    }
    // bob: the environment's invoke reaches no deployment, and no Check allows him.
    let answer = client
        .analyze_iam_policy(ask("user:bob@example.com"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resources(&answer), [apigee(PROD)]);
    assert!(!allowed(&s, "bob@example.com", "prod", "orders").await);
    // alice: her deployment only.
    let answer = client
        .analyze_iam_policy(ask("user:alice@example.com"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resources(&answer), [apigee(ORDERS)]);
    assert!(!allowed(&s, "alice@example.com", "prod", "payments").await);
}

#[tokio::test]
async fn refused_combinations_and_bad_queries_are_invalid_argument() {
    let s = seeded().await;
    let orders = enc(&format!("//apigee.googleapis.com/{ORDERS}"));
    for (query, says) in [
        (
            "analysisQuery.identitySelector.identity=user:alice@example.com&analysisQuery.options.expandGroups=true".to_owned(),
            "expand_groups",
        ),
        (
            format!("analysisQuery.resourceSelector.fullResourceName={orders}&analysisQuery.accessSelector.permissions={INVOKE}&analysisQuery.options.expandRoles=true"),
            "expand_roles",
        ),
        (
            "analysisQuery.accessSelector.permissions=apigee.deployments.fly".to_owned(),
            "apigee.deployments.fly",
        ),
        (
            "analysisQuery.identitySelector.identity=allUsers".to_owned(),
            "identity_selector",
        ),
        (
            "analysisQuery.resourceSelector.fullResourceName=projects/other-project".to_owned(),
            "not in scope",
        ),
        (
            "analysisQuery.resourceSelector.fullResourceName=//compute.googleapis.com/x".to_owned(),
            "full_resource_name",
        ),
        ("analysisQuery.options.expandGroups=maybe".to_owned(), "TYPE_BOOL"),
        ("analysisQuery.scope=projects/x".to_owned(), "Invalid query parameter"),
        (
            "analysisQuery.options.analyzeServiceAccountImpersonation=true".to_owned(),
            "impersonation",
        ),
    ] {
        let (status, answer) = analyze(&s, ADMIN, &query).await;
        assert_eq!(status, 400, "{query}: {answer}");
        assert_eq!(answer["error"]["status"], "INVALID_ARGUMENT", "{answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{query}: {message} should say {says}");
    }
    // Another project's scope.
    let (status, answer) = s
        .get(
            "/v1/projects/other-project:analyzeIamPolicy",
            Some(&token(ADMIN)),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.to_string().contains("scope"), "{answer}");
    // Only GET.
    let (status, _) = s
        .post(
            "/v1/projects/demo-project:analyzeIamPolicy",
            Some(&token(ADMIN)),
            "{}",
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn only_a_reader_of_the_project_policies_may_analyse() {
    let s = seeded().await;
    let query = format!("analysisQuery.accessSelector.permissions={INVOKE}");
    // alice may invoke orders, but may not read the project's policies.
    let (status, answer) = analyze(&s, "alice@example.com", &query).await;
    assert_eq!(status, 403, "{answer}");
    assert_eq!(answer["error"]["status"], "PERMISSION_DENIED");
    assert!(!answer.to_string().contains("dave"), "{answer}");
    // Unauthenticated: refused before anything is read.
    let (status, _) = s
        .get("/v1/projects/demo-project:analyzeIamPolicy", None)
        .await;
    assert_eq!(status, 401);
    // A project viewer may.
    set_policy(
        &s,
        "projects/demo-project",
        json!([{"role": "roles/viewer", "members": ["user:rita@example.com"]},
               {"role": INVOKER, "members": ["group:eng@example.com"]}]),
    )
    .await;
    let (status, answer) = analyze(&s, "rita@example.com", &query).await;
    assert_eq!(status, 200, "{answer}");
    // Without a resource: every grant of invoke where it is attached (the bootstrap owner's,
    // the group's, the environment's and the deployment's).
    assert_eq!(results(&answer).len(), 4, "{answer}");
}

#[tokio::test]
async fn the_other_asset_service_methods_are_unimplemented() {
    let s = seeded().await;
    let mut grpc = tonic::client::Grpc::new(
        tonic::transport::Channel::from_shared(format!("http://{}", s.admin))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(pb::AnalyzeIamPolicyRequest::default());
    let v: MetadataValue<_> = format!("Bearer {}", token(ADMIN)).parse().unwrap();
    request.metadata_mut().insert("authorization", v);
    let status = grpc
        .unary::<_, pb::AnalyzeIamPolicyResponse, _>(
            request,
            "/google.cloud.asset.v1.AssetService/ExportAssets"
                .parse()
                .unwrap(),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
}
