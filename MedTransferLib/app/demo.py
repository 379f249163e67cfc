"""The main job on real data: Colin27 T1 with every 10th axial slice labelled → fine-tuned 2.5D
model → whole-volume prediction → Dice/HD95 on the never-labelled slices → NIfTI, CSV, PNG and a
Slicer scene (written with slicer-core's MRML)."""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

from MedTransferLib.app.overlay import overlay_png
from MedTransferLib.core.files import make_folder, write_csv, write_json
from MedTransferLib.core.progress import Reporter
from MedTransferLib.data.io import read_case, write_label
from MedTransferLib.data.metrics import evaluate, summary
from MedTransferLib.data.sampledata import sample_data, sparse_datalist
from MedTransferLib.inference.segment import predict

EVERY = 10  # every 10th axial slice labelled, the rest hidden


def run_demo(out, cache=None, epochs=None, device="auto", log=sys.stderr, **train_kw) -> dict:
    from MedTransferLib import load_datalist, train

    out = make_folder(out)
    t0 = time.monotonic()
    datalist = sample_data(cache)
    sparse = sparse_datalist(datalist, out / "dataset_sparse.json", every=EVERY)
    dl = load_datalist(sparse)
    entry = dl.training[0]
    print(f"sample data: {datalist}\nlabelled axial slices: every {EVERY}th "
          f"({len(entry.labelled_slices)} of the volume's slices)", file=log)
    if epochs is not None:
        train_kw["epochs"] = epochs
    jsonl = open(out / "train_log.jsonl", "w", encoding="utf-8")
    reporter = Reporter(stream=jsonl, bar=log.isatty() if hasattr(log, "isatty") else False, lines=True)
    t_train = time.monotonic()
    run = train(dl, out, reporter=reporter, device=device, **train_kw)
    jsonl.close()
    train_s = time.monotonic() - t_train

    case = read_case(entry.image, entry.label)  # the full reference label, read once
    t_pred = time.monotonic()
    pred = predict(run.package, case, device=device)
    pred_s = time.monotonic() - t_pred
    write_label(out / "prediction.nii.gz", pred.label, case.geometry)
    write_csv(out / "volumes.csv", pred.volumes())

    ref = case.label
    held_out = [s for s in range(case.geometry.size[2]) if s not in set(entry.labelled_slices)]
    rows = evaluate(pred.label, ref, pred.labels, case.geometry, held_out, axis=2, case_id=case.case_id)
    write_csv(out / "metrics.csv", rows)
    overlay_png(out / "overlay.png", case.image, pred.label, case.geometry, pred.labels,
                [55, 65, 75, 85], reference=ref)
    scene_path = _write_scene(out, case, pred, rows)
    s = summary(rows)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"mean_dice": s["mean_dice"], "min_dice": s["min_dice"], "mean_hd95_mm": s["mean_hd95_mm"],
              "dice": {r["structure"]: r["dice"] for r in rows},
              "train_seconds": round(train_s, 1), "steps": run.metrics["steps_run"],
              "seconds_per_step": round(train_s / max(1, run.metrics["steps_run"]), 3),
              "predict_seconds": round(pred_s, 2), "peak_rss_mb": round(peak_mb),
              "total_seconds": round(time.monotonic() - t0, 1), "scene": str(scene_path) if scene_path else None}
    write_json(out / "summary.json", result)
    print("\nDice on the never-labelled slices:", file=log)
    for r in rows:
        print(f"  {r['structure']:16s} Dice {r['dice']:.3f}   HD95 {r['hd95_mm']:6.2f} mm", file=log)
    print(f"  {'mean':16s} Dice {s['mean_dice']:.3f}   HD95 {s['mean_hd95_mm']:6.2f} mm", file=log)
    print(f"\noutputs in {out}: prediction.nii.gz, metrics.csv, volumes.csv, overlay.png"
          f"{', scene/MedTransferDemo.mrml' if scene_path else ''}, model/", file=log)
    print(json.dumps({"event": "demo", **result}))
    return result


def _write_scene(out: Path, case, pred, rows):
    try:
        import slicer  # noqa: F401  (slicer-core wheel, or the Slicer application)
    except ImportError:
        print("slicer-core is not installed: no Slicer scene written (pip install slicer-core)",
              file=sys.stderr)
        return None
    from MedTransferLib.slicer import bridge as sb

    scene = slicer.vtkMRMLScene()
    volume = sb.case_to_volume_node(scene, case, "Colin27 T1")
    sb.label_to_segmentation_node(scene, pred.label, case.geometry, pred.labels,
                                  "MedTransfer prediction", reference_volume=volume)
    sb.rows_to_table_node(scene, pred.volumes(), "Structure volumes")
    sb.rows_to_table_node(scene, rows, "Dice and HD95 (never-labelled slices)")
    return sb.save_scene(scene, out / "scene" / "MedTransferDemo.mrml")
