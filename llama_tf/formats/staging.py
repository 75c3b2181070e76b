"""Writing a checkpoint folder atomically as a whole.

`staged_folder(directory)` gives an empty folder beside `directory` to write into; when the block ends
without an error, that folder takes `directory`'s place in one step (Linux's atomic exchange, else two
renames), so a kill at any moment leaves the old checkpoint or the new one, never a mix: never an old
index beside new weights. Files in `directory` that are not part of a checkpoint (a training log,
plots) are carried over as hard links. A stage left behind by a killed writer is removed by the next one.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["staged_folder"]

# Files that make up a checkpoint: replaced together. Anything else in the folder is kept.
CHECKPOINT_FILE = re.compile(r"config\.json|params\.json|generation_config\.json|.*\.safetensors|"
                             r"model\.safetensors\.index\.json|consolidated\.\d+\.pth|tokenizer\.(model|json|bin)|"
                             r"tokenizer_config\.json|special_tokens_map\.json")


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
        yield stage
        _as_created_by_user(stage)
        if directory.is_dir():
            for other in directory.iterdir():
                if not CHECKPOINT_FILE.fullmatch(other.name) and not (stage / other.name).exists():
                    if other.is_dir():
                        shutil.copytree(other, stage / other.name, copy_function=_link_or_copy)
                    else:
                        _link_or_copy(other, stage / other.name)
        _put_in_place(stage, directory)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _as_created_by_user(stage: Path) -> None:
    """The permissions any file the user creates gets (0666 less the umask): some writers (safetensors')
    create their files readable by the owner only."""
    mask = os.umask(0)
    os.umask(mask)
    for path in stage.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~mask)


def _remove_abandoned(directory: Path) -> None:
    """Folders of writers that no longer run (killed mid-write): a stage `.NAME.partial-PID` is removed;
    an old checkpoint `.NAME.old-PID` (only where folders cannot be exchanged atomically) is put back if
    the kill came between its two renames, else removed."""
    pattern = re.compile(rf"\.{re.escape(directory.name)}\.(partial|old)-(\d+)")
    for entry in directory.parent.iterdir():
        match = pattern.fullmatch(entry.name)
        if not match or not entry.is_dir() or _running(int(match[2])):
            continue
        if match[1] == "old" and not directory.exists():
            os.rename(entry, directory)
        else:
            shutil.rmtree(entry, ignore_errors=True)


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
