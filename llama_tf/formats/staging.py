"""Writing a checkpoint atomically as a whole, privately to its writer.

`staged_folder(directory)` gives an empty folder beside `directory` to write into; when the block ends
without an error, that folder takes `directory`'s place in one step (Linux's atomic exchange, else two
renames), so a kill at any moment leaves the old checkpoint or the new one, never a mix: never an old
index beside new weights. The weights and their configuration are replaced together; every other file
in `directory` (a tokenizer the new checkpoint does not write, a training log, plots) is carried over as a
hard link. `staged_file(path)` does the same for one file (a GGUF). Each stage is named after its writer's
process and made by it alone, so two writers never write into one stage; the last to finish installs
its whole output. A stage left behind by a killed writer is removed by the next one. A write that fails
for want of space says that the disk is full.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["staged_folder", "staged_file"]

# The weights and the configuration they were written with: replaced together, so that an old shard or
# index never sits beside new weights. Any other file is kept unless the new checkpoint writes one.
WEIGHTS_FILE = re.compile(r"config\.json|params\.json|.*\.safetensors|model\.safetensors\.index\.json|"
                          r"consolidated\.\d+\.pth")


@contextmanager
def staged_folder(directory: Path, error: type[Exception] = ValueError) -> Iterator[Path]:
    "A new folder to write the checkpoint into; it replaces `directory` when the block succeeds."
    if directory.exists() and not directory.is_dir():
        raise error(f"{directory} exists and is not a folder")
    directory.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(directory)
    stage = directory.parent / f".{directory.name}.partial-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        with _write_errors(directory, error):
            yield stage
        _as_created_by_user(stage)
        if directory.is_dir():
            for other in directory.iterdir():
                if not WEIGHTS_FILE.fullmatch(other.name) and not (stage / other.name).exists():
                    if other.is_dir():
                        shutil.copytree(other, stage / other.name, copy_function=_link_or_copy)
                    else:
                        _link_or_copy(other, stage / other.name)
        _put_in_place(stage, directory)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@contextmanager
def staged_file(path: Path, error: type[Exception] = ValueError) -> Iterator[Path]:
    "A new file beside `path`, this writer's alone, to write; it replaces `path` when the block succeeds."
    if path.is_dir():
        raise error(f"{path} is a folder")
    if path.parent.exists() and not path.parent.is_dir():
        raise error(f"{path.parent} exists and is not a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(path)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.partial-{os.getpid()}-")
    os.close(handle)
    stage = Path(name)
    try:
        with _write_errors(path, error):
            yield stage
        _as_created_by_user(stage)
        os.replace(stage, path)
    finally:
        stage.unlink(missing_ok=True)


@contextmanager
def _write_errors(target: Path, error: type[Exception]) -> Iterator[None]:
    """A writer's failure for want of space, said in words: the writers' own messages ("147456 requested
    and 74424 written", safetensors' SafetensorError) do not say it."""
    try:
        yield
    except Exception as e:
        if not isinstance(e, OSError) and type(e).__name__ != "SafetensorError":
            raise
        free = shutil.disk_usage(target.parent).free
        if free < 1 << 20 or getattr(e, "errno", None) == errno.ENOSPC:
            raise error(f"cannot write {target}: the disk is full ({free:,} bytes free); nothing was "
                        "replaced") from None
        if isinstance(e, OSError):
            raise
        raise error(f"cannot write {target}: {e}; nothing was replaced") from None


def _as_created_by_user(stage: Path) -> None:
    """The permissions any file the user creates gets (0666 less the umask): some writers (safetensors',
    mkstemp) create their files readable by the owner only."""
    mask = os.umask(0)
    os.umask(mask)
    for path in [stage] if stage.is_file() else stage.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~mask)


def _remove_abandoned(directory: Path) -> None:
    """Folders of writers that no longer run (killed mid-write): a stage `.NAME.partial-PID` is removed;
    an old checkpoint `.NAME.old-PID` (only where folders cannot be exchanged atomically) is put back if
    the kill came between its two renames, else removed."""
    pattern = re.compile(rf"\.{re.escape(directory.name)}\.(partial|old)-(\d+)(-\w+)?")
    for entry in directory.parent.iterdir():
        match = pattern.fullmatch(entry.name)
        if not match or _running(int(match[2])):
            continue
        if match[1] == "old" and not directory.exists():
            os.rename(entry, directory)
        elif entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return pid > 0   # someone else's process: leave its stage alone
    return True


def _link_or_copy(source, target) -> None:
    "A hard link (the same file: a log still being appended to stays one file), else a copy."
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _put_in_place(stage: Path, directory: Path) -> None:
    "`stage` becomes `directory` in one step; the old folder, if any, is removed afterwards."
    if not directory.exists():
        os.rename(stage, directory)
        return
    if _exchange(stage, directory):        # now `stage` holds the old checkpoint
        shutil.rmtree(stage)
        return
    old = directory.parent / f".{directory.name}.old-{os.getpid()}"   # no atomic exchange: two renames
    os.rename(directory, old)
    os.rename(stage, directory)
    shutil.rmtree(old)


def _exchange(a: Path, b: Path) -> bool:
    "Swap two folders atomically (Linux renameat2 with RENAME_EXCHANGE); False where that is not available."
    import ctypes
    import sys

    if sys.platform != "linux":
        return False
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0
