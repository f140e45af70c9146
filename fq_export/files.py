"""Output files written safely: atomic replacement, umask permissions, temporaries beside the output.

Every temporary fq-export makes lives in the folder of the file it becomes (so a rename replaces
the output atomically and nothing lands in the system's temporary directory) and is named
``.fq-export-tmp-<pid>-<random>``: unique per process and call, and recognisable afterwards.
They are removed on every exit path that runs ``finally`` blocks (the command line turns
SIGINT and SIGTERM into exceptions); after a SIGKILL, :func:`clean_stale_temporaries` (run by the
command line on each output folder before it starts) removes those whose process is gone.

This is a core module: it imports nothing else of fq-export.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path

TEMP_PREFIX = ".fq-export-tmp-"
_TEMP_NAME = re.compile(re.escape(TEMP_PREFIX) + r"(\d+)-")


def current_umask() -> int:
    """The process umask, read without changing it where the system allows (Linux: /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: read it by setting it, and put it back at once
    os.umask(mask)
    return mask


def output_mode() -> int:
    """The mode a new regular file gets from ``open()`` under the current umask."""
    return 0o666 & ~current_umask()


def temp_name(folder: str | os.PathLike, suffix: str = "") -> Path:
    """A new, empty, uniquely named temporary file in ``folder`` (the caller removes it)."""
    fd, name = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", suffix=suffix, dir=folder)
    os.close(fd)
    return Path(name)


@contextlib.contextmanager
def temporary_file(folder: str | os.PathLike, suffix: str = ""):
    """A temporary file path in ``folder``, removed when the block exits (however it exits)."""
    path = temp_name(folder, suffix)
    try:
        yield path
    finally:
        remove(path)


@contextlib.contextmanager
def temporary_dir(folder: str | os.PathLike):
    """A temporary folder in ``folder``, removed with its contents when the block exits."""
    path = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", dir=folder))
    try:
        yield path
    finally:
        remove(path)


def remove(path: str | os.PathLike) -> None:
    """Remove a file or folder if it exists; never raises."""
    path = Path(path)
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


def finish(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Give ``tmp`` the umask's mode and rename it onto ``path`` (atomic within a folder)."""
    os.chmod(tmp, output_mode())
    os.replace(tmp, path)


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``, so no half-written file is left.

    The file gets the mode ``open()`` would give it under the umask (``0o666 & ~umask``), also
    when it replaces an existing file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path.parent, suffix=path.suffix)
    try:
        write(str(tmp))
        finish(tmp, path)
    finally:
        remove(tmp)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except OSError:
        return False
    return True


def clean_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporaries in ``folder`` left by fq-export processes that no longer run."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match and int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1))):
            remove(entry)
            removed.append(entry)
    return removed


def remove_own_temporaries(folders) -> None:
    """Remove this process's temporaries from ``folders``: the last step of an interrupted run, which
    also catches one that a signal left between its creation and its ``try`` block."""
    prefix = f"{TEMP_PREFIX}{os.getpid()}-"
    for folder in {Path(f) for f in folders}:
        try:
            for path in folder.iterdir():
                if path.name.startswith(prefix):
                    remove(path)
        except OSError:
            pass
