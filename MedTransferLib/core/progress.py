"""Progress reporting: one JSON object per line on stdout (for Slicer and scripts) and, in a
terminal, a human progress bar on stderr."""

from __future__ import annotations

import json
import sys
import time

from MedTransferLib.core.lifeline import write_or_silence


class Reporter:
    """Sends events to ``sink`` (a callable taking a dict) and/or as JSON lines to ``stream``.

    Example:
        >>> events = []
        >>> Reporter(sink=events.append, stream=None).emit("start", steps=10)
        >>> events[0]["event"]
        'start'
    """

    def __init__(self, sink=None, stream=sys.stdout, bar: bool | None = None, lines: bool = False):
        self.sink, self.stream = sink, stream
        self.bar = sys.stderr.isatty() if bar is None else bar
        self.lines = lines and not self.bar  # one line per epoch on stderr (logs, pipes)
        self.t0 = time.monotonic()

    def emit(self, event: str, **fields) -> dict:
        msg = {"event": event, "time_s": round(time.monotonic() - self.t0, 3), **fields}
        if self.sink is not None:
            self.sink(msg)
        if self.stream is not None and not write_or_silence(self.stream, json.dumps(msg) + "\n"):
            # nobody reads the progress any more (Slicer has ended): stop as Cancel does
            self.stream, self.bar, self.lines = None, False, False
            raise KeyboardInterrupt
        if self.bar:
            self._draw(msg)
        elif self.lines and event in ("epoch", "note"):
            print(msg.get("message") or self._epoch_line(msg), file=sys.stderr, flush=True)
        return msg

    @staticmethod
    def _epoch_line(msg: dict) -> str:
        val = msg.get("val_dice")
        return (f"epoch {msg['epoch']}/{msg['epochs']}: loss {msg['train_loss']:.3f}"
                + ("" if val is None else f", validation Dice {val:.3f}") + f", ETA {msg['eta_s']:.0f} s")

    def _draw(self, msg: dict) -> None:
        if msg["event"] == "step":
            done, total = msg["step"], msg["steps_total"]
            width = 30
            fill = int(width * done / max(1, total))
            eta = msg.get("eta_s")
            sys.stderr.write(f"\r[{'#' * fill}{'.' * (width - fill)}] {done}/{total} "
                             f"epoch {msg['epoch']} loss {msg['loss']:.3f}"
                             f"{f' ETA {eta:.0f}s' if eta is not None else ''}   ")
        elif msg["event"] == "validation":
            sys.stderr.write(f"\nepoch {msg['epoch']}: validation Dice {msg['val_dice']:.3f}"
                             f"{' (best)' if msg.get('best') else ''}\n")
        elif msg["event"] in ("note", "done"):
            sys.stderr.write(f"\n{msg.get('message', '')}\n")
        sys.stderr.flush()
