"""Stopping a run at a safe point when the cluster is about to end it, and resuming it exactly.

A cluster warns a job before it kills it: SLURM sends the signal of ``sbatch --signal`` some time
before the time limit (submitit's default: SIGUSR2, 90 s) and SIGTERM before a preemption. Python
runs a signal handler between two bytecodes of the main thread, anywhere in a training step or a
checkpoint write, so the handler here only records the request. The training loops (detection:
:class:`PreemptionCheckpointer`, pretraining: ``Pretrainer.train_epoch``) ask
:func:`stop_requested` after every iteration; its answer is agreed by all processes (an
all-reduce), so every rank stops after the same iteration, rank 0 writes the checkpoint of that
iteration and every process raises :class:`Preempted`. A second signal, or one that arrives while
a checkpoint is being written, changes nothing: the write finishes (atomically) first.

What makes the resumed run continue exactly where it stopped, besides model, optimizer, schedule
and scaler: the position of the data stream (:class:`ResumableSampler` for Detectron2's infinite
samplers) and the random state of the process (:func:`rng_state`).
"""
from __future__ import annotations

import itertools
import logging
import random
import signal
from typing import Any, Dict, Iterable, List, Optional

import numpy as np
import torch
import torch.distributed as dist
from detectron2.engine.train_loop import HookBase
from detectron2.utils import comm
from torch.utils.data import Sampler

logger = logging.getLogger(__name__)

#: The signals a job stops on unless told otherwise: submitit's warning before the time limit,
#: and what SLURM sends before it preempts (or cancels) a job.
DEFAULT_SIGNALS = ("USR2", "TERM")


class Preempted(BaseException):
    """Raised in every process once the preemption checkpoint is written.

    A ``BaseException``, as ``KeyboardInterrupt``: Detectron2's loop and the tools' error
    reporting (``except Exception``) let it through to whoever requeues the job.
    """


def parse_signal(name: str) -> signal.Signals:
    """``signal.SIGUSR1`` for ``"USR1"``, ``"SIGUSR1"`` or ``"10"``; ``ValueError`` naming the value."""
    text = str(name).strip().upper()
    try:
        return signal.Signals(int(text)) if text.isdigit() else signal.Signals["SIG" + text.removeprefix("SIG")]
    except (KeyError, ValueError):
        raise ValueError(f"signal {name!r} is not a signal name: e.g. USR1, USR2 or TERM") from None


class PreemptionHandler:
    """Records the first of ``signals`` that arrives; :meth:`stop_agreed` answers for all processes."""

    def __init__(self, signals: Iterable[Any] = DEFAULT_SIGNALS):
        self.signals = sorted({parse_signal(s) if isinstance(s, str) else signal.Signals(s) for s in signals})
        self.received: Optional[signal.Signals] = None
        self.previous: Dict[signal.Signals, Any] = {}

    def install(self) -> "PreemptionHandler":
        for signum in self.signals:
            self.previous[signum] = signal.signal(signum, self._record)
        return self

    def uninstall(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous.clear()

    def _record(self, signum: int, frame) -> None:
        # nothing else here: logging from a handler can deadlock on a lock the interrupted code holds
        if self.received is None:
            self.received = signal.Signals(signum)

    def stop_agreed(self) -> bool:
        """Whether any process has received a signal (a collective call when there are several)."""
        local = self.received is not None
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return local
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        flag = torch.tensor([float(local)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    @property
    def signal_name(self) -> str:
        return self.received.name if self.received is not None else "another process's signal"


_active: Optional[PreemptionHandler] = None


def install(signals: Iterable[Any] = DEFAULT_SIGNALS) -> PreemptionHandler:
    """Handle ``signals`` in this process from now on (replacing a handler installed before)."""
    global _active
    if _active is not None:
        _active.uninstall()
    _active = PreemptionHandler(signals).install()
    return _active


def uninstall() -> None:
    global _active
    if _active is not None:
        _active.uninstall()
    _active = None


def active() -> Optional[PreemptionHandler]:
    return _active


def stop_requested() -> bool:
    """Whether the run must stop now, the same answer in every process (False: no handler installed).

    Every process must call it at the same point of every iteration, as any collective.
    """
    return _active is not None and _active.stop_agreed()


def preempted_message(where: str, saved: str) -> str:
    name = _active.signal_name if _active is not None else "a signal"
    return f"Preempted ({name}) {where}: saved {saved}; the requeued job resumes from it"


# --------------------------------------------------------------------------- random state
def rng_state() -> Dict[str, Any]:
    """This process's random state (torch, CUDA, NumPy, Python) in types ``weights_only`` loads."""
    _, keys, position, has_gauss, cached = np.random.get_state()
    version, python_state, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(position),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "python": {"version": version, "state": list(python_state), "gauss_next": gauss_next}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- data position
class ResumableSampler(Sampler[int]):
    """One of Detectron2's infinite samplers (``TrainingSampler``, ``RepeatFactorTrainingSampler``)
    that can start ``start`` indices into its stream, with the seed of the run it continues.

    Detectron2 draws the sampler's seed at random when ``SEED`` is negative and starts the
    stream over on ``--resume``; here both the seed and the position travel with the checkpoint.
    """

    def __init__(self, sampler: Sampler):
        self.sampler = sampler
        self.start = 0

    @property
    def seed(self) -> int:
        return int(self.sampler._seed)

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.start, None)

    def state_dict(self, position: int) -> Dict[str, int]:
        return {"seed": self.seed, "position": int(position)}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self.sampler._seed = int(state["seed"])
        self.start = int(state["position"])


def resumable_sampler(data_loader) -> Optional[ResumableSampler]:
    """The sampler inside a Detectron2 train loader, wrapped in :class:`ResumableSampler` (once).

    The loader is an ``AspectRatioGroupedDataset`` or a ``DataLoader`` over a
    ``ToIterableDataset`` that holds the sampler. None when no seeded sampler is found.
    """
    node = data_loader
    for _ in range(8):
        sampler = getattr(node, "sampler", None)
        if isinstance(sampler, ResumableSampler):
            return sampler
        if sampler is not None and hasattr(sampler, "_seed") and not isinstance(node, torch.utils.data.DataLoader):
            node.sampler = ResumableSampler(sampler)
            return node.sampler
        node = getattr(node, "dataset", None)
        if node is None:
            return None
    return None


def restart_data_stream(step, data_state: Dict[str, int], rng: Optional[Dict[str, Any]] = None) -> None:
    """Position the sampler of ``step`` (a ``SimpleTrainer``), start its data iterator anew and
    set the random state ``rng`` as it was after the checkpoint's iteration.

    The torch state is set once the first batch is fetched: starting a ``DataLoader`` iterator
    draws its base seed from it, which the uninterrupted run did at its first iteration, not here.
    """
    sampler = resumable_sampler(step.data_loader) if data_state else None
    if sampler is not None:
        sampler.load_state_dict(data_state)
    elif data_state:
        logger.warning("The training data loader has no seeded sampler: the resumed run starts its data "
                       "stream over (as Detectron2 does)")
    if rng is not None:
        set_rng_state(rng)  # NumPy and Python: the mappers' augmentations draw from them
    iterator = _then_set_torch_rng(iter(step.data_loader), rng)
    if hasattr(step, "_data_loader_iter_obj"):  # detectron2 main
        step._data_loader_iter_obj = iterator
    else:  # v0.6 (workers, if any, copied the old sampler when its iterator was made)
        step._data_loader_iter = iterator


def _then_set_torch_rng(iterator, rng: Optional[Dict[str, Any]]):
    first = next(iterator)
    if rng is not None:
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["cuda"])
    yield first
    yield from iterator


# --------------------------------------------------------------------------- detection training
class PreemptionCheckpointer(HookBase):
    """After each iteration: stop every process when a preemption signal has arrived, with a
    checkpoint of that iteration (``model_<iter>.pth``, tagged ``last_checkpoint``).

    Appended after every other hook, so that the iteration's own hooks (periodic checkpoint,
    evaluation, writers) have run. The last iteration is left to finish the run normally.
    """

    def after_step(self):
        trainer = self.trainer
        if trainer.iter + 1 >= trainer.max_iter or not stop_requested():
            return
        name = f"model_{trainer.iter:07d}"
        trainer.rng_states = gather_rng_states()  # Trainer.state_dict saves them
        trainer.checkpointer.save(name, iteration=trainer.iter)  # rank 0 only (save_to_disk)
        comm.synchronize()  # no process leaves before the checkpoint is whole
        message = preempted_message(f"after iteration {trainer.iter}", f"{name}.pth")
        if comm.is_main_process():
            logger.warning(message)
        raise Preempted(message)


def gather_rng_states() -> List[Dict[str, Any]]:
    """Every process's :func:`rng_state`, in rank order (a collective call)."""
    if comm.get_world_size() == 1:
        return [rng_state()]
    return comm.all_gather(rng_state())
