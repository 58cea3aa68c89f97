"""Work identification at scale: a classification head over the training works beside the
triplet loss (BNNeck), whole versions embedded in one pass, and learning curves over the
number of training works."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.config import ConfigError
from train.checkpoints import load_run
from train.data import StoreDataset
from train.evaluate import evaluate_on, file_output
from train.layers import BNNeck
from train.loop import fit
from train.model_factory import build_model
from train.tasks import task_for
from train.tasks.work import triplet_loss

from .test_trainer import TINY_EMBED, experiment

CQT = "configs/features/cqt.yaml"


def _with_head(model: dict) -> dict:
    m = copy.deepcopy(model)
    m["block_l"][-1]["sequential_l"][-1]["layer_l"].append(
        ["BNNeck", {"in_features": -1, "classes": "n_out"}]
    )
    return m


def _cover(tmp_path, demo_small, stores, model=None, **train):
    from pathlib import Path

    root = Path(__file__).parent.parent
    tmp_path.mkdir(parents=True, exist_ok=True)
    return experiment(
        tmp_path, demo_small, stores,
        target={"name": "work-id", "task": "work"}, feature=str(root / CQT),
        model=model or _with_head(TINY_EMBED),
        train={"batch_size": 8, "works_per_batch": 4, "versions_per_work": 2, "epochs": 2,
               "samples_per_epoch": 32, "classify": 1.0, "embed_whole": True, **train},
    )  # fmt: skip


def test_bnneck_gives_the_embedding_in_evaluation_and_logits_beside_it_in_training():
    head = BNNeck(16, 5)
    x = F.normalize(torch.randn(6, 16), dim=1)
    emb, logits = head(x)
    assert emb is x and logits.shape == (6, 5)
    head.eval()
    assert head(x) is x
    model = build_model(_with_head(TINY_EMBED), (1, 60, 32), n_out=7)
    assert model.output_shape == (16,)  # the embedding: what evaluation and retrieval see
    emb, logits = model(torch.rand(4, 1, 60, 32))
    assert emb.shape == (4, 16) and logits.shape == (4, 7)


def test_the_loss_is_cross_entropy_with_label_smoothing_beside_the_triplet_loss():
    from train.experiment import TrainSettings

    cfg = TrainSettings(classify=0.5, label_smoothing=0.1, triplet=2.0, mining="hard")
    from train.tasks.work import Work

    task = Work(cfg)
    torch.manual_seed(0)
    emb, logits = F.normalize(torch.randn(8, 16), dim=1), torch.randn(8, 5)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    want = 0.5 * F.cross_entropy(logits, y, label_smoothing=0.1) + 2.0 * triplet_loss(
        emb, y, margin=cfg.margin, mining="hard"
    )
    assert torch.allclose(task.loss((emb, logits), y), want)
    # evaluation (no head in eval mode): the triplet loss of the embedding
    assert torch.allclose(task.loss(emb, y), triplet_loss(emb, y, margin=cfg.margin, mining="hard"))


def test_a_head_and_its_setting_go_together(tmp_path, demo_small, tiny_stores):
    with pytest.raises(ConfigError, match=r"train\.classify.*needs a model whose last layer"):
        fit(_cover(tmp_path / "a", demo_small, tiny_stores, model=TINY_EMBED), tmp_path / "ra",
            progress=False, log=lambda m: None)  # fmt: skip
    with pytest.raises(ConfigError, match=r"train\.classify.*is 0, but the model ends in a BNNeck"):
        fit(_cover(tmp_path / "b", demo_small, tiny_stores, classify=0.0), tmp_path / "rb",
            progress=False, log=lambda m: None)  # fmt: skip


@pytest.mark.slow
def test_a_run_with_a_head_ranks_whole_versions_by_their_embedding(
    tmp_path, demo_small, tiny_stores, monkeypatch
):
    cfg = _cover(tmp_path, demo_small, tiny_stores)
    cfg = cfg.replace(dataset={"train_works": 2})  # a point of a learning curve
    run = fit(cfg, tmp_path / "runs", progress=False, log=lambda m: None)
    model, ck = load_run(run.folder, "best")
    assert ck["n_out"] == len(StoreDataset.from_experiment(cfg, split="train").spec.vocabulary)
    assert not model.training
    ds = StoreDataset.from_experiment(cfg, split="test")
    task = task_for("work", ds.spec, cfg.train)
    (block,) = ds.file_frames("features", ds.files[:1])
    # the whole version in one pass, longer than a patch: the model's own embedding of it
    assert block.shape[0] > ds.feature.patch_frames
    whole = torch.from_numpy(ds.feature.patch_input(block))[None].float()
    with torch.no_grad():
        want = F.normalize(model(whole)[0], dim=0).numpy()
    got = file_output(model, block, ds.feature, task, torch.device("cpu"))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert 0 < run.metrics["MAP"] <= 1
    # every file of another dataset, whatever the run's training split was cut to: no cut
    # there (another dataset's training split may hold fewer works than the cut)
    seen = []
    real = StoreDataset.from_experiment.__func__

    def spy(cls, cfg, split="test", **kw):
        seen.append((split, cfg.dataset.train_works))
        return real(cls, cfg, split, **kw)

    monkeypatch.setattr(StoreDataset, "from_experiment", classmethod(spy))
    on = evaluate_on(run.folder, demo_small, torch.device("cpu"))
    assert on["files"] == 24 and 0 < on["MAP"] <= 1
    assert (None, None) in seen  # the other dataset, every file, not cut


def test_train_works_cuts_the_training_split_and_keeps_valid_and_test(demo_small, tiny_stores):
    from train.data import DatasetError, DataSettings

    store = next(tiny_stores.rglob("cqt-*.h5"))

    def splits(n):
        s = DataSettings(target="work-id", split_fractions=(0.5, 0.25, 0.25), train_works=n)
        ds = StoreDataset(store, None, settings=s)
        works = ds.file_targets["work-id"]
        return {k: set(works[ds.file_split == k].tolist()) for k in (0, 1, 2)}

    full, one, two = splits(None), splits(1), splits(2)
    assert len(full[0]) > 2 and len(one[0]) == 1 and len(two[0]) == 2
    assert one[0] < two[0] < full[0]  # each cut holds the smaller ones
    assert one[1] == two[1] == full[1] and one[2] == two[2] == full[2]
    with pytest.raises(DatasetError, match=r"train_works must be 1 to \d+"):
        splits(10_000)
    with pytest.raises(DatasetError, match=r"train_works cuts only splits made by hash or by"):
        StoreDataset(store, None, settings=DataSettings(target="work-id", split_key="genre",
                                                        train_works=1))  # fmt: skip
