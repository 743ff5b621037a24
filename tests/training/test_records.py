"""Epoch means of what steps measured: a share only over the steps that timed it."""

from __future__ import annotations

from flatmtl.workers.training.records import EpochAccumulator

TASKS = ("a", "b")


def step(loss: float, **shares: float) -> dict[str, float]:
    return {"loss/a": loss, "loss/b": loss, "step_seconds": 0.1, "communication_bytes": 0.0, **shares}


def test_untimed_steps_leave_the_time_shares_to_the_timed_ones() -> None:
    """On CUDA only diagnostics steps are timed (the others would time kernel launches): their shares are
    the epoch's, while losses average over every step."""
    accumulator = EpochAccumulator()
    accumulator.add(step(1.0, sam_share=0.6, aggregation_share=0.2), TASKS, samples=8)
    accumulator.add(step(3.0), TASKS, samples=8)
    means = accumulator.means(TASKS)
    assert (means["train/sam_share"], means["train/aggregation_share"]) == (0.6, 0.2)
    assert means["train/loss/a"] == 2.0 and means["train/communication_bytes"] == 0.0
    resumed = EpochAccumulator.from_state(accumulator.state_dict())
    resumed.add(step(5.0, sam_share=0.2, aggregation_share=0.4), TASKS, samples=8)
    assert resumed.means(TASKS)["train/sam_share"] == 0.4
