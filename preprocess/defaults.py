"""The preprocessor's own defaults (not the paper's: those are in preprocess/paper.py).

Kept in a module that imports nothing, so `alexprep --help` shows them without loading OpenCV
or numpy, and the library and the CLI read the same numbers.
"""

from __future__ import annotations

from preprocess.paper import IMAGE_SIZE  # noqa: F401 (section 2: the stored size)

JPEG_QUALITY = 90  # the stored JPEGs' quality
# Bounds on what one input may cost, checked before decoding (from the file's header) so a
# decompression bomb is one rejected input, not a dead run: 100 megapixels is 300 MB decoded
# per worker and above any ILSVRC-2012 image; 64 MiB is 4x the largest ILSVRC file.
MAX_PIXELS = 100_000_000
MAX_BYTES = 64 * 2**20
# ILSVRC-2012 train: 1,281,167 images / 2,500 = 513 shards of ~70 MB at 256px q90: big enough
# for sequential reads, enough shards to spread over 64 ranks x 8 reader threads.
DEFAULT_SHARD_SIZE = 2500
DEFAULT_SEED = 0
