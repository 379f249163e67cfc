"""``medtransfer apply``: a model applied to several volumes in one child process.

What the Slicer panel's *Apply* runs (so no torch runs in Slicer's GUI thread): the panel writes
each volume (and, optionally, a reference label map) to files and a request::

    {"model": "runs/a/model", "device": "auto", "prior": null,
     "cases": [{"id": "MRHead", "image": ["case0.nrrd"], "out": "case0_seg.nrrd",
                "reference": "case0_ref.nrrd", "reference_labels": [1, 2],
                "painted": "case0_painted.nrrd"}]}

and this module predicts them one by one, writing each label map atomically, printing a
``step`` event per case (the progress bar) and one ``done`` event whose ``cases`` hold, per case,
the volumes table rows, the input check's warnings, the OOD verdict and — with a reference —
the Dice/HD95 rows. ``painted`` (optional): the label map painted on that volume, 255 on
unpainted slices, in the model's label values: painted slices come back as painted and guide the
network between them (inference/guide.py). A classification model fills ``predictions`` (one row per case, calibrated
probabilities, optionally prior-corrected) instead.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from MedTransferLib.core.errors import MedTransferError
from MedTransferLib.core.files import check_outputs


def _emit(event: dict, stream) -> None:
    print(json.dumps(event), file=stream, flush=True)


def load_request(path) -> dict:
    from MedTransferLib.data.io import check_volume_name

    path = Path(path)
    try:
        req = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MedTransferError(f"apply request '{path}' cannot be read ({exc}); it is written by the "
                               f"Slicer panel, or by hand as documented in docs") from None
    if not isinstance(req, dict) or "model" not in req or not isinstance(req.get("cases"), list) or not req["cases"]:
        raise MedTransferError(f"apply request '{path}' needs 'model' and a non-empty 'cases' list")
    base = path.parent
    for c in req["cases"]:
        if not isinstance(c, dict) or "image" not in c:
            raise MedTransferError(f"apply request '{path}': every case needs 'image'")
        images = c["image"] if isinstance(c["image"], list) else [c["image"]]
        c["image"] = [str(base / p) for p in images]
        for key in ("out", "reference", "painted"):
            if c.get(key):
                c[key] = str(base / c[key])
    cases = list(enumerate(req["cases"], 1))
    for i, c in cases:
        if c.get("out"):
            check_volume_name(c["out"], f"apply request '{path}': case {i} 'out'")
    check_outputs({f"case {i} 'out'": c.get("out") for i, c in cases},
                  {f"case {i} '{key}'": c.get(key) for i, c in cases for key in ("image", "reference", "painted")})
    return req


def run(request_path, stream) -> dict:
    """Predict every case of the request; returns (and prints) the ``done`` event."""
    from MedTransferLib.data.io import read_case, read_image, write_label
    from MedTransferLib.package.store import ModelPackage

    req = load_request(request_path)
    pkg = ModelPackage.load(req["model"])
    cases = req["cases"]
    device = req.get("device") or "auto"
    t0 = time.monotonic()
    _emit({"event": "start", "task": pkg.task, "cases": len(cases), "steps_total": len(cases)}, stream)
    if pkg.task == "classification":
        done = _classify(pkg, cases, device, req.get("prior"), stream, t0)
    else:
        from MedTransferLib.data.metrics import evaluate
        from MedTransferLib.inference.segment import predict

        results = []
        for i, c in enumerate(cases):
            case = read_case(c["image"][0] if len(c["image"]) == 1 else c["image"], None, c.get("id"))
            if c.get("painted"):   # the volume being labelled: its painted slices guide the network
                case.label, geometry = read_image(c["painted"], "painted label map")
                if case.geometry.matches(geometry):
                    raise MedTransferError(f"apply request: case '{c.get('id')}': 'painted' is not on the image's grid")
            pred = predict(pkg, case, device=device, guide=bool(c.get("painted")))
            if not c.get("out"):
                raise MedTransferError(f"apply request: case '{c.get('id')}' has no 'out' file for its segmentation")
            write_label(c["out"], pred.label, case.geometry)
            entry = {"id": c.get("id"), "segmentation": c["out"], "volumes": pred.volumes(),
                     "warnings": pred.warnings, "ood": pred.ood, "metrics": None}
            if c.get("reference"):
                ref, _geometry = read_image(c["reference"])
                wanted = set(c.get("reference_labels") or [lab.value for lab in pred.labels])
                common = [lab for lab in pred.labels if lab.value in wanted]
                entry["metrics"] = evaluate(pred.label, ref, common, case.geometry, case_id=c.get("id"))
            results.append(entry)
            _emit({"event": "step", "step": i + 1, "steps_total": len(cases), "epoch": 0,
                   "eta_s": (time.monotonic() - t0) / (i + 1) * (len(cases) - i - 1)}, stream)
        done = {"event": "done", "task": "segmentation", "cases": results}
    _emit(done, stream)
    return done


def _classify(pkg, cases, device, prior, stream, t0) -> dict:
    from MedTransferLib.core.device import resolve_device
    from MedTransferLib.data.io import read_case
    from MedTransferLib.inference.classify import predict_class

    dev = resolve_device(device)
    model = pkg.build_model(dev)   # once for all cases
    rows = []
    for i, c in enumerate(cases):
        case = read_case(c["image"][0] if len(c["image"]) == 1 else c["image"], None, c.get("id"))
        rows.append(predict_class(pkg, case, device=str(dev), model=model))
        _emit({"event": "step", "step": i + 1, "steps_total": len(cases), "epoch": 0,
               "eta_s": (time.monotonic() - t0) / (i + 1) * (len(cases) - i - 1)}, stream)
    report = None
    if prior:
        from MedTransferLib.shift.prior import prior_correction

        rows, report = prior_correction(rows, pkg.manifest.classes, pkg.manifest.calibration or {}, prior)
    return {"event": "done", "task": "classification", "predictions": rows, "prior": report}
