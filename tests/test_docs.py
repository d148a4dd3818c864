"""The README and docs/*.md, read as a newcomer would run them (issues 21, 30).

Every fence is closed; every `make` target, profile and repository path they name exists; every
`python -m stages.X --flag` is one of that CLI's real `--help` options; every `dvc exp run -S`
line composes (DVC's Hydra call, as `dvc exp run` does it) into params the strict loader
accepts; a figure quoted in several places says what docs/figures.yaml says.

Every fenced bash/sh/console/python block is run by a test, or marked on the line before its
fence (the convention of this repository):

    <!-- doc-test: needs kubectl -->          what the block needs and this machine lacks
    <!-- doc-test: run by tests/<path>.py::<test name> -->   a test that reads this very block

and a mark must be true: the block uses what it needs and this machine cannot give it (a tool
without its cluster or daemon, a GPU, a dataset not in the checkout), and the named test exists
and reads the doc. The blocks this file runs are at its end.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from markdown_it import MarkdownIt

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE_LANGS = {"", "bash", "sh", "console", "yaml", "python", "text", "toml", "json", "dockerfile"}


def _tokens(doc: Path) -> list:
    return MarkdownIt("commonmark").parse(doc.read_text())


def _code(doc: Path) -> str:
    """All code (fences and inline spans) of `doc`, one piece a line."""
    out = []
    for tok in _tokens(doc):
        if tok.type == "fence":
            out.append(tok.content)
        for child in tok.children or []:
            if child.type == "code_inline":
                out.append(child.content)
    return "\n".join(out)


def _make_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w-]*):", text, flags=re.M))


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_fences_are_balanced_and_name_a_language(doc: Path) -> None:
    lines = [ln for ln in doc.read_text().splitlines() if ln.lstrip().startswith("```")]
    assert len(lines) % 2 == 0, f"{doc.name}: odd number of ``` lines (an unclosed fence)"
    for tok in _tokens(doc):
        if tok.type == "fence":
            stray = [ln for ln in tok.content.splitlines() if ln.lstrip().startswith("```")]
            assert not stray, (
                f"{doc.name}:{tok.map[0] + 1}: fence swallows {stray[0]!r} (not a closing fence)"
            )
            assert tok.info.strip() in FENCE_LANGS, (
                f"{doc.name}:{tok.map[0] + 1}: fence opened with {tok.info!r}: text after ``` "
                "(a closing fence followed by prose?)"
            )


def _help(stage: str) -> str:
    """`python -m stages.<stage> --help`, run by its own argparse in this process."""
    import importlib

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        importlib.import_module(f"stages.{stage}").main(["--help"])
    assert exit_.value.code == 0, f"stages.{stage} --help exited {exit_.value.code}"
    return out.getvalue()


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_stage_commands_and_flags_exist(doc: Path) -> None:
    """Each flag after `python -m stages.X` is an option of X's real parser (its --help)."""
    for m in re.finditer(r"python -m stages\.(\w+)([^\n#|;&`]*)", _code(doc)):
        src = REPO / "stages" / f"{m.group(1)}.py"
        assert src.exists(), f"{doc.name}: `python -m stages.{m.group(1)}`: no {src.name}"
        options = set(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", _help(m.group(1))))
        for flag in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", m.group(2)):
            assert flag in options, (
                f"{doc.name}: `python -m stages.{m.group(1)} ... {flag}`: not an option of its "
                f"--help ({sorted(options)})"
            )


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_make_targets_exist(doc: Path) -> None:
    targets = _make_targets()
    for line in _code(doc).splitlines():
        for m in re.finditer(r"(?:^|[;&|]\s*)make ([\w-]+(?: [\w-]+)*)", line.strip()):
            rest = line.strip()[m.end() :]
            words = m.group(1).split()
            if rest.startswith("="):  # `make image IMAGE=...`: the last word is a variable
                words = words[:-1]
            for target in words:
                assert target in targets, f"{doc.name}: `make {target}`: no such Makefile target"


def _set_lines(doc: Path, folder: Path) -> list[list[str]]:
    """The `-S` overrides of each piece of code of `doc` that has some (a fence's line, an inline
    span; in a profile, a span of its comments), with the profile they apply to first: the one
    the piece names, else the profile file's own, else the default. Placeholders are filled:
    `profile=<name>` the default, any other `<...>` `folder`; `-S key=value` says how, no more."""
    if doc.suffix == ".yaml":
        comments = " ".join(ln.lstrip("# ") for ln in doc.read_text().splitlines() if ln[:1] == "#")
        pieces, own = re.findall(r"`([^`]*)`", comments), f"profile={doc.stem}"
    else:
        pieces, own = _code(doc).replace("\\\n", " ").splitlines(), "profile=default"
    runs = []
    for piece in pieces:
        if "-S " not in piece:
            continue
        piece = re.sub(r"profile=<[^>]*>", "profile=default", piece.split("#")[0])
        words = shlex.split(re.sub(r"<[^>]*>", str(folder), piece))
        sets = [words[i + 1] for i, w in enumerate(words[:-1]) if w == "-S"]
        sets = [o for o in sets if o != "key=value"]
        if sets:
            runs.append(sets if any(o.startswith("profile=") for o in sets) else [own, *sets])
    return runs


def _compose(overrides: list[str], out: Path) -> Path:
    """params.yaml as `dvc exp run -S ...` writes it: DVC's own Hydra composition of conf/."""
    from dvc.utils.hydra import compose_and_dump

    compose_and_dump(out, str(REPO / "conf"), None, "config", str(REPO), overrides)
    return out


PROFILES = sorted((REPO / "conf" / "profile").glob("*.yaml"))


@pytest.mark.parametrize("doc", DOCS + PROFILES, ids=lambda p: p.name)
def test_every_set_line_composes_into_params_the_loader_accepts(doc: Path, tmp_path: Path) -> None:
    """`dvc exp run ... -S profile=X -S key=value`: composed with the profile as DVC does, the
    params load strictly and their paths pass the stage's check. A placeholder (`<dir>`) is a
    folder that exists."""
    from pipelines.config import check_paths, load_params

    folder = tmp_path / "images"
    folder.mkdir()
    for i, overrides in enumerate(_set_lines(doc, folder)):
        try:
            params = load_params(_compose(overrides, tmp_path / f"params-{i}.yaml"))
            check_paths(params.paths, params.data.raw, REPO)
        except Exception as e:  # noqa: BLE001 - the doc line and the loader's words
            pytest.fail(f"{doc.name}: `dvc exp run -S {' -S '.join(overrides)}` is refused: {e}")


PATH_RE = re.compile(
    r"(?<![\w/.<-])((?:conf|deploy|stages|pipelines|ddpm_core|benchmarks|tests|docs|\.ci)/"
    r"[\w./-]*[\w/])"
)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_named_repository_paths_exist(doc: Path) -> None:
    text = doc.read_text()
    for m in PATH_RE.finditer(text):
        path = m.group(1)
        if "*" in path or "<" in path:
            continue
        assert (REPO / path).exists(), f"{doc.name}: names {path}, which is not in the repository"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_params_files_exist(doc: Path) -> None:
    for name in re.findall(r"--params (\S+\.yaml)", _code(doc)):
        if "<" in name or name.startswith("/") or name == "p.yaml":
            continue
        assert (REPO / name).exists(), (
            f"{doc.name}: --params {name}: no such file in the repository"
        )


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_no_retired_cli(doc: Path) -> None:
    """huggingface_hub 1.x has only the `hf` CLI (`hf auth login`, `hf upload`)."""
    assert "huggingface-cli" not in doc.read_text(), (
        f"{doc.name}: `huggingface-cli` is gone: use `hf`"
    )


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(doc: Path) -> None:
    for tok in _tokens(doc):
        for child in tok.children or []:
            href = child.attrs.get("href") if child.type == "link_open" else None
            if not href or "://" in href or href.startswith(("#", "mailto:")):
                continue
            target = (doc.parent / href.split("#")[0]).resolve()
            assert target.exists(), f"{doc.name}: link to {href}, which does not exist"


def test_table2_rows_train_on_cifar10() -> None:
    """A Table 2 row quotes CIFAR-10 figures, so its command selects the paper profile."""
    rows = [
        ln
        for ln in (REPO / "docs" / "paper-fidelity.md").read_text().splitlines()
        if "-S diffusion.mean_type" in ln
    ]
    assert rows, "docs/paper-fidelity.md: no Table 2 commands"
    for row in rows:
        assert "-S profile=cifar10-paper" in row, (
            f"docs/paper-fidelity.md: Table 2 row without the profile: {row}"
        )


def test_ci_runs_the_readmes_test_command_and_nothing_else() -> None:
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()
    body = [ln for ln in ci if ln.strip() and not ln.startswith(("#", "set -", "cd "))]
    assert body == ["make test"], f".ci/run: expected only `make test`, got {body}"
    assert "make test" in (REPO / "README.md").read_text().split("\n\n")[1]


# ----------------------------------------------------------------------------------------------
# Every shell or Python block is run by a test, or marked as needing what this machine lacks

RUN_LANGS = {"bash", "sh", "console", "python"}
MARK = re.compile(r"^<!-- doc-test: (needs|run by) (.+?) -->$")


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    mark: tuple[str, str] | None  # ("needs", what) or ("run by", "tests/x.py::test_y")

    def where(self) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line}"


def blocks(doc: Path) -> list[Block]:
    """The bash/sh/console/python fences of `doc`, each with the mark on the line before it."""
    lines = doc.read_text().splitlines()
    found = []
    for tok in _tokens(doc):
        if tok.type != "fence" or tok.info.strip() not in RUN_LANGS:
            continue
        start = tok.map[0]
        m = MARK.match(lines[start - 1].strip()) if start > 0 else None
        mark = (m.group(1), m.group(2)) if m else None
        found.append(Block(doc, start + 1, tok.info.strip(), tok.content, mark))
    return found


def block_of(rel: str, marker: str) -> str:
    """The text of the one block in REPO/`rel` that holds `marker` (for tests that run a doc's
    block as written)."""
    texts = [b.text for b in blocks(REPO / rel) if marker in b.text]
    assert len(texts) == 1, f"{rel}: {len(texts)} blocks hold {marker!r}"
    return texts[0]


def _profiles_named(text: str) -> list[dict]:
    names = re.findall(r"profile=([\w-]+)|conf/profile/([\w-]+)\.yaml", text)
    return [
        yaml.safe_load((REPO / "conf" / "profile" / f"{a or b}.yaml").read_text()) for a, b in names
    ]


def _kube_config() -> bool:
    import os

    return bool(os.environ.get("KUBECONFIG")) or (Path.home() / ".kube" / "config").is_file()


# Needs a block may be marked with: words the block must hold (one of them), and whether this
# machine has the thing (then the mark is false: run the block).
TOOL_NEEDS: dict[str, tuple[tuple[str, ...], object]] = {
    # a client without its server runs nothing: kubectl/helm need a cluster, docker a daemon
    "kubectl": (("kubectl",), lambda: shutil.which("kubectl") and _kube_config()),
    "helm": (("helm",), lambda: shutil.which("helm") and _kube_config()),
    "docker": (
        ("docker",),
        lambda: shutil.which("docker") and Path("/var/run/docker.sock").exists(),
    ),
    "a Kubernetes cluster": (
        ("kubectl", "helm"),
        lambda: shutil.which("kubectl") and _kube_config(),
    ),
    # the test suite never downloads (house rule), and it runs on one machine
    "PyPI": (("pip install",), lambda: False),
    "several machines": (("",), lambda: False),
    "an S3 bucket or an NFS folder shared with others": (("s3://", "nfs"), lambda: False),
}


def _needs_is_true(what: str, text: str) -> str | None:
    """None if `text` needs `what` and this machine lacks it; otherwise why the mark is false."""
    if what in TOOL_NEEDS:
        words, here = TOOL_NEEDS[what]
        if not any(w in text for w in words):
            return f"the block uses none of {words}"
        return f"this machine has {what}: run the block" if here() else None  # type: ignore[operator]
    if what in ("a GPU", "a cluster of GPUs"):
        import torch

        gpu = [p for p in _profiles_named(text) if p["train"]["use_gpu"]]
        if not gpu and "cuda" not in text:
            return "the block names no GPU profile and no cuda"
        enough = 2 if what == "a cluster of GPUs" else 1
        return "this machine has the GPUs" if torch.cuda.device_count() >= enough else None
    if what.startswith("the dataset "):
        roots = [p["data"]["root"] for p in _profiles_named(text) if p["data"]["root"]]
        roots += re.findall(r"\b(data/[\w-]+(?:/[\w-]+)*)(?![\w.])", text)  # folders, no files
        if not roots:
            return "the block names no profile with a data.root and no data/ folder"
        here = [r for r in roots if (REPO / r).exists()]
        return f"{here[0]} is in this checkout: run the block" if here else None
    if what == "a Hugging Face login":
        if "hf " not in text and "push_to_hub" not in text:
            return "the block does not talk to the Hub"
        from huggingface_hub import get_token

        return "this machine is logged in to the Hub" if get_token() else None
    known = [
        *TOOL_NEEDS,
        "a GPU",
        "a cluster of GPUs",
        "the dataset <name>",
        "a Hugging Face login",
    ]
    return f"unknown need {what!r} (known: {', '.join(known)})"


def _run_by_is_true(target: str, doc: Path) -> str | None:
    """None if `target` (tests/<path>.py::<test>) exists and its file reads `doc`."""
    path, _, name = target.partition("::")
    test_file = REPO / path
    if not (path.startswith("tests/") and path.endswith(".py") and test_file.is_file()):
        return f"{path}: no such test file"
    source = test_file.read_text()
    if not re.search(rf"^(?:async )?def {re.escape(name.split('[')[0])}\(", source, flags=re.M):
        return f"{path} has no test {name}"
    if str(doc.relative_to(REPO)) not in source:
        return f"{path} never names {doc.relative_to(REPO)}: it cannot read the block"
    return None


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_block_is_run_or_marked_and_its_mark_is_true(doc: Path) -> None:
    for block in blocks(doc):
        assert block.mark is not None, (
            f"{block.where()}: a {block.lang} block with no mark: run it in a test and add "
            "`<!-- doc-test: run by tests/<path>.py::<test> -->` on the line before its fence, "
            "or `<!-- doc-test: needs <what this machine lacks> -->`"
        )
        kind, what = block.mark
        if kind == "needs":
            for need in re.split(r",\s*|\s+and\s+", what):
                why = _needs_is_true(need, block.text)
                assert why is None, f"{block.where()}: `needs {need}` is not true: {why}"
        else:
            why = _run_by_is_true(what, doc)
            assert why is None, f"{block.where()}: `run by {what}` is not true: {why}"


def test_a_false_mark_is_caught(tmp_path: Path) -> None:
    """The mark check fails on marks that lie (a test that does not exist, a need not used)."""
    assert _run_by_is_true("tests/test_docs.py::test_no_such_test", REPO / "README.md")
    assert _run_by_is_true("tests/test_layers.py::test_layers", REPO / "README.md")
    assert _needs_is_true("kubectl", "dvc repro")
    assert _needs_is_true("a GPU", "dvc exp run -S profile=micro")
    assert _needs_is_true("a spaceship", "anything")


# ----------------------------------------------------------------------------------------------
# The blocks this file runs, micro-sized (the docs' own text; sizes replaced as named)


def test_the_diffusers_snippets_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """README.md's and docs/stages.md's `DDPMPipeline` blocks, in a folder holding an exported
    `export/diffusers` (ch 32: exportable, 8x8, T = 20), with T for the 1,000 steps."""
    from pipelines.artifacts.diffusers_dir import write_diffusers_dir
    from pipelines.artifacts.model_dir import build_unet
    from tests.helpers import MATCHING, build_params

    params = build_params(tmp_path, MATCHING)
    write_diffusers_dir(params, build_unet(params).state_dict(), tmp_path / "export" / "diffusers")
    monkeypatch.chdir(tmp_path)
    steps = f"num_inference_steps={params.diffusion.T}"
    for rel in ("README.md", "docs/stages.md"):
        code = block_of(rel, "images = pipe(batch_size=16")
        namespace: dict[str, object] = {}
        exec(code.replace("num_inference_steps=1000", steps), namespace)  # noqa: S102
        images = namespace["images"]
        assert isinstance(images, list) and len(images) == 16 and images[0].size == (8, 8), rel
    eps = namespace["eps"]  # docs/stages.md: the raw network on its own
    assert tuple(eps.shape) == (4, 1, 8, 8)  # type: ignore[attr-defined]


def test_the_registry_snippets_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """README.md's and docs/mlflow.md's `models:/ddpm-digits@champion` blocks, in a folder whose
    `mlflow.db` holds a registered micro model that the registry's gate made champion."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from pipelines.infra import registry
    from pipelines.infra.tracking import open_run
    from pipelines.train.mlflow_model import log_mlflow_model
    from tests.helpers import build_params, make_model_dir

    monkeypatch.chdir(tmp_path)
    params = build_params(tmp_path)  # tracking_uri sqlite:///<tmp_path>/mlflow.db
    assert params.mlflow.model_name == "ddpm-digits"
    tracker = open_run(params, "train", tmp_path)
    logged = log_mlflow_model(params, tracker, make_model_dir(params), params.train.steps)
    assert logged.version is not None
    client = MlflowClient(params.mlflow.tracking_uri)
    label = "NOT comparable with published figures: micro"
    assert registry.gate(client, "ddpm-digits", logged.version, 9.0, "train", label).outcome == (
        "champion"
    )
    try:
        for rel in ("README.md", "docs/mlflow.md"):
            namespace: dict[str, object] = {}
            exec(block_of(rel, "import mlflow, pandas as pd"), namespace)  # noqa: S102
            shape = namespace["images"].shape  # type: ignore[attr-defined]
            assert shape == (16, 8, 8, 1), rel
    finally:
        mlflow.set_tracking_uri(None)


def test_the_mlflow_ui_line_serves_the_store(tmp_path: Path) -> None:
    """docs/mlflow.md's `mlflow ui` line, in a folder with a `.venv/bin` (this interpreter's),
    a free port and one worker added (no job runner, as tests.helpers.MlflowServer): the UI
    answers /health, then is stopped."""
    import os
    import subprocess
    import sys
    import time
    import urllib.request

    from tests.helpers import free_port

    line = block_of("docs/mlflow.md", ".venv/bin/mlflow ui").split("#")[0].strip()
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parents[1])
    port = free_port()
    proc = subprocess.Popen(
        [*shlex.split(line), "--port", str(port), "--workers", "1"],
        cwd=tmp_path,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, "mlflow ui exited"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "mlflow ui did not answer in 60 s"
                time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert (tmp_path / "mlflow.db").is_file()


# A one-stage stand-in for dvc.yaml: reads the two params the block sets, writes a metric.
STAND_IN_STAGE = """\
import json, yaml
t = yaml.safe_load(open("params.yaml"))["train"]
json.dump({"lr": t["lr"], "ema": t["ema_decay"]}, open("m.json", "w"))
"""
STAND_IN_DVC_YAML = {
    "stages": {
        "train": {
            "cmd": "python stand_in.py",
            "deps": ["stand_in.py"],
            "params": ["train.lr", "train.ema_decay"],
            "metrics": [{"m.json": {"cache": False}}],
        }
    }
}


def test_the_experiment_block_runs_queued_and_temporary_experiments(tmp_path: Path) -> None:
    """docs/configuration.md's queue/temp block, its lines as written, in a git + DVC checkout of
    this repository's conf/ and .dvc/config (Hydra composition on) whose dvc.yaml is a one-stage
    stand-in (the real stages under `dvc queue` are tests/test_pipeline_e2e.py's): each
    experiment composes params.yaml from conf/ plus its -S and `dvc exp show` has all three."""
    import json
    import os
    import subprocess
    import sys
    import time

    bin_dir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("DVC_")}
    env |= {"PATH": f"{bin_dir}{os.pathsep}{env['PATH']}", "GIT_AUTHOR_NAME": "docs"}
    env |= {"GIT_AUTHOR_EMAIL": "d@example.invalid", "GIT_COMMITTER_NAME": "docs"}
    env |= {"GIT_COMMITTER_EMAIL": "d@example.invalid"}

    def sh(line: str) -> str:
        proc = subprocess.run(
            ["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert proc.returncode == 0, f"{line}\n{proc.stdout}{proc.stderr}"
        return proc.stdout

    shutil.copytree(REPO / "conf", tmp_path / "conf")
    (tmp_path / ".dvc").mkdir()
    shutil.copy2(REPO / ".dvc" / "config", tmp_path / ".dvc" / "config")
    shutil.copy2(REPO / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "stand_in.py").write_text(STAND_IN_STAGE)
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(STAND_IN_DVC_YAML))
    sh("git init -q && git add -A && git commit -qm stand-in")  # they start from HEAD
    lines = block_of("docs/configuration.md", "dvc queue start").splitlines()
    assert len(lines) == 5 and "dvc queue start" in lines[2], lines
    for line in lines:
        sh(line)
    deadline = time.monotonic() + 120  # the queue's worker runs lr2 and lr5 in the background
    while "Queued" in (status := sh("dvc queue status")) or "Running" in status:
        assert time.monotonic() < deadline, status
        time.sleep(1)
    shown = json.loads(sh("dvc exp show --json"))
    metrics: dict[str, tuple[float, float]] = {}

    def collect(node: object) -> None:  # experiments at any nesting of the JSON
        if isinstance(node, dict):
            data = (node.get("data") or {}).get("metrics", {}).get("m.json", {}).get("data")
            if node.get("name") and data:
                metrics[node["name"]] = (data["lr"], data["ema"])
            node = list(node.values())
        if isinstance(node, list):
            for item in node:
                collect(item)

    collect(shown)
    assert metrics == {"lr2": (0.002, 0.995), "lr5": (0.0005, 0.995), "ema": (0.001, 0.999)}


# ----------------------------------------------------------------------------------------------
# A figure quoted in several places has one source: docs/figures.yaml

FIGURES_FILE = REPO / "docs" / "figures.yaml"
# Every place that quotes a figure: a pattern whose named groups are figures.yaml keys, or a key
# with its unit changed (`<name>_min` of `<name>_s`) or rounded (`<name>_about`: to tens).
N = r"([\d,.]+)"
QUOTES: dict[str, list[str]] = {
    "README.md": [
        r"`make repro` \| (?P<default_run_min>\d+) min",
        r"About (?P<default_run_min>\d+) minutes on 2 CPU cores \((?P<default_run_s>[\d,]+) s",
        r"`make test` runs the suite \(about (?P<suite_min>\d+) minutes on 2 cores: "
        r"(?P<suite_s>[\d,]+) s",
        r"`make test` runs about (?P<suite_tests_about>\d+) tests",
        r"profile=micro` \| (?P<micro_run_min>[\d.]+) min",
        r"≈ (?P<train_1gpu_h>[\d.]+) h train \+ (?P<sample_1gpu_min>\d+) min sampling",
        r"≥ (?P<train_8gpu_h>[\d.]+) h train \+ (?P<sample_8gpu_min>\d+) min sampling",
    ],
    "docs/stages.md": [
        r"On 2 CPU cores it takes about (?P<default_run_min>\d+) minutes",
        r"no outputs, (?P<default_run_s>[\d,]+) s",
    ],
    "docs/configuration.md": [r"800k steps in about (?P<train_1gpu_h>[\d.]+) h on one H200"],
    "docs/gpu-performance.md": [
        r"800k steps in (?P<train_1gpu_h>[\d.]+) h on one GPU",
        r"50k in (?P<sample_1gpu_min>\d+) min on one GPU, about (?P<sample_8gpu_min>\d+) min on 8",
        r"would be 800k steps in (?P<train_8gpu_h>[\d.]+) h",
        r"expect (?P<train_8gpu_h>[\d.]+) h as the lower bound",
        r"the 1-GPU profile's (?P<train_1gpu_h>[\d.]+) h",
        r"\| (?P<default_run_min>[\d.]+) min \((?P<default_run_s>[\d,]+) s",
        r"about (?P<suite_min>\d+) min \((?P<suite_tests>\d+) tests, (?P<suite_s>[\d,]+) s",
        r"micro.yaml` `dvc repro` \| 2-core CPU \| about (?P<micro_run_min>[\d.]+) min",
        r"measured step rate \| about (?P<train_1gpu_h>[\d.]+) h",
        r"all-reduce not measured\) \| at least (?P<train_8gpu_h>[\d.]+) h",
        r"one H200, measured \| about (?P<sample_1gpu_min>\d+) min",
    ],
    "conf/profile/cifar10-paper-1gpu.yaml": [
        r"800k steps take about (?P<train_1gpu_h>[\d.]+) h; 50k samples about "
        r"(?P<sample_1gpu_min>\d+) min",
    ],
    "conf/profile/cifar10-paper.yaml": [r"at least (?P<train_8gpu_h>[\d.]+) h of training"],
}


def _expected(group: str, figures: dict[str, float], quoted: str) -> float:
    """What figures.yaml says `group` is, rounded as `quoted` is."""
    if group in figures:
        value = figures[group]
    elif group.endswith("_min") and f"{group[:-4]}_s" in figures:
        value = figures[f"{group[:-4]}_s"] / 60
    elif group.endswith("_about"):
        return round(figures[group[: -len("_about")]], -1)
    else:
        raise KeyError(f"{group}: not a figure of {FIGURES_FILE.name}")
    decimals = len(quoted.split(".")[1]) if "." in quoted else 0
    return round(value, decimals)


def _prose(rel: str) -> str:
    """The text of `rel` as one line (a profile: its comments only)."""
    text = (REPO / rel).read_text()
    if rel.endswith(".yaml"):
        text = "\n".join(ln.split("#", 1)[1] for ln in text.splitlines() if "#" in ln)
    return re.sub(r"\s*\n\s*#?\s*", " ", text)


def test_quoted_figures_match_their_source() -> None:
    figures = yaml.safe_load(FIGURES_FILE.read_text())
    checked: dict[str, int] = dict.fromkeys(figures, 0)
    for rel, patterns in QUOTES.items():
        prose = _prose(rel)
        for pattern in patterns:
            found = list(re.finditer(pattern, prose))
            assert found, f"{rel}: no quote matches {pattern!r}: reworded? update QUOTES"
            for m in found:
                for group, quoted in m.groupdict().items():
                    want = _expected(group, figures, quoted)
                    got = float(quoted.replace(",", ""))
                    assert got == want, (
                        f"{rel}: {m.group(0)!r} quotes {group} = {quoted}; "
                        f"{FIGURES_FILE.name} gives {want:g}"
                    )
                    base = re.sub(r"_(min|about)$", "", group)
                    key = group if group in figures else base if base in figures else f"{base}_s"
                    checked[key] += 1
    once = [k for k, n in checked.items() if n < 2]
    assert not once, f"{FIGURES_FILE.name}: {once} quoted once or never: no need for a source"


def test_the_layout_table_names_modules_that_exist() -> None:
    """docs/architecture.md's table of folders: a module it describes (`name` (...) or `name`:)
    is a file of that folder."""
    text = (REPO / "docs" / "architecture.md").read_text()
    rows = re.findall(r"^\| `((?:ddpm_core|stages|pipelines)(?:/\w+)*/)` \|(.*)$", text, flags=re.M)
    assert len(rows) > 5, "docs/architecture.md: no layout table"
    for folder, row in rows:
        while row != (inner := re.sub(r"\(([^()]*)\)", "<>", row)):  # what parentheses hold
            row = inner
        for name in re.findall(r"`([a-z_]+)`(?: <>|:)", row):
            module = REPO / folder / name
            assert module.with_suffix(".py").is_file() or (module / "__init__.py").is_file(), (
                f"docs/architecture.md: row {folder} names a module {name!r}; "
                f"there is no {folder}{name}.py nor package {folder}{name}/"
            )


def test_sections_the_code_points_at_exist() -> None:
    """A module docstring's `see <doc>, "<section>"` names a heading of that doc."""
    for src in sorted((REPO / "stages").glob("*.py")) + sorted((REPO / "pipelines").rglob("*.py")):
        text = re.sub(r"\s+", " ", src.read_text())
        for doc, section in re.findall(r'see (README|docs/[\w-]+\.md), "([^"]+)"', text):
            path = REPO / ("README.md" if doc == "README" else doc)
            headings = {h.strip() for h in re.findall(r"^#+ (.+)$", path.read_text(), re.M)}
            assert section in headings, f"{src.relative_to(REPO)}: {doc} has no section {section!r}"


def _inline_code(doc: Path) -> list[str]:
    return [c.content for t in _tokens(doc) for c in t.children or [] if c.type == "code_inline"]


def test_quoted_errors_are_what_the_loader_prints(tmp_path: Path) -> None:
    """A quoted error `params.yaml: <key>: got <value>, ...` is what the loader (and the stages'
    path check) prints for params.yaml with <key> = <value> and the `other.key=value`s the
    quote names: the quote is the start of the real message."""
    from pipelines.config import check_paths, load_params
    from tests.helpers import default_params_dict, set_dotted

    quotes = [(doc, q) for doc in DOCS for q in _inline_code(doc) if q.startswith("params.yaml: ")]
    assert quotes, "no quoted params error in the docs"
    for doc, quote in quotes:
        quote = quote.removesuffix(" ...").removesuffix("...")
        m = re.match(r"params\.yaml: ([\w.]+): got (.+?)(?:, | \()", quote)
        assert m, f"{doc.name}: `{quote}`: not `params.yaml: <key>: got <value>, ...`"
        tree = default_params_dict()
        others = re.findall(r"([a-z_]+\.[a-z_]+)=('[^']*'|[^\s,;)`]+)", quote)
        for key, value in [*others, (m.group(1), m.group(2))]:
            set_dotted(tree, key, yaml.safe_load(value))
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump(tree))
        try:
            params = load_params(path)
            check_paths(params.paths, params.data.raw, REPO)
            message = "(accepted)"
        except ValueError as e:
            message = str(e).replace(f"{path}: ", "")
        message = f"params.yaml: {message}" if not message.startswith("params.yaml") else message
        assert message.startswith(quote), f"{doc.name}: quotes `{quote}`; the loader says {message}"


def test_the_retrain_exit_codes_the_docs_quote_are_the_clis() -> None:
    from stages import common, retrain

    codes = {
        "failed": retrain.EXIT_FAILED,
        "bad input": common.EXIT_USER_ERROR,
        "cluster lost": retrain.EXIT_LOST,
        "timed out": retrain.EXIT_TIMEOUT,
    }
    readme = re.sub(r"\s+", " ", (REPO / "README.md").read_text())
    quoted = re.search(r"\(exit 0 up to date or succeeded, ([^)]*)\)", readme)
    assert quoted, "README.md: the retrain exit codes are not quoted"
    said = dict(re.findall(r"(\d) ([a-z ]+?)(?:,|$)", quoted.group(1)))
    assert {name: int(code) for code, name in said.items()} == codes, quoted.group(0)
