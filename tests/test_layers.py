"""The layers of the tree, read from the imports (`ast`, nothing is imported).

- `ddpm_core` is pure: it imports nothing of `pipelines` / `stages` and no Ray, MLflow, DVC,
  YAML or argparse.
- The stage folders of `pipelines` (train, sample, evaluate, quality, data) are peers: none
  imports another; they share code through `pipelines.artifacts`, `pipelines.infra`,
  `pipelines.fid` and `pipelines.config`.
- The shared packages import no stage folder.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import REPO

STAGE_FOLDERS = ("train", "sample", "evaluate", "quality", "data")
SHARED = ("artifacts", "infra", "fid")
# Known crossings still to move (each with who moves it): none now.
KNOWN: set[str] = set()
IMPURE = ("ray", "mlflow", "dvc", "yaml", "argparse", "pipelines", "stages")


def imports(path: Path) -> set[str]:
    """Every module name `path` imports (absolute; `from a import b` gives a and a.b)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def stage_folder(module: str) -> str | None:
    """The stage folder a module name lies in (`pipelines.train.step` -> train), else None."""
    parts = module.split(".")
    return (
        parts[1]
        if len(parts) > 1 and parts[0] == "pipelines" and parts[1] in STAGE_FOLDERS
        else None
    )


def crossings(root: Path) -> list[str]:
    """'file imports module' for every import of a stage folder from outside that folder."""
    bad = []
    for folder in (*STAGE_FOLDERS, *SHARED):
        for path in sorted((root / "pipelines" / folder).rglob("*.py")):
            for module in sorted(imports(path)):
                other = stage_folder(module)
                if other is not None and other != folder:
                    bad.append(f"{path.relative_to(root)} imports {module}")
    return bad


def test_stage_folders_are_peers() -> None:
    found = crossings(REPO)
    assert [c for c in found if c.rsplit(".", 1)[0] not in KNOWN and c not in KNOWN] == []


def test_the_check_sees_a_crossing(tmp_path: Path) -> None:
    """A stage folder importing another one is found (the check is not vacuous)."""
    for folder in ("quality", "evaluate"):
        (tmp_path / "pipelines" / folder).mkdir(parents=True)
    (tmp_path / "pipelines/quality/stage.py").write_text("from pipelines.evaluate import fid\n")
    (tmp_path / "pipelines/evaluate/fid.py").write_text("import pipelines.evaluate.stage\n")
    assert crossings(tmp_path) == ["pipelines/quality/stage.py imports pipelines.evaluate"] + [
        "pipelines/quality/stage.py imports pipelines.evaluate.fid"
    ]


@pytest.mark.parametrize("path", sorted((REPO / "ddpm_core").rglob("*.py")), ids=str)
def test_ddpm_core_is_pure(path: Path) -> None:
    bad = sorted(m for m in imports(path) if m.split(".")[0] in IMPURE)
    assert bad == [], f"{path.relative_to(REPO)} imports {bad}"
