"""The training defaults, in one place: read by :class:`~MedTransferLib.training.config.TrainConfig`
(the Python API), the ``medtransfer`` CLI and the Slicer module's parameters. Pure Python, so the
Slicer panel can read it before torch is installed. They are the product's recommendation for a
new task, measured on the sample task (bench/RESULTS.md)."""

TRAINING = {
    "mode": "2.5d",                  # "2.5d" (k slices → 2D network) or "3d" (patches → 3D network)
    "backbone": "efficientnet-lite0",
    "weights": "pretrained",         # the backbone's pretrained weights, a file path, or None
    "strategy": "auto",              # the advisor picks from data size × domain distance
    "slices": 3,                     # 2.5D: k adjacent slices as channels
    "epochs": 16,
    "steps_per_epoch": 50,
    "lr": 2e-3,
    "weight_decay": 1e-4,
    "warmup_fraction": 0.05,
    "patience": 4,                   # epochs without validation improvement before stopping
    "val_fraction": 0.2,
    "overlap": 0.25,                 # 3D sliding-window overlap at validation and prediction
    "stem": "mean",                  # how the first conv is adapted to k ≠ 3 channels
    "modality": "auto",
    "device": "auto",
    "seed": 0,
    "max_seconds": None,             # a time budget for training, in seconds (None: the full schedule)
    "small_batch_epochs": 2,         # 2.5D on a CPU: the first epochs of a new run train on half batches
}

# epochs when a run continues an earlier model (`--from`): it already knows the task
CONTINUE_EPOCHS = 4

# the live preview while training (training/preview.py) and the panel's Update: the files the
# panel and the training process share in the preview folder, how often a preview comes, and the
# time budget of an Update (continuing the last model on the corrected slices)
PREVIEW_FILE = "preview.nrrd"
VIEW_FILE = "view.json"
PREVIEW_EVERY = {"cuda": 5.0, "cpu": 25.0}   # seconds between previews (never over 10 % of the time)
UPDATE_SECONDS = 60
# what a time budget keeps back for the process to exit after its last event: `python -m
# MedTransferLib` and `medtransfer` skip the interpreter's teardown (app/cli.py run(): 0.14 s
# from a training job's last event to its exit against 1.36 s with the teardown;
# bench/update_timeline.py, 2-core AMD EPYC, 2026-12-03)
EXIT_SECONDS = 0.5

# the strategies the Slicer panel offers (any name `medtransfer train --strategy` accepts works too)
STRATEGY_PRESETS = ["auto", "finetune", "frozen", "partial:2", "gradual", "discriminative",
                    "gradual+discriminative", "bn-only", "adabn"]
