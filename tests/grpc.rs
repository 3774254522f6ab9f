//! google.iam.v1.IAMPolicy over gRPC on the admin port, driven by a tonic client generated from
//! `proto/`: every method, every failure code, and agreement with REST and with Checks.

mod common;

use common::*;
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use verifyiam::proto::google::iam::v1::iam_policy_client::IamPolicyClient;
use verifyiam::proto::google::iam::v1::{
    Binding, GetIamPolicyRequest, GetPolicyOptions, Policy, SetIamPolicyRequest,
    TestIamPermissionsRequest,
};
use verifyiam::proto::google::r#type::Expr;

const ORDERS: &str = "organizations/demo-project/environments/prod/deployments/orders";

async fn client(s: &Server) -> IamPolicyClient<Channel> {
    IamPolicyClient::connect(format!("http://{}", s.admin))
        .await
        .unwrap()
}

fn authed<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    if let Some(t) = token {
        let v: MetadataValue<_> = format!("Bearer {t}").parse().unwrap();
        r.metadata_mut().insert("authorization", v);
    }
    r
}

fn invoker(member: &str) -> Policy {
    Policy {
        bindings: vec![Binding {
            role: INVOKER.into(),
            members: vec![member.into()],
            condition: None,
        }],
        ..Policy::default()
    }
}

fn set(resource: &str, policy: Option<Policy>) -> SetIamPolicyRequest {
    SetIamPolicyRequest {
        resource: resource.into(),
        policy,
        update_mask: None,
    }
}

fn get(resource: &str) -> GetIamPolicyRequest {
    GetIamPolicyRequest {
        resource: resource.into(),
        options: None,
    }
}

#[tokio::test]
async fn grpc_set_get_test_and_the_next_check_agree_with_rest() {
    let s = Server::start().await;
    let mut c = client(&s).await;
    let admin = token(ADMIN);

    // Nothing yet: an empty policy with the absent etag.
    let empty = c
        .get_iam_policy(authed(get(ORDERS), Some(&admin)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(empty.version, 1);
    assert_eq!(empty.etag, vec![0x00, 0x20, 0x01]);
    assert!(empty.bindings.is_empty());

    let stored = c
        .set_iam_policy(authed(
            set(ORDERS, Some(invoker("user:Alice@Example.com"))),
            Some(&admin),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.version, 1);
    assert_eq!(stored.bindings[0].members, ["user:alice@example.com"]);
    assert!(!stored.etag.is_empty());

    // REST on the same port sees the same policy, etag in base64.
    let (status, rest) = s
        .get(&format!("/v1/{ORDERS}:getIamPolicy"), Some(&admin))
        .await;
    assert_eq!(status, 200);
    use base64::Engine as _;
    assert_eq!(
        rest["etag"],
        base64::engine::general_purpose::STANDARD.encode(&stored.etag)
    );

    // The very next Check allows alice.
    assert!(
        s.check(
            Some(&format!("Bearer {}", token("alice@example.com"))),
            "prod",
            "orders"
        )
        .await
        .allowed()
    );

    // GetIamPolicy with options, as Google's clients send them.
    let mut with_options = get(ORDERS);
    with_options.options = Some(GetPolicyOptions {
        requested_policy_version: 3,
    });
    let got = c
        .get_iam_policy(authed(with_options, Some(&admin)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, stored);

    // TestIamPermissions answers for the caller, needing no permission.
    let asked = |t: &str| {
        authed(
            TestIamPermissionsRequest {
                resource: ORDERS.into(),
                permissions: vec!["apigee.deployments.invoke".into()],
            },
            Some(t),
        )
    };
    let alice = c
        .test_iam_permissions(asked(&token("alice@example.com")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(alice.permissions, ["apigee.deployments.invoke"]);
    let bob = c
        .test_iam_permissions(asked(&token("bob@example.com")))
        .await
        .unwrap()
        .into_inner();
    assert!(bob.permissions.is_empty());

    // A set without a policy clears every binding (REST's `{}`), with the current etag.
    let mut clear = set(
        ORDERS,
        Some(Policy {
            etag: stored.etag.clone(),
            ..Policy::default()
        }),
    );
    clear.update_mask = Some(prost_types::FieldMask {
        paths: vec!["bindings".into(), "etag".into()],
    });
    let cleared = c
        .set_iam_policy(authed(clear, Some(&admin)))
        .await
        .unwrap()
        .into_inner();
    assert!(cleared.bindings.is_empty());
    assert!(
        !s.check(
            Some(&format!("Bearer {}", token("alice@example.com"))),
            "prod",
            "orders"
        )
        .await
        .allowed()
    );
}

#[tokio::test]
async fn grpc_failures_carry_googles_codes() {
    let s = Server::start().await;
    let mut c = client(&s).await;
    let admin = token(ADMIN);
    let first = c
        .set_iam_policy(authed(
            set(ORDERS, Some(invoker("user:a@example.com"))),
            Some(&admin),
        ))
        .await
        .unwrap()
        .into_inner();
    c.set_iam_policy(authed(
        set(ORDERS, Some(invoker("user:b@example.com"))),
        Some(&admin),
    ))
    .await
    .unwrap();

    // Stale etag: ABORTED.
    let mut stale = invoker("user:c@example.com");
    stale.etag = first.etag.clone();
    let e = c
        .set_iam_policy(authed(set(ORDERS, Some(stale)), Some(&admin)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Aborted, "{e:?}");
    assert!(e.message().contains("concurrent policy changes"), "{e:?}");

    // No token: UNAUTHENTICATED, on every method.
    let e = c
        .get_iam_policy(authed(get(ORDERS), None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let e = c
        .set_iam_policy(authed(set(ORDERS, None), None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let e = c
        .test_iam_permissions(authed(
            TestIamPermissionsRequest {
                resource: ORDERS.into(),
                permissions: vec![],
            },
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    // A bad token too.
    let e = c
        .get_iam_policy(authed(get(ORDERS), Some("not-a-token")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");

    // A caller without the permission: PERMISSION_DENIED naming it.
    let alice = token("alice@example.com");
    let e = c
        .get_iam_policy(authed(get(ORDERS), Some(&alice)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains("apigee.deployments.getIamPolicy"),
        "{e:?}"
    );
    let e = c
        .set_iam_policy(authed(
            set(ORDERS, Some(invoker("user:alice@example.com"))),
            Some(&alice),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains("apigee.deployments.setIamPolicy"),
        "{e:?}"
    );

    // Bad policies: INVALID_ARGUMENT with a message naming the problem.
    let mut conditional = invoker("user:a@example.com");
    conditional.bindings[0].condition = Some(Expr {
        expression: "request.time < timestamp('2030-01-01T00:00:00Z')".into(),
        ..Expr::default()
    });
    for (policy, needle) in [
        (conditional, "conditions are not supported"),
        (invoker("alice"), "invalid member"),
        (
            Policy {
                bindings: vec![Binding {
                    role: "roles/apigee.superInvoker".into(),
                    members: vec!["user:a@example.com".into()],
                    condition: None,
                }],
                ..Policy::default()
            },
            "unknown role",
        ),
        (
            Policy {
                version: 2,
                ..Policy::default()
            },
            "unsupported policy version",
        ),
    ] {
        let e = c
            .set_iam_policy(authed(set(ORDERS, Some(policy)), Some(&admin)))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(needle), "{needle}: {e:?}");
    }
    let mut bad_mask = set(ORDERS, None);
    bad_mask.update_mask = Some(prost_types::FieldMask {
        paths: vec!["auditConfigs".into()],
    });
    let e = c
        .set_iam_policy(authed(bad_mask, Some(&admin)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    // A malformed resource name or an unknown permission: INVALID_ARGUMENT.
    let e = c
        .get_iam_policy(authed(get("organizations/o/apis/orders"), Some(&admin)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("invalid resource"), "{e:?}");
    let e = c
        .test_iam_permissions(authed(
            TestIamPermissionsRequest {
                resource: ORDERS.into(),
                permissions: vec!["apigee.deployments.fly".into()],
            },
            Some(&admin),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    // An unsupported requested policy version.
    let mut v2 = get(ORDERS);
    v2.options = Some(GetPolicyOptions {
        requested_policy_version: 2,
    });
    let e = c
        .get_iam_policy(authed(v2, Some(&admin)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    // Nothing failed was written.
    let now = c
        .get_iam_policy(authed(get(ORDERS), Some(&admin)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now.bindings[0].members, ["user:b@example.com"]);
}

#[tokio::test]
async fn grpc_strict_mode_refuses_policies_on_undeployed_apis() {
    let s = Server::start_with(Options {
        iam_extra: "strict_deployments = true".into(),
        ..Options::default()
    })
    .await;
    let mut c = client(&s).await;
    let e = c
        .set_iam_policy(authed(
            set(ORDERS, Some(invoker("user:a@example.com"))),
            Some(&token(ADMIN)),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
}
