"""dvc.yaml against the code: each stage's deps cover the modules it imports, its params exist."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, default_params_dict

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


@pytest.mark.parametrize("name", sorted(STAGES))
def test_code_deps_cover_the_import_closure(name: str) -> None:
    stage = STAGES[name]
    assert stage["cmd"] == f"python -m stages.{name} --params params.yaml"
    deps = set(stage["deps"])
    assert "ddpm_core" in deps
    needed = {str(p) for p in import_closure(f"stages.{name}") if p.parts[0] != "ddpm_core"}
    assert needed - deps == set(), f"dvc.yaml stage {name}: add these deps"
    stale = {d for d in deps if d.endswith(".py")} - needed
    assert stale == set(), f"dvc.yaml stage {name}: deps it does not import"


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
