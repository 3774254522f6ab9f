"""Envoy bootstraps: strict parse against Envoy's v3 protos, then the ext_authz wiring.

Each deploy/envoy/envoy*.yaml is turned into an envoy.config.bootstrap.v3.Bootstrap
with ignore_unknown_fields=False, so a misspelt field or an unknown typed_config
type fails here instead of at Envoy start-up.
"""

import copy

import pytest
from google.protobuf import json_format

# Every message type that appears as an "@type" in the bootstraps must be in the
# default descriptor pool, or ParseDict cannot resolve the Any.
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.core.v3 import config_source_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2  # noqa: F401  StdoutAccessLog
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from conftest import CHECK_DEADLINE_MS, ENVOY_DIR, load_yaml_documents

BOOTSTRAPS = sorted(ENVOY_DIR.glob("envoy*.yaml"))
MTLS = ENVOY_DIR / "envoy-mtls.yaml"
TLS_SOCKET = "envoy.transport_sockets.tls"

EXT_AUTHZ = "envoy.filters.http.ext_authz"
ROUTER = "envoy.filters.http.router"
HCM = "envoy.filters.network.http_connection_manager"
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
HEALTH_PATHS = {"/healthz"}


def parse_bootstrap(doc):
    return json_format.ParseDict(doc, bootstrap_pb2.Bootstrap(), ignore_unknown_fields=False)


def load_bootstrap(path):
    (doc,) = load_yaml_documents(path)
    return parse_bootstrap(doc)


def unpack(any_msg, cls):
    msg = cls()
    assert any_msg.Unpack(msg), f"typed_config is {any_msg.TypeName()}, expected {cls.DESCRIPTOR.full_name}"
    return msg


def http_connection_managers(bootstrap):
    for listener in bootstrap.static_resources.listeners:
        for chain in listener.filter_chains:
            for f in chain.filters:
                if f.name == HCM:
                    yield listener, unpack(f.typed_config, http_connection_manager_pb2.HttpConnectionManager)


def ext_authz_of(hcm):
    filters = [f for f in hcm.http_filters if f.name == EXT_AUTHZ]
    assert len(filters) == 1, "exactly one ext_authz filter"
    return unpack(filters[0].typed_config, ext_authz_pb2.ExtAuthz)


def per_route(route):
    if EXT_AUTHZ not in route.typed_per_filter_config:
        return None
    return unpack(route.typed_per_filter_config[EXT_AUTHZ], ext_authz_pb2.ExtAuthzPerRoute)


def clusters_by_name(bootstrap):
    return {c.name: c for c in bootstrap.static_resources.clusters}


def is_health_route(route):
    return route.match.path in HEALTH_PATHS


@pytest.fixture(params=BOOTSTRAPS, ids=lambda p: p.name)
def bootstrap_path(request):
    return request.param


def test_both_bootstraps_are_present():
    assert {p.name for p in BOOTSTRAPS} >= {"envoy.yaml", "envoy-sidecar.yaml", "envoy-mtls.yaml"}


def test_parses_strictly(bootstrap_path):
    bootstrap = load_bootstrap(bootstrap_path)
    assert bootstrap.static_resources.listeners
    assert bootstrap.admin.address.socket_address.address == "127.0.0.1", "admin on loopback only"


def test_front_proxy_listens_on_8080():
    bootstrap = load_bootstrap(ENVOY_DIR / "envoy.yaml")
    ports = {l.address.socket_address.port_value for l in bootstrap.static_resources.listeners}
    assert 8080 in ports


def test_ext_authz_filter_settings(bootstrap_path):
    bootstrap = load_bootstrap(bootstrap_path)
    hcms = list(http_connection_managers(bootstrap))
    assert hcms
    for _, hcm in hcms:
        authz = ext_authz_of(hcm)
        assert authz.WhichOneof("services") == "grpc_service"
        assert authz.grpc_service.envoy_grpc.cluster_name == "verifyiam"
        assert authz.transport_api_version == config_source_pb2.ApiVersion.Value("V3")
        assert authz.failure_mode_allow is False, "must fail closed"
        assert authz.HasField("status_on_error") and authz.status_on_error.code == 503
        assert authz.include_peer_certificate is False
        assert not authz.HasField("with_request_body"), "verifyiam decides on headers only"
        timeout_ms = authz.grpc_service.timeout.ToMilliseconds()
        assert timeout_ms > CHECK_DEADLINE_MS, "Envoy must wait longer than verifyiam's check_deadline"


def test_router_is_last_and_ext_authz_before_it(bootstrap_path):
    bootstrap = load_bootstrap(bootstrap_path)
    for _, hcm in http_connection_managers(bootstrap):
        names = [f.name for f in hcm.http_filters]
        assert names[-1] == ROUTER
        unpack(hcm.http_filters[-1].typed_config, router_pb2.Router)
        assert names.index(EXT_AUTHZ) < names.index(ROUTER)


def test_ext_authz_cluster_is_http2_and_grpc_health_checked(bootstrap_path):
    bootstrap = load_bootstrap(bootstrap_path)
    clusters = clusters_by_name(bootstrap)
    for _, hcm in http_connection_managers(bootstrap):
        name = ext_authz_of(hcm).grpc_service.envoy_grpc.cluster_name
        assert name in clusters, f"ext_authz cluster {name!r} is not defined"
        cluster = clusters[name]
        assert HTTP_PROTOCOL_OPTIONS in cluster.typed_extension_protocol_options
        options = unpack(
            cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS],
            http_protocol_options_pb2.HttpProtocolOptions,
        )
        assert options.explicit_http_config.HasField("http2_protocol_options"), "gRPC needs HTTP/2 (h2c)"
        assert cluster.health_checks, "verifyiam cluster is health checked"
        assert all(hc.HasField("grpc_health_check") for hc in cluster.health_checks)
        ports = {
            lb.endpoint.address.socket_address.port_value
            for ep in cluster.load_assignment.endpoints
            for lb in ep.lb_endpoints
        }
        assert ports == {9001}
        assert cluster.connect_timeout.ToMilliseconds() <= ext_authz_of(hcm).grpc_service.timeout.ToMilliseconds()


def test_front_proxy_resolves_verifyiam_by_dns():
    cluster = clusters_by_name(load_bootstrap(ENVOY_DIR / "envoy.yaml"))["verifyiam"]
    assert cluster.type == cluster.STRICT_DNS


def test_sidecar_keeps_verifyiam_and_app_on_loopback():
    clusters = clusters_by_name(load_bootstrap(ENVOY_DIR / "envoy-sidecar.yaml"))
    for cluster in clusters.values():
        for ep in cluster.load_assignment.endpoints:
            for lb in ep.lb_endpoints:
                assert lb.endpoint.address.socket_address.address == "127.0.0.1", cluster.name


def test_routes_name_their_deployment(bootstrap_path):
    bootstrap = load_bootstrap(bootstrap_path)
    clusters = clusters_by_name(bootstrap)
    for _, hcm in http_connection_managers(bootstrap):
        health_routes = 0
        api_routes = 0
        for vhost in hcm.route_config.virtual_hosts:
            for route in vhost.routes:
                settings = per_route(route)
                assert settings is not None, f"route {route.name!r} has no ext_authz per-route config"
                if is_health_route(route):
                    health_routes += 1
                    assert settings.disabled is True, f"health route {route.name!r} must disable ext_authz"
                    continue
                api_routes += 1
                assert not settings.disabled, f"route {route.name!r} switches ext_authz off"
                extensions = dict(settings.check_settings.context_extensions)
                assert extensions.get("environment"), f"route {route.name!r} lacks environment"
                assert extensions.get("deployment"), f"route {route.name!r} lacks deployment"
                assert set(extensions) <= {"organization", "environment", "deployment", "backend_audience"}
                if route.HasField("route"):
                    assert route.route.cluster in clusters
        assert health_routes >= 1, "a /healthz route with ext_authz disabled"
        assert api_routes >= 1


def _backend_routes(bootstrap):
    for _, hcm in http_connection_managers(bootstrap):
        for vhost in hcm.route_config.virtual_hosts:
            for route in vhost.routes:
                settings = per_route(route)
                if settings is None:
                    continue
                audience = settings.check_settings.context_extensions.get("backend_audience")
                if audience:
                    yield route, audience


def test_front_proxy_has_a_cloud_run_route_with_its_backend_audience():
    routes = list(_backend_routes(load_bootstrap(ENVOY_DIR / "envoy.yaml")))
    assert any(audience.endswith(".a.run.app") for _, audience in routes), "a Cloud Run example"


def test_backend_audience_routes_reach_their_backend_over_tls(bootstrap_path):
    # The ID token is a bearer credential: it must only ever travel to the backend it names,
    # encrypted, to a server whose certificate proves that name.
    bootstrap = load_bootstrap(bootstrap_path)
    clusters = clusters_by_name(bootstrap)
    for route, audience in _backend_routes(bootstrap):
        assert audience.startswith("https://"), f"route {route.name!r}: audience must be an https URL"
        host = audience.removeprefix("https://").split("/")[0]
        assert not (host == "googleapis.com" or host.endswith(".googleapis.com")), (
            "Google APIs take access tokens, not ID tokens"
        )
        assert route.route.host_rewrite_literal == host, f"route {route.name!r}: Host must be the backend's"
        cluster = clusters[route.route.cluster]
        assert cluster.transport_socket.name == "envoy.transport_sockets.tls"
        tls = unpack(cluster.transport_socket.typed_config, tls_pb2.UpstreamTlsContext)
        assert tls.sni == host
        validation = tls.common_tls_context.validation_context
        assert validation.trusted_ca.filename, "the backend's certificate is verified"
        assert [m.matcher.exact for m in validation.match_typed_subject_alt_names] == [host]
        endpoints = [
            lb.endpoint.address.socket_address
            for ep in cluster.load_assignment.endpoints
            for lb in ep.lb_endpoints
        ]
        assert endpoints and all(a.address == host and a.port_value == 443 for a in endpoints)


def test_health_route_comes_before_catch_all(bootstrap_path):
    bootstrap = load_bootstrap(bootstrap_path)
    for _, hcm in http_connection_managers(bootstrap):
        for vhost in hcm.route_config.virtual_hosts:
            kinds = ["health" if is_health_route(r) else r.match.prefix for r in vhost.routes]
            if "/" in kinds:
                assert kinds.index("health") < kinds.index("/"), "'/' would shadow /healthz"


def test_paths_are_normalised_before_routing(bootstrap_path):
    # The route picks the deployment, so routing must see the canonical path, and a path
    # with an encoded '/' or '\\' (read one way by Envoy, another by some backends) is refused.
    for _, hcm in http_connection_managers(load_bootstrap(bootstrap_path)):
        assert hcm.normalize_path.value is True
        assert hcm.merge_slashes is True
        assert hcm.path_with_escaped_slashes_action == hcm.REJECT_REQUEST


def test_api_routes_match_whole_path_segments(bootstrap_path):
    # "prefix: /orders" would also match /orders-internal; only "/" may be a plain prefix.
    for _, hcm in http_connection_managers(load_bootstrap(bootstrap_path)):
        for vhost in hcm.route_config.virtual_hosts:
            for route in vhost.routes:
                if route.match.prefix:
                    assert route.match.prefix == "/", f"route {route.name!r} uses prefix"


# --- the parse is really strict -------------------------------------------------


def _ext_authz_config(doc):
    listener = doc["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm, next(f for f in hcm["http_filters"] if f["name"] == EXT_AUTHZ)["typed_config"]


def test_misspelt_field_inside_typed_config_is_rejected():
    (doc,) = load_yaml_documents(ENVOY_DIR / "envoy.yaml")
    bad = copy.deepcopy(doc)
    _, authz = _ext_authz_config(bad)
    authz["failure_mode_alow"] = authz.pop("failure_mode_allow")
    with pytest.raises(json_format.ParseError, match="failure_mode_alow"):
        parse_bootstrap(bad)


def test_misspelt_field_in_route_per_filter_config_is_rejected():
    (doc,) = load_yaml_documents(ENVOY_DIR / "envoy.yaml")
    bad = copy.deepcopy(doc)
    hcm, _ = _ext_authz_config(bad)
    route = next(r for r in hcm["route_config"]["virtual_hosts"][0]["routes"] if "prefix" in r["match"])
    per = route["typed_per_filter_config"][EXT_AUTHZ]
    per["check_setings"] = per.pop("check_settings")
    with pytest.raises(json_format.ParseError):
        parse_bootstrap(bad)


def test_misspelt_top_level_field_is_rejected():
    (doc,) = load_yaml_documents(ENVOY_DIR / "envoy.yaml")
    bad = copy.deepcopy(doc)
    bad["static_resource"] = bad.pop("static_resources")
    with pytest.raises(json_format.ParseError):
        parse_bootstrap(bad)


def test_unknown_typed_config_type_is_rejected():
    (doc,) = load_yaml_documents(ENVOY_DIR / "envoy.yaml")
    bad = copy.deepcopy(doc)
    _, authz = _ext_authz_config(bad)
    authz["@type"] = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzz"
    with pytest.raises(json_format.ParseError, match="descriptor"):
        parse_bootstrap(bad)


# --- mutual TLS to verifyiam ------------------------------------------------------


def test_mtls_bootstrap_is_the_front_proxy_plus_a_tls_transport_socket():
    (plain,) = load_yaml_documents(ENVOY_DIR / "envoy.yaml")
    (mtls,) = load_yaml_documents(MTLS)
    cluster = next(c for c in mtls["static_resources"]["clusters"] if c["name"] == "verifyiam")
    assert cluster.pop("transport_socket")["name"] == TLS_SOCKET
    assert mtls == plain, "envoy-mtls.yaml drifted from envoy.yaml beyond the transport socket"


def test_plaintext_bootstraps_have_no_transport_socket():
    for path in (ENVOY_DIR / "envoy.yaml", ENVOY_DIR / "envoy-sidecar.yaml"):
        cluster = clusters_by_name(load_bootstrap(path))["verifyiam"]
        assert not cluster.HasField("transport_socket"), path.name


def test_mtls_cluster_presents_a_client_certificate_and_verifies_verifyiam():
    cluster = clusters_by_name(load_bootstrap(MTLS))["verifyiam"]
    assert cluster.transport_socket.name == TLS_SOCKET
    context = unpack(cluster.transport_socket.typed_config, tls_pb2.UpstreamTlsContext)
    common = context.common_tls_context
    assert list(common.alpn_protocols) == ["h2"], "verifyiam's ext_authz listener offers h2 only"
    (certificate,) = common.tls_certificates
    directory = certificate.watched_directory.path
    assert directory, "rotated client certificates are picked up"
    assert certificate.certificate_chain.filename.startswith(directory + "/")
    assert certificate.private_key.filename.startswith(directory + "/")
    validation = common.validation_context
    assert validation.trusted_ca.filename.startswith(directory + "/")
    assert validation.watched_directory.path == directory
    names = [m.matcher.exact for m in validation.match_typed_subject_alt_names]
    assert names == [context.sni], "verifyiam's certificate is checked for the name Envoy asks for"
    assert context.sni.startswith("verifyiam.")
