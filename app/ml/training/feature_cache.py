"""Frozen features computed once: a re-fine-tune trains only the part of the model after its frozen prefix.

A model fine-tuned from a backbone with `--freeze` recomputes the backbone's forward pass every epoch, although
its outputs never change: the frozen weights are bit-identical and frozen batch-norm layers stay in eval mode
(app/ml/models/pretrained.py). When the frozen parameters cover the whole computation up to one tensor, torch.fx
cuts the traced model there: a *front* (input → that tensor) and a *head* (that tensor → logits) that holds the
model's own trainable modules, so training the head trains the model. `fit` then computes the front once, in
eval mode, into a memory-mapped file, and trains the head over it: the same minibatches in the same order, the
same losses and gradients up to float rounding.

It does not apply, and the run says why in one line (meta.json's `feature_cache` and the log), when the recipe
augments its inputs (the front would see new inputs every epoch), when torch.fx cannot trace the model, when the
frozen part holds dropout or a random op, or when it feeds the trainable part at more than one point (a skip
connection across the cut).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd

from app.ml.data.dataset import Dataset

CHUNK = 1024  # rows per forward of the front
RANDOM_OPS = ("dropout", "rand", "bernoulli", "multinomial", "normal")


@dataclass
class Cut:
    front: fx.GraphModule  # (n, *in_shape) → (n, *shape): the frozen computation
    head: fx.GraphModule  # (n, prod(shape)) → logits; its modules are the model's own
    node: str  # where the traced graph is cut
    shape: tuple[int, ...]


@dataclass
class Cached:
    """A feature set standing in for the data: the head trains on DS with ids remapped by `ids`."""

    cut: Cut
    ds: Dataset
    rows: np.ndarray  # the data's ids, sorted; feature row k is rows[k]
    record: dict[str, Any]

    def ids(self, data_ids: np.ndarray | None) -> np.ndarray | None:
        return None if data_ids is None else np.searchsorted(self.rows, data_ids)


def find_cut(model: nn.Module, freeze: tuple[str, ...], example: torch.Tensor) -> Cut | str:
    """The cut after MODEL's frozen computation, or why there is none. EXAMPLE: a few inputs, for the shape."""
    try:
        gm = fx.symbolic_trace(model)
    except Exception as e:  # a team's model with data-dependent control flow: trained as it always was
        return f"torch.fx cannot trace the model ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
    nodes = list(gm.graph.nodes)
    if sum(n.op == "placeholder" for n in nodes) != 1:
        return "the model takes more than one input"
    frozen: set[fx.Node] = set()  # computed from the input and frozen weights only, without randomness
    consts: set[fx.Node] = set()  # frozen weights and what is computed from them alone
    for n in nodes:
        if n.op == "placeholder":
            frozen.add(n)
        elif n.op != "output" and _frozen_op(gm, n, freeze) and all(a in frozen or a in consts
                                                                      for a in n.all_input_nodes):
            (frozen if any(a in frozen for a in n.all_input_nodes) else consts).add(n)
    frontier = [n for n in frozen if any(u not in frozen for u in n.users)]
    if len(frontier) != 1:
        return f"the frozen part feeds the trainable part at {len(frontier)} points (a skip across the cut)"
    cut = frontier[0]
    if cut.op == "placeholder":
        return "the model's first operation trains: nothing frozen comes before it"
    front = _front(gm, cut)
    with torch.no_grad():
        out = front.eval()(example)
    if not isinstance(out, torch.Tensor):
        return f"the frozen part's output at {cut.name} is not one tensor"
    shape = tuple(out.shape[1:])
    return Cut(front=front, head=_head(gm, frozen, cut, shape), node=cut.name, shape=shape)


def _frozen_op(gm: fx.GraphModule, n: fx.Node, freeze: tuple[str, ...]) -> bool:
    if n.op == "get_attr":
        value = _attr(gm, str(n.target))
        return not (isinstance(value, nn.Parameter) and value.requires_grad)
    if n.op == "call_module":
        m = gm.get_submodule(str(n.target))
        if isinstance(m, _DropoutNd) or any(p.requires_grad for p in m.parameters()):
            return False
        if any(True for _ in m.buffers()):  # state that moves in training: only batch norm kept in eval
            return isinstance(m, _BatchNorm) and f"{n.target}.".startswith(freeze)
        return True
    name = getattr(n.target, "__name__", str(n.target)).lower()
    return not any(r in name for r in RANDOM_OPS)


def _attr(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _front(gm: fx.GraphModule, cut: fx.Node) -> fx.GraphModule:
    needed = _ancestors(cut)
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for n in gm.graph.nodes:
        if n in needed:
            env[n] = graph.node_copy(n, lambda a: env[a])
    graph.output(env[cut])
    return fx.GraphModule(gm, graph)


def _head(gm: fx.GraphModule, frozen: set[fx.Node], cut: fx.Node, shape: tuple[int, ...]) -> fx.GraphModule:
    """Feature rows (n, prod(shape)) → logits, through the model's own modules after the cut."""
    graph = fx.Graph()
    rows = graph.placeholder("features")
    env = {cut: graph.call_method("reshape", (rows, (-1, *shape)))}
    for n in gm.graph.nodes:
        if n not in frozen:
            env[n] = graph.node_copy(n, lambda a: env[a])
    head = fx.GraphModule(gm, graph)
    head.graph.eliminate_dead_code()  # frozen weights only the front reads
    head.recompile()
    return fx.GraphModule(gm, head.graph)  # holds only the modules the pruned graph calls


def _ancestors(node: fx.Node) -> set[fx.Node]:
    seen, todo = {node}, [node]
    while todo:
        for a in todo.pop().all_input_nodes:
            if a not in seen:
                seen.add(a)
                todo.append(a)
    return seen


@contextmanager
def cached_features(model: nn.Module, freeze: tuple[str, ...], augment: str, ds: Dataset,
                    ids: list[np.ndarray | None], *, folder: Path | None = None) -> Iterator[Cached | str | None]:
    """MODEL's frozen features for the union of IDS, in a memory-mapped file that lives as long as the block;
    why not, in words; or None when nothing is frozen (no fine-tune: nothing to say)."""
    if not freeze:
        yield None
        return
    if augment != "none":
        yield f"the recipe augments its inputs ({augment}): the frozen part sees new inputs every epoch"
        return
    rows = np.unique(np.concatenate([np.asarray(i, dtype=np.int64) for i in ids if i is not None]))
    cut = find_cut(model, freeze, ds.features(rows[:2]))
    if isinstance(cut, str):
        yield cut
        return
    with tempfile.TemporaryDirectory(prefix="unlearnd-features-", dir=folder) as tmp:
        yield _compute(model, cut, ds, rows, Path(tmp) / "features.npy")


@torch.no_grad()
def _compute(model: nn.Module, cut: Cut, ds: Dataset, rows: np.ndarray, path: Path) -> Cached:
    t0 = time.perf_counter()
    was_training = model.training
    cut.front.eval()
    table = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32,
                                      shape=(len(rows), int(np.prod(cut.shape))))
    for i in range(0, len(rows), CHUNK):
        table[i:i + CHUNK] = cut.front(ds.features(rows[i:i + CHUNK])).flatten(1).cpu().numpy()
    table.flush()
    model.train(was_training)
    feats = Dataset(name=f"{ds.name}@{cut.node}", x=table, y=ds.y[rows], num_classes=ds.num_classes,
                    n_pool=len(rows)).on(ds.device)
    record = {"used": True, "cut": cut.node, "shape": list(cut.shape), "rows": len(rows),
              "bytes": int(table.nbytes), "seconds": time.perf_counter() - t0}
    return Cached(cut=cut, ds=feats, rows=rows, record=record)
