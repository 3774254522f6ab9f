"""Dockerfile: plain checks (no Docker engine or linter needed)."""

import json
import re

from conftest import DOCKER_DIR, KUBERNETES_DIR, load_yaml_documents

DOCKERFILE = DOCKER_DIR / "Dockerfile"


def instructions():
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    lines = [l for l in text.splitlines() if not l.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line:
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_multi_stage_build():
    froms = [args for word, args in instructions() if word == "FROM"]
    assert len(froms) == 2
    assert froms[0].startswith("rust:1-bookworm AS ")
    assert froms[1] in {"gcr.io/distroless/cc-debian12:nonroot", "debian:bookworm-slim"}


def test_locked_release_build():
    runs = " ".join(args for word, args in instructions() if word == "RUN")
    assert "cargo build --release --locked" in runs


def test_runs_as_non_root_matching_kubernetes():
    users = [args for word, args in instructions() if word == "USER"]
    assert users, "the image sets its user"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    (deployment,) = load_yaml_documents(KUBERNETES_DIR / "deployment.yaml")
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(uid)


def test_ports_and_entrypoint():
    expose = [args for word, args in instructions() if word == "EXPOSE"]
    assert sorted(p for e in expose for p in e.split()) == ["9001", "9002"]
    (entrypoint,) = [args for word, args in instructions() if word == "ENTRYPOINT"]
    argv = json.loads(entrypoint)  # exec form: signals reach verifyiam directly
    assert argv[0].endswith("/verifyiam")
    assert argv[1:] == ["serve", "--config", "/etc/verifyiam/verifyiam.toml"]
