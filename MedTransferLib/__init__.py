"""MedTransfer engine: transfer learning on your own CT/MRI volumes, importable without Slicer.

Example:
    >>> import MedTransferLib as mt
    >>> dl = mt.load_datalist(mt.sample_data())                     # doctest: +SKIP
    >>> run = mt.train(dl.load_cases(), dl.labels, "runs/a")        # doctest: +SKIP
    >>> pred = mt.predict(run.package, mt.read_case("new.nii.gz"))  # doctest: +SKIP
"""

__version__ = "0.1.0"

from .case import IGNORE, Case, Geometry  # noqa: E402
from .datalist import Datalist, load_datalist  # noqa: E402
from .errors import MedTransferError  # noqa: E402
from .io import read_case, read_image, write_image, write_label  # noqa: E402
from .labels import Label  # noqa: E402
from .metrics import evaluate, hd95, summary  # noqa: E402
from .package import ModelPackage  # noqa: E402
from .predict import Prediction, predict  # noqa: E402
from .sampledata import sample_data, sparse_datalist  # noqa: E402
from .trainer import TrainConfig, TrainResult  # noqa: E402
from .trainer import train as train_cases  # noqa: E402


def train(data, out, labels=None, reporter=None, resume: bool = False, **config) -> TrainResult:
    """Train on a datalist path, a :class:`Datalist`, or a list of :class:`Case` (with ``labels``).

    Keyword arguments are :class:`TrainConfig` fields (``backbone``, ``strategy``, ``epochs``...).
    ``resume=True`` continues an interrupted run in ``out`` from its last complete epoch (same
    data and settings; bit-identical to an uninterrupted run on CPU).

    Example:
        >>> run = train("dataset.json", "runs/a", strategy="frozen", epochs=2)  # doctest: +SKIP
    """
    axis = 2
    if not isinstance(data, (list, tuple)):
        from .classify import ClassDatalist, is_classification, train_classifier

        if isinstance(data, ClassDatalist) or (not isinstance(data, Datalist) and is_classification(data)):
            return train_classifier(data, out, TrainConfig(**config), reporter, resume)
        dl = data if isinstance(data, Datalist) else load_datalist(data)
        labels = labels or dl.labels
        axis = dl.training[0].slice_axis
        if config.get("modality", "auto") == "auto" and dl.modality != "auto":
            config["modality"] = dl.modality
        data = dl.load_cases()
    if labels is None:
        raise MedTransferError("train() on a list of cases needs labels=[Label(...), ...]")
    return train_cases(list(data), list(labels), out, TrainConfig(**config), reporter, axis, resume)


__all__ = ["Case", "Geometry", "IGNORE", "Datalist", "load_datalist", "MedTransferError", "read_case",
           "read_image", "write_image", "write_label", "Label", "evaluate", "hd95", "summary",
           "ModelPackage", "Prediction", "predict", "sample_data", "sparse_datalist", "TrainConfig",
           "TrainResult", "train", "train_cases"]
