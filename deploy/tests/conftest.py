"""Shared paths and loaders for the deploy/ checks."""

import pathlib
import tomllib

import pytest
import yaml

DEPLOY = pathlib.Path(__file__).resolve().parent.parent
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
