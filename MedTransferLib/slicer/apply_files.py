"""Apply's exchange with its child process: the request file (each volume, and the reference
segmentation where one is given, written as NRRD) and, when the child finishes, its results loaded
into the scene beside each volume — skipping volumes removed from the scene meanwhile."""

from __future__ import annotations

import json
from pathlib import Path

from MedTransferLib.core.errors import MedTransferError
from MedTransferLib.slicer import bridge


def alive(node) -> bool:
    """The node is still in its scene (not removed, scene not closed)."""
    return node is not None and node.GetScene() is not None and node.GetScene().GetNodeByID(node.GetID()) is node


def painted_label(node, pairs, package):
    """The label map painted on ``node`` (``IGNORE`` on unpainted slices, the package's values) when
    ``node`` is paired with a segmentation holding every structure of a 2.5D segmentation
    ``package``; None otherwise (the network alone)."""
    if not pairs or package.task != "segmentation" or package.mode != "2.5d":
        return None
    segmentation = next((seg for volume, seg in pairs if volume.GetID() == node.GetID()), None)
    if segmentation is None or not {lab.name for lab in package.labels} <= set(bridge.segment_names(segmentation)):
        return None
    return bridge.segmentation_to_label(segmentation, node, package.labels, "ignore")


def write_request(nodes, package, reference, device, prior, work, painted_pairs=None) -> str:
    from MedTransferLib.core.files import write_json
    from MedTransferLib.data.io import write_image, write_label

    cases = []
    common = []
    if reference is not None and package.task == "segmentation":
        names = set(bridge.segment_names(reference))
        common = [lab for lab in package.labels if lab.name in names]
        if not common:
            raise MedTransferError(f"reference '{reference.GetName()}' has none of the model's segments "
                                   f"{[lab.name for lab in package.labels]}")
    for i, node in enumerate(nodes):
        case = bridge.volume_node_to_case(node, node.GetName())
        entry = {"id": node.GetName(), "image": [write_image(Path(work) / f"case{i}.nrrd", case.image,
                                                             case.geometry, compress=False).name],
                 "out": f"case{i}_seg.nrrd"}
        painted = painted_label(node, painted_pairs, package)
        if painted is not None:
            entry["painted"] = write_label(Path(work) / f"case{i}_painted.nrrd", painted, case.geometry).name
        if common:
            ref = bridge.segmentation_to_label(reference, node, common)
            entry["reference"] = write_label(Path(work) / f"case{i}_ref.nrrd", ref, case.geometry).name
            entry["reference_labels"] = [lab.value for lab in common]
        cases.append(entry)
    path = Path(work) / "apply.json"
    write_json(path, {"model": str(package.path), "device": device, "prior": prior, "cases": cases})
    return str(path)


def load_segmentations(result, nodes, package, reference):
    from MedTransferLib.data.io import read_image

    out = []
    labels = package.labels
    for node, case in zip(nodes, result["cases"]):
        if not alive(node):   # removed from the scene while the child worked
            out.append(None)
            continue
        scene = node.GetScene()
        label, geometry = read_image(case["segmentation"], "segmentation")
        seg = bridge.label_to_segmentation_node(scene, label, geometry, labels,
                                                f"{node.GetName()} MedTransfer", reference_volume=node)
        volumes = bridge.rows_to_table_node(scene, case["volumes"], f"{node.GetName()} volumes")
        if case.get("warnings"):
            volumes.SetAttribute("MedTransfer.Warnings", "\n".join(case["warnings"]))
        metrics = None
        if case.get("metrics"):
            metrics = bridge.rows_to_table_node(scene, case["metrics"], f"{node.GetName()} metrics")
        bridge.place_with_volume(node, [seg, volumes, metrics])
        out.append((seg, volumes, metrics))
    return out


def load_classes(result, nodes, prior):
    present = [n for n in nodes if alive(n)]
    if not present:
        raise MedTransferError("the volumes were removed from the scene before the classification finished")
    table = bridge.rows_to_table_node(present[0].GetScene(), result["predictions"], "MedTransfer classes")
    if result.get("prior"):
        table.SetAttribute("MedTransfer.Prior", json.dumps(result["prior"]))
    bridge.place_with_volume(present[0], [table])
    return table
