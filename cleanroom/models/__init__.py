"""Models: package intake (checks, phase A in a sandbox, export validation) and stored model versions."""
