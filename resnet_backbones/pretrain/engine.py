"""The pretraining loop: one process or many (DistributedDataParallel), evaluation, checkpoints.

A run writes into its output folder:

- ``checkpoint.pth``: after every epoch, atomically; weights, EMA, optimizer, scheduler, scaler,
  epoch and iteration, the metrics so far, the config as YAML text and the input convention.
  When the job is preempted, also part-way through an epoch, with the batch reached, the epoch's
  running loss and every process's random state (``epoch_progress``).
  Only tensors, numbers, strings, lists and dicts: ``torch.load(weights_only=True)`` reads it.
- ``metrics.json``: one JSON object per line and epoch.
- TensorBoard event files, and ``curves.png`` at the end.

A resumed run restores everything above and reseeds data order and augmentation per epoch, so it
continues exactly where the checkpoint was written.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torchvision.transforms import v2
from tqdm import tqdm

from ..data.image_folder import ImageFolderLayout, scan_imagenet_layout
from ..engine.preemption import Preempted, preempted_message, rng_state, set_rng_state, stop_requested
from ..fileio import atomic_output
from ..modeling.arch import ResNetArch
from ..weights.pretrained import PRETRAIN_FORMAT, PRETRAIN_FORMAT_VERSION
from .config import input_convention, learning_rate, val_crop_size, val_resize_size
from .data import MAX_CONSECUTIVE_BAD, build_loaders, check_failures
from .distributed import DistContext, all_gather_objects, all_reduce_sum, init_distributed, shutdown
from .model import ImageNetClassifier
from .optim import WeightEMA, build_optimizer, build_scheduler

CHECKPOINT_NAME = "checkpoint.pth"
METRICS_NAME = "metrics.json"
PLOT_NAME = "curves.png"

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class PretrainResult:
    output_dir: Path
    history: List[Dict[str, Any]]
    skipped_images: Dict[str, str] = field(default_factory=dict)

    @property
    def checkpoint(self) -> Path:
        return self.output_dir / CHECKPOINT_NAME


def _batch_mix(cfg, num_classes: int) -> Optional[Callable]:
    p = cfg.PRETRAIN
    mixes = []
    if p.MIXUP_ALPHA > 0:
        mixes.append(v2.MixUp(alpha=p.MIXUP_ALPHA, num_classes=num_classes))
    if p.CUTMIX_ALPHA > 0:
        mixes.append(v2.CutMix(alpha=p.CUTMIX_ALPHA, num_classes=num_classes))
    if not mixes:
        return None
    return mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)


class Pretrainer:
    """Everything of one process of a run; :meth:`run` trains until ``PRETRAIN.EPOCHS``."""

    def __init__(self, cfg, data_path, output_dir, *, ctx: DistContext, skip_bad_images: bool = False,
                 log: Callable[[str], None] = print):
        self.cfg, self.ctx, self.skip_bad_images = cfg, ctx, skip_bad_images
        self.output_dir = Path(output_dir)
        self._log = log
        p = cfg.PRETRAIN
        self.layout: ImageFolderLayout = scan_imagenet_layout(data_path)
        self.num_classes = p.NUM_CLASSES or len(self.layout.classes)
        if self.num_classes < len(self.layout.classes):
            raise ValueError(f"PRETRAIN.NUM_CLASSES = {p.NUM_CLASSES} is not allowed: {data_path}/train has "
                             f"{len(self.layout.classes)} class folders (0 counts them)")
        arch = ResNetArch.from_cfg(cfg)
        if arch.norm == "SyncBN" and ctx.distributed and ctx.device.type != "cuda":
            raise ValueError("MODEL.RESNETS.NORM = 'SyncBN' is not allowed with several CPU processes: "
                             "torch's SyncBatchNorm runs on GPUs only; use BN")

        self.train_loader, self.val_loader = build_loaders(cfg, self.layout, ctx.rank, ctx.world_size,
                                                           skip_bad_images, pin_memory=ctx.device.type == "cuda")
        self.iters_per_epoch = len(self.train_loader)

        torch.manual_seed(p.SEED)  # the same initial weights in every process
        self.memory_format = torch.channels_last if arch.channels_last else torch.contiguous_format
        model = ImageNetClassifier.from_config(cfg, self.num_classes)
        self.model = model.to(ctx.device, memory_format=self.memory_format)
        self.ddp = (DistributedDataParallel(self.model, device_ids=[ctx.device.index] if ctx.device.type == "cuda"
                                            else None) if ctx.distributed else self.model)
        self.optimizer = build_optimizer(cfg, self.model)
        self.scheduler = build_scheduler(cfg, self.optimizer, self.iters_per_epoch)
        self.amp_dtype = _DTYPES.get(p.PRECISION)
        # fp16 needs loss scaling against gradient underflow; bf16 has fp32's range
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=p.PRECISION == "fp16")
        self.ema = WeightEMA(self.model, p.EMA.DECAY, p.EMA.UPDATE_PERIOD) if p.EMA.ENABLED else None
        self.mix = _batch_mix(cfg, self.num_classes)
        self.criterion = torch.nn.CrossEntropyLoss(label_smoothing=p.LABEL_SMOOTHING)

        self.start_epoch = 0
        self.iteration = 0
        self.history: List[Dict[str, Any]] = []
        self.progress: Dict[str, Any] = {}  # of the epoch a preempted run stopped in
        self.skipped: Dict[str, str] = {}
        self.writer = None
        if ctx.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    def log(self, message: str) -> None:
        if self.ctx.is_main:
            self._log(message)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self, epoch: int) -> Dict[str, Any]:
        convention = input_convention(self.cfg)
        return {
            "format": PRETRAIN_FORMAT,
            "version": PRETRAIN_FORMAT_VERSION,
            "epoch": epoch,
            "iteration": self.iteration,
            "iters_per_epoch": self.iters_per_epoch,
            "world_size": self.ctx.world_size,
            "model": self.model.state_dict(),
            "ema": ({"model": self.ema.module.state_dict(), "num_updates": int(self.ema.n_averaged)}
                    if self.ema is not None else {}),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "config": self.cfg.dump(),
            "input_convention": {"input_format": convention.input_format,
                                 "pixel_mean": list(convention.pixel_mean),
                                 "pixel_std": list(convention.pixel_std),
                                 "stride_in_1x1": convention.stride_in_1x1},
            "classes": list(self.layout.classes),
            "history": self.history,
            "skipped_images": [[path, reason] for path, reason in sorted(self.skipped.items())],
            "epoch_progress": {},
        }

    def save_checkpoint(self, epoch: int) -> None:
        state = self.state_dict(epoch)
        with atomic_output(self.output_dir / CHECKPOINT_NAME) as f:
            torch.save(state, f)
        period = self.cfg.PRETRAIN.CHECKPOINT_PERIOD
        if period and epoch % period == 0:
            with atomic_output(self.output_dir / f"checkpoint_epoch{epoch:04d}.pth") as f:
                torch.save(state, f)

    def load_state_dict(self, state: Dict[str, Any], source: str = "the checkpoint") -> None:
        if list(state["classes"]) != list(self.layout.classes):
            raise ValueError(f"{source}: trained on classes {state['classes'][:5]}... but "
                             f"{self.layout.root}/train has {self.layout.classes[:5]}...; resume on the same data")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler.is_enabled() and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.module.load_state_dict(state["ema"]["model"])
            self.ema.n_averaged.fill_(state["ema"]["num_updates"])
        self.start_epoch = state["epoch"]
        self.iteration = state["iteration"]
        self.history = [dict(r) for r in state["history"]]
        self.progress = dict(state.get("epoch_progress") or {})
        self.skipped = {path: reason for path, reason in state["skipped_images"]}
        if state["iters_per_epoch"] != self.iters_per_epoch:
            self.log(f"note: {state['iters_per_epoch']} iterations per epoch when the checkpoint was written, "
                     f"{self.iters_per_epoch} now ({self.ctx.world_size} processes); the schedule keeps its "
                     "epochs")

    # ------------------------------------------------------------------ one epoch
    def _seed_epoch(self, epoch: int) -> None:
        # data order, worker augmentation seeds and mixup draws depend on (seed, epoch, rank)
        # only, so a resumed epoch repeats the uninterrupted one
        seed = self.cfg.PRETRAIN.SEED * 1_000_003 + epoch
        self.train_loader.sampler.set_epoch(epoch)
        self.train_loader.dataset.seed = seed
        self.train_loader.generator.manual_seed(seed)
        torch.manual_seed(seed * 1009 + self.ctx.rank)

    def _to_input(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.ctx.device, non_blocking=True)
        if self.cfg.INPUT.FORMAT == "BGR":  # the loader decodes RGB
            images = images.flip(1)
        return images.float().contiguous(memory_format=self.memory_format)

    def _note_failures(self, failures) -> None:
        check_failures(failures, self.skip_bad_images)
        for path, reason in failures:
            self.skipped.setdefault(path, reason)

    def _autocast(self):
        return torch.autocast(self.ctx.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def _step(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """One optimizer step; returns the loss (not synchronised)."""
        images, targets = self._to_input(images), targets.to(self.ctx.device, non_blocking=True)
        if self.mix is not None:
            images, targets = self.mix(images, targets)
        with self._autocast():
            loss = self.criterion(self.ddp(images), targets)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.iteration += 1
        if self.ema is not None:
            self.ema.maybe_update(self.model, self.iteration,
                                  in_warmup=self.iteration / self.iters_per_epoch < self.cfg.PRETRAIN.WARMUP_EPOCHS)
        return loss.detach()

    def train_epoch(self, epoch: int) -> Dict[str, float]:
        p = self.cfg.PRETRAIN
        self.ddp.train()
        self._seed_epoch(epoch)
        progress, self.progress = self.progress, {}
        done = progress.get("batches", 0)  # a preempted run's epoch continues after its last batch
        self.train_loader.sampler.start = done * self.train_loader.batch_size
        if progress and self.ctx.rank < len(progress["rng"]):
            set_rng_state(progress["rng"][self.ctx.rank])
        loss_sum = torch.tensor(progress.get("loss_sum", 0.0), dtype=torch.float64, device=self.ctx.device)
        seen = progress.get("seen", 0)
        start = time.perf_counter() - progress.get("time_s", 0.0)
        with tqdm(total=self.iters_per_epoch, initial=done, desc=f"epoch {epoch + 1}/{p.EPOCHS}", unit="it",
                  disable=not self.ctx.is_main, leave=False, dynamic_ncols=True, file=sys.stderr) as bar:
            for index, (images, targets, failures) in enumerate(self.train_loader, start=done):
                self._note_failures(failures)
                if images is None:
                    raise ValueError(f"more than {MAX_CONSECUTIVE_BAD} undecodable images in a row in train/, the "
                                     f"last {failures[-1][0]}; is the data set readable?")
                lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses
                loss = self._step(images, targets)
                loss_sum += loss.double() * len(images)
                seen += len(images)
                bar.update(1)
                if self.iteration % p.LOG_PERIOD == 0 or index + 1 == self.iters_per_epoch:
                    value = loss.item()  # synchronises with the device: only every LOG_PERIOD iterations
                    if not math.isfinite(value):
                        raise FloatingPointError(
                            f"the training loss is {value} at epoch {epoch + 1}, iteration {self.iteration}: the "
                            "run diverged; lower PRETRAIN.BASE_LR or add warm-up (PRETRAIN.WARMUP_EPOCHS)")
                    rate = seen * self.ctx.world_size / (time.perf_counter() - start)
                    bar.set_postfix(loss=f"{value:.3f}", lr=f"{lr:.4g}", images_s=f"{rate:.1f}")
                    if self.writer is not None:
                        self.writer.add_scalar("train/loss", value, self.iteration)
                        self.writer.add_scalar("train/lr", lr, self.iteration)
                        self.writer.add_scalar("train/images_per_s", rate, self.iteration)
                # not after an epoch's last batch: its end-of-epoch checkpoint follows
                if index + 1 < self.iters_per_epoch and stop_requested():
                    self._stop_in_epoch(epoch, index + 1, loss_sum.item(), seen, time.perf_counter() - start)
        self.train_loader.sampler.start = 0
        elapsed = time.perf_counter() - start
        total_loss, total_seen = all_reduce_sum([loss_sum.item(), seen], self.ctx)
        return {"train_loss": total_loss / total_seen, "lr": lr, "train_images": int(total_seen),
                "images_per_s": total_seen / elapsed}

    def _stop_in_epoch(self, epoch: int, batches: int, loss_sum: float, seen: int, time_s: float) -> None:
        """Every process stops after the same batch; the first writes that exact point."""
        rng = all_gather_objects(rng_state(), self.ctx)
        self.skipped = {k: v for part in all_gather_objects(self.skipped, self.ctx) for k, v in part.items()}
        if self.ctx.is_main:
            state = self.state_dict(epoch)
            state["epoch_progress"] = {"batches": batches, "loss_sum": loss_sum, "seen": seen, "time_s": time_s,
                                       "rng": rng}
            with atomic_output(self.output_dir / CHECKPOINT_NAME) as f:
                torch.save(state, f)
        if self.ctx.distributed:
            torch.distributed.barrier()  # no process leaves before the checkpoint is whole
        message = preempted_message(f"in epoch {epoch + 1} after iteration {self.iteration} ({batches} of "
                                    f"{self.iters_per_epoch} batches)", str(self.output_dir / CHECKPOINT_NAME))
        self.log(message)
        raise Preempted(message)

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module) -> Dict[str, float]:
        """Top-1/top-5 (percent) and loss on all of val/, each image counted once over all processes."""
        # the unwrapped model: shards may differ by one batch, and a DDP forward expects every
        # process to take part
        model.eval()
        k = min(5, self.num_classes)
        sums = torch.zeros(4, dtype=torch.float64, device=self.ctx.device)  # top1, top5, loss, count
        for images, targets, failures in self.val_loader:
            self._note_failures(failures)
            if images is None:
                continue
            images, targets = self._to_input(images), targets.to(self.ctx.device, non_blocking=True)
            with self._autocast():
                logits = model(images).float()
            hits = logits.topk(k, dim=1).indices.eq(targets[:, None])
            sums += torch.stack([hits[:, 0].sum(), hits.any(dim=1).sum(),
                                 F.cross_entropy(logits, targets, reduction="sum"),
                                 torch.tensor(len(targets), device=self.ctx.device)]).double()
        top1, top5, loss, count = all_reduce_sum(sums.tolist(), self.ctx)
        if not count:
            raise ValueError(f"{self.layout.root}/val: no image could be decoded")
        return {"top1": 100 * top1 / count, "top5": 100 * top5 / count, "val_loss": loss / count,
                "val_images": int(count)}

    # ------------------------------------------------------------------ the run
    def describe(self) -> str:
        p, ctx = self.cfg.PRETRAIN, self.ctx
        # the depth and every key away from its default: the variant, not the full list of keys
        defaults = dict(ResNetArch().config_items())
        body = ", ".join(f"{key.split('.')[-1]} {value}" for key, value in ResNetArch.from_cfg(self.cfg).config_items()
                         if key.startswith("MODEL.RESNETS.") and not key.endswith("OUT_FEATURES")
                         and (key.endswith(".DEPTH") or value != defaults.get(key)))
        ema = f", EMA decay {p.EMA.DECAY} every {p.EMA.UPDATE_PERIOD} it" if p.EMA.ENABLED else ""
        return (f"pretraining ResNet ({body}) with a {self.num_classes}-way linear head\n"
                f"data: {self.layout.root}: {len(self.layout.train)} train / {len(self.layout.val)} val images, "
                f"{len(self.layout.classes)} classes; crops {p.CROP_SIZE} (val {val_resize_size(self.cfg)} -> "
                f"{val_crop_size(self.cfg)})\n"
                f"{ctx.world_size} process(es) on {ctx.device.type} x {p.BATCH_SIZE // ctx.world_size} images = "
                f"batch {p.BATCH_SIZE}; {self.iters_per_epoch} iterations per epoch, {p.EPOCHS} epochs; "
                f"lr {learning_rate(self.cfg):.4g} ({p.LR_SCHEDULER}), precision {p.PRECISION}{ema}")

    def run(self) -> PretrainResult:
        p = self.cfg.PRETRAIN
        if self.ctx.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.output_dir.mkdir(parents=True, exist_ok=True)
            # events after the checkpoint's iteration came from the killed run: hide them
            self.writer = SummaryWriter(str(self.output_dir), purge_step=self.iteration + 1 if self.iteration else None)
            self._write_metrics()  # a resumed run drops lines written after its checkpoint
        self.log(self.describe())
        if self.progress:
            self.log(f"resumed in epoch {self.start_epoch + 1} after iteration {self.iteration} "
                     f"({self.progress['batches']} of {self.iters_per_epoch} batches done)")
        elif self.start_epoch:
            self.log(f"resumed after epoch {self.start_epoch} (iteration {self.iteration}); "
                     f"continuing at epoch {self.start_epoch + 1}")
        try:
            for epoch in range(self.start_epoch, p.EPOCHS):
                start = time.perf_counter()
                record: Dict[str, Any] = {"epoch": epoch + 1}
                record.update(self.train_epoch(epoch))
                record["iteration"] = self.iteration
                record.update(self.evaluate(self.model))
                if self.ema is not None:
                    record.update({f"ema_{k}": v for k, v in self.evaluate(self.ema.module).items()
                                   if k != "val_images"})
                self.skipped = {k: v for part in all_gather_objects(self.skipped, self.ctx) for k, v in part.items()}
                record["skipped_images"] = len(self.skipped)
                record["time_s"] = time.perf_counter() - start
                self.history.append(record)
                if self.ctx.is_main:
                    self._write_metrics()
                    self._write_scalars(record)
                    self.save_checkpoint(epoch + 1)
                self.log(self._format(record))
        finally:
            if self.writer is not None:
                self.writer.close()
        if self.ctx.is_main:
            plot_curves(self.history, self.output_dir / PLOT_NAME)
            self._report_skipped()
            self.log(f"checkpoint: {self.output_dir / CHECKPOINT_NAME}; into a detector with\n"
                     f"  tools/convert_weights.py {self.output_dir / CHECKPOINT_NAME} model_d2.pth"
                     + (" [--ema]" if self.ema is not None else ""))
        return PretrainResult(self.output_dir, self.history, dict(self.skipped))

    def _format(self, r: Dict[str, Any]) -> str:
        text = (f"epoch {r['epoch']}/{self.cfg.PRETRAIN.EPOCHS}: train_loss {r['train_loss']:.4f}, "
                f"top1 {r['top1']:.2f}, top5 {r['top5']:.2f}")
        if "ema_top1" in r:
            text += f", ema_top1 {r['ema_top1']:.2f}, ema_top5 {r['ema_top5']:.2f}"
        return text + f", lr {r['lr']:.4g}, {r['images_per_s']:.1f} images/s, {r['time_s']:.1f} s"

    def _write_metrics(self) -> None:
        with atomic_output(self.output_dir / METRICS_NAME, "w", encoding="utf-8") as f:
            for record in self.history:
                f.write(json.dumps(record) + "\n")

    def _write_scalars(self, record: Dict[str, Any]) -> None:
        for key in ("train_loss", "val_loss", "top1", "top5", "ema_top1", "ema_top5", "ema_val_loss", "lr"):
            if key in record:
                self.writer.add_scalar(f"epoch/{key}", record[key], record["iteration"])
        self.writer.flush()

    def _report_skipped(self) -> None:
        if not self.skipped:
            return
        lines = [f"skipped {len(self.skipped)} image(s) that could not be decoded:"]
        lines += [f"  {path} ({reason})" for path, reason in sorted(self.skipped.items())]
        self.log("\n".join(lines))


def plot_curves(history: List[Dict[str, Any]], path: Path) -> None:
    """Loss, accuracy and learning rate per epoch, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not history:
        return
    epochs = [r["epoch"] for r in history]
    figure = Figure(figsize=(13, 3.8), tight_layout=True)
    FigureCanvasAgg(figure)
    loss, accuracy, lr = figure.subplots(1, 3)
    loss.plot(epochs, [r["train_loss"] for r in history], label="train")
    loss.plot(epochs, [r["val_loss"] for r in history], label="val")
    loss.set(title="loss", xlabel="epoch")
    for key, style in (("top1", "-"), ("top5", "--"), ("ema_top1", ":"), ("ema_top5", "-.")):
        if key in history[0]:
            accuracy.plot(epochs, [r[key] for r in history], style, label=key)
    accuracy.set(title="val accuracy (%)", xlabel="epoch")
    lr.plot(epochs, [r["lr"] for r in history])
    lr.set(title="learning rate (end of epoch)", xlabel="epoch")
    for axes in (loss, accuracy):
        axes.legend()
    with atomic_output(path) as f:
        figure.savefig(f, format="png", dpi=100)


def pretrain(cfg, data_path, output_dir, *, resume_state: Optional[Dict[str, Any]] = None,
             skip_bad_images: bool = False, log: Callable[[str], None] = print) -> PretrainResult:
    """Train ``cfg``'s classifier on ``data_path`` (ImageNet layout) into ``output_dir``.

    Runs alone or as one of the processes started by ``torchrun``; ``resume_state`` is a loaded
    checkpoint to continue from.
    """
    ctx = init_distributed(cfg.MODEL.DEVICE)
    try:
        trainer = Pretrainer(cfg, data_path, output_dir, ctx=ctx, skip_bad_images=skip_bad_images, log=log)
        if resume_state is not None:
            trainer.load_state_dict(resume_state)
        return trainer.run()
    finally:
        shutdown(ctx)
