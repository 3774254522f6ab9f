"""Google's Cloud Asset client (google-cloud-asset), unchanged, asking verifyiam's Policy
Analyzer (AnalyzeIamPolicy) of a running `verifyiam serve --dev`: over plaintext gRPC and over
REST. "Who can invoke orders" lists the project's and the deployment's grants with the group's
members, not the environment's; "what can dave invoke" expands the project grant to every
deployed deployment; refused combinations are INVALID_ARGUMENT.

The binary is found as conftest.binary finds it; without one the tests are skipped."""

import json
import urllib.request

import grpc
import pytest
from google.api_core import exceptions
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import asset_v1
from google.cloud.asset_v1.services.asset_service.transports import AssetServiceGrpcTransport

from conftest import dev_server

PROJECT = "dev-project"
PROD = f"organizations/{PROJECT}/environments/prod"
ORDERS = f"{PROD}/deployments/orders"
PAYMENTS = f"{PROD}/deployments/payments"
INVOKE = "apigee.deployments.invoke"
INVOKER = "roles/apigee.deploymentInvoker"
APIGEE = "//apigee.googleapis.com/"
PROJECT_FULL = f"//cloudresourcemanager.googleapis.com/projects/{PROJECT}"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with dev_server(tmp_path_factory, "verifyiam-analyzer") as (admin, mint):
        s = {"admin": admin, "token": mint("admin@example.com")}
        for api in ("orders", "payments"):
            call(s, f"/v1/{PROD}/apis/{api}/revisions/1/deployments", {})
        call(s, "/v1/groups/eng@example.com:addMember", {"member": "user:dave@example.com"})
        set_policy(s, f"projects/{PROJECT}", "group:eng@example.com")
        set_policy(s, ORDERS, "user:alice@example.com")
        set_policy(s, PROD, "user:bob@example.com")
        yield s


def call(server, path, body):
    request = urllib.request.Request(
        f"http://{server['admin']}{path}", data=json.dumps(body).encode(),
        headers={"authorization": f"Bearer {server['token']}",
                 "content-type": "application/json"})
    with urllib.request.urlopen(request) as response:
        assert response.status == 200


def set_policy(server, resource, member):
    call(server, f"/v1/{resource}:setIamPolicy",
         {"policy": {"bindings": [{"role": INVOKER, "members": [member]}]}})


def client(server, transport):
    if transport == "grpc":
        return asset_v1.AssetServiceClient(
            transport=AssetServiceGrpcTransport(channel=grpc.insecure_channel(server["admin"])))
    return asset_v1.AssetServiceClient(
        transport="rest", credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=f"http://{server['admin']}"))


def analyze(server, transport, query):
    return client(server, transport).analyze_iam_policy(
        request={"analysis_query": {"scope": f"projects/{PROJECT}", **query}},
        metadata=[("authorization", f"Bearer {server['token']}")],
        retry=None, timeout=10)


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_who_can_invoke_orders(server, transport):
    answer = analyze(server, transport, {
        "resource_selector": {"full_resource_name": APIGEE + ORDERS},
        "access_selector": {"permissions": [INVOKE]},
        "options": {"expand_groups": True, "output_group_edges": True}})
    assert answer.fully_explored
    results = answer.main_analysis.analysis_results
    by_member = {tuple(r.iam_binding.members): r for r in results}
    # The environment's grant to bob does not pass down to orders.
    assert ("user:bob@example.com",) not in by_member
    group = by_member[("group:eng@example.com",)]
    assert group.attached_resource_full_name == PROJECT_FULL
    assert [i.name for i in group.identity_list.identities] == [
        "group:eng@example.com", "user:dave@example.com"]
    (edge,) = group.identity_list.group_edges
    assert (edge.source_node, edge.target_node) == ("group:eng@example.com", "user:dave@example.com")
    (acl,) = group.access_control_lists
    assert [r.full_resource_name for r in acl.resources] == [APIGEE + ORDERS]
    assert [a.permission for a in acl.accesses] == [INVOKE]
    alice = by_member[("user:alice@example.com",)]
    assert alice.attached_resource_full_name == APIGEE + ORDERS
    assert answer.main_analysis.analysis_query.options.expand_groups


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_what_can_dave_invoke(server, transport):
    answer = analyze(server, transport, {
        "identity_selector": {"identity": "user:dave@example.com"},
        "access_selector": {"permissions": [INVOKE]},
        "options": {"expand_resources": True}})
    (result,) = answer.main_analysis.analysis_results
    assert result.attached_resource_full_name == PROJECT_FULL
    resources = [r.full_resource_name for acl in result.access_control_lists for r in acl.resources]
    assert resources == [PROJECT_FULL, APIGEE + ORDERS, APIGEE + PAYMENTS]
    # bob's environment grant reaches no deployment.
    answer = analyze(server, transport, {
        "identity_selector": {"identity": "user:bob@example.com"},
        "access_selector": {"permissions": [INVOKE]},
        "options": {"expand_resources": True}})
    resources = [r.full_resource_name for result in answer.main_analysis.analysis_results
                 for acl in result.access_control_lists for r in acl.resources]
    assert resources == [APIGEE + PROD]


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_refused_combination_is_invalid_argument(server, transport):
    # gRPC's INVALID_ARGUMENT is InvalidArgument; over REST the client maps HTTP 400 to its
    # parent class, BadRequest.
    with pytest.raises(exceptions.BadRequest) as refused:
        analyze(server, transport, {
            "identity_selector": {"identity": "user:dave@example.com"},
            "options": {"expand_groups": True}})
    if transport == "grpc":
        assert isinstance(refused.value, exceptions.InvalidArgument)
    assert "expand_groups" in str(refused.value)
