"""Painted slices guide the prediction of the volume they were painted on.

When the network segments the very volume the user is labelling, its painted slices say more than
the network alone: between two painted slices a structure's shape changes smoothly. The guide
interpolates each structure's shape between consecutive painted slices that both hold it
(shape-based interpolation of 2D signed distance maps as in Raya & Udupa 1990 — what Slicer's
*Fill between slices* does with ITK's morphological contour interpolation), and combines it with
the network's probabilities on every slice between the first and the last painted one.

Each pixel's distance is interpolated along the slices by a monotone cubic (Fritsch & Carlson
1980, the PCHIP of numerical libraries): its slope at a painted slice comes from the painted
slices on either side that hold the structure too, so a structure that grows over several painted
slices keeps growing smoothly instead of in straight lines between them, and never grows or
shrinks past what was painted; at a structure's first and last painted slice the slope is that
of the straight line to its neighbour, so with two painted slices it is the linear interpolation.
It is more accurate than the linear interpolation on the sample MRI and on a synthetic CT
(bench/interpolation.py, bench/RESULTS.md). The combination with the network:

    score(class) = (1 - w) * log p_network(class) + w * log q(class)

where ``q`` is the interpolated class with probability ``1 - eps`` (the rest spread over all
classes). With the defaults (``w`` 0.5, ``eps`` 0.05) the network overrides the interpolation
only where it is very sure: odds above about 19·C : 1 for C classes with background (170 : 1
for 8 structures). Beyond the outermost painted slice the
network decides alone — unless that slice was painted empty (nothing there): then the
structures are known to have ended and the guide says background. Painted slices come back
exactly as painted.

Where the painted slices leave no room for a structure — beyond an outermost slice painted
empty, and between two slices both painted empty — the guide says background with
``EPS_EMPTY`` (0.001) instead of ``EPS``: no outline can be misplaced there, so the network
overrides only above odds of about 1000·C : 1. (A gap with a structure painted on one side only
keeps ``EPS``: the structure ends somewhere inside it.) On the sample MRI (bench/guide_rescore.py
``--empty``, the models of three runs of bench/interactive.py, two slices painted empty beyond
the structures) this raised the mean Dice by 0.007-0.022 at 3 painted slices, 0.002-0.020 at 8
and 0.000-0.012 at 12, and one run's worst structure from 0.685 to 0.839 at 8: the network's
confident false positives lay past the structures' ends. A synthetic CT painted without empty
slices is unchanged.

Across a gap wider than ``WIDE_GAP_MM`` the interpolated outline is uncertain by millimetres,
and the guide says so:

- a structure painted on one slice but not on the next ends somewhere between them, and the
  guide cannot say where: on the half of the gap next to the slice that holds it, within
  ``MARGIN_MM`` of its painted outline, the network decides alone (``w`` = 0) instead of being
  told "background";
- the interpolated class is soft near the interpolated outline: ``q`` = σ(−d / ``SOFT_MM``) for
  the nearest structure, ``d`` the interpolated signed distance in mm (negative inside), the
  rest for background — sure deep inside and far outside, undecided on the outline, where the
  image (the network) decides.

On the sample MRI (bench/RESULTS.md, bench/guide_rescore.py) both raised the mean Dice where
painted slices lie far apart (3 evenly spaced slices: +0.05, randomly placed slices: up to +0.11)
and left gaps of up to 12 mm as they were; a soft outline across every gap cost 0.01–0.03 at
12–19 slices, where the interpolation is within a voxel or two of the truth. On a phantom CT of
large smooth organs the soft outline cost 0.006–0.007 at gaps of 12.5–20 mm.

ITK's own filter (PyPI ``itk-morphologicalcontourinterpolation``) is not used: it needs the whole
ITK Python package, which Slicer does not ship to its Python, and ITK's and torch's native
libraries crashed at exit in one process here (bench/interactive.py runs it apart to compare).
SimpleITK's signed Maurer distance gives the distance maps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from MedTransferLib.core.case import IGNORE
from MedTransferLib.core.errors import MedTransferError
from MedTransferLib.data.slabs import to_slices_first

WEIGHT = 0.5    # the interpolation's weight against the network's log-probabilities
EPS = 0.05      # the interpolation's probability mass spread over all classes
EPS_EMPTY = 1e-3   # ... where no structure can be: beyond a slice painted empty, between two such slices
WIDE_GAP_MM = 12.0  # painted slices further apart: the interpolated outline is uncertain
MARGIN_MM = 3.0     # a structure on one side only of a wide gap: left to the network this close to it
SOFT_MM = 2.0       # the interpolated outline's softness in a wide gap
CUBIC = True        # False: linear between two painted slices (bench/interpolation.py compares)


def signed_distance(mask: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    """2D signed distance in mm, negative inside ``mask`` ``(H, W)``; the boundary lies half a
    pixel outside the mask's edge pixels, so ``< 0`` gives back exactly ``mask``."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(mask.astype(np.uint8))
    img.SetSpacing((float(spacing[1]), float(spacing[0])))     # SimpleITK: (x = W, y = H)
    dist = sitk.SignedMaurerDistanceMap(img, insideIsPositive=False, squaredDistance=False,
                                        useImageSpacing=True)
    # Maurer's map is 0 on the mask's edge pixels and one pixel beyond them outside
    return sitk.GetArrayFromImage(dist).astype(np.float32) - 0.5 * float(min(spacing))


@dataclass
class Guide:
    """The interpolation of the painted slices of a slices-first volume ``(S, H, W)``."""

    classes: np.ndarray   # (S, H, W) uint8: interpolated class index (0 = background) per voxel
    known: np.ndarray     # (S,) bool: between the first and last painted slice (inclusive), and
    #                       beyond an outermost painted slice painted empty
    painted: np.ndarray   # (S,) bool: painted slices (their classes are the user's)
    num_classes: int      # network classes, background included
    weight: float = WEIGHT
    eps: float = EPS
    open: dict = field(default_factory=dict)   # slice → (H, W) bool: the network decides alone there
    soft: dict = field(default_factory=dict)   # slice → ((H, W) nearest class, (H, W) int8 its signed
    #                                            distance in 0.1 mm): a wide gap's soft outline
    empty: set = field(default_factory=set)    # known slices where no structure can be: eps_empty
    eps_empty: float = EPS_EMPTY

    def fuse(self, slices, probs: np.ndarray) -> np.ndarray:
        """Class indices ``(B, H, W)`` for ``slices`` from the network's softmax ``probs``
        ``(B, C, H, W)``: the interpolation combined on known slices, painted slices as painted.

        The score ``(1 - w) log p + w log q`` is not formed for every class: with ``q`` one-hot
        (``1 - eps + eps/C`` on the interpolated class, ``eps/C`` on the rest; ``eps_empty`` for
        ``eps`` on the slices where no structure can be) the term
        ``w log(eps/C)`` is the same for every class and only the interpolated class gains, so the
        winner is the network's most likely class or the interpolated one, whichever scores more:
        two logarithms per pixel instead of one per class, and no ``(B, C, H, W)`` temporaries
        (bench/micro.py ``--only fuse``). A wide gap's soft outline is scored in full."""
        slices = np.asarray(list(slices), int)
        out = probs.argmax(1).astype(np.uint8)
        for i, z in enumerate(slices.tolist()):
            if not self.known[z] or self.painted[z]:
                continue
            spread = (self.eps_empty if z in self.empty else self.eps) / self.num_classes
            gain = float(np.log((1 - spread * (self.num_classes - 1)) / spread))
            w = np.full(probs.shape[2:], self.weight, np.float32)
            if z in self.open:
                w[self.open[z]] = 0.0
            if z in self.soft:      # a wide gap's soft outline: the whole score
                q = np.log((1 - self.eps) * self.soft_vote(*self.soft[z]) + self.eps / self.num_classes)
                out[i] = ((1 - w) * np.log(probs[i] + 1e-6) + w * q).argmax(0)
                continue
            top, cls = out[i], self.classes[z]
            p_top = np.take_along_axis(probs[i], top[None].astype(np.intp), 0)[0]
            p_cls = np.take_along_axis(probs[i], cls[None].astype(np.intp), 0)[0]
            s_top = (1 - w) * np.log(p_top + 1e-6)
            s_cls = (1 - w) * np.log(p_cls + 1e-6) + w * gain
            out[i] = np.where(s_cls > s_top, cls, top)   # a tie keeps top, the first maximum: argmax's
        painted = self.painted[slices]
        out[painted] = self.classes[slices[painted]]
        return out

    def soft_vote(self, near: np.ndarray, tenths: np.ndarray) -> np.ndarray:
        """``(C, H, W)``: σ(−d / SOFT_MM) for the nearest structure, the rest for background."""
        inside = 1.0 / (1.0 + np.exp(tenths.astype(np.float32) / (10.0 * SOFT_MM)))
        vote = np.zeros((self.num_classes,) + near.shape, np.float32)
        has = near > 0
        vote[0] = np.where(has, 1.0 - inside, 1.0)
        np.put_along_axis(vote, near[None].astype(np.int64), np.where(has, inside, vote[0])[None], 0)
        return vote


def interpolate(classes: np.ndarray, painted: list[int], num_classes: int,
                spacing: tuple[float, float] = (1.0, 1.0), slice_mm: float = 1.0) -> Guide:
    """Shape-based interpolation of the painted slices of ``classes`` ``(S, H, W)`` (class indices;
    only the ``painted`` slices are read). ``spacing``: in-plane (H, W) pixel size in mm;
    ``slice_mm``: the distance between slices."""
    n = classes.shape[0]
    painted = sorted({int(s) for s in painted if 0 <= int(s) < n})
    out = np.zeros(classes.shape, np.uint8)
    known = np.zeros(n, bool)
    is_painted = np.zeros(n, bool)
    is_painted[painted] = True
    if not painted:
        return Guide(out, known, is_painted, num_classes)
    # between the first and last painted slice; beyond an outermost painted slice that holds
    # nothing (the user marked it empty) the structures are known to have ended: background
    # (only when some painted slice holds a structure: one empty slice alone ends nothing)
    known[painted[0]:painted[-1] + 1] = True
    open_, soft, empty = {}, {}, set()
    if any(classes[s].any() for s in painted):
        if not classes[painted[0]].any():
            known[:painted[0]] = True
            empty.update(range(painted[0]))
        if not classes[painted[-1]].any():
            known[painted[-1]:] = True
            empty.update(range(painted[-1] + 1, n))
    for s in painted:
        out[s] = classes[s]
    distance = {}     # (slice, class) → signed distance; kept for the four painted slices in use
    holds = [{c for c in range(1, num_classes) if (classes[s] == c).any()} for s in painted]

    def phi_of(k: int, c: int):   # painted slice k's map of class c, None where it lacks c
        if not 0 <= k < len(painted) or c not in holds[k]:
            return None
        if (painted[k], c) not in distance:
            distance[painted[k], c] = signed_distance(classes[painted[k]] == c, spacing)
        return distance[painted[k], c]

    for k, (a, b) in enumerate(zip(painted[:-1], painted[1:])):
        if b - a < 2:
            continue
        on = [holds[k], holds[k + 1]]
        wide = (b - a) * slice_mm > WIDE_GAP_MM
        if wide:
            _open_ends(phi_of, k, a, b, on, open_)
        shared = sorted(on[0] & on[1])
        if not on[0] and not on[1]:
            empty.update(range(a + 1, b))
        # the slopes of each structure's distance at a and b, from its neighbouring painted slices
        slopes = {c: (monotone_slope(painted, k, c, phi_of), monotone_slope(painted, k + 1, c, phi_of)) if CUBIC
                  else ((phi_of(k + 1, c) - phi_of(k, c)) / (b - a),) * 2 for c in shared}
        for z in range(a + 1, b):
            t = (z - a) / (b - a)
            cubic = (2 * t ** 3 - 3 * t ** 2 + 1, (t ** 3 - 2 * t ** 2 + t) * (b - a),
                     -2 * t ** 3 + 3 * t ** 2, (t ** 3 - t ** 2) * (b - a))     # cubic Hermite basis
            best = np.full(classes.shape[1:], 0.0, np.float32)   # inside where < 0: the deepest wins
            nearest = np.full(classes.shape[1:], np.inf, np.float32)
            near = np.zeros(classes.shape[1:], np.uint8)
            for c in shared:
                ma, mb = slopes[c]
                phi = cubic[0] * phi_of(k, c) + cubic[1] * ma + cubic[2] * phi_of(k + 1, c) + cubic[3] * mb
                inside = phi < best
                out[z][inside] = c
                best[inside] = phi[inside]
                if wide:
                    closer = phi < nearest
                    near[closer], nearest[closer] = c, phi[closer]
            if wide and shared:
                soft[z] = (near, np.clip(np.round(nearest * 10), -127, 127).astype(np.int8))
        for key in [key for key in distance if key[0] <= (painted[k - 1] if k else -1)]:
            del distance[key]      # the slice before a is not needed again
    return Guide(out, known, is_painted, num_classes, open=open_, soft=soft, empty=empty)


def monotone_slope(painted: list[int], k: int, c: int, phi_of) -> np.ndarray:
    """The derivative along the slices (per slice) of class ``c``'s signed distance at painted slice
    ``k``, from its painted neighbours that hold ``c`` too: Fritsch & Carlson's monotone choice
    (the weighted harmonic mean of the two secants; 0 where they differ in sign, so the shape never
    grows or shrinks past what was painted), the one secant at either end of the run.
    ``phi_of(k, c)``: painted slice ``k``'s distance map of class ``c``, None where it lacks ``c``."""
    here, before, after = phi_of(k, c), phi_of(k - 1, c), phi_of(k + 1, c)
    # an end of the run (the gap being filled gives every slice one neighbour): the one secant
    if after is None:
        return (here - before) / float(painted[k] - painted[k - 1])
    if before is None:
        return (after - here) / float(painted[k + 1] - painted[k])
    h0, h1 = float(painted[k] - painted[k - 1]), float(painted[k + 1] - painted[k])
    s0, s1 = (here - before) / h0, (after - here) / h1
    w0, w1 = 2 * h1 + h0, h1 + 2 * h0
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = (w0 + w1) / (w0 / s0 + w1 / s1)
    return np.where(s0 * s1 > 0, mean, 0.0).astype(np.float32)


def _open_ends(phi_of, k: int, a: int, b: int, on: list[set], open_: dict) -> None:
    """Marks in ``open_`` (slice → bool mask) where a structure painted on ``a`` or ``b`` alone
    may still be, on the half of the gap next to the slice that holds it (``a``, ``b``: painted
    slices ``k`` and ``k + 1``, whose distance maps ``phi_of`` gives)."""
    for side, other, s in ((0, 1, a), (1, 0, b)):
        for c in sorted(on[side] - on[other]):
            near = phi_of(k + side, c) < MARGIN_MM
            half = range(a + 1, (a + b) // 2 + 1) if s == a else range((a + b + 1) // 2, b)
            for z in half:
                open_[z] = open_[z] | near if z in open_ else near


def guide_for(label: np.ndarray, label_values: list[int], painted: list[int],
              spacing: tuple[float, float], slice_mm: float) -> Guide:
    """A :class:`Guide` from a slices-first label map of label values (``IGNORE`` where nothing is
    labelled) and its painted slices. ``label_values``: the network's classes 1..N in order."""
    lut = np.zeros(256 if label.dtype == np.uint8 else int(label.max()) + 1, np.uint8)
    for i, v in enumerate(label_values, start=1):
        if v < lut.size:
            lut[v] = i
    found = set(np.unique(label[painted]).tolist()) - {0, IGNORE} if painted else set()
    unknown = sorted(found - set(label_values))
    if unknown:
        shown = str(unknown[:10])[:-1] + (f", … ({len(unknown)} in all)]" if len(unknown) > 10 else "]")
        raise MedTransferError(f"the painted slices hold label values {shown} the model does not predict (its "
                               f"values: {label_values}); paint only the model's structures — is it a label map?")
    return interpolate(lut[label], painted, len(label_values) + 1, spacing, slice_mm)


def case_guide(case, label_values: list[int], axis: int) -> Guide:
    """The :class:`Guide` of a case being labelled: ``case.label`` holds its painted slices
    (``IGNORE`` elsewhere) along voxel ``axis`` (0=i, 1=j, 2=k). A painted slice is one labelled
    all over: slices painted along another axis guide nothing."""
    if case.label is None:
        raise MedTransferError(f"case '{case.case_id}' has no painted label map to guide the prediction; "
                               f"give the painted segmentation (and its labelled slices)")
    spacing = [s for a, s in enumerate(case.geometry.spacing) if a != axis][::-1]   # (H, W) of a slice
    label = to_slices_first(case.label, axis)
    painted = np.flatnonzero((label != IGNORE).all(axis=(1, 2))).tolist()
    return guide_for(label, list(label_values), painted, (float(spacing[0]), float(spacing[1])),
                     float(case.geometry.spacing[axis]))
