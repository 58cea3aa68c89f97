"""Audio features computed with librosa: waveform, log-mel (LMS), CQT and HCQT.

One small class per feature, each declaring its parameters (with defaults as
in the tutorial's code), the shape it produces and its frame and pitch grids,
so that the store, the targets and the Dataset are driven by declarations.
Every feature returns ``np.ndarray [shape=(channels, n_bins, n_frames)]``,
float32; the store keeps it time-major.

``precompute`` and ``train predict`` both call :func:`make_feature`, so a model
sees at prediction time exactly what it saw in training.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .config import SHIPPED, ConfigError, Field, load_yaml, validate
from .octaves import early_downsamples, octave_groups

# Bump when a feature's code changes its values: every content key changes with it.
FEATURE_CODE_VERSION = 1
# Libraries whose versions change feature values (decoding, resampling, the transforms).
VALUE_LIBRARIES = ("librosa", "numpy", "scipy", "soxr")

_PATCH_SCHEMA = {
    "patch_frames": Field("int", 64, help="frames per patch"),
    "patch_hop": Field("int", 32, help="frames between patch starts"),
}
# How the values are stored: float16 halves the disk, the page cache and the bytes a batch moves
# (relative error about 5e-4 on normal values; see the README).
_STORE_SCHEMA = {
    "dtype": Field(
        "str", "float32", choices=["float32", "float16"], help="dtype of the stored rows"
    ),
}


class Feature:
    """Base class: parameters, shape, frame grid and pitch grid of one feature."""

    kind: ClassVar[str]
    schema: ClassVar[dict[str, Field]]

    def __init__(self, params: dict[str, Any] | None = None, file: Any = None):
        params = dict(params or {})
        params.pop("kind", None)
        self.params = validate(params, {**self.schema, **_STORE_SCHEMA, **_PATCH_SCHEMA}, file)
        for key in ("sr", "hop_length", "patch_frames", "patch_hop"):
            if key in self.params and self.params[key] <= 0:
                raise ConfigError(file, key, f"must be > 0, got {self.params[key]}")
        self.check(file)

    def check(self, file: Any) -> None:
        """Parameter checks beyond types; raise ConfigError naming the key."""

    # -- declarations ---------------------------------------------------
    @property
    def sr(self) -> int:
        return self.params["sr"]

    @property
    def hop_length(self) -> int:
        """Samples between consecutive frames."""
        return self.params["hop_length"]

    @property
    def patch_frames(self) -> int:
        return self.params["patch_frames"]

    @property
    def patch_hop(self) -> int:
        return self.params["patch_hop"]

    @property
    def channels(self) -> int:
        return 1

    @property
    def n_bins(self) -> int:
        raise NotImplementedError

    @property
    def store_dtype(self) -> str:
        """dtype of the feature rows in a store (computed in float32, stored as this)."""
        return self.params["dtype"]

    @property
    def frame_shape(self) -> tuple[int, int]:
        """Shape of one time frame in the store: ``(channels, n_bins)``."""
        return (self.channels, self.n_bins)

    def n_frames(self, n_samples: int) -> int:
        """Frames librosa's centred framing gives for ``n_samples``."""
        return 1 + n_samples // self.hop_length

    def frame_times(self, n_frames: int) -> np.ndarray:
        """Time in seconds of each frame's centre [shape=(n_frames,)]."""
        return np.arange(n_frames) * (self.hop_length / self.sr)

    def pitch_midi(self) -> np.ndarray:
        """MIDI pitch of each bin of the frame-level pitch target [shape=(n_pitch_bins,)].

        A 128-semitone grid for features without a pitch axis; the CQT bins for CQT/HCQT.
        """
        return np.arange(128, dtype=np.float64)

    # the smallest value the feature takes (silence): what masks and shifts fill with
    floor: ClassVar[float] = 0.0

    @property
    def level_domain(self) -> tuple[str, float]:
        """How a gain shows in the values: ``("linear", e)`` multiplies them by ``g ** e``,
        ``("log", e)`` adds ``e * log(g)`` (``e``: 1 for amplitudes, 2 for powers)."""
        return "linear", 1.0

    def patch_layout(self, length: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """``(shape, strides in elements)`` of the model input made of ``length`` contiguous
        time-major frames ``(L, C, F)``: ``(C, F, L)`` here. The one place the layout is
        computed; :meth:`patch_input` and the batch reader both take it from here."""
        c, f = self.frame_shape
        return (c, f, length), (f, 1, c * f)

    def patch_input(self, block: np.ndarray) -> np.ndarray:
        """Time-major frames ``(L, C, F)`` -> model input (:meth:`patch_layout`): no
        copy, when ``block`` is contiguous."""
        block = np.ascontiguousarray(block)
        shape, strides = self.patch_layout(len(block))
        return np.lib.stride_tricks.as_strided(
            block, shape, tuple(s * block.itemsize for s in strides)
        )

    def compute(self, y: np.ndarray) -> np.ndarray:
        """Feature of mono audio ``y`` at ``self.sr`` [shape=(channels, n_bins, n_frames)], float32."""
        raise NotImplementedError

    def max_hz(self) -> float:
        """The highest frequency the feature looks at (audio recorded at a lower Nyquist leaves
        the bins above it empty)."""
        return self.sr / 2

    def narrower(self, nyquist: float) -> dict[str, Any] | None:
        """Parameters that keep the feature below ``nyquist`` (``--set`` values), if any."""
        return None

    # -- identity -------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.params}

    def value_params(self) -> dict[str, Any]:
        """The parameters that change feature values (patch length and hop do not)."""
        return {k: v for k, v in self.to_dict().items() if k not in _PATCH_SCHEMA}

    def key(self) -> str:
        """Identity of this feature's values: parameters, library versions, code version."""
        return params_hash(
            {
                "feature": self.value_params(),
                "versions": value_versions(),
                "code": FEATURE_CODE_VERSION,
            }
        )[:32]

    def hash(self) -> str:
        return params_hash(self.to_dict())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params})"


@functools.lru_cache(maxsize=1)
def value_versions() -> dict[str, str]:
    """Installed versions of :data:`VALUE_LIBRARIES` (part of every feature key)."""
    from importlib import metadata

    out = {}
    for name in VALUE_LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "none"
    return out


def params_hash(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class Waveform(Feature):
    """The signal itself, in frames of ``hop_length`` samples.

    Stored time-major as ``(n_frames, 1, hop_length)`` so a patch of ``L``
    frames is ``L * hop_length`` contiguous samples; the model input is
    ``(1, L * hop_length)`` and frame targets live on the block grid.
    """

    kind = "waveform"
    schema: ClassVar = {
        "sr": Field("int", 22050),
        "hop_length": Field("int", 512, help="samples per frame (block)"),
    }

    @property
    def n_bins(self) -> int:
        return self.hop_length

    def n_frames(self, n_samples: int) -> int:
        return -(-n_samples // self.hop_length)

    def frame_times(self, n_frames: int) -> np.ndarray:
        return (np.arange(n_frames) + 0.5) * (self.hop_length / self.sr)

    def patch_layout(self, length: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        n = length * self.hop_length
        return (1, n), (n, 1)

    def compute(self, y: np.ndarray) -> np.ndarray:
        n = self.n_frames(len(y))
        out = np.zeros(n * self.hop_length, dtype=np.float32)
        out[: len(y)] = y
        return out.reshape(n, 1, self.hop_length).transpose(1, 2, 0)


class LogMel(Feature):
    """Log-mel spectrogram: ``log(1 + log_gain * melspectrogram(y))``."""

    kind = "lms"
    schema: ClassVar = {
        "sr": Field("int", 22050),
        "n_mels": Field("int", 128),
        "n_fft": Field("int", 2048),
        "win_length": Field("int", 2048),
        "hop_length": Field("int", 1024),
        "fmin": Field("float", 0.0),
        "fmax": Field("float", None, nullable=True),
        "power": Field("float", 2.0),
        "log_gain": Field("float", 10000.0),
    }

    @property
    def level_domain(self) -> tuple[str, float]:
        return "log", self.params["power"]

    def check(self, file: Any) -> None:
        if self.params["win_length"] > self.params["n_fft"]:
            raise ConfigError(file, "win_length", "must be <= n_fft")

    @property
    def n_bins(self) -> int:
        return self.params["n_mels"]

    def max_hz(self) -> float:
        return min(self.params["fmax"] or self.sr / 2, self.sr / 2)

    def narrower(self, nyquist: float) -> dict[str, Any] | None:
        return {"fmax": float(nyquist)}

    def compute(self, y: np.ndarray) -> np.ndarray:
        import librosa

        p = self.params
        mel = librosa.feature.melspectrogram(
            y=y,
            sr=p["sr"],
            n_fft=p["n_fft"],
            win_length=p["win_length"],
            hop_length=p["hop_length"],
            n_mels=p["n_mels"],
            fmin=p["fmin"],
            fmax=p["fmax"],
            power=p["power"],
        )
        return np.log1p(p["log_gain"] * mel).astype(np.float32)[None]


class HCQT(Feature):
    """Harmonic CQT magnitude: for each harmonic ``h``, a CQT from ``fmin * h``.

    ``harmonics: [1]`` is a plain CQT. Defaults: harmonics [0.5, 1, 2, 3, 4, 5],
    fmin 32.7 Hz (C1), 5 bins per semitone over 6 octaves (360 bins), hop 512.

    ``shared_octaves: true`` (default) computes harmonics an octave apart from one CQT that
    spans all their octaves, each harmonic a slice of it (:func:`octave_groups`), where librosa
    analyses their octaves at the same rates (:meth:`_cqts`): 4 CQTs for the default 6
    harmonics ({0.5, 1, 2}, 3, 4, 5), not 6. They differ from separate CQTs by librosa's per-octave resampling
    (under 1 % of a file's peak). ``false`` gives one ``librosa.cqt`` per harmonic, bit for bit.
    """

    kind = "hcqt"
    schema: ClassVar = {
        "sr": Field("int", 22050),
        "hop_length": Field("int", 512),
        "fmin": Field("float", 32.70319566257483),
        "n_bins": Field("int", 360),
        "bins_per_octave": Field("int", 60),
        "harmonics": Field("list", [0.5, 1, 2, 3, 4, 5], item="number"),
        "filter_scale": Field("float", 1.0),
        "log": Field("bool", False, help="log(1 + x) compression of the magnitude"),
        "shared_octaves": Field(
            "bool", True, help="harmonics an octave apart share one CQT (false: one per harmonic)"
        ),
    }

    def check(self, file: Any) -> None:
        p = self.params
        if not p["harmonics"] or any(h <= 0 for h in p["harmonics"]):
            raise ConfigError(file, "harmonics", "must be a non-empty list of positive numbers")
        if p["bins_per_octave"] % 12:
            raise ConfigError(
                file, "bins_per_octave", "must be a multiple of 12 (whole bins per semitone)"
            )
        # a CQT shared by harmonics an octave apart reaches as high as its highest harmonic's
        h = max(p["harmonics"])
        top = h * p["fmin"] * 2 ** (p["n_bins"] / p["bins_per_octave"])
        if top > p["sr"] / 2:
            raise ConfigError(
                file,
                "n_bins",
                f"the highest bin of harmonic {h:g} is {top:.0f} Hz, above Nyquist ({p['sr'] / 2:.0f} Hz)",
            )
        n_octaves = int(np.ceil(p["n_bins"] / p["bins_per_octave"]))
        if p["hop_length"] % 2 ** max(n_octaves - 1, 0):
            raise ConfigError(
                file,
                "hop_length",
                f"must be a multiple of {2 ** (n_octaves - 1)} for {n_octaves} octaves",
            )

    def _cqts(self) -> list[tuple[float, int, float, list[tuple[int, int]]]]:
        """The CQTs to compute: ``(fmin, n_bins, highest harmonic, [(channel, first bin), ...])``.

        Harmonics an octave apart (:func:`octave_groups`) share one CQT spanning all their
        octaves when librosa would then analyse each of their octaves at the sample rate it
        uses for that harmonic's own CQT. librosa picks the rate of each octave from the top
        frequency of the whole CQT (its early downsampling): a harmonic whose octaves would
        be analysed at half the rate, nearer to Nyquist, gets a CQT of its own instead, since
        its values would move by a few percent on broadband sounds.
        """
        p = self.params
        out = []
        for base, members in octave_groups(p["harmonics"], p["shared_octaves"]):
            parts: list[list[tuple[int, int]]] = []
            for c, k in members:  # highest k first
                if parts and self._same_rates(base, [*parts[-1], (c, k)]):
                    parts[-1].append((c, k))
                else:
                    parts.append([(c, k)])
            for part in parts:
                top, low = part[0][1], part[-1][1]
                n_bins = p["n_bins"] + (top - low) * p["bins_per_octave"]
                slices = [(c, (k - low) * p["bins_per_octave"]) for c, k in part]
                out.append((p["fmin"] * base * 2.0**low, n_bins, base * 2.0**top, slices))
        return out

    def _same_rates(self, base: float, part: list[tuple[int, int]]) -> bool:
        p = self.params
        top, low = part[0][1], part[-1][1]
        bpo = p["bins_per_octave"]
        shared = early_downsamples(p, p["fmin"] * base * 2.0**low, p["n_bins"] + (top - low) * bpo)
        return all(
            shared + (top - k) == early_downsamples(p, p["fmin"] * base * 2.0**k, p["n_bins"])
            for _, k in part
        )

    @property
    def level_domain(self) -> tuple[str, float]:
        return ("log" if self.params["log"] else "linear"), 1.0

    @property
    def channels(self) -> int:
        return len(self.params["harmonics"])

    @property
    def n_bins(self) -> int:
        return self.params["n_bins"]

    def pitch_midi(self) -> np.ndarray:
        p = self.params
        midi0 = 12 * np.log2(p["fmin"] / 440.0) + 69
        return midi0 + np.arange(p["n_bins"]) * (12 / p["bins_per_octave"])

    def max_hz(self) -> float:
        top = 440.0 * 2 ** ((self.pitch_midi()[-1] - 69) / 12)
        return min(top * max(self.params["harmonics"]), self.sr / 2)

    def narrower(self, nyquist: float) -> dict[str, Any] | None:
        """Fewer bins, so that the highest harmonic of the top bin stays below ``nyquist``."""
        p = self.params
        octaves = np.log2(nyquist / (p["fmin"] * max(p["harmonics"])))
        n = int(np.floor(octaves * p["bins_per_octave"])) + 1
        return {"n_bins": n} if 0 < n < p["n_bins"] else None

    def compute(self, y: np.ndarray) -> np.ndarray:
        import librosa

        p = self.params
        n = self.n_frames(len(y))
        out = np.empty((self.channels, p["n_bins"], n), dtype=np.float32)
        for fmin, n_bins, _, slices in self._cqts():
            with warnings.catch_warnings():
                # librosa warns for short inputs in its lowest octaves; the output is still exact
                warnings.filterwarnings("ignore", message=r"n_fft=.* is too large for input signal")
                C = np.abs(
                    librosa.cqt(
                        y,
                        sr=p["sr"],
                        hop_length=p["hop_length"],
                        fmin=fmin,
                        n_bins=n_bins,
                        bins_per_octave=p["bins_per_octave"],
                        filter_scale=p["filter_scale"],
                    )
                )
            for c, first in slices:
                out[c] = C[first : first + p["n_bins"], :n]
        if p["log"]:
            np.log1p(out, out=out)
        return out


class CQT(HCQT):
    """Constant-Q magnitude: an HCQT with the one harmonic 1."""

    kind = "cqt"
    schema: ClassVar = {**HCQT.schema, "harmonics": Field("list", [1], item="number")}


FEATURES: dict[str, type[Feature]] = {f.kind: f for f in (Waveform, LogMel, CQT, HCQT)}
CONFIG_DIR = SHIPPED / "features"


def make_feature(
    spec: str | os.PathLike | dict[str, Any] | Feature, overrides: dict | None = None
) -> Feature:
    """Build a feature from a name (``hcqt``), a YAML path, a parameter mapping with ``kind``,
    or a feature (itself, or a copy with ``overrides``)."""
    file = None
    if isinstance(spec, Feature):
        if not overrides:
            return spec
        spec = spec.to_dict()
    if isinstance(spec, dict):
        params = dict(spec)
    else:
        s = str(spec)
        if s in FEATURES and not s.endswith((".yaml", ".yml")):
            path = CONFIG_DIR / f"{s}.yaml"
            params = load_yaml(path) if path.is_file() else {"kind": s}
            file = path if path.is_file() else None
        else:
            file = Path(s)
            params = load_yaml(file)
            if not isinstance(params, dict):
                raise ConfigError(file, None, "a feature file must be a mapping of parameters")
            params = params.get("feature", params) if set(params) == {"feature"} else params
    params.update(overrides or {})
    kind = params.get("kind")
    if kind not in FEATURES:
        from .config import close_names

        raise ConfigError(
            file, "kind", f"unknown feature {kind!r}; {close_names(str(kind), list(FEATURES))}"
        )
    return FEATURES[kind](params, file)


def _yaml_value(v: Any) -> str:
    """A value as ``--set`` reads it back (YAML in flow style, one line)."""
    import yaml

    text = yaml.safe_dump(v, default_flow_style=True, width=10**6).strip()
    return text[: -len("\n...")] if text.endswith("\n...") else text


def feature_args(
    feature: Feature | dict[str, Any], base: str | os.PathLike | None = None
) -> list[str]:
    """``--feature BASE [--set KEY=VALUE ...]``: the ``precompute run`` arguments that make
    ``feature``'s values, as overrides of ``base`` (a shipped name or a YAML file; default the
    feature's kind)."""
    f = feature if isinstance(feature, Feature) else make_feature(feature)
    base = base or f.kind
    shipped = make_feature(base).value_params()
    args = ["--feature", str(base)]
    for k, v in sorted(f.value_params().items()):
        if k != "kind" and shipped.get(k) != v:
            args += ["--set", f"{k}={_yaml_value(v)}"]
    return args
