"""The one command line used by terminals, clusters and the Slicer module (``medtransfer`` or
``python -m MedTransferLib``). User errors are one line on stderr and exit code 2; training
prints one JSON object per line on stdout."""

from __future__ import annotations

import argparse
from pathlib import Path
import json
import signal
import sys

from .errors import MedTransferError


def _parse_slices(spec: str) -> list[int]:
    out = []
    try:
        for part in spec.split(","):
            if "-" in part:
                a, b = part.split("-")
                out += list(range(int(a), int(b) + 1))
            elif part.strip():
                out.append(int(part))
    except ValueError:
        raise MedTransferError(f"--slices '{spec}' is not a list like '3,5,10-20'") from None
    return out


def _one_or_many(paths: list[str]):
    return paths[0] if len(paths) == 1 else paths


def _weights(value: str | None):
    return None if value in (None, "none", "random") else value


def cmd_sampledata(a) -> int:
    from .sampledata import sample_data

    print(sample_data(a.cache))
    return 0


def cmd_backbones(a) -> int:
    from .backbones import catalogue

    rows = catalogue()
    if a.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'name':20s} {'modes':20s} {'kind':8s} {'params':>8s}  {'source':42s} weights")
    for r in rows:
        print(f"{r['name']:20s} {r['modes']:20s} {r['kind']:8s} {r['parameters'] / 1e6:7.1f}M  "
              f"{r['source']:42s} {r['weights']}")
    print("\nAlso: --backbone package:DIR (a trained MedTransfer model) and bundle:DIR (a MONAI bundle).")
    return 0


def cmd_train(a) -> int:
    from . import train
    from .progress import Reporter

    bar = {"auto": None, "bar": True, "json": False}[a.progress]
    reporter = Reporter(stream=sys.stdout, bar=bar)
    config = dict(mode=a.mode, backbone=a.backbone, weights=_weights(a.weights), strategy=a.strategy,
                  slices=a.slices, overlap=a.overlap, stem=a.stem,
                  epochs=a.epochs, steps_per_epoch=a.steps_per_epoch, batch_size=a.batch_size, lr=a.lr, patch=a.patch,
                  device=a.device, seed=a.seed, val_fraction=a.val_fraction, modality=a.modality,
                  patience=a.patience, histogram_standardise=a.histogram_standardise, oom_retry=a.oom_retry)
    if a.axis is not None:
        config["axis"] = a.axis
    from .fileutil import write_json

    if a.resume:   # the interrupted run's own datalist and settings, not today's defaults
        import json as _json

        args_file = Path(a.resume) / "train_args.json"
        try:
            saved = _json.loads(args_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise MedTransferError(f"'{a.resume}' is not a run folder that can be resumed (no readable "
                                   f"{args_file.name}); give the --out folder of an interrupted 'train'") from None
        train(saved["datalist"], a.resume, reporter=reporter, resume=True, **saved["config"])
        return 0
    if not a.datalist or not a.out:
        raise MedTransferError("train needs --datalist and --out (or --resume RUN_DIR)")
    import os

    from .rundir import check_writable, ensure_free

    if os.environ.get("RANK", "0") == "0":   # under torchrun only rank 0 writes into the folder
        check_writable(Path(a.out))
        ensure_free(a.out)
        write_json(Path(a.out) / "train_args.json", {"datalist": str(Path(a.datalist).resolve()), "config": config})
    train(a.datalist, a.out, reporter=reporter, **config)
    return 0


def cmd_predict(a) -> int:
    from .fileutil import write_csv
    from .io import read_case, write_label
    from .package import ModelPackage
    from .prediction import predict

    pkg = ModelPackage.load(a.model)
    if pkg.task == "classification":
        return _predict_classes(a, pkg)
    if not a.image or not a.out:
        raise MedTransferError("a segmentation model needs --image and --out")

    adapt_cases = [read_case(p) for p in _image_paths(a.adapt_bn_on)] if a.adapt_bn_on else None
    pred = predict(pkg, read_case(_one_or_many(a.image)), device=a.device, batch_size=a.batch_size,
                   overlap=a.overlap, adapt_bn=a.adapt_bn, adapt_cases=adapt_cases)
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
    from .classify import load_class_datalist, predict_class
    from .fileutil import write_csv
    from .io import read_case

    if a.datalist:
        dl = load_class_datalist(a.datalist)
        entries = dl.test if a.section == "test" else dl.training
        cases = [(read_case(e.image, None, e.case_id), bool(e.slice_labels)) for e in entries]
    elif a.image:
        cases = [(read_case(_one_or_many(a.image)), a.per_slice)]
    else:
        raise MedTransferError("a classification model needs --image IMAGE or --datalist DATASET")
    from .device import resolve_device

    device = resolve_device(a.device)
    model = pkg.build_model(device)   # once for all cases
    rows = []
    for case, per_slice in cases:
        r = predict_class(pkg, case, device=str(device), per_slice=per_slice or a.per_slice, model=model)
        rows += r if isinstance(r, list) else [r]
    report = None
    if a.prior:
        from .shift import prior_correction

        rows, report = prior_correction(rows, pkg.manifest["classes"], pkg.manifest.get("calibration", {}), a.prior)
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

    from .classify import evaluate_table, load_class_datalist
    from .fileutil import write_json

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


def cmd_advise(a) -> int:
    from .advisor import advise
    from .datalist import load_datalist

    dl = load_datalist(a.datalist)
    advice = advise(dl.load_cases(), dl.labels, backbone=a.backbone, weights=_weights(a.weights),
                    mode=a.mode, slices=a.slices, axis=dl.training[0].slice_axis,
                    modality=dl.modality, lr=a.lr, epochs=a.epochs)
    if a.progress == "json":   # one event line for the runner (the Slicer panel's Advise)
        print(json.dumps({"event": "done", "advice": advice.to_dict()}), flush=True)
        return 0
    if a.json:
        print(json.dumps(advice.to_dict(), indent=1))
        return 0
    d = advice.data
    print(f"data: {d['cases']} case(s), {d['labelled_slices']} labelled slices, "
          f"{d['slices_with_structures']} holding structures")
    print("voxels per class: " + ", ".join(f"{k} {v}" for k, v in d["voxels_per_class"].items()))
    if advice.domain:
        print(f"domain distance to {a.backbone}'s pretraining: {advice.domain['distance']:.3f} "
              f"(per stage, shallow → deep: {', '.join(f'{x:.2f}' for x in advice.domain['per_stage'])})")
    print(f"recommended: --strategy {advice.strategy} --lr {advice.lr:g}")
    print(f"why: {advice.reason}")
    return 0


def cmd_export(a) -> int:
    import importlib.util

    from .export import export_package

    formats = a.format
    if formats is None:   # both where the optional onnx package is installed
        formats = ["torchscript"] + (["onnx"] if importlib.util.find_spec("onnx") else [])
        if "onnx" not in formats:
            print("note: ONNX skipped (pip install onnx to get model.onnx too)", file=sys.stderr)
    paths = export_package(a.model, a.out, formats)
    print(json.dumps({"event": "done", **{k: str(v) for k, v in paths.items()}}))
    return 0


def cmd_apply(a) -> int:
    from .apply import run

    run(a.request, sys.stdout)
    return 0


def cmd_doctor(a) -> int:
    from .doctor import report, text

    rep = report(a.out_dir)
    if a.progress == "json":
        print(json.dumps({"event": "done", **rep}), flush=True)
        return 0
    if a.json:
        print(json.dumps(rep, indent=1))
    else:
        print(text(rep))
    return 0 if rep["ready"] else 1


def cmd_wheelhouse(a) -> int:
    from .wheelhouse import build, pip_commands

    if a.dry_run:
        for cmd in pip_commands(a.dir, a.python, a.platform, a.torch):
            print(" ".join(cmd))
        return 0
    path = build(a.dir, a.python, a.platform, a.torch, a.weights or ())
    print(f"wheelhouse written: {path.parent} (copy it to the offline machine; in Slicer: MedTransfer → "
          f"Install from folder…)")
    return 0


def cmd_evaluate(a) -> int:
    if str(a.pred).lower().endswith(".csv"):
        return _evaluate_classes(a)
    if not a.label:
        raise MedTransferError("evaluating a segmentation needs --label (the reference label map)")
    from .datalist import load_datalist
    from .fileutil import write_csv
    from .io import read_case, read_image
    from .metrics import evaluate, summary

    ref_case = read_case(a.label, None)
    pred, pgeo = read_image(a.pred, "prediction")
    problems = ref_case.geometry.matches(pgeo)
    if problems:
        raise MedTransferError(f"prediction '{a.pred}' is not on the reference's grid ({'; '.join(problems)})")
    ref = ref_case.image.astype(int)
    if a.labels:
        labels = load_datalist(a.labels).labels
    elif a.model:
        from .package import ModelPackage

        labels = ModelPackage.load(a.model).labels
    else:
        import numpy as np

        labels = [(int(v), f"label_{int(v)}") for v in np.unique(ref) if v != 0]
    slices = _parse_slices(a.slices) if a.slices else None
    rows = evaluate(pred.astype(int), ref, labels, ref_case.geometry, slices, a.axis)
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
    from .fileutil import write_csv
    from .shift import label_audit, site_audit

    if a.datalist:
        from .datalist import load_datalist

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
        from .io import read_image

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

    from .labels import Label, default_color

    if a.labels:
        from .datalist import load_datalist

        return load_datalist(a.labels).labels
    if a.model:
        from .package import ModelPackage

        return ModelPackage.load(a.model).labels
    values = sorted({int(v) for arr in arrays.values() for v in np.unique(arr) if v not in (0, 255)})
    return [Label(v, f"label_{v}", default_color(i)) for i, v in enumerate(values)]


def cmd_demo(a) -> int:
    from .demo import run_demo

    run_demo(a.out, cache=a.cache, epochs=a.epochs, device=a.device, **(
        {"backbone": a.backbone} if a.backbone else {}), weights=_weights(a.weights),
        strategy=a.strategy)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medtransfer", description="Transfer learning on your own CT/MRI volumes.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("sampledata", help="fetch Colin27 + AAL sample data; print its dataset.json path")
    s.add_argument("--cache", help="cache folder (default ~/.cache/medtransfer or $MEDTRANSFER_CACHE)")
    s.set_defaults(func=cmd_sampledata)

    s = sub.add_parser("backbones", help="list the pretrained backbones")
    s.add_argument("--json", action="store_true", help="machine-readable list")
    s.set_defaults(func=cmd_backbones)

    s = sub.add_parser("train", help="fine-tune a pretrained network on a datalist")
    s.add_argument("--datalist", help="dataset.json (MSD/MONAI format)")
    s.add_argument("--out", help="run directory; the model goes to OUT/model")
    s.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run (killed, cancelled, "
                                                        "crashed) from its last complete epoch")
    s.add_argument("--backbone", default="efficientnet-lite0")
    s.add_argument("--weights", default="pretrained",
                   help="'pretrained' (default: the backbone's own ImageNet/MedicalNet weights), "
                        "'none' (random init) or a weights file")
    s.add_argument("--strategy", default="auto",
                   help="auto (default: the advisor picks), finetune, frozen, partial:N, gradual[:E], "
                        "discriminative[:D], gradual+discriminative, bn-only, adabn, adabn+<strategy>")
    s.add_argument("--mode", default="2.5d", choices=["2.5d", "3d"],
                   help="2.5d: k slices into a 2D network (default); 3d: patches into a 3D network")
    s.add_argument("--slices", type=int, default=3, help="2.5d: adjacent slices as channels (odd; default 3)")
    s.add_argument("--stem", default="mean", choices=["mean", "repeat"],
                   help="how pretrained first-layer weights are adapted to k≠3 channels (default mean)")
    s.add_argument("--overlap", type=float, default=0.25, help="3d: sliding-window overlap (default 0.25)")
    s.add_argument("--axis", type=int, choices=[0, 1, 2], help="voxel axis to slice along (default: datalist's, else 2)")
    s.add_argument("--epochs", type=int, default=16)
    s.add_argument("--steps-per-epoch", type=int, default=50)
    s.add_argument("--batch-size", type=int, default=None, help="default: from the crop size")
    s.add_argument("--patch", type=int, default=None,
                   help="crop edge in voxels (default: from structure size; 2.5d in-plane, 3d cube)")
    s.add_argument("--lr", type=float, default=2e-3)
    s.add_argument("--patience", type=int, default=4)
    s.add_argument("--val-fraction", type=float, default=0.2)
    s.add_argument("--modality", default="auto", choices=["auto", "MR", "CT"])
    s.add_argument("--device", default="auto")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--oom-retry", action="store_true",
                   help="if a batch does not fit in (GPU) memory, start again with half the batch")
    s.add_argument("--histogram-standardise", action="store_true",
                   help="MR: Nyúl histogram standardisation learnt from the training images")
    s.add_argument("--progress", default="auto", choices=["auto", "bar", "json"],
                   help="terminal bar on stderr (auto: when stderr is a terminal); JSON lines always on stdout")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("advise", help="measure data size and domain distance; recommend a strategy")
    s.add_argument("--datalist", required=True)
    s.add_argument("--backbone", default="efficientnet-lite0")
    s.add_argument("--weights", default="pretrained")
    s.add_argument("--mode", default="2.5d", choices=["2.5d", "3d"])
    s.add_argument("--slices", type=int, default=3)
    s.add_argument("--lr", type=float, default=2e-3)
    s.add_argument("--epochs", type=int, default=16, help="the planned training length (sets gradual's pace)")
    s.add_argument("--json", action="store_true")
    s.add_argument("--progress", default="auto", choices=["auto", "json"],
                   help="json: the advice as one JSON event line (what the Slicer panel reads)")
    s.set_defaults(func=cmd_advise)

    s = sub.add_parser("apply", help="apply a model to several volumes listed in a request file (the Slicer "
                                     "panel's Apply)")
    s.add_argument("--request", required=True, help="apply.json: model, device, cases (image, out, reference)")
    s.add_argument("--progress", default="json", choices=["json"], help="JSON event lines on stdout")
    s.set_defaults(func=cmd_apply)

    s = sub.add_parser("doctor", help="check this machine: torch build vs driver and GPU, packages, offline "
                                      "weights, free disk, write access — each problem with its fix")
    s.add_argument("--out-dir", default=".", help="the folder runs will be written to (checked for space and "
                                                  "write access)")
    s.add_argument("--json", action="store_true")
    s.add_argument("--progress", default="auto", choices=["auto", "json"])
    s.set_defaults(func=cmd_doctor)

    s = sub.add_parser("wheelhouse", help="on a connected machine: gather wheels (and weights) for an offline "
                                          "Slicer; install them there with 'Install from folder…'")
    s.add_argument("dir", help="folder to fill (wheels/, weights/hub/, wheelhouse.json)")
    s.add_argument("--python", default=f"{sys.version_info.major}.{sys.version_info.minor}",
                   help="the target Slicer's Python version, e.g. 3.12 (Slicer 5.10+) or 3.9 (Slicer 5.6/5.8)")
    s.add_argument("--platform", default={"win32": "windows", "darwin": "macos-arm64"}.get(sys.platform, "linux"),
                   choices=["windows", "linux", "macos-arm64", "macos-x86_64"])
    s.add_argument("--torch", default="cpu",
                   choices=["cpu", "cu118", "cu121", "cu124", "cu126", "cu128", "default", "none"],
                   help="torch build: cpu, a CUDA build that fits the target's driver, 'default' (PyPI's), "
                        "or none (torch already installed there)")
    s.add_argument("--weights", nargs="+", metavar="BACKBONE",
                   help="also fetch these backbones' pretrained weights (e.g. resnet18 medicalnet-resnet18 "
                        "bundle:spleen_ct_segmentation)")
    s.add_argument("--dry-run", action="store_true", help="print the pip commands only")
    s.set_defaults(func=cmd_wheelhouse)

    s = sub.add_parser("predict", help="segment (or classify) volumes with a trained model")
    s.add_argument("--model", required=True, help="model folder (or run folder) from 'train'")
    s.add_argument("--image", nargs="+", help="the volume; several files for a multi-image model "
                                              "(T1 T2, in training order)")
    s.add_argument("--out", help="segmentation: output label map (.nii.gz, .nrrd ...)")
    s.add_argument("--table", help="CSV: per-structure volumes (mL), or class probabilities")
    s.add_argument("--datalist", help="classification: predict every case of this datalist")
    s.add_argument("--section", default="test", choices=["test", "training"],
                   help="classification: which datalist section to predict/evaluate (default test)")
    s.add_argument("--per-slice", action="store_true", help="classification (2.5d): one row per slice")
    s.add_argument("--device", default="auto")
    s.add_argument("--batch-size", type=int, default=16, help="slices per batch (3d: windows = this / 8)")
    s.add_argument("--overlap", type=float, default=None, help="3d: sliding-window overlap (default: the model's)")
    s.add_argument("--adapt-bn-on", nargs="+", metavar="IMAGE_OR_FOLDER",
                   help="AdaBN on these unlabelled target-site images (files or folders) before predicting")
    s.add_argument("--prior", help="classification over several cases: correct for a different class "
                                   "prevalence: em | bbse | known:CLASS=P,...")
    s.add_argument("--adapt-bn", action="store_true",
                   help="AdaBN: re-estimate BatchNorm statistics on this image first (new scanner/site)")
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("evaluate", help="Dice/HD95 of a segmentation, or AUC/accuracy of class predictions")
    s.add_argument("--pred", required=True, help="predicted label map, or the CSV from 'predict --table'")
    s.add_argument("--label", help="reference label map (segmentation)")
    s.add_argument("--datalist", help="classification: datalist with the true classes")
    s.add_argument("--section", default="test", choices=["test", "training"])
    s.add_argument("--out", help="segmentation: CSV of per-structure metrics; classification: JSON")
    s.add_argument("--labels", help="dataset.json whose 'labels' name the structures")
    s.add_argument("--model", help="model folder whose labels name the structures")
    s.add_argument("--slices", help="evaluate only these slice indices, e.g. '1-9,11-19'")
    s.add_argument("--axis", type=int, default=2, choices=[0, 1, 2])
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("audit", help="label audit: agreement between annotators, or label statistics per site")
    s.add_argument("--label", nargs="+", help="two or more annotations (label maps) of the same volume")
    s.add_argument("--datalist", help="compare sites: a datalist whose entries have a \"site\"")
    s.add_argument("--labels", help="dataset.json whose 'labels' name the structures")
    s.add_argument("--model", help="model folder whose labels name the structures")
    s.add_argument("--out", help="CSV of the audit table")
    s.set_defaults(func=cmd_audit)

    s = sub.add_parser("export", help="TorchScript, ONNX and labels.json of a model package, for use elsewhere")
    s.add_argument("--model", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--format", nargs="+", choices=["torchscript", "onnx"],
                   help="default: both (ONNX only when the onnx package is installed)")
    s.add_argument("--progress", default="auto", choices=["auto", "json"], help="the result is always a JSON line")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("demo", help="the main job: sample data → sparse labels → train → predict → evaluate → scene")
    s.add_argument("--out", required=True)
    s.add_argument("--cache")
    s.add_argument("--epochs", type=int, default=None)
    s.add_argument("--backbone")
    s.add_argument("--weights", default="pretrained")
    s.add_argument("--strategy", default="auto")
    s.add_argument("--device", default="auto")
    s.set_defaults(func=cmd_demo)
    return p


def _cancel(*_):
    raise KeyboardInterrupt  # Slicer's Cancel and `kill` end the run like Ctrl-C


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _cancel)
    from .lifeline import start_from_environment

    watchdog = start_from_environment()   # the runner's stop file / Slicer gone → a clean stop
    try:
        return args.func(args)
    except MedTransferError as exc:
        print(json.dumps({"event": "error", "message": str(exc)}), flush=True)
        print(f"medtransfer: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(json.dumps({"event": "cancelled"}), flush=True)
        why = f" ({watchdog.reason})" if watchdog is not None and watchdog.reason else ""
        print(f"medtransfer: cancelled{why}", file=sys.stderr)
        return 130
    finally:
        if watchdog is not None:
            watchdog.stop()
