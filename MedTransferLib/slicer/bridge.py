"""Everything the Slicer side does with MRML, in one namespace for scripts and tests:
:mod:`.mrml` (nodes ↔ cases), :mod:`.tables` (results in the scene), :mod:`.exchange` (files for child
processes, in-process entry points), :mod:`.training_list` (the panel's list), :mod:`.views` (slice views ↔ voxels)."""

from MedTransferLib.slicer.exchange import (
    advise_from_nodes,
    classify_to_table,
    export_classification_data,
    export_training_data,
    predict_to_nodes,
    train_from_nodes,
)
from MedTransferLib.slicer.mrml import (
    EMPTY_SLICES,
    case_to_volume_node,
    empty_slices,
    is_image_volume,
    label_to_segmentation_node,
    labels_from_segments,
    node_array,
    node_geometry,
    nodes_to_case,
    segment_names,
    segment_terminology,
    segmentation_to_label,
    segmentations_logic,
    set_empty_slices,
    volume_node_to_case,
)
from MedTransferLib.slicer.tables import (
    audit_to_table,
    learning_curve_nodes,
    place_with_volume,
    rows_to_table_node,
    save_scene,
    table_node_rows,
)
from MedTransferLib.slicer.training_list import (
    TrainingPairs,
    common_segments,
    labelled_slice_counts,
    pair_all,
)
from MedTransferLib.slicer.views import show_slice, slice_index_in_view, view_axis

__all__ = ["advise_from_nodes", "classify_to_table", "export_classification_data", "export_training_data",
           "predict_to_nodes", "train_from_nodes", "case_to_volume_node", "is_image_volume",
           "label_to_segmentation_node", "labels_from_segments", "node_array", "node_geometry", "nodes_to_case",
           "segment_names", "segment_terminology", "segmentation_to_label", "segmentations_logic",
           "volume_node_to_case", "audit_to_table", "learning_curve_nodes", "place_with_volume",
           "rows_to_table_node", "save_scene", "table_node_rows", "TrainingPairs", "common_segments",
           "labelled_slice_counts", "pair_all", "EMPTY_SLICES", "empty_slices", "set_empty_slices",
           "slice_index_in_view", "show_slice", "view_axis"]
