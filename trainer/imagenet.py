"""The 1,000 ILSVRC-2012 classes: WordNet ID -> human-readable name, shipped with the package.

Shards made with a `--labels` CSV of wnids, or from an ILSVRC-2012 tree without a synsets file,
know their classes only as `n02088632`. The public table (the challenge's
`LOC_synset_mapping.txt`: `wnid name, synonym, ...`, in class-index order) is 1,000 short lines,
so it ships as `ilsvrc2012_synsets.txt` beside this module and names those classes everywhere
(Figure 4, `predict`, `neighbors`). It also says whether a dataset *is* ImageNet-1k: the
report compares a run with the paper's Table 2 only then.

Provenance: three independent public copies of LOC_synset_mapping.txt agree on all 1,000 lines
except that two of them renamed the duplicated "crane" (bird, machine) and "maillot" entries;
the file here keeps the original names. The 1,000 sample images of ../shared/data
(`<wnid>_<name>.JPEG`) have the same wnids and, for every one, `<name>` equals the first name
here with spaces as underscores (tests/test_imagenet_names.py checks this where the data is
present).
"""

from __future__ import annotations

import functools
from importlib import resources

SYNSETS_FILE = "ilsvrc2012_synsets.txt"
NUM_CLASSES = 1000


@functools.cache
def synsets() -> dict[str, str]:
    """{wnid: 'tench, Tinca tinca', ...}, the 1,000 ILSVRC-2012 classes in class-index order."""
    text = resources.files("trainer").joinpath(SYNSETS_FILE).read_text(encoding="utf-8")
    table = {}
    for line in text.splitlines():
        wnid, _, names = line.partition(" ")
        table[wnid] = names
    return table


@functools.cache
def short_names() -> dict[str, str]:
    """{wnid: first name}, made unique: the two "crane"s and two "maillot"s get their wnid added
    (a prediction that says only "crane" does not say which)."""
    first = {w: names.split(",")[0].strip() for w, names in synsets().items()}
    counts: dict[str, int] = {}
    for name in first.values():
        counts[name] = counts.get(name, 0) + 1
    return {w: (f"{n} ({w})" if counts[n] > 1 else n) for w, n in first.items()}


def name_of(wnid: str) -> str | None:
    """The human-readable name of an ILSVRC-2012 wnid, or None for any other string."""
    return short_names().get(wnid)


def is_imagenet_1k(class_keys: list[str]) -> bool:
    """True when the classes are exactly the 1,000 ILSVRC-2012 wnids (in any order)."""
    return len(class_keys) == NUM_CLASSES and set(class_keys) == set(synsets())
