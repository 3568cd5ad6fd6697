"""Model versions: submission through sandboxed intake, sealed storage, per-manufacturer views."""
