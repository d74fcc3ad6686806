"""Top-1/top-5 error, centre crop or the paper's 10 crops, of one model or the average of several.

Section 4.1: at test time the network's softmax is averaged over the 10 patches; section 6:
"averaging the predictions of five similar CNNs". Both are averages of probabilities.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist

from trainer.guard import NonFiniteError


def autocast(device: torch.device, precision: str = "fp32"):  # noqa: ANN201
    """bf16 autocast for `--precision bf16` (CUDA or CPU; LRN stays fp32 inside, model.py);
    fp32 and tf32 run without autocast (tf32 is a backend switch, trainer/distributed.py)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def topk_correct(probs: torch.Tensor, y: torch.Tensor, ks=(1, 5)) -> list[int]:
    k = min(max(ks), probs.shape[1])
    top = probs.topk(k, dim=1).indices
    hit = top == y[:, None]
    return [int(hit[:, : min(kk, k)].any(1).sum()) for kk in ks]


@torch.no_grad()
def predict_each(
    models: list[torch.nn.Module], x: torch.Tensor, precision: str = "fp32"
) -> list[torch.Tensor]:
    """Each model's softmax averaged over the crops (x: [B, 10, C, H, W]) -> [B, classes]."""
    crops = x.shape[1] if x.ndim == 5 else 1
    flat = x.flatten(0, 1) if x.ndim == 5 else x
    out = []
    for m in models:
        with autocast(flat.device, precision):
            logits = m(flat)
        out.append(logits.float().softmax(1).to(x.device).view(x.shape[0], crops, -1).mean(1))
    return out


class Tally:
    """Running sums of samples, NLL, top-1 and top-5 hits, and of samples whose prediction is not
    finite (refused at the end: a NaN model's "error 0.9000" is not a result); all-reduced
    across ranks at the end."""

    def __init__(self) -> None:
        self.sums = torch.zeros(5, dtype=torch.float64)

    def add(self, probs: torch.Tensor, y: torch.Tensor) -> None:
        y = y.to(probs.device)
        nll = -torch.log(probs.gather(1, y[:, None]).clamp_min(1e-12)).sum()
        c1, c5 = topk_correct(probs, y)
        bad = int((~torch.isfinite(probs)).any(1).sum())
        self.sums += torch.tensor([len(y), float(nll), c1, c5, bad], dtype=torch.float64)

    def result(self) -> dict:
        sums = self.sums
        if dist.is_available() and dist.is_initialized():
            dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
            s = sums.to(dev)
            dist.all_reduce(s)
            sums = s.cpu()
        n = max(sums[0].item(), 1.0)
        if sums[4].item():
            raise NonFiniteError(  # a diverged run whose weights are still finite (huge) ends here
                f"{int(sums[4].item())} of {int(sums[0].item())} predictions are NaN or inf: the "
                "model's weights or its input statistics are not finite; no error rate is reported"
            )
        return {
            "samples": int(sums[0].item()),
            "loss": sums[1].item() / n,
            "top1_err": 1.0 - sums[2].item() / n,
            "top5_err": 1.0 - sums[3].item() / n,
        }


@torch.no_grad()
def evaluate_many(models: list[torch.nn.Module], loader, precision: str = "fp32", bar=None) -> list[dict]:  # noqa: ANN001
    """One pass over `loader`: each model's results, then (for several) their average's.
    `bar`: a progress bar (tqdm) advanced by the images of each batch."""
    for m in models:
        m.eval()
    tallies = [Tally() for _ in range(len(models) + (len(models) > 1))]
    for x, y in loader:
        if len(y) == 0:  # a rank whose part of a tiny split is empty this batch
            continue
        probs = predict_each(models, x, precision)
        if len(models) > 1:
            probs.append(torch.stack(probs).mean(0))
        for t, p in zip(tallies, probs, strict=True):
            t.add(p, y)
        if bar is not None:
            bar.update(len(y))
    return [t.result() for t in tallies]


def evaluate(models: list[torch.nn.Module], loader, precision: str = "fp32") -> dict:  # noqa: ANN001
    """Loss (NLL of the averaged softmax), top-1/top-5 error over every sample of `loader`."""
    return evaluate_many(models, loader, precision)[-1]
