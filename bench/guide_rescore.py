"""Re-scores the models an interactive bench run saved, with variants of the guide
(inference/guide.py), on exactly the same painted slices: what each part of the guide adds,
without training again (the guided prediction of a given model is deterministic).

    .venv/bin/python bench/guide_rescore.py runs/bench_interactive [runs/bench_interactive_ct ...]
                     [--weights 1:0.05 0.7:0.05 0.5:0.05 0.3:0.05 0.5:0.2] [--budgets 12 19]
                     [--empty 0.05 0.01 0.001] [--smooth 0 1]

For each round of each run (its ``results.json`` and ``run<N>/model``): Dice on the
never-labelled slices (mean / worst structure) of

- ``network``: the network alone;
- ``plain``: the guide without its wide-gap rules (every gap treated as narrow);
- ``open ends``: wide gaps leave a structure painted on one side only to the network, outline hard;
- ``default``: the guide as shipped (open ends and a soft outline across gaps wider than
  ``WIDE_GAP_MM``).

With ``--weights W:EPS ...`` the columns are instead the guide as shipped with its weight ``w``
and spread ``eps`` (``Guide.weight``, ``Guide.eps``) set to each pair: ``1:...`` is the
interpolation alone (the network only where the wide-gap rules leave it the say). With
``--empty EPS ...`` they are the guide as shipped with its spread where no structure can be
(``Guide.eps_empty``: beyond a slice painted empty, between two slices painted empty)
set to each value: ``0.05``, the outline's own ``EPS``, is the guide before ``EPS_EMPTY``.
With ``--smooth PX ...`` they are the network alone and the guided prediction with the smoothing
along the slices (``inference/windows.py``, ``SMOOTH_PIXELS``) set to each width: ``0`` is each
slice predicted alone; each cell adds the mean HD95 in mm. A ``medtransfer demo`` folder (``runs/demo``: its ``model`` and
``dataset_sparse.json``) counts as one round, its labelled slices painted.

Prints a Markdown table per run with the machine. Not a test: about a minute per round on 2 CPU cores.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--weights", nargs="+", default=None, metavar="W:EPS")
    ap.add_argument("--empty", nargs="+", type=float, default=None, metavar="EPS")
    ap.add_argument("--smooth", nargs="+", type=float, default=None, metavar="PX")
    ap.add_argument("--budgets", nargs="+", type=int, default=None, help="only these rounds (painted slices)")
    a = ap.parse_args(argv)
    import MedTransferLib as mt
    import MedTransferLib.inference.guide as guide
    import MedTransferLib.inference.windows as windows
    from MedTransferLib.core.case import IGNORE, Case
    from MedTransferLib.core.labels import Label
    from MedTransferLib.data.metrics import evaluate, summary

    shipped = {"WIDE_GAP_MM": guide.WIDE_GAP_MM, "SOFT_MM": guide.SOFT_MM}
    variants = [("plain", {"WIDE_GAP_MM": float("inf")}),
                ("open ends", {"SOFT_MM": 1e-3}),     # σ(−d / 0.001 mm): a hard outline
                ("default", {})]
    weights = [tuple(map(float, w.split(":"))) for w in a.weights] if a.weights else None
    if weights:
        variants = [(f"w = {w:g}, eps {e:g}", {}) for w, e in weights]
    elif a.empty:
        weights = [(guide.WEIGHT, guide.EPS, e) for e in a.empty]
        variants = [(f"eps where no structure can be {e:g}", {}) for e in a.empty]
    elif a.smooth:
        variants = [(f"{what}, smoothing {px:g} px", {}) for px in a.smooth for what in ("network alone", "guided")]
    interpolate = guide.interpolate

    def weighted(w, e, empty=guide.EPS_EMPTY):
        def make(*args, **kw):   # the guide as built, its weight and spreads replaced
            g = interpolate(*args, **kw)
            g.weight, g.eps, g.eps_empty = w, e, empty
            return g
        return make
    smooth = windows.SMOOTH_PIXELS
    np.seterr(over="ignore")                          # exp() of a hard outline saturates, as meant
    for folder in map(Path, a.runs):
        result = rounds(folder)
        datalist = folder / "ct_data" / "dataset.json" if result["data"] == "ct" else Path(mt.sample_data())
        data = json.loads(datalist.read_text())
        entry = data["training"][0]
        case = mt.read_case(datalist.parent / entry["image"], datalist.parent / entry["label"])
        ref = case.label
        labels = [Label(int(k), v, (0.5, 0.5, 0.5)) for k, v in data["labels"].items() if int(k) > 0]
        print(f"\n{folder} ({result['data']}, order {result['order']}; bench run {result['date']} on "
              f"{result['machine']})\n")
        heads = ([name for name, _ in variants] if weights or a.smooth
                 else ["plain guide", "+ open ends", "+ soft outline (default)"])
        print("| painted slices | Fill between slices | " + ("" if a.smooth else "network alone | ")
              + " | ".join(heads) + " |")
        print("|---:|" + "---:|" * (1 + (not a.smooth) + len(heads)))
        for row in result["rounds"]:
            if a.budgets and len(row["slices"]) not in a.budgets:
                continue
            painted_slices = row["slices"] + row["empty"]
            painted = np.full_like(ref, IGNORE)
            painted[painted_slices] = ref[painted_slices]
            held_out = [s for s in range(ref.shape[0]) if s not in set(painted_slices)]
            package = folder / row.get("model", f"run{len(row['slices'])}/model")

            def score(label):
                s = summary(evaluate(label, ref, labels, case.geometry, held_out, axis=2))
                hd95 = f" ({s['mean_hd95_mm']:.2f} mm)" if a.smooth else ""   # and the mean HD95
                return f"{s['mean_dice']:.3f} / {s['min_dice']:.3f}{hd95}"

            cells = [f"{row['fill_mean']:.3f} / {row['fill_worst']:.3f}" if "fill_mean" in row else "—"]
            if not a.smooth:
                cells.append(score(mt.predict(package, Case(case.image, case.geometry)).label))
            for px in a.smooth or []:
                windows.SMOOTH_PIXELS = px
                try:
                    cells.append(score(mt.predict(package, Case(case.image, case.geometry)).label))
                    cells.append(score(mt.predict(package, Case(case.image, case.geometry, painted, case.case_id),
                                                  guide=True).label))
                finally:
                    windows.SMOOTH_PIXELS = smooth
            for i, (_, change) in enumerate([] if a.smooth else variants):
                for name, value in {**shipped, **change}.items():
                    setattr(guide, name, value)
                if weights:
                    guide.interpolate = weighted(*weights[i])
                try:
                    guided = mt.predict(package, Case(case.image, case.geometry, painted, case.case_id), guide=True)
                finally:
                    for name, value in shipped.items():
                        setattr(guide, name, value)
                    guide.interpolate = interpolate
                cells.append(score(guided.label))
            print(f"| {len(row['slices'])} | " + " | ".join(cells) + " |", flush=True)
    return 0


def rounds(folder: Path) -> dict:
    """An interactive bench run's ``results.json``, or a ``medtransfer demo`` folder as one round:
    its labelled slices painted, nothing painted empty, no Fill between slices."""
    if (folder / "results.json").exists():
        return json.loads((folder / "results.json").read_text())
    entry = json.loads((folder / "dataset_sparse.json").read_text())["training"][0]
    ended = json.loads((folder / "run.json").read_text())["ended"][:10]
    return {"data": "colin", "order": "every 10th (medtransfer demo)", "date": ended, "machine": "see its run",
            "rounds": [{"slices": entry["labelled_slices"], "empty": [], "model": "model"}]}


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from machine import print_machine  # bench/machine.py

    print_machine()
    raise SystemExit(main(sys.argv[1:]))
