"""Kubernetes base: strict schema validation, then the properties verifyiam relies on."""

import subprocess
import sys

import pytest

from conftest import KUBERNETES_DIR, load_yaml_documents

# A Kubernetes version whose schemas kubernetes-validate ships (and a release
# that supports every field used here: native gRPC probes, appProtocol, ...).
KUBERNETES_VERSION = "1.33.0"

MANIFESTS = sorted(p for p in KUBERNETES_DIR.glob("*.yaml") if p.name != "kustomization.yaml")

UID = 65532


def kubernetes_validate(*paths):
    return subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "--no-warn",
         "-k", KUBERNETES_VERSION, *map(str, paths)],
        capture_output=True,
        text=True,
        check=False,
    )


def resources():
    out = {}
    for path in MANIFESTS:
        for doc in load_yaml_documents(path):
            out[doc["kind"]] = doc
    return out


@pytest.fixture(scope="module")
def k8s():
    return resources()


@pytest.fixture(scope="module")
def pod_spec(k8s):
    return k8s["Deployment"]["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def container(pod_spec):
    (c,) = pod_spec["containers"]
    return c


def port_of(addr):
    host, _, port = addr.rpartition(":")
    assert host and port.isdigit(), addr
    return int(port)


# --- schemas -------------------------------------------------------------------


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_valid_strict(path):
    result = kubernetes_validate(path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_strict_validation_rejects_unknown_fields(tmp_path):
    bad = tmp_path / "deployment.yaml"
    bad.write_text((KUBERNETES_DIR / "deployment.yaml").read_text().replace("replicas: 1", "replicaz: 1"))
    result = kubernetes_validate(bad)
    assert result.returncode != 0
    assert "replicaz" in result.stdout + result.stderr


def test_kustomization_lists_every_manifest():
    (kustomization,) = load_yaml_documents(KUBERNETES_DIR / "kustomization.yaml")
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == sorted(p.name for p in MANIFESTS)
    assert kustomization["namespace"] == "verifyiam"


def test_every_kind_is_present(k8s):
    assert set(k8s) == {
        "Namespace", "ConfigMap", "PersistentVolumeClaim", "Deployment", "Service",
        "PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy",
    }


# --- security ------------------------------------------------------------------


def test_runs_as_non_root_with_read_only_root(pod_spec, container):
    pod_sc = pod_spec["securityContext"]
    sc = container["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and sc["runAsNonRoot"] is True
    assert pod_sc["runAsUser"] == UID and sc["runAsUser"] == UID
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert not sc["capabilities"].get("add")
    assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod_spec["automountServiceAccountToken"] is False


def test_only_the_store_is_writable(pod_spec, container):
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    for mount in container["volumeMounts"]:
        if mount.get("readOnly"):
            continue
        source = volumes[mount["name"]]
        assert "persistentVolumeClaim" in source or "emptyDir" in source, mount
    config = next(m for m in container["volumeMounts"] if m["mountPath"] == "/etc/verifyiam")
    assert config["readOnly"] is True
    assert volumes[config["name"]]["configMap"]["name"] == "verifyiam-config"


def test_pod_anti_affinity(pod_spec):
    assert pod_spec["affinity"]["podAntiAffinity"]


def test_resources_set(container):
    assert container["resources"]["requests"]["cpu"]
    assert container["resources"]["requests"]["memory"]
    assert container["resources"]["limits"]["memory"]


# --- probes and ports ----------------------------------------------------------


@pytest.mark.parametrize("probe", ["livenessProbe", "readinessProbe", "startupProbe"])
def test_grpc_probes_on_extauthz_port(container, probe):
    assert container[probe]["grpc"]["port"] == 9001
    assert "httpGet" not in container[probe] and "exec" not in container[probe]


def test_service_ports_match_config(k8s, container, verifyiam_config):
    server = verifyiam_config["server"]
    ports = {p["name"]: p for p in k8s["Service"]["spec"]["ports"]}
    assert ports["extauthz"]["port"] == port_of(server["extauthz_addr"]) == 9001
    assert ports["extauthz"]["appProtocol"] == "grpc"
    assert ports["admin"]["port"] == port_of(server["admin_addr"]) == 9002
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container_ports == {"extauthz": 9001, "admin": 9002}
    for p in ports.values():
        assert p["targetPort"] in container_ports
    # Listening on loopback inside a pod would make it unreachable.
    for addr in (server["extauthz_addr"], server["admin_addr"]):
        assert addr.startswith("0.0.0.0:") or addr.startswith("[::]:"), addr


def test_service_selects_the_pods(k8s):
    selector = k8s["Service"]["spec"]["selector"]
    labels = k8s["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()
    assert k8s["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert k8s["NetworkPolicy"]["spec"]["podSelector"]["matchLabels"].items() <= labels.items()


def test_network_policy_ports(k8s):
    spec = k8s["NetworkPolicy"]["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    by_port = {}
    for rule in spec["ingress"]:
        ports = [p["port"] for p in rule["ports"]]
        assert len(ports) == 1, "one port per rule, so each port has its own peers"
        assert rule["from"], "no rule may be open to everyone"
        by_port[ports[0]] = rule["from"]
    assert set(by_port) == {9001, 9002}
    # 9001: only selected proxy pods.
    for peer in by_port[9001]:
        assert peer["podSelector"]["matchLabels"], peer
    # 9002: only the operators' namespace.
    (peer,) = by_port[9002]
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "verifyiam-operators"}
    assert "ipBlock" not in peer


# --- the single writer -----------------------------------------------------------


def test_single_writer(k8s, pod_spec, verifyiam_config):
    deployment = k8s["Deployment"]["spec"]
    hpa = k8s["HorizontalPodAutoscaler"]["spec"]
    assert deployment["replicas"] == 1
    assert deployment["strategy"]["type"] == "Recreate"
    assert hpa["minReplicas"] == hpa["maxReplicas"] == 1
    assert hpa["scaleTargetRef"]["name"] == k8s["Deployment"]["metadata"]["name"]
    pvc = k8s["PersistentVolumeClaim"]
    assert set(pvc["spec"]["accessModes"]) <= {"ReadWriteOnce", "ReadWriteOncePod"}
    claims = [v for v in pod_spec["volumes"] if "persistentVolumeClaim" in v]
    assert [c["persistentVolumeClaim"]["claimName"] for c in claims] == [pvc["metadata"]["name"]]


def test_store_is_mounted_where_config_says(pod_spec, container, verifyiam_config):
    store = verifyiam_config["iam"]["store"]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == store)
    volume = next(v for v in pod_spec["volumes"] if v["name"] == mount["name"])
    assert "persistentVolumeClaim" in volume


# --- the config ------------------------------------------------------------------


# Every key is checked by verifyiam's own parser in tests/deploy.rs (one source of truth);
# here only the values that must agree with the other manifests.


def test_config_routes_are_complete(verifyiam_config):
    for route in verifyiam_config.get("routes", []):
        assert route["path_prefix"].startswith("/")
        assert route["environment"] and route["deployment"]


def test_config_values(verifyiam_config):
    assert verifyiam_config["server"]["check_deadline"] == "150ms"
    assert verifyiam_config["token"]["required_scope"] == "https://www.googleapis.com/auth/cloud-platform"
    assert verifyiam_config["iam"]["bootstrap_admins"]
    assert all(j["jwks_uri"].startswith("https://") for j in verifyiam_config["token"]["jwt"])
