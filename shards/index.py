"""DALI's WebDataset index (the format `wds2idx` writes, version v1.2).

    v1.2 <number of samples>
    <ext> <data offset> <size> <member name> [<ext> <offset> <size> <name> ...]   one line a sample

Offsets point at the member's data (after its 512-byte tar header). With an index beside each
tar, `fn.readers.webdataset` opens shards without scanning them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

INDEX_VERSION = "v1.2"
TAR_BLOCK = 512


@dataclass(frozen=True)
class Member:
    ext: str
    offset: int  # of the data, in bytes from the start of the tar
    size: int
    name: str


def format_index(samples: list[list[Member]]) -> bytes:
    lines = [f"{INDEX_VERSION} {len(samples)}"]
    for members in samples:
        lines.append(" ".join(f"{m.ext} {m.offset} {m.size} {m.name}" for m in members))
    return ("\n".join(lines) + "\n").encode()


def read_index(path: Path) -> list[list[Member]]:
    """Parse an index file; raises ValueError naming the file on any malformed line."""
    lines = path.read_text().splitlines()
    head = lines[0].split() if lines else []
    if len(head) != 2 or head[0] != INDEX_VERSION:
        raise ValueError(f"{path}: not a DALI {INDEX_VERSION} index")
    samples = []
    for n, line in enumerate(lines[1:], start=2):
        f = line.split()
        if not f or len(f) % 4:
            raise ValueError(f"{path}:{n}: malformed index line")
        samples.append([Member(f[i], int(f[i + 1]), int(f[i + 2]), f[i + 3]) for i in range(0, len(f), 4)])
    if len(samples) != int(head[1]):
        raise ValueError(f"{path}: header says {head[1]} samples, found {len(samples)}")
    return samples
