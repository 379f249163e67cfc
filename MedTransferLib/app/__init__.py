"""Stage 8 (with :mod:`MedTransferLib.slicer`) — the programs: the command line, the demo, the
setup doctor, the Slicer panel's Apply."""
