"""Every transfer strategy at several label budgets on the sample task, against the same network
randomly initialised, with the advisor's pick at each budget (issue 4's benchmark).

Budgets: 1, 3 and 9 labelled axial slices per structure (spread evenly over each structure's
extent; a chosen slice is labelled completely) and the Foundation's every-10th slice. Dice/HD95 on
all never-labelled slices, trainable parameters, time. One process, runs in sequence (CPU
training is deterministic for a seed, so Dice does not depend on machine load).

    .venv/bin/python bench/strategies.py --out runs/bench_strategies [--steps 150]

Writes results.json, a Markdown table and dice_vs_budget.png in --out. ~1 h on 2 CPU cores at
150 steps per run. Not a test.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from foundation import machine  # noqa: E402

STRATEGIES = ["finetune", "frozen", "partial:2", "gradual:1", "discriminative:0.5",
              "gradual:1+discriminative:0.5", "bn-only", "adabn"]
RANDOM = "random init (finetune)"


def budget_slices(label: np.ndarray, per_structure: int | None) -> list[int]:
    """Axial (k) slices to label: ``per_structure`` spread over each structure's extent, or every
    10th slice when None."""
    n = label.shape[0]
    if per_structure is None:
        return list(range(0, n, 10))
    chosen = set()
    for v in np.unique(label):
        if v == 0:
            continue
        ks = np.nonzero((label == v).any(axis=(1, 2)))[0]
        pos = (np.arange(per_structure) + 0.5) * len(ks) / per_structure
        chosen |= {int(ks[int(p)]) for p in pos}
    return sorted(chosen)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="runs/bench_strategies")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--budgets", default="1,3,9,every10")
    p.add_argument("--replot", action="store_true",
                   help="no training: recompute the advisor's picks (current rule) for the saved "
                        "results and rewrite the table and plot")
    a = p.parse_args()
    if a.replot:
        return replot(Path(a.out))
    import MedTransferLib as mt
    from MedTransferLib.core.files import write_json
    from MedTransferLib.training.advisor import advise

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    datalist = mt.sample_data()
    data = json.loads(datalist.read_text(encoding="utf-8"))
    entry = data["training"][0]
    root = datalist.parent
    full = mt.read_case(root / entry["image"], root / entry["label"])
    results = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "steps": a.steps, "budgets": {}}
    for budget in a.budgets.split(","):
        per = None if budget == "every10" else int(budget)
        slices = budget_slices(full.label, per)
        sparse = {**data, "training": [{"image": str((root / entry["image"]).resolve()),
                                        "label": str((root / entry["label"]).resolve()),
                                        "labelled_slices": slices, "slice_axis": 2}]}
        dl_path = out / f"dataset_{budget}.json"
        dl_path.write_text(json.dumps(sparse))
        dl = mt.load_datalist(dl_path)
        cases = dl.load_cases()
        advice = advise(cases, dl.labels, epochs=max(1, a.steps // 50))
        held_out = [s for s in range(full.label.shape[0]) if s not in set(slices)]
        runs = {}
        for name in STRATEGIES + [RANDOM]:
            kw = {"strategy": "finetune", "weights": None} if name == RANDOM else {"strategy": name}
            t0 = time.monotonic()
            run = mt.train(cases, out / budget / name.replace(":", "_").replace(" ", "_"), labels=dl.labels,
                           epochs=max(1, a.steps // 50), steps_per_epoch=50, seed=0, modality="MR", **kw)
            train_s = time.monotonic() - t0
            pred = mt.predict(run.package, mt.Case(full.image, full.geometry, None, "colin27"))
            rows = mt.evaluate(pred.label, full.label, pred.labels, full.geometry, held_out, axis=2)
            s = mt.summary(rows)
            manifest = json.loads((run.package / "manifest.json").read_text(encoding="utf-8"))
            runs[name] = {"mean_dice": s["mean_dice"], "min_dice": s["min_dice"], "mean_hd95_mm": s["mean_hd95_mm"],
                          "trainable_parameters": manifest["strategy"]["trainable_parameters"],
                          "total_parameters": manifest["strategy"]["total_parameters"],
                          "train_seconds": round(train_s, 1)}
            print(f"{budget:8s} {name:28s} Dice {s['mean_dice']:.3f} (min {s['min_dice']:.3f}) "
                  f"{train_s:.0f}s", file=sys.stderr, flush=True)
        results["budgets"][budget] = {"labelled_slices": slices, "advice": advice.to_dict(), "runs": runs}
        write_json(out / "results.json", results)
    (out / "results.md").write_text(markdown(results), encoding="utf-8")
    plot(results, out / "dice_vs_budget.png")
    print(markdown(results))


def replot(out: Path) -> None:
    import MedTransferLib as mt
    from MedTransferLib.core.files import write_json
    from MedTransferLib.training.advisor import advise

    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    for budget, v in results["budgets"].items():
        dl = mt.load_datalist(out / f"dataset_{budget}.json")
        v["advice"] = advise(dl.load_cases(), dl.labels, epochs=max(1, results["steps"] // 50)).to_dict()
    write_json(out / "results.json", results)
    (out / "results.md").write_text(markdown(results), encoding="utf-8")
    plot(results, out / "dice_vs_budget.png")
    print(markdown(results))


def markdown(results: dict) -> str:
    buf = io.StringIO()
    budgets = results["budgets"]
    buf.write(f"Measured {results['date']} on {results['machine']}; {results['steps']} training steps per run.\n\n")
    buf.write("| strategy | " + " | ".join(f"{b} ({len(v['labelled_slices'])} slices)" for b, v in budgets.items())
              + " | trainable parameters |\n")
    buf.write("|---|" + "---:|" * (len(budgets) + 1) + "\n")
    names = list(next(iter(budgets.values()))["runs"])
    for name in names:
        cells = []
        for b, v in budgets.items():
            r = v["runs"][name]
            best = max(x["mean_dice"] for x in v["runs"].values())
            mark = "**" if r["mean_dice"] == best else ""
            pick = " ←" if v["advice"]["strategy"] == name else ""
            cells.append(f"{mark}{r['mean_dice']:.3f}{mark}{pick}")
        r0 = next(iter(budgets.values()))["runs"][name]
        buf.write(f"| {name} | " + " | ".join(cells) + f" | {r0['trainable_parameters'] / 1e6:.2f} M |\n")
    buf.write("\nMean Dice on the never-labelled slices; bold: best at that budget; ←: the advisor's pick.\n")
    return buf.getvalue()


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = results["budgets"]
    xs = list(range(len(budgets)))
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name in next(iter(budgets.values()))["runs"]:
        ys = [v["runs"][name]["mean_dice"] for v in budgets.values()]
        ax.plot(xs, ys, marker="o", label=name, linestyle="--" if name == RANDOM else "-")
    picks = [(x, v["runs"][v["advice"]["strategy"]]["mean_dice"]) for x, v in zip(xs, budgets.values())
             if v["advice"]["strategy"] in v["runs"]]
    if picks:
        ax.scatter(*zip(*picks), s=160, facecolors="none", edgecolors="black", label="advisor's pick", zorder=5)
    labels = [f"{b} per structure\n({len(v['labelled_slices'])} slices)" if b != "every10" else
              f"every 10th\n({len(v['labelled_slices'])} slices)" for b, v in budgets.items()]
    ax.set_xticks(xs, labels)
    ax.set_xlabel("label budget (labelled axial slices)")
    ax.set_ylabel("mean Dice, never-labelled slices")
    ax.set_title(f"Colin27, 8 deep grey-matter structures, {results['steps']} steps")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    from machine import print_machine  # bench/machine.py

    print_machine()
    main()
