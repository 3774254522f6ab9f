"""Prometheus alerting rules, their PrometheusRule and the Grafana dashboard.

promtool (Prometheus's own checker) validates the rules and runs their unit tests; that the
metrics they name are really exported is tests/metrics_contract.rs's job (it scrapes a server).
"""

import json
import os
import re
import shutil
import subprocess

import pytest

from conftest import DEPLOY, KUBERNETES_DIR, load_yaml_documents

PROMETHEUS_DIR = DEPLOY / "prometheus"
RULES = PROMETHEUS_DIR / "alerts.yaml"
RULE_TESTS = PROMETHEUS_DIR / "alerts.test.yaml"
MONITORING_DIR = KUBERNETES_DIR / "monitoring"
DASHBOARD = DEPLOY / "grafana" / "verifyiam.json"
OBSERVABILITY_DOC = DEPLOY.parent / "docs" / "observability.md"

# The alerts the rules must hold, one per failure the on-call person must hear about.
EXPECTED_ALERTS = {
    "VerifyiamCheckErrors",
    "VerifyiamDependenciesUnavailable",
    "VerifyiamCheckLatencyNearDeadline",
    "VerifyiamPolicyStale",
    "VerifyiamPostgresDisconnected",
    "VerifyiamKeySetFetchFailures",
    "VerifyiamBackendTokenFailures",
    "VerifyiamCertificateExpiresSoon",
    "VerifyiamReplicasDisagree",
}


def promtool():
    path = shutil.which("promtool")
    if path is None:
        message = ("promtool not found (Debian package `prometheus`; deploy/check.sh installs it "
                   "when run as root): the Prometheus rules are NOT checked")
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        print(f"\n*** SKIPPING: {message} ***")
        pytest.skip(message)
    return path


def run(*args, cwd=None):
    return subprocess.run(args, capture_output=True, text=True, check=False, cwd=cwd)


@pytest.fixture(scope="module")
def rules():
    (doc,) = load_yaml_documents(RULES)
    return doc


def alerting_rules(doc):
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def test_promtool_accepts_the_rules():
    out = run(promtool(), "check", "rules", str(RULES))
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_unit_tests_pass():
    out = run(promtool(), "test", "rules", RULE_TESTS.name, cwd=PROMETHEUS_DIR)
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_unit_tests_fail_when_an_alert_does_not_fire(tmp_path):
    """The unit tests can fail: with one alert's threshold out of reach, promtool says so."""
    promtool_path = promtool()
    broken = RULES.read_text().replace("verifyiam_store_connected == 0", "verifyiam_store_connected == 7")
    assert broken != RULES.read_text()
    (tmp_path / "alerts.yaml").write_text(broken)
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    out = run(promtool_path, "test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert out.returncode != 0
    assert "VerifyiamPostgresDisconnected" in out.stdout + out.stderr


def test_every_expected_alert_is_there(rules):
    assert {r["alert"] for r in alerting_rules(rules)} == EXPECTED_ALERTS


def test_every_alert_is_unit_tested(rules):
    (tests,) = load_yaml_documents(RULE_TESTS)
    tested = {t["alertname"] for test in tests["tests"] for t in test.get("alert_rule_test", [])
              if t.get("exp_alerts")}
    assert {r["alert"] for r in alerting_rules(rules)} <= tested


def slug(heading):
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_alert_explains_itself_and_its_runbook_exists(rules):
    anchors = {slug(line.lstrip("#")) for line in OBSERVABILITY_DOC.read_text().splitlines()
               if line.startswith("#")}
    for rule in alerting_rules(rules):
        annotations = rule["annotations"]
        assert {"summary", "description", "runbook_url"} <= annotations.keys(), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        page, _, anchor = annotations["runbook_url"].partition("#")
        assert page == "docs/observability.md", rule["alert"]
        assert anchor == rule["alert"].lower(), rule["alert"]
        assert anchor in anchors, f"{rule['alert']}: no heading #{anchor} in {OBSERVABILITY_DOC}"


# --- the PrometheusRule for the Prometheus operator ---------------------------------

# monitoring.coreos.com/v1 PrometheusRule fields (the operator's CRD); no schema offline.
GROUP_FIELDS = {"name", "interval", "rules", "limit", "partial_response_strategy", "query_offset"}
RULE_FIELDS = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}


@pytest.fixture(scope="module")
def prometheus_rule():
    (doc,) = load_yaml_documents(MONITORING_DIR / "prometheusrule.yaml")
    return doc


def test_prometheus_rule_shape(prometheus_rule):
    assert prometheus_rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert prometheus_rule["kind"] == "PrometheusRule"
    assert set(prometheus_rule) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(prometheus_rule["metadata"]) <= {"name", "namespace", "labels", "annotations"}
    assert set(prometheus_rule["spec"]) == {"groups"}
    for group in prometheus_rule["spec"]["groups"]:
        assert set(group) <= GROUP_FIELDS, group["name"]
        for rule in group["rules"]:
            assert set(rule) <= RULE_FIELDS, rule
            assert ("alert" in rule) != ("record" in rule), rule


def test_prometheus_rule_holds_the_same_rules(prometheus_rule, rules):
    assert prometheus_rule["spec"]["groups"] == rules["groups"]


def test_prometheus_rule_is_valid_for_promtool(prometheus_rule, tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(json.dumps({"groups": prometheus_rule["spec"]["groups"]}))
    out = run(promtool(), "check", "rules", str(path))
    assert out.returncode == 0, out.stdout + out.stderr


def test_monitoring_kustomization_lists_the_rule():
    (k,) = load_yaml_documents(MONITORING_DIR / "kustomization.yaml")
    assert k["kind"] == "Kustomization"
    assert k["namespace"] == "verifyiam"
    assert k["resources"] == ["prometheusrule.yaml"]


@pytest.mark.skipif(shutil.which("kubectl") is None and shutil.which("kustomize") is None,
                    reason="neither kubectl nor kustomize installed")
def test_monitoring_kustomize_build(prometheus_rule):
    cmd = ["kubectl", "kustomize"] if shutil.which("kubectl") else ["kustomize", "build"]
    out = run(*cmd, str(MONITORING_DIR))
    assert out.returncode == 0, out.stderr
    (built,) = [d for d in __import__("yaml").safe_load_all(out.stdout) if d]
    assert built["metadata"]["namespace"] == "verifyiam"
    assert built["spec"] == prometheus_rule["spec"]


# --- the Grafana dashboard -----------------------------------------------------------------

@pytest.fixture(scope="module")
def dashboard():
    return json.loads(DASHBOARD.read_text())


def test_dashboard_panels_are_whole(dashboard):
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["title"] and panel["description"], panel["id"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert "verifyiam_" in target["expr"], panel["title"]
            assert 'job=~"$job"' in target["expr"], (panel["title"], target["expr"])


def test_dashboard_shows_what_on_call_needs(dashboard):
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for metric in ["verifyiam_checks_total", "verifyiam_check_duration_seconds_bucket",
                   "verifyiam_check_deadline_seconds", "verifyiam_cache_requests_total",
                   "verifyiam_upstream_duration_seconds", "verifyiam_upstream_errors_total",
                   "verifyiam_store_revision", "verifyiam_store_staleness_seconds"]:
        assert metric in exprs, metric


def test_dashboard_variables(dashboard):
    names = {v["name"] for v in dashboard["templating"]["list"]}
    assert names == {"datasource", "job"}
