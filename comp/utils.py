"""Small shared helpers: atomic writes, seeding, progress bars, hashing."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np


class CompError(Exception):
    """A user-facing error: printed as one line by the CLI, never as a traceback."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it over `path` only if the block succeeds.

    Readers therefore never see a partial file, even after kill -9.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs should read like any file
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write text atomically (utf-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically, pretty-printed, non-ASCII kept readable."""
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Save a numpy array atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (if imported) for reproducible CPU runs."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    if "torch" in sys.modules:
        import torch

        torch.manual_seed(seed)


def progress(iterable: Iterable, desc: str = "", total: int | None = None, **kw: Any):
    """A tqdm progress bar on stderr; quiet when COMP_QUIET=1 or stderr is not a terminal in CI."""
    from tqdm.auto import tqdm

    disable = os.environ.get("COMP_QUIET") == "1"
    return tqdm(iterable, desc=desc, total=total, disable=disable, leave=False,
                dynamic_ncols=True, **kw)


def code_points(texts: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
    """Every character of the texts as one int64 code-point array, and each text's length.

    Returns:
        (cps (sum of lengths,), lens (n_texts,)); text i is cps[start_i:start_i + lens[i]]
        with start = cumsum(lens) - lens.
    """
    texts = list(texts)
    lens = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    cps = np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
    return cps, lens


def sha1_of(items: Iterable[str]) -> str:
    """A short stable fingerprint of a sequence of strings."""
    h = hashlib.sha1()
    for s in items:
        h.update(s.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:16]


def log(msg: str) -> None:
    """Print a progress line to stderr (stdout stays clean for results)."""
    print(msg, file=sys.stderr, flush=True)
