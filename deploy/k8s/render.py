"""Write deploy/k8s/base from the Helm chart: one source of truth for both ways to deploy.

`make manifests` runs this; tests/deploy/test_kustomize.py fails when base/ is stale. The base
is the chart's default render, with two differences a committed, plain-manifest base needs:

- no generated Secrets (they would be random on every run and would put credentials in git):
  the chart is rendered with its `existingSecret` values pointing at the Secret names it would
  have generated, and each overlay provides those Secrets (see overlays/*/kustomization.yaml);
- no Helm-only parts: the `helm test` hook pod, NOTES.txt, and the `helm.sh/chart` and
  `managed-by: Helm` labels.

Usage: python deploy/k8s/render.py [--check]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import helm_python
import yaml

HERE = Path(__file__).resolve().parent
CHART = HERE.parent / "helm" / "courier"
BASE = HERE / "base"
RELEASE = "courier"
NAMESPACE = "courier"

# The Secrets the overlays must provide, by the names the chart would have generated.
SECRETS = {
    "courier-api-keys": ["api-keys"],
    "courier-redis": ["redis-password"],
    "courier-flower": ["username", "password", "basic-auth", "auth"],
}
BASE_VALUES: dict[str, Any] = {
    "api": {"auth": {"existingSecret": "courier-api-keys"}},
    "redis": {"auth": {"existingSecret": "courier-redis"}},
    "flower": {"auth": {"existingSecret": "courier-flower"}},
}
HEADER = "# Generated from deploy/helm/courier by `make manifests` (deploy/k8s/render.py).\n"


def _plain_labels(node: Any) -> None:
    """Drop Helm's bookkeeping labels wherever a `labels` map appears (never in selectors)."""
    if isinstance(node, dict):
        labels = node.get("labels")
        if isinstance(labels, dict):
            labels.pop("helm.sh/chart", None)
            if labels.get("app.kubernetes.io/managed-by") == "Helm":
                labels["app.kubernetes.io/managed-by"] = "kustomize"
        for value in node.values():
            _plain_labels(value)
    elif isinstance(node, list):
        for item in node:
            _plain_labels(item)


def _is_hook(manifest: dict[str, Any]) -> bool:
    return "helm.sh/hook" in (manifest.get("metadata", {}).get("annotations") or {})


def render_base() -> dict[str, str]:
    """File name -> content of every file in base/, kustomization.yaml included."""
    rendered = helm_python.Chart.load(CHART).render(BASE_VALUES, name=RELEASE, namespace=NAMESPACE)
    files: dict[str, str] = {}
    for path, text in sorted(rendered.items()):
        if not path.endswith(".yaml"):
            continue
        manifests = [m for m in yaml.safe_load_all(text) if m and not _is_hook(m)]
        if not manifests:
            continue
        for manifest in manifests:
            _plain_labels(manifest)
        body = yaml.safe_dump_all(manifests, sort_keys=False, width=100)
        files[Path(path).name] = HEADER + body
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": sorted(files),
    }
    files["kustomization.yaml"] = HEADER + yaml.safe_dump(kustomization, sort_keys=False)
    return files


def stale_files(files: dict[str, str]) -> list[str]:
    """Names in base/ that differ from `files`, are missing, or should not be there."""
    present = {p.name for p in BASE.glob("*.yaml")} if BASE.is_dir() else set()
    differing = [n for n, text in files.items() if not _same(BASE / n, text)]
    return sorted(set(differing) | (present - set(files)))


def _same(path: Path, text: str) -> bool:
    return path.is_file() and path.read_text() == text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if base/ is stale")
    args = parser.parse_args(argv)
    files = render_base()
    stale = stale_files(files)
    if args.check:
        if stale:
            print(f"deploy/k8s/base is stale ({', '.join(stale)}): run `make manifests`")
            return 1
        return 0
    BASE.mkdir(exist_ok=True)
    for name in stale:
        target = BASE / name
        if name in files:
            target.write_text(files[name])
        else:
            target.unlink()
    print(f"deploy/k8s/base: {len(files)} files, {len(stale)} updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
