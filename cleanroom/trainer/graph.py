"""A manufacturer's exported forward as a pure function the service can differentiate per example.

The program was exported at batch 1 and validated at intake (core ATen, no mutation). We never run
manufacturer Python: `program.module()` is a GraphModule torch builds from the graph itself. Every
example is fed alone as [1, *input_shape] under `vmap`, so an op that would reduce over the batch
(a batch-statistics layer) only ever sees one example: per-example gradients cannot mix examples.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch.func import functional_call, grad, vmap

from cleanroom.domain.errors import bad_request
from cleanroom.trainer.tracing import Grad, Outer, TracedGrads

TASKS = ("binary-classification", "multiclass-classification", "regression")
ROW_BUCKET = 32  # traced graphs are cached per padded batch size, a multiple of this

Tensors = dict[str, torch.Tensor]
GradFunction = Callable[[Tensors, torch.Tensor, torch.Tensor], Any]  # TracedGrads, or the eager transform it replaces


@dataclass(frozen=True)
class Task:
    kind: str
    num_classes: int

    @property
    def classification(self) -> bool:
        return self.kind != "regression"


def resolve_trainable(parameter_names: Sequence[str], patterns: Sequence[str]) -> tuple[str, ...]:
    """Names or globs (fnmatchcase, like intake) -> parameter names in graph order; a dud pattern is an error."""
    chosen: set[str] = set()
    for pattern in patterns:
        matched = [n for n in parameter_names if fnmatch.fnmatchcase(n, pattern)]
        if not matched:
            raise bad_request(f"trainable pattern {pattern!r} matches no parameter")
        chosen.update(matched)
    return tuple(n for n in parameter_names if n in chosen)


def _input_shape(program: torch.export.ExportedProgram) -> tuple[int, ...]:
    users = program.graph_signature.user_inputs
    if len(users) != 1:
        raise bad_request(f"the forward must take exactly one tensor input, not {len(users)}")
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == users[0])
    shape = tuple(int(s) for s in node.meta["val"].shape)
    if not shape or shape[0] != 1:
        raise bad_request("the program must be exported at batch size 1")
    return shape[1:]


def _padded(rows: int) -> int:
    return max(ROW_BUCKET, math.ceil(rows / ROW_BUCKET) * ROW_BUCKET)


class ExportedModel:
    """Functional forward, service-chosen loss and per-example gradients over one exported program."""

    def __init__(self, program: torch.export.ExportedProgram, *, task: Task, trainable: Sequence[str]) -> None:
        if task.kind not in TASKS:
            raise bad_request(f"unknown task {task.kind!r}")
        self.task = task
        self.input_shape = _input_shape(program)
        self._module = program.module()
        params = dict(self._module.named_parameters())
        self.trainable_names = resolve_trainable(list(params), trainable)
        for name in self.trainable_names:
            if not params[name].is_floating_point():
                raise bad_request(f"trainable parameter {name} is not a float tensor")
        # Frozen parameters and buffers are constants of the function, never differentiated.
        self._constants: Tensors = {n: p.detach() for n, p in params.items() if n not in self.trainable_names}
        self._constants.update({n: b.detach() for n, b in self._module.named_buffers()})
        self._traced: dict[int, GradFunction] = {}
        self._check_output()

    def initial_trainable(self) -> Tensors:
        params = dict(self._module.named_parameters())
        return {n: params[n].detach().clone().float() for n in self.trainable_names}

    def forward_one(self, trainable: Tensors, x: torch.Tensor) -> torch.Tensor:
        """One example [*input_shape] -> the program's output for a batch of one."""
        out = functional_call(self._module, {**self._constants, **trainable}, (x.unsqueeze(0),))
        return cast(torch.Tensor, out[0] if isinstance(out, (tuple, list)) else out)

    def loss_one(self, trainable: Tensors, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self.forward_one(trainable, x)
        if self.task.classification:
            # Cross-entropy of one example as -log_softmax[y]: the same kernels as F.cross_entropy
            # without its ignore_index and reduction handling (~30 traced ops that dominate small models).
            return -torch.log_softmax(out.reshape(-1), 0).gather(0, y.reshape(1)).reshape(())
        return torch.nn.functional.mse_loss(out.reshape(-1), y.reshape(-1).to(out.dtype))

    def _check_output(self) -> None:
        with torch.no_grad():
            out = self.forward_one(self.initial_trainable(), torch.zeros(self.input_shape))
        if self.task.classification and tuple(out.shape) != (1, self.task.num_classes):
            raise bad_request(f"classification output must be logits [1, {self.task.num_classes}], got {list(out.shape)}")
        self.output_size = int(out.numel())

    def features(self, X: Any) -> torch.Tensor:
        """Data rows as float32 [n, *input_shape]; any other shape is refused (names no value)."""
        X_t = torch.as_tensor(np.asarray(X, dtype=np.float32))
        if tuple(X_t.shape[1:]) != self.input_shape:
            raise bad_request(f"features must be [n, {', '.join(map(str, self.input_shape))}]")
        return X_t

    def labels(self, y: Any, rows: int) -> torch.Tensor:
        """Class indices in [0, num_classes) as int64, or float targets for regression."""
        y_arr = np.asarray(y)
        if len(y_arr) != rows:
            raise bad_request("labels must hold one value per row")
        if not self.task.classification:
            return torch.as_tensor(y_arr.astype(np.float32))
        if y_arr.size and (not np.all(y_arr == np.round(y_arr)) or y_arr.min() < 0 or y_arr.max() >= self.task.num_classes):
            raise bad_request(f"classification labels must be integers in [0, {self.task.num_classes})")
        return torch.as_tensor(y_arr.astype(np.int64))

    def predict(self, trainable: Tensors, X: torch.Tensor, *, chunk: int = 4096) -> torch.Tensor:
        """Outputs [n, output_size], example by example under vmap (never a real batch)."""
        batched = vmap(lambda x: self.forward_one(trainable, x).reshape(-1), randomness="different")
        with torch.no_grad():
            parts = [batched(X[i:i + chunk]) for i in range(0, len(X), chunk)]
        return torch.cat(parts) if parts else torch.zeros(0, self.output_size)

    def per_example_grads(self, trainable: Tensors, X: torch.Tensor, y: torch.Tensor) -> Tensors:
        """d loss_i / d trainable for every row i, as dense [rows, *shape] tensors."""
        grads = self.per_example_grads_factored(trainable, X, y)
        return {n: g.dense() if isinstance(g, Outer) else g for n, g in grads.items()}

    def per_example_grads_factored(self, trainable: Tensors, X: torch.Tensor, y: torch.Tensor) -> dict[str, Grad]:
        """Like per_example_grads, but Linear-style weight gradients may come as Outer factors.
        Rows are padded to a bucket so that a trace serves many batch sizes."""
        rows = X.shape[0]
        size = _padded(rows)
        if size != rows:
            X = torch.cat([X, X.new_zeros((size - rows, *X.shape[1:]))])
            y = torch.cat([y, y.new_zeros((size - rows, *y.shape[1:]))])
        params = {n: t.detach() for n, t in trainable.items()}
        grads = self._traced_grads(size, params, X, y)(params, X, y)
        return grads if size == rows else {n: g.head(rows) if isinstance(g, Outer) else g[:rows] for n, g in grads.items()}

    def _traced_grads(self, size: int, params: Tensors, X: torch.Tensor, y: torch.Tensor) -> GradFunction:
        # Tracing vmap(grad) once per batch size into plain ATen removes functorch's per-op
        # dispatch overhead, which dominates for small models (see tracing.py).
        if size not in self._traced:
            fn = vmap(grad(self.loss_one), in_dims=(None, 0, 0), randomness="different")
            try:
                self._traced[size] = TracedGrads(fn, params, X, y)
            except Exception:  # an op make_fx cannot trace: run the same transform eagerly
                self._traced[size] = fn
        return self._traced[size]
