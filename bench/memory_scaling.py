"""Peak memory and scaling (issue 8, parts 3 and 4). Each measurement runs in its own child
process, so every peak RSS is that process's own.

- ``build``: building the training set (read → standardise → cache as float32 + uint8) of N
  synthetic CT cases of 512×512×D: the peak RSS *increase* over the process before building,
  against the bytes of the cached arrays (target ≤ 2×).
- ``predict``: 2.5D prediction of a 512×512×600 CT-sized volume with a Lite0 model: the peak RSS
  increase over the process before predicting (model loaded, input in memory), against the input
  in float32 (target ≤ 3×).
- ``predict`` (3D): the same for a 3D MONAI-UNet package with 8 structures (96³ window).
- ``scaling``: time to build the training set + one epoch of 20 steps for 1, 2, 4 and 8 copies of
  a case, and for one case of depth 75, 150, 300, 600 slices; the fitted exponent of
  time ∝ size^b (b ≈ 1 is linear).

Usage: .venv/bin/python bench/memory_scaling.py [--only build|predict|predict3d|scaling]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _status(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def start_peak() -> float:
    """Reset the process's peak RSS (Linux: clear_refs 5) and return the current RSS in MB."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status("VmRSS")


def peak_since() -> float:
    return _status("VmHWM")


def synthetic_ct(depth: int, seed: int = 0, size: int = 512):
    import numpy as np

    import MedTransferLib as mt

    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[:depth, :size, :size]
    body = ((y - size / 2) / (size * 0.4)) ** 2 + ((x - size / 2) / (size * 0.45)) ** 2 < 1
    image = np.where(np.broadcast_to(body, (depth, size, size)), 40, -1000).astype(np.int16)
    image += rng.integers(-20, 20, image.shape, dtype=np.int16)
    label = np.zeros(image.shape, np.uint8)
    organ = ((y - size / 2) / 60.0) ** 2 + ((x - size / 2 - 60) / 80.0) ** 2 + ((z - depth / 2) / (depth / 4)) ** 2 < 1
    label[organ] = 1
    image[organ] = 60
    geo = mt.Geometry((size, size, depth), (0.8, 0.8, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    return mt.Case(image, geo, label, f"ct{seed}")


def child_build(cases: int, depth: int) -> dict:
    import numpy as np

    from MedTransferLib.data.preprocessing import Preprocessing
    from MedTransferLib.data.slabs import Volume

    data = [synthetic_ct(depth, seed=i) for i in range(cases)]
    prep = Preprocessing(modality="CT")
    before = start_peak()
    t0 = time.perf_counter()
    vols = [Volume.from_case(c, prep, 2, [1]) for c in data]
    seconds = time.perf_counter() - t0
    cached = sum(v.image.nbytes + v.target.nbytes for v in vols) / 2**20
    increase = peak_since() - before
    return {"cases": cases, "depth": depth, "cached_mb": round(cached), "peak_increase_mb": round(increase),
            "ratio": round(increase / cached, 2), "seconds": round(seconds, 1), "peak_rss_mb": round(rss_mb()),
            "hold": int(np.sum([v.image.shape[1] for v in vols]))}


def child_predict(depth: int, package: str) -> dict:
    import MedTransferLib as mt

    pkg = mt.ModelPackage.load(package)
    case = synthetic_ct(depth)
    case.label = None
    case.image = case.image.astype("float32")   # what read_case hands over
    input_mb = case.image.nbytes / 2**20
    before = start_peak()
    t0 = time.perf_counter()
    pred = mt.predict(pkg, case, check=False)
    seconds = time.perf_counter() - t0
    increase = peak_since() - before
    return {"depth": depth, "input_float32_mb": round(input_mb), "peak_increase_mb": round(increase),
            "ratio": round(increase / input_mb, 2), "seconds": round(seconds, 1), "peak_rss_mb": round(rss_mb()),
            "labelled_voxels": int((pred.label > 0).sum())}


def package_3d(run: Path, structures: int = 8) -> Path:
    """A 3D MONAI-UNet package with ``structures`` foreground classes and a 96³ window, trained
    for one step on a small synthetic volume: the weights do not change the memory of prediction
    (input, one chunk's blended scores, output), the number of classes does."""
    import numpy as np

    import MedTransferLib as mt

    if (run / "model").exists():
        return run / "model"
    rng = np.random.default_rng(0)
    case = synthetic_ct(96, size=128)
    case.label = np.zeros(case.image.shape, np.uint8)
    for v in range(1, structures + 1):
        z, y, x = rng.integers(12, 84, 3)
        case.label[z - 6:z + 6, y - 6:y + 6, x - 6:x + 6] = v
    mt.train([case], run, labels=[mt.Label(v, f"s{v}", (0.5, 0.5, 0.5)) for v in range(1, structures + 1)],
             mode="3d", backbone="unet", weights=None, epochs=1, steps_per_epoch=1, batch_size=1, patch=96,
             val_fraction=0)
    return run / "model"


def child_scaling(cases: int, depth: int, out: str) -> dict:
    import MedTransferLib as mt

    data = [synthetic_ct(depth, seed=i, size=256) for i in range(cases)]
    t0 = time.perf_counter()
    mt.train(data, out, labels=[mt.Label(1, "organ", (1, 0, 0))], backbone="resnet18", weights=None,
             strategy="finetune", epochs=1, steps_per_epoch=20, batch_size=8, patch=128, val_fraction=0)
    return {"cases": cases, "depth": depth, "seconds": round(time.perf_counter() - t0, 2)}


def run_child(kind: str, *args) -> dict:
    code = (f"import sys, json; sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(ROOT / 'bench')!r}); "
            f"import memory_scaling as m, torch; torch.set_num_threads(2); "
            f"print('RESULT', json.dumps(m.child_{kind}(*{args!r})))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=3600)
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(res.stderr[-2000:])
    return json.loads(line[7:])


def fit_exponent(xs, ys) -> float:
    import numpy as np

    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["build", "predict", "predict3d", "scaling"])
    ap.add_argument("--out", default="runs/bench_memory")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    if a.only in (None, "build"):
        results["build"] = [run_child("build", n, 300) for n in (1, 2)]
        print(json.dumps({"build": results["build"]}), flush=True)
    if a.only in (None, "predict"):
        import MedTransferLib as mt

        pkg_dir = out / "lite0_run"
        if not (pkg_dir / "model").exists():
            case = synthetic_ct(40, size=256)
            mt.train([case], pkg_dir, labels=[mt.Label(1, "organ", (1, 0, 0))], strategy="finetune", epochs=1,
                     steps_per_epoch=1, batch_size=2, patch=128, val_fraction=0)
        results["predict"] = run_child("predict", 600, str(pkg_dir / "model"))
        print(json.dumps({"predict": results["predict"]}), flush=True)
    if a.only in (None, "predict3d"):
        results["predict_3d"] = run_child("predict", 600, str(package_3d(out / "unet3d_run")))
        print(json.dumps({"predict_3d": results["predict_3d"]}), flush=True)
    if a.only in (None, "scaling"):
        by_cases = [run_child("scaling", n, 100, str(out / f"s_c{n}")) for n in (1, 2, 4, 8)]
        by_depth = [run_child("scaling", 1, d, str(out / f"s_d{d}")) for d in (75, 150, 300, 600)]
        results["scaling"] = {
            "by_cases": by_cases, "by_depth": by_depth,
            "exponent_cases": round(fit_exponent([r["cases"] for r in by_cases], [r["seconds"] for r in by_cases]), 2),
            "exponent_depth": round(fit_exponent([r["depth"] for r in by_depth], [r["seconds"] for r in by_depth]), 2)}
        print(json.dumps({"scaling": results["scaling"]}), flush=True)
    (out / "memory_scaling.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    from machine import print_machine  # bench/machine.py

    print_machine()
    raise SystemExit(main())
