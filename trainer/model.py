"""The paper's network (section 3): two towers, 5 conv + 3 FC, ReLU, LRN, overlapping pooling.

Every layer is written per tower, as in the paper's Figure 2: tower t holds half of each layer's
kernels. conv2, conv4 and conv5 see only their own tower's maps; conv1 sees the image, and
conv3 and the FC layers see both towers' outputs, the only places the towers exchange
activations. On one device the towers simply run side by side; with `devices=[d0, d1]` tower t
lives on d_t (`--model-parallel 2`), and the exchanges are the only copies between GPUs.
The arithmetic is the same either way, so outputs and gradients are the same.

Errata (see docs/model.md): a 224x224 input with an 11x11 stride-4 kernel does not give 55x55
maps; we pad conv1 by 2 (torchvision's choice), giving 55x55x96 = 290,400 conv1 neurons
(the paper prints 253,440). `crop=227` (conv1 unpadded) gives Caffe's variant.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from preprocess.paper import DROPOUT, INIT_STD, LRN_ALPHA, LRN_BETA, LRN_K, LRN_SIZE, ONE_BIAS
from trainer.config import ModelConfig

__all__ = ["AlexNet", "CifarNet", "ModelConfig", "build_model", "summary"]

# cuda-convnet's layers-18pct.cfg (Krizhevsky's own CIFAR-10 net, the published relative of
# Figure 1's): initW per learned layer. conv1 starts 100x smaller than the rest because its
# input is 0-255 pixels less the mean: at 0.01 its units start with a std of ~5, deep in tanh's
# flat tails. The paper gives no init for the Figure 1 net.
CIFAR_INIT_STD = {"paper": (INIT_STD,) * 4, "cuda-convnet": (1e-4, 0.01, 0.01, 0.01)}


def _act(cfg: ModelConfig) -> nn.Module:
    if cfg.activation not in ("relu", "tanh"):
        raise ValueError(f"activation {cfg.activation!r} not relu|tanh")
    return nn.ReLU(inplace=True) if cfg.activation == "relu" else nn.Tanh()


class Float32LRN(nn.LocalResponseNorm):
    """Local response normalisation computed in float32, also under bf16/fp16 autocast.

    The adaptive part of the denominator, alpha/n * sum(a^2), is ~0.005 next to k = 2 at the
    paper's init; bf16 keeps 8 bits of mantissa (steps of 1/64 near 2), so `k + ...` rounds back
    to exactly 2 for most units and LRN degenerates to a constant 2^-0.75. Here the input is
    upcast and autocast is off inside; the output stays float32 (the next conv, under autocast,
    casts it as it would any input). See `lrn_bf16_agreement`.

    The channel-window sum is one matmul with a 0/1 band matrix (`channel_window`): the same
    sum torch's LRN takes with a padded avg_pool3d, in half the time on the CPU (the CIFAR net's
    LRN layers were a fifth of its step), and channels-last friendly. Under `--precision tf32`
    that matmul may run in TF32 (10-bit mantissa): ~1e-3 relative error in the adaptive term,
    ~5e-6 of the denominator; fp32 and bf16 keep TF32 off (`distributed.set_precision`).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            window = channel_window(x.shape[1], self.size, x.device)
            total = ((x * x).movedim(1, -1) @ window).movedim(-1, 1)
            return x * (total * (self.alpha / self.size) + self.k).pow(-self.beta)


def channel_window(channels: int, size: int, device: torch.device) -> torch.Tensor:
    """W with (sq @ W)[c] = sq[c - size//2] + ... + sq[c + (size-1)//2], clipped at the ends:
    torch's (and cuda-convnet's) LRN window, whose zero padding is the clipping. Built per call
    (C x C, microseconds): a cache would make torch.compile break its graph here."""
    i = torch.arange(channels, device=device)
    offset = i[:, None] - i[None, :]  # row c' (input channel) minus column c (output channel)
    return ((offset >= -(size // 2)) & (offset <= (size - 1) // 2)).float()


class ConstantScale(nn.Module):
    """x * k^-beta (= 2^-0.75 ~ 0.59): what LRN does to a unit whose neighbours are quiet.

    With k = 2 the LRN's adaptive term is ~0.005 next to k at init, so most of what LRN does
    early on is this fixed rescaling. `--lrn scale` puts it where LRN would be, so that a run
    with it separates LRN's normalisation (the adaptive term) from its constant gain.
    """

    def __init__(self, factor: float = LRN_K**-LRN_BETA):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor:.6f}"


def _lrn(cfg: ModelConfig) -> nn.Module:
    """cuda-convnet divides alpha by n, as torch does; the paper's printed formula does not."""
    if cfg.lrn == "off":
        return nn.Identity()
    if cfg.lrn == "scale":
        return ConstantScale()
    alpha = {"cuda-convnet": LRN_ALPHA, "paper": LRN_ALPHA * LRN_SIZE}[cfg.lrn]
    return Float32LRN(LRN_SIZE, alpha=alpha, beta=LRN_BETA, k=LRN_K)


def _lrn_as_cuda_autocast(a: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """F.local_response_norm's steps with the dtypes CUDA bf16 autocast gives them: the channel
    window average accumulates in float32 and is stored bf16, `* alpha + k` runs in bf16 (this is
    where the adaptive term rounds away), `pow` is on autocast's float32 list."""
    sq = (a.float() ** 2).unsqueeze(1)
    sq = nn.functional.pad(sq, (0, 0, 0, 0, size // 2, (size - 1) // 2))
    avg = nn.functional.avg_pool3d(sq, (size, 1, 1), stride=1).squeeze(1).to(a.dtype)
    div = (avg * alpha + k).float().pow(beta)  # bf16 * and +, as CUDA autocast leaves them
    return a / div


def lrn_bf16_agreement(device: str | torch.device = "cpu", batch: int = 1, seed: int = 0) -> dict:
    """How much of LRN's adaptive term survives bf16 autocast: torch's LRN vs `Float32LRN`.

    Input: conv1 at the paper's init (N(0, 0.01^2), 11x11 stride 4) + ReLU on a random
    mean-subtracted image (pixel std 60, the 0-255 scale the loader gives), the LRN's real input
    at the start of training. The adaptive term of a unit is f - 1, where f is its output over
    the output a constant denominator k would give; reference: float32 without autocast.
    Returns, for each of "torch_lrn" and "float32_lrn": the share of units whose adaptive term
    is more than half lost, and the mean relative error of the term; and `ok` (float32_lrn keeps
    it: < 1 % of units lost). Used by tests and by bench/gpu_check.sh on a GPU.

    torch_lrn on CUDA is torch's LRN under bf16 autocast, where the ops up to `+ k` stay bf16.
    CPU autocast runs avg_pool3d in float32 (it has no bf16 kernel), which hides the problem, so
    on the CPU the baseline is `_lrn_as_cuda_autocast`, the same arithmetic CUDA autocast does.
    """
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(3, 96, 11, 4, 2)
    with torch.no_grad():
        conv.weight.normal_(0.0, INIT_STD, generator=gen)
        conv.bias.zero_()
    conv.to(device)
    x = (torch.randn(batch, 3, 224, 224, generator=gen) * 60.0).to(device)
    params = dict(size=LRN_SIZE, alpha=LRN_ALPHA, beta=LRN_BETA, k=LRN_K)
    with torch.no_grad():
        act = torch.relu(conv(x))
        ref = nn.LocalResponseNorm(**params)(act)
        const = act * LRN_K**-LRN_BETA
        ref_term = ref.double() / const.double() - 1.0
        live = (act > 0) & (ref_term.abs() > 1e-5)  # units where there is a term to keep
        ref_term = ref_term[live]
        result: dict = {"device": str(device), "units": int(live.sum())}
        result["mean_term"] = float(ref_term.mean())
        for name, lrn in (
            ("torch_lrn", nn.LocalResponseNorm(**params)),
            ("float32_lrn", Float32LRN(**params)),
        ):
            with torch.autocast(device.type, dtype=torch.bfloat16):
                a = torch.relu(conv(x))  # bf16 under autocast, as in training
                cpu_baseline = device.type == "cpu" and name == "torch_lrn"
                out = _lrn_as_cuda_autocast(a, **params) if cpu_baseline else lrn(a)
            # the term relative to the bf16 input this LRN actually saw
            seen = a[live].double()
            term = out.double()[live] / (seen * LRN_K**-LRN_BETA) - 1.0
            err = ((term - ref_term).abs() / ref_term.abs()).clamp(max=10.0)
            err = err[seen > 0]  # a unit bf16 rounded to 0 has no ratio (and no output to scale)
            result[name] = {
                "out_dtype": str(out.dtype).replace("torch.", ""),
                "share_of_term_lost": float((err > 0.5).double().mean()),
                "mean_rel_err_of_term": float(err.mean()),
            }
    result["ok"] = result["float32_lrn"]["share_of_term_lost"] < 0.01
    return result


class PaperDropout(nn.Module):
    """Section 4.2's dropout: in training each unit is zeroed with probability p and the kept
    units pass unscaled; at test every unit passes, multiplied by (1 - p) (the paper's 0.5).

    torch's nn.Dropout ("inverted") divides the kept units by (1 - p) in training instead. The
    expected output is the same up to that factor, but the layers after it then see 2x larger
    inputs in training: with the paper's init, learning rate and weight decay they train as if
    those were changed (2x init std, 4x lr, 1/4 weight decay), so the paper's form is the default.
    """

    def __init__(self, p: float = DROPOUT):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout {p} not in [0, 1)")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0:
            return x
        if self.training:
            keep = torch.empty_like(x).bernoulli_(1.0 - self.p)
            return x * keep
        return x * (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}, kept units unscaled in training, x{1 - self.p:g} at test"


def _dropout(cfg: ModelConfig) -> nn.Module:
    if cfg.dropout_mode == "paper":
        return PaperDropout(cfg.dropout)
    if cfg.dropout_mode == "inverted":
        return nn.Dropout(cfg.dropout)
    raise ValueError(f"dropout_mode {cfg.dropout_mode!r} not paper|inverted")


def _pool(cfg: ModelConfig) -> nn.Module:
    k, s = {"overlap": (3, 2), "nonoverlap": (2, 2)}[cfg.pool]
    return nn.MaxPool2d(k, s)


class TowerLayer(nn.Module):
    """One layer of the net, split in towers. `shared`: each tower sees every tower's input."""

    def __init__(self, name: str, make, towers: int, shared: bool):  # noqa: ANN001
        super().__init__()
        self.name, self.shared = name, shared
        self.parts = nn.ModuleList(make() for _ in range(towers))

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        if not self.shared:
            return [part(x) for part, x in zip(self.parts, xs, strict=True)]
        outs = []
        for part in self.parts:
            dev = next(part.parameters()).device
            outs.append(part(torch.cat([x.to(dev, non_blocking=True) for x in xs], 1)))
        return outs


@dataclass
class LayerInfo:
    name: str
    shape: tuple[int, ...] = field(default_factory=tuple)
    neurons: int = 0
    params: int = 0


class AlexNet(nn.Module):
    """The two-tower net; `cfg.towers=1` gives the one-GPU half-width comparison net."""

    def __init__(self, cfg: ModelConfig = ModelConfig()):  # noqa: B008 (frozen: one shared default)
        super().__init__()
        if cfg.arch != "alexnet":
            raise ValueError("AlexNet needs arch='alexnet'; use build_model")
        self.cfg = cfg
        t = cfg.towers
        # kernels per tower (section 3.5): 48, 128, 192, 192, 128 -> 96, 256, 384, 384, 256.
        # One tower keeps conv5 and the FC layers full size, as the paper's comparison net did.
        c1, c2, c3, c4 = 96 // 2, 256 // 2, 384 // 2, 384 // 2
        c5 = 256 // t
        f = 4096 // t
        conv = lambda i, o, k, p=1, s=1: lambda: nn.Conv2d(i, o, k, s, p)  # noqa: E731
        self.conv1 = TowerLayer(
            "conv1", conv(3, c1, 11, cfg.conv1_padding, 4), t, shared=False
        )  # image per tower
        self.conv2 = TowerLayer("conv2", conv(c1, c2, 5, 2), t, shared=False)
        self.conv3 = TowerLayer("conv3", conv(c2 * t, c3, 3), t, shared=True)
        self.conv4 = TowerLayer("conv4", conv(c3, c4, 3), t, shared=False)
        self.conv5 = TowerLayer("conv5", conv(c4, c5, 3), t, shared=False)
        self.conv6 = TowerLayer("conv6", conv(c5 * t, c5, 3), t, shared=True) if cfg.extra_conv else None
        self.fc6 = TowerLayer("fc6", lambda: nn.Linear(c5 * t * 6 * 6, f), t, shared=True)
        self.fc7 = TowerLayer("fc7", lambda: nn.Linear(f * t, f), t, shared=True)
        self.fc8 = nn.Linear(f * t, cfg.classes)
        self.act, self.lrn, self.pool = _act(cfg), _lrn(cfg), _pool(cfg)
        self.drop = _dropout(cfg)
        self.devices: list[torch.device] | None = None
        init_paper(self)

    def place(self, devices: list[torch.device]) -> AlexNet:
        """Model parallel: tower t on devices[t]; fc8 and the output on devices[0]."""
        if len(devices) != self.cfg.towers:
            raise ValueError(f"{len(devices)} devices for {self.cfg.towers} tower(s)")
        for layer in self.tower_layers():
            for part, dev in zip(layer.parts, devices, strict=True):
                part.to(dev)
        self.fc8.to(devices[0])
        self.devices = list(devices)
        return self

    def tower_layers(self) -> list[TowerLayer]:
        return [
            m
            for m in (
                self.conv1,
                self.conv2,
                self.conv3,
                self.conv4,
                self.conv5,
                self.conv6,
                self.fc6,
                self.fc7,
            )
            if m is not None
        ]

    def _each(self, fn, xs):  # noqa: ANN001
        return [fn(x) for x in xs]

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Image -> the last hidden layer (fc7, 4096-d over both towers), per tower."""
        devs = self.devices or [x.device] * self.cfg.towers
        xs = [x.to(d, non_blocking=True) for d in devs]
        a, lrn, pool, drop = self.act, self.lrn, self.pool, self.drop
        xs = self._each(lambda v: pool(lrn(a(v))), self.conv1(xs))
        xs = self._each(lambda v: pool(lrn(a(v))), self.conv2(xs))
        xs = self._each(a, self.conv3(xs))
        xs = self._each(a, self.conv4(xs))
        xs = self._each(lambda v: pool(a(v)), self.conv5(xs))
        if self.conv6 is not None:  # "1 CNN*": a sixth conv layer over the last pooling layer
            xs = self._each(a, self.conv6(xs))
        xs = self._each(lambda v: torch.flatten(v, 1), xs)
        xs = self._each(lambda v: drop(a(v)), self.fc6(xs))
        return self._each(lambda v: drop(a(v)), self.fc7(xs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.features(x)
        dev = self.fc8.weight.device
        return self.fc8(torch.cat([h.to(dev, non_blocking=True) for h in hidden], 1))


class CifarNet(nn.Module):
    """The "four-layer convolutional neural network" of Figure 1, for 32x32 CIFAR-10 images.

    3 conv (32, 32, 64 kernels of 5x5) + 1 FC, with the same options as AlexNet (activation,
    LRN, pooling), after cuda-convnet's layers-18pct: real learning on a CPU in minutes.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        a, lrn, pool = _act(cfg), _lrn(cfg), _pool(cfg)
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 5, padding=2),
            a,
            pool,
            lrn,
            nn.Conv2d(32, 32, 5, padding=2),
            a,
            pool,
            lrn,
            nn.Conv2d(32, 64, 5, padding=2),
            a,
            pool,
            nn.Flatten(),
        )
        with torch.no_grad():
            n = self.body(torch.zeros(1, 3, cfg.input_size, cfg.input_size)).shape[1]
        self.fc = nn.Linear(n, cfg.classes)
        if cfg.init not in CIFAR_INIT_STD:
            raise ValueError(f"init {cfg.init!r} not in {tuple(CIFAR_INIT_STD)}")
        learned = [m for m in self.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        for m, std in zip(learned, CIFAR_INIT_STD[cfg.init], strict=True):
            nn.init.normal_(m.weight, 0.0, std)
            nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.body(x)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


def init_paper(model: AlexNet) -> None:
    """Section 5: weights N(0, 0.01^2); biases 1 in conv2, conv4, conv5, fc6, fc7, else 0."""
    for layer in [*model.tower_layers(), model.fc8]:
        name = getattr(layer, "name", "fc8")
        for m in layer.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.weight, 0.0, INIT_STD)
                nn.init.constant_(m.bias, 1.0 if name in ONE_BIAS else 0.0)


def build_model(cfg: ModelConfig) -> nn.Module:
    if cfg.arch == "alexnet":
        return AlexNet(cfg)
    if cfg.arch == "cifar":
        return CifarNet(cfg)
    raise ValueError(f"arch {cfg.arch!r} not alexnet|cifar")


def learned_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    if isinstance(model, AlexNet):
        return [(layer.name, layer) for layer in model.tower_layers()] + [("fc8", model.fc8)]
    convs = [m for m in model.body if isinstance(m, nn.Conv2d)]
    return [(f"conv{i + 1}", m) for i, m in enumerate(convs)] + [("fc", model.fc)]


def summary(model: nn.Module, input_size: int) -> list[LayerInfo]:
    """Each learned layer's output shape (both towers together), neurons and parameters."""
    rows: list[LayerInfo] = []

    def hook(name: str, params: int):  # noqa: ANN202
        def record(_module, _inputs, out):  # noqa: ANN001, ANN202
            outs = out if isinstance(out, list) else [out]
            shape = (sum(o.shape[1] for o in outs), *outs[0].shape[2:])
            rows.append(LayerInfo(name, tuple(shape), int(torch.Size(shape).numel()), params))

        return record

    hooks = [
        m.register_forward_hook(hook(n, sum(p.numel() for p in m.parameters())))
        for n, m in learned_layers(model)
    ]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, input_size, input_size, device=next(model.parameters()).device))
    model.train(was_training)
    for h in hooks:
        h.remove()
    return rows
