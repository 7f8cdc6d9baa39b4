"""Small shared helpers: atomic writes, seeding, progress bars, hashing, logging."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
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
    """A tqdm progress bar on stderr, drawn only on a terminal: redirected to a file or pipe,
    its redraws would fill the log with `\\r` frames. Off as well under COMP_QUIET=1 and
    `comp --quiet`. A bar that does not draw still iterates and takes `set_postfix`."""
    from tqdm.auto import tqdm

    quiet = os.environ.get("COMP_QUIET") == "1" or not LOGGER.isEnabledFor(logging.INFO)
    # disable=None: tqdm's own "off unless the output is a TTY"
    return tqdm(iterable, desc=desc, total=total, disable=True if quiet else None, leave=False,
                dynamic_ncols=True, **kw)


@functools.cache
def jieba_module() -> Any:
    """jieba, its dictionary-loading chatter silenced once (setting the level on every call
    costs a tenth of a segmentation: it clears the logging module's caches)."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    return jieba


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


def file_sha256(path: str | os.PathLike) -> str:
    """A file's sha256, hashed once per (path, size, modification time) in a process."""
    st = os.stat(path)
    return _file_sha256(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def sha1_of(items: Iterable[str]) -> str:
    """A short stable fingerprint of a sequence of strings."""
    h = hashlib.sha1()
    for s in items:
        h.update(s.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:16]


class _StderrHandler(logging.StreamHandler):
    """Writes each record to the sys.stderr of that moment, not of the handler's creation, so
    that pytest's capsys and contextlib.redirect_stderr see the lines as they did print's."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


# The toolkit's progress and warning lines: the bare message on stderr (stdout stays clean for
# results), INFO for progress and WARNING for "warning: ..." lines, so `comp --quiet` (level
# WARNING) keeps only the latter. Not propagated: a root handler set up by the embedding program
# would print every line a second time.
LOGGER = logging.getLogger("comp")
if not LOGGER.handlers:
    _handler = _StderrHandler()
    _handler.setFormatter(logging.Formatter("%(message)s"))
    LOGGER.addHandler(_handler)
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False


def log(msg: str, level: int | None = None) -> None:
    """Log a line to stderr through the "comp" logger.

    Args:
        msg: the line, shown as it is.
        level: a logging level; default WARNING when `msg` starts with "warning", else INFO.
    """
    if level is None:
        level = logging.WARNING if msg.startswith("warning") else logging.INFO
    LOGGER.log(level, msg)


# Pickled models (vectorizers, classifiers, blenders) name the module their classes and
# functions were defined in. Modules that moved when comp was split into layer packages, old
# name -> new: `load_model` aliases them, so runs and bundles made before still load.
MOVED_MODULES = {"comp.linear": "comp.members.linear", "comp.bias": "comp.blend.bias",
                 "comp.thresholds": "comp.tasks.thresholds", "comp.metrics": "comp.core.metrics",
                 "comp.utils": "comp.core.utils", "comp.vectors": "comp.nn.vectors",
                 "comp.ensemble": "comp.blend.ensemble", "comp.distill": "comp.members.student"}


def load_model(path: str | os.PathLike) -> Any:
    """joblib.load, with the modules of MOVED_MODULES reachable under their old names (the
    old `comp.blend` module is the package's `blenders`: comp.blend forwards its names)."""
    import importlib

    import joblib

    for old, new in MOVED_MODULES.items():
        if old not in sys.modules:
            sys.modules[old] = importlib.import_module(new)
    return joblib.load(path)


def save_model(path: Path, model: Any) -> None:
    """joblib.dump, atomically (a half-written model must never be loaded)."""
    import joblib


    with atomic_path(path) as tmp:
        joblib.dump(model, tmp)
