"""F-MTL: per-task SAM whose loss parts and flat parts are aggregated separately.

Task i is perturbed on the shared parameters by ``rho_shared * g_i / ||g_i||`` and on its head by
``rho_task * h_i / ||h_i||`` (two norms, two radii; ASAM optionally), and its gradient at that point is
its SAM gradient ``g_i^SAM`` (one forward and one backward per task, at the joint point, as the authors'
code does). The shared SAM gradient splits into the loss part ``g_i`` (at theta) and the flat part
``g_i^SAM - g_i``; the aggregator combines the K loss parts, a second instance of it the K flat parts,
and the update is their sum, so a stateful aggregator never mixes the two streams in one state.
``mode="direct"`` is the paper's ablation: aggregate the raw SAM gradients. Heads get their own task's
SAM gradient and are never aggregated. The loss parts reach a representation-based aggregator (MGDA-UB)
with the representation's gradients at theta; flat parts and direct SAM gradients come from K points
and reach it as plain gradient matrices. With both radii 0 the step is the plain step. The loss parts are
aggregated before the K points, so each task's row of the [K, P] matrix then takes its flat part in place:
the step holds one [K, P], as many as its definition needs.

Defaults: plain SAM with ``rho_shared = rho_task = 0.05`` (SAM's usual radius). The authors ran ASAM
(``adaptive=True``) with equal radii tuned in [0.005, 5] (code default 2); with plain SAM the radius
must be far smaller. For MGDA their code normalizes each loss part and flat part to unit norm: choose
the aggregator's own normalization hyper-parameter for that.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch
from torch import Tensor

from flatmtl.workers.mtl.base import Aggregator, Wrapper
from flatmtl.workers.mtl.oracle import GradientOracle
from flatmtl.workers.mtl.registry import HParam, register
from flatmtl.workers.mtl.wrappers._perturbation import ADAPTIVE, ETA, Ascent, task_point_gradients

MODES = ("decomposed", "direct")


@register(
    "wrapper",
    "fmtl",
    description="Per-task SAM; aggregate loss parts and flat parts separately and add them (F-MTL).",
    paper="Phan et al. 2025, Beyond Losses Reweighting: Empowering MTL via the Generalization Perspective "
    "(ICCV; arXiv 2211.13723)",
    scale="the aggregator's (loss part plus flat part)",
    hparams=(
        HParam("rho_shared", float, 0.05, "radius of each task's perturbation of the shared parameters", low=0.0),
        HParam("rho_task", float, 0.05, "radius of each task's perturbation of its own head", low=0.0),
        ADAPTIVE,
        ETA,
        HParam(
            "mode",
            str,
            "decomposed",
            "aggregate loss and flat parts separately, or the raw SAM gradients",
            choices=MODES,
        ),
    ),
)
class FMTL(Wrapper):
    state_keys: ClassVar[tuple[str, ...]] = ("flat_aggregator",)

    def __init__(self, rho_shared: float, rho_task: float, adaptive: bool, eta: float, mode: str) -> None:
        self.rho_shared, self.rho_task = rho_shared, rho_task
        self.adaptive, self.eta, self.mode = adaptive, eta, mode
        self.flat_aggregator: Aggregator | None = None
        self._pending_flat_state: dict[str, Any] | None = None

    def step(self, oracle: GradientOracle) -> None:
        shared_ascent = Ascent(oracle, self.rho_shared, self.adaptive, self.eta)
        head_ascent = Ascent(oracle, self.rho_task, self.adaptive, self.eta)
        grads = oracle.task_gradients(oracle.losses())
        if self.rho_shared == 0 and self.rho_task == 0:
            oracle.write(oracle.aggregate(grads.shared, grads.representation), grads.heads)
            return

        def offsets(task: int) -> tuple[Tensor | None, Tensor | None]:
            shared, _ = shared_ascent(grads.shared[task], {})
            _, head = head_ascent(None, {task: grads.heads[task]})
            return shared, head[task]

        rows = grads.shared  # row i: g_i until task i's point, then its SAM gradient (direct) or flat part
        if self.mode == "direct":
            sam_heads = task_point_gradients(oracle, offsets, rows.__setitem__)
            oracle.write(oracle.aggregate(rows), sam_heads)
            return
        flat_aggregator = self._flat_aggregator(oracle.aggregator)  # copied before the step's sees this step
        loss_update = oracle.aggregate(rows, grads.representation)

        def flat_part(task: int, sam: Tensor) -> None:
            torch.sub(sam, rows[task], out=rows[task])

        sam_heads = task_point_gradients(oracle, offsets, flat_part)
        flat_update = oracle.aggregate(rows, aggregator=flat_aggregator)
        oracle.write(loss_update + flat_update, sam_heads)

    def _flat_aggregator(self, aggregator: Aggregator) -> Aggregator:
        """The flat parts' own aggregator: a copy of the step's, made before either sees this step."""
        if self.flat_aggregator is None:
            self.flat_aggregator = copy.deepcopy(aggregator)
            if self._pending_flat_state is not None:
                self.flat_aggregator.load_state_dict(self._pending_flat_state)
                self._pending_flat_state = None
        return self.flat_aggregator

    def state_dict(self) -> dict[str, Any]:
        if self.flat_aggregator is not None:
            return {"flat_aggregator": self.flat_aggregator.state_dict()}
        return {"flat_aggregator": copy.deepcopy(self._pending_flat_state)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.check_state_keys(state)
        flat_state = state["flat_aggregator"]
        if flat_state is None:
            self.flat_aggregator, self._pending_flat_state = None, None
        elif self.flat_aggregator is None:
            self._pending_flat_state = flat_state
        else:
            self.flat_aggregator.load_state_dict(flat_state)
