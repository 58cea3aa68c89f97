"""The tutorial's own layers, usable by name in a model YAML.

Shapes use B for batch, C for channels/features, T for time, F for frequency.
"""

from __future__ import annotations

import torch
from torch import nn


class Squeeze(nn.Module):
    """``x.squeeze(dim)``: drop a dimension of size 1."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[self.dim] != 1:
            raise ValueError(
                f"Squeeze(dim={self.dim}): dimension has size {x.shape[self.dim]}, not 1"
            )
        return x.squeeze(self.dim)


class UnSqueeze(nn.Module):
    """``x.unsqueeze(dim)``: add a dimension of size 1."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(self.dim)


class Permute(nn.Module):
    """``x.permute(*shape)``; ``shape`` includes the batch dimension, e.g. ``[0, 2, 1]``."""

    def __init__(self, shape: list[int]):
        super().__init__()
        self.shape = list(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.shape)


class Mean(nn.Module):
    """Average over ``dim``."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=self.dim)


class Max(nn.Module):
    """Maximum over ``dim`` (the values)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=self.dim)


class AbsLayer(nn.Module):
    """``|x|``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.abs()


class BatchNorm1dT(nn.BatchNorm1d):
    """BatchNorm1d over the last axis of ``(B, T, C)`` (time-first sequences)."""

    size_dims = {"num_features": -1}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class Conv2dRes(nn.Module):
    """Residual block: conv-BN-ReLU-conv-BN plus the input (1x1 conv when channels change), ReLU.

    ``(B, in_channels, F, T) -> (B, out_channels, F, T)`` ("same" padding).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | list[int] = 3):
        super().__init__()
        k = (
            tuple(kernel_size)
            if isinstance(kernel_size, (list, tuple))
            else (kernel_size, kernel_size)
        )
        pad = (k[0] // 2, k[1] // 2)
        self.conv1 = nn.Conv2d(in_channels, out_channels, k, padding=pad, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, k, padding=pad, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.skip = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Conv2d(in_channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(h)) + self.skip(x))


class Conv2dDS(nn.Module):
    """Depthwise-separable convolution: a per-channel ``kernel_size`` conv, then a 1x1 conv."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | list[int] = 3,
        stride=1,
        padding="same",
    ):
        super().__init__()
        k = tuple(kernel_size) if isinstance(kernel_size, (list, tuple)) else kernel_size
        self.depthwise = nn.Conv2d(
            in_channels, in_channels, k, stride=stride, padding=padding, groups=in_channels
        )
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class Conv2dNext(nn.Module):
    """ConvNeXt block (Liu et al. 2022): depthwise 7x7, LayerNorm over channels,
    1x1 expansion x4, GELU, 1x1 back, plus the input. Keeps ``(B, C, F, T)``."""

    def __init__(self, in_channels: int, kernel_size: int = 7, expansion: int = 4):
        super().__init__()
        self.dw = nn.Conv2d(
            in_channels, in_channels, kernel_size, padding=kernel_size // 2, groups=in_channels
        )
        self.norm = nn.LayerNorm(in_channels)
        self.pw1 = nn.Linear(in_channels, expansion * in_channels)
        self.pw2 = nn.Linear(expansion * in_channels, in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dw(x).permute(0, 2, 3, 1)  # (B, F, T, C)
        h = self.pw2(torch.nn.functional.gelu(self.pw1(self.norm(h))))
        return x + h.permute(0, 3, 1, 2)


class LSTMall(nn.Module):
    """LSTM over ``(B, T, C)`` (batch first) returning every step ``(B, T, H * directions)``."""

    size_dims = {"input_size": -1}

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.lstm = nn.LSTM(
            input_size,
            hidden_size,
            num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lstm(x)[0]


class LSTMlast(LSTMall):
    """LSTM over ``(B, T, C)`` returning the last step only ``(B, H * directions)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lstm(x)[0][:, -1]


class AutoPoolWeight(nn.Module):
    """Auto-pool (McFee, Salamon & Bello 2018) over time of ``(B, C, T)`` -> ``(B, C)``.

    ``sum_t x * softmax_t(alpha * x)`` with one learnable ``alpha`` per channel:
    alpha = 0 is the mean, large alpha tends to the max.
    """

    def __init__(self, num_features: int, dim: int = -1):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(num_features))
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.alpha.view(-1, *([1] * (x.dim() - 2)))
        w = torch.softmax(a * x, dim=self.dim)
        return (x * w).sum(dim=self.dim)


class SoftmaxWeight(nn.Module):
    """Attention pooling over time of ``(B, C, T)`` -> ``(B, C)``: a learned 1x1 projection
    scores each frame, softmax over time gives the weights of the average."""

    size_dims = {"in_features": 1}

    def __init__(self, in_features: int):
        super().__init__()
        self.score = nn.Conv1d(in_features, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.softmax(self.score(x), dim=-1)  # (B, 1, T)
        return (x * w).sum(dim=-1)


class SkipBuffer:
    """Tensors kept by StoreAs for CatWith within one forward pass (not a module, no state saved)."""

    def __init__(self):
        self.tensors: dict[str, torch.Tensor] = {}


class StoreAs(nn.Module):
    """Keep the current tensor under ``name`` (for a later CatWith, U-Net skips); passes it on."""

    def __init__(self, name: str, buffer: SkipBuffer):
        super().__init__()
        self.name, self._buffer = name, buffer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._buffer.tensors[self.name] = x
        return x

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


class CatWith(nn.Module):
    """Concatenate the tensor stored under ``name`` along ``dim`` (default channels)."""

    def __init__(self, name: str, buffer: SkipBuffer, dim: int = 1):
        super().__init__()
        self.name, self.dim, self._buffer = name, dim, buffer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.name not in self._buffer.tensors:
            raise KeyError(
                f"CatWith: nothing stored as {self.name!r} before this layer (add a StoreAs)"
            )
        return torch.cat([x, self._buffer.tensors[self.name]], dim=self.dim)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, dim={self.dim}"


class L2Normalize(nn.Module):
    """Scale each vector along ``dim`` to unit length (embeddings for metric learning)."""

    def __init__(self, dim: int = -1):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(x, dim=self.dim)


class Log1p(nn.Module):
    """``log(1 + scale * x)``: a magnitude's dynamic range compressed (a CQT's loud and quiet
    partials on one scale)."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log1p(self.scale * x.clamp_min(0))

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


class BNNeck(nn.Module):
    """A classification head beside an embedding (BNNeck, Luo et al. 2019, "Bag of tricks and
    a strong baseline for deep person re-identification"), the model's last layer.

    In evaluation the embedding passes as it is (what ranks versions); in training the layer
    returns ``(embedding, logits)``: the logits over ``classes`` (``n_out``: the target's
    works) of a linear map without bias of the batch-normalised embedding, for a
    classification loss beside the metric loss on the embedding itself."""

    def __init__(self, in_features: int, classes: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(in_features)
        self.bn.bias.requires_grad_(False)  # a shift the classifier needs not
        self.fc = nn.Linear(in_features, classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if not self.training:
            return x
        return x, self.fc(self.bn(x))


class OctaveFold(nn.Module):
    """``(B, C, F, T)`` with ``F`` a whole number of octaves -> ``(B, C, bins_per_octave, T)``,
    the octaves reduced by ``max`` or ``mean``: a chroma of the CQT's full resolution, on
    which a transposition is a circular shift (see :class:`CircularPad`)."""

    def __init__(self, bins_per_octave: int, reduce: str = "max"):
        super().__init__()
        if reduce not in ("max", "mean"):
            raise ValueError(f"reduce must be max or mean, got {reduce!r}")
        self.bins, self.reduce = int(bins_per_octave), reduce

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, f, t = x.shape
        if f % self.bins:
            raise ValueError(f"{f} bins are not whole octaves of {self.bins}")
        x = x.reshape(b, c, f // self.bins, self.bins, t)
        return x.amax(2) if self.reduce == "max" else x.mean(2)

    def extra_repr(self) -> str:
        return f"bins_per_octave={self.bins}, reduce={self.reduce}"


class CircularPad(nn.Module):
    """Pad ``(B, C, P, T)`` circularly by ``pitch`` bins along the pitch axis (a pitch-class
    axis wraps around) and with zeros by ``time`` frames along time, for a convolution without
    padding of its own: a circular shift of the input then shifts its output the same way."""

    def __init__(self, pitch: int, time: int = 0):
        super().__init__()
        self.pitch, self.time = int(pitch), int(time)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pitch:
            x = torch.cat([x[:, :, -self.pitch :], x, x[:, :, : self.pitch]], dim=2)
        if self.time:
            x = nn.functional.pad(x, (self.time, self.time))
        return x

    def extra_repr(self) -> str:
        return f"pitch={self.pitch}, time={self.time}"


class MeanMax(nn.Module):
    """The mean and the max over ``dim``, side by side on the channel axis: ``(B, C, T)`` ->
    ``(B, 2C)``. Over time, a bag of local patterns, whatever their place and spacing."""

    def __init__(self, dim: int = -1):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(self.dim), x.amax(self.dim)], dim=1)
