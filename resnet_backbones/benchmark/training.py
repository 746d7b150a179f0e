"""Training: Mask R-CNN step time and peak memory with our backbone and Detectron2's, and the
backbone's peak training memory with and without activation checkpointing.

A step is what a trainer does: forward with losses, backward, an SGD step (momentum 0.9). The
learning rate is 0, so every timed step computes exactly the same thing (and all weights stay
the same for both models); the random proposal sampling is seeded identically before each step,
so ours and Detectron2's compute the same losses, which is checked on the first step.

Peak memory (see :mod:`.timing`) is measured on a separate, untimed step after the warm-up,
which has allocated gradients and momentum buffers: it is the memory the step itself adds.
With ``MODEL.RESNETS.CHECKPOINT_STAGES`` available, full runs add the detector with every stage
checkpointed (the stem and every stage), and every run measures the backbone alone with and without it.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, List, Optional

import torch

from .models import (
    ALL_STAGES,
    backbone_cfg,
    build_mask_rcnn_pair,
    build_our_backbone,
    config_key_available,
    mask_rcnn_cfg,
    max_abs_diff,
    randomize_norm_statistics,
    synthetic_detection_batch,
)
from .timing import interleaved, peak_memory_bytes, synchronizer

__all__ = ["run_training", "backbone_step", "CHECKPOINT_KEY"]

CHECKPOINT_KEY = "MODEL.RESNETS.CHECKPOINT_STAGES"
#: what "+checkpointing" checkpoints: the stem and every stage
CHECKPOINTED = ["stem"] + list(ALL_STAGES)
# Norms of the backbone memory measurement: Detectron2's detection default, and trained BN.
BACKBONE_MEMORY_NORMS = ("FrozenBN", "BN")
BASELINE = "detectron2"


def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def detector_step(model: torch.nn.Module, batch: List[Dict[str, Any]], *, seed: int, device: torch.device,
                  amp_dtype: Optional[torch.dtype] = None) -> Callable[[], Dict[str, float]]:
    """One training step of a Detectron2 detector on ``batch``; returns its losses."""
    from detectron2.utils.events import EventStorage

    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(parameters, lr=0.0, momentum=0.9)

    def step() -> Dict[str, float]:
        torch.manual_seed(seed)
        with EventStorage(0), _autocast(device, amp_dtype):
            losses = model(batch)
        total = sum(losses.values())
        optimizer.zero_grad(set_to_none=False)
        total.backward()
        optimizer.step()
        return {name: float(value.detach()) for name, value in losses.items()}

    return step


def backbone_step(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], Dict[str, Any]]:
    """Forward and backward of a backbone on ``x`` (loss: mean square of every output); returns
    the outputs (detached) and the parameters' gradients, for comparisons."""
    parameters = [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    def step() -> Dict[str, Any]:
        for _, p in parameters:
            if p.grad is not None:
                p.grad.zero_()
        outputs = model(x)
        loss = sum(o.float().pow(2).mean() for o in outputs.values())
        loss.backward()
        return {"outputs": {k: v.detach() for k, v in outputs.items()},
                "grads": {n: p.grad for n, p in parameters}}

    return step


def _loss_diff(a: Dict[str, float], b: Dict[str, float]) -> float:
    return max(abs(a[k] - b[k]) for k in a)


def run_training(options, device: torch.device, log) -> Dict[str, Any]:
    rows: List[Dict[str, Any]] = []
    memory_rows: List[Dict[str, Any]] = []
    checks: List[Dict[str, Any]] = []
    sync = synchronizer(device)
    height, width = options.train_size
    has_checkpointing = config_key_available(CHECKPOINT_KEY) and not options.no_checkpointing
    for depth in options.depths:
        model_name = f"Mask R-CNN R-{depth}-FPN"
        cfg = mask_rcnn_cfg(depth, device, options.train_overrides)
        ours, theirs, state = build_mask_rcnn_pair(cfg, seed=options.seed)
        ours.to(device)
        theirs.to(device)
        batch = synthetic_detection_batch(options.train_batch, height, width, seed=options.seed, device=device)
        models = {BASELINE: (theirs, None), "ours": (ours, None)}
        if has_checkpointing and not options.quick:
            from detectron2.modeling import build_model

            ckpt = build_model(_with_key(cfg, CHECKPOINT_KEY, CHECKPOINTED))
            ckpt.load_state_dict(state, strict=True)
            models["ours+checkpointing"] = (ckpt.to(device).train(), None)
        if device.type == "cuda":
            models[BASELINE + "+amp"] = (theirs, torch.float16)
            models["ours+amp"] = (ours, torch.float16)
        steps = {name: detector_step(m, batch, seed=options.seed, device=device, amp_dtype=amp)
                 for name, (m, amp) in models.items()}
        # The first step of each is the warm-up and the equality check.
        losses = {name: step() for name, step in steps.items()}
        loss_diffs = {name: _loss_diff(losses[name], losses["ours"]) for name in losses if name != "ours"}
        checks.append({"model": model_name, "losses": losses, "max_abs_loss_diff_vs_ours": loss_diffs})
        log(f"  {model_name}: losses vs ours " + ", ".join(f"{k} {v:.1e}" for k, v in loss_diffs.items()))
        timed = interleaved(steps, warmup=max(options.warmup - 1, 0), min_repeats=options.train_min_repeats,
                            max_repeats=options.train_max_repeats, budget_s=options.train_budget_s, sync=sync)
        peaks = {name: peak_memory_bytes(step, device) for name, step in steps.items()}
        baseline = timed[BASELINE].median
        for name in steps:
            m = timed[name]
            peak = peaks[name]
            rows.append({
                "model": model_name, "depth": depth, "batch": options.train_batch, "size": f"{height}x{width}",
                "variant": name, "step_s": m.median, "speed_vs_detectron2": baseline / m.median,
                "peak_memory_bytes": peak,
                "memory_vs_detectron2": (peak / peaks[BASELINE]) if peak and peaks[BASELINE] else None,
                "max_abs_loss_diff_vs_ours": loss_diffs.get(name), **m.to_dict(),
            })
        log(f"  {model_name}: " + ", ".join(f"{n} {timed[n].median:.2f} s" for n in steps))
        del ours, theirs, models, steps
        if has_checkpointing:
            for norm in BACKBONE_MEMORY_NORMS:
                memory_rows += _backbone_memory(options, depth, norm, device, log, checks)
    return {"rows": rows, "backbone_memory": memory_rows, "checks": checks}


def _backbone_memory(options, depth: int, norm: str, device: torch.device, log, checks) -> List[Dict[str, Any]]:
    """Peak training memory of our R-``depth``-FPN backbone with and without checkpointing of
    the stem and every stage (FREEZE_AT 0: all stages train), with equal outputs and gradients."""
    from detectron2.modeling import build_backbone

    height, width = options.train_size
    cfg = backbone_cfg(depth, "fpn", device, NORM=norm)
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    torch.manual_seed(options.seed)
    plain = randomize_norm_statistics(build_backbone(cfg), options.seed).to(device)
    ckpt = build_our_backbone(_with_key(cfg, CHECKPOINT_KEY, CHECKPOINTED), "fpn", plain.state_dict())
    plain.train()
    ckpt.train()
    generator = torch.Generator().manual_seed(options.seed)
    x = torch.randn(options.train_batch, 3, height, width, generator=generator).to(device)
    steps = {"ours": backbone_step(plain, x), "ours+checkpointing": backbone_step(ckpt, x)}
    results = {name: step() for name, step in steps.items()}  # warm-up: gradients allocated
    diff_out = max_abs_diff(results["ours+checkpointing"]["outputs"], results["ours"]["outputs"])
    diff_grad = max_abs_diff(results["ours+checkpointing"]["grads"], results["ours"]["grads"])
    del results
    peaks = {name: peak_memory_bytes(step, device) for name, step in steps.items()}
    model_name = f"R-{depth}-FPN backbone, {norm}"
    checks.append({"model": model_name + " checkpointing", "max_abs_output_diff": diff_out,
                   "max_abs_grad_diff": diff_grad})
    rows = []
    for name in steps:
        rows.append({
            "model": model_name, "depth": depth, "norm": norm, "batch": options.train_batch,
            "size": f"{height}x{width}", "variant": name, "peak_memory_bytes": peaks[name],
            "memory_vs_ours": (peaks[name] / peaks["ours"]) if peaks[name] and peaks["ours"] else None,
            "max_abs_output_diff_vs_ours": diff_out if name != "ours" else None,
            "max_abs_grad_diff_vs_ours": diff_grad if name != "ours" else None,
        })
    log(f"  {model_name}: peak {peaks['ours'] / 2**20:.0f} MiB, checkpointing "
        f"{(peaks['ours+checkpointing'] or 0) / 2**20:.0f} MiB; output diff {diff_out:.1e}, grad diff {diff_grad:.1e}")
    return rows


def _with_key(cfg, key: str, value: Any):
    """A copy of ``cfg`` with ``key`` (dotted) set to ``value``."""
    cfg = cfg.clone()
    *parents, leaf = key.split(".")
    node = cfg
    for part in parents:
        node = node[part]
    node[leaf] = value
    return cfg
