"""Intake limits, built once and frozen: what a package, its weights and its exported graph may be."""

from __future__ import annotations

from dataclasses import dataclass, field

from cleanroom.sandbox.base import SandboxPolicy

MiB = 1 << 20


def default_phase_a_policy() -> SandboxPolicy:
    """Phase A needs torch (~0.5 GiB resident) and a small export; nothing more."""
    return SandboxPolicy(
        memory_bytes=3 << 30,
        max_processes=64,
        max_file_bytes=256 * MiB,
        max_output_bytes=512 * MiB,
        cpu_seconds=240,
        wall_seconds=180.0,
        tmpfs_bytes=64 * MiB,
        max_log_bytes=64 << 10,
    )


@dataclass(frozen=True)
class IntakeLimits:
    # The submitted zip, checked from its central directory before anything is read or written.
    max_zip_bytes: int = 256 * MiB
    max_entries: int = 256
    max_file_bytes: int = 200 * MiB          # any one file (the weights, in practice)
    max_source_bytes: int = 1 * MiB          # any one .py / .toml / text file
    max_total_bytes: int = 400 * MiB         # all files, uncompressed
    max_ratio: float = 100.0                 # uncompressed / compressed, per file and overall
    ratio_floor_bytes: int = 1 * MiB         # small files may compress well; the total limit still holds
    # safetensors (package weights and the exported artifact)
    max_header_bytes: int = 16 * MiB
    max_tensors: int = 4096
    # The exported program.
    max_parameters: int = 50_000_000
    max_tensor_elements: int = 1 << 26      # any one tensor, state or intermediate
    max_graph_nodes: int = 5000
    # What goes back to the manufacturer in the report.
    max_report_text: int = 16 << 10
    sandbox: SandboxPolicy = field(default_factory=default_phase_a_policy)
