"""Stage 6 — using a package: whole-volume segmentation, classification, export."""
