"""A checkpointed object's ``state_dict()`` as one safetensors file, so that resuming a run someone else wrote
(a committed partial run, a shared checkpoint) unpickles nothing.

The state is a tree of dicts, lists, tuples, tensors and JSON scalars (optimizer states have integer keys and
tuples, e.g. Adam's ``betas``). Its tensors are the file's tensors, named ``t0``, ``t1``, ...; the rest of the
tree is JSON in the file's metadata, with tensors, tuples and dicts whose keys are not all strings tagged so
that the tree comes back exactly as it was saved (floats round-trip through ``repr``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

STRUCTURE_KEY = "cmidd_hf.state"
_TENSOR, _TUPLE, _ITEMS = "__tensor__", "__tuple__", "__items__"
_TAGS = (_TENSOR, _TUPLE, _ITEMS)


def _encode(node: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    if torch.is_tensor(node):
        name = f"t{len(tensors)}"
        tensors[name] = node.detach().to("cpu", copy=True).contiguous()
        return {_TENSOR: name}
    if isinstance(node, dict):
        if all(isinstance(k, str) for k in node) and not any(tag in node for tag in _TAGS):
            return {k: _encode(v, tensors, f"{where}.{k}") for k, v in node.items()}
        if not all(isinstance(k, (str, int)) and not isinstance(k, bool) for k in node):
            raise TypeError(f"state at {where}: dict keys must be str or int, got {sorted(map(repr, node))}")
        return {_ITEMS: [[k, _encode(v, tensors, f"{where}[{k!r}]")] for k, v in node.items()]}
    if isinstance(node, (list, tuple)):
        items = [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(node)]
        return {_TUPLE: items} if isinstance(node, tuple) else items
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    raise TypeError(f"state at {where}: {type(node).__name__} cannot be checkpointed safely "
                    "(use tensors, dicts, lists, tuples, numbers, strings, None)")


def _decode(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(node, list):
        return [_decode(v, tensors) for v in node]
    if not isinstance(node, dict):
        return node
    if _TENSOR in node:
        return tensors[node[_TENSOR]]
    if _TUPLE in node:
        return tuple(_decode(v, tensors) for v in node[_TUPLE])
    if _ITEMS in node:
        return {k: _decode(v, tensors) for k, v in node[_ITEMS]}
    return {k: _decode(v, tensors) for k, v in node.items()}


def save_state_file(state: Any, path: str | Path) -> None:
    """Write ``state`` (a ``state_dict()``) to ``path`` (a ``.safetensors`` file)."""
    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(state, tensors, "state")
    save_file(tensors, str(path), metadata={STRUCTURE_KEY: json.dumps(structure, allow_nan=True)})


def load_state_file(path: str | Path) -> Any:
    """The state :func:`save_state_file` wrote to ``path``, its tensors on the CPU."""
    with safe_open(str(path), framework="pt", device="cpu") as f:
        metadata = f.metadata() or {}
        if STRUCTURE_KEY not in metadata:
            raise ValueError(f"{path} is not a checkpointed state (no {STRUCTURE_KEY!r} in its metadata)")
        tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open has no iterator)
    return _decode(json.loads(metadata[STRUCTURE_KEY]), tensors)
