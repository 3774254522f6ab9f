"""Kustomize overlays of the Kubernetes base (deploy/kubernetes-overlays/).

Every overlay file is checked: complete resources strictly against the Kubernetes
schemas; strategic-merge patches parsed, checked to target an object of the base by
kind and name, and applied to the base (a small strategic-merge implementation for
the constructs the overlays use), the result validated strictly too. When kubectl
or kustomize is on PATH, the overlay is also built for real and the build compared
with that result.
"""

import copy
import shutil
import subprocess
import tomllib

import pytest

from conftest import KUBERNETES_DIR, OVERLAYS_DIR, load_yaml_documents, parse_duration_seconds
from test_kubernetes import KUBERNETES_VERSION, kubernetes_validate

REPLICATED = OVERLAYS_DIR / "replicated"
OVERLAYS = sorted(p.parent for p in OVERLAYS_DIR.glob("*/kustomization.yaml"))
OVERLAY_FILES = sorted(p for d in OVERLAYS for p in d.glob("*.yaml") if p.name != "kustomization.yaml")

# Strategic-merge keys of the lists the overlays may patch; any other list is replaced.
MERGE_KEYS = {"containers": "name", "initContainers": "name", "volumes": "name",
              "volumeMounts": "mountPath", "env": "name"}


def kustomization(overlay):
    (k,) = load_yaml_documents(overlay / "kustomization.yaml")
    assert k["kind"] == "Kustomization"
    return k


def key_of(doc):
    return doc["kind"], doc["metadata"]["name"]


def base_objects():
    out = {}
    for name in kustomization(KUBERNETES_DIR)["resources"]:
        for doc in load_yaml_documents(KUBERNETES_DIR / name):
            out[key_of(doc)] = doc
    return out


def has_directive(node):
    """A `$patch` directive or a null (delete this field) anywhere: a patch, not a resource."""
    if node is None:
        return True
    if isinstance(node, dict):
        return "$patch" in node or any(has_directive(v) for v in node.values())
    if isinstance(node, list):
        return any(has_directive(v) for v in node)
    return False


DELETE = object()


def merge(base, patch, field=None):
    if isinstance(patch, dict):
        directive = patch.get("$patch")
        if directive == "delete":
            return DELETE
        body = {k: v for k, v in patch.items() if k != "$patch"}
        if directive == "replace" or not isinstance(base, dict):
            return copy.deepcopy(body)
        assert directive is None, directive
        out = copy.deepcopy(base)
        for k, v in body.items():
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = merge(out[k], v, k)
            else:
                out[k] = copy.deepcopy(v)
        return out
    if isinstance(patch, list):
        if {"$patch": "replace"} in patch:
            return [copy.deepcopy(v) for v in patch if v != {"$patch": "replace"}]
        key = MERGE_KEYS.get(field)
        if key is None or not isinstance(base, list):
            return copy.deepcopy(patch)
        out = copy.deepcopy(base)
        for item in patch:
            index = next((i for i, b in enumerate(out) if b[key] == item[key]), None)
            if index is None:
                out.append(copy.deepcopy(item))
            else:
                merged = merge(out[index], item, field)
                if merged is DELETE:
                    del out[index]
                else:
                    out[index] = merged
        return out
    return patch


def parent(overlay):
    """What the overlay builds on: the base (None), or another overlay (`../replicated`)."""
    (name,) = [r for r in kustomization(overlay)["resources"] if not (overlay / r).is_file()]
    if name == "../../kubernetes":
        return None
    assert name.startswith("../") and "/" not in name[3:], name
    assert (OVERLAYS_DIR / name[3:] / "kustomization.yaml").is_file(), name
    return OVERLAYS_DIR / name[3:]


def parent_objects(overlay):
    """The objects the overlay's patches apply to."""
    above = parent(overlay)
    return base_objects() if above is None else effective(above)


def effective(overlay):
    """The overlay's objects: its parent's (the base's, or another overlay's), patched, plus
    its own resources."""
    k = kustomization(overlay)
    objects = parent_objects(overlay)
    for entry in k.get("patches", []):
        for patch in load_yaml_documents(overlay / entry["path"]):
            target = key_of(patch)
            merged = merge(objects[target], patch)
            if merged is DELETE:
                del objects[target]
            else:
                objects[target] = merged
    for name in k["resources"]:
        path = overlay / name
        if path.is_file():
            for doc in load_yaml_documents(path):
                assert key_of(doc) not in objects, f"{name} redefines {key_of(doc)}"
                objects[key_of(doc)] = doc
    return objects


def kustomize_build(overlay):
    if shutil.which("kustomize"):
        cmd = ["kustomize", "build", str(overlay)]
    elif shutil.which("kubectl"):
        cmd = ["kubectl", "kustomize", str(overlay)]
    else:
        pytest.skip("neither kustomize nor kubectl on PATH: the overlay is not built for real")
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def write_all(tmp_path, objects):
    import yaml

    path = tmp_path / "effective.yaml"
    path.write_text(yaml.safe_dump_all(list(objects.values()), sort_keys=False))
    return path


# --- every overlay ---------------------------------------------------------------


def test_overlays_exist():
    assert REPLICATED in OVERLAYS


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_kustomization_refers_to_the_base_and_lists_every_file(overlay):
    k = kustomization(overlay)
    # The base, directly or through one other overlay (replicated-mtls builds on replicated).
    above = parent(overlay)
    assert above is None or parent(above) is None
    listed = {r for r in k["resources"] if (overlay / r).is_file()}
    listed |= {p["path"] for p in k.get("patches", [])}
    assert listed == {p.name for p in overlay.glob("*.yaml") if p.name != "kustomization.yaml"}
    # Everything else (namespace, labels, image) comes from the base.
    assert "namespace" not in k


@pytest.mark.parametrize("path", OVERLAY_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_overlay_file_is_valid(path):
    docs = load_yaml_documents(path)
    assert docs, path
    if any(has_directive(d) for d in docs):
        # A partial patch: it must name an object of the base (checked below, and
        # its result is validated in test_effective_resources_are_valid_strict).
        for doc in docs:
            assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"]
    else:
        # Resources, and patches written as complete objects (no directive).
        result = kubernetes_validate(path)
        assert result.returncode == 0, (
            "not a complete resource (a partial patch must carry a $patch directive or a "
            "null deletion, or be made complete):\n" + result.stdout + result.stderr)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_patches_target_base_objects(overlay):
    base = parent_objects(overlay)
    for entry in kustomization(overlay).get("patches", []):
        assert set(entry) == {"path"}, "patches name their target by their own kind and name"
        for patch in load_yaml_documents(overlay / entry["path"]):
            assert key_of(patch) in base, f"{entry['path']}: no {key_of(patch)} in the base"
            assert patch["apiVersion"] == base[key_of(patch)]["apiVersion"], entry["path"]


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_effective_resources_are_valid_strict(overlay, tmp_path):
    result = kubernetes_validate(write_all(tmp_path, effective(overlay)))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_kustomize_build_matches_and_is_valid_strict(overlay, tmp_path):
    import yaml

    built = kustomize_build(overlay)
    path = tmp_path / "built.yaml"
    path.write_text(built)
    result = kubernetes_validate(path)
    assert result.returncode == 0, result.stdout + result.stderr
    got = {key_of(d): d for d in yaml.safe_load_all(built) if d}
    want = effective(overlay)
    assert set(got) == set(want)

    def normal(node, field=None):
        # Lists merged by key are sets to Kubernetes; kustomize may reorder them.
        if isinstance(node, dict):
            return {k: normal(v, k) for k, v in node.items()}
        if isinstance(node, list):
            items = [normal(v) for v in node]
            return sorted(items, key=lambda v: v[MERGE_KEYS[field]]) if field in MERGE_KEYS else items
        return node

    def body(doc):
        # kustomize also sets the namespace, the part-of label and the image tag.
        doc = copy.deepcopy({k: v for k, v in doc.items() if k in ("spec", "data")})
        for c in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            c.pop("image", None)
        return normal(doc)

    for key in want:
        assert body(got[key]) == body(want[key]), key


# --- the replicated overlay --------------------------------------------------------


@pytest.fixture(scope="module")
def replicated():
    return effective(REPLICATED)


@pytest.fixture(scope="module")
def replicated_config(replicated):
    """The overlay's verifyiam.toml, from its own ConfigMap file (block form `verifyiam.toml: |`)."""
    (doc,) = load_yaml_documents(REPLICATED / "configmap.yaml")
    assert "  verifyiam.toml: |\n" in (REPLICATED / "configmap.yaml").read_text()
    assert replicated["ConfigMap", "verifyiam-config"]["data"] == doc["data"]
    return tomllib.loads(doc["data"]["verifyiam.toml"])


def test_replicated_config_uses_the_postgres_store(replicated_config):
    from urllib.parse import parse_qs, urlsplit

    iam = replicated_config["iam"]
    url = urlsplit(iam["store"])
    assert url.scheme in ("postgres", "postgresql")
    # The password comes from the Secret (VERIFYIAM_STORE), never from the ConfigMap.
    assert url.password is None
    assert parse_qs(url.query)["sslmode"] == ["verify-full"]
    assert parse_duration_seconds(iam["max_staleness"]) <= 300
    # Policies are verifyiam's own, shared through the database.
    assert replicated_config.get("authz", {}).get("mode", "local") == "local"


def test_replicated_config_matches_the_base_elsewhere(replicated_config, verifyiam_config):
    for table in ("server", "token", "routes"):
        assert replicated_config[table] == verifyiam_config[table], table
    for key in ("project", "bootstrap_admins"):
        assert replicated_config["iam"][key] == verifyiam_config["iam"][key], key


def test_replicated_pods_take_the_store_url_from_a_secret(replicated):
    assert not any(kind == "PersistentVolumeClaim" for kind, _ in replicated)
    pod = replicated["Deployment", "verifyiam"]["spec"]["template"]["spec"]
    assert not [v for v in pod["volumes"] if "persistentVolumeClaim" in v or v["name"] == "store"]
    (container,) = pod["containers"]
    assert not [m for m in container["volumeMounts"] if m["name"] == "store"]
    (env,) = [e for e in container["env"] if e["name"] == "VERIFYIAM_STORE"]
    assert env["valueFrom"] == {"secretKeyRef": {"name": "verifyiam-store", "key": "url"}}


def test_replicated_probes_keep_liveness_apart_from_the_store(replicated):
    (container,) = replicated["Deployment", "verifyiam"]["spec"]["template"]["spec"]["containers"]
    # Ready only with a loaded, fresh snapshot (gRPC health); alive whatever the database does,
    # so losing the database never restarts a pod that can still answer from its snapshot.
    assert container["readinessProbe"]["grpc"]["port"] == 9001
    for probe in ("livenessProbe", "startupProbe"):
        assert "grpc" not in container[probe], probe
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": 9002}, probe


def test_replicated_scaling(replicated):
    deployment = replicated["Deployment", "verifyiam"]["spec"]
    hpa = replicated["HorizontalPodAutoscaler", "verifyiam"]["spec"]
    pdb = replicated["PodDisruptionBudget", "verifyiam"]["spec"]
    assert deployment["replicas"] >= 2
    assert deployment["strategy"]["type"] == "RollingUpdate"
    assert deployment["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert hpa["minReplicas"] == deployment["replicas"]
    assert hpa["maxReplicas"] == 10
    assert hpa["scaleTargetRef"]["name"] == "verifyiam"
    assert pdb == {"minAvailable": 1, "selector": pdb["selector"]}


def test_replicated_headless_service_selects_the_pods(replicated):
    service = replicated["Service", "verifyiam-pods"]["spec"]
    labels = replicated["Deployment", "verifyiam"]["spec"]["template"]["metadata"]["labels"]
    assert service["clusterIP"] == "None"
    assert service["selector"].items() <= labels.items()
    assert [p["port"] for p in service["ports"]] == [9001]


def test_merge_emulation_deletes_and_replaces():
    base = {"spec": {"a": 1, "volumes": [{"name": "s", "persistentVolumeClaim": {"claimName": "c"}},
                                         {"name": "t", "emptyDir": {}}]}}
    patch = {"spec": {"a": None, "b": 2, "volumes": [{"name": "s", "persistentVolumeClaim": None, "emptyDir": {}}]}}
    assert merge(base, patch) == {"spec": {"b": 2, "volumes": [{"name": "s", "emptyDir": {}},
                                                              {"name": "t", "emptyDir": {}}]}}
    assert merge(base, {"$patch": "delete"}) is DELETE
    assert KUBERNETES_VERSION


# --- the mtls overlay ----------------------------------------------------------------

MTLS = OVERLAYS_DIR / "mtls"


@pytest.fixture(scope="module")
def mtls():
    return effective(MTLS)


@pytest.fixture(scope="module")
def mtls_config(mtls):
    (doc,) = load_yaml_documents(MTLS / "configmap.yaml")
    assert "  verifyiam.toml: |\n" in (MTLS / "configmap.yaml").read_text()
    assert mtls["ConfigMap", "verifyiam-config"]["data"] == doc["data"]
    return tomllib.loads(doc["data"]["verifyiam.toml"])


def test_mtls_overlay_exists():
    assert MTLS in OVERLAYS


def test_mtls_config_is_the_base_plus_tls(mtls_config, verifyiam_config):
    server = dict(mtls_config["server"])
    tls, admin_tls = server.pop("tls"), server.pop("admin_tls")
    assert server == verifyiam_config["server"]
    for table in ("iam", "token", "routes"):
        assert mtls_config[table] == verifyiam_config[table], table
    # Check: mutual TLS. Admin: TLS only, so the kubelet's HTTPS probes get in.
    assert tls["client_ca_file"]
    assert "client_ca_file" not in admin_tls


def test_mtls_secret_is_mounted_where_the_config_names_the_files(mtls, mtls_config):
    pod = mtls["Deployment", "verifyiam"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    files = []
    for table in ("tls", "admin_tls"):
        t = mtls_config["server"][table]
        files += [t[k] for k in ("cert_file", "key_file", "client_ca_file") if k in t]
    for path in files:
        directory, _, name = path.rpartition("/")
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == directory)
        assert mount["readOnly"] is True
        assert "subPath" not in mount, "subPath mounts are never updated on rotation"
        secret = volumes[mount["name"]]["secret"]
        assert secret["secretName"] == "verifyiam-tls"
        # cert-manager's key names in a Certificate's Secret.
        assert name in {"tls.crt", "tls.key", "ca.crt"}
        assert "items" not in secret


@pytest.mark.parametrize("probe", ["livenessProbe", "readinessProbe", "startupProbe"])
def test_mtls_probes_use_https_on_the_admin_port(mtls, probe):
    (container,) = mtls["Deployment", "verifyiam"]["spec"]["template"]["spec"]["containers"]
    assert "grpc" not in container[probe], "the kubelet's gRPC probe cannot do TLS"
    get = container[probe]["httpGet"]
    assert get["scheme"] == "HTTPS"
    assert get["port"] == "admin"
    assert get["path"] in {"/readyz", "/healthz"}


# --- the replicated-mtls overlay -------------------------------------------------------

REPLICATED_MTLS = OVERLAYS_DIR / "replicated-mtls"


@pytest.fixture(scope="module")
def replicated_mtls():
    return effective(REPLICATED_MTLS)


@pytest.fixture(scope="module")
def replicated_mtls_config(replicated_mtls):
    (doc,) = load_yaml_documents(REPLICATED_MTLS / "configmap.yaml")
    assert "  verifyiam.toml: |\n" in (REPLICATED_MTLS / "configmap.yaml").read_text()
    assert replicated_mtls["ConfigMap", "verifyiam-config"]["data"] == doc["data"]
    return tomllib.loads(doc["data"]["verifyiam.toml"])


def test_replicated_mtls_builds_on_the_replicated_overlay():
    assert parent(REPLICATED_MTLS) == REPLICATED


def test_replicated_mtls_config_is_replicated_plus_mtls(replicated_mtls_config, replicated_config, mtls_config):
    # Everything but [server.tls]/[server.admin_tls] is the replicated overlay's file ...
    config = copy.deepcopy(replicated_mtls_config)
    tls, admin_tls = config["server"].pop("tls"), config["server"].pop("admin_tls")
    assert config == replicated_config
    # ... and those two are the mtls overlay's.
    assert tls == mtls_config["server"]["tls"]
    assert admin_tls == mtls_config["server"]["admin_tls"]


def test_replicated_mtls_keeps_the_replicas_and_the_store_secret(replicated_mtls, replicated):
    for key in [("HorizontalPodAutoscaler", "verifyiam"), ("PodDisruptionBudget", "verifyiam"),
                ("Service", "verifyiam-pods")]:
        assert replicated_mtls[key] == replicated[key], key
    assert not any(kind == "PersistentVolumeClaim" for kind, _ in replicated_mtls)
    spec = replicated_mtls["Deployment", "verifyiam"]["spec"]
    assert spec["replicas"] >= 2 and spec["strategy"] == replicated["Deployment", "verifyiam"]["spec"]["strategy"]
    (container,) = spec["template"]["spec"]["containers"]
    (env,) = [e for e in container["env"] if e["name"] == "VERIFYIAM_STORE"]
    assert env["valueFrom"] == {"secretKeyRef": {"name": "verifyiam-store", "key": "url"}}


def test_replicated_mtls_mounts_the_tls_secret_where_the_config_names_it(replicated_mtls, replicated_mtls_config):
    pod = replicated_mtls["Deployment", "verifyiam"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for table in ("tls", "admin_tls"):
        t = replicated_mtls_config["server"][table]
        for path in [t[k] for k in ("cert_file", "key_file", "client_ca_file") if k in t]:
            directory = path.rpartition("/")[0]
            mount = next(m for m in container["volumeMounts"] if m["mountPath"] == directory)
            assert mount["readOnly"] is True and "subPath" not in mount
            assert volumes[mount["name"]]["secret"]["secretName"] == "verifyiam-tls"


def test_replicated_mtls_probes_use_https_and_keep_liveness_apart_from_the_store(replicated_mtls):
    (container,) = replicated_mtls["Deployment", "verifyiam"]["spec"]["template"]["spec"]["containers"]
    paths = {}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert "grpc" not in container[probe], "the kubelet's gRPC probe cannot do TLS"
        get = container[probe]["httpGet"]
        assert (get["scheme"], get["port"]) == ("HTTPS", "admin"), probe
        paths[probe] = get["path"]
    # Ready only with a fresh snapshot; alive whatever the database does.
    assert paths == {"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/healthz"}
