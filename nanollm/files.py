"""Reading and writing files so that nothing hangs and nothing is lost: the one place nanollm touches the disk.

Reading. A model folder is input from the world, and not every name in it is a file: `open()` on a FIFO waits
forever for a writer, `/dev/zero` never ends, a socket cannot be read at all. So every file nanollm reads is opened
non-blocking and checked with fstat (on the open descriptor, so nothing can be swapped in between) before a byte is
read: anything but a regular file is a FileError at once, naming the file and what it is.

Writing. A file is never written in place. The bytes go to a temporary file beside the target (same directory, so
same filesystem), are flushed to disk, and only then renamed onto the target with `os.replace`, which is atomic: a
reader, or a crash, sees the old file or the whole new one, never half of either. If anything fails on the way, the
temporary file is removed and the target is untouched. A target that is one of the command's own inputs
(`export m.bin m.bin`) is refused before anything is opened: even an atomic write would replace the input the
output is being made from.
"""
from __future__ import annotations

import errno
import os
import secrets
import stat
from contextlib import contextmanager
from pathlib import Path

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


class FileError(OSError):
    """A file nanollm cannot use as it is: not a regular file, not UTF-8, or an output that would overwrite an input.
    An OSError, so every caller that reports unreadable files reports these too; the message names the file."""

    def __str__(self) -> str:
        return self.args[0]


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def open_regular(path) -> object:
    """Open `path` for reading bytes, refusing at once anything that is not a regular file.

    O_NONBLOCK makes the open itself return at once for a FIFO with no writer (a plain open would wait forever);
    fstat then says what was opened, and the flag is cleared again so reads of a regular file behave as usual.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        if err.errno == errno.ENXIO and not stat.S_ISREG(os.stat(path).st_mode):  # a socket cannot even be opened
            raise FileError(f"{path} is {_kind(os.stat(path).st_mode)}, not a regular file") from None
        if err.filename is None:
            err.filename = str(path)
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise FileError(f"{path} is {_kind(mode)}, not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_bytes(path) -> bytes:
    """The whole content of a regular file."""
    with open_regular(path) as f:
        return f.read()


def read_text(path) -> str:
    """The content of a regular file as UTF-8 text; other bytes are a FileError naming the file and the offset."""
    data = read_bytes(path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise FileError(f"{path} is not UTF-8 text (byte {data[err.start]:#04x} at offset {err.start})") from None


def refuse_overwriting_inputs(target, inputs) -> None:
    """Raise FileError if `target` is one of `inputs`, by identity on disk (a symlink or ./m.bin vs m.bin count)."""
    target = Path(target)
    for source in inputs:
        source = Path(source)
        if target.exists() and source.exists() and os.path.samefile(target, source):
            raise FileError(f"refusing to write {target}: it is the input {source} (write the output elsewhere)")


@contextmanager
def atomic_write(path, *, inputs=()):
    """`with atomic_write(path) as f: f.write(...)`: f is a binary file that becomes `path` only when the block ends
    without an exception (see the module docstring). `inputs`: paths this output is made from, refused as targets.
    The new file gets the usual permissions (0666 less the umask), as a plain open() would give it."""
    path = Path(path)
    refuse_overwriting_inputs(path, inputs)
    if path.is_dir():
        raise FileError(f"refusing to write {path}: it is a directory")
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as err:  # name the file the user asked for, not our temporary name
        raise FileError(f"cannot write {path}: {err.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_bytes(path, data: bytes, *, inputs=()) -> None:
    """Write `data` to `path` atomically (see `atomic_write`)."""
    with atomic_write(path, inputs=inputs) as f:
        f.write(data)


def write_text(path, text: str, *, inputs=()) -> None:
    """Write `text` as UTF-8 to `path` atomically."""
    write_bytes(path, text.encode("utf-8"), inputs=inputs)
