"""The Kubernetes manifests hang together: kinds and API versions, selectors, ports, Secrets and volumes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.deploy.promql import DEPLOY

K8S = DEPLOY / "k8s"
EXPECTED_KINDS = {
    ("v1", "Namespace"),
    ("v1", "Secret"),
    ("v1", "PersistentVolumeClaim"),
    ("apps/v1", "Deployment"),
    ("v1", "Service"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("ray.io/v1", "RayCluster"),
}


def _documents() -> list[dict[str, Any]]:
    files = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert sorted(files) == sorted(path.name for path in K8S.glob("*.yaml") if path.name != "kustomization.yaml")
    return [doc for name in files for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]


DOCS = _documents()


def _one(kind: str) -> dict[str, Any]:
    (doc,) = [doc for doc in DOCS if doc["kind"] == kind]
    return doc


def _pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    yield "api", _one("Deployment")["spec"]["template"]["spec"]
    cluster = _one("RayCluster")["spec"]
    yield "ray head", cluster["headGroupSpec"]["template"]["spec"]
    for group in cluster["workerGroupSpecs"]:
        yield f"ray {group['groupName']}", group["template"]["spec"]


def test_kinds_versions_and_names() -> None:
    assert {(doc["apiVersion"], doc["kind"]) for doc in DOCS} == EXPECTED_KINDS
    for doc in DOCS:
        assert doc["metadata"]["name"], doc["kind"]
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == _one("Namespace")["metadata"]["name"], doc["kind"]


def test_deployment_service_and_monitor_select_the_api_pods() -> None:
    deployment, service, monitor = _one("Deployment"), _one("Service"), _one("ServiceMonitor")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    container_ports = {
        port["name"]: port["containerPort"]
        for c in deployment["spec"]["template"]["spec"]["containers"]
        for port in c["ports"]
    }
    service_ports = {port["name"]: port for port in service["spec"]["ports"]}
    for port in service_ports.values():
        assert port["targetPort"] in container_ports
    assert {endpoint["port"] for endpoint in monitor["spec"]["endpoints"]} <= set(service_ports)
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) in container_ports.values()
    assert annotations["prometheus.io/path"] == "/metrics"
    probes = deployment["spec"]["template"]["spec"]["containers"][0]
    assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_referenced_secrets_and_claims_exist() -> None:
    secrets = {
        doc["metadata"]["name"]: set(doc.get("stringData", {})) | set(doc.get("data", {}))
        for doc in DOCS
        if doc["kind"] == "Secret"
    }
    claims = {doc["metadata"]["name"] for doc in DOCS if doc["kind"] == "PersistentVolumeClaim"}
    references = 0
    for where, spec in _pod_specs():
        volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, where
        for container in spec["containers"]:
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{where}/{container['name']}: no volume {mount['name']}"
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref is not None:
                    references += 1
                    assert ref["key"] in secrets.get(ref["name"], set()), f"{where}: {ref} not in a Secret"
    assert references >= 2


def test_pods_run_as_non_root_and_workers_get_gpus() -> None:
    for where, spec in _pod_specs():
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["runAsUser"] != 0, where
    for group in _one("RayCluster")["spec"]["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        (container,) = group["template"]["spec"]["containers"]
        assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1


@pytest.mark.parametrize("role", ["serve", "worker"])
def test_the_flatmtl_processes_run_somewhere(role: str) -> None:
    args = [c.get("args") for _, spec in _pod_specs() for c in spec["containers"]]
    assert [role] in args


def _ray_containers() -> Iterator[tuple[str, dict[str, Any]]]:
    cluster = _one("RayCluster")["spec"]
    groups = [("head", cluster["headGroupSpec"]), *((g["groupName"], g) for g in cluster["workerGroupSpecs"])]
    for name, group in groups:
        for container in group["template"]["spec"]["containers"]:
            yield f"{name}/{container['name']}", container


def test_ray_pods_join_with_the_token_probe_their_raylet_and_share_no_volume_for_runs() -> None:
    """KubeRay's default probes call wget, which the image lacks; runs persist to the object store, so the
    only shared volume is the artifacts one of the head's worker container (the API's view)."""
    for where, container in _ray_containers():
        env = {variable["name"]: variable for variable in container.get("env", [])}
        assert env["RAY_AUTH_MODE"]["value"] == "token", where
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "ray-auth-token", where
        if container["name"].startswith("ray-"):
            for probe in ("readinessProbe", "livenessProbe"):
                command = " ".join(container[probe]["exec"]["command"])
                assert "local_raylet_healthz" in command and "wget" not in command, (where, probe)
    worker = next(c for where, c in _ray_containers() if c.get("args") == ["worker"])
    storage = next(v for v in worker["env"] if v["name"] == "FLATMTL_RAY_STORAGE")
    assert storage["valueFrom"]["secretKeyRef"]["key"] == "ray-storage-uri"
    secret = _one("Secret")["stringData"]
    assert secret["ray-storage-uri"].startswith("s3://")
    cluster = _one("RayCluster")["spec"]
    for group in cluster["workerGroupSpecs"]:
        volumes = group["template"]["spec"].get("volumes", [])
        assert not [v for v in volumes if "persistentVolumeClaim" in v], group["groupName"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in head if any(m["name"] == "artifacts" for m in c.get("volumeMounts", []))] == [
        "flatmtl-worker"
    ]
