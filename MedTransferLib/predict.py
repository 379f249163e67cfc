"""Prediction: whole volume — slice-wise 2.5D in batches, or a 3D sliding window — as a label map
in the input's exact geometry."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .case import Case
from .dataset import from_slices_first, to_slices_first
from .device import resolve_device
from .errors import MedTransferError
from .inference import predict_slices, predict_volume_3d
from .package import ModelPackage


@dataclass
class Prediction:
    label: np.ndarray          # (k, j, i) label values of the package's labels, 0 = background
    case: Case                 # the input case (its geometry is the output's)
    labels: list               # the package's Label list

    def volumes(self) -> list[dict]:
        """Rows of per-structure volume in mL and voxel count."""
        vox_ml = self.case.geometry.voxel_volume_ml()
        counts = np.bincount(self.label.ravel(), minlength=max(lab.value for lab in self.labels) + 1)
        return [{"case": self.case.case_id, "structure": lab.name, "value": lab.value,
                 "voxels": int(counts[lab.value]), "volume_ml": float(counts[lab.value] * vox_ml)}
                for lab in self.labels]


def predict(package, case: Case, device: str = "auto", batch_size: int = 16,
            overlap: float | None = None, adapt_bn: bool = False) -> Prediction:
    """Segment ``case`` with a model package (a path or a loaded :class:`ModelPackage`).

    Example:
        >>> pred = predict("runs/demo/model", read_case("ch2.nii.gz"))  # doctest: +SKIP
        >>> write_label("seg.nii.gz", pred.label, pred.case.geometry)   # doctest: +SKIP
    """
    pkg = package if isinstance(package, ModelPackage) else ModelPackage.load(package)
    if pkg.task != "segmentation":
        raise MedTransferError(f"model '{pkg.path}' is a {pkg.task} model; classify with "
                               f"predict_class (or 'medtransfer predict --table')")
    if case.image.ndim not in (3, 4):
        raise MedTransferError(f"image of case '{case.case_id}' is not a 3D volume")
    expected = int(pkg.manifest["slicing"].get("channels", 1))
    if case.channels != expected:
        raise MedTransferError(f"model '{pkg.path}' was trained on {expected} image(s) per case "
                               f"({', '.join(pkg.preprocessing.channel_modalities or (pkg.preprocessing.modality,))}); "
                               f"case '{case.case_id}' has {case.channels}: give the same images in the same order")
    dev = resolve_device(device)
    model = pkg.build_model(dev)
    prep = pkg.preprocessing
    image = to_slices_first(prep.standardise(case.image), pkg.axis)
    image = np.ascontiguousarray(image)
    if adapt_bn:
        # AdaBN at prediction: this volume's own BatchNorm statistics (a new scanner or site),
        # every weight as trained; the package on disk is not changed
        from .inference import bn_inputs_2d, bn_inputs_3d
        from .strategies import adapt_bn as _adapt

        inputs = (bn_inputs_3d(image, pkg.manifest["inference"]["patch"], prep) if pkg.mode == "3d"
                  else bn_inputs_2d(image, pkg.slices, prep))
        if _adapt(model, (x.to(dev) for x in inputs)) == 0:
            raise MedTransferError(f"model '{pkg.path}' has no BatchNorm layers; --adapt-bn does not apply")
        model.eval()
    if pkg.mode == "3d":
        inf = pkg.manifest.get("inference", {})
        classes = predict_volume_3d(model, image, prep, dev, inf["patch"], len(pkg.labels) + 1,
                                    overlap=inf.get("overlap", 0.25) if overlap is None else overlap,
                                    batch_size=max(1, batch_size // 8))
    else:
        classes = predict_slices(model, image, pkg.slices, prep, dev, batch_size=batch_size)
    labels = pkg.labels
    lut = np.array([0] + [lab.value for lab in labels],
                   dtype=np.uint8 if max(lab.value for lab in labels) <= 255 else np.uint16)
    return Prediction(from_slices_first(lut[classes], pkg.axis).copy(), case, labels)
