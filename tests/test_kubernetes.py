"""deploy/kubernetes: every manifest is a valid Kubernetes 1.30 object, the kernel's pod template
renders as Enterprise Gateway's launcher renders it into a locked-down pod whatever the request
asks, and the gateway's Helm values, the kernelspec and kernelagent's manifests agree."""

from __future__ import annotations

import dataclasses
import json
import uuid
from pathlib import Path

import jinja2
import kubernetes_validate
import pytest
import yaml

from kernelagent.config import Settings

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
SPEC = DEPLOY / "kernelspecs" / "kernelagent-python3-k8s"
VALUES = DEPLOY / "enterprise-gateway-values.yaml"
KUBERNETES = "1.30"

# The values that Enterprise Gateway's Helm chart 3.3.0 reads (its values.yaml and templates):
# a section and its keys on each line; a section without keys is a plain value.
CHART_VALUES = """
global rbac imagePullSecrets commonLabels
imagePullSecretsCreate enabled annotations secrets
image
imagePullPolicy
namespace
service type externalIPs ports
deployment enabled serviceAccountName terminationGracePeriodSeconds annotations resources
    replicas tolerations affinity nodeSelector extraEnv
logLevel
mirrorWorkingDirs
authToken
kernel clusterRole shareGatewayNamespace launchTimeout infoTimeout cullIdleTimeout cullConnected
    allowedKernels defaultKernelName defaultServiceAccountName
kernelspecs image imagePullPolicy
nfs enabled internalServerIPAddress
kernelspecsPvc enabled name
ingress ingressClassName enabled hostName pathType path annotations tls
kip enabled serviceAccountName serviceName server podSecurityPolicy image imagePullPolicy
    pullPolicy interval criSocket defaultContainerRegistry fetcher internalFetcher images
    annotations tolerations affinity nodeSelector resources
"""
CHART_KEYS = {
    section: set(keys) or None
    for section, *keys in map(str.split, CHART_VALUES.replace("\n    ", " ").strip().split("\n"))
}


def check(obj: dict) -> None:
    """Raises kubernetes_validate.ValidationError unless ``obj`` is a valid Kubernetes object
    (strict: unknown fields are errors too)."""
    kubernetes_validate.validate(obj, KUBERNETES, strict=True)


def manifests() -> list[dict]:
    return [
        doc
        for path in sorted(DEPLOY.glob("*.yaml"))
        if path != VALUES
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def find(kind: str, name: str) -> dict:
    (found,) = [m for m in manifests() if m["kind"] == kind and m["metadata"]["name"] == name]
    return found


def values() -> dict:
    return yaml.safe_load(VALUES.read_text())


def kernelspec() -> dict:
    return json.loads((SPEC / "kernel.json").read_text())


def yaml_safe(value: object) -> str:
    """The launcher's ``yaml_safe`` filter: a value as one YAML scalar or flow collection."""
    if isinstance(value, str):
        return yaml.dump(value, default_style='"', width=10000).strip()
    return yaml.dump(value, default_flow_style=True, width=10000).replace("\n...", "").strip()


def render_pod(**request: str) -> dict:
    """The pod as launch_kubernetes.py renders it: the kernel's environment (kernel.json's env,
    what Enterprise Gateway adds, then the request's KERNEL_* variables), each KERNEL_XXX
    passed to the template as kernel_xxx (KERNEL_VOLUMES and KERNEL_VOLUME_MOUNTS parsed as
    YAML)."""
    kernel_id = str(uuid.uuid4())
    spec = kernelspec()
    env = {
        **spec["env"],
        "KERNEL_ID": kernel_id,
        "KERNEL_USERNAME": "kernelagent",
        "KERNEL_POD_NAME": f"kernelagent-{kernel_id}",
        "KERNEL_IMAGE": spec["metadata"]["process_proxy"]["config"]["image_name"],
        "KERNEL_SERVICE_ACCOUNT_NAME": "default",
        "KERNEL_UID": "1000",  # the gateway's defaults, which the template must ignore
        "KERNEL_GID": "100",
        "KERNEL_NAME": SPEC.name,
        "KERNEL_SPARK_CONTEXT_INIT_MODE": "none",
        **request,
    }
    parsed = {"KERNEL_VOLUMES", "KERNEL_VOLUME_MOUNTS"}
    keywords = {k.lower(): yaml.safe_load(v) if k in parsed else v for k, v in env.items()}
    jinja = jinja2.Environment(
        loader=jinja2.FileSystemLoader(SPEC / "scripts"),
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=jinja2.select_autoescape(
            disabled_extensions=("j2", "yaml"), default_for_string=True, default=True
        ),
    )
    jinja.filters["yaml_safe"] = yaml_safe
    (pod,) = yaml.safe_load_all(jinja.get_template("kernel-pod.yaml.j2").render(**keywords))
    return pod


def test_every_manifest_is_a_valid_kubernetes_object():
    found = manifests()
    kinds = {m["kind"] for m in found}
    assert {"Namespace", "Deployment", "Service", "Secret", "NetworkPolicy", "Role"} <= kinds
    for manifest in found:
        check(manifest)


def test_the_check_rejects_a_broken_manifest():
    typo = find("Deployment", "kernelagent")  # a fresh copy each time
    typo["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    wrong_type = find("Deployment", "kernelagent")
    wrong_type["spec"]["replicas"] = "one"
    for broken in (typo, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            check(broken)


def test_the_kernel_pod_is_valid_and_locked_down():
    pod = render_pod()
    check(pod)
    assert pod["metadata"]["namespace"] == kernelspec()["env"]["KERNEL_NAMESPACE"]
    labels = pod["metadata"]["labels"]
    assert labels["component"] == "kernel" and labels["app"] == "enterprise-gateway"
    assert labels["kernel_id"] == pod["metadata"]["name"].removeprefix("kernelagent-")
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never"
    assert spec["serviceAccountName"] == "kernel" and spec["automountServiceAccountToken"] is False
    assert spec["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 61000,
        "runAsGroup": 61000,
        "fsGroup": 61000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    (container,) = spec["containers"]  # the launcher appends its environment to the first
    assert container["image"] == "kernelagent/kernel-python:latest"
    assert {"name": "KERNEL_LANGUAGE", "value": "python"} in container["env"]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["resources"] == {
        "requests": {"cpu": "1", "memory": "2Gi"},
        "limits": {"cpu": "1", "memory": "2Gi"},
    }
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert set(mounts) == {"/tmp", "/home/sandbox", "/dev/shm", "/workspace"}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert set(volumes) == set(mounts.values())
    for volume in volumes.values():
        assert set(volume) == {"name", "emptyDir"} and volume["emptyDir"]["sizeLimit"], volume
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"


def test_the_request_sizes_the_kernel_but_cannot_loosen_its_pod():
    sized = render_pod(KERNEL_CPUS="500m", KERNEL_MEMORY="1Gi", KERNEL_MEMORY_LIMIT="3Gi")
    check(sized)
    assert sized["spec"]["containers"][0]["resources"] == {
        "requests": {"cpu": "500m", "memory": "1Gi"},
        "limits": {"cpu": "500m", "memory": "3Gi"},
    }
    hostile = render_pod(
        KERNEL_UID="0",
        KERNEL_GID="0",
        KERNEL_NAMESPACE="kube-system",
        KERNEL_SERVICE_ACCOUNT_NAME="admin",
        KERNEL_VOLUMES='[{"name": "host", "hostPath": {"path": "/"}}]',
        KERNEL_VOLUME_MOUNTS='[{"name": "host", "mountPath": "/host"}]',
    )
    check(hostile)
    plain = render_pod()
    for key in ("securityContext", "serviceAccountName", "volumes"):
        assert hostile["spec"][key] == plain["spec"][key], key
    assert hostile["metadata"]["namespace"] == "kernelagent-kernels"
    (container,) = hostile["spec"]["containers"]
    assert container["volumeMounts"] == plain["spec"]["containers"][0]["volumeMounts"]


def test_the_gateway_offers_only_this_kernelspec_and_the_image_builds_it():
    spec = kernelspec()
    proxy = spec["metadata"]["process_proxy"]
    assert proxy["class_name"] == (
        "enterprise_gateway.services.processproxies.k8s.KubernetesProcessProxy"
    )
    assert spec["argv"][1] == "{resource_dir}/scripts/launch_kubernetes.py"
    for placeholder in ("{kernel_id}", "{port_range}", "{response_address}", "{public_key}"):
        assert placeholder in spec["argv"]
    kernel = values()["kernel"]
    assert kernel["allowedKernels"] == [SPEC.name] and kernel["defaultKernelName"] == SPEC.name
    dockerfile = (DEPLOY / "kernelspecs.Dockerfile").read_text()
    assert f"/kernels/{SPEC.name}/scripts/launch_kubernetes.py" in dockerfile
    assert "COPY deploy/kubernetes/kernelspecs/ /kernels/" in dockerfile


def test_the_values_use_only_keys_the_chart_reads():
    for key, value in values().items():
        assert key in CHART_KEYS, key
        if CHART_KEYS[key] is not None:
            assert set(value) <= CHART_KEYS[key], (key, set(value) - CHART_KEYS[key])
    assert "authToken" not in values()  # set from the Secret at install, never written down


def test_kernelagent_and_the_gateway_agree():
    gateway = values()
    extra = gateway["deployment"]["extraEnv"]
    (server,) = find("Deployment", "kernelagent")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in server["env"]}
    settings = {f.metadata["env"] for f in dataclasses.fields(Settings)}
    assert set(env) <= settings | {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert env["KERNELAGENT_GATEWAY_URL"]["value"] == (
        "http://enterprise-gateway.enterprise-gateway.svc:8888"
    )
    assert env["KERNELAGENT_GATEWAY_KERNEL_NAME"]["value"] == SPEC.name
    assert env["KERNELAGENT_GATEWAY_USERNAME"]["value"] == extra["EG_AUTHORIZED_USERS"]
    timeout = float(env["KERNELAGENT_GATEWAY_REQUEST_TIMEOUT"]["value"])
    assert timeout > gateway["kernel"]["launchTimeout"]
    assert find("ResourceQuota", "kernels")["spec"]["hard"]["pods"] == extra["EG_MAX_KERNELS"]
    for probe in ("startupProbe", "livenessProbe"):
        assert server[probe]["httpGet"]["path"] == "/api/v1/health"
    assert server["readinessProbe"]["httpGet"]["path"] == "/api/v1/ready"
    pod = find("Deployment", "kernelagent")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > Settings().drain_timeout
    required = {
        e["valueFrom"]["secretKeyRef"]["key"]
        for e in env.values()
        if "valueFrom" in e and not e["valueFrom"]["secretKeyRef"].get("optional")
    }
    assert required == {
        f"KERNELAGENT_{name}"
        for name in ("GATEWAY_TOKEN", "TOKEN", "SECRET", "DATABASE_URL", "REDIS_URL", "STORAGE_URL")
    }
    example = find("Secret", "kernelagent")["stringData"]
    assert required <= set(example)
    assert all("CHANGE-ME" in value for value in example.values())


def test_kernels_reach_only_the_gateway_and_only_the_server_reaches_it():
    kernels = find("NetworkPolicy", "kernels")["spec"]
    assert kernels["podSelector"] == {} and kernels["policyTypes"] == ["Ingress", "Egress"]
    gateway_pod = {"component": "enterprise-gateway"}
    ((source,),) = [rule["from"] for rule in kernels["ingress"]]
    assert source["podSelector"]["matchLabels"] == gateway_pod
    (egress,) = kernels["egress"]
    ((target,),) = [egress["to"]]
    assert target["podSelector"]["matchLabels"] == gateway_pod
    assert egress["ports"] == [{"protocol": "TCP", "port": 8877}]  # the response port
    gateway = find("NetworkPolicy", "enterprise-gateway")["spec"]
    assert gateway["podSelector"]["matchLabels"] == gateway_pod
    ports = {rule["ports"][0]["port"]: rule["from"] for rule in gateway["ingress"]}
    assert set(ports) == {8888, 8877}
    server_labels = find("Deployment", "kernelagent")["spec"]["template"]["metadata"]["labels"]
    assert ports[8888][0]["podSelector"]["matchLabels"].items() <= server_labels.items()
