"""The paper's training recipe as plain numbers (no torch import).

`trainer.config` builds its defaults from these, and `alextrain --help` must not pay for
importing torch; `trainer.model` and `trainer.optim` re-export them under the same names.
"""

from __future__ import annotations

DROPOUT = 0.5  # section 4.2
BATCH_SIZE = 128  # section 5
MOMENTUM = 0.9
WEIGHT_DECAY = 0.0005
LEARNING_RATE = 0.01
LR_DROP = 10.0  # "divided by 10 when the validation error stopped improving"
MAX_DROPS = 3  # "reduced three times prior to termination"
EPOCHS = 90  # "roughly 90 cycles"
