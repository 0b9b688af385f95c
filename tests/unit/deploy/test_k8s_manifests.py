"""deploy/k8s: every manifest against the Kubernetes API's JSON schemas (strict: an unknown or
misspelt field fails), and the policies the manifests promise: non-root pods with a read-only
root file system, probes on /healthz and /readyz, a preStop pause and a grace period longer than
pause plus drain, the autoscaler's numbers, the disruption budget, no secret in any manifest, the
network policy's peers, and commands the image's CLI accepts."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate import utils as k8s_schema

from cygate.settings import Settings, load_settings
from deploy_helpers import (
    DEPLOY,
    assert_cli_accepts,
    image_entrypoint,
    image_uid,
    secret_setting_names,
)

pytestmark = pytest.mark.once

K8S = DEPLOY / "k8s"
Doc = dict[str, Any]

# The oldest Kubernetes minor version the manifests are checked against, and the newest the
# schema package knows.
OLDEST_K8S = "1.30.0"


@functools.cache
def manifests() -> list[tuple[Path, Doc]]:
    """Every object in the folder, in file-name order (parsed once; callers do not mutate)."""
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        out.extend((path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc)
    return out


def one(kind: str, name: str) -> Doc:
    found = [d for _, d in manifests() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def workloads() -> list[Doc]:
    """Every object with a pod template (Deployments, the Job)."""
    return [d for _, d in manifests() if d["kind"] in ("Deployment", "Job")]


def pod_spec(doc: Doc) -> Doc:
    spec: Doc = doc["spec"]["template"]["spec"]
    return spec


def container(doc: Doc) -> Doc:
    containers = pod_spec(doc)["containers"]
    assert len(containers) == 1, doc["metadata"]["name"]
    c: Doc = containers[0]
    return c


def config() -> dict[str, str]:
    data: dict[str, str] = one("ConfigMap", "cygate-config")["data"]
    return data


def environment(doc: Doc, secret_placeholder: str = "from-a-secret") -> dict[str, str]:
    """What the container's process sees: the ConfigMaps it imports, then its own env (a
    value from a Secret becomes ``secret_placeholder``)."""
    c = container(doc)
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        assert "configMapRef" in source, source
        env.update(one("ConfigMap", source["configMapRef"]["name"])["data"])
    for var in c.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            assert "secretKeyRef" in var["valueFrom"], var
            env[var["name"]] = secret_placeholder
    return env


def settings_of(doc: Doc) -> Settings:
    env = environment(doc)
    # Placeholders shaped like the real values (the settings check the URL schemes).
    env["CYGATE_DATABASE_URL"] = "postgresql://cygate@postgres/cygate"
    env["CYGATE_REDIS_URL"] = "redis://redis:6379/0"
    return load_settings(env)


def mounts(doc: Doc) -> dict[str, Doc]:
    """Mount path -> the volume mounted there."""
    volumes = {v["name"]: v for v in pod_spec(doc).get("volumes", [])}
    return {m["mountPath"]: volumes[m["name"]] for m in container(doc).get("volumeMounts", [])}


def under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


# -- the schemas -----------------------------------------------------------------------------


@pytest.mark.parametrize("version", [OLDEST_K8S, k8s_schema.latest_version()])
def test_every_manifest_is_valid_against_the_kubernetes_schema(version: str) -> None:
    docs = manifests()
    assert len(docs) >= 10
    for path, doc in docs:
        try:
            k8s_schema.validate(doc, version, strict=True)
        except k8s_schema.ValidationError as exc:
            pytest.fail(f"{path.name}: {doc['kind']}/{doc['metadata']['name']}: {exc}")


def test_the_schema_check_refuses_a_misspelt_field() -> None:
    doc = copy.deepcopy(one("Deployment", "cygate-gateway"))
    container(doc)["readinesProbe"] = container(doc).pop("readinessProbe")
    with pytest.raises(k8s_schema.ValidationError):
        k8s_schema.validate(doc, k8s_schema.latest_version(), strict=True)


def test_the_folder_holds_the_expected_objects() -> None:
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for _, d in manifests())
    assert kinds == [
        "ConfigMap/cygate-config",
        "Deployment/cygate-gateway",
        "Deployment/cygate-worker",
        "HorizontalPodAutoscaler/cygate-gateway",
        "Job/cygate-migrate",
        "NetworkPolicy/cygate-gateway",
        "NetworkPolicy/cygate-migrate",
        "NetworkPolicy/cygate-worker",
        "PodDisruptionBudget/cygate-gateway",
        "Service/cygate-gateway",
    ]


# -- pods: user, file system, resources ------------------------------------------------------


@pytest.mark.parametrize("name", ["cygate-gateway", "cygate-worker", "cygate-migrate"])
def test_pods_run_as_the_image_user_with_a_read_only_root(name: str) -> None:
    doc = next(d for d in workloads() if d["metadata"]["name"] == name)
    pod = pod_spec(doc)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == image_uid() != 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    sc = container(doc)["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    # What must be writable is an emptyDir: /tmp, and every folder the settings write to.
    writable = [p for p, v in mounts(doc).items() if "emptyDir" in v]
    assert "/tmp" in writable
    settings = settings_of(doc)
    for path in (settings.metrics.dir, settings.identity.jwt_key_dir):
        assert any(under(path, w) for w in writable), path


def _quantity(value: str | int) -> float:
    text = str(value)
    for suffix, factor in (("Mi", 2**20), ("Gi", 2**30), ("Ki", 2**10), ("m", 1e-3)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


@pytest.mark.parametrize("name", ["cygate-gateway", "cygate-worker", "cygate-migrate"])
def test_containers_have_requests_and_limits(name: str) -> None:
    doc = next(d for d in workloads() if d["metadata"]["name"] == name)
    resources = container(doc)["resources"]
    for res in ("cpu", "memory"):
        request = _quantity(resources["requests"][res])
        limit = _quantity(resources["limits"][res])
        assert 0 < request <= limit, (res, request, limit)


# -- the gateway: probes, drain, autoscaling, disruption budget, service -----------------------


def test_gateway_probes_use_healthz_and_readyz_on_the_served_port() -> None:
    gw = one("Deployment", "cygate-gateway")
    c = container(gw)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": settings_of(gw).server.port}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    # The image's own HEALTHCHECK asks the same liveness path.
    assert "/healthz" in (DEPLOY.parent / "Dockerfile").read_text()


def test_gateway_pauses_before_sigterm_and_its_grace_covers_pause_and_drain() -> None:
    gw = one("Deployment", "cygate-gateway")
    command = container(gw)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pause = float(command[1])
    assert pause >= 5  # endpoint removal reaches kube-proxy and the ingress controller
    drain = settings_of(gw).server.shutdown_timeout
    grace = pod_spec(gw)["terminationGracePeriodSeconds"]
    assert grace > pause + drain, (grace, pause, drain)
    # A rolling update never lowers the number of serving pods.
    assert gw["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_the_autoscaler_scales_the_gateway_on_cpu() -> None:
    hpa = one("HorizontalPodAutoscaler", "cygate-gateway")
    gw = one("Deployment", "cygate-gateway")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": gw["metadata"]["name"],
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 20)
    assert hpa["spec"]["metrics"] == [
        {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 70},
            },
        }
    ]
    # The autoscaler owns the replica count: a `replicas` in the Deployment would fight it.
    assert "replicas" not in gw["spec"]
    # Utilisation is relative to the request, so the gateway must have one.
    assert container(gw)["resources"]["requests"]["cpu"]


def _selects(selector: dict[str, str], doc: Doc) -> bool:
    labels = doc["spec"]["template"]["metadata"]["labels"]
    return all(labels.get(k) == v for k, v in selector.items())


def test_the_disruption_budget_keeps_gateways_serving() -> None:
    pdb = one("PodDisruptionBudget", "cygate-gateway")
    gw = one("Deployment", "cygate-gateway")
    hpa = one("HorizontalPodAutoscaler", "cygate-gateway")
    assert _selects(pdb["spec"]["selector"]["matchLabels"], gw)
    assert not _selects(pdb["spec"]["selector"]["matchLabels"], one("Deployment", "cygate-worker"))
    if "maxUnavailable" in pdb["spec"]:
        assert pdb["spec"]["maxUnavailable"] == 1
    else:
        assert 1 <= pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]


def test_the_service_selects_gateway_pods_on_the_http_port() -> None:
    svc = one("Service", "cygate-gateway")
    assert _selects(svc["spec"]["selector"], one("Deployment", "cygate-gateway"))
    assert not _selects(svc["spec"]["selector"], one("Deployment", "cygate-worker"))
    assert [p["targetPort"] for p in svc["spec"]["ports"]] == ["http"]


# -- secrets ---------------------------------------------------------------------------------


def test_no_manifest_holds_a_secret() -> None:
    secrets = secret_setting_names()
    assert {"CYGATE_CACHE_KEY_SECRET", "CYGATE_PAYMENT_WEBHOOK_SECRET"} <= secrets
    for path, doc in manifests():
        assert doc["kind"] != "Secret", f"{path.name}: Secrets are created outside the folder"
        text = path.read_text()
        assert "BEGIN" not in text and "PRIVATE KEY" not in text, path.name
    assert not secrets & set(config()), "a secret setting in the ConfigMap"
    for doc in workloads():
        for var in container(doc).get("env", []):
            if var["name"] in secrets:
                assert "value" not in var, f"{doc['metadata']['name']}: {var['name']} literal"
                assert var["valueFrom"]["secretKeyRef"]["name"] == "cygate-secrets"


def test_secret_settings_the_gateway_needs_come_from_secrets() -> None:
    gw = one("Deployment", "cygate-gateway")
    from_secrets = {
        v["name"] for v in container(gw)["env"] if "secretKeyRef" in v.get("valueFrom", {})
    }
    assert {
        "CYGATE_DATABASE_URL",
        "CYGATE_REDIS_URL",
        "CYGATE_CACHE_KEY_SECRET",
        "CYGATE_PAYMENT_WEBHOOK_SECRET",
        "CYGATE_METRICS_TOKEN",
    } <= from_secrets
    # The signing keys are files from the Secret cygate-jwt-keys, mounted read-only.
    settings = settings_of(gw)
    assert settings.server.environment == "production"
    assert settings.identity.jwt_key_files
    key_mounts = {p: v for p, v in mounts(gw).items() if v.get("secret", {}).get("secretName")}
    for key_file in settings.identity.jwt_key_files:
        folder = next(p for p in key_mounts if under(key_file, p))
        assert key_mounts[folder]["secret"]["secretName"] == "cygate-jwt-keys"
    # So is the MFA key (production refuses to start without it), from cygate-mfa-key.
    assert settings.identity.mfa_key_file
    folder = next(p for p in key_mounts if under(settings.identity.mfa_key_file, p))
    assert key_mounts[folder]["secret"]["secretName"] == "cygate-mfa-key"
    read_only = {m["mountPath"] for m in container(gw)["volumeMounts"] if m.get("readOnly")}
    assert set(key_mounts) <= read_only


@pytest.mark.parametrize("name", ["cygate-gateway", "cygate-worker", "cygate-migrate"])
def test_every_pod_gets_settings_that_load(name: str) -> None:
    doc = next(d for d in workloads() if d["metadata"]["name"] == name)
    settings = settings_of(doc)  # raises on an unknown CYGATE_* name or a bad value
    assert settings.server.environment == "production"


# -- network policy --------------------------------------------------------------------------


def _peers(rules: list[Doc], key: str) -> set[tuple[str, tuple[int, ...]]]:
    """Each rule's peers as (the peer's app label, its ports)."""
    out = set()
    for rule in rules:
        ports = tuple(sorted({p["port"] for p in rule.get("ports", [])}))
        for peer in rule[key]:
            labels = peer["podSelector"]["matchLabels"]
            name = (
                labels.get("app.kubernetes.io/name")
                or labels.get("k8s-app")
                or ",".join(f"{k}={v}" for k, v in labels.items())
            )
            out.add((name, ports))
    return out


def test_the_gateway_talks_only_to_what_it_needs() -> None:
    policy = one("NetworkPolicy", "cygate-gateway")
    gw = one("Deployment", "cygate-gateway")
    assert _selects(policy["spec"]["podSelector"]["matchLabels"], gw)
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    port = settings_of(gw).server.port
    assert _peers(policy["spec"]["ingress"], "from") == {
        ("ingress-nginx", (port,)),
        ("prometheus", (port,)),
    }
    processor_port = int(settings_of(gw).payments.processor_url.rstrip("/").rsplit(":", 1)[1])
    assert _peers(policy["spec"]["egress"], "to") == {
        ("kube-dns", (53,)),
        ("postgresql", (5432,)),
        ("redis", (6379,)),
        ("payment-processor", (processor_port,)),
        ("cygate.io/upstream=true", ()),
    }
    # Nothing is open to an address range (every peer is a selected pod).
    for rule in policy["spec"]["egress"]:
        assert all("ipBlock" not in peer for peer in rule["to"])


def test_the_worker_and_the_migration_serve_nothing_and_reach_only_their_stores() -> None:
    for name, stores in (
        ("cygate-worker", {("postgresql", (5432,)), ("redis", (6379,))}),
        ("cygate-migrate", {("postgresql", (5432,))}),
    ):
        policy = one("NetworkPolicy", name)
        doc = next(d for d in workloads() if d["metadata"]["name"] == name)
        assert _selects(policy["spec"]["podSelector"]["matchLabels"], doc)
        assert "Ingress" in policy["spec"]["policyTypes"]
        assert not policy["spec"].get("ingress")
        assert _peers(policy["spec"]["egress"], "to") == {("kube-dns", (53,)), *stores}


def test_every_pod_is_covered_by_a_network_policy() -> None:
    policies = [d for _, d in manifests() if d["kind"] == "NetworkPolicy"]
    for doc in workloads():
        assert any(_selects(p["spec"]["podSelector"]["matchLabels"], doc) for p in policies)


# -- commands --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "subcommand"),
    [("cygate-gateway", "serve"), ("cygate-worker", "worker"), ("cygate-migrate", "migrate")],
)
def test_containers_run_a_command_the_image_cli_accepts(name: str, subcommand: str) -> None:
    doc = next(d for d in workloads() if d["metadata"]["name"] == name)
    c = container(doc)
    assert image_entrypoint() == ["cygate"]
    # No `command`: the image's ENTRYPOINT (cygate) runs with these arguments.
    assert c.get("command", image_entrypoint()) == image_entrypoint()
    args = c["args"]
    assert args[0] == subcommand
    assert_cli_accepts(args)


def test_the_gateways_leave_the_events_to_the_worker() -> None:
    gateway = settings_of(one("Deployment", "cygate-gateway"))
    worker = settings_of(one("Deployment", "cygate-worker"))
    assert gateway.events.relay is False
    assert gateway.events.consumers == []
    assert worker.events.consumers  # `cygate worker` runs these
    assert one("Deployment", "cygate-worker")["spec"]["replicas"] >= 1


def test_the_migration_runs_before_the_rollout() -> None:
    job = one("Job", "cygate-migrate")
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert job["spec"]["backoffLimit"] >= 1
    annotations = job["metadata"]["annotations"]
    assert annotations["argocd.argoproj.io/hook"] == "PreSync"
    assert "pre-upgrade" in annotations["helm.sh/hook"]
    # `kubectl apply -f deploy/k8s/` takes the files in name order: the Job before the
    # Deployments.
    order = [p.name for p, _ in manifests()]
    job_file = next(p.name for p, d in manifests() if d["kind"] == "Job")
    first_deployment = next(p.name for p, d in manifests() if d["kind"] == "Deployment")
    assert order.index(job_file) < order.index(first_deployment)
    # The same image as the gateway (its migrations are the ones the gateway expects).
    assert container(job)["image"] == container(one("Deployment", "cygate-gateway"))["image"]


def test_generated_secrets_never_reach_the_image() -> None:
    """Development writes its generated secrets and keys under .cygate and .data (the default
    cache_key_file, payment_webhook_secret_file, jwt_key_dir): the build context leaves them out,
    so no image carries one; pods get theirs from Secrets."""
    ignored = {
        line.strip().rstrip("/")
        for line in (DEPLOY.parent / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    defaults = Settings()
    for path in (
        defaults.cache.key_file,
        defaults.payments.webhook_secret_file,
        defaults.identity.jwt_key_dir,
    ):
        top = Path(path).parts[0]
        assert top in ignored, f"{path}: {top} is not in .dockerignore"
