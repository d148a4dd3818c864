"""dvc.yaml against the code: a stage's deps are exactly the modules it imports; params exist."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import REPO, default_params_dict

DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())
STAGES: dict[str, dict[str, Any]] = DVC["stages"]
OWN = ("ddpm_core", "pipelines", "stages")


def imported_modules(path: Path) -> set[str]:
    """The project modules `path` imports (absolute imports of ddpm_core/pipelines/stages)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.split(".")[0] in OWN}


def import_closure(module: str) -> set[Path]:
    """Files of every project module reachable by imports from `module` (relative to REPO)."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        path = Path(*todo.pop().split(".")).with_suffix(".py")
        if path in seen or not (REPO / path).is_file():
            continue
        seen.add(path)
        todo.extend(imported_modules(REPO / path))
    return seen


def code_deps(stage: dict[str, Any]) -> set[str]:
    return {d for d in stage["deps"] if not d.startswith("${")}


def covered(deps: set[str], path: Path) -> bool:
    """`path` is a dep itself or lies in a folder that is one."""
    return any(str(path) == d or Path(d) in path.parents for d in deps)


@pytest.mark.parametrize("name", sorted(STAGES))
def test_code_deps_are_exactly_the_import_closure(name: str) -> None:
    stage = STAGES[name]
    assert stage["cmd"] == f"python -m stages.{name} --params params.yaml"
    deps, needed = code_deps(stage), import_closure(f"stages.{name}")
    missing = {str(p) for p in needed if not covered(deps, p)}
    assert missing == set(), f"dvc.yaml stage {name}: add these deps"
    for dep in deps:  # a folder dep is fine only when the stage imports every module in it
        files = [p.relative_to(REPO) for p in (REPO / dep).rglob("*.py")] or [Path(dep)]
        unused = {str(f) for f in files if f not in needed and f.name != "__init__.py"}
        assert unused == set(), f"dvc.yaml stage {name}: dep {dep} holds code it does not import"


def test_package_inits_hold_no_code() -> None:
    """Importing a module runs its packages' __init__.py: with only a docstring there, the
    import closure above is every file whose edit can change a stage."""
    for init in sorted(REPO.glob("*/**/__init__.py")):
        if init.relative_to(REPO).parts[0] not in OWN:
            continue
        body = ast.parse(init.read_text()).body
        docstring = body[:1] if body and isinstance(body[0], ast.Expr) else []
        assert body == docstring, f"{init.relative_to(REPO)}: keep package __init__ files empty"


def test_model_code_does_not_rerun_the_data_stages() -> None:
    """Editing the U-Net or the diffusion math leaves shard and fid_stats up to date."""
    for name in ("shard", "fid_stats"):
        deps = code_deps(STAGES[name])
        for model_file in ("ddpm_core/unet.py", "ddpm_core/diffusion.py", "ddpm_core/layers.py"):
            assert not covered(deps, Path(model_file)), f"{name} depends on {model_file}"
        assert not covered(deps, Path("pipelines/infra/tracking.py")), f"{name}: MLflow code"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_listed_params_exist(name: str) -> None:
    params = default_params_dict()
    for key in STAGES[name]["params"]:
        node: Any = params
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"{name}: params.yaml has no {key}"
            node = node[part]


def test_stages_chain_through_their_outputs() -> None:
    outs = {
        n: {next(iter(o)) if isinstance(o, dict) else o for o in s["outs"]}
        for n, s in STAGES.items()
    }
    assert "${paths.shards}" in outs["shard"] and "${paths.shards}" in STAGES["train"]["deps"]
    assert "${paths.model}" in outs["train"] and "${paths.model}" in STAGES["sample"]["deps"]
    assert "${paths.samples}" in outs["sample"]
    assert {"${paths.samples}", "${paths.fid_stats}"} <= set(STAGES["evaluate"]["deps"])


def test_only_the_resuming_sample_stage_persists_its_output() -> None:
    """`persist: true` keeps outputs across `dvc repro`: only where the stage resumes safely."""
    persisted = {
        (name, next(iter(out)))
        for name, stage in STAGES.items()
        for out in stage.get("outs", [])
        if isinstance(out, dict) and next(iter(out.values())).get("persist")
    }
    assert persisted == {("sample", "${paths.samples}")}
