"""Image optimizers that reproduce how the official code steps its synthetic tensors.

IDC and IDM take one SGD step *per class* on one tensor that holds every class: after class c's step, the
other C−1 classes' steps move class c's rows again by their momentum alone (their gradient there is 0). The
engine takes one step for all classes at once; :class:`ClassSequentialSGD` adds those C−1 momentum-only
moves after each step, so every row sees the same sequence of updates between two of its gradient
evaluations as in the official per-class loop.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class ClassSequentialSGD(torch.optim.SGD):
    """SGD with momentum, followed after each step by ``drift_steps`` momentum-only steps
    (``buf ← m·buf; p ← p − lr·buf``), applied in closed form.

    ``drift_steps = num_classes − 1`` reproduces a loop that steps the classes one after another.
    """

    def __init__(self, params: Iterable, lr: float, momentum: float, drift_steps: int) -> None:
        if drift_steps < 0:
            raise ValueError(f"drift_steps must be >= 0, got {drift_steps}")
        super().__init__(params, lr=lr, momentum=momentum)
        self.drift_steps = drift_steps

    @torch.no_grad()
    def step(self, closure=None):
        loss = super().step(closure)
        for group in self.param_groups:
            m, k = group["momentum"], self.drift_steps
            if m == 0 or k == 0:
                continue
            travel = sum(m ** j for j in range(1, k + 1))
            for p in group["params"]:
                buf = self.state.get(p, {}).get("momentum_buffer")
                if buf is not None:
                    p.add_(buf, alpha=-group["lr"] * travel)
                    buf.mul_(m ** k)
        return loss
