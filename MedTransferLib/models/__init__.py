"""Stage 3 — networks: the pretrained backbone registry, MedTransfer's segmentation and classification
networks, and building one from its configuration."""
