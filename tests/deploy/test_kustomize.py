"""deploy/k8s: the base is the chart's render (and not stale), and each overlay builds to valid
objects with `kubectl kustomize`."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import ROOT, Manifest, find, one, pod_spec, validate_all

K8S = ROOT / "deploy" / "k8s"


@cache
def render_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("courier_k8s_render", K8S / "render.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@cache
def build(directory: str) -> tuple[Manifest, ...]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with its built-in kustomize) is needed to build deploy/k8s"
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S / directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return tuple(m for m in yaml.safe_load_all(result.stdout) if m)


def secret_refs(manifests: list[Manifest]) -> set[str]:
    names = set()
    for workload in manifests:
        if workload["kind"] not in {"Deployment", "StatefulSet"}:
            continue
        for container in pod_spec(workload)["containers"]:
            for entry in container.get("env", []):
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    names.add(ref["name"])
    return names


def test_base_is_the_current_render_of_the_chart() -> None:
    render = render_module()
    stale = render.stale_files(render.render_base())
    assert stale == [], f"deploy/k8s/base is stale ({stale}): run `make manifests`"


def test_sentinel_component_is_the_current_render_of_the_chart() -> None:
    render = render_module()
    stale = render.stale_files(render.render_sentinel_component(), render.SENTINEL)
    assert stale == [], f"deploy/k8s/components/redis-sentinel is stale ({stale}): `make manifests`"


def test_base_plus_sentinel_component_is_the_charts_sentinel_render(tmp_path: Path) -> None:
    """The Component's computed patches add up to exactly the chart's `redis.mode: sentinel`
    objects: nothing lost, nothing left over from standalone mode."""
    render = render_module()
    tmp_path.joinpath("kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                # kustomize takes relative paths only.
                "resources": [os.path.relpath(K8S / "base", tmp_path)],
                "components": [os.path.relpath(render.SENTINEL, tmp_path)],
            }
        )
    )
    built = {(m["kind"], m["metadata"]["name"]): m for m in build(str(tmp_path))}
    chart = render.render_plain(render.SENTINEL_VALUES)
    expected = {(m["kind"], m["metadata"]["name"]): m for ms in chart.values() for m in ms}
    assert sorted(built) == sorted(expected)
    assert [key for key in expected if built[key] != expected[key]] == []


def test_staleness_check_notices_a_change(tmp_path: Path) -> None:
    render = render_module()
    files = render.render_base()
    files["api-deployment.yaml"] += "# edited\n"
    assert render.stale_files(files) == ["api-deployment.yaml"]


def test_base_has_no_helm_hooks_or_generated_secrets() -> None:
    manifests = list(build("base"))
    assert find(manifests, "Secret") == []
    assert find(manifests, "Pod") == []
    for manifest in manifests:
        labels = manifest["metadata"].get("labels", {})
        assert "helm.sh/chart" not in labels
        assert labels.get("app.kubernetes.io/managed-by") == "kustomize"
    assert secret_refs(manifests) == set(render_module().SECRETS)


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_overlay_is_the_base_plus_patches(overlay: str) -> None:
    kustomization: dict[str, Any] = yaml.safe_load(
        (K8S / "overlays" / overlay / "kustomization.yaml").read_text()
    )
    assert kustomization["resources"] == ["../../base"]
    assert set(kustomization) <= {
        "apiVersion",
        "kind",
        "namespace",
        "resources",
        "images",
        "patches",
        "secretGenerator",
        "generatorOptions",
        "components",
    }


@pytest.mark.parametrize("directory", ["base", "overlays/dev", "overlays/prod"])
def test_build_validates_strictly(directory: str) -> None:
    manifests = list(build(directory))
    assert len(manifests) > 20
    assert validate_all(manifests) == []


def test_dev_overlay_runs_fixed_workers_with_its_own_secrets() -> None:
    manifests = list(build("overlays/dev"))
    # One standalone Redis: dev keeps the chart's default mode.
    assert one(manifests, "StatefulSet", "courier-redis")["spec"]["replicas"] == 1
    assert {m["metadata"].get("namespace") for m in manifests} == {"courier-dev"}
    assert find(manifests, "HorizontalPodAutoscaler") == []
    assert one(manifests, "Deployment", "courier-worker")["spec"]["replicas"] == 1
    secrets = {m["metadata"]["name"]: set(m["data"]) for m in find(manifests, "Secret")}
    assert secrets == {name: set(keys) for name, keys in render_module().SECRETS.items()}
    api = pod_spec(one(manifests, "Deployment", "courier-api"))["containers"][0]
    assert api["image"] == "localhost/courier-api:dev"


def test_prod_overlay_scales_wider_and_expects_secrets_from_outside() -> None:
    manifests = list(build("overlays/prod"))
    assert {m["metadata"].get("namespace") for m in manifests} == {"courier"}
    assert find(manifests, "Secret") == []
    hpa = one(manifests, "HorizontalPodAutoscaler", "courier-worker")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 30)
    assert "replicas" not in one(manifests, "Deployment", "courier-worker")["spec"]
    redis = one(manifests, "StatefulSet", "courier-redis")
    claim = redis["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]
    assert claim["storage"] == "20Gi"
    # Redis with Sentinel: three pods of Redis + Sentinel, clients told where the Sentinels are.
    assert redis["spec"]["replicas"] == 3
    assert [c["name"] for c in pod_spec(redis)["containers"]] == ["redis", "sentinel"]
    assert find(manifests, "Service", "courier-redis") == []
    one(manifests, "Service", "courier-redis-sentinel")
    one(manifests, "PodDisruptionBudget", "courier-redis")
    for name in ("courier-api", "courier-worker", "courier-beat", "courier-flower"):
        (container,) = pod_spec(one(manifests, "Deployment", name))["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert env["COURIER_REDIS_SENTINEL_MASTER"]["value"] == "courier"
        assert "courier-redis-2.courier-redis-headless" in env["COURIER_REDIS_SENTINELS"]["value"]
    flower = one(manifests, "Ingress", "courier-flower")
    assert flower["spec"]["tls"][0]["hosts"] == ["flower.courier.example.com"]
    assert "nginx.ingress.kubernetes.io/auth-type" in flower["metadata"]["annotations"]
