"""The ``medtransfer`` sub-commands that predict and measure: ``predict`` (segmentation and
classification), ``evaluate`` (Dice and surface distances against reference labels) and ``audit``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from MedTransferLib.app.commands import one_or_many, parse_slices
from MedTransferLib.core.errors import MedTransferError


def cmd_predict(a) -> int:
    from MedTransferLib.core.files import write_csv
    from MedTransferLib.data.io import check_volume_name, read_case, write_label
    from MedTransferLib.inference.segment import predict
    from MedTransferLib.package.store import ModelPackage

    pkg = ModelPackage.load(a.model)
    if pkg.task == "classification":
        return _predict_classes(a, pkg)
    if not a.image or not a.out:
        raise MedTransferError("a segmentation model needs --image and --out")
    check_volume_name(a.out)

    adapt_cases = [read_case(p) for p in _image_paths(a.adapt_bn_on)] if a.adapt_bn_on else None
    case = read_case(one_or_many(a.image))
    if a.painted:
        case = painted_case(case, a.painted, a.labelled_slices, a.slice_axis)
    elif a.labelled_slices:
        raise MedTransferError("--labelled-slices goes with --painted (the label map painted on them)")
    pred = predict(pkg, case, device=a.device, batch_size=a.batch_size, overlap=a.overlap,
                   adapt_bn=a.adapt_bn, adapt_cases=adapt_cases, guide=bool(a.painted))
    for w in pred.warnings:
        print(f"medtransfer: warning: {w}", file=sys.stderr)
    if pred.ood:
        print(f"medtransfer: out-of-distribution score {pred.ood['score']:.3f}: {pred.ood['verdict']}"
              + ("" if pred.ood["verdict"] == "in range" else " — check this prediction; --adapt-bn may help"),
              file=sys.stderr)
    write_label(a.out, pred.label, pred.case.geometry)
    rows = pred.volumes()
    if a.table:
        write_csv(a.table, rows)
    print(json.dumps({"event": "done", "segmentation": str(a.out), "volumes": rows, "warnings": pred.warnings,
                      "ood": pred.ood}))
    return 0


def painted_case(case, painted, labelled_slices, slice_axis: int = 2):
    """``case`` with the label map ``painted`` (on its grid), ``IGNORE`` outside the labelled
    slices (``"34,45,50-52"``, a list, or None: every slice holding a label)."""
    import numpy as np

    from MedTransferLib.core.case import IGNORE
    from MedTransferLib.data.io import read_image
    from MedTransferLib.data.slabs import to_slices_first

    label, geometry = read_image(painted, "label")
    if case.geometry.matches(geometry):
        raise MedTransferError(f"--painted '{painted}' is not on the image's voxel grid "
                               f"({'; '.join(case.geometry.matches(geometry))}); give the label map painted on this image")
    label = np.asarray(label)
    if label.dtype.kind not in "iub" or label.min() < 0 or label.max() > 65535:
        raise MedTransferError(f"--painted '{painted}' is not a label map (values {label.dtype}); give integer labels")
    label = label.astype(np.uint8 if label.max() <= 255 else np.uint16)
    n = label.shape[2 - slice_axis]
    if labelled_slices is None:
        slices = np.flatnonzero(to_slices_first(label, slice_axis).any(axis=(1, 2))).tolist()
    elif isinstance(labelled_slices, str):
        slices = sorted(set(parse_slices(labelled_slices, "--labelled-slices")))
    else:
        slices = sorted(set(labelled_slices))
    bad = [s for s in slices if not 0 <= s < n]
    if bad:
        raise MedTransferError(f"--labelled-slices {bad} lie outside the image's {n} slices along axis {slice_axis}; "
                               f"give indices 0–{n - 1} (or the right --slice-axis)")
    if not slices:
        raise MedTransferError(f"--painted '{painted}' holds no label: paint some slices, or predict without it")
    sparse = np.full_like(label, IGNORE)
    view, src = to_slices_first(sparse, slice_axis), to_slices_first(label, slice_axis)
    view[slices] = src[slices]
    case.label = sparse
    return case


def _image_paths(items) -> list:
    """Image files, expanding folders (every NIfTI/NRRD/MHA inside, sorted)."""
    from pathlib import Path

    out = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.name.lower().endswith((".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")))
            if not found:
                raise MedTransferError(f"folder '{p}' holds no .nii/.nii.gz/.nrrd/.mha images for --adapt-bn-on")
            out += found
        else:
            out.append(p)
    return out


def _predict_classes(a, pkg) -> int:
    from MedTransferLib.core.files import write_csv
    from MedTransferLib.data.class_datalist import load_class_datalist
    from MedTransferLib.data.io import read_case
    from MedTransferLib.inference.classify import predict_class

    if a.datalist:
        dl = load_class_datalist(a.datalist)
        entries = dl.test if a.section == "test" else dl.training
        cases = [(read_case(e.image, None, e.case_id), bool(e.slice_labels)) for e in entries]
    elif a.image:
        cases = [(read_case(one_or_many(a.image)), a.per_slice)]
    else:
        raise MedTransferError("a classification model needs --image IMAGE or --datalist DATASET")
    from MedTransferLib.core.device import resolve_device

    device = resolve_device(a.device)
    model = pkg.build_model(device)   # once for all cases
    rows = []
    for case, per_slice in cases:
        r = predict_class(pkg, case, device=str(device), per_slice=per_slice or a.per_slice, model=model)
        rows += r if isinstance(r, list) else [r]
    report = None
    if a.prior:
        from MedTransferLib.shift.prior import prior_correction

        rows, report = prior_correction(rows, pkg.manifest.classes, pkg.manifest.calibration or {}, a.prior)
        print(f"medtransfer: prior ({report['method']}): estimated "
              + ", ".join(f"{c} {v:.3f}" for c, v in report["estimated_prior"].items())
              + f" (training {', '.join(f'{c} {v:.2f}' for c, v in report['training_prior'].items())}); "
              f"{report['decisions_changed']} of {report['cases']} decisions changed", file=sys.stderr)
    if a.table:
        write_csv(a.table, rows)
    print(json.dumps({"event": "done", "predictions": rows if len(rows) <= 50 else len(rows), "prior": report}))
    return 0


def _evaluate_classes(a) -> int:
    import csv

    from MedTransferLib.core.files import write_json
    from MedTransferLib.data.class_datalist import load_class_datalist
    from MedTransferLib.inference.classify import evaluate_table

    if not a.datalist:
        raise MedTransferError("evaluating class predictions needs --datalist with the true classes")
    with open(a.pred, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    metrics, _ = evaluate_table(rows, load_class_datalist(a.datalist), a.section)
    if a.out:
        write_json(a.out, metrics)
    print(f"cases/slices {metrics['n']}  accuracy {metrics['accuracy']:.3f}  balanced accuracy "
          f"{metrics['balanced_accuracy']:.3f}  AUC {metrics['auc']:.3f}")
    print("confusion (rows = truth, columns = prediction): " + ", ".join(metrics["classes"]))
    for name, row in zip(metrics["classes"], metrics["confusion"]):
        print(f"  {name:16s} " + " ".join(f"{v:5d}" for v in row))
    return 0


def cmd_evaluate(a) -> int:
    if str(a.pred).lower().endswith(".csv"):
        return _evaluate_classes(a)
    if not a.label:
        raise MedTransferError("evaluating a segmentation needs --label (the reference label map)")
    from MedTransferLib.core.files import write_csv
    from MedTransferLib.data.datalist import load_datalist
    from MedTransferLib.data.io import read_image
    from MedTransferLib.data.metrics import evaluate, summary

    ref, ref_geometry = read_image(a.label, "reference label map")
    pred, pgeo = read_image(a.pred, "prediction")
    problems = ref_geometry.matches(pgeo)
    if problems:
        raise MedTransferError(f"prediction '{a.pred}' is not on the reference's grid ({'; '.join(problems)})")
    ref = ref.astype(int)
    if a.labels:
        labels = load_datalist(a.labels).labels
    elif a.model:
        from MedTransferLib.package.store import ModelPackage

        labels = ModelPackage.load(a.model).labels
    else:
        import numpy as np

        labels = [(int(v), f"label_{int(v)}") for v in np.unique(ref) if v != 0]
    slices = parse_slices(a.slices) if a.slices else None
    rows = evaluate(pred.astype(int), ref, labels, ref_geometry, slices, a.axis)
    if a.out:
        write_csv(a.out, rows)
    for r in rows:
        print(f"{r['structure']:24s} Dice {r['dice']:.3f}  HD95 {r['hd95_mm']:.2f} mm")
    s = summary(rows)
    print(f"{'mean':24s} Dice {s['mean_dice']:.3f}  HD95 {s['mean_hd95_mm']:.2f} mm")
    return 0


def cmd_audit(a) -> int:
    """Concept shift made visible: agreement between annotations of one volume, or label
    statistics per site across a datalist."""
    from MedTransferLib.core.files import write_csv
    from MedTransferLib.shift.audit import label_audit, site_audit

    if a.datalist:
        from MedTransferLib.data.datalist import load_datalist

        dl = load_datalist(a.datalist)
        sites = [e.site for e in dl.training]
        if not all(sites):
            missing = [e.case_id for e in dl.training if not e.site]
            raise MedTransferError(f"datalist '{a.datalist}': entries {missing[:5]} have no \"site\"; give each "
                                   f"training entry a \"site\" to compare sites")
        rows = site_audit(dl.load_cases(), sites, dl.labels)
    else:
        if not a.label or len(a.label) < 2:
            raise MedTransferError("give two or more annotations of the same volume: --label A.nii.gz B.nii.gz "
                                   "(or --datalist D with a \"site\" per entry)")
        from MedTransferLib.data.io import read_image

        arrays, geometry = {}, None
        for path in a.label:
            arr, geo = read_image(path, "annotation")
            if geometry is not None and geometry.matches(geo):
                raise MedTransferError(f"annotation '{path}' is not on the grid of '{a.label[0]}' "
                                       f"({'; '.join(geometry.matches(geo))}); resample it onto the same volume")
            geometry = geometry or geo
            name = Path(path).name.split(".")[0]
            arrays[name if name not in arrays else f"{name}_{len(arrays)}"] = arr.astype(int)
        labels = _audit_labels(a, arrays)
        rows = label_audit(arrays, labels, geometry)
    if a.out:
        write_csv(a.out, rows)
    for r in rows:
        print("  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()))
    return 0


def _audit_labels(a, arrays):
    import numpy as np

    from MedTransferLib.core.labels import Label, default_color

    if a.labels:
        from MedTransferLib.data.datalist import load_datalist

        return load_datalist(a.labels).labels
    if a.model:
        from MedTransferLib.package.store import ModelPackage

        return ModelPackage.load(a.model).labels
    values = sorted({int(v) for arr in arrays.values() for v in np.unique(arr) if v not in (0, 255)})
    return [Label(v, f"label_{v}", default_color(i)) for i, v in enumerate(values)]
