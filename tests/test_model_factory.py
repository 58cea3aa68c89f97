"""The model factory: the seed's YAML verbatim, the tutorial's layers, located errors, determinism."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from train import layers as L
from train.cli import main
from train.model_factory import ModelConfigError, build_model

# Pasted verbatim from shared/seeds/000_babdea0cfb8d4a7e.txt.
SEED_YAML = """
model:
    name: AutoTagging
    block_l:
    - sequential_l:
        - layer_l:
            - [LayerNorm, {'normalized_shape': [128, 64]}]
            - [Conv2d, {'in_channels': 1, 'out_channels': 80, 'kernel_size': [128, 5], 'stride': [1,1]}]
            - [Squeeze, {'dim': 2}]
        - layer_l:
            - [LayerNorm, {'normalized_shape': -1}]
            - [Activation, LeakyReLU]
            - [Dropout, {'p': 0}]
        - layer_l:
            - [Conv1d, {'in_channels': -1, 'out_channels': 60, 'kernel_size': 5, 'stride': 1}]
            - [MaxPool1d, {'kernel_size': 3, 'stride': 3}]
            - [LayerNorm, {'normalized_shape': -1}]
            - [Activation, LeakyReLU]
            - [Dropout, {'p': 0}]
        - layer_l:
            - ['Permute', {'shape': [0, 2, 1]}]
    - sequential_l:
        - layer_l:
            - [LayerNorm, {'normalized_shape': -1}]
            - [Linear, {'in_features': -1, 'out_features': 128}]
            - [BatchNorm1dT, {'num_features': -1}]
            - [Activation, LeakyReLU]
            - [Dropout, {'p': 0}]
        - layer_l:
            - [Linear, {'in_features': -1, 'out_features': 128}]
            - [BatchNorm1dT, {'num_features': -1}]
            - [Activation, LeakyReLU]
            - [Dropout, {'p': 0}]
        - layer_l:
            - ['Permute', {'shape':[0, 2, 1]}]
        - layer_l:
            - [Mean, {'dim': 2}]
    - sequential_l:
        - layer_l:
            - [Linear, {'in_features': -1, 'out_features': 50}]
            - [Activation, Softmax]
"""

MODELS = Path(__file__).resolve().parent.parent / "configs" / "models"


def test_seed_yaml_builds_and_outputs_50():
    model = build_model(yaml.safe_load(SEED_YAML)["model"], (1, 128, 64))
    out = model(torch.randn(4, 1, 128, 64))
    assert out.shape == (4, 50)
    torch.testing.assert_close(out.sum(1), torch.ones(4))  # the softmax
    # -1 took what the previous layer gives: Conv1d sees the 80 maps, BatchNorm1dT the 128 features
    conv1d = model.block_l[0][2][0]
    assert conv1d.in_channels == 80
    assert model.block_l[1][0][2].num_features == 128
    assert list(model.block_l[0][1][0].normalized_shape) == [80, 60]


def test_seed_file_in_configs_is_the_seed():
    assert yaml.safe_load((MODELS / "autotagging.yaml").read_text()) == yaml.safe_load(SEED_YAML)


@pytest.mark.parametrize(
    "name,shape,n_out,out_shape",
    [
        ("autotagging", (1, 128, 64), None, (50,)),
        ("lms_classifier", (1, 128, 64), 4, (4,)),
        ("pitch_salience", (6, 360, 64), None, (360, 64)),
        ("pitch_unet", (6, 360, 64), None, (360, 64)),
        ("cover_embedding", (1, 360, 64), None, (128,)),
    ],
)
def test_model_configs_run_forward_and_backward(name, shape, n_out, out_shape):
    torch.manual_seed(0)
    model = build_model(MODELS / f"{name}.yaml", shape, n_out=n_out)
    x = torch.randn(3, *shape)
    y = model(x)
    assert y.shape == (3, *out_shape)
    y.pow(2).mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    if name == "cover_embedding":
        torch.testing.assert_close(y.norm(dim=1), torch.ones(3))


def test_same_yaml_and_seed_give_identical_parameters_and_state_dict_roundtrips():
    cfg = yaml.safe_load(SEED_YAML)["model"]
    torch.manual_seed(3)
    a = build_model(cfg, (1, 128, 64))
    torch.manual_seed(3)
    b = build_model(cfg, (1, 128, 64))
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and torch.equal(pa, pb)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(4)
    c = build_model(cfg, (1, 128, 64))
    c.load_state_dict(torch.load(buf, weights_only=True))
    x = torch.randn(2, 1, 128, 64)
    a.eval(), c.eval()
    torch.testing.assert_close(a(x), c(x))


def _with_layer(entry, first=("Conv2d", {"in_channels": 1, "out_channels": 4, "kernel_size": 3})):
    return {"name": "m", "block_l": [{"sequential_l": [{"layer_l": [list(first), entry]}]}]}


@pytest.mark.parametrize(
    "entry,message",
    [
        (
            ["Conv2D", {"in_channels": -1, "out_channels": 2, "kernel_size": 1}],
            r"model: block_l\[0\].sequential_l\[0\].layer_l\[1\]: unknown layer 'Conv2D'; did you mean 'Conv2d'",
        ),
        (
            ["Linear", {"in_features": 10, "out_features": 2}],
            r"layer_l\[1\]: Linear does not fit its input of shape \(4, 6, 6\) \(batch left out\)",
        ),
        (
            ["Conv2d", {"in_channels": -1, "out_channel": 2, "kernel_size": 1}],
            r"layer_l\[1\]: Conv2d: unknown argument 'out_channel'; did you mean 'out_channels'",
        ),
        (["Activation", "Relu"], r"layer_l\[1\]: unknown activation 'Relu'; did you mean 'ReLU'"),
        (
            ["Squeeze", {"dim": 1}],
            r"layer_l\[1\]: Squeeze does not fit .*dimension has size 4, not 1",
        ),
        (
            ["CatWith", {"name": "skip"}],
            r"layer_l\[1\]: CatWith does not fit .*nothing stored as 'skip'",
        ),
        ("just a string with spaces", r"unknown layer 'just a string with spaces'"),
        (["Linear", 5], r"layer_l\[1\]: Linear: arguments must be a mapping, got 5"),
    ],
)
def test_errors_name_the_yaml_path_and_reason(entry, message):
    with pytest.raises(ModelConfigError, match=message):
        build_model(_with_layer(entry), (1, 8, 8))


def test_n_out_needs_a_size():
    with pytest.raises(ModelConfigError, match="n_out asked for, but no output size is known"):
        build_model(
            _with_layer(["Conv2d", {"in_channels": -1, "out_channels": "n_out", "kernel_size": 1}]),
            (1, 8, 8),
        )
    m = build_model(_with_layer(["Flatten", {}]), (1, 8, 8))
    assert m(torch.zeros(2, 1, 8, 8)).shape == (2, 144)


def test_custom_layers_against_hand_computation():
    x = torch.arange(24.0).reshape(2, 3, 4)
    torch.testing.assert_close(L.Mean(2)(x), x.sum(2) / 4)
    torch.testing.assert_close(L.Max(1)(x), x[:, 2, :])
    assert (
        L.Permute([0, 2, 1])(x).shape == (2, 4, 3)
        and L.Permute([0, 2, 1])(x)[1, 3, 2] == x[1, 2, 3]
    )
    assert (
        L.UnSqueeze(1)(x).shape == (2, 1, 3, 4) and L.Squeeze(1)(L.UnSqueeze(1)(x)).shape == x.shape
    )
    torch.testing.assert_close(L.AbsLayer()(-x), x)
    # BatchNorm1dT normalises each feature (last axis) over batch and time
    bn = L.BatchNorm1dT(4).train()
    y = bn(x)
    ref = (x - x.mean((0, 1))) / torch.sqrt(x.var((0, 1), unbiased=False) + 1e-5)
    torch.testing.assert_close(y, ref)
    # auto-pool: alpha 0 is the mean over time, large alpha the max
    ap = L.AutoPoolWeight(3)
    torch.testing.assert_close(ap(x), x.mean(2))
    with torch.no_grad():
        ap.alpha.fill_(50.0)
    torch.testing.assert_close(ap(x), x.amax(2), atol=1e-3, rtol=0)
    # softmax weighting with a zero scorer is the mean
    sw = L.SoftmaxWeight(3)
    with torch.no_grad():
        sw.score.weight.zero_(), sw.score.bias.zero_()
    torch.testing.assert_close(sw(x), x.mean(2))
    # LSTMlast is the last step of LSTMall
    torch.manual_seed(0)
    la = L.LSTMall(4, 5)
    ll = L.LSTMlast(4, 5)
    ll.load_state_dict(la.state_dict())
    torch.testing.assert_close(ll(x), la(x)[:, -1])
    # StoreAs / CatWith concatenate a stored tensor along channels
    buf = L.SkipBuffer()
    s, c = L.StoreAs("a", buf), L.CatWith("a", buf, dim=1)
    torch.testing.assert_close(c(s(x) * 2), torch.cat([x * 2, x], 1))
    # residual block with zeroed convolutions passes relu(input) through (same channels)
    res = L.Conv2dRes(3, 3).eval()
    with torch.no_grad():
        for p in (res.conv1.weight, res.conv2.weight):
            p.zero_()
    z = torch.randn(1, 3, 5, 5)
    torch.testing.assert_close(res(z), torch.relu(z))
    # depthwise-separable, by hand: each channel convolved with its own 3x3 kernel ('same'
    # zero padding), then output o = bias_o + sum_c w[o, c] * depthwise_c
    ds = L.Conv2dDS(3, 2, 3)
    assert ds.depthwise.weight.shape == (3, 1, 3, 3) and ds.pointwise.weight.shape == (2, 3, 1, 1)
    zp = torch.nn.functional.pad(z, (1, 1, 1, 1))
    dw = torch.zeros(1, 3, 5, 5)
    for c in range(3):
        for i in range(5):
            for j in range(5):
                patch = zp[0, c, i : i + 3, j : j + 3]
                dw[0, c, i, j] = (patch * ds.depthwise.weight[c, 0]).sum() + ds.depthwise.bias[c]
    w, b = ds.pointwise.weight[:, :, 0, 0], ds.pointwise.bias
    by_hand = torch.einsum("oc,bcij->boij", w, dw) + b[None, :, None, None]
    torch.testing.assert_close(ds(z), by_hand.detach(), rtol=1e-5, atol=1e-5)
    nxt = L.Conv2dNext(3)
    with torch.no_grad():
        nxt.pw2.weight.zero_(), nxt.pw2.bias.zero_()
    torch.testing.assert_close(nxt(z), z)


def test_summary_cli(tmp_path):
    p = tmp_path / "seed.yaml"
    p.write_text(SEED_YAML)
    res = CliRunner().invoke(main, ["summary", str(p), "--input-shape", "1,128,64"])
    assert res.exit_code == 0, res.output
    assert "b0/0/1" in res.output and "(80, 1, 60)" in res.output and "(50,)" in res.output
    total = sum(
        p.numel() for p in build_model(yaml.safe_load(SEED_YAML), (1, 128, 64)).parameters()
    )
    assert f"total parameters: {total:,}" in res.output
    bad = CliRunner().invoke(main, ["summary", str(p), "--input-shape", "1,64,64"])
    assert (
        bad.exit_code == 2 and "LayerNorm does not fit its input of shape (1, 64, 64)" in bad.output
    )
