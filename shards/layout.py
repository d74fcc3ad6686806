"""Names and atomic writes: where every file of a sharded dataset lives, and how it appears.

OUT/dataset.json              format version, arguments, counts (complete: true when done),
                              and per shard its tar's size, member count and SHA-256
OUT/classes.json              index -> name, wnid, human-readable label
OUT/verified.json             what `alexprep verify` last found intact (shard sizes, mtimes)
OUT/<split>/<split>-000000.tar   WebDataset shard: <key>.cls, <key>.jpg, <key>.json
OUT/<split>/<split>-000000.idx   DALI index (wds2idx format), so DALI never scans tars
OUT/<split>/parts/<split>-000000.parquet   this shard's manifest rows; its presence is
                              the shard's commit marker (written last, atomically)
OUT/<split>/manifest.parquet  all written samples of the split (merged from parts)
OUT/<split>/rejects.parquet   every input that was not written, with the reason
OUT/.alexprep-node<R>.lock    held (flock) by the one `alexprep shard` writing node R's shards

Every file appears by rename from a temporary name that is unique to the writing process and
created with O_EXCL | O_NOFOLLOW, so a planted link is never written through, two writers never
share a temporary file, and a reader sees a file either absent or complete.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

FORMAT_VERSION = 1
DATASET_JSON = "dataset.json"
CLASSES_JSON = "classes.json"
VERIFIED_JSON = "verified.json"
STATS_JSON = "stats.json"
MEAN_IMAGE = "mean_image.npy"
MANIFEST = "manifest.parquet"
REJECTS = "rejects.parquet"
PARTS = "parts"
TMP_SUFFIX = ".tmp"


class LayoutError(Exception):
    """OUT (or a file in it) is not what it must be: the message names the path and why."""


# What a user can do about a failed write, by errno: one line instead of a traceback. `{elsewhere}`:
# how to write to another place, which only a command that takes an output path can say plainly.
_WRITE_REMEDY = {
    errno.ENOSPC: "no space left on the device: free some space (or {elsewhere}), then re-run",
    errno.EDQUOT: "disk quota exceeded: free some space (or {elsewhere}), then re-run",
    errno.EFBIG: "file too large for this filesystem: {elsewhere}",
    errno.EACCES: "permission denied: make it writable by this user (or {elsewhere})",
    errno.EPERM: "operation not permitted: make it writable by this user (or {elsewhere})",
    errno.EROFS: "read-only filesystem: {elsewhere}",
}
ELSEWHERE = "write elsewhere"


WRITE_ERRNOS = frozenset(_WRITE_REMEDY)


def write_problem(path: Path, e: OSError, elsewhere: str = ELSEWHERE) -> str:
    """One line for a failed write: the path and what to do."""
    remedy = _WRITE_REMEDY.get(e.errno, f"cannot write ({e.strerror or e})")
    return f"{path}: {remedy.format(elsewhere=elsewhere)}"


@contextlib.contextmanager
def writing(path: Path, elsewhere: str = ELSEWHERE) -> Iterator[None]:
    """Every writer runs its writes in this: an OSError (disk full, permissions, a read-only
    filesystem) becomes one LayoutError naming `path` and what to do. The writer's own
    `except BaseException` clean-up of its temporary file has run by then."""
    try:
        yield
    except LayoutError:
        raise
    except OSError as e:
        if e.errno is None:
            raise
        raise LayoutError(write_problem(path, e, elsewhere)) from None


def check_writable(folder: Path, elsewhere: str = ELSEWHERE) -> None:
    """Fail now, not after an hour's pass, if files cannot be created in `folder`: a probe file
    is created and removed (access() would say yes to root on a read-only mount). `elsewhere`:
    how this command writes to another place (pca-stats has no output option: copy OUT)."""
    probe = tmp_path(folder / "write-probe")
    with writing(folder, elsewhere):
        os.close(open_exclusive(probe))
        probe.unlink()


def unreadable(path: Path) -> str | None:
    """Why this process cannot read `path` (permissions), or None; damage is another matter."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None  # absence is reported by the structural checks
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM):
            return f"{path}: not readable by this user ({e.strerror}): fix its permissions; it is not damaged"
        return None
    os.close(fd)
    return None


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}"


def tar_path(out: Path, split: str, index: int) -> Path:
    return out / split / f"{shard_name(split, index)}.tar"


def idx_path(tar: Path) -> Path:
    return tar.with_suffix(".idx")


def part_path(out: Path, split: str, index: int) -> Path:
    return out / split / PARTS / f"{shard_name(split, index)}.parquet"


def _host() -> str:
    return socket.gethostname().replace(".", "_") or "host"


def _tag() -> str:
    return f"{_host()}.{os.getpid()}"


def tmp_path(path: Path) -> Path:
    """A hidden sibling no reader globs for, unique to this process and call.

    `.<name>.<host>.<pid>.<random>.tmp`: unique per process so concurrent writers (two runs,
    several nodes on a shared filesystem) never write one file, random so no name can be
    planted in advance; `open_exclusive` still refuses an existing name or a link.
    """
    return path.with_name(f".{path.name}.{_tag()}.{secrets.token_hex(4)}{TMP_SUFFIX}")


def open_exclusive(path: Path) -> int:
    """Create `path` for writing; fails if anything (a file, a link, even dangling) is there."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.open(path, flags, 0o644)


def commit(tmp: Path, final: Path) -> None:
    """fsync then rename: after a crash `final` is either absent or complete, never partial."""
    with writing(final):
        try:
            fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def ensure_dir(path: Path) -> None:
    """Create `path` (and parents); a link or a non-folder there is an error, not followed."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise LayoutError(f"{path}: exists and is not a folder") from None
    except NotADirectoryError:
        raise LayoutError(f"{path}: a parent of it is a file, not a folder") from None
    except OSError as e:
        raise LayoutError(f"{path}: cannot create ({e.strerror})") from None
    if path.is_symlink():
        raise LayoutError(f"{path}: is a symbolic link; OUT's folders must be real folders")


def write_atomic(path: Path, data: bytes) -> None:
    """`path` becomes `data` or stays as it was; a failed write leaves no temporary file and is
    one LayoutError naming the path (`writing`).

    What `path` names is written, not replaced: through a link, its target (the link stays); a
    device, FIFO or terminal (`--json-out /dev/stdout`, which a rename would have turned, as
    root, into a regular file) is written into, as a stream, without the rename."""
    try:
        special = not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:  # nothing there (or a dangling link): a new file
        special = False
    if special and not path.is_dir():
        with writing(path), open(path, "wb") as f:
            f.write(data)
        return
    path = Path(os.path.realpath(path)) if path.is_symlink() else path
    ensure_dir(path.parent)
    tmp = tmp_path(path)
    with writing(path):
        fd = open_exclusive(tmp)
        try:
            _write_fd(fd, data)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def json_bytes(obj: object) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def write_json(path: Path, obj: object) -> None:
    write_atomic(path, json_bytes(obj))


def create_json(path: Path, obj: object) -> bool:
    """Write `path` only if nothing is there, atomically and exclusively (a hard link of a full
    temporary file: two processes racing to create it cannot both succeed); False if it was.
    Where the file system has no hard links (FAT, some FUSE mounts), an O_EXCL create of the
    name itself: still exclusive, its bytes written just after."""
    tmp, data = tmp_path(path), json_bytes(obj)
    with writing(path):
        try:
            _write_fd(open_exclusive(tmp), data)
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
        finally:
            tmp.unlink(missing_ok=True)
        try:
            fd = open_exclusive(path)
        except FileExistsError:
            return False
        try:
            _write_fd(fd, data)
        except BaseException:
            path.unlink(missing_ok=True)  # an empty claim would refuse this OUT for good
            raise
        return True


def _write_fd(fd: int, data: bytes) -> None:
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_json_if_changed(path: Path, obj: object) -> bool:
    """Write only if the bytes differ: a complete read-only OUT is re-runnable; True if written."""
    data = json_bytes(obj)
    try:
        if path.read_bytes() == data:
            return False
    except OSError:
        pass
    write_atomic(path, data)
    return True


def read_parquet(path: Path, schema_only: bool = False, **kw: object) -> object:
    """A Parquet table (or its schema) read through a Python file object: pyarrow encodes a path
    string as UTF-8, which fails on a name the filesystem encoding carried as surrogates (a
    non-UTF-8 locale and a non-ASCII OUT), where Python's own `open` does not."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with open(path, "rb") as f:  # the bytes through Python, parsed from memory
        sink = pa.BufferOutputStream()
        sink.write(f.read())
    # An Arrow-owned copy, not a view of the Python bytes: Arrow's IO threads may drop the last
    # reference to the buffer after the interpreter began to exit, and a buffer that refers to
    # a Python object must take the GIL to die, which at that point aborts the process
    # ("terminate called without an active exception", exit 134, after the work was done).
    buf = pa.BufferReader(sink.getvalue())
    return pq.read_schema(buf) if schema_only else pq.read_table(buf, use_threads=False, **kw)


def _load_json(path: Path, kind: type) -> object:
    try:
        obj = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise LayoutError(f"{path}: missing") from None
    except OSError as e:
        raise LayoutError(f"{path}: unreadable ({e.strerror})") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise LayoutError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(obj, kind):
        raise LayoutError(f"{path}: expected a JSON {kind.__name__}, found a {type(obj).__name__}")
    return obj


def read_json(path: Path) -> dict:
    """A JSON object from `path`; LayoutError (naming the file) if absent, garbage or not an object."""
    return _load_json(path, dict)


def read_json_list(path: Path) -> list:
    """A JSON list from `path` (classes.json); LayoutError as for `read_json`."""
    return _load_json(path, list)


def regular_file_problem(path: Path) -> str | None:
    """Why `path` is not a plain regular file (a link, missing, a FIFO ...), or None."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return f"unreadable ({e.strerror})"
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link (a shard file must be a regular file in OUT)"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    return None


def remove_stale_tmp(folder: Path) -> None:
    """Delete this host's temporary files whose writer process is gone (killed runs)."""
    host = _host()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for e in entries:
        if not (e.name.startswith(".") and e.name.endswith(TMP_SUFFIX)):
            continue
        fields = e.name[: -len(TMP_SUFFIX)].rsplit(".", 3)
        if len(fields) != 4 or fields[1] != host or not fields[2].isdigit():
            continue
        if not _alive(int(fields[2])):
            Path(e.path).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    """Whether `pid` runs; a zombie (killed, not yet reaped by its new parent) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


_HELD_LOCKS: set[int] = set()  # the fds of the NodeLocks this process holds


def _close_held_locks_in_child() -> None:
    """A forked child (a DataLoader or pool worker) closes its copies of the held locks' fds: a
    flock belongs to the open file, so an orphaned worker outliving a killed holder by seconds
    would still hold it and refuse the restart that follows at once."""
    for fd in _HELD_LOCKS:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCKS.clear()


os.register_at_fork(after_in_child=_close_held_locks_in_child)


def _holder(fd: int) -> str:
    """What a NodeLock's holder wrote into its file (`pid N on HOST`)."""
    return os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"


def writer_of(out: Path) -> str | None:
    """Who holds a NodeLock of `out` now (`pid N on HOST`), or None: asked without taking it (a
    shared flock fails while a writer holds its exclusive one), so a reader can say "being
    written" rather than send the user to start a second writer."""
    for path in sorted(out.glob(".alexprep-node*.lock")):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _holder(fd)
        finally:
            os.close(fd)  # also drops the shared lock, where it was taken
    return None


class NodeLock:
    """One writer per OUT and node: `flock` on OUT/.alexprep-node<R>.lock, released on exit or death.

    The holder writes `pid@host` into the file so the second writer's message says who holds it.
    flock is released by the kernel when the process dies (even kill -9), so a lock is never stale;
    forked children do not keep it (`_close_held_locks_in_child`), and O_CLOEXEC keeps it from
    anything the holder execs.
    """

    def __init__(
        self,
        out: Path,
        node_rank: int,
        name: str | None = None,
        who: str = "`alexprep shard`",
        what: str = "OUT (same node rank)",
    ):
        """`name`, `who`, `what`: another tool's lock file, and how its message names the two."""
        self.path = out / (name or f".alexprep-node{node_rank}.lock")
        self.who, self.what = who, what
        self.fd: int | None = None

    def __enter__(self) -> NodeLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise LayoutError(write_problem(self.path, e)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _holder(fd)
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise LayoutError(
                    f"{self.path.parent}: another {self.who} ({holder}) is writing this {self.what}; "
                    "wait for it to finish or stop it, then re-run"
                ) from None
            raise LayoutError(f"{self.path}: cannot lock ({e.strerror})") from None
        try:
            with writing(self.path):
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        except LayoutError:
            os.close(fd)
            raise
        self.fd = fd
        _HELD_LOCKS.add(fd)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd in _HELD_LOCKS:  # not in a forked child: its copy is closed, the number reusable
            _HELD_LOCKS.discard(self.fd)
            os.ftruncate(self.fd, 0)  # no holder; the file stays (unlinking a lock file races)
            os.close(self.fd)  # releases the flock
        self.fd = None
