"""A simulated annotator: MedTransfer's interactive loop against Slicer's *Fill between slices*
(ITK's MorphologicalContourInterpolator) at the same labelled slices.

On the sample task (Colin27 T1, 8 AAL deep grey-matter structures; or ``--data ct``, the
synthetic abdominal CT of bench/ct_phantom.py) the annotator labels a few axial slices, then
more in rounds. Each round, on exactly the same labelled slices:

- **Fill between slices**: ITK's MorphologicalContourInterpolator along the axial axis, as the
  Segment Editor effect runs it (every structure interpolated between the slices that hold it);
- **MedTransfer**: the first round trains from the pretrained encoder for ``--first-seconds``
  (a time budget, default 60 s); each later round continues the previous model (``--from``) for
  ``--update-seconds`` on the enlarged set of labelled slices. The volume is then predicted as
  the panel's Apply predicts the volume being labelled: guided by its painted slices
  (inference/guide.py); the network alone is scored beside it.

Both are scored by Dice on the never-labelled slices (mean and worst structure); the update's
wall-clock time (training + prediction of the whole volume) is recorded. Each round runs through
the panel's runner in a spare process that loaded torch while the annotator painted, as the panel
does (core/launch.py; ``--no-spare``: a new process each round, its start-up in the time).

    .venv/bin/pip install itk-morphologicalcontourinterpolation      # the bench's one extra
    .venv/bin/python bench/interactive.py --out runs/bench_interactive [--budgets 3 5 8 12 19]
                     [--order even|random|suggest] [--first-seconds 60] [--update-seconds 60]

Writes ``results.json`` and ``dice_vs_slices.png`` in --out, prints a Markdown table with the
CPU model and its vector extensions. Not a test: ~10 min on 2 CPU cores with the defaults.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from machine import describe  # noqa: E402  (bench/machine.py)


def choose(extent: dict, n: int, order: str, seed: int, have: list[int], suggested=None) -> list[int]:
    """``n`` axial slices to paint over the structures' extent (``extent``: structure → its axial
    slices): evenly spaced and centred; or the ones already painted plus random new ones, or plus
    ``suggested`` ones (an annotator adding slices); then each structure still on none gets its
    middle slice (an annotator paints every structure at least once), so a budget may grow by one
    or two."""
    lo = min(min(v) for v in extent.values())
    hi = max(max(v) for v in extent.values())
    if order == "even" or (order == "suggest" and not have):
        picked = {int(lo + (i + 0.5) * (hi - lo + 1) / n) for i in range(n)}
    elif order == "suggest":
        picked = set(have) | set(suggested[:max(0, n - len(have))])
    else:
        rng = np.random.default_rng(seed + n)
        pool = [s for s in range(lo, hi + 1) if s not in have]
        picked = set(have) | set(rng.choice(pool, max(0, n - len(have)), replace=False).tolist())
    for slices in extent.values():
        if not picked & set(slices):
            picked.add(int(slices[len(slices) // 2]))
    return sorted(picked)


def plan(ref: np.ndarray, labels) -> tuple[dict, list[int]]:
    """The structures' axial extent (structure → its slices, for ``choose``) and the two slices
    marked empty, 10 slices beyond the structures on either side (one click each in the panel;
    none where the structures reach the volume's edges)."""
    extent = {lab.name: np.flatnonzero((ref == lab.value).any(axis=(1, 2))).tolist() for lab in labels}
    lo, hi = min(min(v) for v in extent.values()), max(max(v) for v in extent.values())
    return extent, [s for s in (lo - 10, hi + 10) if 0 <= s < ref.shape[0] and not ref[s].any()]


FILL = """
import sys, time
import numpy as np
import itk
sparse = np.load(sys.argv[1])
itk.morphological_contour_interpolator(itk.image_from_array(np.zeros((3, 3, 3), np.uint8)), axis=2)  # ITK loads lazily
t0 = time.perf_counter()
out = itk.array_from_image(itk.morphological_contour_interpolator(itk.image_from_array(sparse), axis=2))
seconds = time.perf_counter() - t0
np.save(sys.argv[2], out)
print(seconds)
"""


def fill_between_slices(label: np.ndarray, labelled: list[int], work: Path) -> tuple[np.ndarray, float]:
    """Slicer's Fill between slices: ITK's morphological contour interpolation along the axial
    axis (ITK index 2 = the array's first axis), every label value on its own. Returns the filled
    label map and the filter's own seconds. It runs in a child process: ITK's and torch's native
    libraries in one process crashed at exit (malloc) on this machine."""
    import subprocess

    sparse = np.zeros_like(label, dtype=np.uint8)
    sparse[labelled] = label[labelled]
    np.save(work / "sparse.npy", sparse)
    done = subprocess.run([sys.executable, "-c", FILL, str(work / "sparse.npy"), str(work / "filled.npy")],
                          capture_output=True, text=True, check=True)
    return np.load(work / "filled.npy").astype(label.dtype), float(done.stdout.strip().splitlines()[-1])


def spare_ready(timeout: float = 60.0, env=None) -> float:
    """Start a spare process as the panel does when a task ends (core/launch.py) and wait until it
    has loaded torch — until it stops using the CPU (the annotator paints meanwhile; the bench must
    not predict beside it on 2 cores). Returns the waiting spare's resident memory in MiB."""
    import psutil

    from MedTransferLib.core.launch import prepare_spare

    proc = psutil.Process(prepare_spare(sys.executable, env).proc.pid)
    used, end = -1.0, time.monotonic() + timeout
    while time.monotonic() < end:
        time.sleep(1.0)
        now = sum(proc.cpu_times()[:2])
        if now - used < 0.02:
            break
        used = now
    return proc.memory_info().rss / 2 ** 20


def train_with_preview(datalist: Path, out: Path, previous, seconds: float, extra=()):
    """One round as the panel runs it: ``medtransfer train`` in a child process through the
    panel's runner (core/runner.py: a waiting spare's process if there is one, else a new one,
    interpreter and torch start included in the time) with ``--preview`` and a time budget,
    continuing ``previous`` if given. Returns the package, each preview as ``(seconds since the
    start, label map, slices it predicted)``, and whether a spare ran it."""
    from MedTransferLib.core.runner import Job
    from MedTransferLib.data.io import read_image

    args = ["train", "--datalist", str(datalist), "--out", str(out), "--preview", str(out / "preview"),
            "--max-seconds", str(seconds)]
    if previous is not None:
        args += ["--from", str(previous)]
    t0 = time.perf_counter()
    job, previews = Job(args + list(extra)).start(), []
    while job.state == "running":
        for event in job.poll():
            if event["event"] == "preview":
                label, _ = read_image(event["path"], "preview")
                previews.append((time.perf_counter() - t0, label, event["predicted"]))
        time.sleep(0.02)
    if job.state != "finished":
        raise SystemExit(f"training {job.state}: {job.error} ({' '.join(args)})")
    return job.result["package"], previews, job.warm


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="runs/bench_interactive")
    p.add_argument("--budgets", type=int, nargs="+", default=[3, 5, 8, 12, 19])
    p.add_argument("--order", choices=["even", "random", "suggest"], default="even",
                   help="suggest: after the first (even) round, add the slices MedTransfer suggests "
                        "(the most uncertain, inference/suggest.py)")
    p.add_argument("--first-seconds", type=float, default=60.0)
    p.add_argument("--update-seconds", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", choices=["colin", "ct"], default="colin",
                   help="colin: the sample MRI (8 AAL structures); ct: the synthetic abdominal CT of "
                        "bench/ct_phantom.py (liver, kidneys, spine)")
    p.add_argument("--no-empty", dest="empty", action="store_false",
                   help="do not mark two slices beyond the structures as empty")
    p.add_argument("--train-arg", action="append", default=[], metavar="ARG",
                   help="one more argument for every round's `medtransfer train` (repeat it: "
                        "--train-arg=--batch-size --train-arg=8), to compare a setting")
    p.add_argument("--no-spare", dest="spare", action="store_false",
                   help="start each round's process from nothing, as before the panel kept a spare process "
                        "with torch loaded (core/launch.py)")
    p.add_argument("--update-arg", action="append", default=[], metavar="ARG",
                   help="one more argument for every Update (the rounds continuing a model, --from) only")
    a = p.parse_args()

    import MedTransferLib as mt
    from MedTransferLib.core.case import IGNORE, Case
    from MedTransferLib.core.files import write_json
    from MedTransferLib.core.labels import Label
    from MedTransferLib.data.metrics import evaluate, summary

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.data == "ct":   # bench/ct_phantom.py: a synthetic abdominal CT (no public CT ships with a package here)
        from ct_phantom import write as write_phantom

        datalist = write_phantom(out / "ct_data")
    else:
        datalist = mt.sample_data()
    data = json.loads(Path(datalist).read_text())
    entry = data["training"][0]
    root = Path(datalist).parent
    case = mt.read_case(root / entry["image"], root / entry["label"])
    labels = [Label(int(k), v, (0.5, 0.5, 0.5)) for k, v in data["labels"].items() if int(k) > 0]
    ref = case.label                                        # (k, j, i): k is axial
    # MedTransfer learns where nothing is from the slices marked empty; Fill between slices cannot use them
    extent, empty = plan(ref, labels)
    empty = empty if a.empty else []
    rows, previous, have = [], None, []
    for n in a.budgets:
        suggested = None
        if a.order == "suggest" and previous is not None:
            from MedTransferLib.inference.suggest import suggest_slices, uncertainty_of

            suggested = suggest_slices(uncertainty_of(previous, case), have + empty, n=max(1, n - len(have)))
        labelled = choose(extent, n, a.order, a.seed, have, suggested)
        have = labelled
        held_out = [s for s in range(ref.shape[0]) if s not in set(labelled) | set(empty)]
        filled, itk_s = fill_between_slices(ref, labelled, out)
        fill = summary(evaluate(filled, ref, labels, case.geometry, held_out, axis=2))

        round_dl = out / f"round{n}.json"
        round_data = dict(data, training=[dict(entry, image=str((root / entry["image"]).resolve()),
                                               label=str((root / entry["label"]).resolve()),
                                               labelled_slices=sorted(labelled + empty), slice_axis=2)])
        write_json(round_dl, round_data)
        if a.spare:
            spare_ready()
        t0 = time.perf_counter()
        package, previews, warm = train_with_preview(round_dl, out / f"run{n}", previous,
                                               a.update_seconds if previous else a.first_seconds,
                                               a.train_arg + (a.update_arg if previous else []))
        job_s = time.perf_counter() - t0      # the model written: what --max-seconds bounds
        # the volume being labelled, as the panel's Apply gives it: its painted slices (and the
        # slices marked empty) guide the network (inference/guide.py); the network alone beside it
        painted = np.full_like(ref, IGNORE)
        painted[labelled + empty] = ref[labelled + empty]
        pred = mt.predict(package, Case(case.image, case.geometry, painted, case.case_id), guide=True)
        update_s = time.perf_counter() - t0
        alone = summary(evaluate(mt.predict(package, Case(case.image, case.geometry)).label, ref, labels,
                                 case.geometry, held_out, axis=2))
        # each preview scored on the never-labelled slices it had predicted so far
        seen, scored = set(), []
        for t, label, predicted in previews:
            seen |= set(predicted)
            part = sorted(seen & set(held_out))
            if part:
                sm = summary(evaluate(label, ref, labels, case.geometry, part, axis=2))
                scored.append({"seconds": round(t, 1), "slices": len(part), "mean": sm["mean_dice"],
                               "worst": sm["min_dice"]})
        useful = next((p["seconds"] for p in scored if p["mean"] >= 0.7 and p["slices"] >= 10), None)
        from MedTransferLib.package.store import ModelPackage

        run = SimpleNamespace(package=package, metrics=ModelPackage.load(package).manifest.metrics)
        ours = summary(evaluate(pred.label, ref, labels, case.geometry, held_out, axis=2))
        previous = run.package
        row = {"labelled": len(labelled), "slices": labelled, "empty": empty, "medtransfer_mean": ours["mean_dice"],
               "medtransfer_worst": ours["min_dice"], "network_mean": alone["mean_dice"],
               "network_worst": alone["min_dice"], "fill_mean": fill["mean_dice"], "fill_worst": fill["min_dice"],
               "job_seconds": round(job_s, 1), "update_seconds": round(update_s, 1), "steps": run.metrics["steps_run"],
               "previews": scored, "first_useful_preview_s": useful, "spare": warm,
               "fill_seconds": round(itk_s, 2)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"machine": describe(), "date": datetime.date.today().isoformat(), "order": a.order, "data": a.data,
              "first_seconds": a.first_seconds, "update_seconds": a.update_seconds,
              "train_args": a.train_arg, "update_args": a.update_arg, "spare": a.spare, "rounds": rows}
    write_json(out / "results.json", result)
    print(f"\nMeasured {result['date']} on {result['machine']}; order {a.order}, first training "
          f"{a.first_seconds:g} s, each update {a.update_seconds:g} s (--max-seconds: the whole job; --from the "
          f"previous round; {'each round in a spare process with torch loaded' if a.spare else 'no spare'}); "
          f"MedTransfer also gets {len(empty)} slices marked empty.\n")
    print("| labelled slices | MedTransfer mean / worst | network alone | Fill between slices mean / worst "
          "| model written / whole volume predicted (s) | steps | previews: s (held-out slices covered) mean |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        shown = "; ".join(f"{p['seconds']:.0f} s ({p['slices']}) {p['mean']:.2f}" for p in r["previews"])
        print(f"| {r['labelled']} | {r['medtransfer_mean']:.3f} / {r['medtransfer_worst']:.3f} | "
              f"{r['network_mean']:.3f} / {r['network_worst']:.3f} | "
              f"{r['fill_mean']:.3f} / {r['fill_worst']:.3f} | {r['job_seconds']:.0f} / {r['update_seconds']:.0f} | "
              f"{r['steps']} | {shown} |")
    plot(rows, out / "dice_vs_slices.png")


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["labelled"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(x, [r["medtransfer_mean"] for r in rows], "o-", label="MedTransfer (guided by the painted slices), mean")
    ax.plot(x, [r["medtransfer_worst"] for r in rows], "o--", label="MedTransfer, worst structure")
    ax.plot(x, [r["network_mean"] for r in rows], "^:", color="grey", label="network alone (a new volume), mean")
    ax.plot(x, [r["fill_mean"] for r in rows], "s-", label="Fill between slices, mean")
    ax.plot(x, [r["fill_worst"] for r in rows], "s--", label="Fill between slices, worst structure")
    ax.set_xlabel("labelled axial slices")
    ax.set_ylabel("Dice on never-labelled slices")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    from machine import print_machine  # bench/machine.py

    print_machine()
    main()
