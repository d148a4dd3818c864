"""The README and docs/*.md, read as a newcomer would run them: every fence is closed, and every
`python -m stages.X` flag, `make` target, `-S key`, profile name and repository path they name
exists (issue 21)."""

from __future__ import annotations

import re
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


def _params_keys(tree: dict, prefix: str = "") -> set[str]:
    keys = set()
    for k, v in tree.items():
        keys.add(prefix + k)
        if isinstance(v, dict):
            keys |= _params_keys(v, prefix + k + ".")
    return keys


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


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_stage_commands_and_flags_exist(doc: Path) -> None:
    for m in re.finditer(r"python -m stages\.(\w+)([^\n#|;&]*)", _code(doc)):
        src = REPO / "stages" / f"{m.group(1)}.py"
        assert src.exists(), f"{doc.name}: `python -m stages.{m.group(1)}`: no {src.name}"
        known = src.read_text() + (REPO / "stages" / "common.py").read_text()
        for flag in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", m.group(2)):
            assert f'"{flag}"' in known, f"{doc.name}: stages.{m.group(1)} has no flag {flag}"


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


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_set_keys_and_profiles_exist(doc: Path) -> None:
    keys = _params_keys(yaml.safe_load((REPO / "params.yaml").read_text()))
    for key, value in re.findall(r"-S ([\w.]+)=(\S*)", _code(doc)):
        if key == "profile":
            name = value.strip("'\"`")
            if name.startswith("<"):
                continue  # a placeholder, e.g. profile=<name>
            assert (REPO / "conf" / "profile" / f"{name}.yaml").exists(), (
                f"{doc.name}: -S profile={name}: no conf/profile/{name}.yaml"
            )
        else:
            assert key in keys, f"{doc.name}: -S {key}=...: no such key in params.yaml"


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
