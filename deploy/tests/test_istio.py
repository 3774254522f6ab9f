"""Istio resources: no Istio schemas are available offline, so Istio's published
field names are encoded here and any key outside them fails the test, instead of
surfacing only when the resource reaches a cluster."""

import pytest

from conftest import CHECK_DEADLINE_MS, ISTIO_DIR, load_yaml_documents, parse_duration_seconds

# istio.mesh.v1alpha1 MeshConfig.ExtensionProvider.EnvoyExternalAuthorizationGrpcProvider
ENVOY_EXT_AUTHZ_GRPC_KEYS = {
    "service", "port", "timeout", "failOpen", "statusOnError",
    "includeRequestHeadersInCheck", "includeAdditionalHeadersInCheck",
    "includeRequestBodyInCheck", "pathPrefix", "clearRouteCache",
}
EXTENSION_PROVIDER_KEYS = {"name", "envoyExtAuthzGrpc"}  # the one provider kind used here

# security.istio.io AuthorizationPolicy
AUTHZ_POLICY_SPEC_KEYS = {"selector", "targetRef", "targetRefs", "action", "provider", "rules"}
AUTHZ_POLICY_ACTIONS = {"ALLOW", "DENY", "AUDIT", "CUSTOM"}
PROVIDER_KEYS = {"name"}
SELECTOR_KEYS = {"matchLabels"}
RULE_KEYS = {"from", "to", "when"}
FROM_KEYS = {"source"}
TO_KEYS = {"operation"}
SOURCE_KEYS = {
    "principals", "notPrincipals", "requestPrincipals", "notRequestPrincipals",
    "namespaces", "notNamespaces", "ipBlocks", "notIpBlocks",
    "remoteIpBlocks", "notRemoteIpBlocks",
}
OPERATION_KEYS = {"hosts", "notHosts", "ports", "notPorts", "methods", "notMethods", "paths", "notPaths"}
CONDITION_KEYS = {"key", "values", "notValues"}

METADATA_KEYS = {"name", "namespace", "labels", "annotations"}
EXPECTED_SERVICE = "verifyiam.verifyiam.svc.cluster.local"


def assert_keys(obj, allowed, where):
    assert isinstance(obj, dict), f"{where} must be a mapping"
    unknown = set(obj) - allowed
    assert not unknown, f"unknown keys in {where}: {sorted(unknown)}"


def check_authorization_policy(doc):
    assert doc["apiVersion"] in {"security.istio.io/v1", "security.istio.io/v1beta1"}
    assert_keys(doc, {"apiVersion", "kind", "metadata", "spec"}, "AuthorizationPolicy")
    assert_keys(doc["metadata"], METADATA_KEYS, "metadata")
    spec = doc["spec"]
    assert_keys(spec, AUTHZ_POLICY_SPEC_KEYS, "spec")
    assert spec["action"] in AUTHZ_POLICY_ACTIONS
    if "selector" in spec:
        assert_keys(spec["selector"], SELECTOR_KEYS, "spec.selector")
    if "provider" in spec:
        assert_keys(spec["provider"], PROVIDER_KEYS, "spec.provider")
    for i, rule in enumerate(spec.get("rules", [])):
        assert_keys(rule, RULE_KEYS, f"rules[{i}]")
        for j, f in enumerate(rule.get("from", [])):
            assert_keys(f, FROM_KEYS, f"rules[{i}].from[{j}]")
            assert_keys(f["source"], SOURCE_KEYS, f"rules[{i}].from[{j}].source")
        for j, t in enumerate(rule.get("to", [])):
            assert_keys(t, TO_KEYS, f"rules[{i}].to[{j}]")
            assert_keys(t["operation"], OPERATION_KEYS, f"rules[{i}].to[{j}].operation")
        for j, c in enumerate(rule.get("when", [])):
            assert_keys(c, CONDITION_KEYS, f"rules[{i}].when[{j}]")


def check_extension_provider(provider):
    assert_keys(provider, EXTENSION_PROVIDER_KEYS, "extensionProviders[]")
    assert_keys(provider["envoyExtAuthzGrpc"], ENVOY_EXT_AUTHZ_GRPC_KEYS, "envoyExtAuthzGrpc")


@pytest.fixture(scope="module")
def mesh_config():
    (doc,) = load_yaml_documents(ISTIO_DIR / "mesh-config.yaml")
    return doc


@pytest.fixture(scope="module")
def policies():
    return load_yaml_documents(ISTIO_DIR / "authorization-policy.yaml")


@pytest.fixture(scope="module")
def verifyiam_provider(mesh_config):
    providers = mesh_config["spec"]["meshConfig"]["extensionProviders"]
    (provider,) = [p for p in providers if p["name"] == "verifyiam"]
    return provider


def test_mesh_config_shape(mesh_config):
    assert mesh_config["apiVersion"] == "install.istio.io/v1alpha1"
    assert mesh_config["kind"] == "IstioOperator"
    assert set(mesh_config["spec"]) == {"meshConfig"}
    assert set(mesh_config["spec"]["meshConfig"]) == {"extensionProviders", "pathNormalization"}
    # verifyiam routes on the normalised path; the mesh must route on the same one.
    assert mesh_config["spec"]["meshConfig"]["pathNormalization"] == {
        "normalization": "MERGE_SLASHES"
    }
    for provider in mesh_config["spec"]["meshConfig"]["extensionProviders"]:
        check_extension_provider(provider)


def test_provider_fails_closed_within_deadline(verifyiam_provider):
    grpc = verifyiam_provider["envoyExtAuthzGrpc"]
    assert grpc["service"] == EXPECTED_SERVICE
    assert grpc["port"] == 9001
    assert grpc["failOpen"] is False
    assert grpc["statusOnError"] == "503"
    assert parse_duration_seconds(grpc["timeout"]) * 1000 > CHECK_DEADLINE_MS
    assert "includeRequestBodyInCheck" not in grpc


def test_authorization_policies(policies, verifyiam_provider):
    assert policies
    for doc in policies:
        assert doc["kind"] == "AuthorizationPolicy"
        check_authorization_policy(doc)
        spec = doc["spec"]
        assert spec["action"] == "CUSTOM"
        assert spec["provider"]["name"] == verifyiam_provider["name"]
        assert spec["selector"]["matchLabels"], "a CUSTOM policy should select its workloads"
        assert spec["rules"], "CUSTOM with no rules checks nothing"


def test_unknown_keys_are_caught(policies, verifyiam_provider):
    import copy

    bad = copy.deepcopy(policies[0])
    bad["spec"]["rules"][0]["to"][0]["operation"]["path"] = ["/x"]  # should be "paths"
    with pytest.raises(AssertionError, match="path"):
        check_authorization_policy(bad)

    bad = copy.deepcopy(verifyiam_provider)
    bad["envoyExtAuthzGrpc"]["failopen"] = True  # should be "failOpen"
    with pytest.raises(AssertionError, match="failopen"):
        check_extension_provider(bad)


def test_service_matches_kubernetes_base():
    from conftest import KUBERNETES_DIR

    (service,) = load_yaml_documents(KUBERNETES_DIR / "service.yaml")
    (kustomization,) = load_yaml_documents(KUBERNETES_DIR / "kustomization.yaml")
    name = service["metadata"]["name"]
    namespace = kustomization["namespace"]
    assert EXPECTED_SERVICE == f"{name}.{namespace}.svc.cluster.local"
