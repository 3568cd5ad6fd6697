"""Phase B: the service's own worker, run in a sandbox with the data (no manufacturer code)."""
