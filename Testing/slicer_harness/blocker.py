"""A pytest plugin (``-p slicer_harness.blocker``) for the fresh-install scenario: from the first
line of the test process on, importing any of ``MEDTRANSFER_BLOCK`` (comma-separated top-level
names, e.g. torch,torchvision,monai) raises ModuleNotFoundError, as on a Slicer where they were
never installed. Child processes the module starts are not affected (they get the real ones:
the 'installed' state after Install)."""

from __future__ import annotations

import os
import sys

BLOCKED = {n.strip() for n in os.environ.get("MEDTRANSFER_BLOCK", "").split(",") if n.strip()}
ATTEMPTS: list[str] = []


class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            import traceback

            caller = [f for f in traceback.extract_stack()[:-1] if "importlib" not in f.filename][-1]
            ATTEMPTS.append(f"{name} ({caller.filename}:{caller.lineno})")
            raise ModuleNotFoundError(f"No module named '{name}' (blocked: not installed in this Slicer)", name=name)
        return None


if BLOCKED:
    already = sorted(n for n in sys.modules if n.split(".")[0] in BLOCKED)
    if already:
        raise RuntimeError(f"imported before the blocker: {already}")
    sys.meta_path.insert(0, _Blocker())
