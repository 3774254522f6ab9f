//! The Policy Troubleshooter on the admin port, over REST (`POST /v3/iam:troubleshoot`, `POST
//! /v1/iam:troubleshoot`) and gRPC (`google.cloud.policytroubleshooter.iam.v3` and `.v1`): its answers agree with the next Check, show an
//! environment's invoke grant as not passing down, mark what matters HIGH, and hide each policy
//! the caller may not read.

mod common;

use common::*;
use serde_json::{Value, json};
use tonic::metadata::MetadataValue;

use pb::policy_troubleshooter_client::PolicyTroubleshooterClient;
use verifyiam::proto::google::cloud::policytroubleshooter::iam::v3 as pb;

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

async fn troubleshoot(s: &Server, caller: &str, resource: &str, permission: &str) -> (u16, Value) {
    let body = json!({"accessTuple": {
        "principal": ALICE, "fullResourceName": resource, "permission": permission}});
    s.post(
        "/v3/iam:troubleshoot",
        Some(&token(caller)),
        &body.to_string(),
    )
    .await
}

async fn alice_may_invoke_orders(s: &Server) -> bool {
    s.check(Some(&format!("Bearer {}", token(ALICE))), "prod", "orders")
        .await
        .allowed()
}

fn policy_of<'a>(answer: &'a Value, full_name: &str) -> &'a Value {
    answer["allowPolicyExplanation"]["explainedPolicies"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["fullResourceName"] == full_name))
        .unwrap_or_else(|| panic!("no policy of {full_name} in {answer:#}"))
}

#[tokio::test]
async fn troubleshooter_shows_environment_invoke_not_passing_down_and_agrees_with_check() {
    let s = Server::start().await;
    set_policy(&s, PROD, INVOKER, &format!("user:{ALICE}")).await;

    let full = format!("//apigee.googleapis.com/{ORDERS}");
    let (status, answer) = troubleshoot(&s, ADMIN, &full, "apigee.deployments.invoke").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["overallAccessState"], "CANNOT_ACCESS");
    assert!(!alice_may_invoke_orders(&s).await);
    assert_eq!(answer["accessTuple"]["fullResourceName"], full);
    assert_eq!(
        answer["accessTuple"]["permissionFqdn"],
        "apigee.googleapis.com/deployments.invoke"
    );

    let env = policy_of(&answer, &format!("//apigee.googleapis.com/{PROD}"));
    assert_eq!(env["allowAccessState"], "ALLOW_ACCESS_STATE_NOT_GRANTED");
    assert_eq!(env["relevance"], "HEURISTIC_RELEVANCE_NORMAL");
    let binding = &env["bindingExplanations"][0];
    assert_eq!(binding["rolePermission"], "ROLE_PERMISSION_INCLUDED");
    assert_eq!(
        binding["combinedMembership"]["membership"],
        "MEMBERSHIP_MATCHED"
    );
    assert_eq!(
        binding["allowAccessState"],
        "ALLOW_ACCESS_STATE_NOT_GRANTED"
    );
    // The policies that count are where a grant would flip the answer.
    let project = policy_of(
        &answer,
        "//cloudresourcemanager.googleapis.com/projects/demo-project",
    );
    assert_eq!(project["relevance"], "HEURISTIC_RELEVANCE_HIGH");
    let orders = policy_of(&answer, &full);
    assert_eq!(orders["relevance"], "HEURISTIC_RELEVANCE_HIGH");

    // On the environment itself the same grant counts.
    let (_, on_env) = troubleshoot(&s, ADMIN, PROD, "apigee.deployments.invoke").await;
    assert_eq!(on_env["overallAccessState"], "CAN_ACCESS");
}

#[tokio::test]
async fn troubleshooter_names_the_granting_binding_over_grpc_and_agrees_with_check() {
    let s = Server::start().await;
    set_policy(&s, ORDERS, INVOKER, "domain:example.com").await;
    let mut client = PolicyTroubleshooterClient::connect(format!("http://{}", s.admin))
        .await
        .unwrap();
    let mut request = tonic::Request::new(pb::TroubleshootIamPolicyRequest {
        access_tuple: Some(pb::AccessTuple {
            principal: ALICE.into(),
            // The relative name, and the v2 form of the permission, are accepted too.
            full_resource_name: ORDERS.into(),
            permission: "apigee.googleapis.com/deployments.invoke".into(),
            permission_fqdn: String::new(),
        }),
    });
    let v: MetadataValue<_> = format!("Bearer {}", token(ADMIN)).parse().unwrap();
    request.metadata_mut().insert("authorization", v);
    let answer = client
        .troubleshoot_iam_policy(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        answer.overall_access_state,
        pb::troubleshoot_iam_policy_response::OverallAccessState::CanAccess as i32
    );
    assert!(alice_may_invoke_orders(&s).await);
    let allow = answer.allow_policy_explanation.unwrap();
    let orders = allow
        .explained_policies
        .iter()
        .find(|p| p.full_resource_name.ends_with(ORDERS))
        .unwrap();
    assert_eq!(orders.relevance, pb::HeuristicRelevance::High as i32);
    let binding = &orders.binding_explanations[0];
    assert_eq!(
        binding.allow_access_state,
        pb::AllowAccessState::Granted as i32
    );
    assert_eq!(binding.relevance, pb::HeuristicRelevance::High as i32);
    let member = &binding.memberships["domain:example.com"];
    assert_eq!(
        member.membership,
        pb::MembershipMatchingState::MembershipMatched as i32
    );
    assert_eq!(member.relevance, pb::HeuristicRelevance::High as i32);
    assert_eq!(
        orders.policy.as_ref().unwrap().bindings[0].members,
        ["domain:example.com"]
    );

    // Taken away, the answer flips, as the Check does.
    set_policy(&s, ORDERS, "roles/viewer", "domain:example.com").await;
    let (_, answer) = troubleshoot(&s, ADMIN, ORDERS, "apigee.deployments.invoke").await;
    assert_eq!(answer["overallAccessState"], "CANNOT_ACCESS");
    assert!(!alice_may_invoke_orders(&s).await);
}

#[tokio::test]
async fn troubleshooter_answers_enums_as_numbers_when_asked() {
    let s = Server::start().await;
    let body = json!({"accessTuple": {"principal": ALICE,
        "fullResourceName": "//cloudresourcemanager.googleapis.com/projects/demo-project",
        "permission": "resourcemanager.projects.get"}});
    let (status, answer) = s
        .post(
            "/v3/iam:troubleshoot?%24alt=json%3Benum-encoding%3Dint",
            Some(&token(ADMIN)),
            &body.to_string(),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["overallAccessState"], 2);
    assert_eq!(answer["allowPolicyExplanation"]["relevance"], 2);
}

#[tokio::test]
async fn troubleshooter_hides_each_policy_the_caller_may_not_read() {
    let s = Server::start().await;
    set_policy(&s, ORDERS, INVOKER, &format!("user:{ALICE}")).await;
    // A stranger reads nothing: every policy is UNKNOWN_INFO and nothing of it is shown.
    let (status, answer) =
        troubleshoot(&s, "eve@example.org", ORDERS, "apigee.deployments.invoke").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["overallAccessState"], "UNKNOWN_INFO");
    let policies = answer["allowPolicyExplanation"]["explainedPolicies"]
        .as_array()
        .unwrap();
    assert_eq!(policies.len(), 2);
    for p in policies {
        assert_eq!(
            p,
            &json!({"allowAccessState": "ALLOW_ACCESS_STATE_UNKNOWN_INFO"})
        );
    }
    assert!(!answer.to_string().contains("user:alice"));

    // A reader of the environment's and its deployments' policies sees the deployment's
    // policy, not the project's; the visible grant answers.
    let reader = "rita@example.com";
    set_policy(
        &s,
        PROD,
        "roles/apigee.readOnlyAdmin",
        &format!("user:{reader}"),
    )
    .await;
    let (_, answer) = troubleshoot(&s, reader, ORDERS, "apigee.deployments.invoke").await;
    assert_eq!(answer["overallAccessState"], "CAN_ACCESS");
    let policies = answer["allowPolicyExplanation"]["explainedPolicies"]
        .as_array()
        .unwrap();
    assert_eq!(
        policies[0],
        json!({"allowAccessState": "ALLOW_ACCESS_STATE_UNKNOWN_INFO"})
    );
    assert_eq!(
        policies[1]["allowAccessState"],
        "ALLOW_ACCESS_STATE_GRANTED"
    );
    // With part of the picture hidden, nothing is claimed to flip the answer.
    assert_eq!(policies[1]["relevance"], "HEURISTIC_RELEVANCE_NORMAL");
}

#[tokio::test]
async fn troubleshooter_refuses_bad_requests() {
    let s = Server::start().await;
    for (principal, resource, permission) in [
        (format!("user:{ALICE}"), ORDERS, "apigee.deployments.invoke"),
        (ALICE.to_owned(), ORDERS, "apigee.deployments.fly"),
        (ALICE.to_owned(), ORDERS, "resourcemanager.projects.get"),
        (
            ALICE.to_owned(),
            "//compute.googleapis.com/projects/p",
            "apigee.deployments.invoke",
        ),
        (
            ALICE.to_owned(),
            "projects/other-project",
            "resourcemanager.projects.get",
        ),
    ] {
        let body = json!({"accessTuple": {
            "principal": principal, "fullResourceName": resource, "permission": permission}});
        let (status, answer) = s
            .post(
                "/v3/iam:troubleshoot",
                Some(&token(ADMIN)),
                &body.to_string(),
            )
            .await;
        assert_eq!(status, 400, "{principal} {resource} {permission}: {answer}");
        assert_eq!(answer["error"]["status"], "INVALID_ARGUMENT");
    }
    // Unauthenticated callers are refused before the body is read.
    let (status, _) = s.post("/v3/iam:troubleshoot", None, "{}").await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn troubleshooter_v1_over_grpc_and_rest_says_the_environment_grant_does_not_pass_down() {
    use verifyiam::proto::google::cloud::policytroubleshooter::v1 as pb1;
    let s = Server::start().await;
    set_policy(&s, PROD, INVOKER, &format!("user:{ALICE}")).await;
    let full = format!("//apigee.googleapis.com/{ORDERS}");

    let mut client =
        pb1::iam_checker_client::IamCheckerClient::connect(format!("http://{}", s.admin))
            .await
            .unwrap();
    let mut request = tonic::Request::new(pb1::TroubleshootIamPolicyRequest {
        access_tuple: Some(pb1::AccessTuple {
            principal: ALICE.into(),
            full_resource_name: full.clone(),
            permission: "apigee.deployments.invoke".into(),
        }),
    });
    let v: MetadataValue<_> = format!("Bearer {}", token(ADMIN)).parse().unwrap();
    request.metadata_mut().insert("authorization", v);
    let answer = client
        .troubleshoot_iam_policy(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.access, pb1::AccessState::NotGranted as i32);
    assert!(!alice_may_invoke_orders(&s).await);
    let env = answer
        .explained_policies
        .iter()
        .find(|p| p.full_resource_name.ends_with(PROD))
        .unwrap();
    assert_eq!(env.access, pb1::AccessState::NotGranted as i32);
    assert_eq!(
        env.binding_explanations[0].memberships[&format!("user:{ALICE}")].membership,
        pb1::binding_explanation::Membership::Included as i32
    );
    assert_eq!(answer.errors.len(), 1, "{:?}", answer.errors);
    assert!(
        answer.errors[0].message.contains("does not pass down"),
        "{:?}",
        answer.errors
    );

    // REST: the same answer in Google's JSON mapping, v1's unprefixed enum names.
    let body = json!({"accessTuple": {
        "principal": ALICE, "fullResourceName": full, "permission": "apigee.deployments.invoke"}});
    let (status, rest) = s
        .post(
            "/v1/iam:troubleshoot",
            Some(&token(ADMIN)),
            &body.to_string(),
        )
        .await;
    assert_eq!(status, 200, "{rest}");
    assert_eq!(rest["access"], "NOT_GRANTED");
    assert!(
        rest["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("does not pass down"),
        "{rest}"
    );
    let project = rest["explainedPolicies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| {
            p["fullResourceName"] == "//cloudresourcemanager.googleapis.com/projects/demo-project"
        })
        .unwrap();
    assert_eq!(project["relevance"], "HIGH");

    // Granted on the deployment: GRANTED, no errors; enums as numbers when asked.
    set_policy(&s, ORDERS, INVOKER, "domain:example.com").await;
    let (status, rest) = s
        .post(
            "/v1/iam:troubleshoot?%24alt=json%3Benum-encoding%3Dint",
            Some(&token(ADMIN)),
            &body.to_string(),
        )
        .await;
    assert_eq!(status, 200, "{rest}");
    assert_eq!(rest["access"], 1);
    assert!(alice_may_invoke_orders(&s).await);
    assert!(rest.get("errors").is_none(), "{rest}");

    // A caller who may read nothing: UNKNOWN_INFO_DENIED, nothing shown.
    let (_, rest) = s
        .post(
            "/v1/iam:troubleshoot",
            Some(&token("eve@example.org")),
            &body.to_string(),
        )
        .await;
    assert_eq!(rest["access"], "UNKNOWN_INFO_DENIED");
    assert!(!rest.to_string().contains("alice@"), "{rest}");
}
