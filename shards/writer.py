"""Write one shard: a WebDataset tar, its DALI index and its manifest part, all or nothing.

The tar is written with the standard library's `tarfile` exactly as webdataset's `TarWriter`
writes it (USTAR, members in sorted extension order, fixed mtime 0, owner `alexnet`, mode
0444), so the same samples give byte-identical tars on any machine, without importing
webdataset (which imports torch: seconds of start-up for a command that never needs it).
Member offsets are computed as the tar is written (USTAR: a 512-byte header, then the data
padded to 512), which is exactly what `wds2idx` would read back; `alexprep verify` re-derives
them from the tar to check.

The tar and index are hashed as they are written; their sizes and SHA-256 go into the manifest
part's Parquet metadata, and from there into dataset.json, so a later check (`preflight`,
`verify`) can tell a damaged shard from an intact one.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

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
# Keys of a part's Parquet metadata: what the shard's files must be (see `shard_record`).
RECORD_KEYS = ("samples", "tar_bytes", "tar_sha256", "idx_bytes", "idx_sha256")

_MTIME = 0  # fixed, so tars are reproducible
_OWNER = "alexnet"
_MODE = 0o444


def _padded(size: int) -> int:
    return -(-size // TAR_BLOCK) * TAR_BLOCK


def sample_json(source: str, width: int, height: int, wnid: str | None) -> bytes:
    """The `.json` member of a sample; `verify` rebuilds it from the manifest to check it."""
    return json.dumps(
        {"source": source, "width": width, "height": height, "wnid": wnid}, sort_keys=True
    ).encode()


class _HashingFile(io.RawIOBase):
    """A write-only file that hashes and counts what passes through it."""

    def __init__(self, f: io.BufferedWriter):
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # noqa: ANN001 (bytes-like)
        self.sha.update(b)
        self.size += len(b)
        return self.f.write(b)


class ShardWriter:
    """Collects one shard's samples and rejects; `commit()` makes them visible atomically."""

    def __init__(self, out: Path, split: str, index: int):
        self.tar = layout.tar_path(out, split, index)
        self.idx = layout.idx_path(self.tar)
        self.part = layout.part_path(out, split, index)
        self.name = self.tar.name
        layout.ensure_dir(self.tar.parent)
        layout.ensure_dir(self.part.parent)
        self._tmp = layout.tmp_path(self.tar)
        self._file = os.fdopen(layout.open_exclusive(self._tmp), "wb")
        self._hashing = _HashingFile(self._file)
        self._tarstream = tarfile.open(fileobj=self._hashing, mode="w|", format=tarfile.USTAR_FORMAT)
        self._pos = 0
        self._index: list[list[Member]] = []
        self._rows: list[dict] = []

    def add(
        self, key: str, label: int, source: str, jpeg: bytes, width: int, height: int, wnid: str | None
    ) -> None:
        parts = {"cls": str(label).encode(), "jpg": jpeg, "json": sample_json(source, width, height, wnid)}
        members = []
        for ext in sorted(parts):  # webdataset's order
            data = parts[ext]
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), _MTIME, _MODE
            info.uname = info.gname = _OWNER
            self._tarstream.addfile(info, io.BytesIO(data))
            members.append(Member(ext, self._pos + TAR_BLOCK, len(data), info.name))
            if ext == "jpg":
                jpg_offset = self._pos + TAR_BLOCK
            self._pos += TAR_BLOCK + _padded(len(data))
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
        self._tarstream.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self.tar)
        index = format_index(self._index)
        layout.write_atomic(self.idx, index)
        record = {
            "samples": len(self._index),
            "tar_bytes": self._hashing.size,
            "tar_sha256": self._hashing.sha.hexdigest(),
            "idx_bytes": len(index),
            "idx_sha256": hashlib.sha256(index).hexdigest(),
        }
        table = pa.Table.from_pylist(self._rows, schema=MANIFEST_SCHEMA)
        table = table.replace_schema_metadata({k: str(v) for k, v in record.items()})
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        layout.write_atomic(self.part, sink.getvalue().to_pybytes())

    def abort(self) -> None:
        """Drop the shard: its temporary file is closed and removed whatever fails on the way (on
        a full disk the tar's closing blocks fail too; the error being handled is the one to say)."""
        for close in (self._tarstream.close, self._file.close):
            with contextlib.suppress(OSError):
                close()
        self._tmp.unlink(missing_ok=True)


def shard_record(part: Path) -> dict | None:
    """The tar/index sizes and hashes a committed shard must have (None: an older part without them)."""
    meta = layout.read_parquet(part, schema_only=True).metadata or {}
    if not all(k.encode() in meta for k in RECORD_KEYS):
        return None
    return {
        k: (meta[k.encode()].decode() if k.endswith("sha256") else int(meta[k.encode()])) for k in RECORD_KEYS
    }
