"""Per-example gradients traced once into a flat ATen graph, with Linear weight gradients kept factored.

`make_fx` over vmap(grad(loss)) records plain ATen ops, removing functorch's per-op dispatch cost.
Two rewrites follow, both checked on the tracing inputs before use:

1. bmm([B, m, 1], [B, 1, n]) becomes a broadcast multiply: a batched GEMM with inner size 1 is an
   outer product, and runs several times slower than the product itself (bit-identical result).
2. A gradient that is such an outer product, up to views and transposes, is not materialised: the
   graph returns its two factors (Outer). Norms and clipped sums then need O(B(m + n)) work
   instead of O(Bmn): the "ghost norm" of a Linear layer (Goodfellow 2015; Li et al. 2022),
   found on the exported graph rather than on nn.Linear modules.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch.fx.experimental.proxy_tensor import make_fx

aten = torch.ops.aten
SHAPE_OPS = {aten.view.default, aten._unsafe_view.default, aten.transpose.int, aten.permute.default,
             aten.t.default, aten.clone.default}


@dataclass(frozen=True)
class Outer:
    """Per-example gradients g_i = left_i ⊗ right_i ([B, m] and [B, n]), transposed to [n, m] if asked."""

    left: torch.Tensor
    right: torch.Tensor
    transposed: bool

    def dense(self) -> torch.Tensor:
        out = self.left[:, :, None] * self.right[:, None, :]
        return out.transpose(1, 2) if self.transposed else out

    def squared_norms(self) -> torch.Tensor:
        norms: torch.Tensor = torch.linalg.vector_norm(self.left, dim=1) * torch.linalg.vector_norm(self.right, dim=1)
        return norms.square()

    def weighted_sum(self, weights: torch.Tensor) -> torch.Tensor:
        out = (self.left * weights[:, None]).T @ self.right
        return out.T if self.transposed else out

    def keep_rows(self, keep: torch.Tensor) -> Outer:
        zero = torch.zeros((), dtype=self.left.dtype)
        return Outer(torch.where(keep[:, None], self.left, zero), torch.where(keep[:, None], self.right, zero),
                     self.transposed)

    def head(self, rows: int) -> Outer:
        return Outer(self.left[:rows], self.right[:rows], self.transposed)


Grad = torch.Tensor | Outer
Factors = tuple[torch.fx.Node, torch.fx.Node]


def _outer_products_as_mul(graph: torch.fx.Graph) -> None:
    for node in graph.nodes:
        if node.op != "call_function" or node.target is not aten.bmm.default:
            continue
        left, right = (a.meta.get("val") for a in node.args)
        if left is not None and right is not None and left.shape[-1] == 1 and right.shape[-2] == 1:
            node.target = aten.mul.Tensor
            node.meta["outer"] = True


def _outer_source(node: torch.fx.Node) -> torch.fx.Node | None:
    while node.op == "call_function" and node.target in SHAPE_OPS:
        node = cast(torch.fx.Node, node.args[0])
    return node if node.op == "call_function" and node.meta.get("outer") else None


def _factor_nodes(graph: torch.fx.Graph, source: torch.fx.Node | None, before: torch.fx.Node) -> Factors:
    assert source is not None  # only called for outputs _outer_source found
    left, right = cast(tuple[torch.fx.Node, torch.fx.Node], source.args)
    batch, m, n = left.meta["val"].shape[0], left.meta["val"].shape[1], right.meta["val"].shape[2]
    with graph.inserting_before(before):
        return (graph.call_function(aten.view.default, (left, [batch, m])),
                graph.call_function(aten.view.default, (right, [batch, n])))


def _copy_graph(graph: torch.fx.Graph) -> torch.fx.Graph:
    with warnings.catch_warnings():  # torch's own pytree spec warns about itself when deep-copied
        warnings.simplefilter("ignore", FutureWarning)
        return copy.deepcopy(graph)


def _rebuild(traced: torch.fx.GraphModule, factored: set[int]) -> torch.fx.GraphModule:
    """A copy whose outputs are flat: dense gradients, or (left, right) for indices in `factored`."""
    graph = _copy_graph(traced.graph)
    output = next(n for n in graph.nodes if n.op == "output")
    flat = list(output.args[0])
    new = [(_factor_nodes(graph, _outer_source(o), output) if i in factored else o) for i, o in enumerate(flat)]
    graph.set_codegen(torch.fx.graph.CodeGen())  # plain positional inputs and outputs from here on
    graph.erase_node(output)
    graph.output(tuple(x for item in new for x in (item if isinstance(item, tuple) else (item,))))
    graph.eliminate_dead_code()
    return torch.fx.GraphModule(traced, graph)  # shares the traced module's constants


def _shape(node: object) -> tuple[int, ...] | None:
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return tuple(val.shape) if isinstance(val, torch.Tensor) else None


def _drop_noops(graph: torch.fx.Graph) -> None:
    """Remove views and expands to the shape their input already has, and x * 1 (not feeding the
    output, so nothing returned aliases an input): each op costs a dispatch, ~5 us on CPU."""
    for node in list(graph.nodes):
        if node.op != "call_function" or not node.args:
            continue
        src = node.args[0]
        same = _shape(src) is not None and _shape(src) == _shape(node)
        reshapes = node.target in (aten.view.default, aten._unsafe_view.default, aten.expand.default)
        identity = node.target is aten.mul.Scalar and node.args[1] == 1 and all(u.op != "output" for u in node.users)
        if same and (reshapes or identity) and src.meta["val"].dtype == node.meta["val"].dtype:
            node.replace_all_uses_with(src)
            graph.erase_node(node)


def _optimised(traced: torch.fx.GraphModule) -> torch.fx.GraphModule:
    gm = torch.fx.GraphModule(traced, _copy_graph(traced.graph))
    _outer_products_as_mul(gm.graph)
    _drop_noops(gm.graph)
    gm.recompile()
    return gm


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal element for element, NaN matching NaN (a traced batch may hold a NaN-trap row)."""
    return a.shape == b.shape and torch.allclose(a, b, rtol=0.0, atol=0.0, equal_nan=True)


def _matches(item: torch.Tensor | tuple[torch.Tensor, torch.Tensor], reference: torch.Tensor) -> bool | None:
    """Dense: True if identical. Factors: the orientation that rebuilds the reference exactly."""
    if not isinstance(item, tuple):
        return True if _same(item, reference) else None
    found = [t for t in (False, True) if _same(Outer(*item, t).dense(), reference)]
    return found[0] if len(found) == 1 else None


class TracedGrads:
    """vmap(grad(loss)) at one batch size as a flat graph: params dict, X, y -> {name: Tensor | Outer}.
    The rewritten graph is checked element for element against the plain trace on the tracing
    inputs; unless every output reproduces it, the plain trace is used as is."""

    def __init__(self, fn: Callable[..., Any], params: dict[str, torch.Tensor], X: torch.Tensor, y: torch.Tensor) -> None:
        self.names = list(params)
        plain = make_fx(lambda p, xs, ys: fn(p, xs, ys))(params, X, y)
        reference = plain(params, X, y)
        fast = _optimised(plain)
        output = next(n for n in fast.graph.nodes if n.op == "output")
        candidates = {i for i, o in enumerate(output.args[0]) if _outer_source(o) is not None}
        checks = {i: _matches(item, reference[self.names[i]])
                  for i, item in self._unflatten(_rebuild(fast, candidates)(*params.values(), X, y), candidates).items()}
        verified = all(check is not None for check in checks.values())
        self.transposed: dict[int, bool] = {i: bool(checks[i]) for i in candidates} if verified else {}
        self._gm = _rebuild(fast if verified else plain, set(self.transposed))

    def _unflatten(self, flat: tuple[torch.Tensor, ...] | torch.Tensor,
                   factored: set[int]) -> dict[int, torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
        out: dict[int, torch.Tensor | tuple[torch.Tensor, torch.Tensor]] = {}
        it = iter(flat if isinstance(flat, tuple) else (flat,))
        for i in range(len(self.names)):
            out[i] = (next(it), next(it)) if i in factored else next(it)
        return out

    def __call__(self, params: dict[str, torch.Tensor], X: torch.Tensor, y: torch.Tensor) -> dict[str, Grad]:
        items = self._unflatten(self._gm(*(params[n] for n in self.names), X, y), set(self.transposed))
        return {self.names[i]: (Outer(*v, self.transposed[i]) if isinstance(v, tuple) else v) for i, v in items.items()}
