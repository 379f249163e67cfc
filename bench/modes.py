"""2.5D vs 3D, and inflated-ImageNet 3D vs scratch 3D, on the sample task (Colin27, every 10th
axial slice labelled, Dice/HD95 on the never-labelled slices), at an equal number of training
steps. Each variant runs in its own process (peak RSS per variant).

    .venv/bin/python bench/modes.py --out runs/bench_modes [--steps 150]

On 2 CPU cores a 3D step (96³ patches, batch 2) takes ~4 s, so the default 150 steps — a fifth
of the product's default 800 — keep the whole comparison near 30 min. Not a test.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from foundation import machine, markdown, run_variant  # noqa: E402


def variants(epochs: int) -> dict:
    return {
        "2.5D, Lite0 ImageNet": {"epochs": epochs},
        "3D, Lite0 ImageNet inflated": {"mode": "3d", "epochs": epochs},
        "3D, Lite0 random init": {"mode": "3d", "weights": None, "epochs": epochs},
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="runs/bench_modes")
    p.add_argument("--steps", type=int, default=150, help="training steps per variant (multiple of 50)")
    p.add_argument("--only", help="run only the variants whose name contains this")
    a = p.parse_args()
    out = Path(a.out)
    results = {"machine": machine(), "date": datetime.date.today().isoformat(), "variants": {}}
    for i, (name, kw) in enumerate(variants(max(1, a.steps // 50)).items()):
        if a.only and a.only not in name:
            continue
        print(f"running: {name}", file=sys.stderr, flush=True)
        results["variants"][name] = run_variant(name, kw, out / f"variant{i}")
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=2))
    print(markdown(results))


if __name__ == "__main__":
    from machine import print_machine  # bench/machine.py

    print_machine()
    main()
