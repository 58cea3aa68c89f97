"""The HCQT's octave sharing: which harmonics lie octaves apart (one CQT serves them all), and
how many times librosa halves the signal before a CQT's top octave (the bins a shared CQT must
reproduce exactly)."""

from __future__ import annotations

from typing import Any

import numpy as np


def octave_groups(
    harmonics: list[float], shared: bool = True
) -> list[tuple[float, list[tuple[int, int]]]]:
    """Harmonics an octave apart: ``[(base, [(channel, k), ...]), ...]`` with ``h = base * 2**k``.

    Grouped by their odd part: [0.5, 1, 2, 3, 4, 5] gives bases 1 (k = -1, 0, 1, 2), 3 and 5.
    A harmonic that is not an odd number times a power of two is a group of its own, as is
    every harmonic with ``shared=False``. Channels are listed highest ``k`` first.
    """
    groups: dict[float, list[tuple[int, int]]] = {}
    for c, h in enumerate(harmonics):
        base, k = float(h), 0
        if shared:
            for e in range(-12, 13):
                m = h / 2.0**e
                if abs(m - round(m)) < 1e-9 and round(m) % 2 == 1:
                    base, k = float(round(m)), e
                    break
        groups.setdefault(base, []).append((c, k))
    return [(b, sorted(m, key=lambda ck: -ck[1])) for b, m in groups.items()]


def early_downsamples(p: dict[str, Any], fmin: float, n_bins: int) -> int:
    """How many times librosa's CQT halves the signal before its top octave (librosa 0.10/0.11,
    ``constantq.__early_downsample_count``): from the top filter's cutoff and the hop."""
    import librosa

    bpo = p["bins_per_octave"]
    freqs = librosa.cqt_frequencies(n_bins, fmin=fmin, bins_per_octave=bpo)
    alpha = (2.0 ** (2 / bpo) - 1) / (2.0 ** (2 / bpo) + 1)  # an equal-tempered grid's bandwidth
    _, cutoff = librosa.filters.wavelet_lengths(
        freqs=freqs, sr=p["sr"], filter_scale=p["filter_scale"], gamma=0, alpha=alpha
    )
    by_cutoff = max(0, int(np.ceil(np.log2(p["sr"] / 2 / cutoff))) - 1) - 1
    twos = (p["hop_length"] & -p["hop_length"]).bit_length() - 1
    by_hop = max(0, twos - int(np.ceil(n_bins / bpo)) + 1)
    return max(0, min(by_cutoff, by_hop))
