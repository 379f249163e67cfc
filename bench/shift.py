"""Domain shift on the sample task: what each correction buys.

A. Covariate shift (segmentation). The demo model (Colin27, every 10th axial slice labelled)
   predicts the same head after controlled changes to its intensities or resolution — the kind
   of difference a new scanner or protocol makes. Dice on the never-labelled slices under three
   pipelines:
   - ``fixed stats``: intensities normalised with the *training image's* statistics (clip at its
     0.5/99.5 percentiles, its mean and std) — what a pipeline with dataset-level normalisation
     does, and the failure the input check exists for;
   - ``per-image`` (the input check's fix, MedTransfer's default): each image standardised with
     its own percentiles;
   - ``+ AdaBN``: per-image plus BatchNorm statistics re-estimated on the shifted volume.
   Also the OOD score/verdict and the number of input-check warnings for each shifted volume.

B. Prior shift (classification). A slice-level classifier ("does this axial slice contain the
   hippocampus?", 2.5D, trained briefly on every 3rd slice of 20–139) is applied to target sets
   drawn from the other slices of 20–139 with hippocampus prevalence 1 %, 10 % and 50 % (2000
   draws with replacement, 5 repeats). Accuracy and expected calibration error (15 bins) of the calibrated
   (temperature-scaled) probabilities before and after EM prior correction, and the prior EM
   and BBSE estimate.

Usage: .venv/bin/python bench/shift.py [--model runs/demo/model] [--out runs/bench_shift]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import torch  # noqa: E402

import MedTransferLib as mt  # noqa: E402
from MedTransferLib import shift  # noqa: E402
from MedTransferLib.data.metrics import evaluate, summary  # noqa: E402
from MedTransferLib.data.slabs import from_slices_first, to_slices_first  # noqa: E402
from MedTransferLib.inference.windows import predict_slices  # noqa: E402


def shifts(image: np.ndarray, spacing, rng) -> dict:
    k, j, i = np.meshgrid(*[np.linspace(-1, 1, n) for n in image.shape], indexing="ij")
    lo = float(image.min())
    pos = image - lo
    bias = np.exp(0.35 * (0.8 * i + 0.5 * j - 0.6 * k + 0.4 * i * j))          # smooth, ×0.5–×2
    img = sitk.GetImageFromArray(image.astype(np.float32))
    img.SetSpacing(tuple(float(s) for s in spacing))
    half = sitk.Resample(img, [max(1, s // 2) for s in img.GetSize()], sitk.Transform(), sitk.sitkLinear,
                         img.GetOrigin(), [s * 2 for s in img.GetSpacing()], img.GetDirection())
    back = sitk.GetArrayFromImage(sitk.Resample(half, img, sitk.Transform(), sitk.sitkLinear))
    return {
        "none": image,
        "scale ×3, offset +200": image * 3 + 200,
        "gamma 0.5": np.sqrt(pos) * np.sqrt(pos.max()) + lo,
        "bias field ×0.5–×2": pos * bias + lo,
        "noise σ = 0.3 × std": image + rng.normal(0, 0.3 * image.std(), image.shape),
        "resolution ½ (2 mm)": back,
    }


def fixed_stats_standardise(image, ref_image, prep):
    """Normalise with the training image's percentiles, mean and std (not the image's own)."""
    s = ref_image[:: max(1, ref_image.shape[0] // 64)]
    lo, hi = np.percentile(s, prep.mr_percentiles)
    ref = np.clip(ref_image, lo, hi)
    return ((np.clip(image, lo, hi) - ref.mean()) / ref.std()).astype(np.float32)


def part_a(model_path: Path, out: Path) -> list[dict]:
    pkg = mt.ModelPackage.load(model_path)
    data = mt.sample_data()
    dl = mt.load_datalist(data)
    entry = dl.training[0]
    case = mt.read_case(entry.image, entry.label)
    every = 10
    labelled = set(range(0, case.geometry.size[2], every))
    held_out = [s for s in range(case.geometry.size[2]) if s not in labelled]
    model = pkg.build_model()
    prep = pkg.preprocessing
    rows = []
    rng = np.random.default_rng(0)
    for name, img in shifts(case.image, case.geometry.spacing, rng).items():
        img = img.astype(np.float32)
        row = {"shift": name}
        std = fixed_stats_standardise(img, case.image, prep)
        cls = predict_slices(model, np.ascontiguousarray(to_slices_first(std, pkg.axis)), pkg.slices, prep,
                             torch.device("cpu"))
        lut = np.array([0] + [lab.value for lab in pkg.labels], np.uint8)
        label = from_slices_first(lut[cls], pkg.axis)
        row["dice_fixed_stats"] = summary(evaluate(label, case.label, pkg.labels, case.geometry, held_out, 2))["mean_dice"]
        shifted = mt.Case(img, case.geometry, None, name)
        pred = mt.predict(pkg, shifted)
        row["dice_per_image"] = summary(evaluate(pred.label, case.label, pkg.labels, case.geometry, held_out, 2))["mean_dice"]
        row["ood_score"], row["ood"] = pred.ood.get("score"), pred.ood.get("verdict")
        row["input_warnings"] = len(pred.warnings)
        adapted = mt.predict(pkg, shifted, adapt_bn=True, check=False)
        row["dice_adabn"] = summary(evaluate(adapted.label, case.label, pkg.labels, case.geometry, held_out, 2))["mean_dice"]
        print(json.dumps(row), flush=True)
        rows.append(row)
    (out / "covariate.json").write_text(json.dumps(rows, indent=1))
    return rows


def part_b(out: Path, steps: int) -> list[dict]:
    from MedTransferLib.inference.classify import predict_class

    data = mt.sample_data()
    folder = Path(data).parent
    case = mt.read_case(folder / "ch2.nii.gz", folder / "deep_grey_matter.nii.gz")
    has = np.isin(case.label, [1, 2]).any(axis=(1, 2)).astype(int)      # hippocampus L/R per axial slice
    labelled = list(range(20, 140, 3))
    (out / "cls.json").write_text(json.dumps({
        "task": "classification", "classes": ["no hippocampus", "hippocampus"], "modality": "MR",
        "training": [{"image": str(folder / "ch2.nii.gz"), "slice_labels": {str(s): int(has[s]) for s in labelled}}]}))
    t0 = time.monotonic()
    run = mt.train(out / "cls.json", out / "cls_run", epochs=max(1, steps // 10), steps_per_epoch=10, batch_size=8,
                   patch=96, val_fraction=0.2)
    train_s = time.monotonic() - t0
    pkg = mt.ModelPackage.load(run.package)
    cal = pkg.manifest.calibration
    # judged on the unlabelled slices of the labelled range (20–139): slices far outside it are
    # trivially negative and would only dilute the errors
    others = [s for s in range(20, 140) if s not in labelled]
    rows_pred = predict_class(pkg, mt.read_case(folder / "ch2.nii.gz"), per_slice=True, slices=others)
    probs = np.array([[r["p_no hippocampus"], r["p_hippocampus"]] for r in rows_pred])
    truth = has[others]
    pos, neg = np.flatnonzero(truth == 1), np.flatnonzero(truth == 0)
    rng = np.random.default_rng(0)
    results = []
    for prevalence in (0.01, 0.10, 0.50):
        acc_b, acc_a, ece_b, ece_a, em_est, bbse_est = [], [], [], [], [], []
        for _ in range(5):
            n_pos = rng.binomial(2000, prevalence)
            idx = np.concatenate([rng.choice(pos, n_pos), rng.choice(neg, 2000 - n_pos)])
            p, y = probs[idx], truth[idx]
            prior, adj, _ = shift.em_prior(p, cal["source_prior"])
            acc_b.append(float((p.argmax(1) == y).mean()))
            acc_a.append(float((adj.argmax(1) == y).mean()))
            ece_b.append(shift.expected_calibration_error(p, y))
            ece_a.append(shift.expected_calibration_error(adj, y))
            em_est.append(float(prior[1]))
            if "confusion" in cal:
                bbse_est.append(float(shift.bbse_prior(cal["confusion"], p.argmax(1))[1]))
        r = {"prevalence": prevalence, "accuracy_before": np.mean(acc_b), "accuracy_after_em": np.mean(acc_a),
             "ece_before": np.mean(ece_b), "ece_after_em": np.mean(ece_a), "em_estimate": np.mean(em_est),
             "bbse_estimate": np.mean(bbse_est) if bbse_est else None}
        print(json.dumps(r), flush=True)
        results.append(r)
    meta = {"train_seconds": round(train_s, 1), "temperature": cal.get("temperature"),
            "held_out_slices": len(others), "held_out_positive": int(truth.sum())}
    print(json.dumps(meta))
    (out / "prior.json").write_text(json.dumps({"rows": results, **meta}, indent=1))
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="runs/demo/model", help="the demo's model (medtransfer demo --out runs/demo)")
    ap.add_argument("--out", default="runs/bench_shift")
    ap.add_argument("--steps", type=int, default=20, help="classifier training steps (part B; few: an imperfect classifier)")
    ap.add_argument("--only", choices=["a", "b"])
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    if a.only in (None, "a"):
        part_a(Path(a.model), out)
    if a.only in (None, "b"):
        part_b(out, a.steps)
    return 0


if __name__ == "__main__":
    from machine import print_machine  # bench/machine.py

    print_machine()
    raise SystemExit(main())
