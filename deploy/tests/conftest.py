"""Shared paths and loaders for the deploy/ checks."""

import contextlib
import os
import pathlib
import subprocess
import tomllib

import pytest
import yaml

DEPLOY = pathlib.Path(__file__).resolve().parent.parent
REPO = DEPLOY.parent
ENVOY_DIR = DEPLOY / "envoy"
KUBERNETES_DIR = DEPLOY / "kubernetes"
# Kustomize overlays of the base. Not below KUBERNETES_DIR: kustomize refuses an
# overlay inside the directory of the base it refers to ("cycle detected").
OVERLAYS_DIR = DEPLOY / "kubernetes-overlays"
ISTIO_DIR = DEPLOY / "istio"
DOCKER_DIR = DEPLOY / "docker"

# verifyiam's [server] check_deadline in the shipped config. Every proxy timeout
# in front of it must be larger.
CHECK_DEADLINE_MS = 150


def load_yaml_documents(path):
    """Every non-empty YAML document in a file."""
    with open(path, encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def parse_duration_seconds(text):
    """A protobuf-JSON / Istio duration such as "0.25s" or "250ms", in seconds."""
    text = str(text).strip()
    for suffix, factor in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if text.endswith(suffix) and text[: -len(suffix)].replace(".", "", 1).isdigit():
            return float(text[: -len(suffix)]) * factor
    raise ValueError(f"not a duration: {text!r}")


@pytest.fixture(scope="session")
def configmap():
    (doc,) = load_yaml_documents(KUBERNETES_DIR / "configmap.yaml")
    return doc


@pytest.fixture(scope="session")
def verifyiam_config(configmap):
    """The verifyiam.toml the Kubernetes base ships, parsed."""
    return tomllib.loads(configmap["data"]["verifyiam.toml"])


def binary():
    """$VERIFYIAM_BIN, else target/{debug,release}/verifyiam under $CARGO_TARGET_DIR or the
    repository; None without one."""
    if os.environ.get("VERIFYIAM_BIN"):
        return pathlib.Path(os.environ["VERIFYIAM_BIN"])
    roots = [pathlib.Path(os.environ["CARGO_TARGET_DIR"])] if os.environ.get("CARGO_TARGET_DIR") else []
    roots.append(REPO / "target")
    for root in roots:
        for profile in ("debug", "release"):
            candidate = root / profile / "verifyiam"
            if candidate.is_file():
                return candidate
    return None


@contextlib.contextmanager
def dev_server(tmp_path_factory, name):
    """A running `verifyiam serve --dev` on a fresh data directory: its admin address and a
    function minting a token for an email. Skips without a binary; stops the server after."""
    exe = binary()
    if exe is None:
        pytest.skip("no verifyiam binary: run `cargo build` (or set VERIFYIAM_BIN)")
    data = tmp_path_factory.mktemp(name)
    proc = subprocess.Popen(
        [exe, "serve", "--dev", "--data-dir", data,
         "--extauthz-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        admin = None
        for line in proc.stdout:
            if line.strip().startswith("admin HTTP"):
                admin = line.split("http://", 1)[1].split()[0]
                break
        assert admin, "serve --dev printed no admin address"

        def mint(email):
            return subprocess.run(
                [exe, "token", "mint", "--email", email, "--data-dir", data],
                check=True, capture_output=True, text=True).stdout.strip()

        yield admin, mint
    finally:
        proc.terminate()
        proc.wait(timeout=30)
