"""Write deploy/k8s/base from the Helm chart: one source of truth for both ways to deploy.

`make manifests` runs this; tests/deploy/test_kustomize.py fails when base/ or
components/redis-sentinel/ is stale. The base is the chart's default render, with two
differences a committed, plain-manifest base needs:

- no generated Secrets (they would be random on every run and would put credentials in git):
  the chart is rendered with its `existingSecret` values pointing at the Secret names it would
  have generated, and each overlay provides those Secrets (see overlays/*/kustomization.yaml);
- no Helm-only parts: the `helm test` hook pod, NOTES.txt, and the `helm.sh/chart` and
  `managed-by: Helm` labels.

components/redis-sentinel is a kustomize Component that turns the base into the chart's
`redis.mode: sentinel` render (same values otherwise): the objects only that mode has, a delete
patch for each object it does not have, and a JSON patch for each object that differs (computed
here, so base + component is exactly the chart's render).

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
SENTINEL = HERE / "components" / "redis-sentinel"
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
SENTINEL_VALUES: dict[str, Any] = {
    **BASE_VALUES,
    "redis": {**BASE_VALUES["redis"], "mode": "sentinel"},
}
HEADER = "# Generated from deploy/helm/courier by `make manifests` (deploy/k8s/render.py).\n"
Manifest = dict[str, Any]


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


def render_plain(values: dict[str, Any]) -> dict[str, list[Manifest]]:
    """Template file name -> its objects, without hooks and Helm's labels."""
    rendered = helm_python.Chart.load(CHART).render(values, name=RELEASE, namespace=NAMESPACE)
    objects: dict[str, list[Manifest]] = {}
    for path, text in sorted(rendered.items()):
        if not path.endswith(".yaml"):
            continue
        manifests = [m for m in yaml.safe_load_all(text) if m and not _is_hook(m)]
        for manifest in manifests:
            _plain_labels(manifest)
        if manifests:
            objects[Path(path).name] = manifests
    return objects


def render_base() -> dict[str, str]:
    """File name -> content of every file in base/, kustomization.yaml included."""
    files: dict[str, str] = {}
    for name, manifests in render_plain(BASE_VALUES).items():
        body = yaml.safe_dump_all(manifests, sort_keys=False, width=100)
        files[name] = HEADER + body
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": sorted(files),
    }
    files["kustomization.yaml"] = HEADER + yaml.safe_dump(kustomization, sort_keys=False)
    return files


def _key(manifest: Manifest) -> tuple[str, str]:
    return manifest["kind"], manifest["metadata"]["name"]


def _pointer(path: list[str | int]) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


def json_patch(old: Any, new: Any, path: list[str | int] | None = None) -> list[dict[str, Any]]:
    """RFC 6902 operations that turn `old` into `new`: maps key by key, lists of the same
    length item by item, anything else (a list that grew or shrank) replaced whole."""
    path = path or []
    if isinstance(old, dict) and isinstance(new, dict):
        ops: list[dict[str, Any]] = []
        for key in old:
            if key not in new:
                ops.append({"op": "remove", "path": _pointer([*path, key])})
        for key, value in new.items():
            if key not in old:
                ops.append({"op": "add", "path": _pointer([*path, key]), "value": value})
            else:
                ops += json_patch(old[key], value, [*path, key])
        return ops
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [
            op
            for i, (a, b) in enumerate(zip(old, new, strict=True))
            for op in json_patch(a, b, [*path, i])
        ]
    if old == new:
        return []
    return [{"op": "replace", "path": _pointer(path), "value": new}]


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (scripts, redis.conf) as `|` blocks, so a patch reads like the file."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)


def _dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_BlockDumper, sort_keys=False, width=100)


def render_sentinel_component() -> dict[str, str]:
    """File name -> content of every file in components/redis-sentinel/."""
    base = {_key(m): m for ms in render_plain(BASE_VALUES).values() for m in ms}
    sentinel = render_plain(SENTINEL_VALUES)
    files: dict[str, str] = {}
    resources: list[str] = []
    patches: list[dict[str, Any]] = []
    for name, manifests in sentinel.items():
        added = [m for m in manifests if _key(m) not in base]
        if added:
            files[name] = HEADER + yaml.safe_dump_all(added, sort_keys=False, width=100)
            resources.append(name)
        for manifest in manifests:
            old = base.get(_key(manifest))
            if old is not None and old != manifest:
                kind, object_name = _key(manifest)
                patch_file = f"patch-{kind.lower()}-{object_name}.yaml"
                files[patch_file] = HEADER + _dump(json_patch(old, manifest))
                patches.append({"path": patch_file, "target": {"kind": kind, "name": object_name}})
    kept = {_key(m) for ms in sentinel.values() for m in ms}
    for key, old in base.items():
        if key not in kept:
            gone = {
                "$patch": "delete",
                "apiVersion": old["apiVersion"],
                "kind": old["kind"],
                "metadata": {"name": old["metadata"]["name"], "namespace": NAMESPACE},
            }
            patch_file = f"delete-{key[0].lower()}-{key[1]}.yaml"
            files[patch_file] = HEADER + _dump(gone)
            patches.append({"path": patch_file})
    component = {
        "apiVersion": "kustomize.config.k8s.io/v1alpha1",
        "kind": "Component",
        "resources": resources,
        "patches": patches,
    }
    files["kustomization.yaml"] = (
        HEADER
        + "# redis.mode: sentinel (docs/deploy/sentinel.md); used by overlays/prod.\n"
        + yaml.safe_dump(component, sort_keys=False, width=100)
    )
    return files


def stale_files(files: dict[str, str], directory: Path = BASE) -> list[str]:
    """Names in `directory` that differ from `files`, are missing, or should not be there."""
    present = {p.name for p in directory.glob("*.yaml")} if directory.is_dir() else set()
    differing = [n for n, text in files.items() if not _same(directory / n, text)]
    return sorted(set(differing) | (present - set(files)))


def _same(path: Path, text: str) -> bool:
    return path.is_file() and path.read_text() == text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if base/ is stale")
    args = parser.parse_args(argv)
    outputs = [(BASE, render_base()), (SENTINEL, render_sentinel_component())]
    status = 0
    for directory, files in outputs:
        stale = stale_files(files, directory)
        where = directory.relative_to(HERE.parent.parent)
        if args.check:
            if stale:
                print(f"{where} is stale ({', '.join(stale)}): run `make manifests`")
                status = 1
            continue
        directory.mkdir(parents=True, exist_ok=True)
        for name in stale:
            target = directory / name
            if name in files:
                target.write_text(files[name])
            else:
                target.unlink()
        print(f"{where}: {len(files)} files, {len(stale)} updated")
    return status


if __name__ == "__main__":
    sys.exit(main())
