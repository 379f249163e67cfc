"""Stage 1 — what everything else speaks: the Case and its geometry, labels, errors, files written
atomically, devices, progress events, run folders, child processes and the environment."""
