"""The ``medtransfer`` sub-commands that set up, train, advise, export, apply and demo; each
takes the parsed arguments and returns the exit code."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from MedTransferLib.core.defaults import CONTINUE_EPOCHS
from MedTransferLib.core.defaults import TRAINING as D
from MedTransferLib.core.errors import MedTransferError


def parse_slices(spec: str, option: str = "--slices") -> list[int]:
    """Slice indices from ``'3,5,10-20'`` (ranges inclusive); ``option`` names the input in errors."""
    out = []
    try:
        for part in spec.split(","):
            if "-" in part:
                a, b = (int(v) for v in part.split("-"))
                if b < a:
                    raise MedTransferError(f"{option} '{spec}': the range '{part.strip()}' runs backwards; "
                                           f"write it as {b}-{a}")
                out += list(range(a, b + 1))
            elif part.strip():
                out.append(int(part))
    except ValueError:
        raise MedTransferError(f"{option} '{spec}' is not a list like '3,5,10-20'") from None
    return out


def one_or_many(paths: list[str]):
    return paths[0] if len(paths) == 1 else paths


def weights_or_none(value: str | None):
    return None if value in (None, "none", "random") else value


def cmd_sampledata(a) -> int:
    from MedTransferLib.data.sampledata import sample_data

    print(sample_data(a.cache))
    return 0


def cmd_backbones(a) -> int:
    from MedTransferLib.models.backbones import catalogue

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
    from MedTransferLib import train
    from MedTransferLib.core.progress import Reporter

    bar = {"auto": None, "bar": True, "json": False}[a.progress]
    reporter = Reporter(stream=sys.stdout, bar=bar)
    mode, slices = a.mode, a.slices
    if a.init_from and None in (mode, slices):   # --from continues the model as it was trained
        from MedTransferLib.package.store import ModelPackage

        pkg = ModelPackage.load(a.init_from)
        mode, slices = mode or pkg.mode, pkg.slices if slices is None else slices
    config = dict(mode=mode or D["mode"], backbone=a.backbone, weights=weights_or_none(a.weights), strategy=a.strategy,
                  slices=D["slices"] if slices is None else slices, overlap=a.overlap, stem=a.stem,
                  epochs=a.epochs if a.epochs is not None else CONTINUE_EPOCHS if a.init_from else D["epochs"],
                  steps_per_epoch=a.steps_per_epoch, batch_size=a.batch_size, lr=a.lr, patch=a.patch,
                  device=a.device, seed=a.seed, val_fraction=a.val_fraction, modality=a.modality,
                  patience=a.patience, histogram_standardise=a.histogram_standardise, oom_retry=a.oom_retry,
                  max_seconds=a.max_seconds, init_from=a.init_from, preview=a.preview,
                  preview_seconds=a.preview_seconds, small_batch_epochs=a.small_batch_epochs)
    if a.axis is not None:
        config["axis"] = a.axis
    from MedTransferLib.core.files import write_json

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

    from MedTransferLib.core.rundir import check_writable, ensure_free

    if os.environ.get("RANK", "0") == "0":   # under torchrun only rank 0 writes into the folder
        check_writable(Path(a.out))
        ensure_free(a.out)
        write_json(Path(a.out) / "train_args.json", {"datalist": str(Path(a.datalist).resolve()), "config": config})
    train(a.datalist, a.out, reporter=reporter, **config)
    return 0


def cmd_advise(a) -> int:
    from MedTransferLib.data.datalist import load_datalist
    from MedTransferLib.training.advisor import advise

    dl = load_datalist(a.datalist)
    advice = advise(dl.load_cases(), dl.labels, backbone=a.backbone, weights=weights_or_none(a.weights),
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

    from MedTransferLib.inference.export import export_package

    formats = a.format
    if formats is None:   # both where the optional onnx package is installed
        formats = ["torchscript"] + (["onnx"] if importlib.util.find_spec("onnx") else [])
        if "onnx" not in formats:
            print("note: ONNX skipped (pip install onnx to get model.onnx too)", file=sys.stderr)
    paths = export_package(a.model, a.out, formats)
    print(json.dumps({"event": "done", **{k: str(v) for k, v in paths.items()}}))
    return 0


def cmd_apply(a) -> int:
    from MedTransferLib.app.apply import run

    run(a.request, sys.stdout)
    return 0


def cmd_doctor(a) -> int:
    from MedTransferLib.system.doctor import report, text

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
    from MedTransferLib.system.wheelhouse import build, pip_commands

    if a.dry_run:
        for cmd in pip_commands(a.dir, a.python, a.platform, a.torch):
            print(" ".join(cmd))
        return 0
    path = build(a.dir, a.python, a.platform, a.torch, a.weights or ())
    print(f"wheelhouse written: {path.parent} (copy it to the offline machine; in Slicer: MedTransfer → "
          f"Install from folder…)")
    return 0


def cmd_demo(a) -> int:
    from MedTransferLib.app.demo import run_demo

    run_demo(a.out, cache=a.cache, epochs=a.epochs, device=a.device, **(
        {"backbone": a.backbone} if a.backbone else {}), weights=weights_or_none(a.weights),
        strategy=a.strategy)
    return 0
