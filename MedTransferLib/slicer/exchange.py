"""Nodes to files a child process trains on, and the in-process entry points (scripts outside
Slicer, benchmarks): train, predict, classify and advise on nodes."""

from __future__ import annotations

from pathlib import Path

from MedTransferLib.core.errors import MedTransferError
from MedTransferLib.slicer.mrml import (
    label_to_segmentation_node,
    labels_from_segments,
    nodes_to_case,
    segment_names,
    segmentation_to_label,
    volume_node_to_case,
)
from MedTransferLib.slicer.tables import place_with_volume, rows_to_table_node
from MedTransferLib.slicer.views import view_axis


def export_training_data(pairs, segment_names_: list[str], folder, unpainted: str = "background",
                         axis: int | None = None):
    """Write (volume node, segmentation node) pairs as a datalist a child process can train on:
    one NRRD image and label map per pair (unlabelled voxels 255) and ``dataset.json``. The nodes
    are only read. ``axis`` None: each volume's slices are those the Red view steps along
    (:func:`~MedTransferLib.slicer.mrml.view_axis`), the axis the user painted on; the training
    reads the volumes in the first one's voxel order (data/orientation.py). Returns the datalist
    path."""
    from MedTransferLib.core.files import write_json
    from MedTransferLib.data.io import write_image, write_label

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    labels = labels_from_segments(pairs[0][1], segment_names_)
    entries = []
    for i, (volume, segmentation) in enumerate(pairs):
        along = view_axis(volume) if axis is None else axis
        case = nodes_to_case(volume, segmentation, labels, unpainted, along)
        image = write_image(folder / f"case{i}_image.nrrd", case.image, case.geometry)
        label = write_label(folder / f"case{i}_label.nrrd", case.label, case.geometry)
        entries.append({"image": image.name, "label": label.name, "id": volume.GetName() or f"case{i}",
                        "labelled_slices": case.labelled_slices(along), "slice_axis": along})
    data = {"labels": {"0": "background", **{str(lab.value): lab.name for lab in labels}},
            "colors": {str(lab.value): list(lab.color) for lab in labels}, "training": entries}
    if any(lab.terminology for lab in labels):
        data["terminology"] = {str(lab.value): lab.terminology for lab in labels if lab.terminology}
    path = folder / "dataset.json"
    write_json(path, data)
    return path


def export_classification_data(volume_nodes, classes: list[str], folder):
    """Write volume nodes with one class each as a classification datalist a child process can
    train on (one NRRD per volume + ``dataset.json``). The nodes are only read."""
    from MedTransferLib.core.files import write_json
    from MedTransferLib.data.io import write_image

    volume_nodes = list(volume_nodes)
    if len(volume_nodes) != len(classes):
        raise MedTransferError(f"{len(volume_nodes)} volumes but {len(classes)} classes: give one class per volume")
    empty = [v.GetName() for v, c in zip(volume_nodes, classes) if not str(c).strip()]
    if empty:
        raise MedTransferError(f"volumes {empty} have no class; type one in the Class column")
    names = sorted({str(c).strip() for c in classes})
    if len(names) < 2:
        raise MedTransferError(f"every volume has class '{names[0]}'; a classifier needs at least two "
                               f"classes among the training volumes")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, (volume, cls) in enumerate(zip(volume_nodes, classes)):
        case = volume_node_to_case(volume)
        image = write_image(folder / f"case{i}_image.nrrd", case.image, case.geometry)
        entries.append({"image": image.name, "label": str(cls).strip(), "id": volume.GetName() or f"case{i}"})
    path = folder / "dataset.json"
    write_json(path, {"task": "classification", "classes": names, "training": entries})
    return path


def train_from_nodes(pairs, segment_names_: list[str], out, unpainted: str = "background",
                     axis: int | None = None, reporter=None, **config):
    """Train on (volume node, segmentation node) pairs; segments are matched by name. ``axis``
    None: each volume's slices along the Red view (as :func:`export_training_data`).

    Example (Slicer Python console):
        >>> run = train_from_nodes([(vol, seg)], ["tumor"], "/tmp/run", epochs=5)  # doctest: +SKIP
    """
    from MedTransferLib.training.config import TrainConfig
    from MedTransferLib.training.segmentation import train

    if not pairs:
        raise MedTransferError("no training pairs: choose at least one volume with its segmentation")
    labels = labels_from_segments(pairs[0][1], segment_names_)
    cases, axes = [], [view_axis(v) if axis is None else axis for v, _ in pairs]
    for (volume, segmentation), along in zip(pairs, axes):
        case = nodes_to_case(volume, segmentation, labels, unpainted, along)
        case.case_id = volume.GetName()
        cases.append(case)
    return train(cases, labels, out, TrainConfig(**config), reporter, axes[0])


def predict_to_nodes(volume_node, model, reference_segmentation=None, device: str = "auto"):
    """Segment a volume node: returns (segmentation node, volumes table, metrics table or None),
    placed with the volume in the subject hierarchy; segments carry the training segments'
    names, colours and terminology.

    The input volume (and reference) are only read. With a reference segmentation holding
    segments of the same names, a Dice/HD95 table is added.
    """
    from MedTransferLib.data.metrics import evaluate
    from MedTransferLib.inference.segment import predict

    scene = volume_node.GetScene()
    case = volume_node_to_case(volume_node)
    pred = predict(model, case, device=device)
    seg = label_to_segmentation_node(scene, pred.label, case.geometry, pred.labels,
                                     f"{volume_node.GetName()} MedTransfer", reference_volume=volume_node)
    volumes = rows_to_table_node(scene, pred.volumes(), f"{volume_node.GetName()} volumes")
    if pred.warnings:   # the input check's findings travel with the table (and the GUI shows them)
        volumes.SetAttribute("MedTransfer.Warnings", "\n".join(pred.warnings))
    metrics = None
    if reference_segmentation is not None:
        names = set(segment_names(reference_segmentation))
        common = [lab for lab in pred.labels if lab.name in names]
        if not common:
            raise MedTransferError(f"reference '{reference_segmentation.GetName()}' has none of the "
                                   f"model's segments {[lab.name for lab in pred.labels]}")
        ref = segmentation_to_label(reference_segmentation, volume_node, common)
        rows = evaluate(pred.label, ref, common, case.geometry, case_id=volume_node.GetName())
        metrics = rows_to_table_node(scene, rows, f"{volume_node.GetName()} metrics")
    place_with_volume(volume_node, [seg, volumes, metrics])
    return seg, volumes, metrics


def classify_to_table(volume_nodes, model, device: str = "auto", name: str = "MedTransfer classes",
                      prior: str | None = None):
    """Classify volume nodes with a classification package: one table node, a row per volume
    (``case, predicted, p_<class>…``). ``prior`` (em, bbse, known:…) adjusts the probabilities
    to these volumes' class prevalence (shift.prior_correction); the estimate is stored on the
    table as the attribute ``MedTransfer.Prior``. The volumes are only read."""
    from MedTransferLib.inference.classify import predict_class
    from MedTransferLib.package.store import ModelPackage

    nodes = list(volume_nodes)
    if not nodes:
        raise MedTransferError("no volume given to classify")
    from MedTransferLib.core.device import resolve_device

    pkg = model if isinstance(model, ModelPackage) else ModelPackage.load(model)
    dev = resolve_device(device)
    net = pkg.build_model(dev)   # once for all volumes
    rows = [predict_class(pkg, volume_node_to_case(n, n.GetName()), device=str(dev), model=net) for n in nodes]
    report = None
    if prior:
        from MedTransferLib.shift.prior import prior_correction

        rows, report = prior_correction(rows, pkg.manifest.classes, pkg.manifest.calibration or {}, prior)
    table = rows_to_table_node(nodes[0].GetScene(), rows, name)
    if report:
        import json

        table.SetAttribute("MedTransfer.Prior", json.dumps(report))
    place_with_volume(nodes[0], [table])
    return table


def advise_from_nodes(pairs, segment_names_: list[str], unpainted: str = "background", **kw):
    """The strategy advisor on [(volume node, segmentation node), ...]: an :class:`~.advisor.Advice`."""
    from MedTransferLib.training.advisor import advise

    labels = labels_from_segments(pairs[0][1], segment_names_)
    cases = [nodes_to_case(v, s, labels, unpainted) for v, s in pairs]
    return advise(cases, labels, **kw)
