"""A tripwire for phase B: the worker process must hold no module outside the service's stack.

Manufacturer code is never on phase B's path, so this should never fire; if it does, something
imported a foreign module (a package's model.py, a plugin) and training refuses to start.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

# torch, numpy, opacus and what they import; "name" allows name and name.*, "name*" is a raw prefix.
DEFAULT_ALLOWED_MODULES = (
    "cleanroom", "torch", "torchgen", "functorch", "numpy", "opacus", "scipy", "safetensors", "Crypto",
    "sympy", "mpmath", "networkx", "opt_einsum", "typing_extensions", "tqdm", "filelock", "fsspec",
    "jinja2", "markupsafe", "packaging", "charset_normalizer", "_distutils_hack",
    "__main__", "__mp_main__", "_remote_module_non_scriptable", "cython_runtime",
    "_cython_*", "_cyutility", "_sysconfigdata_*", "_csparsetools", "_moduleTNC", "_ni_label",
)


class ForeignModuleError(RuntimeError):
    """A module outside the allow-list is loaded in the worker."""


def _allowed(name: str, exact: set[str], prefixes: tuple[str, ...]) -> bool:
    top = name.split(".", 1)[0]
    return top in sys.stdlib_module_names or top in exact or name.startswith(prefixes)


def foreign_modules(allowed_prefixes: Iterable[str] = DEFAULT_ALLOWED_MODULES) -> list[str]:
    entries = list(allowed_prefixes)
    exact = {e for e in entries if not e.endswith("*")}
    prefixes = tuple(e[:-1] for e in entries if e.endswith("*"))
    return sorted(n for n in list(sys.modules) if not _allowed(n, exact, prefixes))


def assert_no_foreign_modules(allowed_prefixes: Iterable[str] = DEFAULT_ALLOWED_MODULES) -> None:
    """Raise ForeignModuleError naming (module names only) whatever is loaded but not allowed."""
    found = foreign_modules(allowed_prefixes)
    if found:
        shown = ", ".join(found[:20]) + (" …" if len(found) > 20 else "")
        raise ForeignModuleError(f"{len(found)} foreign module(s) loaded in the trainer: {shown}")
