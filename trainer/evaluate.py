"""Top-1/top-5 error, centre crop or the paper's 10 crops, of one model or the average of several.

Section 4.1: at test time the network's softmax is averaged over the 10 patches; section 6:
"averaging the predictions of five similar CNNs". Both are averages of probabilities.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist


def autocast(device: torch.device, enabled: bool):  # noqa: ANN201
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def topk_correct(probs: torch.Tensor, y: torch.Tensor, ks=(1, 5)) -> list[int]:
    k = min(max(ks), probs.shape[1])
    top = probs.topk(k, dim=1).indices
    hit = top == y[:, None]
    return [int(hit[:, : min(kk, k)].any(1).sum()) for kk in ks]


@torch.no_grad()
def predict(models: list[torch.nn.Module], x: torch.Tensor, amp: bool) -> torch.Tensor:
    """Softmax averaged over crops (x: [B, 10, C, H, W]) and over models -> [B, classes]."""
    crops = x.shape[1] if x.ndim == 5 else 1
    flat = x.flatten(0, 1) if x.ndim == 5 else x
    total = None
    for m in models:
        with autocast(flat.device, amp):
            logits = m(flat)
        p = logits.float().softmax(1).to(x.device).view(x.shape[0], crops, -1).mean(1)
        total = p if total is None else total + p
    return total / len(models)


@torch.no_grad()
def evaluate(models: list[torch.nn.Module], loader, amp: bool = False) -> dict:  # noqa: ANN001
    """Loss (NLL of the averaged softmax), top-1/top-5 error over every sample of `loader`."""
    for m in models:
        m.eval()
    sums = torch.zeros(4, dtype=torch.float64)  # samples, loss, top1 hits, top5 hits
    for x, y in loader:
        probs = predict(models, x, amp)
        y = y.to(probs.device)
        nll = -torch.log(probs.gather(1, y[:, None]).clamp_min(1e-12)).sum()
        c1, c5 = topk_correct(probs, y)
        sums += torch.tensor([len(y), float(nll), c1, c5], dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        s = sums.to(dev)
        dist.all_reduce(s)
        sums = s.cpu()
    n = max(sums[0].item(), 1.0)
    return {
        "samples": int(sums[0].item()),
        "loss": sums[1].item() / n,
        "top1_err": 1.0 - sums[2].item() / n,
        "top5_err": 1.0 - sums[3].item() / n,
    }
