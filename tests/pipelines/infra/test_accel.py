"""pipelines.infra.accel: the inference wrapper for sampling/NLL and the option checks, on CPU."""

from __future__ import annotations

import pytest
import torch

from ddpm_core.unet import UNet
from pipelines.infra.accel import InferenceModel, autocast, check_compile_mode

CPU = torch.device("cpu")


def _model() -> UNet:
    torch.manual_seed(0)
    model = UNet(1, 1, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                 dropout=0.0, resolution=8)  # fmt: skip
    with torch.no_grad():  # unit-scale the 1e-10-initialised output layers: every path counts
        for p in model.parameters():
            if p.ndim > 1 and float(p.abs().max()) < 1e-6:
                p.normal_(0.0, p[0].numel() ** -0.5)
    return model.eval()


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(6, 1, 8, 8, generator=g), torch.tensor([0, 1, 5, 9, 15, 19])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_fp32_eager_is_the_model_itself() -> None:
    model, (x, t) = _model(), _inputs()
    out = InferenceModel(model, CPU)(x, t)
    assert out.dtype == torch.float32 and torch.equal(out, model(x, t).detach())


def test_bf16_and_channels_last_stay_within_two_percent_of_fp32() -> None:
    model, (x, t) = _model(), _inputs()
    ref = model(x, t).detach()
    cl = InferenceModel(model, CPU, channels_last=True)(x, t)
    assert _rel(cl, ref) < 1e-5
    bf16 = InferenceModel(model, CPU, precision="bf16")(x, t)
    assert bf16.dtype == torch.float32 and 0 < _rel(bf16, ref) < 0.02


@pytest.mark.usefixtures("scalar_inductor")
def test_compiled_inference_matches_eager() -> None:
    model, (x, t) = _model(), _inputs()
    ref = model(x, t).detach()
    compiled = InferenceModel(model, CPU, compile="default")
    out = compiled(x, t)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    # Frozen: Inductor folded the weights in at the first call (and prepacked them for oneDNN),
    # so a later change of the module's parameters no longer reaches the compiled network.
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    assert _rel(model(x, t).detach(), ref) > 0.1  # eager sees the new weights
    torch.testing.assert_close(compiled(x, t), out)


def test_bad_options_name_the_value() -> None:
    with pytest.raises(ValueError, match="compile: got True"):
        check_compile_mode(True)
    with pytest.raises(ValueError, match="'max'"):
        check_compile_mode("max")
    with pytest.raises(ValueError, match="precision: got 'fp16'"):
        autocast("fp16", CPU)  # type: ignore[arg-type]
