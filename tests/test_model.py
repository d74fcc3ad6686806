"""The network: its shape and counts, the two towers, the paper's dropout, LRN (and under bf16
autocast), init, torch.compile."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from torch import nn

from tests.conftest import alextrain
from trainer.model import (
    LRN_ALPHA,
    LRN_BETA,
    LRN_K,
    LRN_SIZE,
    AlexNet,
    CifarNet,
    ConstantScale,
    Float32LRN,
    ModelConfig,
    PaperDropout,
    build_model,
    lrn_bf16_agreement,
    summary,
)

AFTER_DROPOUT = ("fc7.", "fc8.")  # the layers whose input is a dropout output


def _pair(seed: int = 0) -> tuple[AlexNet, AlexNet]:
    """A paper-dropout net and an inverted-dropout net computing the same function: the
    inverted net's inputs to fc7 and fc8 are 2x in training, so their weights are halved."""
    torch.manual_seed(seed)
    paper = AlexNet(ModelConfig(dropout_mode="paper", num_classes=10))
    inverted = AlexNet(ModelConfig(dropout_mode="inverted", num_classes=10))
    state = {
        k: v * 0.5 if k.startswith(AFTER_DROPOUT) and k.endswith("weight") else v
        for k, v in paper.state_dict().items()
    }
    inverted.load_state_dict(state)
    return paper, inverted


def test_paper_dropout_keeps_units_unscaled_and_halves_at_test():
    x = torch.rand(200_000) + 0.5
    drop = PaperDropout(0.5)
    torch.manual_seed(1)
    y = drop.train()(x)
    kept = y != 0
    assert torch.equal(y[kept], x[kept])  # kept units pass unscaled
    assert abs(kept.float().mean().item() - 0.5) < 0.01
    assert torch.equal(drop.eval()(x), x * 0.5)  # test: every unit, x 0.5
    # the expected-value identity: E[train output] = test output (to sampling error)
    assert abs(y.mean().item() / (x * 0.5).mean().item() - 1) < 0.01
    # torch's inverted form scales kept units by 2 in training and passes them at test
    torch.manual_seed(1)
    z = nn.Dropout(0.5).train()(x)
    assert torch.equal(z != 0, kept)  # the same mask from the same seed (CPU)
    assert torch.allclose(z[kept], 2 * x[kept])


@pytest.mark.slow  # over ~20 s on 2 cores
def test_paper_and_inverted_dropout_same_function_different_gradient_scale():
    paper, inverted = _pair()
    x = torch.randn(2, 3, 224, 224) * 60
    y = torch.tensor([3, 7])
    with torch.no_grad():
        assert torch.allclose(paper.eval()(x), inverted.eval()(x), rtol=1e-4, atol=1e-5)
    outs, grads = [], []
    for net in (paper, inverted):
        net.train().zero_grad()
        torch.manual_seed(5)  # the same masks in both nets
        out = net(x)
        nn.functional.cross_entropy(out, y).backward()
        outs.append(out.detach())
        grads.append({k: p.grad.clone() for k, p in net.named_parameters()})
    assert torch.allclose(outs[0], outs[1], rtol=1e-4, atol=1e-5)  # the same function in training
    for k, g_paper in grads[0].items():
        g_inv = grads[1][k]
        if k.startswith(AFTER_DROPOUT) and k.endswith("weight"):
            # inputs 2x -> gradient 2x on weights half the size: a 4x relative step at one lr
            assert torch.allclose(g_inv, 2 * g_paper, rtol=1e-3, atol=1e-9), k
        else:
            assert torch.allclose(g_inv, g_paper, rtol=1e-3, atol=1e-9), k
    assert grads[0]["fc8.weight"].abs().sum() > 0


def test_a_saved_model_config_is_checked_not_read_as_the_default_net():
    from trainer.config import ConfigError

    assert ModelConfig().dropout_mode == "paper"
    assert ModelConfig.from_dict(ModelConfig(num_classes=10).to_dict()) == ModelConfig(num_classes=10)
    for key in ("arch", "num_classes"):  # damaged, not "the default 1000-class alexnet"
        with pytest.raises(ConfigError, match=f"no {key}"):
            ModelConfig.from_dict({k: v for k, v in ModelConfig().to_dict().items() if k != key})
    with pytest.raises(ConfigError, match=r"--dropout-mode \(dropout_mode\) = 'half': not one of"):
        ModelConfig.from_dict({**ModelConfig().to_dict(), "dropout_mode": "half"})
    with pytest.raises(ConfigError, match="unknown keys"):  # a 0.1 checkpoint's input_size
        ModelConfig.from_dict({**ModelConfig().to_dict(), "input_size": 224})


def test_lrn_keeps_its_adaptive_term_under_bf16_autocast():
    r = lrn_bf16_agreement("cpu")
    assert r["mean_term"] < -1e-3  # a real term to keep: ~ -0.3 % at the paper's init
    # torch's LRN in CUDA autocast's bf16 arithmetic loses it for most units (issue: ~64 %)
    assert r["torch_lrn"]["share_of_term_lost"] > 0.5
    assert r["float32_lrn"]["share_of_term_lost"] < 0.01
    assert r["float32_lrn"]["mean_rel_err_of_term"] < 0.05 < r["torch_lrn"]["mean_rel_err_of_term"]
    assert r["ok"]


def test_float32_lrn_is_torch_lrn_in_float32_and_stays_float32_under_autocast():
    x = torch.rand(2, 16, 6, 6) * 50
    params = dict(size=5, alpha=1e-4, beta=0.75, k=2.0)
    # the window sum is a band matmul, not torch's avg_pool3d: equal to float32 rounding
    assert torch.allclose(Float32LRN(**params)(x), nn.LocalResponseNorm(**params)(x), rtol=1e-6, atol=0)
    wide = torch.rand(3, 48, 5, 5) * 300  # AlexNet's tower width, louder than at init
    for size in (5, 4, 1):  # an even window is asymmetric, as torch's padding makes it
        want = nn.LocalResponseNorm(size, alpha=1e-2, beta=0.75, k=2.0)(wide)
        nhwc = wide.contiguous(memory_format=torch.channels_last)
        got = Float32LRN(size, alpha=1e-2, beta=0.75, k=2.0)(nhwc)
        assert torch.allclose(got, want, rtol=1e-5, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = Float32LRN(**params)(x.bfloat16())
        logits = build_model(ModelConfig(arch="cifar", num_classes=10, crop=32))(
            torch.randn(2, 3, 32, 32) * 60
        )
    assert out.dtype == torch.float32
    assert torch.allclose(out, nn.LocalResponseNorm(**params)(x.bfloat16().float()))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()


def _step_outputs(net: nn.Module, params: nn.Module, x: torch.Tensor, y: torch.Tensor):  # noqa: ANN202
    params.zero_grad()
    torch.manual_seed(3)
    out = net(x)
    nn.functional.cross_entropy(out.float(), y).backward()
    return out.detach(), {k: p.grad.clone() for k, p in params.named_parameters()}


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")
def test_torch_compile_of_the_two_towers_matches_eager():
    """`--compile`: the two-tower net (list-of-towers forward, paper dropout, float32 LRN)
    through inductor gives eager's outputs and gradients in a training step, with the same
    dropout masks (fallback_random: eager's RNG). One compile, ~1.5 min of CPU."""
    import torch._inductor.config as inductor

    torch.manual_seed(0)
    model = AlexNet(ModelConfig(num_classes=10)).train()
    x, y = torch.randn(2, 3, 224, 224) * 60, torch.tensor([1, 8])
    eager_out, eager_grads = _step_outputs(model, model, x, y)
    old = inductor.fallback_random
    inductor.fallback_random = True
    try:
        out, grads = _step_outputs(torch.compile(model), model, x, y)
    finally:
        inductor.fallback_random = old
    assert torch.allclose(out, eager_out, rtol=1e-3, atol=1e-4)
    for k, g in eager_grads.items():
        assert (grads[k] - g).abs().max() <= 1e-3 * g.abs().max().clamp(min=1e-12), k


def test_cifar_init_choices_set_each_layers_std():
    # cuda-convnet's layers-18pct starts conv1 at 1e-4 (0-255 input), the other layers at 0.01.
    torch.manual_seed(0)
    stds = {
        init: [
            m.weight.std().item()
            for m in CifarNet(ModelConfig(arch="cifar", crop=32, init=init)).modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))
        ]
        for init in ("paper", "cuda-convnet")
    }
    assert stds["paper"] == pytest.approx([0.01] * 4, rel=0.1)
    assert stds["cuda-convnet"] == pytest.approx([1e-4, 0.01, 0.01, 0.01], rel=0.1)
    with pytest.raises(ValueError, match="init 'he' not in"):
        CifarNet(ModelConfig(arch="cifar", crop=32, init="he"))


def test_init_is_refused_for_alexnet_and_a_changed_init_is_refused_on_resume():
    from trainer.config import ConfigError, TrainConfig, config_changes

    with pytest.raises(ConfigError, match=r"--init \(init\) = 'cuda-convnet': cuda-convnet is the cifar"):
        TrainConfig.of(init="cuda-convnet").check()
    TrainConfig.of(arch="cifar", init="cuda-convnet").check()
    now = TrainConfig.of(arch="cifar")
    assert config_changes(now.to_dict(), now) == []
    assert config_changes(now.to_dict(), now.replace(init="cuda-convnet")) == [
        "init (checkpoint 'paper', now 'cuda-convnet')"
    ]
    # a run saved before a setting existed: that setting at its default is no change, else it is
    older = now.to_dict()
    del older["run"]["precision"], older["model"]["init"]
    assert config_changes(older, now) == []
    assert config_changes(older, now.replace(precision="bf16")) == [
        "precision (checkpoint 'fp32', now 'bf16')"
    ]


def test_lrn_scale_is_lrns_constant_gain_without_its_normalisation():
    """`--lrn scale` (Figure 1's control): x * 2^-0.75 where LRN would be. LRN equals it for quiet
    units and departs from it for loud ones; a ReLU net with zero biases is positively
    homogeneous, so two scalings give its logits exactly x 2^-1.5."""
    c = LRN_K**-LRN_BETA
    lrn, scale = Float32LRN(LRN_SIZE, alpha=LRN_ALPHA, beta=LRN_BETA, k=LRN_K), ConstantScale()
    quiet, loud = torch.full((1, 8, 2, 2), 0.01), torch.full((1, 8, 2, 2), 100.0)
    assert torch.allclose(lrn(quiet), scale(quiet), rtol=1e-6) and torch.equal(scale(quiet), quiet * c)
    assert (scale(loud) / lrn(loud)).min() > 1.1  # LRN divides loud neighbourhoods by more
    torch.manual_seed(0)
    off = CifarNet(ModelConfig(arch="cifar", num_classes=10, crop=32, lrn="off"))
    torch.manual_seed(0)
    scaled = CifarNet(ModelConfig(arch="cifar", num_classes=10, crop=32, lrn="scale"))
    assert [type(m) for m in scaled.body].count(ConstantScale) == 2
    x = torch.randn(4, 3, 32, 32) * 60
    assert torch.allclose(scaled(x), off(x) * c**2, rtol=1e-4, atol=1e-7)


PAPER_NEURONS = [290_400, 186_624, 64_896, 64_896, 43_264, 4096, 4096, 1000]  # conv1: errata


@pytest.mark.parametrize("crop", [224, 227])
def test_parameter_count_on_the_meta_device(crop):
    """The paper's 60 million, counted without allocating them (shapes only)."""
    with torch.device("meta"):
        model = AlexNet(ModelConfig(crop=crop))
    assert sum(p.numel() for p in model.parameters()) == 60_965_224


@pytest.mark.slow  # over ~20 s on 2 cores
def test_parameter_and_neuron_counts():
    model = AlexNet()
    assert sum(p.numel() for p in model.parameters()) == 60_965_224
    rows = summary(model, 224)
    assert [r.neurons for r in rows] == PAPER_NEURONS
    assert [r.shape for r in rows][:2] == [(96, 55, 55), (256, 27, 27)]
    # Caffe's variant: 227 crops, unpadded conv1 -> the same counts
    caffe = AlexNet(ModelConfig(crop=227))
    assert [r.neurons for r in summary(caffe, 227)] == PAPER_NEURONS
    # the printed 253,440 is not 55x55x96, whichever variant: the paper's erratum
    assert 253_440 not in [r.neurons for r in rows]
    out = json.loads(alextrain("summary", "--json").stdout)
    assert out["total"]["params"] == 60_965_224


@pytest.mark.slow  # over ~20 s on 2 cores
def test_variants_build_and_run():
    for cfg in [
        ModelConfig(towers=1),
        ModelConfig(extra_conv=True),
        ModelConfig(pool="nonoverlap"),
        ModelConfig(activation="tanh"),
        ModelConfig(lrn="off"),
        ModelConfig(num_classes=10),
    ]:
        model = build_model(cfg).eval()
        assert model(torch.zeros(2, 3, 224, 224)).shape == (2, cfg.classes)
    one = AlexNet(ModelConfig(towers=1))
    assert [r.shape[0] for r in summary(one, 224)] == [48, 128, 192, 192, 256, 4096, 4096, 1000]
    cifar = build_model(ModelConfig(arch="cifar", num_classes=10, crop=32))
    assert cifar(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_lrn_conventions():
    x = torch.rand(1, 8, 4, 4) * 50
    a = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2)(x)
    # the printed formula: b = a / (k + alpha * sum_{n adjacent} a^2)^beta, no division by n
    sq = torch.nn.functional.pad(x.pow(2), (0, 0, 0, 0, 2, 2))
    s = sum(sq[:, i : i + 8] for i in range(5))
    printed = x / (2 + 1e-4 * s) ** 0.75
    paper = AlexNet(ModelConfig(lrn="paper")).lrn(x)
    assert torch.allclose(paper, printed, rtol=1e-5)
    assert not torch.allclose(a, printed, rtol=1e-3)  # cuda-convnet's is the weaker one


def test_init_is_the_papers():
    model = AlexNet()
    for layer in model.tower_layers():
        for conv in layer.parts:
            assert abs(conv.weight.std().item() - 0.01) < 0.001
            assert abs(conv.weight.mean().item()) < 0.001
            expected = 1.0 if layer.name in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0
            assert torch.all(conv.bias == expected), layer.name
    assert torch.all(model.fc8.bias == 0)


class TowerLRN(nn.Module):
    """LRN within each tower's half of the maps: each GPU normalised over its own kernels."""

    def __init__(self, lrn: nn.Module):
        super().__init__()
        self.lrn = lrn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.lrn(h) for h in x.chunk(2, 1)], 1)


def _grouped_reference(model: AlexNet) -> nn.Module:
    """The single-device net with grouped convs (conv2/4/5 groups=2), weights from the towers."""
    cat = lambda layer, attr: torch.cat([getattr(p, attr) for p in layer.parts], 0)  # noqa: E731
    convs = {}
    for name, groups, pad in [
        ("conv1", 1, 2),
        ("conv2", 2, 2),
        ("conv3", 1, 1),
        ("conv4", 2, 1),
        ("conv5", 2, 1),
    ]:
        layer = getattr(model, name)
        w = cat(layer, "weight")
        c = nn.Conv2d(
            w.shape[1] * groups, w.shape[0], w.shape[2], 4 if name == "conv1" else 1, pad, groups=groups
        )
        c.weight.data, c.bias.data = w.clone(), cat(layer, "bias").clone()
        convs[name] = c
    fcs = {}
    for name in ("fc6", "fc7"):
        layer = getattr(model, name)
        w = cat(layer, "weight")
        f = nn.Linear(w.shape[1], w.shape[0])
        f.weight.data, f.bias.data = w.clone(), cat(layer, "bias").clone()
        fcs[name] = f
    fc8 = nn.Linear(4096, model.cfg.num_classes)
    fc8.weight.data, fc8.bias.data = model.fc8.weight.data.clone(), model.fc8.bias.data.clone()
    pool, r = model.pool, nn.ReLU()
    lrn = TowerLRN(model.lrn)
    # grouped layers see the towers' channels in order [tower 0 | tower 1], as torch.cat makes them
    return nn.Sequential(
        convs["conv1"],
        r,
        lrn,
        pool,
        convs["conv2"],
        r,
        lrn,
        pool,
        convs["conv3"],
        r,
        convs["conv4"],
        r,
        convs["conv5"],
        r,
        pool,
        nn.Flatten(),
        fcs["fc6"],
        r,
        fcs["fc7"],
        r,
        fc8,
    )


@pytest.mark.slow  # the full-size net, forward and backward
def test_two_towers_equal_the_grouped_single_device_model():
    torch.manual_seed(0)
    model = AlexNet(ModelConfig(num_classes=20, dropout=0.0))
    for m in model.modules():  # non-trivial biases, so a wrong concatenation order would show
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.bias.data.uniform_(-0.1, 0.1)
            m.weight.data.mul_(3)
    ref = _grouped_reference(model)
    x = torch.randn(2, 3, 224, 224) * 50
    out, expected = model(x), ref(x)
    assert torch.allclose(out, expected, rtol=1e-4, atol=1e-5)
    out.square().sum().backward()
    expected.square().sum().backward()
    g_tower = torch.cat([p.weight.grad for p in model.conv4.parts], 0)
    g_ref = ref[10].weight.grad
    assert ((g_tower - g_ref).norm() / g_ref.norm()).item() < 1e-4  # float32 summation order only
    # model parallel placement (here both "devices" are the CPU: the same code path as 2 GPUs)
    placed = AlexNet(ModelConfig(num_classes=20, dropout=0.0))
    placed.load_state_dict(model.state_dict())
    placed.place([torch.device("cpu"), torch.device("cpu")])
    assert torch.equal(placed(x), model(x))
