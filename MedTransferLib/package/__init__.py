"""Stage 4 — the model package: a folder with safetensors weights and a typed, fingerprinted
manifest; and a package as the start of another training."""
