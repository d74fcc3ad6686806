"""Start a run from another run's weights (`--init-from RUN_OR_CHECKPOINT`): fine-tuning.

Table 2's starred rows ("1 CNN*", "7 CNNs*") pre-train on the whole Fall 2011 release and
fine-tune on ILSVRC-2012; users fine-tune on their own classes. Every layer whose shape matches
is copied; the classifier (fc8, or the CIFAR net's fc) keeps the new run's fresh init when the
class count differs, and so does the sixth conv layer when the new model has one and the source
has not ("1 CNN*": the extra layer is new). Only weights come over: the optimiser (its velocity),
the schedule and the epoch count are the new run's own, and the new dataset's mean image and
lighting statistics apply. A resumed run ignores `--init-from` (its own checkpoint wins).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from trainer import checkpoint
from trainer.model import ModelConfig

CLASSIFIERS = ("fc8.", "fc.")  # AlexNet's and the CIFAR net's last layer
NEW_LAYERS = ("conv6.",)  # may be absent from the source ("1 CNN*" adds it)
MUST_MATCH = ("arch", "towers")


class FineTuneError(checkpoint.CheckpointError):
    """The source checkpoint cannot initialise this model (another architecture, a shape)."""


def init_from(model: nn.Module, source: str | Path, model_config: ModelConfig) -> dict:
    """Copy the source's weights into `model` (built, placed, not yet trained).

    Returns {"checkpoint", "copied", "reinitialised", "ignored"} (parameter names), for the log.
    """
    path = checkpoint.resolve(Path(source))
    state = checkpoint.load(path)
    if not isinstance(state.get("model"), dict) or not isinstance(state.get("model_config"), dict):
        raise FineTuneError(f"{path}: not an alextrain checkpoint (no model / model_config table)")
    try:
        saved = ModelConfig.from_dict(state["model_config"])
    except (TypeError, ValueError) as e:  # a key unknown to this version
        raise FineTuneError(f"{path}: malformed model_config ({e})") from None
    for key in MUST_MATCH:
        if getattr(saved, key) != getattr(model_config, key):
            raise FineTuneError(
                f"{path}: --init-from needs the same {key} "
                f"(checkpoint {getattr(saved, key)!r}, this run {getattr(model_config, key)!r})"
            )
    own = model.state_dict()
    weights: dict[str, torch.Tensor] = state["model"]
    new_classes = saved.num_classes != model_config.num_classes
    merged, copied, fresh = {}, [], []
    for name, mine in own.items():
        theirs = weights.get(name)
        if (new_classes and name.startswith(CLASSIFIERS)) or (theirs is None and name.startswith(NEW_LAYERS)):
            merged[name] = mine
            fresh.append(name)
            continue
        if theirs is None:
            raise FineTuneError(f"{path}: no {name} in the checkpoint")
        if theirs.shape != mine.shape:
            raise FineTuneError(
                f"{path}: {name} has shape {tuple(theirs.shape)}, this model needs {tuple(mine.shape)}"
            )
        merged[name] = theirs
        copied.append(name)
    model.load_state_dict(merged)
    ignored = sorted(set(weights) - set(own))  # e.g. conv6 when the new model has none
    return {"checkpoint": str(path), "copied": copied, "reinitialised": fresh, "ignored": ignored}


def _layers(names: list[str]) -> list[str]:
    return sorted({n.split(".")[0] for n in names})


def describe(result: dict) -> str:
    """The run's log: one line, and a second one when a fresh conv6 sits under trained layers."""
    fresh, ignored = _layers(result["reinitialised"]), _layers(result["ignored"])
    line = (
        f"init from {result['checkpoint']}: {len(result['copied'])} tensors copied"
        + (f"; new init: {', '.join(fresh)}" if fresh else "")
        + (f"; not used: {', '.join(ignored)}" if ignored else "")
    )
    if "conv6" in fresh and result["copied"]:
        line += (
            "\nnote: the source has no conv6, so this run puts a RANDOM conv6 (N(0, 0.01^2)) between "
            "trained conv5 and trained fc6; the paper's 1 CNN* had conv6 in pre-training: pre-train "
            "with --extra-conv, then fine-tune with --extra-conv --init-from (docs/model.md)"
        )
    return line
