"""What every training runs inside: torchrun's group, the run folder, the out-of-memory retry,
memory checks."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np

from MedTransferLib.core import distributed
from MedTransferLib.core.errors import MedTransferError
from MedTransferLib.training.checkpoints import STATE_DIR
from MedTransferLib.training.config import TrainConfig


def managed_run(run, config: TrainConfig, out, reporter, resume: bool):
    """What every training (segmentation or classification) runs inside: torchrun's process group
    if there is one; the run folder checked, locked and labelled by rank 0 (rundir); ``run(config,
    resume)``, and with ``config.oom_retry`` again with half the batch (down to 1) after an
    out-of-memory batch, saying so — as a new run, not resumed; the training state removed once
    the package is written."""
    import contextlib

    from MedTransferLib.core.errors import OutOfMemory
    from MedTransferLib.core.rundir import run_directory

    distributed.init()
    if distributed.active() and resume:
        raise MedTransferError("--resume continues a run with one process; resuming a torchrun run "
                               "(several samplers' states) is not supported — start it again")
    with run_directory(out) if distributed.is_main() else contextlib.nullcontext():
        while True:
            try:
                result = run(config, resume)
                break
            except OutOfMemory as exc:
                if not config.oom_retry or exc.batch <= 1:
                    raise
                half = max(1, exc.batch // 2)
                if reporter is not None:
                    reporter.emit("note", message=f"out of memory at batch {exc.batch}: starting again with "
                                                  f"--batch-size {half} (--oom-retry)")
                shutil.rmtree(Path(out) / STATE_DIR, ignore_errors=True)   # another batch size: a new run
                config, resume = replace(config, batch_size=half), False
    if distributed.is_main():
        shutil.rmtree(Path(out) / STATE_DIR, ignore_errors=True)   # finished: the package is the result
    return result


def available_memory_mb(meminfo: str = "/proc/meminfo", cgroup: str = "/sys/fs/cgroup") -> float | None:
    """Memory this process may still use: ``MEDTRANSFER_MEMORY_LIMIT_MB`` if set (a cap the user
    chooses, e.g. on a shared workstation), else the system's available memory (Linux), else None.
    (``meminfo`` and ``cgroup`` are where Linux keeps the figures; tests point them elsewhere.)"""
    cap = os.environ.get("MEDTRANSFER_MEMORY_LIMIT_MB")
    if cap:
        try:
            return float(cap)
        except ValueError:
            raise MedTransferError(f"MEDTRANSFER_MEMORY_LIMIT_MB={cap!r} is not a number of MB") from None
    # Linux: MemAvailable (free memory plus what the page cache would give back — "free" alone
    # is near zero on any machine that has read files), within a cgroup's limit if there is one
    try:
        text = Path(meminfo).read_text()
    except OSError:
        return None   # not Linux: no reliable figure, no check
    avail = next((int(line.split()[1]) / 1024 for line in text.splitlines()
                  if line.startswith("MemAvailable:")), None)
    try:
        limit = (Path(cgroup) / "memory.max").read_text().strip()
        used = int((Path(cgroup) / "memory.current").read_text().strip())
        if limit != "max" and avail is not None:
            avail = min(avail, (int(limit) - used) / 2**20)
    except (OSError, ValueError):
        pass
    return avail


def check_memory(cases, config) -> None:
    """Refuse before any work when the cached training arrays (float32 images + label maps) and
    the largest batch cannot fit, naming the numbers and what to lower."""
    _check_memory(sum(int(np.prod(c.image.shape)) for c in cases),
                  sum(int(np.prod(c.label.shape)) for c in cases if c.label is not None),
                  len(cases), cases[0].channels, config)


def check_datalist_memory(datalist, config) -> None:
    """:func:`check_memory` from the files' headers, before any volume is read: a datalist too
    large to hold (the Decathlon's 484 four-channel brain MRIs need ~100 GB) is refused with
    the numbers instead of filling the memory while it is read."""
    voxels, label_voxels, channels = datalist.stored_voxels()
    if voxels:
        _check_memory(voxels, label_voxels, len(datalist.training), channels, config)


def _check_memory(voxels: int, label_voxels: int, n_cases: int, channels: int, config) -> None:
    avail = available_memory_mb()
    if avail is None:
        return
    cache_mb = (4 * voxels + label_voxels) / 2**20
    patch = config.patch or (128 if config.mode == "3d" else 256)
    batch = config.batch_size or 2
    spatial = patch ** 3 if config.mode == "3d" else patch ** 2
    # activations of encoder + decoder kept for backpropagation: ~200 floats per input value
    batch_mb = batch * channels * (1 if config.mode == "3d" else config.slices) * spatial * 4 * 200 / 2**20
    need = cache_mb * 1.5 + batch_mb       # standardisation makes one transient copy per case
    if need > avail:
        raise MedTransferError(
            f"training needs about {need:.0f} MB ({cache_mb:.0f} MB of cached volumes for {n_cases} case(s), "
            f"{batch_mb:.0f} MB for a batch of {batch} at patch {patch}) but only {avail:.0f} MB are available; "
            f"use fewer or cropped volumes, a smaller --batch-size or --patch, or --mode 2.5d")
