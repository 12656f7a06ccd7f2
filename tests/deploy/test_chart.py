"""The Helm chart: lint, schema, and what the rendered objects promise an operator."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

from tests.deploy.conftest import (
    CHART,
    VALUE_MATRIX,
    Manifest,
    Render,
    find,
    one,
    pod_spec,
    render_templates,
    secret_value,
    workloads,
)
from worker.core.names import DEFAULT_QUEUE

MONITORING = CHART.parent.parent / "monitoring"


def containers(workload: Manifest) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container.get("env", [])}


@pytest.mark.parametrize("kube_version", ["v1.29.0", "v1.33.0"])
def test_chart_lints_without_warnings_in_strict_mode(kube_version: str) -> None:
    result = helm_python.lint(CHART, strict=True, kube_version=kube_version)
    assert result["errors"] == []
    # Severity 1 is informational (e.g. "icon is recommended"); 2 warning, 3 error.
    assert [m for m in result["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("name", sorted(VALUE_MATRIX))
def test_chart_renders_and_lints_every_value_set(name: str, render: Render) -> None:
    manifests = render(VALUE_MATRIX[name])
    assert find(manifests, "Deployment", "courier-api")
    result = helm_python.lint(CHART, values=VALUE_MATRIX[name], strict=True)
    assert result["errors"] == [], result


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"replicas": 3}, "additional properties 'replicas' not allowed"),
        ({"api": {"replicaCount": "two"}}, "/api/replicaCount"),
        ({"worker": {"autoscaling": {"mode": "fast"}}}, "/worker/autoscaling/mode"),
        ({"worker": {"autoscaling": {"targetBacklogPerReplica": "10"}}}, "targetBacklog"),
        ({"redis": {"appendfsync": "no"}}, "/redis/appendfsync"),
        ({"config": {"queues": []}}, "/config/queues"),
        # null deletes a default in Helm: a container without limits is refused.
        ({"api": {"resources": {"limits": None}}}, "limits"),
        ({"worker": {"resources": {"limits": {"cpu": True}}}}, "/worker/resources/limits/cpu"),
        ({"flower": {"ingress": {"enabled": "yes"}}}, "/flower/ingress/enabled"),
        ({"api": {"ingress": {"hosts": ["x"]}}}, "additional properties 'hosts'"),
        ({"opentelemetry": {"sampler": "sometimes"}}, "/opentelemetry/sampler"),
        ({"opentelemetry": {"samplerArg": "1.5"}}, "/opentelemetry/samplerArg"),
        ({"redis": {"mode": "cluster"}}, "/redis/mode"),
        ({"redis": {"sentinel": {"replicas": 1}}}, "/redis/sentinel/replicas"),
        ({"redis": {"sentinel": {"antiAffinity": "soft"}}}, "/redis/sentinel/antiAffinity"),
        ({"externalRedis": {"sentinels": "a:26379,b:26379"}}, "/externalRedis/sentinels"),
        ({"worker": {"pool": "solo"}}, "/worker/pool"),
    ],
)
def test_schema_rejects_bad_values(values: dict[str, Any], complaint: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as raised:
        render_templates(values)
    assert complaint in str(raised.value)


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"config": {"taskTimeLimit": 4000}}, "brokerVisibilityTimeout must exceed"),
        ({"config": {"taskSoftTimeLimit": 300}}, "taskSoftTimeLimit must be below"),
        ({"worker": {"terminationGracePeriodSeconds": 100}}, "must exceed config.taskTimeLimit"),
        ({"api": {"terminationGracePeriodSeconds": 20}}, "must exceed api.preStopSleepSeconds"),
        ({"redis": {"enabled": False}}, "externalRedis.url or externalRedis.existingSecret"),
        (
            {"redis": {"mode": "sentinel", "sentinel": {"replicas": 4}}},
            r"replicas \(4\) must be odd and at least 3",
        ),
        (
            {"redis": {"mode": "sentinel", "sentinel": {"quorum": 4}}},
            r"quorum \(4\) cannot exceed redis.sentinel.replicas \(3\)",
        ),
        (
            {
                "redis": {"enabled": False},
                "externalRedis": {"url": "redis://x:6379/0", "sentinels": ["s:26379"]},
            },
            "externalRedis.sentinelMaster is required",
        ),
    ],
)
def test_inconsistent_values_fail_with_a_message(values: dict[str, Any], complaint: str) -> None:
    with pytest.raises(helm_python.HelmRenderError, match=complaint):
        render_templates(values)


@dataclass(frozen=True)
class ValueLine:
    number: int
    indent: int
    key: str
    rest: str  # what follows the colon
    parents: tuple[int, ...]  # line numbers of the enclosing keys
    comments: tuple[str, ...]  # the comment lines right above, nearest first


def value_lines(lines: list[str]) -> Iterator[ValueLine]:
    """Every `key:` line of a values file, with its enclosing keys and its comments."""
    stack: list[tuple[int, int]] = []  # (indent, line number) of the enclosing keys
    for number, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "-")) or ":" not in stripped:
            continue
        indent = len(line) - len(line.lstrip())
        while stack and stack[-1][0] >= indent:
            stack.pop()
        comments = []
        above = number - 1
        while above >= 0 and lines[above].strip().startswith("#"):
            comments.append(lines[above].strip())
            above -= 1
        key, _, rest = stripped.partition(":")
        yield ValueLine(number, indent, key, rest, tuple(n for _, n in stack), tuple(comments))
        stack.append((indent, number))


def has_helm_doc(entry: ValueLine) -> bool:
    return any(c.startswith("# --") for c in entry.comments)


def undocumented_values(lines: list[str]) -> list[str]:
    """Leaf keys of a values file without a helm-docs `# --` comment.

    A key documented by `# --` covers everything nested under it (a block value such as a
    securityContext); a mapping whose children are documented needs no comment of its own.
    """
    missing = []
    documented: dict[int, bool] = {}
    for entry in value_lines(lines):
        documented[entry.number] = has_helm_doc(entry) or any(documented[p] for p in entry.parents)
        following = next((n for n in lines[entry.number + 1 :] if n.strip()), "")
        is_parent = (
            not entry.rest.strip()
            and len(following) - len(following.lstrip()) > entry.indent
            and not following.strip().startswith("-")
        )
        if not is_parent and not documented[entry.number]:
            missing.append(entry.key)
    return missing


def test_every_value_is_documented_for_helm_docs() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    assert undocumented_values(lines) == []
    # The checker itself notices a missing comment.
    assert undocumented_values(["a:", "  # -- fine", "  b: 1", "  c: 2"]) == ["c"]


def test_schema_closes_every_top_level_key_and_matches_values() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(values)


def test_api_and_worker_are_separate_deployments_with_their_own_images(
    default_manifests: list[Manifest],
) -> None:
    api = one(default_manifests, "Deployment", "courier-api")
    worker = one(default_manifests, "Deployment", "courier-worker")
    api_image = containers(api)[0]["image"]
    worker_image = containers(worker)[0]["image"]
    assert api_image != worker_image
    assert api_image.startswith("localhost/courier-api:")
    assert worker_image.startswith("localhost/courier-worker:")
    assert containers(api)[0]["command"] == ["gunicorn"]
    assert containers(worker)[0]["command"] == ["python", "-m", "worker.supervisor"]


def test_api_probes_and_graceful_shutdown(default_manifests: list[Manifest]) -> None:
    api = one(default_manifests, "Deployment", "courier-api")
    (container,) = containers(api)
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    sleep = container["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    graceful = int(env_of(container)["COURIER_API_GRACEFUL_TIMEOUT"]["value"])
    assert pod_spec(api)["terminationGracePeriodSeconds"] > int(sleep[1]) + graceful


def test_worker_grace_period_outlasts_the_longest_task(default_manifests: list[Manifest]) -> None:
    config = one(default_manifests, "ConfigMap", "courier-config")["data"]
    worker = one(default_manifests, "Deployment", "courier-worker")
    limit = int(config["COURIER_TASK_TIME_LIMIT"])
    assert pod_spec(worker)["terminationGracePeriodSeconds"] > limit
    assert int(config["COURIER_BROKER_VISIBILITY_TIMEOUT"]) > limit
    probe = containers(worker)[0]["livenessProbe"]
    assert probe["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert containers(worker)[0]["readinessProbe"]["httpGet"]["path"] == "/readyz"
    ports = {p["name"]: p["containerPort"] for p in containers(worker)[0]["ports"]}
    assert ports["metrics"] == int(config["COURIER_WORKER_METRICS_PORT"]) == 9808


def test_hpa_scales_the_worker_on_queue_backlog_per_replica(
    default_manifests: list[Manifest],
) -> None:
    hpa = one(default_manifests, "HorizontalPodAutoscaler", "courier-worker")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "courier-worker",
    }
    external = [m["external"] for m in hpa["spec"]["metrics"] if m["type"] == "External"]
    assert len(external) == 1
    assert external[0]["metric"]["name"] == "courier_queue_backlog"
    assert external[0]["target"]["type"] == "AverageValue"
    assert external[0]["metric"]["selector"]["matchExpressions"][0]["values"] == [DEFAULT_QUEUE]
    assert any(m["type"] == "Resource" for m in hpa["spec"]["metrics"])
    behavior = hpa["spec"]["behavior"]
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 0
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 60
    # The autoscaler owns the count: a replicas field would be reset by every `helm upgrade`.
    assert "replicas" not in one(default_manifests, "Deployment", "courier-worker")["spec"]


def test_prometheus_adapter_rule_serves_max_by_queue_name(
    default_manifests: list[Manifest],
) -> None:
    config = one(default_manifests, "ConfigMap", "courier-prometheus-adapter-rule")
    (rule,) = yaml.safe_load(config["data"]["external-rules.yaml"])["externalRules"]
    assert rule["name"]["as"] == "courier_queue_backlog"
    assert rule["metricsQuery"].startswith("max by (queue_name) (")
    assert "courier_queue_backlog" in rule["seriesQuery"]


def test_keda_mode_emits_a_scaled_object_and_no_hpa(render: Render) -> None:
    manifests = render(VALUE_MATRIX["keda"])
    assert find(manifests, "HorizontalPodAutoscaler") == []
    assert find(manifests, "ConfigMap", "courier-prometheus-adapter-rule") == []
    scaled = one(manifests, "ScaledObject", "courier-worker")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "courier-worker"
    prometheus = next(t for t in scaled["spec"]["triggers"] if t["type"] == "prometheus")
    query = prometheus["metadata"]["query"]
    assert "max by (queue_name) (courier_queue_backlog{" in query
    # The API pods export the backlog while no worker is up: KEDA can scale up from zero.
    assert 'job=~"courier-api|courier-celery-worker"' in query
    assert f'queue_name=~"{DEFAULT_QUEUE}"' in query
    assert prometheus["metricType"] == "AverageValue"
    assert "replicas" not in one(manifests, "Deployment", "courier-worker")["spec"]


def test_mode_none_sets_the_replica_count_and_no_autoscaler(render: Render) -> None:
    manifests = render(VALUE_MATRIX["no-autoscaling"])
    assert find(manifests, "HorizontalPodAutoscaler") == []
    assert find(manifests, "ScaledObject") == []
    assert one(manifests, "Deployment", "courier-worker")["spec"]["replicas"] == 3


def test_the_worker_pool_is_inline_unless_prefork_is_chosen(render: Render) -> None:
    """Inline (the default): the supervisor runs `concurrency` inline workers, so
    `worker.concurrency` keeps its meaning with both pools. Prefork: celery is PID 1."""
    (default,) = containers(one(render(), "Deployment", "courier-worker"))
    assert env_of(default)["COURIER_WORKER_POOL"]["value"] == "inline"
    assert default["command"] == ["python", "-m", "worker.supervisor"]
    commands = {
        "prefork": ["celery", "-A", "worker.celery_app", "worker"],
        "inline": ["python", "-m", "worker.supervisor"],
    }
    for pool in ("prefork", "inline"):
        for concurrency in (1, 3):
            values = {"worker": {"pool": pool, "concurrency": concurrency}}
            (worker,) = containers(one(render(values), "Deployment", "courier-worker"))
            assert env_of(worker)["COURIER_WORKER_POOL"]["value"] == pool
            assert [*worker["command"], *worker["args"]][: len(commands[pool])] == commands[pool]
            assert f"--concurrency={concurrency}" in worker["args"]
            assert not any(arg.startswith("--pool") for arg in worker["args"])


def test_beat_runs_exactly_one_replica_with_recreate(default_manifests: list[Manifest]) -> None:
    beat = one(default_manifests, "Deployment", "courier-beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}
    assert containers(beat)[0]["args"][:3] == ["-A", "worker.celery_app", "beat"]


def test_redis_is_a_durable_statefulset_with_a_pvc(default_manifests: list[Manifest]) -> None:
    redis = one(default_manifests, "StatefulSet", "courier-redis")
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert redis["spec"]["serviceName"] == "courier-redis-headless"
    headless = one(default_manifests, "Service", "courier-redis-headless")
    assert headless["spec"]["clusterIP"] == "None"
    one(default_manifests, "Service", "courier-redis")
    conf = one(default_manifests, "ConfigMap", "courier-redis")["data"]["redis.conf"]
    assert "appendonly yes" in conf
    assert "appendfsync everysec" in conf
    assert "maxmemory-policy noeviction" in conf
    (container,) = containers(redis)
    assert container["args"][-2:] == ["--requirepass", "$(REDIS_PASSWORD)"]
    assert "readinessProbe" in container and "livenessProbe" in container


def test_redis_fsync_and_exporter_are_switchable(render: Render) -> None:
    manifests = render(VALUE_MATRIX["everything-on"])
    conf = one(manifests, "ConfigMap", "courier-redis")["data"]["redis.conf"]
    assert "appendfsync always" in conf
    assert "maxmemory 400mb" in conf
    names = [c["name"] for c in containers(one(manifests, "StatefulSet", "courier-redis"))]
    assert names == ["redis", "redis-exporter"]
    one(manifests, "PodMonitor", "courier-redis")


def test_redis_maxmemory_is_80_percent_of_its_memory_limit_unless_given(render: Render) -> None:
    def maxmemory(values: dict[str, Any]) -> list[str]:
        conf = one(render(values), "ConfigMap", "courier-redis")["data"]["redis.conf"]
        return [line for line in conf.splitlines() if line.startswith("maxmemory ")]

    assert maxmemory({}) == [f"maxmemory {int(512 * 2**20 * 0.8)}"]  # the default 512Mi limit
    sized = {"requests": {"cpu": "1", "memory": "1G"}, "limits": {"cpu": "1", "memory": "1.5G"}}
    assert maxmemory({"redis": {"resources": sized}}) == ["maxmemory 1200000000"]
    assert maxmemory({"redis": {"maxmemoryPercent": 50}}) == [f"maxmemory {256 * 2**20}"]
    assert maxmemory({"redis": {"maxmemory": "400mb"}}) == ["maxmemory 400mb"]
    assert maxmemory({"redis": {"maxmemoryPercent": 0}}) == []
    data = one(render(), "ConfigMap", "courier-config")["data"]
    assert data["COURIER_REDIS_MEMORY_HIGH_WATERMARK"] == "0.9"


def test_a_redis_memory_limit_that_is_not_bytes_fails_with_a_message(render: Render) -> None:
    odd = {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1500m"}}
    with pytest.raises(helm_python.HelmRenderError, match="use a byte quantity such as 512Mi"):
        render({"redis": {"resources": odd}})


def test_tracing_samples_at_the_edge_by_default(render: Render) -> None:
    data = one(render(), "ConfigMap", "courier-config")["data"]
    assert data["OTEL_TRACES_EXPORTER"] == "none"
    assert (data["OTEL_TRACES_SAMPLER"], data["OTEL_TRACES_SAMPLER_ARG"]) == (
        "parentbased_traceidratio",
        "0.02",
    )
    values = {"opentelemetry": {"enabled": True, "sampler": "parentbased_always_on"}}
    data = one(render(values), "ConfigMap", "courier-config")["data"]
    assert data["OTEL_TRACES_EXPORTER"] == "otlp"
    assert data["OTEL_TRACES_SAMPLER"] == "parentbased_always_on"


def test_redis_url_carries_the_generated_password(default_manifests: list[Manifest]) -> None:
    password = secret_value(default_manifests, "courier-redis", "redis-password")
    assert len(password) >= 32
    for name in ("courier-api", "courier-worker", "courier-beat", "courier-flower"):
        env = env_of(containers(one(default_manifests, "Deployment", name))[0])
        names = list(env)
        assert names.index("REDIS_PASSWORD") < names.index("COURIER_REDIS_URL")
        assert (
            env["COURIER_REDIS_URL"]["value"] == "redis://:$(REDIS_PASSWORD)@courier-redis:6379/0"
        )


def test_standalone_mode_passes_no_sentinel_settings(default_manifests: list[Manifest]) -> None:
    for name in ("courier-api", "courier-worker", "courier-beat", "courier-flower"):
        env = env_of(containers(one(default_manifests, "Deployment", name))[0])
        assert not [key for key in env if "SENTINEL" in key]
    assert find(default_manifests, "Service", "courier-redis-sentinel") == []
    assert find(default_manifests, "PodDisruptionBudget", "courier-redis") == []


SENTINEL_HOSTS = [f"courier-redis-{i}.courier-redis-headless.courier.svc" for i in range(3)]


def test_sentinel_mode_runs_three_pods_of_redis_and_sentinel(render: Render) -> None:
    manifests = render(VALUE_MATRIX["sentinel"])
    redis = one(manifests, "StatefulSet", "courier-redis")
    assert redis["spec"]["replicas"] == 3
    # Immutable on a StatefulSet: the same as standalone's, so `helm upgrade` can switch modes.
    assert "podManagementPolicy" not in redis["spec"]
    assert redis["spec"]["serviceName"] == "courier-redis-headless"
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    spec = pod_spec(redis)
    server, sentinel = spec["containers"]
    assert (server["name"], sentinel["name"]) == ("redis", "sentinel")
    assert server["command"] == ["sh", "/etc/redis/start-redis.sh"]
    assert sentinel["command"] == ["sh", "/etc/redis/start-sentinel.sh"]
    assert server["readinessProbe"]["exec"]["command"][-2:] == ["/etc/redis/ready.sh", "redis"]
    for container in (server, sentinel):
        env = env_of(container)
        assert env["REDIS_NODES"]["value"] == " ".join(SENTINEL_HOSTS)
        assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        assert env["SENTINEL_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "courier-redis"
    sentinel_env = {e["name"]: e.get("value") for e in sentinel["env"]}
    assert sentinel_env["SENTINEL_QUORUM"] == "2"
    assert sentinel_env["SENTINEL_MASTER"] == "courier"
    # Sentinel rewrites its configuration: a writable volume of its own.
    mounts = {m["name"]: m for m in sentinel["volumeMounts"]}
    assert mounts["sentinel"]["mountPath"] == sentinel_env["SENTINEL_DIR"] == "/sentinel"
    assert mounts["config"]["readOnly"] is True
    anti = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    data = one(manifests, "ConfigMap", "courier-redis")["data"]
    conf = data["redis.conf"]
    for line in ("appendonly yes", "maxmemory-policy noeviction", "min-replicas-to-write 1"):
        assert line in conf.splitlines()
    assert f"maxmemory {int(512 * 2**20 * 0.8)}" in conf.splitlines()
    assert {"lib.sh", "start-redis.sh", "start-sentinel.sh", "ready.sh"} <= set(data)
    for directive in ("announce-hostnames yes", "resolve-hostnames yes", "announce-ip"):
        assert f"sentinel {directive}" in data["start-sentinel.sh"]
    assert "--replica-announce-ip" in data["start-redis.sh"]


def test_sentinel_mode_services_budget_and_network_policy(render: Render) -> None:
    manifests = render(VALUE_MATRIX["sentinel"])
    # No Service that would spread clients over replicas; one for the Sentinels instead.
    assert find(manifests, "Service", "courier-redis") == []
    sentinels = one(manifests, "Service", "courier-redis-sentinel")
    assert [p["port"] for p in sentinels["spec"]["ports"]] == [26379]
    assert sentinels["spec"]["publishNotReadyAddresses"] is True
    headless = one(manifests, "Service", "courier-redis-headless")
    assert {p["name"] for p in headless["spec"]["ports"]} == {"redis", "sentinel"}
    pdb = one(manifests, "PodDisruptionBudget", "courier-redis")
    assert pdb["spec"]["maxUnavailable"] == 1
    policy = one(manifests, "NetworkPolicy", "courier-redis")
    (rule,) = policy["spec"]["ingress"]
    components = rule["from"][0]["podSelector"]["matchExpressions"][0]["values"]
    assert set(components) == {"api", "worker", "beat", "flower", "redis"}
    assert {p["port"] for p in rule["ports"]} == {"redis", "sentinel"}


def test_sentinel_mode_gives_every_courier_process_the_sentinels(render: Render) -> None:
    manifests = render(VALUE_MATRIX["sentinel"])
    for name in ("courier-api", "courier-worker", "courier-beat", "courier-flower"):
        env = env_of(containers(one(manifests, "Deployment", name))[0])
        names = list(env)
        assert names.index("REDIS_PASSWORD") < names.index("COURIER_REDIS_URL")
        assert env["COURIER_REDIS_URL"]["value"].startswith("redis://:$(REDIS_PASSWORD)@")
        sentinels = env["COURIER_REDIS_SENTINELS"]["value"].split(",")
        assert sentinels == [f"{host}:26379" for host in SENTINEL_HOSTS]
        assert env["COURIER_REDIS_SENTINEL_MASTER"]["value"] == "courier"
        ref = env["COURIER_REDIS_SENTINEL_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "courier-redis", "key": "redis-password"}


def test_sentinel_mode_options(render: Render) -> None:
    five = render(VALUE_MATRIX["sentinel-five-pods"])
    redis = one(five, "StatefulSet", "courier-redis")
    assert redis["spec"]["replicas"] == 5
    spec = pod_spec(redis)
    assert [c["name"] for c in spec["containers"]] == ["redis", "sentinel", "redis-exporter"]
    sentinel_env = {e["name"]: e for e in spec["containers"][1]["env"]}
    assert sentinel_env["SENTINEL_QUORUM"]["value"] == "3"
    assert sentinel_env["SENTINEL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "my-sentinel",
        "key": "sentinel-password",
    }
    assert len(sentinel_env["REDIS_NODES"]["value"].split()) == 5
    required = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert required[0]["topologyKey"] == "kubernetes.io/hostname"
    api = env_of(containers(one(five, "Deployment", "courier-api"))[0])
    assert len(api["COURIER_REDIS_SENTINELS"]["value"].split(",")) == 5
    bare = render(VALUE_MATRIX["sentinel-minimal"])
    assert find(bare, "PodDisruptionBudget", "courier-redis") == []
    for container in pod_spec(one(bare, "StatefulSet", "courier-redis"))["containers"]:
        assert "SENTINEL_PASSWORD" not in env_of(container)
    api = env_of(containers(one(bare, "Deployment", "courier-api"))[0])
    assert "COURIER_REDIS_SENTINEL_PASSWORD" not in api
    custom = render({"redis": {"mode": "sentinel", "affinity": {"nodeAffinity": {}}}})
    assert pod_spec(one(custom, "StatefulSet", "courier-redis"))["affinity"] == {"nodeAffinity": {}}


def test_external_redis_with_sentinels_passes_them_to_every_process(render: Render) -> None:
    manifests = render(VALUE_MATRIX["external-redis-sentinels"])
    assert find(manifests, "StatefulSet") == []
    for name in ("courier-api", "courier-worker", "courier-beat", "courier-flower"):
        env = env_of(containers(one(manifests, "Deployment", name))[0])
        assert env["COURIER_REDIS_SENTINELS"]["value"] == (
            "sentinel-a.example.com:26379,sentinel-b.example.com:26379"
        )
        assert env["COURIER_REDIS_SENTINEL_MASTER"]["value"] == "mymaster"
        ref = env["COURIER_REDIS_SENTINEL_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "their-sentinels", "key": "sentinel-password"}


@pytest.mark.parametrize("name", ["external-redis-url", "external-redis-secret"])
def test_external_redis_replaces_the_statefulset(name: str, render: Render) -> None:
    manifests = render(VALUE_MATRIX[name])
    assert find(manifests, "StatefulSet") == []
    assert find(manifests, "NetworkPolicy", "courier-redis") == []
    env = env_of(containers(one(manifests, "Deployment", "courier-worker"))[0])
    ref = env["COURIER_REDIS_URL"]["valueFrom"]["secretKeyRef"]
    if name == "external-redis-url":
        assert secret_value(manifests, ref["name"], ref["key"]).startswith("rediss://")
    else:
        assert ref == {"name": "my-redis-url", "key": "redis-url"}
        assert find(manifests, "Secret", "courier-external-redis") == []


def test_existing_secrets_are_used_and_none_generated(render: Render) -> None:
    manifests = render(VALUE_MATRIX["existing-secrets"])
    assert find(manifests, "Secret") == []
    api_env = env_of(containers(one(manifests, "Deployment", "courier-api"))[0])
    assert api_env["COURIER_API_KEYS"]["valueFrom"]["secretKeyRef"]["name"] == "my-api-keys"
    assert api_env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "my-redis"
    flower_ingress = one(manifests, "Ingress", "courier-flower")
    assert flower_ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/auth-secret"] == (
        "my-flower"
    )


def test_generated_secrets_exist_and_are_kept_across_uninstall(
    default_manifests: list[Manifest],
) -> None:
    assert len(secret_value(default_manifests, "courier-api-keys", "api-keys")) >= 32
    user, _, password = secret_value(default_manifests, "courier-flower", "basic-auth").partition(
        ":"
    )
    assert user == "admin" and len(password) >= 24
    assert secret_value(default_manifests, "courier-flower", "auth").startswith("admin:$2")
    for name in ("courier-api-keys", "courier-redis"):
        annotations = one(default_manifests, "Secret", name)["metadata"]["annotations"]
        assert annotations["helm.sh/resource-policy"] == "keep"


def test_flower_ingress_requires_auth_at_its_url_prefix(default_manifests: list[Manifest]) -> None:
    ingress = one(default_manifests, "Ingress", "courier-flower")
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/auth-type"] == "basic"
    assert annotations["nginx.ingress.kubernetes.io/auth-secret"] == "courier-flower"
    path = ingress["spec"]["rules"][0]["http"]["paths"][0]["path"]
    flower = containers(one(default_manifests, "Deployment", "courier-flower"))[0]
    assert f"--url_prefix={path.strip('/')}" in flower["args"]
    assert any(arg.startswith("--purge_offline_workers=") for arg in flower["args"])
    assert any(arg.startswith("--max_tasks=") for arg in flower["args"])
    auth = env_of(flower)["FLOWER_BASIC_AUTH"]["valueFrom"]["secretKeyRef"]
    assert auth == {"name": "courier-flower", "key": "basic-auth"}
    assert flower["livenessProbe"]["httpGet"]["path"] == f"{path}/healthcheck"


def test_flower_without_ingress_has_no_external_route(render: Render) -> None:
    manifests = render(VALUE_MATRIX["ingress-off"])
    assert find(manifests, "Ingress") == []
    assert one(manifests, "Service", "courier-flower")["spec"]["type"] == "ClusterIP"
    policy = one(manifests, "NetworkPolicy", "courier-flower")
    sources = policy["spec"]["ingress"][0]["from"]
    assert len(sources) == 1  # only the monitoring namespace, no ingress controller


def test_every_container_is_locked_down_with_resources(render: Render) -> None:
    for name, values in VALUE_MATRIX.items():
        for workload in workloads(render(values)):
            where = f"{name}: {workload['kind']} {workload['metadata']['name']}"
            spec = pod_spec(workload)
            pod = spec["securityContext"]
            assert pod["runAsNonRoot"] is True, where
            assert pod["runAsUser"] == pod["runAsGroup"] == 10001, where
            assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert spec["automountServiceAccountToken"] is False, where
            if workload["kind"] != "Pod" and name != "minimal":
                assert spec["topologySpreadConstraints"], where
            for container in containers(workload):
                ctx = container["securityContext"]
                assert ctx["readOnlyRootFilesystem"] is True, where
                assert ctx["allowPrivilegeEscalation"] is False, where
                assert ctx["runAsNonRoot"] is True, where
                assert ctx["capabilities"] == {"drop": ["ALL"]}, where
                assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}, where
                for kind in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(container["resources"][kind]), where


def test_network_policies_fence_redis_and_metrics(default_manifests: list[Manifest]) -> None:
    deny = one(default_manifests, "NetworkPolicy", "courier-default-deny")
    assert "ingress" not in deny["spec"] and deny["spec"]["policyTypes"] == ["Ingress"]
    redis = one(default_manifests, "NetworkPolicy", "courier-redis")
    (rule,) = redis["spec"]["ingress"]
    selector = rule["from"][0]["podSelector"]
    assert selector["matchLabels"]["app.kubernetes.io/instance"] == "courier"
    assert set(selector["matchExpressions"][0]["values"]) == {"api", "worker", "beat", "flower"}
    worker = one(default_manifests, "NetworkPolicy", "courier-worker")
    (rule,) = worker["spec"]["ingress"]
    assert rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]


def test_monitoring_objects_target_the_metrics_ports(default_manifests: list[Manifest]) -> None:
    monitor = one(default_manifests, "ServiceMonitor", "courier-api")
    assert monitor["spec"]["endpoints"][0]["port"] == "http"
    pods = one(default_manifests, "PodMonitor", "courier-worker")
    assert pods["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"


def test_monitoring_off_renders_no_monitoring_objects(render: Render) -> None:
    manifests = render(VALUE_MATRIX["monitoring-off"])
    for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule"):
        assert find(manifests, kind) == []
    assert [m for m in find(manifests, "ConfigMap") if "dashboard" in m["metadata"]["name"]] == []


def monitor_jobs(manifests: list[Manifest]) -> list[str]:
    """The job label each monitor sets (API's ServiceMonitor, then the workers' PodMonitor)."""
    api = find(manifests, "ServiceMonitor")[0]["spec"]["endpoints"][0]
    worker = find(manifests, "PodMonitor")
    worker_endpoint = next(m for m in worker if m["metadata"]["name"].endswith("worker"))["spec"][
        "podMetricsEndpoints"
    ][0]
    return [
        next(r["replacement"] for r in e["relabelings"] if r["targetLabel"] == "job")
        for e in (api, worker_endpoint)
    ]


def test_scrape_jobs_are_named_for_the_dashboards_rules_and_celery_mixin(
    default_manifests: list[Manifest], render: Render
) -> None:
    """celery-mixin's alerts select job=~".*celery.*": the workers' job matches it, the API's
    is its own; every rule selector names exactly these two jobs."""
    api_job, worker_job = monitor_jobs(default_manifests)
    assert re.fullmatch(".*celery.*", worker_job) and not re.fullmatch(".*celery.*", api_job)
    rules = find(default_manifests, "PrometheusRule")[0]
    exprs = [r["expr"] for g in rules["spec"]["groups"] for r in g["rules"]]
    selectors = {m for e in exprs for m in re.findall(r'job=~"([^"]*)"', e)}
    assert selectors == {f"{api_job}|{worker_job}"}
    custom = render({"monitoring": {"podMonitor": {"jobName": "tasks-celery"}}})
    assert monitor_jobs(custom)[1] == "tasks-celery"


def test_rules_and_dashboards_come_from_deploy_monitoring(
    default_manifests: list[Manifest],
) -> None:
    """When deploy/monitoring has rule files and dashboards, the chart ships exactly those, the
    rules' job selector narrowed to the jobs its monitors give the release's series."""
    jobs = "|".join(monitor_jobs(default_manifests))
    rule_files = sorted((MONITORING / "rules").glob("*.yaml"))
    groups = [
        group
        for path in rule_files
        for group in (
            yaml.safe_load(path.read_text().replace('job=~".*courier.*"', f'job=~"{jobs}"')) or {}
        ).get("groups", [])
    ]
    rules = find(default_manifests, "PrometheusRule")
    if groups:
        assert len(rules) == 1
        assert rules[0]["spec"]["groups"] == groups
    else:
        assert rules == []
    dashboards = sorted((MONITORING / "dashboards").glob("*.json"))
    maps = [
        m
        for m in find(default_manifests, "ConfigMap")
        if "grafana_dashboard" in m["metadata"]["labels"]
    ]
    assert len(maps) == len(dashboards)
    for config_map in maps:
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        ((file_name, text),) = config_map["data"].items()
        assert json.loads(text) == json.loads((MONITORING / "dashboards" / file_name).read_text())


def test_chart_reads_monitoring_files_through_its_symlink(tmp_path: Path) -> None:
    """helm_python's loader follows the chart's `monitoring` symlink to deploy/monitoring."""
    assert (CHART / "monitoring").is_symlink()
    assert Path.readlink(CHART / "monitoring") == Path("../../monitoring")
    chart = tmp_path / "helm" / "courier"
    shutil.copytree(CHART, chart, symlinks=True)
    rules = tmp_path / "monitoring" / "rules"
    dashboards = tmp_path / "monitoring" / "dashboards"
    rules.mkdir(parents=True)
    dashboards.mkdir()
    rules.joinpath("queues.yaml").write_text(
        "groups:\n  - name: courier.test\n    rules:\n"
        "      - alert: Backlog\n        expr: max by (queue_name) (courier_queue_backlog) > 1\n"
        "        annotations:\n          summary: '{{ $labels.queue_name }} is behind'\n"
    )
    dashboards.joinpath("Courier_Overview.json").write_text('{"title": "Courier", "panels": []}')
    texts = helm_python.Chart.load(chart).render({}, name="courier", namespace="courier")
    from tests.deploy.conftest import parse_manifests

    manifests = parse_manifests(texts.items())
    (rule,) = find(manifests, "PrometheusRule")
    alert = rule["spec"]["groups"][0]["rules"][0]
    # Prometheus' own template syntax survives Helm untouched.
    assert alert["annotations"]["summary"] == "{{ $labels.queue_name }} is behind"
    dashboard = one(manifests, "ConfigMap", "courier-dashboard-courier-overview")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["Courier_Overview.json"])["title"] == "Courier"


def test_helm_test_pod_submits_a_noop_task_with_the_api_key(
    default_manifests: list[Manifest],
) -> None:
    (pod,) = find(default_manifests, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (container,) = containers(pod)
    assert (
        container["image"]
        == containers(one(default_manifests, "Deployment", "courier-api"))[0]["image"]
    )
    env = env_of(container)
    assert env["API_URL"]["value"] == "http://courier-api:80"
    assert env["API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "courier-api-keys"
    assert "/v1/tasks/noop" in container["args"][0]


def test_notes_tell_how_to_reach_api_flower_and_secrets() -> None:
    notes = render_templates()["courier/templates/NOTES.txt"]
    assert "port-forward svc/courier-api" in notes
    assert "get secret courier-api-keys" in notes
    assert "get secret courier-flower" in notes
    assert "get secret courier-redis" in notes
    assert "http://courier.example.com/flower" in notes
    off = render_templates(VALUE_MATRIX["ingress-off"])["courier/templates/NOTES.txt"]
    assert "no external route" in off
    assert "Sentinel" not in notes
    sentinel = render_templates(VALUE_MATRIX["sentinel"])["courier/templates/NOTES.txt"]
    assert "exec courier-redis-0 -c sentinel" in sentinel
    assert "SENTINEL get-master-addr-by-name courier" in sentinel


def test_docs_values_table_names_every_documented_value() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    section = (CHART.parents[2] / "docs" / "deploy" / "values.md").read_text()
    keys: dict[int, str] = {}
    documented = []
    for entry in value_lines(lines):
        keys[entry.number] = entry.key
        # The block of comments right above the key starts with `# --` (helm-docs).
        if entry.comments and entry.comments[-1].startswith("# --"):
            documented.append(".".join([*(keys[p] for p in entry.parents), entry.key]))
    assert len(documented) > 100
    assert [key for key in documented if f"| `{key}` |" not in section] == []


def test_client_side_install_accepts_the_chart() -> None:
    """A full `helm install --dry-run=client` (kubeVersion constraint, hooks, NOTES) succeeds."""
    config = helm_python.Config(storage_driver="memory")
    release = config.install(CHART, "courier", {}, namespace="courier", dry_run="client")
    assert release["chart_name"] == "courier"
    assert "kind: StatefulSet" in release["manifest"]
    assert "helm test courier" in release["notes"]
