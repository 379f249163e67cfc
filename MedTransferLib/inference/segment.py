"""Prediction: whole volume — slice-wise 2.5D in batches, or a 3D sliding window — as a label map
in the input's exact geometry."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from MedTransferLib.core.case import Case
from MedTransferLib.core.device import memory_format, resolve_device
from MedTransferLib.core.errors import MedTransferError
from MedTransferLib.data.slabs import from_slices_first, to_slices_first, with_channels
from MedTransferLib.inference.windows import (
    Slabs,
    predict_slices,
    predict_volume_3d,
    slice_smoothing,
)
from MedTransferLib.package.store import ModelPackage


@dataclass
class Prediction:
    label: np.ndarray          # (k, j, i) label values of the package's labels, 0 = background
    case: Case                 # the input case (its geometry is the output's)
    labels: list               # the package's Label list
    warnings: list = field(default_factory=list)   # the input check's findings (shift.input_check)
    ood: dict = field(default_factory=dict)        # {"score", "verdict"} (shift.ood_score)
    training_fractions: dict = field(default_factory=dict)   # structure → training cases' fractions

    def volumes(self) -> list[dict]:
        """Rows of per-structure volume in mL and voxel count, the structure's fraction of the
        volume against the training cases' (prior shift: ``fraction_flag`` low/high/ok), and the
        case's out-of-distribution score and verdict (covariate shift)."""
        from MedTransferLib.shift.prior import fraction_flag

        vox_ml = self.case.geometry.voxel_volume_ml()
        counts = np.bincount(self.label.ravel(), minlength=max(lab.value for lab in self.labels) + 1)
        rows = []
        for lab in self.labels:
            frac = float(counts[lab.value]) / max(1, self.label.size)
            ref = self.training_fractions.get(lab.name, [])
            row = {"case": self.case.case_id, "structure": lab.name, "value": lab.value,
                   "voxels": int(counts[lab.value]), "volume_ml": float(counts[lab.value] * vox_ml),
                   "fraction": frac}
            if ref:
                row.update(training_fraction_min=min(ref), training_fraction_max=max(ref),
                           fraction_flag=fraction_flag(frac, ref))
            if self.ood:
                row.update(ood_score=self.ood["score"], ood=self.ood["verdict"])
            rows.append(row)
        return rows


def _map_classes(classes: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Class indices → label values. In place and a block of slices at a time: indexing with the
    whole uint8 volume would first copy it as 8-byte indices (400 MB for a 512×512×200 CT)."""
    if lut.dtype == classes.dtype and np.array_equal(lut, np.arange(lut.size)):
        return classes                      # values 1..N: nothing to map
    out = classes if lut.dtype == classes.dtype else np.empty(classes.shape, lut.dtype)
    for i in range(0, classes.shape[0], 16):
        out[i:i + 16] = lut[classes[i:i + 16]]
    return out


def _window_batch(dev, patch, batch_size: int) -> int:
    """Windows per forward pass in 3D: ``batch_size // 8`` on a GPU; on the CPU about two 64³
    windows' worth — two small windows per pass are faster per window than one, while one 96³
    window holds half the activations of two (measured: bench/NOTES.md, change 3)."""
    if dev.type != "cpu":
        return max(1, batch_size // 8)
    return max(1, min(batch_size // 8, round(2 * 64 ** 3 / float(np.prod(patch)))))


def predict(package, case: Case, device: str = "auto", batch_size: int = 16,
            overlap: float | None = None, adapt_bn: bool = False, adapt_cases=None,
            check: bool = True, guide: bool = False) -> Prediction:
    """Segment ``case`` with a model package (a path or a loaded :class:`ModelPackage`).

    ``adapt_bn``: AdaBN on this case (or, with ``adapt_cases``, on those unlabelled target cases)
    before predicting. ``check``: run the input check and the OOD score (see shift.py) and put
    them on the prediction (``warnings``, ``ood``, and columns of :meth:`Prediction.volumes`).
    ``guide``: ``case`` is the volume being labelled and ``case.label`` its painted slices
    (``IGNORE`` elsewhere, the model's label values): the shape interpolated between painted
    slices is combined with the network's (2.5D; inference/guide.py) and painted slices come back
    as painted. A 2.5D network's probabilities are smoothed along the slices by the case's voxel
    spacing first (:func:`~MedTransferLib.inference.windows.slice_smoothing`). A case stored in
    another voxel order than the model's is predicted in the model's order and the label map
    returned in the case's own (:mod:`~MedTransferLib.data.orientation`).

    Example:
        >>> pred = predict("runs/demo/model", read_case("ch2.nii.gz"))  # doctest: +SKIP
        >>> write_label("seg.nii.gz", pred.label, pred.case.geometry)   # doctest: +SKIP
    """
    if overlap is not None and not 0 <= overlap < 1:   # 1 or more would never advance the window
        raise MedTransferError(f"--overlap {overlap} must be in [0, 1): the fraction of a window its "
                               f"neighbour covers (default: the model's, 0.25)")
    pkg = package if isinstance(package, ModelPackage) else ModelPackage.load(package)
    if pkg.task != "segmentation":
        raise MedTransferError(f"model '{pkg.path}' is a {pkg.task} model; classify with "
                               f"predict_class (or 'medtransfer predict --table')")
    if case.image.ndim not in (3, 4):
        raise MedTransferError(f"image of case '{case.case_id}' is not a 3D volume")
    expected = pkg.manifest.slicing.channels
    if case.channels != expected:
        raise MedTransferError(f"model '{pkg.path}' was trained on {expected} image(s) per case "
                               f"({', '.join(pkg.preprocessing.channel_modalities or (pkg.preprocessing.modality,))}); "
                               f"case '{case.case_id}' has {case.channels}: give the same images in the same order")
    if guide and pkg.mode != "2.5d":
        raise MedTransferError(f"guiding by painted slices needs a 2.5D model; '{pkg.path}' is {pkg.mode}: "
                               f"predict without it")
    order = pkg.manifest.slicing.orientation
    if order:   # the network reads voxels in its training's order (data/orientation.py)
        from MedTransferLib.data.orientation import to_order

        (ordered,), (turn,) = to_order([case], order)
        adapt_cases = to_order(list(adapt_cases), order)[0] if adapt_cases else adapt_cases
        if turn is not None:   # predicted in that order, returned in the case's own
            pred = predict(pkg, ordered, device, batch_size, overlap, adapt_bn, adapt_cases, check, guide)
            pred.label, pred.case = turn.back(pred.label), case
            return pred
    dev = resolve_device(device)
    model = pkg.build_model(dev)
    fmt = memory_format(dev, 2) if pkg.mode == "2.5d" else None
    if fmt is not None:   # channels-last: faster 2.5D prediction on CPU; not for 3D, where
        model = model.to(memory_format=fmt)   # MONAI's sliding window made it slower (bench/NOTES.md)
    prep = pkg.preprocessing
    fitted: list = []
    image = np.ascontiguousarray(to_slices_first(prep.standardise(case.image, fitted), pkg.axis))
    shift_ref = pkg.manifest.shift
    warnings, ood = [], {}
    if check:
        from MedTransferLib.shift.input_check import input_check, intensity_profile
        from MedTransferLib.shift.ood import ood_score, ood_verdict

        # the profile reuses the standardised volume prediction already made (no second copy)
        profile = intensity_profile(case.image, prep, from_slices_first(image, pkg.axis))
        warnings = input_check(case.image, prep, shift_ref.get("reference"), case.case_id, profile)
        stats = pkg.extra(shift_ref["ood"]["stats_file"]) if shift_ref.get("ood", {}).get("stats_file") else {}
        if stats:   # before any AdaBN: how far the case is from the training data
            score = ood_score(model, image, prep, pkg.mode, pkg.slices,
                              pkg.manifest.inference.patch, dev, stats)
            ood = {"score": round(score, 4), "verdict": ood_verdict(score, shift_ref["ood"])}
    if adapt_bn or adapt_cases:
        # AdaBN at prediction: this volume's own BatchNorm statistics (a new scanner or site),
        # every weight as trained; the package on disk is not changed
        from MedTransferLib.data.sampling import bn_inputs_2d, bn_inputs_3d
        from MedTransferLib.shift.adabn import adapt_bn as _adapt

        targets = [image] if not adapt_cases else [
            np.ascontiguousarray(to_slices_first(prep.standardise(c.image), pkg.axis)) for c in adapt_cases]

        def inputs():
            for img in targets:
                yield from (bn_inputs_3d(img, pkg.manifest.inference.patch, prep) if pkg.mode == "3d"
                            else bn_inputs_2d(img, pkg.slices, prep, max_slices=max(8, 64 // len(targets))))

        if _adapt(model, (x.to(dev) for x in inputs())) == 0:
            raise MedTransferError(f"model '{pkg.path}' has no BatchNorm layers; --adapt-bn does not apply")
        model.eval()
        del targets
    if pkg.mode == "3d":
        # the standardised copy goes now: the sliding window reads the raw image a window at a
        # time, standardised with the parameters fitted above (identical values), so its score
        # buffer never sits beside a whole standardised volume (bench/NOTES.md, change 3)
        raw = to_slices_first(case.image, pkg.axis)
        lead = (slice(None),) * (raw.ndim - 3)
        slabs = Slabs(with_channels(image).shape, lambda *block: prep.apply(raw[lead + block], fitted))
        del image
        inf = pkg.manifest.inference
        default_overlap = 0.25 if inf.overlap is None else inf.overlap
        classes = predict_volume_3d(model, slabs, prep, dev, inf.patch, len(pkg.labels) + 1,
                                    overlap=default_overlap if overlap is None else overlap,
                                    batch_size=_window_batch(dev, inf.patch, batch_size))
    else:
        if guide:
            from MedTransferLib.inference.guide import case_guide

            helper = case_guide(case, [lab.value for lab in pkg.labels], pkg.axis)
        else:
            helper = None
        classes = predict_slices(model, image, pkg.slices, prep, dev, batch_size=batch_size, guide=helper,
                                 smooth=slice_smoothing(case.geometry.spacing, pkg.axis))
    labels = pkg.labels
    lut = np.array([0] + [lab.value for lab in labels],
                   dtype=np.uint8 if max(lab.value for lab in labels) <= 255 else np.uint16)
    label = np.ascontiguousarray(from_slices_first(_map_classes(classes, lut), pkg.axis))
    return Prediction(label, case, labels, warnings, ood,
                      shift_ref.get("fractions", {}))
