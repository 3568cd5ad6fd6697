"""The model package manifest (cleanroom-model.toml): parsed strictly, errors name the field.

Part of the public package contract (DESIGN.md). Imports nothing heavy and nothing outside the
`cleanroom` package: the SDK packer uses it, and so does phase A, where only `cleanroom` is mounted.
"""

from __future__ import annotations

import enum
import re
import tomllib
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, TypeGuard

from cleanroom.domain.errors import CleanroomError, ErrorCode, FieldViolation

MANIFEST_NAME = "cleanroom-model.toml"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_VERSION = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?")
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_ENTRYPOINT = re.compile(rf"({_IDENT}(?:\.{_IDENT})*):({_IDENT})")
_KNOWN = {"name", "version", "entrypoint", "task", "num_classes", "input_shape", "weights", "trainable"}
MAX_INPUT_ELEMENTS = 1 << 24


class Task(enum.Enum):
    BINARY = "binary-classification"
    MULTICLASS = "multiclass-classification"
    REGRESSION = "regression"

    @property
    def is_classification(self) -> bool:
        return self is not Task.REGRESSION


class ManifestError(CleanroomError):
    def __init__(self, field: str, description: str) -> None:
        super().__init__(ErrorCode.BAD_REQUEST, f"{MANIFEST_NAME}: {field}: {description}",
                         violations=[FieldViolation(field, description)])
        self.field = field


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    entrypoint: str
    task: Task
    num_classes: int | None
    input_shape: tuple[int, ...]
    weights: str | None = None
    trainable: tuple[str, ...] = ("*",)

    @property
    def module(self) -> str:
        return self.entrypoint.split(":", 1)[0]

    @property
    def function(self) -> str:
        return self.entrypoint.split(":", 1)[1]

    @property
    def module_path(self) -> str:
        """The package file the entrypoint module lives in (a package's __init__ is not allowed)."""
        return self.module.replace(".", "/") + ".py"

    def expected_output_shapes(self) -> tuple[tuple[int, ...], ...]:
        if self.task.is_classification:
            return ((1, int(self.num_classes or 0)),)
        return ((1,), (1, 1))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "version": self.version, "entrypoint": self.entrypoint,
                               "task": self.task.value, "input_shape": list(self.input_shape),
                               "trainable": list(self.trainable)}
        if self.num_classes is not None:
            out["num_classes"] = self.num_classes
        if self.weights is not None:
            out["weights"] = self.weights
        return out


def parse_manifest(data: bytes | str) -> Manifest:
    """Parse and validate a manifest; raises ManifestError naming the first bad field."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        raw = tomllib.loads(text)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ManifestError("(file)", f"not valid UTF-8 TOML: {exc}") from None
    unknown = sorted(set(raw) - _KNOWN)
    if unknown:
        raise ManifestError(unknown[0], "unknown field")
    task = _task(raw)
    return Manifest(
        name=_matching(raw, "name", _NAME, "1-64 letters, digits, '.', '_' or '-'"),
        version=_matching(raw, "version", _VERSION, "a semantic version such as 1.0.0"),
        entrypoint=_matching(raw, "entrypoint", _ENTRYPOINT, "module:function, e.g. model:build_model"),
        task=task,
        num_classes=_num_classes(raw, task),
        input_shape=_input_shape(raw),
        weights=_weights(raw),
        trainable=_trainable(raw),
    )


def _required(raw: dict[str, Any], key: str) -> Any:
    if key not in raw:
        raise ManifestError(key, "required")
    return raw[key]


def _matching(raw: dict[str, Any], key: str, pattern: re.Pattern[str], words: str) -> str:
    value = _required(raw, key)
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ManifestError(key, f"must be {words}")
    return value


def _task(raw: dict[str, Any]) -> Task:
    value = _required(raw, "task")
    try:
        return Task(value)
    except ValueError:
        raise ManifestError("task", f"must be one of {', '.join(t.value for t in Task)}") from None


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _num_classes(raw: dict[str, Any], task: Task) -> int | None:
    if not task.is_classification:
        if raw.get("num_classes", 1) != 1:
            raise ManifestError("num_classes", "a regression model has one output; leave num_classes out")
        return None
    value = _required(raw, "num_classes")
    if not _is_int(value) or value < 2 or value > 100_000:
        raise ManifestError("num_classes", "must be an integer from 2 to 100000 for classification")
    if task is Task.BINARY and value != 2:
        raise ManifestError("num_classes", "binary-classification returns 2 logits; num_classes must be 2")
    return value


def _input_shape(raw: dict[str, Any]) -> tuple[int, ...]:
    value = _required(raw, "input_shape")
    if not isinstance(value, list) or not 1 <= len(value) <= 4 or not all(_is_int(v) and v > 0 for v in value):
        raise ManifestError("input_shape", "must be a list of 1 to 4 positive integers (per example, no batch dimension)")
    total = 1
    for v in value:
        total *= v
    if total > MAX_INPUT_ELEMENTS:
        raise ManifestError("input_shape", f"at most {MAX_INPUT_ELEMENTS} elements per example")
    return tuple(value)


def is_normalised_relative(value: Any) -> TypeGuard[str]:
    """enclave_sim's check_relative_path rule (enclave_sim is not mounted inside phase A)."""
    if not isinstance(value, str) or not value or "\\" in value or "\x00" in value:
        return False
    parts = value.split("/")
    return not PurePosixPath(value).is_absolute() and not any(p in ("", ".", "..") for p in parts)


def _weights(raw: dict[str, Any]) -> str | None:
    value = raw.get("weights")
    if value is None:
        return None
    if not is_normalised_relative(value):
        raise ManifestError("weights", "must be a relative path inside the package")
    if not value.endswith(".safetensors"):
        raise ManifestError("weights", "must name a .safetensors file (pickle, .pt and .bin are refused)")
    return value


def _trainable(raw: dict[str, Any]) -> tuple[str, ...]:
    value = raw.get("trainable", ["*"])
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise ManifestError("trainable", "must be a non-empty list of glob patterns over parameter names")
    return tuple(value)
