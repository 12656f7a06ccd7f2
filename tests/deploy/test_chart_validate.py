"""Every rendered object against the Kubernetes API schemas, and the raw YAML through yamllint."""

from __future__ import annotations

import pytest
from yamllint import linter
from yamllint.config import YamlLintConfig

from tests.deploy.conftest import (
    KUBE_VERSIONS,
    VALUE_MATRIX,
    Render,
    render_templates,
    validate_all,
    validate_builtin,
)

# Rendered output, not templates: duplicate keys and broken indentation are what matter here;
# long lines (embedded scripts, PromQL) and comment placement are the templates' business.
YAMLLINT = YamlLintConfig(
    """
extends: default
rules:
  line-length: disable
  document-start: disable
  comments: disable
  comments-indentation: disable
  indentation: {spaces: consistent, indent-sequences: whatever}
  truthy: {check-keys: false}
  key-duplicates: enable
"""
)


def test_four_newest_kubernetes_versions_are_checked() -> None:
    assert len(KUBE_VERSIONS) == 4
    assert KUBE_VERSIONS[-1] >= "1.37"


@pytest.mark.parametrize("name", sorted(VALUE_MATRIX))
def test_every_object_validates_strictly(name: str, render: Render) -> None:
    manifests = render(VALUE_MATRIX[name])
    assert manifests
    assert validate_all(manifests) == []


def test_validation_catches_unknown_fields_and_unknown_kinds() -> None:
    """The checks are strict: a typo'd field or an API that does not exist fails."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "x"},
        "spec": {"containers": [{"name": "x", "image": "x", "cmd": ["typo"]}]},
    }
    assert validate_builtin(pod)
    made_up = {"apiVersion": "apps/v9", "kind": "Deployment", "metadata": {"name": "x"}}
    assert any("no schema" in error for error in validate_builtin(made_up))
    scaled = {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "x"}}
    assert validate_all([scaled])


def helm_template_stream(values: dict[str, object]) -> str:
    """The render as `helm template` prints it: one `---` document per template."""
    return "".join(
        f"---\n# Source: {path}\n{text.rstrip()}\n"
        for path, text in sorted(render_templates(values).items())
        if path.endswith(".yaml") and text.strip()
    )


@pytest.mark.parametrize("name", sorted(VALUE_MATRIX))
def test_rendered_yaml_passes_yamllint(name: str) -> None:
    stream = helm_template_stream(VALUE_MATRIX[name])
    problems = [f"{p.line}: {p.message}" for p in linter.run(stream, YAMLLINT)]
    assert problems == []


def test_yamllint_catches_duplicate_keys() -> None:
    problems = list(linter.run("a:\n  b: 1\n  b: 2\n", YAMLLINT))
    assert any("duplication" in p.message for p in problems)
