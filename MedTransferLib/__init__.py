"""MedTransfer engine: transfer learning on your own CT/MRI volumes, importable without Slicer.

Example:
    >>> import MedTransferLib as mt
    >>> dl = mt.load_datalist(mt.sample_data())                     # doctest: +SKIP
    >>> run = mt.train(dl.load_cases(), dl.labels, "runs/a")        # doctest: +SKIP
    >>> pred = mt.predict(run.package, mt.read_case("new.nii.gz"))  # doctest: +SKIP

The public names are imported on first use (PEP 562): ``import MedTransferLib`` and its
torch-free parts (case, labels, io, the Slicer panel) work before PyTorch is installed, which is
how the Slicer module starts on a fresh install.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name → submodule that defines it
_EXPORTS = {
    "Case": "core.case", "Geometry": "core.case", "IGNORE": "core.case",
    "Datalist": "data.datalist", "load_datalist": "data.datalist",
    "MedTransferError": "core.errors",
    "read_case": "data.io", "read_image": "data.io", "write_image": "data.io", "write_label": "data.io",
    "Label": "core.labels",
    "evaluate": "data.metrics", "hd95": "data.metrics", "summary": "data.metrics",
    "ModelPackage": "package.store",
    "Prediction": "inference.segment", "predict": "inference.segment",
    "sample_data": "data.sampledata", "sparse_datalist": "data.sampledata",
    "TrainConfig": "training.config", "TrainResult": "training.config",
}


def __getattr__(name: str):
    if name == "train_cases":
        value = importlib.import_module(".training.segmentation", __name__).train
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    else:
        raise AttributeError(f"module 'MedTransferLib' has no attribute '{name}'")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


def train(data, out, labels=None, reporter=None, resume: bool = False, **config):
    """Train on a datalist path, a :class:`Datalist`, or a list of :class:`Case` (with ``labels``).

    Keyword arguments are :class:`TrainConfig` fields (``backbone``, ``strategy``, ``epochs``...).
    ``resume=True`` continues an interrupted run in ``out`` from its last complete epoch (same
    data and settings; bit-identical to an uninterrupted run on CPU).

    Example:
        >>> run = train("dataset.json", "runs/a", strategy="frozen", epochs=2)  # doctest: +SKIP
    """
    from MedTransferLib.core.errors import MedTransferError
    from MedTransferLib.core.progress import Reporter
    from MedTransferLib.data.datalist import Datalist, load_datalist
    from MedTransferLib.training.config import TrainConfig
    from MedTransferLib.training.run import check_datalist_memory
    from MedTransferLib.training.segmentation import train as train_cases

    if reporter is None:   # its clock starts now: max_seconds counts from here
        reporter = Reporter(stream=None, bar=False)

    axis = 2
    if not isinstance(data, (list, tuple)):
        from MedTransferLib.data.class_datalist import ClassDatalist, is_classification
        from MedTransferLib.training.classification import train_classifier

        if isinstance(data, ClassDatalist) or (not isinstance(data, Datalist) and is_classification(data)):
            return train_classifier(data, out, TrainConfig(**config), reporter, resume)
        dl = data if isinstance(data, Datalist) else load_datalist(data)
        labels = labels or dl.labels
        axis = dl.training[0].slice_axis
        if config.get("modality", "auto") == "auto" and dl.modality != "auto":
            config["modality"] = dl.modality
        check_datalist_memory(dl, TrainConfig(**config))
        data = dl.load_cases()
    if labels is None:
        raise MedTransferError("train() on a list of cases needs labels=[Label(...), ...]")
    return train_cases(list(data), list(labels), out, TrainConfig(**config), reporter, axis, resume)


__all__ = ["Case", "Geometry", "IGNORE", "Datalist", "load_datalist", "MedTransferError", "read_case",
           "read_image", "write_image", "write_label", "Label", "evaluate", "hd95", "summary",
           "ModelPackage", "Prediction", "predict", "sample_data", "sparse_datalist", "TrainConfig",
           "TrainResult", "train", "train_cases"]
