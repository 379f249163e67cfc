"""Windows per forward pass in 3D prediction (``predict``'s ``batch_size // 8`` on a GPU): time per
volume and labels against the default, on Colin27 and the 512×512×``--ct-depth`` CT-sized volume,
for a trained 3D package (bench/performance.py leaves one in its ``--out``/mt_run_3d/model).
Run by bench/gpu_check.sh after the comparison; numbers go to bench/NOTES.md.

Usage: python bench/window_batch.py PACKAGE [--device cuda] [--data .gpu] [--ct-depth 300]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from performance import sample, synthetic_ct  # noqa: E402

import MedTransferLib as mt  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("package")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--data", default=".gpu")
    ap.add_argument("--ct-depth", type=int, default=300)
    ap.add_argument("--windows", default="2,4,8,16", help="windows per forward pass to time (the first is the reference; 2 is the GPU default)")
    a = ap.parse_args(argv)
    pkg = mt.ModelPackage.load(a.package)
    cases = [sample(a.data)[2][0]] + ([synthetic_ct(a.ct_depth)] if a.ct_depth else [])
    windows = [int(w) for w in a.windows.split(",")]

    def timed(case, w):
        t0 = time.perf_counter()
        label = mt.predict(pkg, case, device=a.device, batch_size=8 * w, check=False).label
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0, label

    timed(cases[0], windows[0])   # kernels load once, untimed
    print("| volume | windows per pass | s (best of 2) | speed vs the first | identical voxels |\n|---|---:|---:|---:|---:|")
    for case in cases:
        size = "×".join(str(n) for n in case.image.shape[::-1])
        base = None
        for w in windows:
            runs = [timed(case, w) for _ in range(2)]
            s, label = min(r[0] for r in runs), runs[0][1]
            if base is None:
                base = (s, label)
            print(f"| {size} | {w} | {s:.2f} | {base[0] / s:.2f}× | {float((label == base[1]).mean()):.6f} |", flush=True)
    return 0


if __name__ == "__main__":
    from machine import print_machine  # bench/machine.py

    print_machine()
    raise SystemExit(main())
