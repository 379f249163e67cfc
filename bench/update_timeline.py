"""Where a budgeted training job's minute goes: one ``medtransfer train --max-seconds S`` (an
Update with ``--from``, or a first Train without) run as the panel runs it, its events timed from
the process's start: the first event (interpreter, torch and MONAI loaded, data read), the first
and last training step, the stopping note, each live preview and what it cost, the model written
(``done``) and the process's exit. Prints one JSON line per run. Not a test.

``--root DIR`` runs the ``MedTransferLib`` of another checkout (a ``git worktree`` of an earlier
commit) with this virtual environment, to compare before and after a change in one session.
A datalist and model to continue come from a ``bench/interactive.py`` run, e.g.::

    .venv/bin/python bench/interactive.py --budgets 3 5 --out /tmp/bi
    .venv/bin/python bench/update_timeline.py --datalist /tmp/bi/round5.json --from /tmp/bi/run3/model
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timeline(root: Path, datalist: Path, init_from: Path | None, seconds: float) -> dict:
    out = Path(tempfile.mkdtemp(prefix="timeline_"))
    args = [sys.executable, "-m", "MedTransferLib", "train", "--datalist", str(datalist), "--out", str(out / "run"),
            "--progress", "json", "--preview", str(out / "preview"), "--max-seconds", str(seconds)]
    if init_from is not None:
        args += ["--from", str(init_from)]
    t0 = time.perf_counter()
    row = {"root": str(root), "max_seconds": seconds, "continues": init_from is not None, "previews": []}
    steps = []
    with subprocess.Popen(args, stdout=subprocess.PIPE, text=True, cwd=root) as proc:
        for line in proc.stdout:
            at = round(time.perf_counter() - t0, 2)
            if not line.startswith("{"):
                continue
            event = json.loads(line)
            row.setdefault("first_event_s", at)
            if event["event"] == "step":
                steps.append(at)
            elif event["event"] == "note" and event["message"].startswith("time budget"):
                row["stop_note_s"], row["stop_note"] = at, event["message"]
            elif event["event"] == "preview":
                row["previews"].append({"at_s": at, "seconds": event["seconds"], "slices": event["slices"],
                                        "weights": event["weights"]})
            elif event["event"] == "done":
                row["done_s"] = at
    row["exit_s"] = round(time.perf_counter() - t0, 2)
    if proc.returncode != 0 or "done_s" not in row:
        raise SystemExit(f"training failed ({proc.returncode}): {' '.join(args)}")
    row.update(steps=len(steps), first_step_s=steps[0], last_step_s=steps[-1],
               exit_after_done_s=round(row["exit_s"] - row["done_s"], 2),
               after_last_step_s=round(row["done_s"] - steps[-1], 2))
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datalist", required=True)
    ap.add_argument("--from", dest="init_from", default=None, help="the model to continue (an Update); none: a first Train")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--root", default=str(ROOT), help="the checkout whose MedTransferLib runs (default: this one)")
    ap.add_argument("--repeat", type=int, default=1)
    a = ap.parse_args(argv)
    for _ in range(a.repeat):
        row = timeline(Path(a.root).resolve(), Path(a.datalist).resolve(),
                       Path(a.init_from).resolve() if a.init_from else None, a.seconds)
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    from machine import print_machine  # bench/machine.py

    print_machine()
    raise SystemExit(main())
