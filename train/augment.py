"""Augmentation of training batches, on the device, after transfer; never in eval or predict.

Set in the experiment as a list, each a registered class::

    train:
      augment:
        - {name: pitch_shift, bins: [-10, 10]}
        - {name: time_mask, max_frames: 8}

Each declares what it does to the target (``target``). Its random draws come from a numpy
generator seeded by (run seed, epoch, step), so a run is reproducible and a resumed run draws
what the uninterrupted one drew.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from common.config import ConfigError, Field, close_names, validate
from common.features import Feature

from .tasks import Task

AUGMENTATIONS: dict[str, type[Augmentation]] = {}


def register(cls: type[Augmentation]) -> type[Augmentation]:
    AUGMENTATIONS[cls.name] = cls
    return cls


class Augmentation:
    name: ClassVar[str]
    schema: ClassVar[dict[str, Field]] = {}
    target: ClassVar[str]  # what happens to the target, in words

    def __init__(self, params: dict, feature: Feature, task: Task, where: str, file=None):
        self.p = validate(params, {"name": Field("str"), **self.schema}, file, prefix=where)
        self.feature, self.task, self.where, self.file = feature, task, where, file

    def fail(self, key: str | None, reason: str) -> ConfigError:
        return ConfigError(self.file, f"{self.where}.{key}" if key else self.where, reason)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator):
        raise NotImplementedError


def _range(p: dict, key: str, aug: Augmentation) -> tuple[float, float]:
    lo, hi = p[key]
    if lo > hi:
        raise aug.fail(key, f"expected [low, high], got {p[key]}")
    return lo, hi


@register
class PitchShift(Augmentation):
    """Every channel rolled by the same whole number of bins ``k`` per example (a transposition
    by ``k / (bins_per_octave / 12)`` semitones); the vacated edge holds the feature's floor,
    not wrapped values. Frame-level pitch targets move by the same ``k``."""

    name = "pitch_shift"
    schema: ClassVar = {"bins": Field("list", item="int", help="[low, high] shift in bins")}
    target = "frame-level pitch targets move with the feature; labels stay"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.lo, self.hi = _range(self.p, "bins", self)
        if self.feature.kind not in ("cqt", "hcqt"):
            raise self.fail(
                "name", f"needs a feature with a pitch axis (cqt, hcqt), not {self.feature.kind}"
            )

    def __call__(self, x, y, rng):
        k = torch.as_tensor(rng.integers(self.lo, self.hi + 1, len(x)), device=x.device)
        x = shift_bins(x, k, dim=2, fill=self.feature.floor)
        if self.task.name == "multipitch":
            y = shift_bins(y, k, dim=1, fill=0)
        return x, y


def shift_bins(t: torch.Tensor, k: torch.Tensor, dim: int, fill: float) -> torch.Tensor:
    """``t`` with each example's axis ``dim`` moved up by ``k[i]`` (out[j] = in[j - k]), the
    vacated places filled with ``fill``."""
    n = t.shape[dim]
    src = torch.arange(n, device=t.device)[None, :] - k[:, None]  # (B, n)
    valid = (src >= 0) & (src < n)
    shape = [len(t)] + [1] * (t.dim() - 1)
    shape[dim] = n
    index = src.clamp(0, n - 1).view(shape).expand_as(t)
    out = t.gather(dim, index)
    return out.masked_fill(~valid.view(shape), fill)


@register
class TimeStretch(Augmentation):
    """Each example played ``rate`` times as fast (a factor drawn log-uniformly in
    ``[low, high]``): its time axis resampled linearly by ``1 / rate``, then a random stretch
    of the patch's length taken (or the floor appended past the end), so the batch keeps its
    shape. For tasks whose target is one per file (labels, work ids): a version of the same
    piece at another tempo, as covers are."""

    name = "time_stretch"
    schema: ClassVar = {"rate": Field("list", item="number", help="[low, high] speed factor")}
    target = "per-file targets only (labels, work ids); frame-level targets are refused"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.lo, self.hi = _range(self.p, "rate", self)
        if self.lo <= 0:
            raise self.fail("rate", f"speed factors must be > 0, got {self.p['rate']}")
        if self.task.name == "multipitch":
            raise self.fail("name", "would move frame-level targets off their frames")

    def __call__(self, x, y, rng):
        n = x.shape[-1]
        rates = np.exp(rng.uniform(np.log(self.lo), np.log(self.hi), len(x)))
        offsets = rng.uniform(0, 1, len(x))
        out = torch.full_like(x, self.feature.floor)
        for i, (r, o) in enumerate(zip(rates, offsets)):
            m = max(1, int(round(n / r)))
            xi = x[i : i + 1].float()
            flat = xi.reshape(1, -1, n)
            st = torch.nn.functional.interpolate(flat, size=m, mode="linear", align_corners=False)
            st = st.reshape(*xi.shape[:-1], m).to(x.dtype)
            start = int(o * (m - n)) if m > n else 0
            take = st[..., start : start + n]
            out[i, ..., : take.shape[-1]] = take[0]
        return out, y


class _Mask(Augmentation):
    """SpecAugment (Park et al. 2019): ``count`` bands of up to ``max_width`` along an axis,
    set to the feature's floor, per example. Targets stay."""

    target = "unchanged"
    dim: ClassVar[int]
    key: ClassVar[str]

    def __call__(self, x, y, rng):
        n, count, width = x.shape[self.dim], self.p["count"], self.p[self.key]
        if width >= n:
            raise self.fail(self.key, f"must be smaller than the patch's {n} along this axis")
        w = rng.integers(0, width + 1, (len(x), count))
        start = rng.integers(0, n - w + 1)
        pos = np.arange(n)[None, None, :]
        masked = ((pos >= start[..., None]) & (pos < (start + w)[..., None])).any(1)  # (B, n)
        shape = [len(x)] + [1] * (x.dim() - 1)
        shape[self.dim] = n
        m = torch.as_tensor(masked, device=x.device).view(shape)
        return x.masked_fill(m, self.feature.floor), y


@register
class TimeMask(_Mask):
    name, dim, key = "time_mask", -1, "max_frames"
    schema: ClassVar = {"max_frames": Field("int"), "count": Field("int", 1)}


@register
class FreqMask(_Mask):
    name, dim, key = "freq_mask", -2, "max_bins"
    schema: ClassVar = {"max_bins": Field("int"), "count": Field("int", 1)}


@register
class Gain(Augmentation):
    """A gain of ``db`` decibels per example, in the feature's own domain: a factor on
    magnitudes, an added constant on log features (clipped at their floor)."""

    name = "gain"
    schema: ClassVar = {"db": Field("list", item="number", help="[low, high] gain in dB")}
    target = "unchanged"

    def __call__(self, x, y, rng):
        lo, hi = _range(self.p, "db", self)
        db = torch.as_tensor(rng.uniform(lo, hi, len(x)), dtype=x.dtype, device=x.device)
        db = db.view(-1, *[1] * (x.dim() - 1))
        domain, power = self.feature.level_domain
        if domain == "log":
            return (x + db * power * np.log(10) / 20).clamp_min(self.feature.floor), y
        return x * 10 ** (db * power / 20), y


@register
class Mixup(Augmentation):
    """mixup (Zhang et al. 2018) for multi-label targets: each example mixed with another of the
    batch, ``lam ~ Beta(alpha, alpha)``; the targets mixed alike (soft labels)."""

    name = "mixup"
    schema: ClassVar = {"alpha": Field("float", 0.4)}
    target = "mixed like the features (multi-label only)"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        if self.task.name != "multilabel":
            raise self.fail(
                "name", f"mixup is for multilabel targets, this task is {self.task.name}"
            )

    def __call__(self, x, y, rng):
        lam = torch.as_tensor(
            rng.beta(self.p["alpha"], self.p["alpha"], len(x)), dtype=x.dtype, device=x.device
        )
        other = torch.as_tensor(rng.permutation(len(x)), device=x.device)
        lx = lam.view(-1, *[1] * (x.dim() - 1))
        ly = lam.view(-1, *[1] * (y.dim() - 1))
        return lx * x + (1 - lx) * x[other], ly * y.float() + (1 - ly) * y[other].float()


def make_augmentations(
    items: list[dict[str, Any]], feature: Feature, task: Task, file=None
) -> list[Augmentation]:
    """The ``train.augment`` list, each item checked (errors name ``train.augment[i].key``)."""
    out = []
    for i, item in enumerate(items or []):
        where = f"train.augment[{i}]"
        if not isinstance(item, dict) or "name" not in item:
            raise ConfigError(file, where, "expected a mapping with a 'name'")
        cls = AUGMENTATIONS.get(item["name"])
        if cls is None:
            raise ConfigError(
                file,
                f"{where}.name",
                f"unknown augmentation {item['name']!r}; {close_names(str(item['name']), list(AUGMENTATIONS))}",
            )
        out.append(cls(item, feature, task, where, file))
    return out


def augment(augs: list[Augmentation], x, y, seed: int, epoch: int, step: int):
    """A training batch through every augmentation, drawn from (seed, epoch, step)."""
    if not augs:
        return x, y
    rng = np.random.default_rng([seed, epoch, step, 0xA06])
    for a in augs:
        x, y = a(x, y, rng)
    return x, y
