"""Intensity preprocessing, declared once, stored in the model package, replayed at prediction.

Two steps:

1. **Modality preset** → a standardised intensity ``z``.
   - CT: clip to a HU window, then scale by the window's centre/half-width, so a HU value
     means the same on every scanner.
   - MR: clip to per-case percentiles (MR intensities have no absolute unit), then z-score.
2. **Map to the backbone's pretraining statistics**: ``x = z * sigma_src + mu_src`` where
   ``mu_src``/``sigma_src`` are the mean/std of the backbone's *normalised* pretraining inputs
   per channel (for ImageNet through ImageNet mean/std normalisation: ≈ 0 and 1). A network
   thus sees medical slices with the first-order statistics its first layer was trained on —
   the covariate-shift fix MISSION.md asks for.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from MedTransferLib.core.case import Case
from MedTransferLib.core.errors import MedTransferError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def detect_modality(image: np.ndarray) -> str:
    """'CT' if the volume looks like Hounsfield units (air near -1000), else 'MR'."""
    sample = image[:: max(1, image.shape[0] // 32)]
    lo = float(np.percentile(sample, 1))
    return "CT" if lo < -500 else "MR"


@dataclass
class Preprocessing:
    """Intensity recipe. ``target_mean``/``target_std`` come from the backbone (one per channel)."""

    modality: str = "MR"                   # "MR" or "CT" (of the first channel)
    channel_modalities: tuple[str, ...] = ()  # one per image channel when there are several
    ct_window: tuple[float, float] = (-1000.0, 1000.0)
    mr_percentiles: tuple[float, float] = (0.5, 99.5)
    target_mean: tuple[float, ...] = (0.0,)
    target_std: tuple[float, ...] = (1.0,)
    # Nyúl histogram standardisation (MR, one image per case): the standard scale's landmarks at
    # shift.HIST_PERCENTILES, learnt from the training images; empty = off
    histogram_landmarks: tuple[float, ...] = ()
    version: int = 1

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise MedTransferError(f"preprocessing has unknown fields {sorted(unknown)}; the model "
                                   f"was made by a newer MedTransfer — update MedTransfer")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        p = cls(**kw)
        if p.modality not in ("MR", "CT") or any(m not in ("MR", "CT") for m in p.channel_modalities):
            raise MedTransferError(f"preprocessing modality {p.modality!r} is not MR or CT")
        return p

    def modalities(self, channels: int) -> tuple[str, ...]:
        if self.channel_modalities:
            if len(self.channel_modalities) != channels:
                raise MedTransferError(f"the model was trained on {len(self.channel_modalities)} images "
                                       f"per case ({', '.join(self.channel_modalities)}), this case has "
                                       f"{channels}; give the same images in the same order")
            return self.channel_modalities
        if channels != 1:
            raise MedTransferError(f"the model was trained on one image per case, this case has {channels}")
        return (self.modality,)

    def standardise(self, image: np.ndarray, params: list | None = None) -> np.ndarray:
        """Step 1: modality preset → float32 volume with roughly zero mean and unit spread.
        A ``(C, k, j, i)`` image is standardised channel by channel, each with its modality.

        ``params``: a list that receives what was fitted on this image (one dict per channel:
        percentiles, mean/std, histogram landmarks), with which :meth:`apply` standardises any
        block of slices of the same image exactly as here — 3D prediction streams a large
        volume that way instead of holding a standardised copy of it."""
        if image.ndim == 4:
            mods = self.modalities(image.shape[0])
            return np.stack([self._channel(m)._standardise(ch, params) for m, ch in zip(mods, image)])
        self.modalities(1)
        return self._standardise(image, params)

    def apply(self, block: np.ndarray, params: list) -> np.ndarray:
        """Standardise ``block`` (slices of the image ``params`` was fitted on, same layout:
        ``(s, j, i)`` or ``(C, s, j, i)``) with those fitted parameters: bit-identical to the
        same slices of :meth:`standardise`'s result."""
        if block.ndim == 4:
            mods = self.modalities(block.shape[0])
            return np.stack([self._channel(m)._apply(np.array(ch, dtype=np.float32), p)
                             for m, ch, p in zip(mods, block, params)])
        return self._apply(np.array(block, dtype=np.float32), params[0])

    def _channel(self, modality: str) -> "Preprocessing":
        return Preprocessing(modality=modality, ct_window=self.ct_window, mr_percentiles=self.mr_percentiles)

    def _standardise(self, image: np.ndarray, params: list | None = None) -> np.ndarray:
        # one float32 copy, then in place: a 512×512×600 CT must not need several temporaries
        # (and the caller's array is never modified)
        img = np.array(image, dtype=np.float32, copy=True)
        fitted: dict = {}
        if self.histogram_landmarks and self.modality == "MR":
            from MedTransferLib.data.histogram import landmarks as _landmarks

            fitted["landmarks"] = _landmarks(img)
        if self.modality == "MR":
            img = self._landmarked(img, fitted)
            sample = img[:: max(1, img.shape[0] // 64)]
            lo, hi = (float(v) for v in np.percentile(sample, self.mr_percentiles))
            np.clip(img, lo, hi, out=img)
            mean, std = float(img.mean()), float(img.std())
            if std < 1e-6 * max(1.0, abs(hi)):
                raise MedTransferError("image is constant (no contrast after clipping); check that the "
                                       "right volume was chosen")
            fitted.update(lo=lo, hi=hi, mean=mean, std=std)
        if params is not None:
            params.append(fitted)
        return self._apply(img, fitted, clipped=True)

    def _landmarked(self, img: np.ndarray, fitted: dict) -> np.ndarray:
        if "landmarks" not in fitted:
            return img
        from MedTransferLib.data.histogram import apply_landmarks

        return apply_landmarks(img, self.histogram_landmarks, fitted["landmarks"])

    def _apply(self, img: np.ndarray, fitted: dict, clipped: bool = False) -> np.ndarray:
        """In place on the float32 ``img``; the same operations in the same order for a whole
        image and for any block of it. ``clipped``: an MR image already landmark-mapped and
        clipped while its parameters were fitted (:meth:`_standardise`)."""
        if self.modality == "CT":
            lo, hi = self.ct_window
            centre, half = (lo + hi) / 2, (hi - lo) / 2
            np.clip(img, lo, hi, out=img)
            img -= centre
            img /= half
            return img
        if not clipped:
            img = self._landmarked(img, fitted)
            np.clip(img, fitted["lo"], fitted["hi"], out=img)
        img -= fitted["mean"]
        img /= fitted["std"]
        return img

    def to_backbone(self, slab: np.ndarray | "torch.Tensor", channel_axis: int = 1):  # noqa: F821
        """Step 2: map standardised channels onto the backbone's pretraining statistics."""
        n = slab.shape[channel_axis]
        mean = np.resize(np.asarray(self.target_mean, np.float32), n)
        std = np.resize(np.asarray(self.target_std, np.float32), n)
        shape = [1] * slab.ndim
        shape[channel_axis] = n
        if isinstance(slab, np.ndarray):
            return slab * std.reshape(shape) + mean.reshape(shape)
        import torch

        return slab * torch.as_tensor(std, device=slab.device).reshape(shape) + torch.as_tensor(
            mean, device=slab.device).reshape(shape)


def imagenet_target_stats(norm_mean, norm_std) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std of ImageNet pixels after a backbone's own input normalisation."""
    mean = tuple((m - nm) / ns for m, nm, ns in zip(IMAGENET_MEAN, norm_mean, norm_std))
    std = tuple(s / ns for s, ns in zip(IMAGENET_STD, norm_std))
    return mean, std


__all__ = ["Preprocessing", "detect_modality", "imagenet_target_stats", "field"]


def make_preprocessing(modality, case: Case, pretrain_mean, pretrain_std) -> Preprocessing:
    """The intensity recipe for these images: the given modality (one, or one per channel) or,
    with 'auto', each channel's detected modality."""
    channels = case.channels
    if isinstance(modality, (list, tuple)):
        mods = tuple(modality)
        if len(mods) != channels:
            raise MedTransferError(f"{len(mods)} modalities given ({', '.join(mods)}) for "
                                   f"{channels} images per case; name one per image")
    elif modality == "auto":
        mods = tuple(detect_modality(case.image if channels == 1 else case.image[c]) for c in range(channels))
    else:
        mods = (modality,) * channels
    return Preprocessing(modality=mods[0], channel_modalities=mods if channels > 1 else (),
                         target_mean=tuple(pretrain_mean), target_std=tuple(pretrain_std))
