"""Where a budgeted training job's minute goes: one ``medtransfer train --max-seconds S`` (an
Update with ``--from``, or a first Train without) run as the panel runs it, its events timed from
the process's start: the first event (interpreter, torch and MONAI loaded, data read), the first
and last training step, the stopping note, each live preview and what it cost, the model written
(``done``) and the process's exit. Prints one JSON line per run. Not a test.

It runs through the panel's runner (core/runner.py); ``--spare`` first starts a spare process, as
the panel does when a task ends (core/launch.py), and waits until it has loaded torch: the times
are then counted from the command handed to it.

``--root DIR`` runs the ``MedTransferLib`` of another checkout (a ``git worktree`` of an earlier
commit) with this virtual environment, to compare before and after a change in one session.
A datalist and model to continue come from a ``bench/interactive.py`` run, e.g.::

    .venv/bin/python bench/interactive.py --budgets 3 5 --out /tmp/bi
    .venv/bin/python bench/update_timeline.py --datalist /tmp/bi/round5.json --from /tmp/bi/run3/model
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timeline(root: Path, datalist: Path, init_from: Path | None, seconds: float, spare: bool = False) -> dict:
    from MedTransferLib.core.runner import Job

    out = Path(tempfile.mkdtemp(prefix="timeline_"))
    args = ["train", "--datalist", str(datalist), "--out", str(out / "run"), "--preview", str(out / "preview"),
            "--max-seconds", str(seconds)]
    if init_from is not None:
        args += ["--from", str(init_from)]
    env = dict(os.environ, PYTHONPATH=str(root))   # the child runs this checkout's MedTransferLib
    if spare:
        from interactive import spare_ready  # bench/interactive.py

        spare_ready(env=env)
    t0 = time.perf_counter()
    job = Job(args, env=env).start()
    row = {"root": str(root), "max_seconds": seconds, "continues": init_from is not None, "spare": job.warm,
           "previews": []}
    steps = []
    while job.state == "running":
        for event in job.poll():
            at = round(time.perf_counter() - t0, 2)
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
        time.sleep(0.01)
    row["exit_s"] = round(time.perf_counter() - t0, 2)
    if job.state != "finished" or "done_s" not in row:
        raise SystemExit(f"training {job.state}: {job.error} ({' '.join(args)})")
    row.update(steps=len(steps), first_step_s=steps[0], last_step_s=steps[-1],
               exit_after_done_s=round(row["exit_s"] - row["done_s"], 2),
               after_last_step_s=round(row["done_s"] - steps[-1], 2))
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datalist")
    ap.add_argument("--from", dest="init_from", default=None, help="the model to continue (an Update); none: a first Train")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--root", default=str(ROOT), help="the checkout whose MedTransferLib runs (default: this one)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--spare", action="store_true", help="run it in a spare process that has loaded torch")
    ap.add_argument("--spare-memory", action="store_true",
                    help="only start a spare process, wait until it has loaded torch and print its memory")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(Path(a.root).resolve()))   # the runner of that checkout, once
    if a.spare_memory:
        from interactive import spare_ready  # bench/interactive.py

        from MedTransferLib.core.launch import drop_spare

        print(json.dumps({"spare_rss_mib": round(spare_ready())}), flush=True)
        drop_spare()
        return 0
    if not a.datalist:
        ap.error("--datalist is needed (all but --spare-memory)")
    for _ in range(a.repeat):
        row = timeline(Path(a.root).resolve(), Path(a.datalist).resolve(),
                       Path(a.init_from).resolve() if a.init_from else None, a.seconds, a.spare)
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    from machine import print_machine  # bench/machine.py

    print_machine()
    raise SystemExit(main())
