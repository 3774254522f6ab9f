"""Google's own Policy Troubleshooter clients, v3 (google-cloud-policytroubleshooter-iam)
and v1 (google-cloud-policy-troubleshooter), unchanged, against a running
`verifyiam serve --dev`: over plaintext gRPC and over REST.

The binary is $VERIFYIAM_BIN, else target/{debug,release}/verifyiam under
$CARGO_TARGET_DIR or the repository; without one the tests are skipped (build it
with `cargo build`)."""

import json
import urllib.request

import grpc
import pytest
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import policytroubleshooter_iam_v3 as v3
from google.cloud import policytroubleshooter_v1 as v1
from google.cloud.policytroubleshooter_v1.services.iam_checker.transports import (
    IamCheckerGrpcTransport,
)
from google.cloud.policytroubleshooter_iam_v3.services.policy_troubleshooter.transports import (
    PolicyTroubleshooterGrpcTransport,
)

from conftest import dev_server

PROJECT = "dev-project"
PROD = f"organizations/{PROJECT}/environments/prod"
ORDERS = f"{PROD}/deployments/orders"
INVOKE = "apigee.deployments.invoke"
INVOKER = "roles/apigee.deploymentInvoker"
State = v3.TroubleshootIamPolicyResponse.OverallAccessState


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with dev_server(tmp_path_factory, "verifyiam-dev") as (admin, mint):
        yield {"admin": admin, "token": mint("admin@example.com")}


def set_policy(server, resource, role, member):
    body = json.dumps({"policy": {"bindings": [{"role": role, "members": [member]}]}})
    request = urllib.request.Request(
        f"http://{server['admin']}/v1/{resource}:setIamPolicy", data=body.encode(),
        headers={"authorization": f"Bearer {server['token']}",
                 "content-type": "application/json"})
    with urllib.request.urlopen(request) as response:
        assert response.status == 200


def ask(client, server, resource):
    return client.troubleshoot_iam_policy(
        request={"access_tuple": {"principal": "alice@example.com",
                                  "full_resource_name": resource, "permission": INVOKE}},
        metadata=[("authorization", f"Bearer {server['token']}")],
        retry=None, timeout=10)


def grpc_client(server):
    channel = grpc.insecure_channel(server["admin"])
    return v3.PolicyTroubleshooterClient(
        transport=PolicyTroubleshooterGrpcTransport(channel=channel))


def rest_client(server):
    return v3.PolicyTroubleshooterClient(
        transport="rest", credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=f"http://{server['admin']}"))


def test_grpc_client_sees_environment_grant_not_passing_down(server):
    set_policy(server, PROD, INVOKER, "user:alice@example.com")
    answer = ask(grpc_client(server), server, f"//apigee.googleapis.com/{ORDERS}")
    assert answer.overall_access_state == State.CANNOT_ACCESS
    assert answer.access_tuple.permission_fqdn == "apigee.googleapis.com/deployments.invoke"
    policies = {p.full_resource_name: p for p in answer.allow_policy_explanation.explained_policies}
    env = policies[f"//apigee.googleapis.com/{PROD}"]
    assert env.allow_access_state == v3.AllowAccessState.ALLOW_ACCESS_STATE_NOT_GRANTED
    binding = env.binding_explanations[0]
    assert binding.role_permission == v3.RolePermissionInclusionState.ROLE_PERMISSION_INCLUDED
    assert binding.combined_membership.membership == v3.MembershipMatchingState.MEMBERSHIP_MATCHED
    project = policies[f"//cloudresourcemanager.googleapis.com/projects/{PROJECT}"]
    assert project.relevance == v3.HeuristicRelevance.HEURISTIC_RELEVANCE_HIGH


def test_rest_client_sees_deployment_grant(server):
    set_policy(server, ORDERS, INVOKER, "domain:example.com")
    answer = ask(rest_client(server), server, ORDERS)
    assert answer.overall_access_state == State.CAN_ACCESS
    (orders,) = [p for p in answer.allow_policy_explanation.explained_policies
                 if p.full_resource_name.endswith(ORDERS)]
    binding = orders.binding_explanations[0]
    assert binding.allow_access_state == v3.AllowAccessState.ALLOW_ACCESS_STATE_GRANTED
    member = binding.memberships["domain:example.com"]
    assert member.membership == v3.MembershipMatchingState.MEMBERSHIP_MATCHED
    assert member.relevance == v3.HeuristicRelevance.HEURISTIC_RELEVANCE_HIGH
    assert list(orders.policy.bindings[0].members) == ["domain:example.com"]


def v1_clients(server):
    grpc_v1 = v1.IamCheckerClient(
        transport=IamCheckerGrpcTransport(channel=grpc.insecure_channel(server["admin"])))
    rest_v1 = v1.IamCheckerClient(
        transport="rest", credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=f"http://{server['admin']}"))
    return {"grpc": grpc_v1, "rest": rest_v1}


def ask_v1(client, server, principal, resource):
    return client.troubleshoot_iam_policy(
        request={"access_tuple": {"principal": principal,
                                  "full_resource_name": resource, "permission": INVOKE}},
        metadata=[("authorization", f"Bearer {server['token']}")],
        retry=None, timeout=10)


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_v1_client_sees_environment_grant_not_passing_down(server, transport):
    bob = "bob@other.org"
    set_policy(server, PROD, INVOKER, f"user:{bob}")
    answer = ask_v1(v1_clients(server)[transport], server, bob,
                    f"//apigee.googleapis.com/{ORDERS}")
    assert answer.access == v1.AccessState.NOT_GRANTED
    policies = {p.full_resource_name: p for p in answer.explained_policies}
    env = policies[f"//apigee.googleapis.com/{PROD}"]
    assert env.access == v1.AccessState.NOT_GRANTED
    binding = env.binding_explanations[0]
    assert binding.role_permission == v1.BindingExplanation.RolePermission.ROLE_PERMISSION_INCLUDED
    assert (binding.memberships[f"user:{bob}"].membership
            == v1.BindingExplanation.Membership.MEMBERSHIP_INCLUDED)
    assert len(answer.errors) == 1
    assert "does not pass down" in answer.errors[0].message


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_v1_client_sees_deployment_grant(server, transport):
    set_policy(server, ORDERS, INVOKER, "domain:example.com")
    answer = ask_v1(v1_clients(server)[transport], server, "alice@example.com", ORDERS)
    assert answer.access == v1.AccessState.GRANTED
    assert not answer.errors
    (orders,) = [p for p in answer.explained_policies if p.full_resource_name.endswith(ORDERS)]
    assert orders.relevance == v1.HeuristicRelevance.HIGH
    member = orders.binding_explanations[0].memberships["domain:example.com"]
    assert member.membership == v1.BindingExplanation.Membership.MEMBERSHIP_INCLUDED
    assert member.relevance == v1.HeuristicRelevance.HIGH
