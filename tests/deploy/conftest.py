"""Rendering and validating the Helm chart and the kustomize manifests, without a cluster.

Everything here is a real tool run in-process: Helm v4 (helm_python) renders, kubernetes-validate
checks each built-in object against the OpenAPI schemas of several Kubernetes releases, and the
custom resources the chart emits get a structural check of their own (no CRD schemas bundled).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import kubernetes_validate.utils
import pytest
import yaml
from kubernetes_validate.utils import all_versions

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "courier"
RELEASE = "courier"
NAMESPACE = "courier"

Manifest = dict[str, Any]
Render = Callable[..., list[Manifest]]

# kubernetes-validate parses the same multi-megabyte definitions file again on every call;
# reading each schema file once makes the whole matrix several times faster. The validation
# itself is untouched: same files, same jsonschema validator.
kubernetes_validate.utils.schema_contents = cache(kubernetes_validate.utils.schema_contents)

# The four newest Kubernetes minors kubernetes-validate bundles schemas for.
KUBE_VERSIONS = sorted(set(all_versions()), key=lambda v: tuple(int(p) for p in v.split(".")))[-4:]

# Custom resources: no schema is bundled, so each gets its own required-field check.
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("keda.sh/v1alpha1", "ScaledObject"),
}

# The value sets every chart test renders, as chart repositories keep them (chart-testing's
# `ci/*-values.yaml`): each autoscaling mode, external Redis (with and without Sentinels), ingress
# off, monitoring off, existing secrets, Redis in sentinel mode, and everything optional on.
CI_VALUES = CHART / "ci"
VALUE_MATRIX: dict[str, dict[str, Any]] = {
    path.name.removesuffix("-values.yaml"): yaml.safe_load(path.read_text()) or {}
    for path in sorted(CI_VALUES.glob("*-values.yaml"))
}


@cache
def _chart() -> helm_python.Chart:
    return helm_python.Chart.load(CHART)


def render_templates(values: dict[str, Any] | None = None) -> dict[str, str]:
    """Template path -> rendered text (NOTES.txt included), as `helm template` would print."""
    return _chart().render(values or {}, name=RELEASE, namespace=NAMESPACE)


def parse_manifests(texts: Iterable[tuple[str, str]]) -> list[Manifest]:
    """Every YAML document of the `.yaml` templates, tagged with its template path."""
    manifests = []
    for path, text in texts:
        if not path.endswith(".yaml"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("metadata", {})
                manifests.append({**doc, "__template__": path})
    return manifests


def strip_tag(manifest: Manifest) -> Manifest:
    return {k: v for k, v in manifest.items() if k != "__template__"}


def find(manifests: list[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    return [
        m
        for m in manifests
        if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)
    ]


def one(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    found = find(manifests, kind, name)
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def secret_value(manifests: list[Manifest], name: str, key: str) -> str:
    data = one(manifests, "Secret", name)["data"]
    return base64.b64decode(data[key]).decode()


def pod_spec(workload: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]
    return spec if workload["kind"] == "Pod" else spec["template"]["spec"]


def workloads(manifests: list[Manifest]) -> list[Manifest]:
    return [m for m in manifests if m["kind"] in {"Deployment", "StatefulSet", "Pod", "Job"}]


def validate_builtin(manifest: Manifest) -> list[str]:
    """Strict schema errors of a built-in object, for each of KUBE_VERSIONS.

    A missing schema is an error: kubernetes-validate only warns about it, which would let a
    misspelt apiVersion pass unchecked.
    """
    return list(_validate_builtin_json(json.dumps(strip_tag(manifest), sort_keys=True)))


@cache
def _validate_builtin_json(text: str) -> tuple[str, ...]:
    # Cached on the object's text: most objects are identical across the value matrix, and
    # kubernetes-validate re-reads its large definitions file on every call.
    obj = json.loads(text)
    errors = []
    for version in KUBE_VERSIONS:
        where = f"{obj.get('kind')} {obj['metadata'].get('name')} on {version}"
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            errors.append(f"{where}: no schema for {obj.get('apiVersion')}")
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{where}: {'.'.join(map(str, exc.path))}: {exc.message}")
    return tuple(errors)


def _require(obj: Any, dotted: str, errors: list[str], where: str) -> Any:
    node = obj
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node or node[part] in (None, "", [], {}):
            errors.append(f"{where}: missing {dotted}")
            return None
        node = node[part]
    return node


def _check_monitor(manifest: Manifest, endpoints: str, errors: list[str], where: str) -> None:
    _require(manifest, "spec.selector", errors, where)
    for endpoint in _require(manifest, f"spec.{endpoints}", errors, where) or []:
        _require(endpoint, "port", errors, where)


def _check_rules(manifest: Manifest, errors: list[str], where: str) -> None:
    for group in _require(manifest, "spec.groups", errors, where) or []:
        _require(group, "name", errors, where)
        for rule in _require(group, "rules", errors, where) or []:
            _require(rule, "expr", errors, where)
            if ("alert" in rule) == ("record" in rule):
                errors.append(f"{where}: a rule needs exactly one of alert/record: {rule}")


def _check_scaled_object(manifest: Manifest, errors: list[str], where: str) -> None:
    _require(manifest, "spec.scaleTargetRef.name", errors, where)
    for trigger in _require(manifest, "spec.triggers", errors, where) or []:
        _require(trigger, "type", errors, where)
        _require(trigger, "metadata", errors, where)


def validate_custom(manifest: Manifest) -> list[str]:
    """Required fields of the custom resources the chart emits (their CRDs' required parts)."""
    errors: list[str] = []
    kind = manifest["kind"]
    where = f"{kind} {manifest['metadata'].get('name')}"
    _require(manifest, "metadata.name", errors, where)
    if kind == "ServiceMonitor":
        _check_monitor(manifest, "endpoints", errors, where)
    elif kind == "PodMonitor":
        _check_monitor(manifest, "podMetricsEndpoints", errors, where)
    elif kind == "PrometheusRule":
        _check_rules(manifest, errors, where)
    elif kind == "ScaledObject":
        _check_scaled_object(manifest, errors, where)
    return errors


def validate_all(manifests: list[Manifest]) -> list[str]:
    errors = []
    for manifest in manifests:
        if (manifest.get("apiVersion"), manifest.get("kind")) in CUSTOM_KINDS:
            errors += validate_custom(manifest)
        else:
            errors += validate_builtin(manifest)
    return errors


def expand_vars(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: known names are replaced, `$$` escapes, unknown stay."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", replace, text)


@pytest.fixture(scope="session")
def render() -> Render:
    """Render the chart with the given values into parsed manifests."""

    def _render(values: dict[str, Any] | None = None) -> list[Manifest]:
        return parse_manifests(render_templates(values).items())

    return _render


@pytest.fixture(scope="session")
def default_manifests(render: Render) -> list[Manifest]:
    return render()
