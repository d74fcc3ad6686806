"""Write one shard: a WebDataset tar, its DALI index and its manifest part, all or nothing.

The tar is written by webdataset's TarWriter with a fixed mtime, owner and mode, so the same
samples give byte-identical tars on any machine. Member offsets are computed as the tar is
written (USTAR: a 512-byte header, then the data padded to 512), which is exactly what
`wds2idx` would read back; `alexprep verify` re-derives them from the tar to check.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds

from shards import layout
from shards.index import TAR_BLOCK, Member, format_index

MANIFEST_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("label", pa.int32()),
        ("source", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("shard", pa.string()),
        ("offset", pa.int64()),  # of the JPEG's data in the tar
        ("bytes", pa.int64()),  # of the stored JPEG
        ("sha256", pa.string()),  # of the stored JPEG
        ("reason", pa.string()),  # null for a written sample; why, for a rejected input
    ]
)

_MTIME = 0  # fixed, so tars are reproducible


def _padded(size: int) -> int:
    return -(-size // TAR_BLOCK) * TAR_BLOCK


class ShardWriter:
    """Collects one shard's samples and rejects; `commit()` makes them visible atomically."""

    def __init__(self, out: Path, split: str, index: int):
        self.tar = layout.tar_path(out, split, index)
        self.idx = layout.idx_path(self.tar)
        self.part = layout.part_path(out, split, index)
        self.name = self.tar.name
        self.tar.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = layout.tmp_path(self.tar)
        self._writer = wds.TarWriter(
            str(self._tmp), encoder=False, mtime=_MTIME, user="alexnet", group="alexnet"
        )
        self._pos = 0
        self._index: list[list[Member]] = []
        self._rows: list[dict] = []

    def add(
        self, key: str, label: int, source: str, jpeg: bytes, width: int, height: int, wnid: str | None
    ) -> None:
        meta = json.dumps(
            {"source": source, "width": width, "height": height, "wnid": wnid}, sort_keys=True
        ).encode()
        parts = {"cls": str(label).encode(), "jpg": jpeg, "json": meta}
        self._writer.write({"__key__": key, **parts})
        members = []
        for ext in sorted(parts):  # TarWriter writes members in sorted order
            size = len(parts[ext])
            members.append(Member(ext, self._pos + TAR_BLOCK, size, f"{key}.{ext}"))
            if ext == "jpg":
                jpg_offset = self._pos + TAR_BLOCK
            self._pos += TAR_BLOCK + _padded(size)
        self._index.append(members)
        self._rows.append(
            dict(
                key=key,
                label=label,
                source=source,
                width=width,
                height=height,
                shard=self.name,
                offset=jpg_offset,
                bytes=len(jpeg),
                sha256=hashlib.sha256(jpeg).hexdigest(),
                reason=None,
            )
        )

    def reject(self, label: int, source: str, reason: str) -> None:
        self._rows.append(
            dict(
                key=None,
                label=label,
                source=source,
                width=None,
                height=None,
                shard=self.name,
                offset=None,
                bytes=None,
                sha256=None,
                reason=reason,
            )
        )

    def commit(self) -> None:
        """Tar, then index, then the manifest part last: the part is the commit marker."""
        self._writer.close()
        layout.commit(self._tmp, self.tar)
        layout.write_atomic(self.idx, format_index(self._index))
        table = pa.Table.from_pylist(self._rows, schema=MANIFEST_SCHEMA)
        tmp = layout.tmp_path(self.part)
        self.part.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, tmp)
        layout.commit(tmp, self.part)

    def abort(self) -> None:
        self._writer.close()
        self._tmp.unlink(missing_ok=True)
