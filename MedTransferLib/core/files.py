"""Atomic writes: an output either appears complete or not at all."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from MedTransferLib.core.errors import MedTransferError


def _mode(kind: int, existing: Path) -> int:
    """The permissions a plain ``open``/``mkdir`` would give (``kind`` 0o666 or 0o777 less the
    umask), or those of the file being replaced: ``mkstemp``/``mkdtemp`` make private 0o600/0o700
    ones, and an output others on the machine could read before must stay readable."""
    try:
        return existing.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0o022)   # it can only be read by setting it (a common value, for an instant)
        os.umask(umask)
        return kind & ~umask


def _unwritable(path: Path, exc: OSError) -> MedTransferError:
    return MedTransferError(f"cannot write '{path}' ({exc.strerror or exc}); choose a folder you can write to")


def make_folder(path) -> Path:
    """``path`` as a folder (made with its parents), or an error naming it and why it cannot be."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise MedTransferError(f"'{path}' is a file, not a folder; choose a folder to write to")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _unwritable(path, exc) from None
    return path


@contextlib.contextmanager
def atomic_path(path, suffix_from_name: bool = True):
    """Yield a temporary path beside ``path``; on success move it into place in one step, with the
    permissions a new file gets (or the replaced file's).

    The temporary name keeps the full suffix (``.nii.gz``) so writers pick the right format.
    """
    path = Path(path)
    suffix = "".join(path.suffixes) if suffix_from_name else ""
    make_folder(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}-", suffix=suffix, dir=path.parent)
    except OSError as exc:
        raise _unwritable(path, exc) from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _mode(0o666, path))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def check_outputs(outputs: dict, inputs: dict) -> None:
    """Refuse, before any work, an output file that is one of the inputs or another output:
    ``outputs`` and ``inputs`` map an option name to a path, a list of paths or None."""
    def paths(named: dict):
        for name, value in named.items():
            for p in ([] if value is None else [value] if isinstance(value, (str, Path)) else value):
                yield name, Path(p)

    def same(a: Path, b: Path) -> bool:
        try:
            return os.path.samefile(a, b)
        except OSError:   # one does not exist yet
            return a.resolve() == b.resolve()

    given, seen = list(paths(inputs)), []
    for name, out in paths(outputs):
        for role, pool in (("input", given), ("output", seen)):
            for other, p in pool:
                if same(out, p):
                    raise MedTransferError(f"{name} '{out}' is the same file as the {role} {other} '{p}'; "
                                           f"write to another file name" + (" (inputs are never overwritten)"
                                                                            if role == "input" else ""))
        seen.append((name, out))


def sha256_file(path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_csv(path, rows: list[dict]) -> None:
    """Write dict rows as CSV (columns in first-seen order), atomically."""
    import csv
    import io

    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    write_text(path, buf.getvalue())


def replace_dir(tmp_dir, final_dir) -> None:
    """Move a fully written directory into place; an older one is kept until the move succeeds."""
    final_dir, tmp_dir = Path(final_dir), Path(tmp_dir)
    if final_dir.exists():
        old = final_dir.with_name(final_dir.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final_dir, old)
        os.replace(tmp_dir, final_dir)
        shutil.rmtree(old)
    else:
        os.replace(tmp_dir, final_dir)


@contextlib.contextmanager
def atomic_dir(path):
    """Yield a new temporary directory beside ``path``; when the block ends without an error,
    it replaces ``path`` (:func:`replace_dir`), else it is removed and ``path`` is untouched."""
    path = Path(path)
    make_folder(path.parent)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    except OSError as exc:
        raise _unwritable(path, exc) from None
    try:
        yield tmp
        os.chmod(tmp, _mode(0o777, path))
        replace_dir(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
