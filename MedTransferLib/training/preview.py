"""The live preview while training: every few seconds the training process predicts some slices
with the network as it is now and writes them, as a label map in the case's geometry, to
``--preview DIR`` (atomically), with a ``preview`` event. The Slicer panel shows that file as one
*preview* segmentation, replaced in place at each preview.

What is predicted: the slices the user is looking at (``DIR/view.json``, written by the panel:
``{"case": index, "slices": [...]}``), and as many more as the time allows, coarse to fine over
the whole volume (every 64th slice first, then the ones between, ...), so a few previews cover
the volume and later ones refresh it. The label map keeps each slice's latest prediction;
slices not predicted yet are 0. Once validation has scored an epoch, a preview shows the best
validated weights so far (what the model package would hold if training stopped now), not the
weights of the step in progress.

How often: every ``every`` seconds (default 5 s on a GPU, 25 s on a CPU; a run that continues a
model shows it after its first step: guided by the slices painted since, the user sees what a
correction changes within seconds), none when a time budget ends training within half an
interval (the last preview is then close), and never more than
``overhead`` (10 %) of the time: the number of extra slices is chosen from the measured cost per
slice, and when even the viewed slices cost more, the next preview waits longer. 3D models
predict the whole volume (a sliding window cannot predict a slice alone), with the same rule
on the interval.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from MedTransferLib.core.defaults import PREVIEW_EVERY as DEFAULT_EVERY
from MedTransferLib.core.defaults import PREVIEW_FILE, VIEW_FILE
from MedTransferLib.core.files import make_folder
from MedTransferLib.training.hooks import Hook, LoopState

__all__ = ["DEFAULT_EVERY", "PREVIEW_FILE", "VIEW_FILE", "Preview", "SlicePreview", "coarse_to_fine", "read_view"]
FIRST_SLICES = 16   # the first preview, before any cost is known
CHUNK = 16          # slices predicted at a time (predict_slices's batch)


def coarse_to_fine(n: int) -> list[int]:
    """All of ``0..n-1``, every 64th first, then every 32nd not yet listed, ... down to every
    slice: a prefix of any length is spread over the whole range."""
    order, seen, step = [], set(), 64
    while step >= 1:
        for s in range(0, n, step):
            if s not in seen:
                seen.add(s)
                order.append(s)
        step //= 2
    return order


def read_view(folder: Path, cases: int, slices: Callable[[int], int]) -> tuple[int, list[int]]:
    """``(case index, slices)`` the user looks at, from ``folder/view.json``; ``(0, [])`` when
    there is no readable file (the panel writes it atomically; a half-written one is never seen).
    Indices outside the case are dropped."""
    try:
        view = json.loads((folder / VIEW_FILE).read_text(encoding="utf-8"))
        case = int(view.get("case", 0))
        wanted = [int(s) for s in view.get("slices", [])]
    except (OSError, ValueError, TypeError, AttributeError):
        return 0, []
    if not 0 <= case < cases:
        return 0, []
    n = slices(case)
    return case, sorted({s for s in wanted if 0 <= s < n})


class Preview(Hook):
    """``target``: what the task predicts and writes (see :class:`SlicePreview`)."""

    def __init__(self, folder, target, every: float, overhead: float = 0.10,
                 clock: Callable[[], float] = time.monotonic, first: float | None = None):
        self.folder, self.target, self.every, self.overhead, self.clock = Path(folder), target, float(every), overhead, clock
        self.first = self.every if first is None else float(first)   # seconds to the first preview
        make_folder(self.folder)

    def start(self, s: LoopState) -> None:
        self.due = self.clock() + self.first
        self.per_slice: float | None = None
        self.cursor: dict[int, int] = {}
        self.count = 0

    def plan(self, case: int, view: list[int], interval: float) -> list[int]:
        """The slices of the next preview: the viewed ones, then the next ones coarse to fine."""
        n = self.target.slices(case)
        if self.target.whole_volume:
            return list(range(n))
        extra = FIRST_SLICES if self.per_slice is None else int(self.overhead * interval / self.per_slice) - len(view)
        order = coarse_to_fine(n)
        start = self.cursor.get(case, 0)
        picked = [order[(start + i) % n] for i in range(min(max(extra, 0), n))]
        self.cursor[case] = (start + len(picked)) % n
        return sorted(set(view) | set(picked))

    def step_end(self, s: LoopState) -> bool:
        now = self.clock()
        # stopping, or a time budget ending within half an interval: the last preview (end()),
        # of the finished model, comes before the next would
        last_soon = s.stopping or (s.ends_in is not None and s.ends_in < self.every / 2)
        if now >= self.due and not last_soon:
            interval = self._interval(now)
            case, view = read_view(self.folder, self.target.cases, self.target.slices)
            view = self.target.from_view(case, view)
            t0 = self.clock()
            shown = "current"
            if s.best_state is not None:   # validation kept better weights: show what Apply would get now
                current = {k: v.detach().clone() for k, v in s.model.state_dict().items()}
                s.model.load_state_dict(s.best_state)
                shown = "best validated"
            try:
                self._write(s, case, view, self.plan(case, view, interval), shown, t0)
            finally:
                if shown != "current":
                    s.model.load_state_dict(current)
            s.strategy.train_mode(s.model)     # prediction switched to eval mode; training goes on as before
        s.after = self.last_cost(self.clock())
        return False

    def last_cost(self, now: float) -> float:
        """Seconds the last preview (:meth:`end`) would take if training ended at ``now``, from
        the measured cost per slice (0 before any preview): a time budget keeps them back."""
        if self.per_slice is None:
            return 0.0
        interval = now - self.last_end
        if self.target.whole_volume:
            return self.per_slice * self.target.slices(self.case) if self._whole_fits(self.case, interval) else 0.0
        return max(self.overhead * interval, self.per_slice * len(self.view))

    def _interval(self, now: float) -> float:
        """The time a preview at ``now`` may spend a tenth of: since the previous one (the first:
        ``every``)."""
        return self.every if self.count == 0 else now - self.last_end

    def _whole_fits(self, case: int, interval: float) -> bool:
        """Whether a whole-volume preview of ``case`` costs at most ``overhead`` of ``interval``
        (by the measured cost per slice; not before one is measured)."""
        return self.per_slice is not None and self.per_slice * self.target.slices(case) <= self.overhead * interval

    def end(self, s: LoopState) -> None:
        """The last preview, once training is over: the weights the package holds, on the viewed
        slices and as many more as the overhead allows, so what the user sees at the end is the
        finished model. A whole-volume (3D) preview is left out when its measured cost would be
        over ``overhead`` of the time since the previous one (or no preview measured it)."""
        now = self.clock()
        interval = self._interval(now)
        case, view = read_view(self.folder, self.target.cases, self.target.slices)
        view = self.target.from_view(case, view)
        if self.target.whole_volume and not self._whole_fits(case, interval):
            return
        self._write(s, case, view, self.plan(case, view, interval), "final", now)

    def _write(self, s: LoopState, case: int, view: list[int], slices: list[int], shown: str, t0: float) -> None:
        path = self.target.write(case, slices, self.folder / PREVIEW_FILE)
        cost = self.clock() - t0
        s.aside += cost
        self.per_slice = cost / max(1, len(slices))
        self.count += 1
        self.last_end = self.clock()
        self.case, self.view = case, view
        # the next preview once the time since this one makes this one's cost ≤ overhead of it
        self.due = self.last_end + max(self.every, cost / self.overhead - cost)
        s.reporter.emit("preview", path=str(path), case=case, step=s.step, slices=len(slices),
                        viewed=self.target.to_case(case, view), covered=round(self.target.covered(case), 3),
                        seconds=round(cost, 2), suggest=self.target.suggest(case),
                        predicted=self.target.to_case(case, slices), weights=shown)


class SlicePreview:
    """A segmentation task's preview: ``predict(case, slices)`` gives the softmax probabilities
    ``(n, C, H, W)`` (or, 3D, the class indices ``(n, H, W)``) of those slices (along the model's
    axis, slices first); the label map of each case keeps the latest prediction of every slice and
    is written with its labels' values in the case's geometry. From the probabilities each
    slice's uncertainty is kept, and :meth:`suggest` names the slice to label next
    (:mod:`MedTransferLib.inference.suggest`); the classes shown combine the probabilities with the
    case's painted slices (:meth:`guide`), painted slices shown as painted.

    ``turns``: each case's :class:`~MedTransferLib.data.orientation.Reorientation` into the
    network's voxel order (None: stored in it). The label map is written back in the case's own
    order; the slices in view (``view.json``), those predicted and the one suggested are indices
    of the case as stored, along its voxel axis that runs along the network's slices (the axis
    the Slicer panel reads the Red view's slice on: the same anatomical direction)."""

    def __init__(self, cases, axis: int, values: list[int], predict: Callable, whole_volume: bool = False,
                 turns=None):
        from MedTransferLib.data.slabs import to_slices_first

        self.case_list, self.axis, self.predict, self.whole_volume = cases, axis, predict, whole_volume
        self.turns = list(turns) if turns is not None else [None] * len(cases)
        self.lut = np.array([0] + list(values), dtype=np.uint8 if max(values) <= 255 else np.uint16)
        self.shapes = [to_slices_first(np.broadcast_to(np.zeros((), bool), c.image.shape[-3:]), axis).shape
                       for c in cases]
        self.maps: dict[int, np.ndarray] = {}
        self.done: dict[int, set] = {}
        self.uncertainty: dict[int, dict] = {}
        self.guides: dict[int, object] = {}
        self.cases = len(cases)

    def slices(self, case: int) -> int:
        return self.shapes[case][0]

    def covered(self, case: int) -> float:
        return len(self.done.get(case, ())) / self.slices(case)

    def write(self, case: int, slices: list[int], path: Path) -> Path:
        from MedTransferLib.data.io import write_label
        from MedTransferLib.data.slabs import from_slices_first
        from MedTransferLib.inference.suggest import slice_uncertainty

        label = self.maps.setdefault(case, np.zeros(self.shapes[case], self.lut.dtype))
        # a batch of slices at a time: the probabilities of a whole preview at once (60 slices of
        # 9 classes: 80 MB) cost more per slice than the first preview's 16 measured, and the time
        # a budget kept back for the last preview ran over
        parts = [slices] if self.whole_volume else [slices[i:i + CHUNK] for i in range(0, len(slices), CHUNK)]
        for part in parts:
            classes = self.predict(case, part)
            if classes.ndim == 4:   # probabilities: each slice's uncertainty, then the classes
                self.uncertainty.setdefault(case, {}).update(zip(part, slice_uncertainty(classes).tolist()))
                classes = self.guide(case).fuse(part, classes)   # guided by the painted slices
            label[part] = self.lut[classes]
        self.done.setdefault(case, set()).update(slices)
        label, turn = np.ascontiguousarray(from_slices_first(label, self.axis)), self.turns[case]
        write_label(path, turn.back(label) if turn else label, turn.source if turn else self.case_list[case].geometry)
        return path

    def to_case(self, case: int, slices) -> list[int]:
        """Slices along the network's axis as indices of ``case`` as stored (the same ones unless
        the case was reordered: then reversed where its axis runs the other way)."""
        turn = self.turns[case]
        return list(slices) if turn is None else turn.slices_back(self.axis, slices)[1]

    def from_view(self, case: int, view: list[int]) -> list[int]:
        """The viewed slices (of ``case`` as stored) along the network's axis."""
        return sorted(self.to_case(case, view))   # the mapping is its own inverse: a reversal or nothing

    def guide(self, case: int):
        """The case's painted slices, interpolated (inference/guide.py): a preview of a volume
        labelled on some slices shows what Apply with its painted slices gives; a volume labelled
        all over shows the network alone."""
        if case not in self.guides:
            from MedTransferLib.core.case import IGNORE
            from MedTransferLib.inference.guide import case_guide, interpolate

            c = self.case_list[case]
            if c.label is not None and (c.label == IGNORE).any():
                self.guides[case] = case_guide(c, list(self.lut[1:]), self.axis)
            else:   # labelled all over (unpainted = background): the preview shows the network alone
                self.guides[case] = interpolate(np.zeros(self.shapes[case], np.uint8), [], len(self.lut))
        return self.guides[case]

    def suggest(self, case: int) -> list[int]:
        """The unlabelled slice of ``case`` to label next, among those previewed (``[]``: none yet)."""
        from MedTransferLib.inference.suggest import suggest_slices

        scores = self.uncertainty.get(case)
        if not scores:
            return []
        return self.to_case(case, suggest_slices(scores, self.case_list[case].labelled_slices(self.axis)))
