"""Which samples each rank trains on, as a pure function of (seed, epoch, batch index).

Every epoch is one seeded permutation of the training set cut into global batches of
``batch_size * world_size`` samples; rank r takes the r-th contiguous slice of each. A run with N ranks
therefore sees exactly the global batches of a one-process run with N times the batch size, and the data
position of a checkpoint is just (epoch, batch index): nothing else needs saving to resume the stream.
The last incomplete global batch of an epoch is dropped, so every rank's share has the same size and the
mean of the ranks' mean losses is the global batch's mean loss.

Batches are collated ahead of the step that takes them (``prefetch``): in one background thread, or in
``loader_workers`` processes where reading files per sample would keep one thread behind the device. Either
way the batches are the plan's, in the plan's order, so a run and its resume see the same data for every
number of workers.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate

AUTO_LOADER_WORKERS = 4
"""Worker processes a run on CUDA takes by default for a dataset that reads its samples one by one."""


class BatchPlan:
    def __init__(self, size: int, batch_size: int, *, world_size: int = 1, rank: int = 0, seed: int = 0) -> None:
        self.size = size
        self.batch_size = batch_size
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.global_batch = batch_size * world_size
        self.steps_per_epoch = size // self.global_batch
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"batch_size={batch_size} x processes={world_size} = {self.global_batch} exceeds the {size} training "
                f"samples; allowed: batch_size <= {size // world_size}"
            )

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's permutation of sample indices (the sampler's whole random state is (seed, epoch))."""
        return np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(epoch,))).permutation(self.size)

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[int, np.ndarray]]:
        """(batch index, this rank's sample indices) from batch ``start`` to the end of the epoch."""
        order = self.order(epoch)
        for batch in range(start, self.steps_per_epoch):
            offset = batch * self.global_batch + self.rank * self.batch_size
            yield batch, order[offset : offset + self.batch_size]


def collate(dataset: Dataset[Any], indices: Sequence[int] | np.ndarray) -> Any:
    """The samples as one batch; a dataset with a ``batch(indices)`` method (in-memory tensors) gathers them at once."""
    gather = getattr(dataset, "batch", None)
    if callable(gather):
        return gather(indices)
    return default_collate([dataset[int(i)] for i in indices])


def to_device(value: Any, device: torch.device, dtype: torch.dtype, *, non_blocking: bool = False) -> Any:
    """Tensors moved to ``device``; floating-point ones also cast to the run's dtype (inputs match the model).
    ``non_blocking`` for pinned host tensors: the copy is queued and the host goes on."""
    if isinstance(value, Tensor):
        if value.is_floating_point():
            return value.to(device=device, dtype=dtype, non_blocking=non_blocking)
        return value.to(device, non_blocking=non_blocking)
    if isinstance(value, list | tuple):
        return type(value)(to_device(v, device, dtype, non_blocking=non_blocking) for v in value)
    return value


def pinned(value: Any) -> Any:
    """Tensors in page-locked memory, from which copies to CUDA run asynchronously."""
    if isinstance(value, Tensor):
        return value.pin_memory()
    if isinstance(value, list | tuple):
        return type(value)(pinned(v) for v in value)
    return value


_END = object()


class _Prefetch:
    """What both prefetchers share: collated batches handed to ``device`` in the run's ``dtype``, copied from
    pinned memory without waiting on CUDA, and a ``with`` block whose end stops the collating (``close``)."""

    def __init__(self, device: torch.device, dtype: torch.dtype) -> None:
        self.device = device
        self.dtype = dtype
        self.pin = device.type == "cuda"

    def on_device(self, value: Any) -> Any:
        return to_device(value, self.device, self.dtype, non_blocking=self.pin)

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> _Prefetch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Prefetcher(_Prefetch):
    """A plan's batches collated ahead of the step that takes them, in a background thread.

    The thread collates (decoding files for the datasets that read them per item) ``depth`` batches ahead and,
    for CUDA, pins them; the training thread then only queues their copies to the device (``non_blocking``),
    so neither the decoding nor the transfer waits for, or makes the GPU wait on, the step before. The
    batches and their order are the plan's, so runs and resumes are unchanged. ``close()`` (or leaving the
    ``with`` block) stops the thread when the loop ends early.
    """

    def __init__(
        self,
        dataset: Dataset[Any],
        batches: Iterator[tuple[int, np.ndarray]],
        device: torch.device,
        dtype: torch.dtype,
        depth: int = 2,
    ) -> None:
        super().__init__(device, dtype)
        self._ready: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._produce, args=(dataset, batches), name="flatmtl-prefetch", daemon=True
        )
        self._thread.start()

    def _produce(self, dataset: Dataset[Any], batches: Iterator[tuple[int, np.ndarray]]) -> None:
        try:
            for batch, indices in batches:
                value = collate(dataset, indices)
                if not self._put((batch, indices, pinned(value) if self.pin else value)):
                    return
        except BaseException as error:  # handed to the training thread, which raises it
            self._put(error)
            return
        self._put(_END)

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[tuple[int, np.ndarray, Any]]:
        """(batch index, sample indices, the batch on the device)."""
        while True:
            item = self._ready.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            batch, indices, value = item
            yield batch, indices, self.on_device(value)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class _CollatedBatches(Dataset[Any]):
    """The dataset seen one batch at a time: the item at a plan's index array is those samples collated, so a
    loader worker process reads and collates a whole batch."""

    def __init__(self, dataset: Dataset[Any]) -> None:
        self.dataset = dataset

    def __getitem__(self, indices: np.ndarray) -> Any:  # type: ignore[override]
        return collate(self.dataset, indices)


def _as_collated(value: Any) -> Any:
    """The loader's collate function: its items are batches already (its default would convert them again)."""
    return value


class ProcessPrefetcher(_Prefetch):
    """A plan's batches collated ahead in ``workers`` processes (torch's DataLoader over the plan's index
    arrays, handed back in the plan's order), pinned for CUDA in the loader's own thread.

    The loader draws its workers' seeds from a generator of its own, so starting it leaves the training
    thread's random stream as a loader without workers leaves it. The workers start when iteration starts
    and stop when it ends, at ``close()`` (or leaving the ``with`` block) if the loop stops early.
    """

    def __init__(
        self,
        dataset: Dataset[Any],
        batches: Iterator[tuple[int, np.ndarray]],
        device: torch.device,
        dtype: torch.dtype,
        workers: int,
        depth: int = 2,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers={workers}: a process prefetcher needs at least one (0 is Prefetcher's thread)")
        super().__init__(device, dtype)
        planned = list(batches)
        self._numbers = [batch for batch, _ in planned]
        self._indices = [indices for _, indices in planned]
        self.loader = DataLoader(
            _CollatedBatches(dataset),
            batch_size=None,
            sampler=self._indices,
            num_workers=workers,
            collate_fn=_as_collated,
            pin_memory=self.pin,
            prefetch_factor=depth,
            generator=torch.Generator().manual_seed(0),
        )
        self._running: Iterator[tuple[int, np.ndarray, Any]] | None = None

    def __iter__(self) -> Iterator[tuple[int, np.ndarray, Any]]:
        """(batch index, sample indices, the batch on the device)."""
        self._running = self._batches()
        return self._running

    def _batches(self) -> Iterator[tuple[int, np.ndarray, Any]]:
        loaded = iter(self.loader)
        try:
            for batch, indices, value in zip(self._numbers, self._indices, loaded, strict=True):
                yield batch, indices, self.on_device(value)
        finally:
            # Explicitly: a raised error's traceback holds the loader's iterator, whose collection would
            # otherwise be what stops its workers (and a process forked meanwhile would inherit them).
            loaded._shutdown_workers()  # type: ignore[attr-defined]

    def close(self) -> None:
        if self._running is not None:
            self._running.close()  # type: ignore[attr-defined]
            self._running = None


def resolve_workers(requested: int | None, dataset: Dataset[Any], device: torch.device, cpus: int | None) -> int:
    """The loader's worker processes: ``requested`` when given; else none for a dataset that gathers batches
    from memory (``batch``) or a run on the CPU (its training threads take the cores), and for one that reads
    samples one by one ahead of a GPU a few, at most ``cpus`` (the rank's share, else every available CPU)."""
    if requested is not None:
        return requested
    if callable(getattr(dataset, "batch", None)) or device.type != "cuda":
        return 0
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(AUTO_LOADER_WORKERS, cpus or available)


def prefetch(
    dataset: Dataset[Any],
    batches: Iterator[tuple[int, np.ndarray]],
    device: torch.device,
    dtype: torch.dtype,
    workers: int,
) -> Prefetcher | ProcessPrefetcher:
    """The batches collated ahead: in a thread for ``workers=0``, else in that many processes."""
    if workers == 0:
        return Prefetcher(dataset, batches, device, dtype)
    return ProcessPrefetcher(dataset, batches, device, dtype, workers)


def model_input(inputs: Any) -> Any:
    """Multi-input problems collate their K inputs as a tuple; the models take a list."""
    return list(inputs) if isinstance(inputs, tuple) else inputs
