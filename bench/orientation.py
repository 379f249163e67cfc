"""One model, the sample MRI stored in other voxel orders (data/orientation.py): the same head,
the same voxels in the same places, only the order of the voxel array differs — as between a
DICOM series loaded in Slicer and a NIfTI from a converter that flips rows, or an axial and a
sagittal acquisition.

    .venv/bin/python bench/orientation.py [--model runs/demo/model] [--orders RAS LAS RAI PIL ASR]

For each order: the model's mean / worst-structure Dice on the whole volume (the network alone,
no painted slices) with the model reading every case in its training's voxel order (as shipped)
and with the volume read as stored (what a model did before it kept its order). A model saved
before models kept their order is given the sample's own (it was trained on the sample: the
``medtransfer demo`` model of README command 1). Not a test: about 20 s per prediction on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import print_machine  # noqa: E402  (bench/machine.py)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="runs/demo/model")
    ap.add_argument("--orders", nargs="+", default=["RAS", "LAS", "RAI", "PIL", "ASR"],
                    help="SimpleITK orientation codes to store the sample in (its own: RAS)")
    a = ap.parse_args(argv)
    import SimpleITK as sitk

    import MedTransferLib as mt
    from MedTransferLib.data.metrics import evaluate, summary
    from MedTransferLib.data.orientation import orientation_code
    from MedTransferLib.inference.segment import predict
    from MedTransferLib.package.store import ModelPackage

    folder = mt.sample_data().parent
    kept = ModelPackage.load(a.model)
    own = orientation_code(mt.read_case(folder / "ch2.nii.gz").geometry)
    recorded = kept.manifest.slicing.orientation
    kept.manifest.slicing.orientation = recorded or own
    as_stored = ModelPackage.load(a.model)
    as_stored.manifest.slicing.orientation = ""
    print_machine()
    print(f"\nmodel {a.model} (voxel order {recorded or 'not recorded: given the sample’s, ' + own}); "
          f"the sample stored as {own}\n")
    print("| sample stored as | kept order: mean / worst | read as stored: mean / worst |")
    print("|---|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for code in a.orders:
            paths = []
            for name in ("ch2.nii.gz", "deep_grey_matter.nii.gz"):
                paths.append(Path(tmp) / f"{code}_{name}")
                sitk.WriteImage(sitk.DICOMOrient(sitk.ReadImage(str(folder / name)), code), str(paths[-1]))
            case = mt.read_case(*paths)
            cells = []
            for pkg in (kept, as_stored):
                pred = predict(pkg, mt.read_case(paths[0]), check=False)
                s = summary(evaluate(pred.label, case.label, pkg.labels, case.geometry))
                cells.append(f"{s['mean_dice']:.3f} / {s['min_dice']:.3f}")
            print(f"| {code}{' (its own)' if code == own else ''} | {cells[0]} | {cells[1]} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
