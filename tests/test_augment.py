"""Augmentation: what each does to features and targets, on the device, in training only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from common.config import ConfigError
from common.features import make_feature
from common.targets import TargetSpec
from train import augment as A
from train.checkpoints import load_checkpoint
from train.experiment import TrainSettings
from train.tasks import task_for

from .conftest import tone
from .test_trainer import TINY_PITCH, experiment

HCQT = make_feature("hcqt")
PITCH = TargetSpec("pitchmidi", "frame_pitch", pitch_midi=HCQT.pitch_midi().tolist(), unit="midi")
TRAIN = TrainSettings(margin=0.3, mining="hard")


def test_pitch_shift_moves_a_note_and_its_target_by_the_same_bins_in_every_channel():
    y = tone(60, 1.0, n_harm=1)  # a sine at C4
    X = torch.from_numpy(HCQT.compute(y))[None, :, :, 10:42]  # (1, 6, 360, 32)
    target = torch.zeros(1, 360, 32, dtype=torch.uint8)
    target[0, (60 - 24) * 5] = 1
    task = task_for("multipitch", PITCH, TRAIN)
    aug = A.make_augmentations([{"name": "pitch_shift", "bins": [7, 7]}], HCQT, task)[0]
    Xs, ts = aug(X, target, np.random.default_rng(0))
    for c in range(6):
        before = X[0, c].mean(1).argmax()
        assert Xs[0, c].mean(1).argmax() == before + 7, c
    assert ts[0].nonzero()[:, 0].unique().tolist() == [(60 - 24) * 5 + 7]
    assert ts.dtype == target.dtype
    # downwards, and the vacated edge holds the feature's floor, not wrapped values
    down = A.shift_bins(X, torch.tensor([-5]), dim=2, fill=HCQT.floor)
    assert torch.equal(down[0, :, :-5], X[0, :, 5:]) and (down[0, :, -5:] == HCQT.floor).all()
    up = A.shift_bins(X, torch.tensor([3]), dim=2, fill=HCQT.floor)
    assert torch.equal(up[0, :, 3:], X[0, :, :-3]) and (up[0, :, :3] == 0).all()
    # labels of other tasks stay as they are
    cls = task_for("multiclass", TargetSpec("genre", "class", ["a", "b"]), TRAIN)
    shift = A.make_augmentations([{"name": "pitch_shift", "bins": [-3, 3]}], HCQT, cls)[0]
    labels = torch.tensor([1])
    assert torch.equal(shift(X, labels, np.random.default_rng(0))[1], labels)


def test_masks_gain_and_mixup():
    rng = np.random.default_rng(0)
    X = torch.rand(4, 1, 40, 20) + 0.5
    task = task_for("multilabel", TargetSpec("tag", "multilabel", ["a", "b", "c"]), TRAIN)
    lms = make_feature("lms")
    tm = A.make_augmentations([{"name": "time_mask", "max_frames": 5, "count": 2}], lms, task)[0]
    Xm, _ = tm(X, None, rng)
    masked = (Xm == 0).all(dim=(1, 2))  # whole frames at the floor
    assert masked.any() and (masked.sum(1) <= 10).all()
    fm = A.make_augmentations([{"name": "freq_mask", "max_bins": 6}], lms, task)[0]
    assert ((fm(X, None, rng)[0] == 0).all(dim=(1, 3)).sum(1) <= 6).all()
    # gain: a constant added to log-power features, a factor on magnitudes
    g = A.make_augmentations([{"name": "gain", "db": [6, 6]}], lms, task)[0]
    np.testing.assert_allclose((g(X, None, rng)[0] - X).numpy(), 2 * 6 * np.log(10) / 20, rtol=1e-5)
    gh = A.make_augmentations([{"name": "gain", "db": [-20, -20]}], HCQT, task)[0]
    np.testing.assert_allclose((gh(X, None, rng)[0] / X).numpy(), 0.1, rtol=1e-5)
    # mixup: soft targets mixed as the features are
    mix = A.make_augmentations([{"name": "mixup", "alpha": 0.4}], lms, task)[0]
    y = torch.eye(3, dtype=torch.uint8)[[0, 1, 2, 0]]
    Xx, yy = mix(X, y, np.random.default_rng(3))
    assert yy.dtype == torch.float32 and torch.allclose(yy.sum(1), torch.ones(4))


def test_bad_augmentations_name_the_yaml_key():
    task = task_for("multiclass", TargetSpec("genre", "class", ["a"]), TRAIN)
    lms = make_feature("lms")
    with pytest.raises(
        ConfigError, match=r"train.augment\[0\].name: unknown augmentation 'pitchshift'"
    ):
        A.make_augmentations([{"name": "pitchshift"}], lms, task)
    with pytest.raises(
        ConfigError, match=r"train.augment\[0\].name: needs a feature with a pitch axis"
    ):
        A.make_augmentations([{"name": "pitch_shift", "bins": [-2, 2]}], lms, task)
    with pytest.raises(ConfigError, match=r"train.augment\[1\].name: mixup is for multilabel"):
        A.make_augmentations([{"name": "time_mask", "max_frames": 3}, {"name": "mixup"}], lms, task)
    with pytest.raises(ConfigError, match=r"train.augment\[0\].bin: unknown key"):
        A.make_augmentations([{"name": "pitch_shift", "bin": [1, 2]}], HCQT, task)


CQT = str(Path(__file__).parent.parent / "configs/features/cqt.yaml")


@pytest.mark.slow
def test_augmentation_trains_only_and_a_resumed_run_ends_on_the_same_weights(
    tmp_path, demo_small, tiny_stores, monkeypatch
):
    import train.loop as loop
    import train.step as step
    from common.pyjama import read_pyjama
    from train.evaluate import evaluate_run
    from train.predict import predict_audio

    augment = [{"name": "pitch_shift", "bins": [-5, 5]}, {"name": "time_mask", "max_frames": 6}]
    cfg = experiment(
        tmp_path,
        demo_small,
        tiny_stores,
        target={"name": "pitchmidi"},
        feature=CQT,
        model=TINY_PITCH,
        patch={"frames": 32, "hop": 16},
        train={"epochs": 2, "samples_per_epoch": 96, "lr": 0.01, "augment": augment},
    )
    calls = []
    real = step.augment  # the one training step's, shared by the trainer and Lightning
    monkeypatch.setattr(step, "augment", lambda *a: (calls.append(1), real(*a))[1])
    quiet = {"progress": False, "log": lambda m: None}
    straight = loop.fit(cfg, tmp_path / "a", **quiet)
    trained = len(calls)
    assert trained > 0
    cpu = torch.device("cpu")
    evaluate_run(straight.folder, split="valid", device=cpu)
    predict_audio(straight.folder, [read_pyjama(demo_small).entries[0].audio_path], device=cpu)
    assert len(calls) == trained  # evaluation and prediction never augment
    part = loop.fit(cfg, tmp_path / "b", stop_after_epochs=1, **quiet)
    resumed = loop.fit(cfg, tmp_path / "b", resume=part.folder, **quiet)
    a, b = (load_checkpoint(r.folder / "last.pt") for r in (straight, resumed))
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_time_stretch_plays_a_patch_faster_or_slower_and_keeps_its_shape():
    cqt = make_feature("cqt")
    work = task_for("work", TargetSpec("work-id", "work", ["a", "b"]), TRAIN)
    X = torch.zeros(2, 1, 8, 100)
    X[:, :, 3] = 1 + torch.sin(2 * torch.pi * torch.arange(100) / 10)  # a period of 10 frames

    def period(x: torch.Tensor) -> float:
        spectrum = torch.fft.rfft(x - x.mean()).abs()
        return len(x) / int(spectrum.argmax())

    fast = A.make_augmentations([{"name": "time_stretch", "rate": [2.0, 2.0]}], cqt, work)[0]
    Xf, y = fast(X, torch.tensor([0, 1]), np.random.default_rng(0))
    assert Xf.shape == X.shape and y.tolist() == [0, 1]
    assert period(Xf[0, 0, 3, :50]) == pytest.approx(5, abs=0.3)  # twice as fast
    assert (Xf[:, :, :, 50:] == cqt.floor).all()  # past the end of the sped-up patch: floor
    slow = A.make_augmentations([{"name": "time_stretch", "rate": [0.5, 0.5]}], cqt, work)[0]
    Xs, _ = slow(X, None, np.random.default_rng(0))
    assert period(Xs[0, 0, 3]) == pytest.approx(20, abs=1)  # half as fast, a stretch of it
    with pytest.raises(ConfigError, match="frame-level"):
        A.make_augmentations([{"name": "time_stretch", "rate": [0.9, 1.1]}], HCQT,
                             task_for("multipitch", PITCH, TRAIN))  # fmt: skip


def test_cover_model_gives_one_embedding_in_every_key():
    from train.model_factory import build_model

    model = build_model(
        Path(__file__).parent.parent / "configs/models/cover_chroma.yaml", (1, 360, 64)
    )
    model.eval()
    x = torch.rand(2, 1, 360, 64)
    with torch.no_grad():
        base = model(x)
        for semitones in (1, 3, -4, 7):  # 5 bins per semitone; the octaves fold into one
            moved = model(torch.roll(x, 5 * semitones, dims=2))
            assert torch.allclose(moved, base, atol=1e-5), semitones
        tone = torch.zeros(2, 1, 360, 64)
        tone[:, :, 120] = 5.0
        other = model(tone)
    # and not one embedding for everything
    assert (other - base).norm(dim=1).min() > 100 * (moved - base).norm(dim=1).max()
