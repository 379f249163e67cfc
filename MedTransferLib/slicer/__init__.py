"""The Slicer side of MedTransfer: everything the scripted module (``MedTransfer/MedTransfer.py``)
wires together, in small files.

- :mod:`.tasks` — a background task: a child process (:mod:`..runner`) plus what to load into the
  scene when it ends;
- :mod:`.logic` — the console API and the panel's engine (no Qt; nothing here imports torch:
  every torch-using step runs in a child process);
- :mod:`.installer` — what is missing, and one declinable Install (PyTorch extension + pip with
  constraints), online or from a wheelhouse folder;
- :mod:`.panel` — the panel's state and decisions (no Qt), tested directly;
- :mod:`.widget` — binds :mod:`.panel` to the Qt widgets of ``MedTransfer.ui``;
- :mod:`.selftest` — the self-test Slicer's ctest runs.

MRML conversion lives in :mod:`MedTransferLib.slicer.mrml`.
"""
