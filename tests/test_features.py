"""Features equal librosa called directly with the same parameters; audio decoding is forgiving of format."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import soundfile as sf

from common.audio import AudioError, load_audio
from common.config import ConfigError
from common.features import make_feature

from .conftest import SR, tone


@pytest.fixture(scope="module")
def y():
    rng = np.random.default_rng(0)
    return (tone(57, 1.5) + 0.01 * rng.standard_normal(int(1.5 * SR))).astype(np.float32)


def test_lms_equals_librosa(y):
    f = make_feature("lms")
    X = f.compute(y)
    ref = np.log1p(
        10000
        * librosa.feature.melspectrogram(
            y=y, sr=22050, n_fft=2048, win_length=2048, hop_length=1024, n_mels=128
        )
    )
    assert X.shape == (1, 128, 1 + len(y) // 1024) and X.dtype == np.float32
    np.testing.assert_allclose(X[0], ref, rtol=1e-5, atol=1e-5)


def test_hcqt_equals_librosa(y):
    f = make_feature("hcqt")
    X = f.compute(y)
    assert X.shape == (6, 360, 1 + len(y) // 512) and X.dtype == np.float32
    for c, h in enumerate([0.5, 1, 2, 3, 4, 5]):
        ref = np.abs(
            librosa.cqt(
                y,
                sr=22050,
                hop_length=512,
                fmin=32.70319566257483 * h,
                n_bins=360,
                bins_per_octave=60,
            )
        )
        np.testing.assert_allclose(X[c], ref, rtol=1e-5, atol=1e-6)


def test_cqt_is_hcqt_harmonic_one_and_params_change_from_yaml(tmp_path, y):
    cqt = make_feature("cqt").compute(y)
    np.testing.assert_array_equal(cqt[0], make_feature("hcqt").compute(y)[1])
    p = tmp_path / "small.yaml"
    p.write_text(
        "kind: hcqt\nharmonics: [1, 2]\nn_bins: 84\nbins_per_octave: 12\nhop_length: 256\n"
    )
    f = make_feature(p)
    X = f.compute(y)
    assert X.shape == (2, 84, 1 + len(y) // 256)
    ref = np.abs(
        librosa.cqt(
            y, sr=22050, hop_length=256, fmin=32.70319566257483 * 2, n_bins=84, bins_per_octave=12
        )
    )
    np.testing.assert_allclose(X[1], ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(f.pitch_midi()[:3], [24, 25, 26])


def test_waveform_frames_are_the_signal(y):
    f = make_feature("waveform")
    X = f.compute(y)
    assert X.shape == (1, 512, -(-len(y) // 512))
    flat = f.patch_view(X.transpose(2, 0, 1))
    np.testing.assert_array_equal(flat[0, : len(y)], y)
    assert not flat[0, len(y) :].any()


@pytest.mark.parametrize(
    "text,message",
    [
        ("kind: hcqt\nn_bins: 420\n", "n_bins: the highest bin of harmonic 5 is"),
        ("kind: lms\nhop_lenght: 512\n", "hop_lenght: unknown key; did you mean 'hop_length'?"),
        ("kind: lms\nhop_length: -1\n", "hop_length: must be > 0, got -1"),
        ("kind: melspec\n", "kind: unknown feature 'melspec'"),
        ("kind: hcqt\nhop_length: 500\n", "hop_length: must be a multiple of 32 for 6 octaves"),
    ],
)
def test_bad_feature_yaml_names_the_key(tmp_path, text, message):
    p = tmp_path / "f.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        make_feature(p)
    assert str(err.value).startswith(str(p))


def test_stereo_and_other_rates_are_folded_and_resampled(tmp_path):
    left, right = tone(60, 1.0, sr=44100), tone(64, 1.0, sr=44100)
    sf.write(tmp_path / "st.flac", np.stack([left, right], 1), 44100)
    a = load_audio(tmp_path / "st.flac", sr=22050)
    assert a.orig_sr == 44100 and a.orig_channels == 2 and a.sr == 22050
    assert abs(len(a.y) - 22050) <= 1 and a.y.dtype == np.float32
    ref = librosa.resample((left + right) / 2, orig_sr=44100, target_sr=22050, res_type="soxr_hq")
    np.testing.assert_allclose(a.y, ref, atol=1e-4)  # FLAC stores 16-bit samples


@pytest.mark.parametrize(
    "make,reason",
    [
        (lambda p: None, "file not found"),
        (lambda p: p.write_bytes(b""), "empty file (0 bytes)"),
        (lambda p: p.write_bytes(np.random.default_rng(1).bytes(5000)), "cannot decode"),
        (lambda p: sf.write(p, np.zeros(0, dtype=np.float32), SR), "has a header but no samples"),
        (
            lambda p: sf.write(
                p, np.array([0.1, np.nan, 0.2] * 100, dtype=np.float32), SR, subtype="FLOAT"
            ),
            "NaN or Inf",
        ),
    ],
)
def test_bad_audio_is_named_with_reason(tmp_path, make, reason):
    p = tmp_path / "bad.wav"
    make(p)
    with pytest.raises(AudioError) as err:
        load_audio(p, sr=SR)
    assert reason in str(err.value) and str(p) in str(err.value)
