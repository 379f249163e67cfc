"""What this machine has and what it needs: ``doctor`` (torch build, GPU, package versions,
offline weights, disk, write access — each problem with its fix) and ``wheelhouse`` (every wheel
and weight file an offline Slicer needs, gathered on a connected machine). Used by both front
ends, the CLI (:mod:`MedTransferLib.app`) and the Slicer panel (:mod:`MedTransferLib.slicer`)."""
