"""Backbone inference throughput: ours against Detectron2's ResNet, and our fast paths.

For each depth, body kind (plain, FPN) and input size: Detectron2's backbone and ours with the
same config (FrozenBN, Detectron2's defaults) and the same weights, then ours with the fast-path
switches: norm folding (:func:`resnet_backbones.modeling.fold.fold_norms`), channels_last
(``MODEL.RESNETS.CHANNELS_LAST``) and, where asked for, ``torch.compile`` with frozen weights
(:func:`resnet_backbones.modeling.inference.compile_for_inference`);
on GPU also autocast (AMP, float16). Outputs are compared before timing: ours against
Detectron2's, and every variant against ours. A compiled variant compiles during its warm-up
(about 10-60 s per model and input size on 2 CPU cores), which is not timed.
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch

from ..modeling.fold import fold_norms
from ..modeling.inference import compile_for_inference
from .models import (
    Variant,
    backbone_cfg,
    build_backbone_pair,
    build_our_backbone,
    config_key_available,
    max_abs_diff,
)
from .timing import interleaved, synchronizer

__all__ = ["BASELINE", "run_inference"]

BASELINE = "detectron2"


def _channels_last_model(cfg, kind: str, state: Dict[str, torch.Tensor]) -> Tuple[torch.nn.Module, bool]:
    """Ours in channels_last: through ``MODEL.RESNETS.CHANNELS_LAST`` when the key exists (the
    backbone then converts its input itself), otherwise converted here; returns (model, whether
    the input must be converted by the caller)."""
    if config_key_available("MODEL.RESNETS.CHANNELS_LAST"):
        cl_cfg = cfg.clone()
        cl_cfg.MODEL.RESNETS.CHANNELS_LAST = True
        return build_our_backbone(cl_cfg, kind, state), False
    model = build_our_backbone(cfg, kind, state).to(memory_format=torch.channels_last)
    return model, True


def build_variants(cfg, kind: str, ours, theirs, state, *, device: torch.device,
                   compile_models: bool, fold: bool = True, channels_last: bool = True) -> List[Variant]:
    """The timed configurations: Detectron2's first, then ours, then ours with more and more
    fast paths on; the last has all of them (the goals judge "fast paths on" by it)."""
    variants = [
        Variant(BASELINE, theirs, switches={"impl": "detectron2"}),
        Variant("ours", ours, switches={"impl": "ours"}),
    ]
    folded = fold_norms(ours) if fold else None
    if folded is not None:
        variants.append(Variant("ours+fold", folded, switches={"fold_norms": True}))
    cl_model = cl_input = None
    if channels_last:
        cl_model, cl_input = _channels_last_model(cfg, kind, state)
        variants.append(Variant("ours+channels_last", cl_model, channels_last_input=cl_input,
                                switches={"channels_last": True}))
        if fold:
            variants.append(Variant("ours+fold+channels_last", fold_norms(cl_model), channels_last_input=cl_input,
                                    switches={"fold_norms": True, "channels_last": True}))
    if device.type == "cuda":
        amp = torch.float16
        variants.insert(1, Variant(BASELINE + "+amp", theirs, amp_dtype=amp, switches={"amp": "float16"}))
        best = variants[-1]
        variants.append(Variant(best.name + "+amp", best.model, channels_last_input=best.channels_last_input,
                                amp_dtype=amp, switches={**best.switches, "amp": "float16"}))
    if compile_models:
        best = variants[-1]
        variants.append(Variant(best.name + "+compile", compile_for_inference(best.model),
                                channels_last_input=best.channels_last_input, amp_dtype=best.amp_dtype,
                                switches={**best.switches, "compile": True}))
    return variants


def run_inference(options, device: torch.device, log) -> Dict[str, Any]:
    """Rows of (model, size, variant, images/s, ratio to Detectron2's, output difference)."""
    rows: List[Dict[str, Any]] = []
    checks: List[Dict[str, Any]] = []
    sync = synchronizer(device)
    for depth in options.depths:
        for kind in options.kinds:
            cfg = backbone_cfg(depth, kind, device)
            ours, theirs, state = build_backbone_pair(cfg, kind, seed=options.seed)
            variants = build_variants(cfg, kind, ours, theirs, state, device=device,
                                      compile_models=options.compile, fold=not options.no_fold,
                                      channels_last=not options.no_channels_last)
            model_name = f"R-{depth}" + ("-FPN" if kind == "fpn" else "")
            for size_index, (height, width) in enumerate(options.sizes):
                generator = torch.Generator().manual_seed(options.seed + size_index)
                x = torch.randn(options.batch, 3, height, width, generator=generator).to(device)
                diffs = _compare(variants, x) if size_index == 0 else {}
                if diffs:
                    checks.append({"model": model_name, "size": f"{height}x{width}", "max_abs_diff": diffs})
                    log(f"  {model_name} {height}x{width}: outputs vs ours "
                        + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
                timed = interleaved({v.name: v.runner(x) for v in variants}, warmup=options.warmup,
                                    min_repeats=options.min_repeats, max_repeats=options.max_repeats,
                                    budget_s=options.budget_s, sync=sync)
                baseline = timed[BASELINE].median
                for variant in variants:
                    m = timed[variant.name]
                    rows.append({
                        "model": model_name, "depth": depth, "kind": kind, "size": f"{height}x{width}",
                        "batch": options.batch, "variant": variant.name, "switches": variant.switches,
                        "images_per_s": options.batch / m.median, "ratio_vs_detectron2": baseline / m.median,
                        "max_abs_diff_vs_ours": diffs.get(variant.name), **m.to_dict(),
                    })
                log(f"  {model_name} {height}x{width}: " + ", ".join(
                    f"{v.name} {options.batch / timed[v.name].median:.2f} img/s" for v in variants))
            del ours, theirs, variants
    return {"rows": rows, "checks": checks}


def _compare(variants: List[Variant], x: torch.Tensor) -> Dict[str, float]:
    """Max abs difference of every variant's output from ours (and of Detectron2's)."""
    outputs = {}
    for variant in variants:
        with torch.no_grad(), variant.autocast():
            outputs[variant.name] = variant.model(variant.prepare(x))
    reference = outputs["ours"]
    return {name: max_abs_diff(out, reference) for name, out in outputs.items() if name != "ours"}

