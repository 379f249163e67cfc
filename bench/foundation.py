"""Foundation benchmark: the main job (Colin27, every 10th axial slice labelled, Dice on the
never-labelled slices) with the default settings, with ``--strategy frozen`` and with a randomly
initialised encoder, so a reader sees what pretraining buys.

    .venv/bin/python bench/foundation.py --out runs/bench_foundation

Prints a Markdown table and writes ``results.json`` in --out. Not a test: takes ~20 min on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import subprocess
import sys
from pathlib import Path

VARIANTS = {
    "default (finetune, ImageNet Lite0)": {},
    "frozen encoder (feature extraction)": {"strategy": "frozen"},
    "random-init encoder (no pretraining)": {"weights": None},
}


def machine() -> str:
    from machine import describe  # bench/machine.py

    return describe()


def run_variant(name: str, kw: dict, out: Path) -> dict:
    """Each variant in its own process, so peak memory (RSS) is per variant."""
    code = ("import json,sys; from MedTransferLib.app.demo import run_demo; "
            f"r = run_demo({str(out)!r}, log=sys.stderr, **json.loads(sys.argv[1])); print(json.dumps(r))")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(kw)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="runs/bench_foundation")
    a = p.parse_args()
    out = Path(a.out)
    results = {"machine": machine(), "date": datetime.date.today().isoformat(), "variants": {}}
    for i, (name, kw) in enumerate(VARIANTS.items()):
        print(f"running: {name}", file=sys.stderr, flush=True)
        results["variants"][name] = run_variant(name, kw, out / f"variant{i}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(markdown(results))


def markdown(results: dict) -> str:
    buf = io.StringIO()
    variants = results["variants"]
    first = next(iter(variants.values()))
    structures = list(first["dice"])
    buf.write(f"Measured {results['date']} on {results['machine']}.\n\n")
    buf.write("| structure | " + " | ".join(variants) + " |\n")
    buf.write("|---|" + "---:|" * len(variants) + "\n")
    for s in structures:
        buf.write(f"| {s} | " + " | ".join(f"{v['dice'][s]:.3f}" for v in variants.values()) + " |\n")
    rows = [("**mean Dice**", "mean_dice", "{:.3f}"), ("min Dice", "min_dice", "{:.3f}"),
            ("mean HD95 (mm)", "mean_hd95_mm", "{:.2f}"), ("training steps", "steps", "{}"),
            ("time per training step (s)", "seconds_per_step", "{:.3f}"),
            ("training time (s)", "train_seconds", "{:.0f}"),
            ("prediction time per volume (s)", "predict_seconds", "{:.2f}"),
            ("peak memory, RSS (MB)", "peak_rss_mb", "{}"), ("whole job (s)", "total_seconds", "{:.0f}")]
    for label, key, fmt in rows:
        buf.write(f"| {label} | " + " | ".join(fmt.format(v[key]) for v in variants.values()) + " |\n")
    return buf.getvalue()


if __name__ == "__main__":
    from machine import print_machine  # bench/machine.py

    print_machine()
    main()
