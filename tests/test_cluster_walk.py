"""Two Ray nodes on this machine, used as docs/cluster.md says: `ray job submit` of stages.all.

A copy of this repository (its tracked and new files) is the checkout the job is submitted from;
every `paths.*` of the job's params file is on a "shared folder" outside it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import (
    REPO,
    RayHead,
    copy_repo,
    free_port,
    process_family,
    stop_processes,
)

pytestmark = pytest.mark.ray
BIN = Path(sys.executable).parent
STAGES = ["shard", "fid_stats", "train", "sample", "evaluate", "quality"]  # stages.all order


# ----------------------------------------------------------------------------------------------
# docs/cluster.md, "Two or more machines, without Kubernetes", run as written

DOC = REPO / "docs" / "cluster.md"
WALK = "tests/test_cluster_walk.py::test_two_nodes_as_the_docs_say"
SETTINGS, TOKEN, HEAD, WORKER, MLFLOW, JOB, COPY_BACK = range(7)
# Only the job's sizes differ from the doc's micro profile (the doc's cluster.yaml, made smaller).
SMALLER = {"train": {"steps": 4}, "evaluate": {"nll_images": 4}}


def doc_blocks(mark: str) -> list[str]:
    """The fenced blocks of docs/cluster.md preceded by `<!-- doc-test: run by <mark> -->`."""
    lines = DOC.read_text().splitlines()
    blocks = []
    for i, line in enumerate(lines):
        if line.strip() == f"<!-- doc-test: run by {mark} -->":
            assert lines[i + 1].startswith("```"), f"{DOC}:{i + 2}: a fence must follow the mark"
            end = lines.index("```", i + 2)
            blocks.append("\n".join(lines[i + 2 : end]))
    return blocks


def stock_python(folder: Path) -> Path:
    """A Python with the dependencies (Ray, torch, ...) and nothing of this project: a venv
    whose site-packages names the suite's site-packages as a plain path, so the editable
    install's finder (a .pth there) never runs. The nodes run `ray start` from it."""
    import site

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    (deps,) = [p for p in site.getsitepackages() if p.endswith("site-packages")]
    (lib,) = (folder / "lib").glob("python3.*/site-packages")
    (lib / "deps.pth").write_text(deps + "\n")
    for tool in ("ray",):  # the CLI run by the nodes' shell, on the nodes' Python
        script = folder / "bin" / tool
        script.write_text(f"#!{folder}/bin/python\nfrom ray.scripts.scripts import main\nmain()\n")
        script.chmod(0o755)
    return folder / "bin"


class Walk:
    """Two nodes, an MLflow server and a checkout, driven by the doc's own blocks."""

    def __init__(self, root: Path) -> None:
        self.root, self.shared, self.checkout = root, root / "shared", root / "checkout"
        # Ports of its own for each node, one Ray temp dir for both: as two `ray start` on one
        # machine with Ray's default /tmp/ray, or Ray's own test clusters. The worker node's
        # runtime-env agent then re-extracts the job's working dir at the same path (rmtree +
        # unzip) under the running driver when it first runs a task or actor of the job (in
        # fid_stats or train); the stages after that must still find the relative params file
        # (they found `params file not found` before stages.all re-entered its folder by path).
        self.head = RayHead(num_cpus=2)
        self.node = RayHead(num_cpus=2, temp_dir=self.head.temp_dir)
        self.mlflow_port, self.mlflow_dir = free_port(), root / "mlflow"
        self.blocks = doc_blocks(WALK)
        assert len(self.blocks) == 7, f"{DOC}: expected 7 blocks marked for {WALK}"
        self.node_bin = stock_python(root / "stock")

    def substitute(self, block: str) -> str:
        """The test's addresses, ports and folders for the doc's placeholders."""
        for value, ours in (
            ("10.0.0.1", "127.0.0.1"),
            ("0.0.0.0", "127.0.0.1"),
            ("/mnt/ddpm", str(self.shared)),
            ("~/ddpm-mlflow", str(self.mlflow_dir)),
        ):
            block = block.replace(value, ours)
        for port, ours in (
            ("6379", self.head.port),
            ("8265", self.head.dashboard_port),
            ("5000", self.mlflow_port),
        ):
            block = re.sub(rf"\b{port}\b", str(ours), block)
        return block

    def one_machine(self, block: str, node: RayHead) -> str:
        """`ray start` with what two nodes on one machine need: a temp dir and ports each."""
        flags = f"--temp-dir={node.temp_dir} --dashboard-agent-listen-port={node.agent_port}"
        flags += " --num-cpus=2 --node-ip-address=127.0.0.1 --disable-usage-stats"
        if node is self.head:
            flags += f" --ray-client-server-port={node.client_port}"
        return block.replace("\n", f" {flags}\n", 1) if "\n" in block else f"{block} {flags}"

    def env(self, node_side: bool) -> dict[str, str]:
        """A clean shell: no PYTHONPATH, no Ray or MLflow settings but the doc's. Nodes run
        the stock Python; the submitting checkout the suite's (the project installed)."""
        drop = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "MLFLOW_")
        env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
        paths = env.pop("PYTHONPATH", "").split(os.pathsep)  # never this repository's folder
        if others := [p for p in paths if p and Path(p).resolve() != REPO]:
            env["PYTHONPATH"] = os.pathsep.join(others)
        first = [str(self.node_bin)] if node_side else []
        env["PATH"] = os.pathsep.join([*first, str(BIN), env.get("PATH", "")])
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # fewer processes on 2 cores
        env |= {f"GIT_{who}_NAME": "walk" for who in ("AUTHOR", "COMMITTER")}
        env |= {f"GIT_{who}_EMAIL": "walk@example.invalid" for who in ("AUTHOR", "COMMITTER")}
        return env

    def run(self, index: int, cwd: Path, node_side: bool, block: str | None = None) -> str:
        script = self.substitute(self.blocks[SETTINGS] + "\n" + (block or self.blocks[index]))
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=cwd,
            env=self.env(node_side),
            capture_output=True,
            text=True,
            timeout=900,
        )
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"doc block {index} failed:\n{script}\n{out[-6000:]}"
        return out

    def stop(self) -> None:
        stop_processes(process_family((str(self.mlflow_dir),)))
        self.head.stop()  # the node's processes too: they name the temp dir they share


@pytest.fixture(scope="module")
def walk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Walk, str]]:
    """Steps 1-6 of the doc: token, head, worker node, MLflow with auth, the job."""
    walk = Walk(tmp_path_factory.mktemp("walk"))
    copy_repo(walk.checkout)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "checkout"]):
        subprocess.run(cmd, cwd=walk.checkout, env=walk.env(False), check=True, capture_output=True)
    try:
        walk.run(TOKEN, walk.root, node_side=True)
        walk.run(HEAD, walk.root, True, walk.one_machine(walk.blocks[HEAD], walk.head))
        walk.run(WORKER, walk.root, True, walk.one_machine(walk.blocks[WORKER], walk.node))
        walk.run(MLFLOW, walk.root, node_side=True)
        make_params, submit = walk.blocks[JOB].split("\nray job submit", 1)
        walk.run(JOB, walk.checkout, False, make_params)
        params = walk.checkout / "cluster.yaml"
        raw = yaml.safe_load(params.read_text())
        for section, values in SMALLER.items():
            raw[section].update(values)
        params.write_text(yaml.safe_dump(raw, sort_keys=False))
        out = walk.run(JOB, walk.checkout, False, "ray job submit" + submit)
        yield walk, out
    finally:
        walk.stop()


def ray_state(walk: Walk, code: str) -> Any:
    """`code` (printing JSON) run against the head with the doc's auth settings."""
    script = walk.substitute(walk.blocks[SETTINGS]) + f"\npython -c '{code}'"
    proc = subprocess.run(
        ["bash", "-c", script], env=walk.env(False), capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_two_nodes_as_the_docs_say(walk: tuple[Walk, str]) -> None:
    """The job SUCCEEDED on two nodes whose Python has nothing of the project; the training
    ran on both; every output is on the shared folder, none in Ray's copy of the working dir;
    the runs are on the auth server, which refuses a client without credentials; after the
    copy-back DVC has nothing to do. The nodes share one Ray temp dir (see `Walk`): the worker
    node re-extracted the job's working dir under the running driver, and the later stages
    still found the params file."""
    w, out = walk
    assert "succeeded" in out and "params file not found" not in out, out[-3000:]
    # the worker node's runtime-env agent deleted and unpacked the job's copy again
    setup_logs = Path(w.head.temp_dir).glob("session_*/logs/runtime_env_setup-*.log")
    removed = [f for f in setup_logs if "working_dir_files/_ray_pkg_" in f.read_text()
               and "Removing " in f.read_text()]  # fmt: skip
    assert removed, "the worker node never re-extracted the job's working dir"
    # the nodes' Python: the project only from the job's working dir
    probe = subprocess.run([str(w.node_bin / "python"), "-c", "import stages"], cwd=w.root,
                           capture_output=True, text=True, env=w.env(True))  # fmt: skip
    assert "No module named 'stages'" in probe.stderr
    # the two train workers ran on the two nodes (Ray's state API: the finished job's actors)
    nodes = ray_state(w, (
        "import json, os; from ray.util.state import list_actors, list_nodes; "
        "a = os.environ[\"RAY_API_SERVER_ADDRESS\"]; "
        "w = list_actors(a, filters=[(\"class_name\", \"=\", \"RayTrainWorker\")], detail=True); "
        "print(json.dumps([sorted({x.node_id for x in w}), [n.node_id for n in list_nodes(a)]]))"
    ))  # fmt: skip
    assert len(nodes[0]) == 2 and sorted(nodes[0]) == sorted(nodes[1]), nodes
    # every output on the shared folder; nothing in Ray's copy of the working dir
    record = json.loads((w.shared / "runs" / "all.json").read_text())
    assert record["params"] == "cluster.yaml" and record["stages"] == list(STAGES)
    for key, path in record["outputs"].items():
        assert Path(path).is_relative_to(w.shared) and any(Path(path).iterdir()), key
    files = Path(w.head.temp_dir).glob("session_*/runtime_resources/working_dir_files/*")
    copies = [p for p in files if (p / "stages" / "all.py").is_file()]  # the job's cwd
    assert copies, "no copy of the working dir on the head"
    for pkg in copies:  # every file there is the checkout's, unchanged: the job wrote none
        files = [f for f in pkg.rglob("*") if f.is_file() and "__pycache__" not in f.parts]
        changed = [
            f for f in files if (w.checkout / f.relative_to(pkg)).read_bytes() != f.read_bytes()
        ]
        assert not changed, changed
    # MLflow: the runs are on the auth server as the doc's user; no credentials, 401
    url = f"http://127.0.0.1:{w.mlflow_port}"
    runs = ray_state(w, (
        "import json, mlflow; r = mlflow.search_runs(experiment_names=[\"ddpm\"]); "
        "print(json.dumps(sorted(r[\"tags.dvc.stage\"])))"
    ))  # fmt: skip
    assert runs == ["evaluate", "quality", "sample", "train"], runs
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/search?max_results=1")
    assert refused.value.code == 401
    # back under DVC, as the doc says: nothing left to do
    status = w.run(COPY_BACK, w.checkout, node_side=False)
    assert "Data and pipelines are up to date." in status
    repro = subprocess.run([str(BIN / "dvc"), "repro"], cwd=w.checkout, env=w.env(False),
                           capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "Running stage" not in repro and "up to date" in repro, repro


# ----------------------------------------------------------------------------------------------
# deploy/: the Kubernetes containers' own command lines, against the same head

DEPLOY = REPO / "deploy"


def manifest(name: str) -> dict[str, Any]:
    (doc,) = [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]
    return dict(doc)


def secrets(w: Walk) -> dict[str, str]:
    """What the manifests' secrets hold, as the walk set them up (doc step 1 and 3)."""
    settings = dict(re.findall(r"(\w+)=(\S+)", w.substitute(w.blocks[SETTINGS])))
    token = (w.shared / ".secrets" / "ray_token").read_text().strip()
    return {
        "ray-auth-token/token": token,
        "mlflow-auth/username": settings["MLFLOW_TRACKING_USERNAME"],
        "mlflow-auth/password": settings["MLFLOW_TRACKING_PASSWORD"],
        "mlflow-server/admin-password": re.search(
            r"MLFLOW_AUTH_ADMIN_PASSWORD=(\S+)", w.blocks[MLFLOW]
        )[1],  # type: ignore[index]
    }


def container_env(w: Walk, container: dict[str, Any], services: dict[str, str]) -> dict[str, str]:
    """The container's env as Kubernetes would set it: values with the walk's service URLs,
    secrets from the walk's own."""
    env = w.env(node_side=False)
    known = secrets(w)
    for var in container.get("env", []):
        if "value" in var:
            value = var["value"]
            for service, url in services.items():
                value = value.replace(service, url)
            env[var["name"]] = value
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = known[f"{ref['name']}/{ref['key']}"]
    return env


def services(w: Walk) -> dict[str, str]:
    return {
        "http://mlflow:5000": f"http://127.0.0.1:{w.mlflow_port}",
        "http://ddpm-raycluster-head-svc:8265": w.head.address,
    }


def test_the_mlflow_user_jobs_command_runs_against_the_auth_server(walk: tuple[Walk, str]) -> None:
    """deploy/mlflow-user-job.yaml's command as its container runs it: the user exists (the
    doc's step 5 made it), so the Job says so and succeeds; its admin credentials work."""
    w, _ = walk
    job = manifest("mlflow-user-job.yaml")
    (c,) = job["spec"]["template"]["spec"]["containers"]
    proc = subprocess.run([*c["command"], *c["args"]], env=container_env(w, c, services(w)),
                          capture_output=True, text=True, cwd=w.root)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "MLflow: user ddpm exists already" in proc.stdout, proc.stdout


def test_the_cronjobs_command_clones_into_its_workspace_and_retrains_on_the_head(
    walk: tuple[Walk, str], tmp_path: Path, converted_path: Path
) -> None:
    """deploy/k8s-cronjob.yaml's container command, as written, against the walk's head: it
    clones REPO_URL (a local bare repository: the walk's checkout with micro-256 as params.yaml
    and as its cluster profile, every path of the latter on a shared folder of its own) into the
    emptyDir at its workingDir; DVC sees the change and the job it submits runs every stage with
    outputs on the shared folder, its runs tagged `trigger: schedule`; a second tick submits
    nothing. micro-256 is the 256x256 profiles' shape (six U-Net levels at 64x64, centre crop,
    RGB, the posterior variance): the suite's one run of that shape through the whole DAG, on
    the route the cluster profiles take."""
    w, _ = walk
    cron = manifest("k8s-cronjob.yaml")
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == c["workingDir"])
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == mount["name"])
    # the repository the CronJob clones
    src, bare, shared = tmp_path / "src", tmp_path / "repo.git", tmp_path / "shared"
    git = ["git", "clone", "-q"]
    subprocess.run([*git, str(w.checkout), str(src)], check=True, env=w.env(False))
    raw = yaml.safe_load((src / "conf" / "profile" / "micro-256.yaml").read_text())
    raw["evaluate"]["fid"]["inception_weights"] = str(converted_path)
    (src / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))  # what DVC checks
    raw["paths"] = {k: str(shared / v) for k, v in raw["paths"].items()}
    (src / "conf/profile/cifar10-cluster.yaml").write_text(yaml.safe_dump(raw))  # the job's
    for cmd in (["git", "commit", "-qam", "micro-256"], [*git, "--bare", ".", str(bare)]):
        subprocess.run(cmd, cwd=src, check=True, env=w.env(False))

    def tick(workspace: Path) -> str:
        """One run of the CronJob's container in a fresh emptyDir."""
        workspace.mkdir()
        env = container_env(w, c, services(w)) | {"REPO_URL": f"file://{bare}"}
        script = c["args"][0].replace(c["workingDir"], str(workspace))
        proc = subprocess.run([*c["command"], script], cwd=workspace, env=env,
                              capture_output=True, text=True, timeout=900)  # fmt: skip
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-6000:]
        return out

    out = tick(tmp_path / "workspace")
    assert "retrain: changed: " in out and "ended SUCCEEDED" in out, out[-3000:]
    job_id = out.split("retrain: submitted ")[1].split()[0]
    assert job_id.startswith("retrain-")
    metrics = json.loads((shared / "metrics" / "eval.json").read_text())
    assert float(metrics["nll_bpd"]) > 0 and (shared / "plots" / "rate_distortion.png").is_file()
    record = json.loads((shared / "runs" / "all.json").read_text())
    assert record["params"] == "conf/profile/cifar10-cluster.yaml"
    assert record["stages"] == list(STAGES)
    assert all(Path(p).is_relative_to(shared) for p in record["outputs"].values()), record
    assert raw["mlflow"]["experiment"] == "ddpm-micro-256"
    stages = ray_state(w, (
        "import json, mlflow; q = chr(39); r = mlflow.search_runs(experiment_names="
        "[\"ddpm-micro-256\"], filter_string=f\"tags.trigger = {q}schedule{q}\"); "
        "print(json.dumps(sorted(r[\"tags.dvc.stage\"])))"
    ))  # fmt: skip
    assert stages == ["evaluate", "quality", "sample", "train"], stages
    # the next tick: the same commit and params, the job of that id already succeeded
    again = tick(tmp_path / "workspace-2")
    assert f"retrain: already submitted {job_id}" in again, again[-3000:]


def test_the_raycronjobs_job_runs_from_the_images_own_folder(
    walk: tuple[Walk, str], tmp_path: Path
) -> None:
    """deploy/raycronjob.yaml's RayJob as KubeRay's submitter pod runs it (`ray job submit`
    with its runtimeEnvYAML and entrypoint), from the image's folder as the Dockerfile lays it
    out (WORKDIR and COPYs; the cluster profile replaced by the walk's micro cluster.yaml)."""
    w, _ = walk
    job = manifest("raycronjob.yaml")["spec"]["jobTemplate"]
    runtime_env = yaml.safe_load(job["runtimeEnvYAML"])
    docker = (REPO / "Dockerfile").read_text()
    workdir = re.search(r"^WORKDIR (\S+)$", docker, flags=re.M)
    assert workdir and runtime_env["working_dir"] == workdir[1], "the job runs the image's folder"
    image = tmp_path / workdir[1].lstrip("/")
    for sources in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", docker, flags=re.M):
        for name in sources.split():
            copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
            image.mkdir(parents=True, exist_ok=True)
            copy(REPO / name, image / name)
    shutil.copy2(w.checkout / "cluster.yaml", image / "conf/profile/cifar10-cluster.yaml")
    runtime_env["working_dir"] = str(image)
    (c,) = job["submitterPodTemplate"]["spec"]["containers"]
    submit = [str(BIN / "ray"), "job", "submit", "--address", w.head.address]
    submit += ["--runtime-env-json", json.dumps(runtime_env), "--"]
    proc = subprocess.run([*submit, *shlex.split(job["entrypoint"])], cwd=tmp_path,
                          env=container_env(w, c, services(w)), capture_output=True, text=True,
                          timeout=900)  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "succeeded" in out, out[-6000:]
    record = json.loads((w.shared / "runs" / "all.json").read_text())
    assert record["params"] == "conf/profile/cifar10-cluster.yaml", record
