"""GPU profile of the paper's U-Net through the project's own step, sampler and noise code.

Run: `python -m benchmarks.gpu_profile [--profile conf/profile/cifar10-paper.yaml] [--out PATH]` on
a CUDA machine (needs only torch, numpy, safetensors and pyyaml: no Ray, MLflow or DVC), or
`--smoke` for a tiny U-Net on CPU (the test suite runs it). It drives the code the stages run
without the Ray wrapper: `make_state` / `prepare_model` / `draw_t_noise` / `train_step` /
`read_stats` (the Ray worker's loop body), `sample_indices` with `InferenceModel` and
`CounterNoise` (the sample actors), and `calc_bpd_loop` with counter noise (the NLL actors).

Measured: training steps/s, images/s and MFU at several per-GPU batches for each execution mode,
where MFU = images/s x 3 x forward FLOPs per image (FlopCounterMode) / the bf16 matmul rate
measured in the same run; sampling images/s at T = 1000 (per-step time of a respaced chain, noise
draws included) and the hours for 50k samples; NLL images/s at T = 1000; bf16 vs fp32 output
error; CPU vs device agreement of the counter-based noise. Rows are written as they finish, so a
run cut short still leaves its table.
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.report import write_result
from ddpm_core.diffusion import GaussianDiffusion
from ddpm_core.rng import CounterNoise, image_keys, threefry2x32
from ddpm_core.sampling import sample_indices
from pipelines.config import CompileMode, Params, Precision, load_params
from pipelines.infra.accel import InferenceModel, autocast
from pipelines.infra.device import configure_backends, full_fp32
from pipelines.train.step import build_model, draw_t_noise, make_state, prepare_model, train_step

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "gpu_profile.md"
PAPER_STEPS = 800_000
PAPER_SAMPLES = 50_000


@dataclass(frozen=True)
class Mode:
    name: str
    precision: Precision
    channels_last: bool
    compile: CompileMode


MODES = (
    Mode("fp32 (TF32) eager", "fp32", False, False),
    Mode("bf16 eager", "bf16", False, False),
    Mode("bf16 + channels_last eager", "bf16", True, False),
    Mode("bf16 + channels_last + compile", "bf16", True, "default"),
    Mode(
        "bf16 + channels_last + compile reduce-overhead (CUDA graphs)",
        "bf16",
        True,
        "reduce-overhead",
    ),
)


@dataclass(frozen=True)
class Plan:
    """What to measure: full on a GPU, tiny on CPU (--smoke)."""

    train: tuple[tuple[int, tuple[Mode, ...]], ...]  # (per-GPU batch, modes)
    sample: tuple[tuple[int, Mode], ...]  # (batch, mode)
    nll: tuple[tuple[int, Mode], ...]
    steps: int  # timed training steps
    warmup: int
    chain: int  # reverse steps timed per sampling / NLL measurement
    matmul: int  # square matmul size for the peak rate


def full_plan() -> Plan:
    """Most telling rows first: a run cut short by its time limit keeps them."""
    fp32, bf16, fast, compiled, graphs = MODES
    return Plan(
        train=(
            (128, (fp32, bf16, fast, graphs)),
            (16, (fast, graphs)),
            (256, (fast, graphs)),
            (128, (compiled,)),
            (16, (compiled,)),
        ),
        sample=((1024, fp32), (1024, fast), (1024, graphs), (1024, compiled)),
        nll=((256, fast), (256, graphs)),
        steps=60,
        warmup=8,
        chain=20,
        matmul=8192,
    )


def training_plan() -> Plan:
    """--training: the per-GPU batches of the 1- and 8-GPU paper runs, CUDA-graph mode only."""
    graphs = MODES[4]
    return Plan(
        train=((16, (graphs,)), (128, (graphs,))),
        sample=(),
        nll=(),
        steps=100,
        warmup=8,
        chain=20,
        matmul=8192,
    )


def smoke_plan() -> Plan:
    return Plan(
        train=((4, MODES[:3]), (8, MODES[2:3])),
        sample=((4, MODES[0]), (4, MODES[2])),
        nll=((4, MODES[0]),),
        steps=3,
        warmup=1,
        chain=2,
        matmul=256,
    )


def smoke_params(params: Params) -> Params:
    """A tiny U-Net on 8x8 images, T = 20: the CPU smoke test of every code path."""
    return replace(
        params,
        data=replace(params.data, resolution=8, channels=1),
        unet=replace(params.unet, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,)),
        diffusion=replace(params.diffusion, T=20),
        quality=replace(params.quality, steps=(), reverse_every=0),  # step counts dividing T
        evaluate=replace(params.evaluate, interpolation_t=10, shared_latent_t=(20, 10)),  # in 1..T
    )


# ----------------------------------------------------------------------------------------------
# Clocks and reference rates


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn: Callable[[], object], repeats: int) -> float:
    """Seconds per call of fn over `repeats` calls (one sync at the end)."""
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - start) / repeats


def matmul_tflops(device: torch.device, n: int) -> float:
    """Measured bf16 (n x n) @ (n x n) rate: the peak the MFU column divides by."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    timed(device, lambda: a @ b, 3)
    return 2 * n**3 / timed(device, lambda: a @ b, 10) / 1e12


def forward_flops(params: Params, device: torch.device) -> float:
    """FLOPs of one forward pass for one image (a multiply-add counts 2)."""
    model = build_model(params).to(device)
    c, r = params.data.channels, params.data.resolution
    x = torch.zeros(1, c, r, r, device=device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, torch.zeros(1, dtype=torch.long, device=device))
    return float(counter.get_total_flops())


# ----------------------------------------------------------------------------------------------
# Measurements


def train_rate(params: Params, mode: Mode, batch: int, plan: Plan, device: torch.device) -> float:
    """Steps/s of the Ray worker's loop body (data already on the device)."""
    step = train_stepper(params, mode, batch, plan, device)
    return 1.0 / timed(device, step, plan.steps)


def train_stepper(
    params: Params, mode: Mode, batch: int, plan: Plan, device: torch.device
) -> Callable[[], None]:
    """One step of the Ray worker's loop body on one batch on the device, warmed up."""
    params = replace(
        params,
        train=replace(params.train, batch_size=batch, num_workers=1, log_every=plan.steps),
    )
    state = make_state(params, device, 0, 1, compile_mode=mode.compile)
    prepare_model(state, mode.channels_last)
    c, r = params.data.channels, params.data.resolution
    gen = torch.Generator(device=device).manual_seed(0)
    x0 = torch.rand(batch, c, r, r, generator=gen, device=device) * 2 - 1  # (B, C, H, W)
    if mode.channels_last:
        x0 = x0.contiguous(memory_format=torch.channels_last)
    amp = autocast(mode.precision, device)

    def step() -> None:
        t, noise = draw_t_noise(state.generator, tuple(x0.shape), state.diffusion.num_timesteps)
        train_step(state, x0, t, noise, params.train, amp)
        if state.step % params.train.log_every == 0:
            state.read_stats(1)  # the loop's one host sync per log window

    for _ in range(plan.warmup):
        step()
    state.read_stats(1)
    return step


def inference_model(params: Params, mode: Mode, device: torch.device) -> InferenceModel:
    model = build_model(params)
    return InferenceModel(model, device, mode.precision, mode.channels_last, mode.compile)


def sample_step_s(
    params: Params, mode: Mode, batch: int, plan: Plan, device: torch.device
) -> float:
    """Seconds per reverse step of `sample_indices` (network + posterior + counter noise)."""
    run, steps = sample_chain(params, mode, batch, plan, device)
    return timed(device, run, 1) / steps


def sample_chain(
    params: Params, mode: Mode, batch: int, plan: Plan, device: torch.device
) -> tuple[Callable[[], object], int]:
    """`sample_indices` of `batch` images over a respaced chain of about `plan.chain` steps,
    compiled / captured by one call; returns it and its number of network calls."""
    model = inference_model(params, mode, device)
    full = GaussianDiffusion.from_config(params.diffusion)
    chain = full.respaced(max(1, full.num_timesteps // plan.chain))
    c, r = params.data.channels, params.data.resolution
    run = lambda: sample_indices(model, chain, range(batch), 0, (c, r, r), device)  # noqa: E731
    run()  # compile / CUDA-graph capture
    return run, chain.num_timesteps + 1


def nll_step_s(params: Params, mode: Mode, batch: int, plan: Plan, device: torch.device) -> float:
    """Seconds per timestep of `calc_bpd_loop` (the NLL actors' work) with counter noise."""
    model = inference_model(params, mode, device)
    full = GaussianDiffusion.from_config(params.diffusion)
    chain = full.respaced(max(1, full.num_timesteps // plan.chain))
    c, r = params.data.channels, params.data.resolution
    x0 = torch.rand(batch, c, r, r, device=device) * 2 - 1

    def run() -> None:
        noise = CounterNoise(0, range(batch), device)
        chain.calc_bpd_loop(model, x0, noise_fn=noise)

    run()
    return timed(device, run, 1) / chain.num_timesteps


def bf16_error(params: Params, device: torch.device) -> float:
    """max over 4 timesteps of ||eps_bf16 - eps_fp32|| / ||eps_fp32|| on the same inputs.

    The official init scales each block's last layer by 1e-10 (blocks start as identities); those
    layers get a unit-scale init here so every path contributes, as in a trained network.
    """
    fp32 = inference_model(params, MODES[0], device)
    _unit_scale_init(fp32.net)
    bf16 = InferenceModel(fp32.net, device, "bf16")  # the same weights
    c, r = params.data.channels, params.data.resolution
    gen = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(64, c, r, r, generator=gen, device=device)
    worst = 0.0
    with torch.no_grad(), full_fp32():
        for step in (0, 10, 500, params.diffusion.T - 1):
            t = torch.full((64,), min(step, params.diffusion.T - 1), device=device)
            a, b = fp32(x, t), bf16(x, t)
            worst = max(worst, float((a - b).norm() / a.norm()))
    return worst


@torch.no_grad()
def _unit_scale_init(model: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(2)
    for p in model.parameters():
        if p.ndim > 1 and float(p.abs().max()) < 1e-6:  # a 1e-10-scaled output layer
            fan_in = p[0].numel()
            p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5)


def noise_agreement(device: torch.device) -> float:
    """max |z_device - z_float64| of the counter-based noise for 64 images at draw 5.

    The reference is Box-Muller in float64 on the CPU from the same Threefry words
    (`counter_normal` computes it in float32 on `device`), so it is never 0 and bounds the
    device's float error.
    """
    idx = torch.arange(1000, 1064)
    dev = CounterNoise(3, idx, device)
    dev.draws = 5
    z = dev((64, 3, 32, 32)).cpu().double().reshape(64, -1)  # (N, 3072)
    k0, k1 = image_keys(3, idx)
    pairs = torch.arange(z.shape[1] // 2)  # (P,)
    b0, b1 = threefry2x32(
        (k0[:, None], k1[:, None]), (torch.full_like(pairs, 5)[None], pairs[None])
    )
    u1 = ((b0 >> 8) + 1).double() * 2.0**-24  # (N, P)
    u2 = (b1 >> 8).double() * 2.0**-24
    radius, theta = torch.sqrt(-2.0 * torch.log(u1)), 2.0 * math.pi * u2
    ref = torch.stack((radius * torch.cos(theta), radius * torch.sin(theta)), dim=-1)
    return float((z - ref.reshape(64, -1)).abs().max())


# ----------------------------------------------------------------------------------------------
# Report


class Report:
    """The results table, rewritten after every row so a run cut short keeps what it measured."""

    def __init__(self, out: Path, header: str, strict: bool, deadline: float) -> None:
        self.out, self.lines, self.strict, self.deadline = out, [header], strict, deadline

    def add(self, line: str) -> None:
        print(line, flush=True)
        self.lines.append(line)
        write_result(self.out, "\n".join(self.lines) + "\n")

    def row(self, measure: Callable[[], str], batch: int = 0, mode: Mode | None = None) -> None:
        """Add measure()'s line; an exception becomes a row that names it (the run goes on)."""
        if time.perf_counter() > self.deadline:
            self.add(f"| {batch} | {mode.name if mode else '-'} | skipped: --budget-s spent |")
            return
        try:
            line = measure()
        except Exception as e:  # noqa: BLE001 - one failing mode must not lose the others
            if self.strict:
                raise
            what = f"| {batch} | {mode.name} | failed: {type(e).__name__}: {str(e)[:200]!r} |"
            line = what if mode is not None else f"- failed: {type(e).__name__}: {e}"
        self.add(line)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def run(
    params: Params, plan: Plan, device: torch.device, out: Path, smoke: bool, budget_s: float
) -> None:
    start = time.perf_counter()
    deadline = start + budget_s
    configure_backends(device)
    peak = matmul_tflops(device, plan.matmul)
    flops = forward_flops(params, device)
    T = params.diffusion.T
    kind = "smoke (tiny U-Net, not a measurement)" if smoke else params.profile
    report = Report(
        out,
        f"# GPU profile: {kind}\n\n"
        f"Device: {device_name(device)}; torch {torch.__version__}. "
        f"`python -m benchmarks.gpu_profile{' --smoke' if smoke else ''}`.\n"
        f"U-Net forward: {flops / 1e9:.2f} GFLOP per image; measured bf16 matmul "
        f"({plan.matmul}^3): {peak:.0f} TFLOP/s (the MFU denominator). T = {T}.\n",
        strict=smoke,  # the test suite must see failures; a GPU run keeps going
        deadline=deadline,
    )
    report.add("## Checks\n")
    report.row(
        lambda: (
            f"- bf16 vs fp32 eps, relative L2 error (max over t): {bf16_error(params, device):.4f}"
        )
    )
    report.row(
        lambda: f"- counter noise, max |device - float64 CPU|: {noise_agreement(device):.2e}"
    )
    report.deadline = start + (0.55 if plan.sample else 1.0) * budget_s  # sampling, NLL share
    report.add("\n## Training (one GPU, data on the device, the worker's step and log syncs)\n")
    report.add("| per-GPU batch | mode | steps/s | images/s | MFU | paper 800k steps |")
    report.add("|---|---|---|---|---|---|")
    for batch, modes in plan.train:
        for mode in modes:
            report.row(
                partial(train_row, params, mode, batch, plan, device, peak, flops), batch, mode
            )
    report.deadline = start + 0.85 * budget_s
    report.add("\n## Sampling (Algorithm 2, counter-based per-image noise on the device)\n")
    report.add(f"| batch | mode | ms per step | images/s at T = {T} | 50k samples |")
    report.add("|---|---|---|---|---|")
    for batch, mode in plan.sample:
        report.row(partial(sample_row, params, mode, batch, plan, device), batch, mode)
    report.deadline = deadline
    report.add("\n## NLL (calc_bpd_loop, one pass over all T timesteps per image)\n")
    report.add(f"| batch | mode | ms per timestep | images/s at T = {T} |")
    report.add("|---|---|---|---|")
    for batch, mode in plan.nll:
        report.row(partial(nll_row, params, mode, batch, plan, device), batch, mode)


def train_row(
    params: Params,
    mode: Mode,
    batch: int,
    plan: Plan,
    device: torch.device,
    peak: float,
    flops: float,
) -> str:
    rate = train_rate(params, mode, batch, plan, device)
    mfu = rate * batch * 3 * flops / (peak * 1e12)
    hours = PAPER_STEPS / rate / 3600
    return (
        f"| {batch} | {mode.name} | {rate:.1f} | {rate * batch:,.0f} | {mfu:.1%} | {hours:.1f} h |"
    )


def sample_row(params: Params, mode: Mode, batch: int, plan: Plan, device: torch.device) -> str:
    s = sample_step_s(params, mode, batch, plan, device)
    img_s = batch / (s * params.diffusion.T)
    hours = PAPER_SAMPLES / img_s / 3600
    return f"| {batch} | {mode.name} | {s * 1e3:.1f} | {img_s:.1f} | {hours:.2f} h |"


def nll_row(params: Params, mode: Mode, batch: int, plan: Plan, device: torch.device) -> str:
    s = nll_step_s(params, mode, batch, plan, device)
    return f"| {batch} | {mode.name} | {s * 1e3:.1f} | {batch / (s * params.diffusion.T):.2f} |"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    paper = REPO / "conf" / "profile" / "cifar10-paper.yaml"
    ap.add_argument("--profile", type=Path, default=paper)
    ap.add_argument("--smoke", action="store_true", help="tiny U-Net on CPU (test suite)")
    ap.add_argument("--training", action="store_true", help="only the CUDA-graph training rows")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--budget-s", type=float, default=3600.0, help="skip rows after this")
    args = ap.parse_args(argv)
    params = load_params(args.profile)
    if args.smoke:
        params, plan, device = smoke_params(params), smoke_plan(), torch.device("cpu")
    else:
        if not torch.cuda.is_available():
            ap.error("no CUDA device: run with --smoke on CPU")
        plan, device = training_plan() if args.training else full_plan(), torch.device("cuda")
    run(params, plan, device, args.out or RESULTS, args.smoke, args.budget_s)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
