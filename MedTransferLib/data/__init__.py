"""Stage 2 — reading and preparing data: image I/O, datalists, preprocessing, slabs and patches,
sampling, augmentation, the validation split, metrics and the sample data."""
