"""Stage 7 — training: settings, the loss, transfer strategies, the advisor, the loop and its
hooks, and one skeleton for segmentation and classification."""
