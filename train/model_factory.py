"""Build a whole ``torch.nn.Module`` from the tutorial's YAML::

    model:
        name: AutoTagging
        block_l:
        - sequential_l:
            - layer_l:
                - [Conv2d, {in_channels: 1, out_channels: 80, kernel_size: [128, 5]}]
                - [LayerNorm, {normalized_shape: -1}]
                - [Activation, LeakyReLU]

Each ``layer_l`` becomes one ``nn.Sequential``; the model runs them in order.
``-1`` in a size argument means "what the previous layer produces": it is
resolved by running a tensor on the ``meta`` device through the layers built
so far (nothing is computed). ``out_features: n_out`` (or ``-1`` in the last
layer when ``n_out`` is given) takes the size from the target.

Only names in :data:`LAYERS` can be built: no ``getattr`` on modules, no ``eval``.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from common.config import close_names, load_yaml
from common.errors import UserError

from . import layers as L

LAYERS: dict[str, Callable[..., nn.Module]] = {
    # torch.nn
    "Conv1d": nn.Conv1d,
    "Conv2d": nn.Conv2d,
    "Conv3d": nn.Conv3d,
    "ConvTranspose1d": nn.ConvTranspose1d,
    "ConvTranspose2d": nn.ConvTranspose2d,
    "Linear": nn.Linear,
    "Bilinear": nn.Bilinear,
    "LayerNorm": nn.LayerNorm,
    "GroupNorm": nn.GroupNorm,
    "InstanceNorm1d": nn.InstanceNorm1d,
    "InstanceNorm2d": nn.InstanceNorm2d,
    "BatchNorm1d": nn.BatchNorm1d,
    "BatchNorm2d": nn.BatchNorm2d,
    "MaxPool1d": nn.MaxPool1d,
    "MaxPool2d": nn.MaxPool2d,
    "AvgPool1d": nn.AvgPool1d,
    "AvgPool2d": nn.AvgPool2d,
    "AdaptiveAvgPool1d": nn.AdaptiveAvgPool1d,
    "AdaptiveAvgPool2d": nn.AdaptiveAvgPool2d,
    "AdaptiveMaxPool1d": nn.AdaptiveMaxPool1d,
    "AdaptiveMaxPool2d": nn.AdaptiveMaxPool2d,
    "Dropout": nn.Dropout,
    "Dropout1d": nn.Dropout1d,
    "Dropout2d": nn.Dropout2d,
    "Flatten": nn.Flatten,
    "Unflatten": nn.Unflatten,
    "Identity": nn.Identity,
    "Upsample": nn.Upsample,
    "ZeroPad2d": nn.ZeroPad2d,
    "LSTM": nn.LSTM,
    "GRU": nn.GRU,
    # the tutorial's own
    "Squeeze": L.Squeeze,
    "UnSqueeze": L.UnSqueeze,
    "Permute": L.Permute,
    "Mean": L.Mean,
    "Max": L.Max,
    "AbsLayer": L.AbsLayer,
    "BatchNorm1dT": L.BatchNorm1dT,
    "Conv2dRes": L.Conv2dRes,
    "Conv2dDS": L.Conv2dDS,
    "Conv2dNext": L.Conv2dNext,
    "LSTMall": L.LSTMall,
    "LSTMlast": L.LSTMlast,
    "AutoPoolWeight": L.AutoPoolWeight,
    "SoftmaxWeight": L.SoftmaxWeight,
    "StoreAs": L.StoreAs,
    "CatWith": L.CatWith,
    "L2Normalize": L.L2Normalize,
    "BNNeck": L.BNNeck,
    "Log1p": L.Log1p,
    "OctaveFold": L.OctaveFold,
    "CircularPad": L.CircularPad,
    "MeanMax": L.MeanMax,
}

ACTIVATIONS: dict[str, Callable[..., nn.Module]] = {
    "ReLU": nn.ReLU,
    "LeakyReLU": nn.LeakyReLU,
    "ELU": nn.ELU,
    "GELU": nn.GELU,
    "SELU": nn.SELU,
    "SiLU": nn.SiLU,
    "PReLU": nn.PReLU,
    "Sigmoid": nn.Sigmoid,
    "Tanh": nn.Tanh,
    "Softplus": nn.Softplus,
    "Softmax": lambda **kw: nn.Softmax(**{"dim": -1, **kw}),
    "LogSoftmax": lambda **kw: nn.LogSoftmax(**{"dim": -1, **kw}),
    "Identity": nn.Identity,
}

# Which axis of the previous output a size argument takes when given -1
# (per layer overrides in the layer class's ``size_dims``).
SIZE_DIMS: dict[str, int | str] = {
    "in_channels": 1,
    "num_features": 1,
    "num_channels": 1,
    "in_features": -1,
    "in1_features": -1,
    "input_size": -1,
    "normalized_shape": "all",
}
RECURRENT = (nn.LSTM, nn.GRU)


class ModelConfigError(UserError, ValueError):
    """A model YAML that cannot be built, with the YAML path of the culprit."""


class _RecurrentOutput(nn.Module):
    """``nn.LSTM``/``nn.GRU`` return ``(output, state)``; a Sequential needs the output alone."""

    def __init__(self, rnn: nn.Module):
        super().__init__()
        self.rnn = rnn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0]


class YamlModel(nn.Module):
    """The model a YAML describes: blocks of sequentials, run one after the other."""

    def __init__(
        self, name: str, blocks: list[list[nn.Sequential]], skips: L.SkipBuffer, config: dict
    ):
        super().__init__()
        self.name = name
        self.block_l = nn.ModuleList(nn.ModuleList(b) for b in blocks)
        self._skips = skips
        self.config = config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._skips.tensors.clear()
        for block in self.block_l:
            for seq in block:
                x = seq(x)
        self._skips.tensors.clear()
        return x


def _load(config: dict | str | os.PathLike) -> tuple[dict, str]:
    if isinstance(config, (str, os.PathLike)):
        data = load_yaml(config)
        where = str(config)
        if isinstance(data, dict) and "model" in data:
            data = data["model"]
        return data, where
    if isinstance(config, dict) and set(config) == {"model"}:
        return config["model"], "model"
    return config, "model"


def layer_names(config: dict | str | os.PathLike) -> set[str]:
    """The layer names a model config uses (``Conv2d``, ``BNNeck``, ...), without building it."""

    def items(d, key) -> list:
        return (d.get(key) or []) if isinstance(d, dict) else []

    cfg, _ = _load(config)
    names = set()
    for block in items(cfg, "block_l"):
        for seq in items(block, "sequential_l"):
            for entry in items(seq, "layer_l"):
                if isinstance(entry, (list, tuple)) and entry and isinstance(entry[0], str):
                    names.add(entry[0])
    return names


def _resolve_kwargs(
    name: str,
    cls: Any,
    kwargs: dict,
    shape: torch.Size,
    n_out: int | None,
    is_last: bool,
    where: str,
) -> dict:
    out = {}
    dims = {**SIZE_DIMS, **getattr(cls, "size_dims", {})}
    for k, v in kwargs.items():
        if v == "n_out" or (k == "out_features" and v == -1 and is_last and n_out is not None):
            if n_out is None:
                raise ModelConfigError(
                    f"{where}: {name}: {k}: n_out asked for, but no output size is known (the "
                    "target's classes, labels or pitch bins; `train summary` takes --n-out N)"
                )
            v = n_out
        elif v == -1 and k in dims:
            d = dims[k]
            v = list(shape[1:]) if d == "all" else int(shape[d])
        out[k] = v
    return out


def _instantiate(name: str, args: Any, where: str, skips: L.SkipBuffer) -> nn.Module:
    if name == "Activation":
        if isinstance(args, str):
            act, kw = args, {}
        elif isinstance(args, dict) and "name" in args:
            act, kw = args["name"], {k: v for k, v in args.items() if k != "name"}
        else:
            raise ModelConfigError(
                f"{where}: Activation: expected a name (e.g. LeakyReLU), got {args!r}"
            )
        if act not in ACTIVATIONS:
            raise ModelConfigError(
                f"{where}: unknown activation {act!r}; {close_names(act, list(ACTIVATIONS))}"
            )
        return ACTIVATIONS[act](**kw)
    cls = LAYERS[name]
    kwargs = dict(args or {})
    if cls in (L.StoreAs, L.CatWith):
        kwargs["buffer"] = skips
    try:
        module = cls(**kwargs)
    except TypeError as e:
        params = [
            p
            for p in inspect.signature(cls).parameters
            if p not in ("self", "buffer", "args", "kwargs")
        ]
        bad = [k for k in kwargs if k not in params and k != "buffer"]
        if bad:
            raise ModelConfigError(
                f"{where}: {name}: unknown argument {bad[0]!r}; {close_names(bad[0], params)}"
            ) from None
        raise ModelConfigError(f"{where}: {name}: {e}") from None
    except (ValueError, RuntimeError) as e:
        raise ModelConfigError(f"{where}: {name}: {e}") from None
    return _RecurrentOutput(module) if isinstance(module, RECURRENT) else module


def _parse_layer(entry: Any, where: str) -> tuple[str, Any]:
    if isinstance(entry, str):
        entry = [entry]
    if (
        not isinstance(entry, (list, tuple))
        or not entry
        or not isinstance(entry[0], str)
        or len(entry) > 2
    ):
        raise ModelConfigError(f"{where}: expected [LayerName, {{kwargs}}], got {entry!r}")
    name = entry[0]
    args = entry[1] if len(entry) == 2 else None
    if name != "Activation" and args is not None and not isinstance(args, dict):
        raise ModelConfigError(f"{where}: {name}: arguments must be a mapping, got {args!r}")
    if name != "Activation" and name not in LAYERS:
        raise ModelConfigError(
            f"{where}: unknown layer {name!r}; {close_names(name, [*LAYERS, 'Activation'])}"
        )
    return name, args


def build_model(
    config: dict | str | os.PathLike, input_shape: Sequence[int], n_out: int | None = None
) -> YamlModel:
    """Build the model of a parsed ``model:`` mapping (or a YAML path) for items of ``input_shape``.

    ``input_shape`` is one item's ``X`` shape without the batch, e.g. ``(1, 128, 64)``.
    Raises :class:`ModelConfigError` naming the YAML path (``block_l[1].sequential_l[0].layer_l[2]``).
    """
    cfg, file = _load(config)
    if not isinstance(cfg, dict) or "block_l" not in cfg:
        raise ModelConfigError(f"{file}: expected a mapping with 'name' and 'block_l'")
    unknown = set(cfg) - {"name", "block_l"}
    if unknown:
        k = sorted(unknown)[0]
        raise ModelConfigError(f"{file}: {k}: unknown key; {close_names(k, ['name', 'block_l'])}")
    skips_meta, skips = L.SkipBuffer(), L.SkipBuffer()
    x = torch.empty((2, *input_shape), device="meta")
    flat = []  # (where, name, args)
    for b, block in enumerate(cfg["block_l"] or []):
        if not isinstance(block, dict) or "sequential_l" not in block:
            raise ModelConfigError(f"{file}: block_l[{b}]: expected a mapping with 'sequential_l'")
        for s, seq in enumerate(block["sequential_l"] or []):
            if not isinstance(seq, dict) or "layer_l" not in seq:
                raise ModelConfigError(
                    f"{file}: block_l[{b}].sequential_l[{s}]: expected a mapping with 'layer_l'"
                )
            for k, entry in enumerate(seq["layer_l"] or []):
                where = f"{file}: block_l[{b}].sequential_l[{s}].layer_l[{k}]"
                flat.append((b, s, where, *_parse_layer(entry, where)))
    if not flat:
        raise ModelConfigError(f"{file}: the model has no layers")

    # Pass 1, on meta: resolve -1 from the shape each layer receives, check that shapes fit.
    resolved = []
    for i, (b, s, where, name, args) in enumerate(flat):
        if name != "Activation" and isinstance(args, dict):
            args = _resolve_kwargs(
                name, LAYERS[name], args, x.shape, n_out, i == len(flat) - 1, where
            )
        with torch.device("meta"):
            module = _instantiate(name, args, where, skips_meta)
            module.eval()  # the output the model gives in evaluation (a head adds to it in training)
            try:
                x = module(x)
            except Exception as e:  # noqa: BLE001 - any shape fault becomes a located message
                msg = str(e).splitlines()[0]
                raise ModelConfigError(
                    f"{where}: {name} does not fit its input of shape {tuple(x.shape[1:])} (batch left out): {msg}"
                ) from None
        resolved.append((b, s, name, args))

    # Pass 2, for real: the same layers in the same order (deterministic under a seed).
    blocks: list[list[list[nn.Module]]] = []
    for b, s, name, args in resolved:
        while len(blocks) <= b:
            blocks.append([])
        while len(blocks[b]) <= s:
            blocks[b].append([])
        blocks[b][s].append(_instantiate(name, args, "", skips))
    model = YamlModel(
        str(cfg.get("name", "model")),
        [[nn.Sequential(*mods) for mods in block] for block in blocks],
        skips,
        cfg,
    )
    model.output_shape = tuple(x.shape[1:])
    return model


def summary(
    model: nn.Module, input_shape: Sequence[int]
) -> tuple[list[tuple[str, str, tuple, int]], int]:
    """``[(path, layer, output shape without batch, parameters)]`` and the total parameter count."""
    rows = []
    hooks = []
    for path, mod in model.named_modules():
        parent_is_seq = path.count(".") == 3  # block_l.B.S.K
        if parent_is_seq:
            hooks.append(
                mod.register_forward_hook(
                    lambda m, i, o, p=path: rows.append(
                        (
                            p,
                            type(m.rnn if isinstance(m, _RecurrentOutput) else m).__name__,
                            tuple(o.shape[1:]),
                            sum(q.numel() for q in m.parameters()),
                        )
                    )
                )
            )
    try:
        with torch.no_grad():
            was = model.training
            model.eval()
            model(torch.zeros((2, *input_shape)))
            model.train(was)
    finally:
        for h in hooks:
            h.remove()
    return rows, sum(p.numel() for p in model.parameters())


def format_summary(model: nn.Module, input_shape: Sequence[int]) -> str:
    rows, total = summary(model, input_shape)
    lines = [f"{getattr(model, 'name', type(model).__name__)}: input {tuple(input_shape)}"]
    lines.append(f"{'layer':<28}{'type':<16}{'output':<22}{'params':>12}")
    for path, name, shape, n in rows:
        short = path.replace("block_l.", "b").replace(".", "/")
        lines.append(f"{short:<28}{name:<16}{str(shape):<22}{n:>12,}")
    lines.append(f"total parameters: {total:,}")
    return "\n".join(lines)
