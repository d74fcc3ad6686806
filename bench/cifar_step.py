"""The CIFAR net's training step on the CPU: as `alextrain run` builds it vs torch's defaults.

    python bench/cifar_step.py [--threads 2] [--batch-size 128] [--steps 40] [--repeats 3]

Figure 1's settled run is hundreds of CIFAR-10 epochs on a CPU, so its step is what its hours
are made of. Two changes, each the same arithmetic up to float rounding, were made for it:
LRN's channel-window sum as one band matmul (`trainer.model.Float32LRN`) instead of torch's
padded avg_pool3d, and channels_last memory (`--channels-last`, default on, now on the CPU too).

For the plain net (relu) and the LRN net (relu-lrn), in the same process and interleaved
(`--repeats` rounds; the median is reported): the baseline (torch's nn.LocalResponseNorm, NCHW
memory: the step before the change) and the project's (the model `trainer.train.build` makes,
channels_last input), each timed over `--steps` forward + backward + SGD steps on a fixed
random batch after 5 untimed ones; their ratio; and the largest difference of their logits on
one batch, relative to the logits' scale (they must agree).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import positive  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402
from trainer.model import Float32LRN, build_model  # noqa: E402


def nets(lrn: str) -> dict[str, nn.Module]:
    """{"baseline": torch's LRN, NCHW; "project": as `build` makes it}, with the same weights."""
    cfg = TrainConfig.of(arch="cifar", crop=32, lrn=lrn).model
    torch.manual_seed(0)
    project = build_model(cfg).to(memory_format=torch.channels_last)
    torch.manual_seed(0)
    baseline = build_model(cfg)
    for i, m in enumerate(baseline.body):  # by index: the net uses one LRN module twice
        if isinstance(m, Float32LRN):
            baseline.body[i] = nn.LocalResponseNorm(m.size, m.alpha, m.beta, m.k)
    assert not any(isinstance(m, Float32LRN) for m in baseline.body)
    return {"baseline": baseline, "project": project}


def rate(net: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    """img/s over `steps` training steps after 5 untimed ones."""
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    for i in range(5 + steps):
        if i == 5:
            t0 = time.perf_counter()
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * x.shape[0] / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=positive, default=2, help="torch's CPU threads")
    ap.add_argument("--batch-size", type=positive, default=128)
    ap.add_argument("--steps", type=positive, default=40, help="timed steps per measurement")
    ap.add_argument("--repeats", type=positive, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    print(f"batch {a.batch_size}, {a.steps} timed steps x {a.repeats} rounds, {a.threads} threads")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(a.batch_size, 3, 32, 32, generator=g) * 60  # pixels less the mean image
    y = torch.randint(0, 10, (a.batch_size,), generator=g)
    inputs = {"baseline": x, "project": x.contiguous(memory_format=torch.channels_last)}
    for label, lrn in (("relu", "off"), ("relu-lrn", "cuda-convnet")):
        built = nets(lrn)
        with torch.no_grad():
            want, got = built["baseline"](x), built["project"](inputs["project"])
        drift = ((got - want).abs().max() / want.abs().max()).item()
        rates: dict[str, list[float]] = {k: [] for k in built}
        for _ in range(a.repeats):
            for k, net in built.items():
                rates[k].append(rate(net, inputs[k], y, a.steps))
        base, mine = (statistics.median(rates[k]) for k in ("baseline", "project"))
        print(
            f"{label:9s} baseline (torch LRN, NCHW) {base:6.0f} img/s   project {mine:6.0f} img/s   "
            f"ratio {mine / base:.2f}x   logits max rel diff {drift:.1e}"
        )


if __name__ == "__main__":
    main()
