"""File helpers every layer uses: content hashes and the write-then-rename that leaves no half-written file.

The bottom of the package: it imports nothing of advsweep, and everything that writes a result, a cache
entry or a model folder goes through :func:`write_atomic`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_arrays(arrays: Iterable[np.ndarray]) -> str:
    """Hex sha256 over the C-contiguous bytes of several arrays fed in order."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def umask_mode(mode: int = 0o666) -> int:
    """``mode`` as the user's umask leaves it: what ``open()`` would give a new file (or, with 0o777, a folder).

    Temporary files are created 0600 and folders 0700; results renamed into place get this mode instead,
    so that a co-author on the same machine can read them as they could any other new file.
    """
    current = os.umask(0o022)
    os.umask(current)
    return mode & ~current


def write_atomic(path: Path, write: Any, *, suffix: str = "") -> Path:
    """Call ``write(temporary_path)``, then rename the file to ``path``; nothing is left on failure.

    The file gets the mode the user's umask gives a new file (not the temporary file's 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=suffix or path.suffix,
                                         delete=False)
    handle.close()
    try:
        write(Path(handle.name))
        with open(handle.name, "rb") as written:  # on disk before the rename makes it visible
            os.fsync(written.fileno())
        os.chmod(handle.name, umask_mode())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    return path
