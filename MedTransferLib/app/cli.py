"""The one command line used by terminals, clusters and the Slicer module (``medtransfer`` or
``python -m MedTransferLib``). User errors are one line on stderr and exit code 2; training
prints one JSON object per line on stdout."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from MedTransferLib.app import commands as c
from MedTransferLib.app import evaluate_commands as e
from MedTransferLib.core.defaults import CONTINUE_EPOCHS
from MedTransferLib.core.defaults import TRAINING as D
from MedTransferLib.core.errors import MedTransferError
from MedTransferLib.core.files import check_outputs
from MedTransferLib.core.launch import SPARE_FLAG
from MedTransferLib.core.lifeline import (
    remove_control_folder,
    start_from_environment,
    write_or_silence,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medtransfer", description="Transfer learning on your own CT/MRI volumes.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("sampledata", help="fetch Colin27 + AAL sample data; print its dataset.json path")
    s.add_argument("--cache", help="cache folder (default ~/.cache/medtransfer or $MEDTRANSFER_CACHE)")
    s.set_defaults(func=c.cmd_sampledata)

    s = sub.add_parser("backbones", help="list the pretrained backbones")
    s.add_argument("--json", action="store_true", help="machine-readable list")
    s.set_defaults(func=c.cmd_backbones)

    s = sub.add_parser("train", help="fine-tune a pretrained network on a datalist")
    s.add_argument("--datalist", help="dataset.json (MSD/MONAI format)")
    s.add_argument("--out", help="run directory; the model goes to OUT/model")
    s.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run (killed, cancelled, "
                                                        "crashed) from its last complete epoch")
    s.add_argument("--backbone", default=D["backbone"])
    s.add_argument("--weights", default=D["weights"],
                   help="'pretrained' (default: the backbone's own ImageNet/MedicalNet weights), "
                        "'none' (random init) or a weights file")
    s.add_argument("--strategy", default=D["strategy"],
                   help="auto (default: the advisor picks), finetune, frozen, partial:N, gradual[:E], "
                        "discriminative[:D], gradual+discriminative, bn-only, adabn, adabn+<strategy>")
    s.add_argument("--mode", choices=["2.5d", "3d"],
                   help="2.5d: k slices into a 2D network (default); 3d: patches into a 3D network "
                        "(with --from: the model's)")
    s.add_argument("--slices", type=int,
                   help="2.5d: adjacent slices as channels (odd; default 3; with --from: the model's)")
    s.add_argument("--stem", default=D["stem"], choices=["mean", "repeat"],
                   help="how pretrained first-layer weights are adapted to k≠3 channels (default mean)")
    s.add_argument("--overlap", type=float, default=D["overlap"], help="3d: sliding-window overlap (default 0.25)")
    s.add_argument("--axis", type=int, choices=[0, 1, 2], help="voxel axis to slice along (default: datalist's, else 2)")
    s.add_argument("--from", dest="init_from", metavar="RUN_DIR",
                   help="continue from an earlier model of the same structures (its whole network and "
                        "intensity recipe, mode and slices), e.g. after labelling more slices; default "
                        f"--epochs {CONTINUE_EPOCHS}, --strategy finetune")
    s.add_argument("--epochs", type=int, default=None, help=f"default {D['epochs']} ({CONTINUE_EPOCHS} with --from)")
    s.add_argument("--steps-per-epoch", type=int, default=D["steps_per_epoch"])
    s.add_argument("--batch-size", type=int, default=None, help="default: from the crop size")
    s.add_argument("--small-batch-epochs", type=int, default=D["small_batch_epochs"], metavar="N",
                   help=f"2.5D on a CPU, a new run with the automatic batch: its first N epochs train on half "
                        f"batches, for earlier useful previews (default {D['small_batch_epochs']}; 0: off)")
    s.add_argument("--patch", type=int, default=None,
                   help="crop edge in voxels (default: from structure size; 2.5d in-plane, 3d cube)")
    s.add_argument("--lr", type=float, default=D["lr"])
    s.add_argument("--patience", type=int, default=D["patience"])
    s.add_argument("--val-fraction", type=float, default=D["val_fraction"])
    s.add_argument("--modality", default=D["modality"], choices=["auto", "MR", "CT"])
    s.add_argument("--device", default=D["device"])
    s.add_argument("--seed", type=int, default=D["seed"])
    s.add_argument("--max-seconds", type=float, default=D["max_seconds"], metavar="S",
                   help="keep the whole job, start-up to exit, within S seconds, with a valid model (default: the "
                        "full schedule)")
    s.add_argument("--oom-retry", action="store_true",
                   help="if a batch does not fit in (GPU) memory, start again with half the batch")
    s.add_argument("--preview", metavar="DIR",
                   help="live preview: every few seconds write the slices predicted so far to DIR/preview.nrrd "
                        "(and a 'preview' event); DIR/view.json may name the slices to show first")
    s.add_argument("--preview-seconds", type=float, default=None, metavar="S",
                   help="seconds between previews (default 5 on a GPU, 25 on a CPU; never more than 10%% "
                        "of the training time)")
    s.add_argument("--histogram-standardise", action="store_true",
                   help="MR: Nyúl histogram standardisation learnt from the training images")
    s.add_argument("--progress", default="auto", choices=["auto", "bar", "json"],
                   help="terminal bar on stderr (auto: when stderr is a terminal); JSON lines always on stdout")
    s.set_defaults(func=c.cmd_train)

    s = sub.add_parser("advise", help="measure data size and domain distance; recommend a strategy")
    s.add_argument("--datalist", required=True)
    s.add_argument("--backbone", default=D["backbone"])
    s.add_argument("--weights", default=D["weights"])
    s.add_argument("--mode", default=D["mode"], choices=["2.5d", "3d"])
    s.add_argument("--slices", type=int, default=D["slices"])
    s.add_argument("--lr", type=float, default=D["lr"])
    s.add_argument("--epochs", type=int, default=D["epochs"], help="the planned training length (sets gradual's pace)")
    s.add_argument("--json", action="store_true")
    s.add_argument("--progress", default="auto", choices=["auto", "json"],
                   help="json: the advice as one JSON event line (what the Slicer panel reads)")
    s.set_defaults(func=c.cmd_advise)

    s = sub.add_parser("apply", help="apply a model to several volumes listed in a request file (the Slicer "
                                     "panel's Apply)")
    s.add_argument("--request", required=True, help="apply.json: model, device, cases (image, out, reference)")
    s.add_argument("--progress", default="json", choices=["json"], help="JSON event lines on stdout")
    s.set_defaults(func=c.cmd_apply)

    s = sub.add_parser("doctor", help="check this machine: torch build vs driver and GPU, packages, offline "
                                      "weights, free disk, write access — each problem with its fix")
    s.add_argument("--out-dir", default=".", help="the folder runs will be written to (checked for space and "
                                                  "write access)")
    s.add_argument("--json", action="store_true")
    s.add_argument("--progress", default="auto", choices=["auto", "json"])
    s.set_defaults(func=c.cmd_doctor)

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
    s.set_defaults(func=c.cmd_wheelhouse)

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
    s.add_argument("--painted", metavar="LABEL",
                   help="2.5d: this image's own label map, painted on some slices: the shape between "
                        "painted slices guides the network, painted slices stay as painted")
    s.add_argument("--labelled-slices", metavar="LIST",
                   help="with --painted: the painted slices, e.g. 34,45,50-52 (slices painted as empty "
                        "count too; default: every slice holding a label)")
    s.add_argument("--slice-axis", type=int, default=2, choices=[0, 1, 2],
                   help="with --painted: the voxel axis the slices were painted along (2 = axial k)")
    s.set_defaults(func=e.cmd_predict)

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
    s.set_defaults(func=e.cmd_evaluate)

    s = sub.add_parser("audit", help="label audit: agreement between annotators, or label statistics per site")
    s.add_argument("--label", nargs="+", help="two or more annotations (label maps) of the same volume")
    s.add_argument("--datalist", help="compare sites: a datalist whose entries have a \"site\"")
    s.add_argument("--labels", help="dataset.json whose 'labels' name the structures")
    s.add_argument("--model", help="model folder whose labels name the structures")
    s.add_argument("--out", help="CSV of the audit table")
    s.set_defaults(func=e.cmd_audit)

    s = sub.add_parser("export", help="TorchScript, ONNX and labels.json of a model package, for use elsewhere")
    s.add_argument("--model", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--format", nargs="+", choices=["torchscript", "onnx"],
                   help="default: both (ONNX only when the onnx package is installed)")
    s.add_argument("--progress", default="auto", choices=["auto", "json"], help="the result is always a JSON line")
    s.set_defaults(func=c.cmd_export)

    s = sub.add_parser("demo", help="the main job: sample data → sparse labels → train → predict → evaluate → scene")
    s.add_argument("--out", required=True)
    s.add_argument("--cache")
    s.add_argument("--epochs", type=int, default=None)
    s.add_argument("--backbone")
    s.add_argument("--weights", default="pretrained")
    s.add_argument("--strategy", default="auto")
    s.add_argument("--device", default="auto")
    s.set_defaults(func=c.cmd_demo)
    return p


def _cancel(*_):
    raise KeyboardInterrupt  # Slicer's Cancel and `kill` end the run like Ctrl-C


# every sub-command's files, by argparse name: an output may be none of the inputs (checked first)
OUTPUTS = {"out": "--out", "table": "--table"}
INPUTS = {"image": "--image", "painted": "--painted", "adapt_bn_on": "--adapt-bn-on", "pred": "--pred",
          "label": "--label", "labels": "--labels", "datalist": "--datalist", "request": "--request",
          "model": "--model", "init_from": "--from"}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _cancel)
    watchdog = start_from_environment()   # the runner's stop file / Slicer gone → a clean stop
    try:
        check_outputs({opt: getattr(args, k, None) for k, opt in OUTPUTS.items()},
                      {opt: getattr(args, k, None) for k, opt in INPUTS.items()})
        return args.func(args)
    except MedTransferError as exc:
        write_or_silence(sys.stdout, json.dumps({"event": "error", "message": str(exc)}) + "\n")
        write_or_silence(sys.stderr, f"medtransfer: error: {exc}\n")
        return 2
    except KeyboardInterrupt:   # also when stdout's reader has gone (core/progress.py)
        if watchdog is not None and watchdog.orphaned():
            remove_control_folder()   # the runner that made it is gone and cannot remove it
        write_or_silence(sys.stdout, json.dumps({"event": "cancelled"}) + "\n")
        why = f" ({watchdog.reason})" if watchdog is not None and watchdog.reason else ""
        write_or_silence(sys.stderr, f"medtransfer: cancelled{why}\n")
        return 130
    finally:
        if watchdog is not None:
            watchdog.stop()


def spare() -> int:
    """``python -m MedTransferLib --spare`` (core/launch.py): load what the jobs need, then run the
    one command the runner sends on stdin as a JSON list of arguments. Nothing is printed until
    then; stdin closed first (the spare dropped, its parent gone) → exit."""
    try:
        import monai.networks.nets  # noqa: F401  (the decoder; MONAI imports torchvision too)
        import SimpleITK  # noqa: F401

        import MedTransferLib.inference.segment  # noqa: F401
        import MedTransferLib.training.segmentation  # noqa: F401
    except ImportError:
        pass   # e.g. no torch yet: the command itself then reports it, as in a process of its own
    line = sys.stdin.readline()
    if not line.strip():
        remove_control_folder()   # dropped, or its parent is gone and cannot remove it
        return 0
    return main(json.loads(line))


def run() -> None:
    """``python -m MedTransferLib`` and the ``medtransfer`` command: :func:`main`, then the exit."""
    code = spare() if sys.argv[1:] == [SPARE_FLAG] else main()
    sys.stdout.flush()
    sys.stderr.flush()
    if "coverage" not in sys.modules:
        # Every output is written (atomically) and both streams are flushed: skip the interpreter's
        # teardown of torch, MONAI and SimpleITK: a training job exited 1.36 s after its last event
        # with the teardown, 0.14 s without (bench/update_timeline.py, 2-core AMD EPYC,
        # 2026-12-03) — time a training budget keeps back (core/defaults.py EXIT_SECONDS). Not
        # under coverage, which writes its data at exit. An exception out of main() never gets here.
        os._exit(code or 0)
    sys.exit(code)
