"""The Kubernetes manifests in ops/k8s: valid for pinned Kubernetes releases, and saying what the
gateway needs.

kubernetes-validate checks every resource of a core kind against the API schema of each pinned
release, strictly (an unknown or misspelt field fails). Its schemas have no CRDs: the Gateway API
HTTPRoutes, Envoy Gateway's BackendTrafficPolicy, the Prometheus Operator's ServiceMonitor and
kustomize's kustomization.yaml are checked structurally here, field by field for what the
gateway relies on, not against their CRD schemas.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS

from agent_mcp_gateway.config import ConfigError, load_mcp_config, load_rules
from agent_mcp_gateway.settings import ENV_PREFIX, Settings, load_settings

from conftest import ROOT

K8S = ROOT / "ops" / "k8s"
COMPOSE_CONFIG = ROOT / "ops" / "compose" / "config"

# The oldest and newest Kubernetes releases upstream supports as this is written (1.35 to 1.37).
KUBERNETES_VERSIONS = ("1.35.0", "1.37.0")
# Kinds that need a CRD, so kubernetes-validate has no schema for them.
CRD_KINDS = {
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
    ("gateway.envoyproxy.io/v1alpha1", "BackendTrafficPolicy"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
}
# Applied on their own (they need CRDs or a particular ingress controller); the rest is in
# kustomization.yaml.
OPT_IN = {"gateway-api.yaml", "ingress-nginx.yaml", "servicemonitor.yaml"}
PUBLIC_PATHS = {"/mcp", "/.well-known/oauth-protected-resource"}


def manifest_files() -> list[Path]:
    return sorted(path for path in K8S.glob("*.yaml") if path.name != "kustomization.yaml")


@functools.cache
def _parsed(path: Path) -> tuple[dict[str, Any], ...]:
    return tuple(doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None)


def documents(path: Path) -> list[dict[str, Any]]:
    """The file's resources, each a fresh copy a test may change."""
    return copy.deepcopy(list(_parsed(path)))


def all_resources() -> list[dict[str, Any]]:
    return [doc for path in manifest_files() for doc in documents(path)]


def resource(kind: str, name: str) -> dict[str, Any]:
    found = [doc for doc in all_resources() if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in all_resources() if doc["kind"] == kind]


def kustomization() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return data


def gateway_deployment() -> dict[str, Any]:
    return resource("Deployment", "agent-mcp-gateway")


def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def gateway_container() -> dict[str, Any]:
    (container,) = pod_spec(gateway_deployment())["containers"]
    return dict(container)


def gateway_env() -> dict[str, str]:
    return {item["name"]: item["value"] for item in gateway_container()["env"]}


def gateway_service() -> dict[str, Any]:
    return resource("Service", "agent-mcp-gateway")


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def container_port(container: dict[str, Any], port: int | str) -> int:
    """The number a probe's or Service's port (a name or a number) reaches in the container."""
    for declared in container["ports"]:
        if port in (declared["name"], declared["containerPort"]):
            return int(declared["containerPort"])
    raise AssertionError(f"port {port!r} is not a port of container {container['name']}")


def project_version() -> str:
    version: str = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    return version


def containerfile_user() -> int:
    match = re.search(r"^USER (\d+):(\d+)$", (ROOT / "Containerfile").read_text(), re.MULTILINE)
    assert match, "Containerfile has no numeric USER"
    return int(match.group(1))


def core_resources() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in manifest_files():
        for doc in documents(path):
            if (doc["apiVersion"], doc["kind"]) not in CRD_KINDS:
                yield f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc


CORE = list(core_resources())


# --- Schema validation ------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(("where", "doc"), CORE, ids=[where for where, _ in CORE])
def test_core_resources_validate_strictly(where: str, doc: dict[str, Any], version: str) -> None:
    """Every resource of a core kind matches the API schema, with no unknown field."""
    assert kubernetes_validate.validate(doc, version, strict=True) == version.rsplit(".", 1)[0], where


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_strict_validation_rejects_a_misspelt_field(version: str) -> None:
    """The validation above bites: the gateway's Deployment with one field misspelt fails."""
    broken = gateway_deployment()
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {"httpGet": {"path": "/ready"}}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinessProbes"):
        kubernetes_validate.validate(broken, version, strict=True)


def test_every_resource_is_validated_or_checked_here() -> None:
    """The kinds left to structural checks are exactly those kubernetes-validate has no schema
    for; every other kind must validate above (a missing schema fails there)."""
    kinds = {(doc["apiVersion"], doc["kind"]) for doc in all_resources()}
    assert kinds >= CRD_KINDS
    for api_version, kind in CRD_KINDS:
        with pytest.raises(kubernetes_validate.SchemaNotFoundError):
            kubernetes_validate.validate(
                {"apiVersion": api_version, "kind": kind, "metadata": {"name": "x"}}, KUBERNETES_VERSIONS[-1]
            )


def test_every_resource_is_in_the_namespace_with_the_common_labels() -> None:
    namespace = kustomization()["namespace"]
    assert resource("Namespace", namespace)
    for doc in all_resources():
        if doc["kind"] == "Namespace":
            continue
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        assert doc["metadata"]["namespace"] == namespace, where
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "agent-mcp-gateway", where


# --- kustomization.yaml -----------------------------------------------------------------------


def test_kustomization_lists_every_core_manifest() -> None:
    """`kubectl apply -k` applies every manifest that needs no CRD or controller of its own."""
    core_files = {path.name for path in manifest_files()} - OPT_IN
    assert set(kustomization()["resources"]) == core_files
    assert {path.name for path in manifest_files()} >= OPT_IN


def test_tokens_secret_is_generated_from_a_git_ignored_env_file() -> None:
    """As compose.yaml's env_file: the token hashes come from a file git never holds, and the
    Deployment reads the generated Secret (kustomize renames the reference with the hash)."""
    (generator,) = kustomization()["secretGenerator"]
    assert generator["envs"] == ["tokens.env"]
    (source,) = gateway_container()["envFrom"]
    assert source["secretRef"]["name"] == generator["name"]
    ignored = (K8S / ".gitignore").read_text().split()
    assert "tokens.env" in ignored
    assert (K8S / "tokens.env.example").is_file()


def secret_keys() -> list[str]:
    """The Secret's keys: those of tokens.env, whose example lists them."""
    lines = (K8S / "tokens.env.example").read_text().splitlines()
    return [line.split("=", 1)[0] for line in lines if line and not line.startswith("#")]


def write_config(folder: Path) -> tuple[Path, Path]:
    env = gateway_env()
    data = resource("ConfigMap", "agent-mcp-gateway-config")["data"]
    servers = folder / Path(env["GATEWAY_MCP_CONFIG"]).name
    rules = folder / Path(env["GATEWAY_RULES"]).name
    for path in (servers, rules):
        path.write_text(data[path.name])
    return servers, rules


def test_config_loads_with_the_pods_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ConfigMap's files load as the gateway loads them with the Deployment's env and the
    Secret's keys, and each key is needed: without it the rules name the missing variable."""
    servers, rules = write_config(tmp_path)
    for name, value in gateway_env().items():
        monkeypatch.setenv(name, value)
    keys = secret_keys()
    assert keys
    for key in keys:
        monkeypatch.setenv(key, "sha256:" + hashlib.sha256(key.encode()).hexdigest())
    assert load_mcp_config(servers).mcpServers
    loaded = load_rules(rules)
    assert sum(len(agent.tokens) for agent in loaded.agents.values()) == len(keys)
    for key in keys:
        with monkeypatch.context() as unset:
            unset.delenv(key)
            with pytest.raises(ConfigError, match=key):
                load_rules(rules)


def test_tokens_example_is_no_usable_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Copied as it is, the example makes the gateway refuse the rules rather than accept a
    token anybody could guess."""
    _, rules = write_config(tmp_path)
    for line in (K8S / "tokens.env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            name, value = line.split("=", 1)
            monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match="tokens"):
        load_rules(rules)


def test_image_is_the_released_version() -> None:
    """The manifests run the image of this release, and kustomization.yaml's images: entry
    (where users set their registry) rewrites exactly that image."""
    image = f"agent-mcp-gateway:{project_version()}"
    assert gateway_container()["image"] == image
    demo = resource("Deployment", "demo-server")
    assert pod_spec(demo)["containers"][0]["image"] == image
    (entry,) = kustomization()["images"]
    assert (entry["name"], entry["newTag"]) == ("agent-mcp-gateway", project_version())


# --- The gateway's configuration ---------------------------------------------------------------


def test_configmap_holds_the_compose_config_files() -> None:
    data = resource("ConfigMap", "agent-mcp-gateway-config")["data"]
    files = {path.name: path.read_text() for path in COMPOSE_CONFIG.iterdir() if path.is_file()}
    assert set(data) == set(files) == {".mcp.json", ".mcp-gateway-rules.json"}
    for name, text in files.items():
        assert data[name] == text, f"{name} differs from ops/compose/config/{name}"


def test_config_is_mounted_as_a_directory_for_hot_reload() -> None:
    """Both files are read from the ConfigMap's directory, never through subPath: only a
    directory mount sees kubelet's ..data symlink swaps, which the watcher follows."""
    env = gateway_env()
    folder = str(Path(env["GATEWAY_MCP_CONFIG"]).parent)
    assert str(Path(env["GATEWAY_RULES"]).parent) == folder
    (mount,) = [m for m in gateway_container()["volumeMounts"] if m["mountPath"] == folder]
    assert "subPath" not in mount and "subPathExpr" not in mount
    assert mount["readOnly"] is True
    volume = next(v for v in pod_spec(gateway_deployment())["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == "agent-mcp-gateway-config"
    assert "items" not in volume["configMap"], "items would leave a key out of the directory"
    config = resource("ConfigMap", "agent-mcp-gateway-config")["data"]
    assert {Path(env["GATEWAY_MCP_CONFIG"]).name, Path(env["GATEWAY_RULES"]).name} == set(config)


def test_env_is_valid_settings_and_matches_compose() -> None:
    """Every GATEWAY_* name is a setting, the values load as the gateway would load them, and
    the compose gateway service's settings are all here with the same fixed values."""
    env = gateway_env()
    fields = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    unknown = {name for name in env if name.startswith(ENV_PREFIX)} - fields
    assert not unknown, f"not gateway settings: {unknown}"
    settings = load_settings(env)
    assert settings.transport == "http" and not settings.loopback_bind
    assert settings.audit_log is not None

    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]["gateway"]["environment"]
    assert set(compose) <= set(env)
    for name, value in compose.items():
        if "${" not in value:
            assert env[name] == value, name


def test_public_url_is_the_routes_host() -> None:
    env = gateway_env()
    host = urlsplit(env["GATEWAY_PUBLIC_URL"]).hostname
    assert env["GATEWAY_ALLOWED_ORIGINS"].split(",") == [env["GATEWAY_PUBLIC_URL"]]
    for route in of_kind("HTTPRoute"):
        assert route["spec"]["hostnames"] == [host], route["metadata"]["name"]
    (ingress,) = of_kind("Ingress")
    assert [rule["host"] for rule in ingress["spec"]["rules"]] == [host]


# --- The gateway's pods --------------------------------------------------------------------------


def test_probes_use_health_and_ready_on_the_gateway_port() -> None:
    container = gateway_container()
    port = int(gateway_env()["GATEWAY_HTTP_PORT"])
    expected = {"livenessProbe": "/health", "startupProbe": "/health", "readinessProbe": "/ready"}
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert container_port(container, get["port"]) == port, probe


def test_termination_grace_outlasts_the_drain() -> None:
    """The pod is killed only after the preStop pause and the gateway's own drain bound."""
    spec = pod_spec(gateway_deployment())
    pause = gateway_container()["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = load_settings(gateway_env()).shutdown_grace
    assert spec["terminationGracePeriodSeconds"] > pause + grace


def test_pods_are_hardened() -> None:
    """As compose.yaml: non-root, read-only root filesystem, no capabilities, no privilege
    escalation, RuntimeDefault seccomp, for every pod the manifests run; the gateway's uid is
    the image's, and its only writable paths are /tmp and the state folder."""
    for deployment in of_kind("Deployment"):
        name = deployment["metadata"]["name"]
        spec = pod_spec(deployment)
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["enableServiceLinks"] is False, name
        assert "hostNetwork" not in spec and "hostPID" not in spec, name
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context.get("privileged", False) is False, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), f"{name} {kind}"

    spec = pod_spec(gateway_deployment())
    assert spec["securityContext"]["runAsUser"] == containerfile_user()
    assert spec["securityContext"]["fsGroup"] == containerfile_user()
    state = str(Path(load_settings(gateway_env()).audit_log or "").parent)
    mounts = gateway_container()["volumeMounts"]
    writable = {m["mountPath"]: m["name"] for m in mounts if not m.get("readOnly")}
    assert set(writable) == {"/tmp", state}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[writable["/tmp"]]["emptyDir"]["medium"] == "Memory"
    assert "emptyDir" in volumes[writable[state]] or "persistentVolumeClaim" in volumes[writable[state]]


def test_service_and_disruption_budget_select_the_gateway_pods() -> None:
    deployment = gateway_deployment()
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(deployment["spec"]["selector"]["matchLabels"], labels)
    service = gateway_service()
    assert selects(service["spec"]["selector"], labels)
    (port,) = service["spec"]["ports"]
    assert container_port(gateway_container(), port["targetPort"]) == int(gateway_env()["GATEWAY_HTTP_PORT"])

    pdb = resource("PodDisruptionBudget", "agent-mcp-gateway")
    assert selects(pdb["spec"]["selector"]["matchLabels"], labels)
    # One replica at a time may go, and one always stays.
    assert pdb["spec"]["maxUnavailable"] == 1
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def _service_at(url: str) -> tuple[dict[str, Any], int]:
    parts = urlsplit(url)
    assert parts.hostname and parts.port, url
    service = resource("Service", parts.hostname)
    assert parts.port in {p["port"] for p in service["spec"]["ports"]}, url
    return service, parts.port


def test_downstreams_and_redis_are_services_of_the_manifests() -> None:
    """The demo server the config names and the Redis of the shared limits are both here, and
    only the gateway pods may reach them."""
    servers = yaml.safe_load(resource("ConfigMap", "agent-mcp-gateway-config")["data"][".mcp.json"])
    urls = [server["url"] for server in servers["mcpServers"].values() if "url" in server]
    assert urls
    redis_url = gateway_env()["GATEWAY_RATE_LIMIT_STORAGE"]
    assert urlsplit(redis_url).scheme == "redis"
    gateway_labels = gateway_deployment()["spec"]["template"]["metadata"]["labels"]
    policies = of_kind("NetworkPolicy")
    for url in [*urls, redis_url]:
        service, _ = _service_at(url)
        (deployment,) = [
            d
            for d in of_kind("Deployment")
            if selects(service["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
        ]
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        (policy,) = [p for p in policies if selects(p["spec"]["podSelector"]["matchLabels"], pod_labels)]
        (rule,) = policy["spec"]["ingress"]
        (source,) = rule["from"]
        assert selects(source["podSelector"]["matchLabels"], gateway_labels), url
        for other in of_kind("Deployment"):
            if other["metadata"]["name"] != gateway_deployment()["metadata"]["name"]:
                labels = other["spec"]["template"]["metadata"]["labels"]
                assert not selects(source["podSelector"]["matchLabels"], labels), url


def test_demo_server_runs_the_compose_script() -> None:
    script = resource("ConfigMap", "demo-server")["data"]["demo_server.py"]
    assert script == (ROOT / "ops" / "compose" / "demo_server.py").read_text()


# --- Routes and monitoring (CRDs: structural checks) -------------------------------------------


def _backends(route: dict[str, Any]) -> list[tuple[str, int]]:
    return [(ref["name"], ref["port"]) for rule in route["spec"]["rules"] for ref in rule["backendRefs"]]


def _paths(route: dict[str, Any]) -> set[str]:
    return {match["path"]["value"] for rule in route["spec"]["rules"] for match in rule["matches"]}


def test_http_routes_reach_only_the_mcp_endpoint() -> None:
    """Both routes go to the gateway Service's port; /metrics, /health and /ready stay inside."""
    service = gateway_service()
    ports = {p["port"] for p in service["spec"]["ports"]}
    routes = of_kind("HTTPRoute")
    assert len(routes) == 2
    for route in routes:
        assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
        assert route["spec"]["parentRefs"], "a route needs a Gateway"
        for name, port in _backends(route):
            assert name == service["metadata"]["name"] and port in ports
        assert _paths(route) <= PUBLIC_PATHS
        for rule in route["spec"]["rules"]:
            for match in rule["matches"]:
                assert match["path"]["type"] == "PathPrefix"
            assert rule["timeouts"]["request"] != "15s"


def test_sessionless_requests_get_their_own_route_without_affinity() -> None:
    """The header match is exactly the protocol versions the SDK serves without sessions, so a
    2026-07-28 request never waits on a session-era replica, and no initialize (no such header,
    or a handshake version) takes this route."""
    route = resource("HTTPRoute", "agent-mcp-gateway-sessionless")
    values = set()
    for rule in route["spec"]["rules"]:
        for match in rule["matches"]:
            (header,) = match["headers"]
            assert (header["name"].lower(), header["type"]) == ("mcp-protocol-version", "Exact")
            values.add(header["value"])
    assert values == set(MODERN_PROTOCOL_VERSIONS)
    assert not values & set(HANDSHAKE_PROTOCOL_VERSIONS)
    policies = of_kind("BackendTrafficPolicy")
    targets = {ref["name"] for policy in policies for ref in policy["spec"]["targetRefs"]}
    assert route["metadata"]["name"] not in targets


def test_session_era_route_hashes_the_credential() -> None:
    """Envoy Gateway's consistent hash on Authorization: initialize and every later request of
    a session carry the same credential, so they reach the same replica (a hash of
    Mcp-Session-Id could not: the initialize request has none)."""
    (policy,) = of_kind("BackendTrafficPolicy")
    (target,) = policy["spec"]["targetRefs"]
    assert (target["group"], target["kind"]) == ("gateway.networking.k8s.io", "HTTPRoute")
    route = resource("HTTPRoute", target["name"])
    assert all("headers" not in match for rule in route["spec"]["rules"] for match in rule["matches"])
    balancer = policy["spec"]["loadBalancer"]
    assert balancer["type"] == "ConsistentHash"
    assert balancer["consistentHash"]["type"] == "Header"
    assert balancer["consistentHash"]["header"]["name"].lower() == "authorization"


def test_ingress_nginx_route_hashes_the_credential_and_streams() -> None:
    (ingress,) = of_kind("Ingress")
    notes = ingress["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/upstream-hash-by"] == "$http_authorization"
    assert notes["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert int(notes["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    body = notes["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert int(body.rstrip("m")) * 2**20 >= load_settings(gateway_env()).max_body_bytes
    service = gateway_service()
    port_names = {p["name"] for p in service["spec"]["ports"]}
    paths = set()
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == service["metadata"]["name"] and backend["port"]["name"] in port_names
            paths.add(path["path"])
    assert paths == PUBLIC_PATHS


def test_service_monitor_scrapes_every_gateway_pod_as_the_alerts_job() -> None:
    (monitor,) = of_kind("ServiceMonitor")
    service = gateway_service()
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    # The Prometheus Operator names the job after the Service; the alert rules select that job.
    alerts = (ROOT / "prometheus" / "alerts.yml").read_text()
    assert service["metadata"]["name"] in set(re.findall(r'job="([^"]+)"', alerts))
