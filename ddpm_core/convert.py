"""Map diffusers `UNet2DModel` weights (google/ddpm-cifar10-32 layout) to and from `UNet`.

The published google/ddpm-* checkpoints are the paper's TF weights converted to diffusers; with
this module a user evaluates the released CIFAR-10 model without training:

    model = UNet(**unet_config_from_diffusers(config_json))
    model.load_state_dict(state_dict_from_diffusers(diffusers_state_dict))  # strict

`state_dict_to_diffusers` / `diffusers_config_from_unet` go the other way (export).
Both the current attention key names (`to_q`, `to_k`, `to_v`, `to_out.0`) and the deprecated ones
stored in older checkpoint files (`query`, `key`, `value`, `proj_attn`) are accepted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

# diffusers ResnetBlock2D / norm names -> official (pesser) names used by `ddpm_core.layers`.
_RESNET = {"time_emb_proj": "temb_proj", "conv_shortcut": "nin_shortcut"}
_ATTN_QKV = {"to_q": 0, "to_k": 1, "to_v": 2, "query": 0, "key": 1, "value": 2}
_ATTN_OUT = ("to_out.0", "proj_attn")
_TOP = {
    "time_embedding.linear_1": "temb.dense.0",
    "time_embedding.linear_2": "temb.dense.1",
    "conv_in": "conv_in",
    "conv_norm_out": "norm_out",
    "conv_out": "conv_out",
}
_BLOCK = re.compile(
    r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)$"
)
_MID = re.compile(r"^mid_block\.(resnets|attentions)\.(\d+)\.(.+)$")

# diffusers defaults for keys absent from a config.json, and the values the paper's model needs.
_REQUIRED: dict[str, tuple[Any, Any]] = {
    "flip_sin_to_cos": (True, False),
    "freq_shift": (0, 1),
    "downsample_padding": (1, 0),
    "norm_eps": (1e-5, 1e-6),
    "act_fn": ("silu", "silu"),
    "attention_head_dim": (8, None),
    "time_embedding_type": ("positional", "positional"),
    "resnet_time_scale_shift": ("default", "default"),
    "center_input_sample": (False, False),
    "class_embed_type": (None, None),
    "num_class_embeds": (None, None),
    "add_attention": (True, True),
    "mid_block_scale_factor": (1, 1),
    "downsample_type": ("conv", "conv"),
    "upsample_type": ("conv", "conv"),
}


def state_dict_from_diffusers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename/reshape a diffusers `UNet2DModel` state dict into `UNet` keys (load with strict=True).

    q, k, v (C, C) are stacked into the fused `qkv` (3C, C); 1x1-conv shaped attention weights
    (C, C, 1, 1) of old exports are flattened. Raises ValueError naming any key it cannot place.
    """
    n_levels = _count_levels(sd)
    out: dict[str, torch.Tensor] = {}
    qkv_parts: dict[str, dict[str, list[torch.Tensor | None]]] = {}
    for key, value in sd.items():
        target = _target_module(key, n_levels)
        if target is None:
            raise ValueError(f"state dict key {key!r}: not part of a DDPM UNet2DModel layout")
        prefix, sub = target
        attn = _map_attention(sub, value)
        if attn is None:
            head, dot, rest = sub.partition(".")
            out[f"{prefix}.{_RESNET.get(head, head)}{dot}{rest}"] = value
        elif attn[0] == "qkv":
            _, index, param, tensor = attn
            slots = qkv_parts.setdefault(prefix, {}).setdefault(param, [None, None, None])
            slots[index] = tensor
        else:
            out[f"{prefix}.{attn[0]}.{attn[2]}"] = attn[3]
    for prefix, params in qkv_parts.items():
        for param, slots in params.items():
            if any(s is None for s in slots):
                raise ValueError(f"attention {prefix!r}: missing one of q/k/v {param}")
            out[f"{prefix}.qkv.{param}"] = torch.cat([s for s in slots if s is not None], dim=0)
    return out


def _count_levels(sd: Mapping[str, torch.Tensor]) -> int:
    levels = {int(m.group(2)) for k in sd if (m := _BLOCK.match(k)) and m.group(1) == "down_blocks"}
    if not levels or levels != set(range(max(levels) + 1)):
        raise ValueError(
            f"state dict: expected down_blocks.0..N-1 keys, found levels {sorted(levels)}"
        )
    return max(levels) + 1


def _target_module(key: str, n_levels: int) -> tuple[str, str] | None:
    """diffusers key -> (UNet module prefix, remaining diffusers sub-key) or None if unknown."""
    for src, dst in _TOP.items():
        if key.startswith(src + "."):
            return dst, key[len(src) + 1 :]
    if mid := _MID.match(key):
        kind, idx, sub = mid.group(1), mid.group(2), mid.group(3)
        name = {
            ("resnets", "0"): "block_1",
            ("resnets", "1"): "block_2",
            ("attentions", "0"): "attn_1",
        }
        return (f"mid.{name[(kind, idx)]}", sub) if (kind, idx) in name else None
    if m := _BLOCK.match(key):
        path, level, kind, idx, sub = m.groups()
        # up_blocks[k] is the (n_levels-1-k)-th level: diffusers lists the up path deepest first.
        i = int(level) if path == "down_blocks" else n_levels - 1 - int(level)
        side = "down" if path == "down_blocks" else "up"
        if kind in ("downsamplers", "upsamplers"):
            return (f"{side}.{i}.{kind[:-2]}", sub) if idx == "0" else None
        return f"{side}.{i}.{'block' if kind == 'resnets' else 'attn'}.{idx}", sub
    return None


def _map_attention(sub: str, value: torch.Tensor) -> tuple[str, int, str, torch.Tensor] | None:
    """Attention sub-keys -> ("qkv", slot, param, tensor) / (name, -1, param, tensor); else None."""
    head, _, param = sub.rpartition(".")
    if head in _ATTN_QKV:
        return "qkv", _ATTN_QKV[head], param, _as_dense(value)
    if head in _ATTN_OUT:
        return "proj_out", -1, param, _as_dense(value)
    if head == "group_norm":
        return "norm", -1, param, value
    return None


def _as_dense(w: torch.Tensor) -> torch.Tensor:
    """(C_out, C_in, 1, 1) conv kernels -> (C_out, C_in); biases and dense weights unchanged."""
    return w.reshape(w.shape[0], -1) if w.ndim == 4 else w


def unet_config_from_diffusers(config: Mapping[str, Any]) -> dict[str, Any]:
    """A diffusers `UNet2DModel` config (config.json as a dict) -> `UNet(**kwargs)` kwargs.

    Raises ValueError naming the config key when the diffusers model is not the DDPM architecture
    (e.g. flip_sin_to_cos=True, multi-head attention, padding 1 downsampling).
    """
    for key, (default, needed) in _REQUIRED.items():
        value = config.get(key, default)
        if value != needed:
            raise ValueError(f"diffusers config {key}: got {value!r}, expected {needed!r}")
    bo = [int(c) for c in config["block_out_channels"]]
    ch = bo[0]
    if any(c % ch for c in bo):
        raise ValueError(f"diffusers config block_out_channels: {bo} are not multiples of {ch}")
    size = config.get("sample_size", 32)
    if isinstance(size, list | tuple):
        if len(set(size)) != 1:
            raise ValueError(f"diffusers config sample_size: got {size}, expected a square size")
        size = size[0]
    down, up = list(config["down_block_types"]), list(config["up_block_types"])
    attn_levels = [i for i, name in enumerate(down) if name == "AttnDownBlock2D"]
    expected_up = ["AttnUpBlock2D" if i in attn_levels else "UpBlock2D" for i in range(len(down))]
    if len(down) != len(bo) or up != expected_up[::-1]:
        raise ValueError(
            f"diffusers config down/up_block_types: got {down} / {up}, expected {len(bo)} "
            f"Down/AttnDown blocks mirrored by {expected_up[::-1]}"
        )
    return {
        "in_channels": int(config.get("in_channels", 3)),
        "out_channels": int(config.get("out_channels", 3)),
        "ch": ch,
        "ch_mult": tuple(c // ch for c in bo),
        "num_res_blocks": int(config["layers_per_block"]),
        "attn_resolutions": tuple(int(size) // 2**i for i in attn_levels),
        "dropout": float(config.get("dropout", 0.0)),
        "resolution": int(size),
        "num_groups": int(config.get("norm_num_groups", 32)),
    }


# ----------------------------------------------------------------------------------------------
# The other direction: UNet -> diffusers UNet2DModel (export)

_TOP_INV = {dst: src for src, dst in _TOP.items()}
_RESNET_INV = {dst: src for src, dst in _RESNET.items()}
_MID_INV = {
    "block_1": "mid_block.resnets.0",
    "block_2": "mid_block.resnets.1",
    "attn_1": "mid_block.attentions.0",
}
_OURS = re.compile(r"^(down|up)\.(\d+)\.(block|attn)\.(\d+)\.(.+)$")
_OURS_SAMPLE = re.compile(r"^(down|up)\.(\d+)\.(downsample|upsample)\.(.+)$")


def state_dict_to_diffusers(
    sd: Mapping[str, torch.Tensor], n_levels: int
) -> dict[str, torch.Tensor]:
    """A `UNet` state dict -> diffusers `UNet2DModel` keys (current names, strict load).

    The fused attention `qkv` (3C, C) is split into diffusers' `to_q`, `to_k`, `to_v` (C, C);
    `proj_out` becomes `to_out.0`. The inverse of `state_dict_from_diffusers`.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        prefix, sub = _diffusers_module(key, n_levels)
        head, dot, rest = sub.partition(".")
        if ".attentions." in prefix:
            for name, tensor in _attention_to_diffusers(head, rest, value):
                out[f"{prefix}.{name}"] = tensor
        else:
            out[f"{prefix}.{_RESNET_INV.get(head, head)}{dot}{rest}"] = value
    return out


def _diffusers_module(key: str, n_levels: int) -> tuple[str, str]:
    """UNet key -> (diffusers module prefix, remaining sub-key); ValueError if unknown."""
    for ours, theirs in _TOP_INV.items():
        if key.startswith(ours + "."):
            return theirs, key[len(ours) + 1 :]
    head, _, rest = key.partition(".")
    if head == "mid":
        name, _, sub = rest.partition(".")
        if name in _MID_INV:
            return _MID_INV[name], sub
    elif m := _OURS.match(key):
        side, level, kind, idx, sub = m.groups()
        block = _diffusers_level(side, int(level), n_levels)
        return f"{block}.{'resnets' if kind == 'block' else 'attentions'}.{idx}", sub
    elif m := _OURS_SAMPLE.match(key):
        side, level, kind, sub = m.groups()
        return f"{_diffusers_level(side, int(level), n_levels)}.{kind}rs.0", sub
    raise ValueError(f"state dict key {key!r}: not part of a ddpm_core UNet")


def _diffusers_level(side: str, level: int, n_levels: int) -> str:
    # diffusers lists the up path deepest first: our up[i] is up_blocks[n_levels - 1 - i].
    return f"down_blocks.{level}" if side == "down" else f"up_blocks.{n_levels - 1 - level}"


def _attention_to_diffusers(
    head: str, param: str, value: torch.Tensor
) -> list[tuple[str, torch.Tensor]]:
    if head == "qkv":
        q, k, v = value.chunk(3, dim=0)  # (3C, ...) -> 3 x (C, ...)
        return [(f"to_q.{param}", q), (f"to_k.{param}", k), (f"to_v.{param}", v)]
    if head == "proj_out":
        return [(f"to_out.0.{param}", value)]
    if head == "norm":
        return [(f"group_norm.{param}", value)]
    raise ValueError(f"attention parameter {head}.{param}: not part of a ddpm_core UNet")


def diffusers_config_from_unet(unet: Mapping[str, Any]) -> dict[str, Any]:
    """`UNet(**kwargs)` kwargs -> the diffusers `UNet2DModel` config of the same network.

    The inverse of `unet_config_from_diffusers` (google/ddpm-cifar10-32 conventions: sinusoidal
    embedding without flip, shift 1, padding-0 downsampling, single-head attention).
    """
    ch, mult, res = int(unet["ch"]), tuple(unet["ch_mult"]), int(unet["resolution"])
    levels = [res // 2**i for i in range(len(mult))]
    attn = [r in tuple(unet["attn_resolutions"]) for r in levels]
    return {
        **{key: needed for key, (_, needed) in _REQUIRED.items()},
        "sample_size": res,
        "in_channels": int(unet["in_channels"]),
        "out_channels": int(unet["out_channels"]),
        "block_out_channels": [ch * m for m in mult],
        "layers_per_block": int(unet["num_res_blocks"]),
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in attn][::-1],
        "dropout": float(unet["dropout"]),
        "norm_num_groups": int(unet.get("num_groups", 32)),
    }
