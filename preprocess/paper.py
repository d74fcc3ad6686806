"""The paper's facts, each once, with its section (Krizhevsky, Sutskever & Hinton, 2012).

Every stage imports its numbers from here: the preprocessor (stored size), the loaders (crop,
lighting, ten-crop), the model (LRN, dropout, init, biases) and the trainer (SGD, schedule).
It sits at the root of the data flow (`preprocess/`) so every later stage may import it, and it
imports nothing, so `alexprep --help` and `alextrain --help` stay instant.

Where the paper's text and Krizhevsky's code differ, the constant is the one both agree on and
the convention is a setting (see trainer/sections.py and docs/model.md).
"""

from __future__ import annotations

# Section 2: rescale the shorter side to 256, take the central 256x256 patch.
IMAGE_SIZE = 256

# Section 4.1: random 224x224 patches and their horizontal reflections; at test time the four
# corner patches and the centre patch, each also mirrored (10 in all), softmax averaged.
CROP_SIZE = 224
TEN_CROP_POS = ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (0.5, 0.5))  # relative (x, y)
# Section 4.1: PCA lighting, alpha_i ~ N(0, 0.1) drawn once per image per presentation: 0.1 is
# the standard deviation, as in the English original (the Chinese translation's 方差, "variance",
# is a slip; docs/model.md "Where the translation differs").
LIGHTING_STD = 0.1

# Section 3.3: local response normalisation, k=2, n=5, alpha=1e-4, beta=0.75.
LRN_SIZE, LRN_ALPHA, LRN_BETA, LRN_K = 5, 1e-4, 0.75, 2.0

# Section 4.2: dropout 0.5 in fc6 and fc7; kept units unscaled in training, x0.5 at test.
DROPOUT = 0.5

# Section 5: weights ~ N(0, 0.01^2), i.e. standard deviation 0.01 (the translation's "variance
# 0.01" is the same slip); biases 1 in conv2, conv4, conv5 and the hidden FC layers.
INIT_STD = 0.01
ONE_BIAS = ("conv2", "conv4", "conv5", "fc6", "fc7")

# Section 5: SGD, batch 128 (all GPUs together), momentum 0.9, weight decay 0.0005;
# v <- 0.9 v - 0.0005 eps w - eps dL/dw; w <- w + v.
BATCH_SIZE = 128
MOMENTUM = 0.9
WEIGHT_DECAY = 0.0005
# Section 5: lr 0.01 for all layers, divided by 10 when the validation error stopped improving,
# three times before the end, in roughly 90 cycles.
LEARNING_RATE = 0.01
LR_DROP = 10.0
MAX_DROPS = 3
EPOCHS = 90
