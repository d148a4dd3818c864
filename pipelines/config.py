"""`Params`: every section of `params.yaml`, typed and frozen, and the strict loader.

`load_params` reads the YAML file and `from_dict` turns it into `Params`, rejecting unknown keys,
missing keys and wrong types with an error that names the file and the dotted key (e.g.
``params.yaml: train.batch_size: ...``) and what was expected. The model's own configs
(`DiffusionConfig`, `UNetConfig`) live in `ddpm_core.config`.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import yaml

from ddpm_core.config import ConfigError, DiffusionConfig, UNetConfig, check

# pad: centre on a zero canvas; resize: bilinear to R x R; center_crop: the official 256^2
# preprocessing (centre square of side min(w, h), then a Lanczos/antialiased resize to R x R).
ResizeMode = Literal["pad", "resize", "center_crop"]
# center_crop's downscale: lanczos (PIL's antialias, StyleGAN's create_lsun) | box (repeated 2x2
# averages, progressive_growing_of_gans' CelebA-HQ export; the side must be R * 2^k).
Downscale = Literal["lanczos", "box"]
BadImages = Literal["fail", "skip"]  # an undecodable image: stop the stage, or skip and record it
Precision = Literal["fp32", "bf16"]  # bf16: autocast of the network (its output back in fp32)
# torch.compile: false = eager; default = Inductor kernels; reduce-overhead = Inductor + CUDA
# graphs (one graph replay per call: what makes a small per-GPU batch fast).
CompileMode = Literal[False, "default", "reduce-overhead"]
FidReference = Literal["train", "test"]
# A sampler option's value; each sampler declares its options (ddpm_core.samplers.registry).
OptionValue = bool | int | float | str
NllSplit = Literal["test", "train", "both"]
Export = Literal["last", "best_fid"]  # which EMA weights train exports (best_fid: min-FID step)


# ----------------------------------------------------------------------------------------------
# Sections


@dataclass(frozen=True)
class PathsConfig:
    """Where each stage reads and writes, relative to the repository root (or absolute)."""

    shards: str  # shard stage output: WebDataset tars + manifest.json
    model: str  # train stage output: EMA weights, resolved config
    diffusers: str  # train stage output: the same model as a diffusers DDPMPipeline folder
    samples: str  # sample stage output: sample shards
    metrics: str  # JSON metrics for `dvc metrics`
    plots: str  # DVC plot data and PNG figures
    runs: str  # MLflow run-id hand-off files between stages
    ray_storage: str  # Ray Train checkpoints: outside DVC outputs so a rerun resumes
    fid_stats: str  # cached reference statistics of the real data


@dataclass(frozen=True)
class DataConfig:
    """Dataset source and preprocessing for the shard stage and the readers."""

    # A name in pipelines.data.sources.SOURCES, checked there by the shard stage (check_source):
    # importing the sources here would make every stage depend on their code in dvc.yaml.
    source: str
    root: str | None  # local folder of the source (torchvision layout or image folder)
    raw: str  # the raw data DVC tracks as the shard stage's dep: data.root or a folder holding it
    download: bool  # torchvision download when no local files; needs network
    resolution: int  # target H = W
    channels: int  # 1 (grayscale) or 3 (RGB)
    resize: ResizeMode  # pad (centre, zero), resize (bilinear) or center_crop (+ downscale)
    downscale: Downscale  # center_crop to R: lanczos (StyleGAN's LSUN) | box (PGGAN's CelebA-HQ)
    max_images: int | None  # cap per split for quick runs
    shard_size: int  # images per tar shard
    test_fraction: float  # for sources without a test split; 0 = no test split (train on all)
    random_flip: bool  # paper: horizontal flip for CIFAR-10; off for digits
    shard_workers: int  # parallel Ray tasks writing shards (1: in process); output is the same
    image_column: str  # parquet: the encoded images, struct {bytes, path} or binary (Hub: image)
    label_column: str | None  # parquet: int class labels (Hub: label); null = none (all 0)
    bad_images: BadImages  # fail: one bad image stops the stage; skip: recorded in the manifest

    def __post_init__(self) -> None:
        check(self.channels in (1, 3), "data.channels", self.channels, "1 or 3")
        check(self.shard_workers >= 1, "data.shard_workers", self.shard_workers, "an int >= 1")
        check(
            self.resize in get_args(ResizeMode),
            "data.resize",
            self.resize,
            " | ".join(get_args(ResizeMode)),
        )
        check(self.resolution >= 4, "data.resolution", self.resolution, "an int >= 4")
        check(self.shard_size >= 1, "data.shard_size", self.shard_size, "an int >= 1")
        check(
            0.0 <= self.test_fraction < 1.0, "data.test_fraction", self.test_fraction, "0 <= f < 1"
        )
        # digits always splits one pool; FID vs test and the NLL need a non-empty test split.
        check(
            self.source != "digits" or self.test_fraction > 0,
            "data.test_fraction",
            self.test_fraction,
            "0 < f < 1 for data.source=digits (its test split comes from test_fraction)",
        )
        check(
            self.max_images is None or self.max_images >= 1,
            "data.max_images",
            self.max_images,
            "null or an int >= 1",
        )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image after preprocessing."""
        return (self.channels, self.resolution, self.resolution)


@dataclass(frozen=True)
class TrainConfig:
    """Algorithm 1 with the official optimisation recipe (Appendix B, run_cifar.py)."""

    steps: int
    batch_size: int  # global batch; per worker = batch_size / num_workers
    lr: float
    warmup_steps: int
    grad_clip: float
    ema_decay: float
    log_every: int
    checkpoint_every: int
    sample_every: int  # EMA sample grid to MLflow every K steps (0 = only at the end)
    keep_checkpoints: int
    num_workers: int
    use_gpu: bool
    cpus_per_worker: float
    gpus_per_worker: float
    activation_checkpointing: bool  # U-Net blocks recompute activations in backward (less memory)
    precision: Precision  # bf16 autocast (GPU; also runs on CPU); fp32 uses TF32 on CUDA
    channels_last: bool
    compile: CompileMode  # the whole loss is one graph; reduce-overhead adds CUDA graphs
    max_failures: int
    fid_every: int  # small-sample FID of the EMA weights every K steps on rank 0; 0 = off
    fid_images: int  # generated images per point of that in-training FID curve
    fid_stride: int  # its sampler: Algorithm 2 over every k-th timestep (cheap, not the paper)
    export: Export  # last: the final EMA weights; best_fid: those of the min-FID step (paper)
    shuffle_buffer: int  # images in the input's seeded shuffle buffer (>= split: a full shuffle)
    loader_workers: int  # decode processes per rank; 0 = decode in the training process
    prefetch: int  # batches in flight per loader worker
    cache_bytes: int  # a split decoded to at most this many bytes is held in memory; 0 = stream

    def __post_init__(self) -> None:
        for key in ("steps", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints"):
            check(getattr(self, key) >= 1, f"train.{key}", getattr(self, key), "an int >= 1")
        check(
            0 <= self.fid_every <= self.steps,
            "train.fid_every",
            self.fid_every,
            f"0 (off) or an int in 1..train.steps={self.steps}",
        )
        check(self.fid_images >= 2, "train.fid_images", self.fid_images, "an int >= 2")
        check(self.fid_stride >= 1, "train.fid_stride", self.fid_stride, "an int >= 1")
        check(
            self.export == "last" or self.fid_every > 0,
            "train.export",
            self.export,
            "'last' when train.fid_every is 0 (best_fid picks the step of the lowest "
            "in-training FID, so it needs train.fid_every > 0)",
        )
        check(self.num_workers >= 1, "train.num_workers", self.num_workers, "an int >= 1")
        # Checked here, not at the train stage: stages.all would run shard and fid_stats first.
        check(
            self.gpus_per_worker > 0 if self.use_gpu else self.gpus_per_worker == 0,
            "train.gpus_per_worker",
            self.gpus_per_worker,
            "> 0 with train.use_gpu: true (e.g. 1), 0 with train.use_gpu: false",
        )
        check(
            self.batch_size % self.num_workers == 0,
            "train.batch_size",
            self.batch_size,
            f"divisible by train.num_workers={self.num_workers}",
        )
        check(self.lr > 0, "train.lr", self.lr, "a float > 0")
        check(0.0 <= self.ema_decay < 1.0, "train.ema_decay", self.ema_decay, "0 <= d < 1")
        check(self.max_failures >= 0, "train.max_failures", self.max_failures, "an int >= 0")
        for key, low in (("shuffle_buffer", 1), ("loader_workers", 0), ("prefetch", 1)):
            check(getattr(self, key) >= low, f"train.{key}", getattr(self, key), f"an int >= {low}")
        check(self.cache_bytes >= 0, "train.cache_bytes", self.cache_bytes, "bytes, an int >= 0")


@dataclass(frozen=True)
class SampleConfig:
    """Algorithm 2 over a Ray actor pool; image i depends only on (seed, i)."""

    num_images: int
    batch_size: int  # images per work unit (a fixed index range)
    num_workers: int
    use_gpu: bool
    cpus_per_worker: float
    stride: int  # 1 = all T steps (paper); k > 1 = strided timesteps (fast, not paper)
    # A name in ddpm_core.samplers.registry (ancestral: the paper's Algorithm 2) and, per sampler
    # name, the options it declares (unset ones take its defaults); both checked against the
    # registry by pipelines.infra.sampler_params where a stage uses them.
    sampler: str
    sampler_options: dict[str, dict[str, OptionValue]]
    precision: Precision  # the network in bf16 autocast; the sampler's math stays fp32
    channels_last: bool
    compile: CompileMode
    progressive_every: int  # predicted x0 every k steps for the progressive-generation figure
    progressive_images: int
    grid_images: int

    def __post_init__(self) -> None:
        check(self.num_images >= 1, "sample.num_images", self.num_images, "an int >= 1")
        check(self.batch_size >= 1, "sample.batch_size", self.batch_size, "an int >= 1")
        check(self.num_workers >= 1, "sample.num_workers", self.num_workers, "an int >= 1")
        check(self.stride >= 1, "sample.stride", self.stride, "an int >= 1")


@dataclass(frozen=True)
class FidConfig:
    """FID's own params, one home for every reader: the fid_stats stage (the reference
    statistics and the weights), evaluate, quality and the in-training probe."""

    images: int  # samples behind FID and the other Inception metrics (<= sample.num_images)
    reference: FidReference  # paper: train split
    reference_images: int | None  # cap on real images for the reference statistics
    inception_weights: str | None  # explicit path to torch-fidelity Inception weights
    allow_download: bool  # download Inception weights when no local file (needs network)

    def __post_init__(self) -> None:
        check(self.images >= 2, "evaluate.fid.images", self.images, "an int >= 2")
        refs = self.reference_images
        check(refs is None or refs >= 2, "evaluate.fid.reference_images", refs, "null or >= 2")


@dataclass(frozen=True)
class KidConfig:
    """KID (Binkowski et al. 2018) as torch-fidelity computes it: the unbiased MMD^2 of the
    cubic polynomial kernel k(x, y) = (x.y / D + 1)^3 over `subsets` random subsets of
    `subset_size` pool3 features of each side."""

    subsets: int  # torch-fidelity's kid_subsets (its default: 100)
    subset_size: int  # its kid_subset_size (default 1000): <= fid.images and the reference count

    def __post_init__(self) -> None:
        check(self.subsets >= 1, "evaluate.kid.subsets", self.subsets, "an int >= 1")
        size = self.subset_size
        check(size >= 2, "evaluate.kid.subset_size", size, "an int >= 2 (MMD^2 needs pairs)")


@dataclass(frozen=True)
class EvaluateConfig:
    """The metrics `metrics` lists (`pipelines.evaluate.metrics`: FID, IS, KID, NLL) and the
    paper's figures of the evaluate stage."""

    metrics: tuple[str, ...]  # names in pipelines.evaluate.metrics.METRICS, e.g. [fid, isc, nll]
    fid: FidConfig
    kid: KidConfig
    isc_splits: int  # IS: mean and std over this many splits of the samples (paper: 10)
    nll_images: int
    nll_split: NllSplit  # test (Table 1's NLL), train, or both with the gap train - test
    nll_batch_size: int  # images per NLL work unit (one actor call)
    nll_precision: Precision  # as sample.precision, for the bound's network calls
    nll_channels_last: bool
    nll_compile: CompileMode
    num_workers: int
    cpus_per_worker: float
    use_gpu: bool  # NLL actors and Inception features on a GPU
    interpolation_pairs: int  # Fig. 8: pairs of test images interpolated in x_t (rows)
    interpolation_t: int  # Fig. 8: the latent's timestep, 1..diffusion.T (paper: 500)
    interpolation_lambdas: tuple[float, ...]  # Fig. 8: mixing weights lambda in [0, 1] (columns)
    shared_latent_t: tuple[int, ...]  # Fig. 7: where x_t is frozen, distinct, 1..diffusion.T (rows)
    shared_latent_draws: int  # Fig. 7: draws x̂0 ~ p_theta(x_0 | x_t) per frozen x_t (columns)
    shared_latent_images: int  # Fig. 7: reverse trajectories, each its own block of rows

    def __post_init__(self) -> None:
        names = list(self.metrics)
        check(
            len(names) == len(set(names)) and all(n.isidentifier() for n in names),
            "evaluate.metrics",
            names,
            "a list of distinct metric names (pipelines.evaluate.metrics.METRICS)",
        )
        size = self.kid.subset_size
        check(
            "kid" not in names or size <= self.fid.images,
            "evaluate.kid.subset_size",
            size,
            f"<= evaluate.fid.images={self.fid.images} (KID draws subsets of the samples)",
        )
        check(self.isc_splits >= 1, "evaluate.isc_splits", self.isc_splits, "an int >= 1")
        check(self.nll_images >= 1, "evaluate.nll_images", self.nll_images, "an int >= 1")
        check(self.nll_batch_size >= 1, "evaluate.nll_batch_size", self.nll_batch_size, ">= 1")
        check(self.num_workers >= 1, "evaluate.num_workers", self.num_workers, "an int >= 1")
        pairs = self.interpolation_pairs
        check(pairs >= 1, "evaluate.interpolation_pairs", pairs, "an int >= 1")
        lams = list(self.interpolation_lambdas)
        check(
            len(lams) >= 2 and all(0.0 <= v <= 1.0 for v in lams),
            "evaluate.interpolation_lambdas",
            lams,
            "a list of >= 2 values in [0, 1]",
        )
        ts = list(self.shared_latent_t)
        check(
            len(ts) >= 1 and len(set(ts)) == len(ts),
            "evaluate.shared_latent_t",
            ts,
            "a non-empty list of distinct timesteps",
        )
        draws = self.shared_latent_draws
        check(draws >= 2, "evaluate.shared_latent_draws", draws, "an int >= 2 (draws to compare)")
        n = self.shared_latent_images
        check(n >= 1, "evaluate.shared_latent_images", n, "an int >= 1")


@dataclass(frozen=True)
class QualityConfig:
    """The quality stage: FID against sampler steps (each of `samplers`) and FID of the
    predicted x0 over the reverse process (paper Fig. 10); both off when empty / 0."""

    steps: tuple[int, ...]  # FID-vs-steps curve: step counts, each dividing diffusion.T; [] = off
    samplers: tuple[str, ...]  # its curves: registered sampler names, options from sample.*
    images: int  # generated images per point of the FID-vs-steps curve
    reverse_every: int  # Fig. 10: score x0_pred every k reverse steps of the full sampler; 0 = off
    reverse_images: int  # images of the progressive pass behind Fig. 10
    batch_size: int
    use_gpu: bool
    cpus: float  # CPUs (torch threads) of the one Ray task that samples and scores

    def __post_init__(self) -> None:
        bad = [s for s in self.steps if s < 1]
        check(not bad, "quality.steps", list(self.steps), "step counts >= 1")
        names = list(self.samplers)
        check(
            len(names) >= 1 and len(set(names)) == len(names),
            "quality.samplers",
            names,
            "a non-empty list of distinct sampler names",
        )
        check(self.images >= 2, "quality.images", self.images, "an int >= 2")
        check(self.reverse_every >= 0, "quality.reverse_every", self.reverse_every, "an int >= 0")
        check(self.reverse_images >= 2, "quality.reverse_images", self.reverse_images, ">= 2")
        check(self.batch_size >= 1, "quality.batch_size", self.batch_size, "an int >= 1")
        check(self.cpus > 0, "quality.cpus", self.cpus, "a float > 0")


@dataclass(frozen=True)
class RayConfig:
    """Which Ray cluster: null = `RAY_ADDRESS` if set, else a local one with `num_cpus`."""

    address: str | None
    num_cpus: int | None


@dataclass(frozen=True)
class MlflowConfig:
    """Tracking store, experiment, model registry, system metrics.

    tracking_uri null = `MLFLOW_TRACKING_URI` if set, else `sqlite:///<repo>/mlflow.db`.
    """

    tracking_uri: str | None
    experiment: str
    model_name: str | None  # registered model of each trained model; null = log, not register
    promote_on: str  # the champion gate's metric: a lower-is-better key of a listed metric (fid)
    system_metrics: bool  # CPU/GPU/memory of the training machine on the train run (psutil)

    def __post_init__(self) -> None:
        gate = self.promote_on
        check(
            gate.isidentifier(),
            "mlflow.promote_on",
            gate,
            "a lower-is-better metric key such as fid, kid or nll_bpd",
        )
        name = self.model_name
        check(
            name is None or (name.strip() == name and name != ""),
            "mlflow.model_name",
            name,
            "null or a non-empty name without surrounding spaces",
        )


@dataclass(frozen=True)
class Params:
    """Everything in `params.yaml`, one section per concern."""

    profile: str  # a label for humans and MLflow tags ("default", "cifar10-paper", ...)
    seed: int
    paths: PathsConfig
    data: DataConfig
    diffusion: DiffusionConfig
    unet: UNetConfig
    train: TrainConfig
    sample: SampleConfig
    evaluate: EvaluateConfig
    quality: QualityConfig
    ray: RayConfig
    mlflow: MlflowConfig

    def __post_init__(self) -> None:
        # Against a stand-in root: relative paths, `.` and `..`; `stages.common` repeats it
        # against the real root (absolute paths that hold the repository).
        check_raw(self.data, VIRTUAL_ROOT)
        check_paths(self.paths, self.data.raw, VIRTUAL_ROOT)
        # One rule for every stage (ddpm_core.rng.mix_seed takes ints >= 0): checked here, not
        # after training when sampling would first refuse it.
        check(self.seed >= 0, "seed", self.seed, "an int >= 0")
        levels = self.unet.level_resolutions(self.data.resolution)
        bad = [r for r in self.unet.attn_resolutions if r not in levels]
        check(
            not bad,
            "unet.attn_resolutions",
            list(self.unet.attn_resolutions),
            f"resolutions among the U-Net levels {list(levels)} for data.resolution="
            f"{self.data.resolution}",
        )
        check(
            self.data.test_fraction > 0
            or (self.evaluate.fid.reference == "train" and self.evaluate.nll_split == "train"),
            "data.test_fraction",
            self.data.test_fraction,
            "> 0, or 0 with evaluate.fid.reference: train and evaluate.nll_split: train (no "
            "test split: FID and the NLL on the training set, as the official 256^2 runs)",
        )
        check(
            self.evaluate.fid.images <= self.sample.num_images,
            "evaluate.fid.images",
            self.evaluate.fid.images,
            f"<= sample.num_images={self.sample.num_images} (FID uses generated samples)",
        )
        check(
            self.data.resolution % 2 ** (len(self.unet.ch_mult) - 1) == 0,
            "data.resolution",
            self.data.resolution,
            f"divisible by 2**(len(unet.ch_mult)-1)={2 ** (len(self.unet.ch_mult) - 1)}",
        )
        check(
            1 <= self.evaluate.interpolation_t <= self.diffusion.T,
            "evaluate.interpolation_t",
            self.evaluate.interpolation_t,
            f"an int in 1..diffusion.T={self.diffusion.T} (paper Fig. 8: 500)",
        )
        ts = list(self.evaluate.shared_latent_t)
        check(
            all(1 <= t <= self.diffusion.T for t in ts),
            "evaluate.shared_latent_t",
            ts,
            f"timesteps in 1..diffusion.T={self.diffusion.T} (t = T freezes x_T itself)",
        )
        check(
            self.train.fid_stride <= self.diffusion.T,
            "train.fid_stride",
            self.train.fid_stride,
            f"<= diffusion.T={self.diffusion.T}",
        )
        bad = [s for s in self.quality.steps if s > self.diffusion.T or self.diffusion.T % s]
        check(
            not bad,
            "quality.steps",
            list(self.quality.steps),
            f"step counts that divide diffusion.T={self.diffusion.T} (stride = T / steps)",
        )


# ----------------------------------------------------------------------------------------------
# Output folders: each stage replaces its folder as a whole, so folders must never overlap

VIRTUAL_ROOT = Path("/__repo_root__")  # stands for the repository root when it is not known


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def _where(root: Path, value: str) -> Path:
    return Path(os.path.normpath(root / value))


def check_raw(data: DataConfig, root: Path) -> None:
    """Refuse a `data.root` outside `data.raw`: DVC would not see a change to the raw data.

    `data.raw` is the shard stage's DVC dependency (dvc.yaml `${data.raw}`), so it must hold
    whatever the stage reads: `data.root` itself or a folder above it. Compared lexically.
    """
    if data.root is None:
        return
    raw, src = _where(root, data.raw), _where(root, data.root)
    if raw != src and raw not in src.parents:
        raise ConfigError(
            f"data.root: got {data.root!r}, which is not inside data.raw={data.raw!r}; expected "
            "data.raw (the raw data DVC tracks for the shard stage) to be data.root or a "
            "folder holding it"
        )


def check_paths(paths: PathsConfig, data_raw: str, root: Path) -> None:
    """Refuse `paths.*` that share or nest folders, or contain `data.raw` or the repo root.

    Every stage writes its output folder through `atomic_path`, which replaces the whole
    folder: an output path holding anything else (raw data, another stage's output, the
    checkpoints, the repository) would be deleted. `data.raw` holds `data.root`
    (`check_raw`), so it covers the raw data. Relative paths are under `root`; paths are
    compared lexically (no file-system access), the error names both keys.
    """

    def where(value: str) -> Path:
        return _where(root, value)

    outs = {f"paths.{f.name}": getattr(paths, f.name) for f in dataclasses.fields(paths)}
    names = list(outs)
    repo = Path(os.path.normpath(root))
    for a in names:
        path = where(outs[a])
        if path == repo or path in repo.parents:
            raise ConfigError(
                f"{a}: got {outs[a]!r}, which contains the repository root"
                f"{'' if root == VIRTUAL_ROOT else f' {root}'}; expected "
                "a folder of its own (the stage replaces it as a whole)"
            )
        if _overlaps(path, where(data_raw)):
            raise ConfigError(
                f"{a}: got {outs[a]!r}, which overlaps data.raw={data_raw!r}; expected an "
                "output folder apart from the raw data (the stage replaces it as a whole)"
            )
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if _overlaps(where(outs[a]), where(outs[b])):
                raise ConfigError(
                    f"{a}: got {outs[a]!r}, which overlaps {b}={outs[b]!r}; expected distinct "
                    "folders, none inside another (each stage replaces its folder as a whole)"
                )


# ----------------------------------------------------------------------------------------------
# Strict parsing

T_co = TypeVar("T_co")


def from_dict(cls: type[T_co], data: object, prefix: str = "") -> T_co:
    """Build dataclass `cls` from `data`, rejecting unknown, missing and mistyped keys.

    Nested dataclasses, `Literal`, `X | None`, `tuple[int, ...]`, `dict[str, X]`, bool/int/float/str
    and unions of them are supported.
    Lists become tuples. Ints are accepted where a float is expected.
    """
    where = prefix.rstrip(".") or "params"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    assert dataclasses.is_dataclass(cls)
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {[prefix + k for k in unknown]}; allowed: {sorted(fields)}"
        )
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is not dataclasses.MISSING:
                continue
            raise ConfigError(f"{prefix}{name}: missing key (expected {_type_name(hints[name])})")
        kwargs[name] = _coerce(hints[name], data[name], prefix + name)
    return cls(**kwargs)


def _coerce(tp: Any, value: object, key: str) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key + ".")  # type: ignore[arg-type]
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) > 1:  # a union of scalars (OptionValue): the value's own type, as is
            if type(value) not in inner:
                raise ConfigError(f"{key}: got {value!r}, expected {_type_name(tp)}")
            return value
        return _coerce(inner[0], value, key)
    if origin is dict:
        (k_tp, v_tp) = get_args(tp)
        if not isinstance(value, dict) or not all(isinstance(k, k_tp) for k in value):
            raise ConfigError(f"{key}: got {value!r}, expected a mapping of {_type_name(v_tp)}")
        return {k: _coerce(v_tp, v, f"{key}.{k}") for k, v in value.items()}
    if origin is Literal:
        if not any(value == v and type(value) is type(v) for v in get_args(tp)):
            raise ConfigError(f"{key}: got {value!r}, expected one of {list(get_args(tp))}")
        return value
    if origin is tuple:
        (item, _) = get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: got {value!r}, expected a list of {_type_name(item)}")
        return tuple(_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (bool, int, float, str):
        if type(value) is not tp:
            raise ConfigError(f"{key}: got {value!r}, expected {tp.__name__}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover - schema bug


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp)


def to_dict(params: object) -> dict[str, Any]:
    """The inverse of `from_dict`: plain JSON/YAML-ready values (tuples become lists)."""
    assert dataclasses.is_dataclass(params) and not isinstance(params, type)
    out: dict[str, Any] = _lists(asdict(params))
    return out


def _lists(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_lists(v) for v in value]
    return value


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}, for MLflow params and DVC-style keys."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def replace_path(params: Params, **paths: str) -> Params:
    """A copy of `params` with some `paths` entries replaced (used by tests and tools)."""
    return dataclasses.replace(params, paths=dataclasses.replace(params.paths, **paths))


def load_params(path: str | os.PathLike[str]) -> Params:
    """Read `params.yaml` strictly into `Params`; errors name the file and the dotted key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    try:
        return from_dict(Params, raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
