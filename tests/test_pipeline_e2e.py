"""The real `dvc repro` on the micro profile, tracked by a real `mlflow server` on loopback.

A copy of this repository (its tracked and new files) becomes a fresh git + DVC repo in a temp
folder; every stage runs as DVC runs it. The stages connect, through `RAY_ADDRESS` as under a
cluster's `ray job submit`, to the session's `ray start --head` (the `ray_head` fixture): each
would otherwise start and stop a local cluster of its own (about 8 s a stage). The killed-stage
test runs its stage on a local cluster, the one it kills with the stage.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from dvc.utils.hydra import compose_and_dump
from mlflow.tracking import MlflowClient

from tests.helpers import MATCHING, REPO, MlflowServer, RayHead, copy_repo, save_released

pytestmark = pytest.mark.ray
BIN = Path(sys.executable).parent
STAGES = ("shard", "fid_stats", "train", "sample", "evaluate", "quality")  # stages.all order


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 900) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{out[-6000:]}"
    return out


class Pipeline:
    def __init__(self, root: Path, env: dict[str, str], server: MlflowServer, first: str) -> None:
        self.root, self.env, self.server, self.first = root, env, server, first

    def dvc(self, *args: str) -> str:
        return run([str(BIN / "dvc"), *args], self.root, self.env)

    def json(self, rel: str) -> dict[str, object]:
        data: dict[str, object] = json.loads((self.root / rel).read_text())
        return data


def select_profile(root: Path, profile: str, overrides: dict[str, Any]) -> None:
    """Make `profile` (+ `overrides`) the workspace default as a user would: conf/config.yaml's
    defaults list, then params.yaml composed by DVC's own Hydra call (what `dvc exp run` does)."""
    config = {"defaults": [{"profile": profile}, "_self_"], **overrides}
    (root / "conf" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    compose_and_dump(root / "params.yaml", str(root / "conf"), None, "config", str(root), [])


@pytest.fixture(scope="module")
def pipeline(
    tmp_path_factory: pytest.TempPathFactory,
    mlflow_server: MlflowServer,
    converted_path: Path,
    ray_session: Any,
    ray_head: RayHead,
) -> Iterator[Pipeline]:
    ray_session.down()  # the stages run on the session's head: one Ray cluster at a time
    root = tmp_path_factory.mktemp("e2e") / "repo"
    copy_repo(root)
    select_profile(root, "micro", {"evaluate": {"fid": {"inception_weights": str(converted_path)}}})
    (root / "dvc.lock").unlink(missing_ok=True)
    env = {k: v for k, v in ray_head.env().items() if not k.startswith("DVC_")}
    env |= {
        "RAY_ADDRESS": f"127.0.0.1:{ray_head.port}",
        "MLFLOW_TRACKING_URI": mlflow_server.url,
        "GIT_AUTHOR_NAME": "e2e",
        "GIT_AUTHOR_EMAIL": "e2e@example.invalid",
        "GIT_COMMITTER_NAME": "e2e",
        "GIT_COMMITTER_EMAIL": "e2e@example.invalid",
    }
    run(["git", "init", "-q"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "micro profile"], root, env)
    first = run(readme_repro(root), root, env)
    yield Pipeline(root, env, mlflow_server, first)


def readme_repro(root: Path) -> list[str]:
    """README.md's first block (`make repro`, `make test`) as the command that runs its `make
    repro` in `root`: `.venv` is this interpreter's environment, whose set-up make is told is
    done (`-o` its stamp: no pip install into it). `make test` is CI's command (.ci/run)."""
    readme = (REPO / "README.md").read_text()
    block = readme.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [ln.split("#")[0].split() for ln in block.splitlines()]
    assert commands == [["make", "repro"], ["make", "test"]], block
    (root / ".venv").symlink_to(BIN.parent, target_is_directory=True)
    with (root / ".git" / "info" / "exclude").open("a") as f:
        f.write(".venv\n")  # a link, which `.venv/` in .gitignore does not match
    stamp = hashlib.sha1((root / "pyproject.toml").read_bytes()).hexdigest()[:12]
    return [*commands[0][:1], "-o", f".venv/.installed-{stamp}", *commands[0][1:]]


def test_repro_runs_every_stage_and_writes_the_outputs(pipeline: Pipeline) -> None:
    """README.md's `make repro` (`readme_repro`) ran every stage and wrote every output."""
    for stage in STAGES:
        assert f"Running stage '{stage}'" in pipeline.first
    root = pipeline.root
    for rel in (
        "data/shards/manifest.json",
        "models/ema.safetensors",
        "models/config.json",
        "data/samples/manifest.json",
        "plots/sample_grid.png",
        "plots/progressive_generation.png",
        "plots/rate_distortion.png",
        "plots/rate_distortion.csv",
        "plots/train_loss.csv",
        "plots/train_fid.csv",  # train.fid_every is 0 in the micro profile: header only
        "plots/interpolation.png",
        "plots/shared_latent.png",
        "plots/fid_vs_steps.csv",  # the quality stage, off in the micro profile: header only
        "plots/fid_over_reverse.csv",
        "dvc.lock",
    ):
        assert (root / rel).is_file(), rel
    assert pipeline.json("metrics/train.json")["steps"] == 20
    assert pipeline.json("metrics/sample.json")["num_images"] == 16
    metrics = pipeline.json("metrics/eval.json")
    assert float(metrics["fid"]) > 0 and float(metrics["nll_bpd"]) > 0  # type: ignore[arg-type]
    details = pipeline.json("runs/evaluate.json")["details"]
    assert str(details["comparability"]).startswith("NOT comparable")  # type: ignore[index]
    assert all(isinstance(v, int | float) for v in metrics.values())
    shown = pipeline.dvc("metrics", "show", "--json")
    assert '"nll_bpd"' in shown and '"fid_train"' in shown
    assert '"fid_vs_steps"' in pipeline.dvc("plots", "show", "--json")  # parses when empty too


def test_second_repro_does_nothing(pipeline: Pipeline) -> None:
    out = pipeline.dvc("repro")
    assert "Running stage" not in out
    assert all(f"Stage '{s}' didn't change, skipping" in out for s in STAGES)


def test_raw_data_and_inception_weights_are_dvc_dependencies(pipeline: Pipeline) -> None:
    """A change under data.raw reports the shard stage; a change of the Inception weights
    stored with the reference statistics reports evaluate and quality (which read them)."""
    readme, weights = pipeline.root / "data/raw/README.md", pipeline.root / "data/fid_stats"
    weights_file = weights / "inception.pth"
    text, blob = readme.read_text(), weights_file.read_bytes()
    try:
        readme.write_text(text + "one more raw file\n")
        weights_file.write_bytes(blob + b"\0")
        status = json.loads(pipeline.dvc("status", "--json"))
        assert {"changed deps": {"data/raw": "modified"}} in status["shard"]
        for stage in ("evaluate", "quality"):
            assert {"changed deps": {"data/fid_stats": "modified"}} in status[stage], status
    finally:
        readme.write_text(text)
        weights_file.write_bytes(blob)
    assert json.loads(pipeline.dvc("status", "--json")) == {}


TABLE2_ROW = ("mean_type", "var_type", "loss_type")  # the diffusion keys a Table 2 row sets


def table2_command(row: str) -> list[str]:
    """The `dvc exp run` arguments of the docs' Table 2 row `row` (its first cell), micro-sized:
    the row's own `-S` flags with `profile=cifar10-paper` swapped for `profile=micro`."""
    lines = (REPO / "docs" / "paper-fidelity.md").read_text().splitlines()
    cells = next(ln.split("|") for ln in lines if ln.startswith(f"| {row} |"))
    command = cells[-2].strip().strip("`").split()
    assert command[:3] == ["dvc", "exp", "run"] and "profile=cifar10-paper" in command, command
    return ["profile=micro" if a == "profile=cifar10-paper" else a for a in command[3:]]


def workspace_state(root: Path) -> dict[str, str]:
    """sha256 of every file DVC or git tracks in the workspace (outputs, params, lock)."""
    files = [p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")]
    skip = {".git", ".dvc", ".ray_storage", "mlartifacts", "dvc_plots", "__pycache__"}
    kept = [p for p in files if not skip & set(p.relative_to(root).parts) and p.name != "mlflow.db"]
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in kept}


def exp_metrics(shown: object, name: str, kind: str = "metrics") -> dict[str, Any]:
    """The metrics (or params) of experiment `name` in `dvc exp show --json` (any nesting)."""
    if isinstance(shown, dict):
        if shown.get("name") == name and isinstance(shown.get("data"), dict):
            metrics: dict[str, Any] = shown["data"].get(kind) or {}
            return metrics
        shown = list(shown.values())
    if isinstance(shown, list):
        for item in shown:
            if found := exp_metrics(item, name, kind):
                return found
    return {}


def test_exp_run_selects_a_profile_through_hydra_without_touching_params_yaml(
    pipeline: Pipeline,
) -> None:
    """`dvc exp run --queue -S profile=mnist`: DVC composes the mnist profile (plus this
    workspace's conf/config.yaml overrides) into the queued experiment's params.yaml; the
    workspace's params.yaml is untouched. The queued run is removed unstarted."""
    params = (pipeline.root / "params.yaml").read_bytes()
    pipeline.dvc("exp", "run", "--queue", "-n", "mnist-q", "-S", "profile=mnist")
    try:
        assert (pipeline.root / "params.yaml").read_bytes() == params
        shown = json.loads(pipeline.dvc("exp", "show", "--json"))
        queued = exp_metrics(shown, "mnist-q", "params")["params.yaml"]["data"]
        mnist = yaml.safe_load((pipeline.root / "conf/profile/mnist.yaml").read_text())
        assert (queued["profile"], queued["data"], queued["unet"]) == (
            "mnist", mnist["data"], mnist["unet"],
        )  # fmt: skip
        assert queued["evaluate"]["fid"]["inception_weights"] is not None  # _self_ of config.yaml
    finally:
        pipeline.dvc("queue", "remove", "mnist-q")


@pytest.fixture(scope="module")
def baseline(pipeline: Pipeline) -> Pipeline:
    """The workspace's micro results committed (dvc.lock, metrics, run files): queued and
    temporary experiments start from `HEAD` (docs/configuration.md: commit the workspace first)."""
    run(["git", "add", "-A"], pipeline.root, pipeline.env)
    run(["git", "commit", "-qm", "baseline: the micro results"], pipeline.root, pipeline.env)
    return pipeline


def run_the_queue(pipeline: Pipeline) -> str:
    """`dvc queue start -j 1`, then `dvc queue status` until nothing is queued or running."""
    pipeline.dvc("queue", "start", "-j", "1")
    deadline = time.monotonic() + 600  # bounds the wait only
    while True:
        status = pipeline.dvc("queue", "status")
        if "Queued" not in status and "Running" not in status:
            return status
        assert time.monotonic() < deadline, status
        time.sleep(2)


def test_a_queued_table2_row_reruns_from_train_in_its_own_copy_and_compares_in_mlflow(
    baseline: Pipeline,
) -> None:
    """The docs' first Table 2 row (mu-tilde prediction, the true bound L, learned diagonal
    Sigma), micro-sized and queued (`dvc exp run --queue` + `dvc queue start`): in the
    experiment's temporary copy train, sample, quality and evaluate rerun with the U-Net's 2C
    outputs, and nothing is written over the workspace's outputs; the one MLflow store holds
    both trainings, and the registry's champion is the one with the lower FID."""
    pipeline, root = baseline, baseline.root
    before = workspace_state(root)
    row = table2_command("μ̃ prediction, L, learned diagonal Σ")
    pipeline.dvc("exp", "run", "--queue", "-n", "table2-learned", *row)
    status = run_the_queue(pipeline)
    out = run([str(BIN / "dvc"), "queue", "logs", "table2-learned"], root, pipeline.env)
    assert status.count("Success") == 1, f"{status}\n{out[-3000:]}"
    assert "Stage 'shard' didn't change, skipping" in out, out
    assert "Stage 'fid_stats' didn't change, skipping" in out, out
    assert all(f"Running stage '{s}'" in out for s in ("train", "sample", "quality", "evaluate"))
    assert workspace_state(root) == before  # the experiment wrote into its copy only
    shown = json.loads(pipeline.dvc("exp", "show", "--json"))
    assert float(exp_metrics(shown, "table2-learned")["metrics/eval.json"]["data"]["fid"]) > 0

    client = MlflowClient(pipeline.server.url)
    exp = client.get_experiment_by_name("ddpm")
    assert exp is not None
    trains = client.search_runs(
        [exp.experiment_id], "tags.`dvc.stage` = 'train'", order_by=["attributes.start_time ASC"]
    )
    chosen = [tuple(r.data.params[f"diffusion.{k}"] for k in TABLE2_ROW) for r in trains]
    assert chosen == [("eps", "fixedlarge", "mse"), ("mean", "learned", "kl")]
    assert trains[1].data.tags.get("dvc.exp") == "table2-learned"
    assert "dvc.exp" not in trains[0].data.tags
    fids = []
    for train in trains:
        assert train.info.status == "FINISHED"
        assert len(train.data.tags["data.manifest_sha1"]) == 40
        assert train.data.tags["git.commit"] != "unknown"
        children = client.search_runs(
            [exp.experiment_id], f"tags.mlflow.parentRunId = '{train.info.run_id}'"
        )
        by_stage = {c.data.tags["dvc.stage"]: c for c in children}
        assert set(by_stage) == {"sample", "quality", "evaluate"}
        evaluated = by_stage["evaluate"]
        assert {"fid", "fid_test", "nll_bpd", "nll_bpd_sem"} <= set(evaluated.data.metrics)
        assert evaluated.data.tags["fid.comparability"].startswith("NOT comparable")
        fids.append(evaluated.data.metrics["fid"])
        artifacts = {a.path for a in client.list_artifacts(train.info.run_id, "model")}
        assert "model/ema.safetensors" in artifacts
        shown = {a.path for a in client.list_artifacts(evaluated.info.run_id, "evaluate")}
        assert "evaluate/rate_distortion.png" in shown
    assert fids[0] != fids[1]  # different weights, different samples, different FID
    # Each training registered a version of mlflow.model_name and its evaluate gated it: the
    # champion is the train run with the lower FID (both carry the same comparability label).
    versions = client.search_model_versions("name = 'ddpm-digits'")
    assert sorted(v.run_id for v in versions) == sorted(t.info.run_id for t in trains)
    best = trains[fids.index(min(fids))].info.run_id
    assert client.get_model_version_by_alias("ddpm-digits", "champion").run_id == best


def test_outputs_travel_through_a_remote(pipeline: Pipeline, tmp_path: Path) -> None:
    """`dvc push` to a local-folder remote, a fresh clone, `dvc pull`: `dvc repro` has nothing
    to do (the README's `dvc remote add -d` workflow, with a folder for the bucket)."""
    root, env = pipeline.root, pipeline.env
    pipeline.dvc("remote", "add", "-d", "shared", str(tmp_path / "remote"))
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "remote", "--allow-empty"], root, env)
    assert "pushed" in pipeline.dvc("push")
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(root), str(clone)], tmp_path, env)
    run([str(BIN / "dvc"), "pull"], clone, env)
    assert (clone / "models" / "ema.safetensors").read_bytes() == (
        root / "models" / "ema.safetensors"
    ).read_bytes()
    out = run([str(BIN / "dvc"), "repro"], clone, env)
    assert "Running stage" not in out
    assert all(f"Stage '{s}' didn't change, skipping" in out for s in STAGES), out


def released_weights_recipe() -> list[str]:
    """The shell lines of docs/paper-fidelity.md's released-weights recipe (its bash fence)."""
    text = (REPO / "docs" / "paper-fidelity.md").read_text()
    fence = text.split("Or evaluate the released weights", 1)[1].split("```bash\n", 1)[1]
    return [ln for ln in fence.split("```", 1)[0].splitlines() if ln.strip()]


def test_the_released_weights_recipe_evaluates_without_training(
    baseline: Pipeline, tmp_path: Path
) -> None:
    """docs/paper-fidelity.md's released-weights recipe, its lines as written, micro-sized: in a
    fresh clone (no outputs) of the workspace's committed results that shares the team's DVC
    cache (the workspace's), the `sed` selects the profile (micro, with `unet.ch: 32` kept in
    conf/config.yaml: the released model's width), `dvc exp run fid_stats` finds shard and
    fid_stats as the clone's dvc.lock records them (same params, same deps) and checks them out
    of that cache instead of running them, `import_diffusers` writes the train outputs from a
    real diffusers folder, `dvc commit -f train && dvc repro evaluate` samples and evaluates:
    train never runs."""
    pipeline = baseline
    clone, env = tmp_path / "clone", pipeline.env
    run(["git", "clone", "-q", str(pipeline.root), str(clone)], tmp_path, env)
    shared_cache = str(pipeline.root / ".dvc" / "cache")  # a machine's setting: config.local
    run([str(BIN / "dvc"), "cache", "dir", "--local", shared_cache], clone, env)
    ours = yaml.safe_load((clone / "conf" / "config.yaml").read_text())
    overrides = {"unet": {"ch": MATCHING["unet.ch"]}, "evaluate": ours["evaluate"]}
    config = (REPO / "conf" / "config.yaml").read_text()  # the repo's: `profile: default`
    (clone / "conf" / "config.yaml").write_text(config + yaml.safe_dump(overrides))
    save_released(clone / "released")
    lines = released_weights_recipe()
    assert len(lines) == 4 and "ddpm-cifar10-32/" in lines[2], lines
    outs = []
    for line in lines:
        micro = line.replace("cifar10-paper", "micro").replace("ddpm-cifar10-32/", "released/")
        outs.append(run(["bash", "-c", micro], clone, env))
    params = yaml.safe_load((clone / "params.yaml").read_text())
    assert (params["profile"], params["unet"]["ch"]) == ("micro", 32)
    # checked out of the shared cache before DVC looks at them (dvc.lock's hashes), not rerun
    assert all(f"Stage '{s}' didn't change, skipping" in outs[1] for s in ("shard", "fid_stats"))
    assert "Running stage" not in outs[1], outs[1]
    manifest = "data/shards/manifest.json"
    assert (clone / manifest).read_bytes() == (pipeline.root / manifest).read_bytes()
    assert "released weights from" in outs[2]
    assert "Running stage 'train'" not in outs[3]
    assert all(f"Running stage '{s}'" in outs[3] for s in ("sample", "evaluate")), outs[3]
    train = json.loads((clone / "metrics" / "train.json").read_text())
    details = json.loads((clone / "runs" / "train.json").read_text())["details"]
    assert train["steps"] == 0 and details["weights"].startswith("released: ")
    assert float(json.loads((clone / "metrics" / "eval.json").read_text())["fid"]) > 0


def test_a_sample_stage_killed_mid_repro_resumes_its_verified_shards(pipeline: Pipeline) -> None:
    """`dvc repro sample` (1 actor, 2 shards of 8, on a local Ray cluster of its own) whose
    stage is SIGKILLed, with its Ray processes, once the first shard is on disk (the tree is
    frozen by SIGSTOP first, so the count is exact). The rerun keeps that shard (same file:
    `persist: true` stops DVC from deleting the output), samples only the other, and ends
    byte-identical to the uninterrupted run that made the workspace's samples."""
    import psutil

    root, samples = pipeline.root, pipeline.root / "data" / "samples"
    assert json.loads(pipeline.dvc("status", "--json")) == {}  # the samples are current
    reference = {p.name: p.read_bytes() for p in samples.iterdir()}
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["sample"]["num_workers"] = 1  # shards one after the other; same pixels for any count
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    shutil.rmtree(samples)
    log = (root.parent / "killed-repro.log").open("w")
    local = {k: v for k, v in pipeline.env.items() if k != "RAY_ADDRESS"}  # its own cluster
    repro = subprocess.Popen([str(BIN / "dvc"), "repro", "sample"], cwd=root, env=local,
                             stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + 600  # bounds the wait only
    while not list(samples.glob("samples-*.tar")):
        assert repro.poll() is None and time.monotonic() < deadline, "no shard was written"
        time.sleep(0.02)
    tree = psutil.Process(repro.pid).children(recursive=True)
    for proc in tree:
        with contextlib.suppress(psutil.Error):
            proc.suspend()  # SIGSTOP: nothing more is written
    kept = {p.name: p.stat().st_ino for p in samples.glob("samples-*.tar")}
    stage = [p for p in tree if "stages.sample" in " ".join(p.cmdline())]
    for proc in [*stage, *tree]:
        with contextlib.suppress(psutil.Error):
            proc.kill()  # SIGKILL: the stage process first, then its Ray processes
    repro.wait()
    assert repro.returncode != 0 and stage and len(kept) == 1, (repro.returncode, kept)

    out = pipeline.dvc("repro", "sample")
    assert "Running stage 'sample'" in out
    assert pipeline.json("metrics/sample.json")["new_images"] == 8  # only the other shard
    assert {n: (samples / n).stat().st_ino for n in kept} == kept  # the verified one kept
    assert {p.name: p.read_bytes() for p in samples.iterdir()} == reference
