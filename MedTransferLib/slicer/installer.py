"""Installing MedTransfer's Python dependencies inside Slicer: one declinable dialog, nothing
replaced that Slicer or its PyTorch extension installed.

- **torch / torchvision** through the PyTorch extension (``PyTorchUtils``: it chooses the build
  for the GPU and driver). Without that extension the user gets one sentence: install it from
  the Extensions Manager. An installed torch is never replaced; one that is too old is named,
  with where to update it.
- **the rest** through ``slicer.packaging.pip_ensure`` (Slicer 5.11+) or ``slicer.util.pip_install``
  (older Slicer), after checking the version specifiers, always with a pip *constraints* file
  pinning torch, torchvision, numpy and SimpleITK to the versions installed now.
- **offline**: :meth:`Installer.install_from_folder` installs from a wheelhouse made by
  ``medtransfer wheelhouse`` (no index contacted) and copies its weights into the torch hub cache.
- **never in testing mode**: Slicer's confirm dialogs answer "yes" by themselves when testing,
  so the self-test would otherwise install silently; it gets an error naming what is missing.

Nothing here imports torch or Qt; dialogs go through ``slicer.util``.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

from MedTransferLib.core import environment
from MedTransferLib.core.errors import MedTransferError
from MedTransferLib.system import wheelhouse

PYTORCH_EXTENSION_MISSING = ("MedTransfer needs PyTorch, which Slicer installs through the PyTorch extension: "
                             "install 'PyTorch' from the Extensions Manager, restart Slicer, then press Install "
                             "here.")


def _slicer():
    import slicer
    import slicer.util  # noqa: F401  (slicer-core and Slicer both provide it)

    return slicer


def _packaging():
    """``slicer.packaging`` where the Slicer has it (5.11+), else None."""
    try:
        import slicer.packaging as packaging
    except ImportError:
        return None
    return packaging if hasattr(packaging, "pip_ensure") else None


def _pytorch_utils():
    try:
        import PyTorchUtils
    except ImportError:
        return None
    return PyTorchUtils


def _testing() -> bool:
    slicer = _slicer()
    app = getattr(slicer, "app", None)
    return bool(app is not None and app.testingEnabled())


@dataclass
class Plan:
    torch: list = field(default_factory=list)   # Needs the PyTorch extension installs
    pip: list = field(default_factory=list)     # Needs pip installs
    blocker: str | None = None                  # why nothing can be installed from here

    @property
    def needed(self) -> bool:
        return bool(self.torch or self.pip)

    def lines(self) -> list[str]:
        return ([f"{n.describe()} — through the PyTorch extension" for n in self.torch]
                + [f"{n.describe()} — from PyPI" for n in self.pip])


class Installer:
    def __init__(self, version_of=None):
        self.version_of = version_of or environment.installed_version

    def plan(self) -> Plan:
        missing = environment.missing(self.version_of)
        plan = Plan([n for n in missing if n.via == "PyTorch extension"], [n for n in missing if n.via == "pip"])
        old = [n for n in plan.torch if n.installed is not None]
        if old:
            plan.blocker = (f"{', '.join(n.describe() for n in old)}: update PyTorch in the PyTorch Utils module "
                            f"(Uninstall, restart Slicer, Install); MedTransfer never replaces it itself.")
        elif plan.torch and _pytorch_utils() is None:
            plan.blocker = PYTORCH_EXTENSION_MISSING
        return plan

    def status(self) -> str:
        """One line for the panel: ready, or what is missing and what to press."""
        plan = self.plan()
        if not plan.needed:
            return "Dependencies installed."
        names = ", ".join(n.name for n in plan.torch + plan.pip)
        if plan.blocker:
            return f"Missing: {names}. {plan.blocker}"
        return f"Missing: {names}. Press Install (one download, a few minutes; you can decline)."

    def constraints_file(self) -> str:
        fd, path = tempfile.mkstemp(prefix="medtransfer-constraints-", suffix=".txt")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(environment.constraints_text(self.version_of))
        return path

    def _confirm(self, plan: Plan, where: str) -> bool:
        slicer = _slicer()
        return slicer.util.confirmOkCancelDisplay(
            f"MedTransfer needs {len(plan.torch) + len(plan.pip)} Python package(s), installed {where} "
            f"into Slicer's Python (torch, torchvision, numpy and SimpleITK already there are kept). Continue?",
            "MedTransfer - install Python packages", detailedText="\n".join(plan.lines()))

    def install(self, ask: bool = True, cpu_only: bool = False) -> bool:
        """Install what is missing; False if the user declined. Raises with a sentence a user can
        act on when it cannot (no PyTorch extension, testing mode, a failed install)."""
        plan = self.plan()
        if not plan.needed:
            return True
        if plan.blocker:
            raise MedTransferError(plan.blocker)
        if _testing():
            raise MedTransferError("Slicer is in testing mode: MedTransfer installs nothing by itself. Missing: "
                                   + "; ".join(plan.lines()))
        if ask and not self._confirm(plan, "from the internet"):
            return False
        if plan.torch:
            logic = _pytorch_utils().PyTorchUtilsLogic()
            torch = logic.installTorch(askConfirmation=False, forceComputationBackend="cpu" if cpu_only else None,
                                       torchVersionRequirement=">=2.0", torchvisionVersionRequirement=">=0.15")
            if torch is None:
                raise MedTransferError("PyTorch was not installed (see the Python console); try again from the "
                                       "PyTorch Utils module")
        if plan.pip:
            self._pip([n.requirement for n in plan.pip])
        return True

    def _pip(self, args: list[str], constraints: str | None = None) -> None:
        slicer = _slicer()
        constraints = constraints or self.constraints_file()
        try:
            packaging = _packaging()
            if packaging is not None and not any(a.startswith("-") for a in args):
                packaging.pip_ensure(args, constraints=constraints, prompt_install=False, requester="MedTransfer")
            elif packaging is not None:
                packaging.pip_install(args, constraints=constraints, requester="MedTransfer")
            else:   # Slicer ≤ 5.10: a list of pip arguments, with the constraints
                slicer.util.pip_install(["-c", constraints, *args])
        finally:
            try:
                os.remove(constraints)
            except OSError:
                pass

    def install_from_folder(self, folder, ask: bool = True) -> list[str]:
        """Offline install from a wheelhouse folder; returns the weight files copied. Raises if the
        folder lacks something needed."""
        manifest = wheelhouse.read_manifest(folder)
        plan = self.plan()
        if plan.torch and any(n.installed for n in plan.torch):
            raise MedTransferError(plan.blocker)
        has_torch = any(w.lower().startswith("torch-") for w in manifest.get("wheels", []))
        if plan.torch and not has_torch:
            raise MedTransferError(f"'{folder}' holds no torch wheels (made with --torch none) and torch is not "
                                   f"installed: make the wheelhouse with --torch cpu (or a CUDA build)")
        if plan.needed:
            if _testing():
                raise MedTransferError("Slicer is in testing mode: MedTransfer installs nothing by itself")
            if ask and not self._confirm(plan, f"from '{folder}' (no internet needed)"):
                return []
            requirements = [n.requirement for n in plan.torch + plan.pip]
            # torch itself is being installed: pin only what is there (numpy, SimpleITK)
            self._pip(["--no-index", "--find-links", os.path.join(str(folder), "wheels"), *requirements])
        return wheelhouse.copy_weights(folder)
