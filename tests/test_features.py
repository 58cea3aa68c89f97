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


def _per_harmonic(y, harmonics, sr=22050, hop=512, n_bins=360, bpo=60):
    return np.stack(
        [
            np.abs(
                librosa.cqt(
                    y,
                    sr=sr,
                    hop_length=hop,
                    fmin=32.70319566257483 * h,
                    n_bins=n_bins,
                    bins_per_octave=bpo,
                )
            )
            for h in harmonics
        ]
    )


def _signals(demo_clip):
    sr = 22050
    t = np.arange(3 * sr) / sr
    chirp = np.sin(2 * np.pi * 40 * (2 ** (t * 7 / 3) - 1) / (7 / 3 * np.log(2)))
    noise = np.random.default_rng(1).standard_normal(3 * sr)
    return {"chirp": chirp, "noise": noise, "demo clip": demo_clip}


@pytest.fixture(scope="module")
def demo_clip(demo_small):
    from common.pyjama import read_pyjama

    return load_audio(read_pyjama(demo_small).entries[0].audio_path, sr=22050).y


def test_hcqt_equals_per_harmonic_librosa_exactly_without_sharing(y, demo_clip):
    f = make_feature("hcqt", {"shared_octaves": False})
    for name, sig in {"tone": y, **_signals(demo_clip)}.items():
        sig = sig.astype(np.float32)
        X = f.compute(sig)
        assert X.shape == (6, 360, 1 + len(sig) // 512) and X.dtype == np.float32
        np.testing.assert_array_equal(X, _per_harmonic(sig, [0.5, 1, 2, 3, 4, 5]), err_msg=name)


def test_shared_octaves_stay_within_one_percent_of_the_peak(y, demo_clip):
    f = make_feature("hcqt")
    # 0.5, 1 and 2 share one CQT; 4 would move their octaves nearer to Nyquist, so it has its own
    assert f.params["shared_octaves"]
    assert sorted(sorted(c for c, _ in slices) for *_, slices in f._cqts()) == [
        [0, 1, 2],
        [3],
        [4],
        [5],
    ]
    for name, sig in {"tone": y, **_signals(demo_clip)}.items():
        sig = sig.astype(np.float32)
        X, ref = f.compute(sig), _per_harmonic(sig, [0.5, 1, 2, 3, 4, 5])
        dev = np.abs(X - ref).max() / ref.max()
        assert dev <= 0.01, (name, dev)
        # the top harmonic of a shared CQT, and those with a CQT of their own: identical
        np.testing.assert_array_equal(X[2:], ref[2:])


def test_each_harmonic_is_the_right_slice_of_its_octave_group():
    # a sine at C4 lands, in channel h, at bin 60 * log2(C4 / (C1 * h))
    sr, f0 = 22050, 32.70319566257483 * 8
    sig = np.sin(2 * np.pi * f0 * np.arange(2 * sr) / sr).astype(np.float32)
    X = make_feature("hcqt").compute(sig)
    mid = X[:, :, X.shape[2] // 2]
    for c, h in enumerate([0.5, 1, 2, 3, 4, 5]):
        assert int(mid[c].argmax()) == round(60 * np.log2(8 / h)), h
    # any harmonic set: [1, 2, 3, 4, 5, 6, 8] needs 3 CQTs, not 7
    g = make_feature("hcqt", {"harmonics": [1, 2, 3, 4, 5, 6, 8], "n_bins": 240})
    assert [(fmin / 32.70319566257483, n) for fmin, n, *_ in g._cqts()] == [
        (1.0, 240 + 3 * 60),
        (3.0, 240 + 60),
        (5.0, 240),
    ]
    X = g.compute(sig)
    for c, h in enumerate([1, 2, 3, 4, 5, 6, 8]):
        assert int(X[c, :, X.shape[2] // 2].argmax()) == round(60 * np.log2(8 / h)), h


def test_waveform_frames_are_the_signal(y):
    f = make_feature("waveform")
    X = f.compute(y)
    assert X.shape == (1, 512, -(-len(y) // 512))
    flat = f.patch_input(X.transpose(2, 0, 1))
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


def encode_with_pyav(path, y, sr, codec, rate=None):
    """Encode mono ``y`` to ``path`` with FFmpeg's encoders, as a user's files were made."""
    av = pytest.importorskip("av")
    rate = rate or sr
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(y[None].astype(np.float32), format="flt", layout="mono")
        frame.sample_rate, frame.pts = sr, 0
        ctx = stream.codec_context
        resampler = av.AudioResampler(
            format=ctx.format.name, layout="mono", rate=rate, frame_size=ctx.frame_size or None
        )
        for f in resampler.resample(frame) + resampler.resample(None):
            out.mux(stream.encode(f))
        out.mux(stream.encode(None))


@pytest.mark.parametrize(
    "name,codec,rate",
    [
        ("clip.m4a", "aac", None),  # FFmpeg (PyAV) path
        ("clip.mp3", "libmp3lame", None),  # libsndfile
        ("clip.opus", "libopus", 48000),  # libsndfile (Ogg Opus)
        ("clip.flac", "flac", None),
    ],
)
def test_compressed_formats_decode_to_the_wav_features(tmp_path, name, codec, rate):
    from common.audio import probe_audio

    rng = np.random.default_rng(3)
    y = np.zeros(3 * SR, np.float32)
    y[SR:] = tone(57, 2.0) + 0.5 * tone(64, 2.0)  # an onset at 1 s: alignment is checked
    y += 0.003 * rng.standard_normal(len(y)).astype(np.float32)
    sf.write(tmp_path / "clip.wav", y, SR)
    encode_with_pyav(tmp_path / name, y, SR, codec, rate)

    a = load_audio(tmp_path / name, sr=SR)
    assert abs(len(a.y) - len(y)) <= 0.01 * SR  # no encoder padding or priming left over
    assert probe_audio(tmp_path / name).n_samples(SR) == len(a.y)  # the plan's layout holds
    feat = make_feature({"kind": "cqt", "sr": SR})
    ref = feat.compute(y)[0]
    got = feat.compute(a.y)[0]
    n = min(ref.shape[-1], got.shape[-1])
    diff = np.abs(got[:, :n] - ref[:, :n]) / ref.max()
    assert diff.mean() < 0.005 and np.percentile(diff, 99) < 0.05, (diff.mean(), diff.max())
    onset = [int(np.argmax(x.sum(0) > 0.5 * x.sum(0).max())) for x in (ref, got)]
    assert onset[0] == onset[1]  # the same frame: targets stay aligned


def test_a_corrupt_m4a_is_named_with_reason(tmp_path):
    p = tmp_path / "bad.m4a"
    p.write_bytes(np.random.default_rng(1).bytes(5000))
    with pytest.raises(AudioError) as err:
        load_audio(p, sr=SR)
    assert "cannot decode" in str(err.value) and str(p) in str(err.value)
