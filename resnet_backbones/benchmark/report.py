"""The benchmark's printed tables and its goal verdicts."""
from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Optional, Sequence

__all__ = ["format_report", "evaluate_goals", "format_table"]

MiB = 2**20


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain-text table; the first column is left-aligned, the others right-aligned."""
    rows = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.3g}" if abs(value) < 0.01 and value != 0 else f"{value:.2f}"
    return str(value)


def _geomean(values: List[float]) -> Optional[float]:
    values = [v for v in values if v and v > 0 and not math.isnan(v)]
    if not values:
        return None
    return math.exp(sum(math.log(v) for v in values) / len(values))


LOAD_NOTE = ("load: the highest 1-minute load average around the comparison (this benchmark's own threads "
             "included); '!' where it exceeded the cores by more than half a core: other processes competed "
             "for them, and that comparison's times are unreliable")


def _load(row: Dict[str, Any], machine: Dict[str, Any]) -> str:
    load = row.get("load_average")
    if not load:
        return "-"
    peak = max(load)
    return f"{peak:.1f}" + ("!" if peak > machine.get("cpu_cores_available", 1) + 0.5 else "")


def _ratio(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.2f}x"


def evaluate_goals(results: Dict[str, Any], device: str) -> List[Dict[str, Any]]:
    """The issue's goals, each with the ratios it is judged on (same run) and whether it is met.

    Where a goal covers several settings (models, sizes, IoU types), speed goals of the models
    are judged on the geometric mean of their ratios (the smallest is reported alongside); the
    checkpointing and COCO evaluation goals on the smallest. Backbone inference goals are stated
    for the CPU and judged on full runs only: on GPU, and in ``--quick`` runs (4-second timings),
    they are reported, not judged; so is the fast-path goal of a run without ``torch.compile``.
    """
    goals: List[Dict[str, Any]] = []
    inference = results.get("inference", {}).get("rows", [])
    if inference:
        judged = device == "cpu" and not results.get("quick")
        settings = sorted({(r["model"], r["size"]) for r in inference})
        equal = [r["ratio_vs_detectron2"] for r in inference if r["variant"] == "ours"]
        fast, compiled = [], True  # the last variant of each setting has every fast path on
        for model, size in settings:
            rows = [r for r in inference if r["model"] == model and r["size"] == size]
            if len(rows) > 2:
                fast.append(rows[-1]["ratio_vs_detectron2"])
                compiled = compiled and bool(rows[-1]["switches"].get("compile"))
        goals.append(_goal(f"backbone inference ({device}), ours vs Detectron2 at equal settings",
                           ">= 1.00x", equal, 1.0, judged=judged))
        goals.append(_goal(f"backbone inference ({device}), ours with all fast paths on vs Detectron2",
                           ">= 1.25x", fast, 1.25, judged=judged and compiled))
    training = results.get("training", {}).get("rows", [])
    if training:
        ours = [r["speed_vs_detectron2"] for r in training if r["variant"] == "ours"]
        goals.append(_goal("Mask R-CNN training step, ours vs Detectron2's backbone (speed)", ">= 0.97x", ours, 0.97))
    memory = results.get("training", {}).get("backbone_memory", [])
    if memory:
        reductions = [1.0 - r["memory_vs_ours"] for r in memory
                      if r["variant"] == "ours+checkpointing" and r["memory_vs_ours"] is not None]
        goals.append(_goal("activation checkpointing, backbone peak training memory reduction", ">= 40%",
                           reductions, 0.40, percent=True, aggregate=min))
    coco = results.get("coco", {}).get("rows", [])
    if coco:
        ours = [r for r in coco if r["tool"].startswith("evaluate_coco (faster")]
        goal = _goal("COCO evaluation, evaluate_coco vs pycocotools (speed)", ">= 3.00x",
                     [r["speedup_vs_pycocotools"] for r in ours], 3.0, aggregate=min)
        identical = all(r["identical"] for r in ours)
        goal["identical_numbers"] = identical
        goal["met"] = bool(goal["met"] and identical)
        goals.append(goal)
    goals += _deploy_goals(results)
    return goals


def _deploy_goals(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The deploy section's goals, each at every setting (the smallest ratio decides), judged on
    full runs only."""
    rows = results.get("deploy", {}).get("rows", [])
    if not rows:
        return []
    judged = not results.get("quick")
    fast = [r for r in rows if r["variant"] == "ours fast"]
    goals = [
        _goal("CPU deploy fp32, ours (every fast path) vs ONNX Runtime", ">= 1.05x",
              [r["ratio_vs_onnxruntime"] for r in fast], 1.05, judged=judged, aggregate=min),
        _goal("CPU deploy fp32, ours (every fast path) vs OpenVINO", ">= 1.05x",
              [r["ratio_vs_openvino"] for r in fast], 1.05, judged=judged, aggregate=min),
        _goal("CPU deploy fp32 at 800x1216, ours: share of the 3x3 convolution peak", ">= 90%",
              [r["gflops"] / r["peak_gflops"] for r in fast if r["size"] == "800x1216" and r["peak_gflops"]],
              0.90, judged=judged, percent=True, aggregate=min),
    ]
    bf16 = [r["ratio_vs_ours_fast_fp32"] for r in rows if r["variant"] == "ours bf16"]
    if bf16:
        goals.append(_goal("CPU deploy bf16 vs ours fp32 (every fast path)", ">= 1.80x", bf16, 1.8,
                           judged=judged, aggregate=min))
    return [g for g in goals if g["values"]]


def _goal(name: str, target: str, values: List[float], threshold: float, *, judged: bool = True,
          percent: bool = False, aggregate=None) -> Dict[str, Any]:
    values = [v for v in values if v is not None]
    value = (aggregate(values) if values else None) if aggregate else _geomean(values)
    return {
        "goal": name, "target": target, "value": value, "min": min(values) if values else None,
        "values": values, "met": (value is not None and value >= threshold) if judged else None,
        "aggregate": "min" if aggregate is min else "geometric mean", "percent": percent,
    }


def format_report(results: Dict[str, Any]) -> str:
    parts: List[str] = []
    machine = results["machine"]
    parts.append(f"machine: {machine['cpu']}, {machine['cpu_cores_available']} cores, "
                 f"{machine['torch_threads']} torch threads, device {machine['device']}"
                 + (f" ({machine['gpu']})" if machine.get("gpu") else "")
                 + f"; torch {machine['torch']}"
                 + (f"; load average {machine['load_average_at_start'][0]:.1f} at start"
                    if machine.get("load_average_at_start") else ""))
    inference = results.get("inference")
    if inference:
        batch = inference["rows"][0]["batch"] if inference["rows"] else "?"
        parts.append(f"\nBackbone inference, batch {batch}: images/s (median), ratio to Detectron2's at the same "
                     f"config and weights; max|diff| of the output vs ours")
        parts.append(format_table(
            ["model", "size", "variant", "img/s", "vs D2", "max|diff|", "load"],
            [[r["model"], r["size"], r["variant"], r["images_per_s"], _ratio(r["ratio_vs_detectron2"]),
              r["max_abs_diff_vs_ours"], _load(r, machine)] for r in inference["rows"]]))
    training = results.get("training")
    if training and training["rows"]:
        r0 = training["rows"][0]
        overrides = results["settings"].get("train_overrides") or []
        parts.append(f"\nTraining step (forward, backward, SGD), batch {r0['batch']} at {r0['size']}"
                     + (f", {' '.join(map(str, overrides))}" if overrides else "")
                     + ": seconds (median), speed and peak memory relative to Detectron2's backbone")
        parts.append(format_table(
            ["model", "variant", "step s", "speed vs D2", "peak MiB", "memory vs D2", "loss diff", "load"],
            [[r["model"], r["variant"], r["step_s"], _ratio(r["speed_vs_detectron2"]),
              None if r["peak_memory_bytes"] is None else r["peak_memory_bytes"] / MiB,
              _ratio(r["memory_vs_detectron2"]), r["max_abs_loss_diff_vs_ours"], _load(r, machine)]
             for r in training["rows"]]))
    if training and training.get("backbone_memory"):
        r0 = training["backbone_memory"][0]
        parts.append(f"\nBackbone training memory (FPN, FREEZE_AT 0, forward + backward), batch {r0['batch']} "
                     f"at {r0['size']}: peak MiB above model and gradients")
        parts.append(format_table(
            ["model", "variant", "peak MiB", "vs ours", "output diff", "grad diff"],
            [[r["model"], r["variant"], None if r["peak_memory_bytes"] is None else r["peak_memory_bytes"] / MiB,
              _ratio(r["memory_vs_ours"]), r["max_abs_output_diff_vs_ours"], r["max_abs_grad_diff_vs_ours"]]
             for r in training["backbone_memory"]]))
    coco = results.get("coco")
    if coco and coco["rows"]:
        r0 = coco["rows"][0]
        parts.append(f"\nCOCO evaluation of {r0['images']} images x {r0['detections_per_image']} detections, "
                     f"{r0['categories']} categories, from JSON files: seconds (median), speed-up over pycocotools, "
                     "the 12 numbers identical")
        parts.append(format_table(
            ["iou", "tool", "seconds", "speed-up", "identical", "load"],
            [[r["iou_type"], r["tool"], r["seconds"], _ratio(r["speedup_vs_pycocotools"]),
              "yes" if r["identical"] else f"no ({r['max_abs_diff_vs_pycocotools']:.1e})", _load(r, machine)]
             for r in coco["rows"]]))
    pipeline = results.get("pipeline")
    if pipeline and pipeline["rows"]:
        parts.append(f"\nPretraining input pipeline ({pipeline['pipeline']}), {pipeline['rows'][0]['images']} "
                     f"JPEGs of {pipeline['image_size']} px, crop {pipeline['crop_size']}: images/s (median)")
        parts.append(format_table(["workers", "img/s", "vs first"],
                                  [[r["workers"], r["images_per_s"], _ratio(r["ratio_vs_first"])]
                                   for r in pipeline["rows"]]))
    deploy = results.get("deploy")
    if deploy and deploy["rows"]:
        parts.append("\nCPU deployment, batch 1: images/s (median); ratios to ours eager, to our fp32 fast path, and to "
                     "ONNX Runtime / OpenVINO at the same precision; GFLOP/s (2 x multiply-adds / time) and its share of "
                     "the 3x3 convolution peak at that precision and thread count; agreement with ours eager: "
                     "max|diff| (fp32) or the lowest cosine similarity of a feature map (bf16, int8)")
        for note in deploy.get("notes", []):
            parts.append(f"note: {note}")
        parts.append(", ".join(f"peak at {p['threads']} thread(s): " + ", ".join(
            f"{k.split('_')[0]} {v:.0f} GFLOP/s" for k, v in p.items() if k != "threads") for p in deploy["peaks"]))
        parts.append(format_table(
            ["model", "size", "thr", "variant", "prec", "img/s", "vs ours", "vs fast", "vs ORT", "vs OV",
             "GFLOP/s", "% peak", "agreement", "load"],
            [[r["model"], r["size"], r["threads"], r["variant"], r["precision"], r["images_per_s"],
              _ratio(r["ratio_vs_ours"]), _ratio(r["ratio_vs_ours_fast_fp32"]), _ratio(r["ratio_vs_onnxruntime"]),
              _ratio(r["ratio_vs_openvino"]), r["gflops"],
              f"{100 * r['gflops'] / r['peak_gflops']:.0f}%" if r["peak_gflops"] else "-",
              (f"{r['max_abs_diff_vs_ours']:.1e}" if r["precision"] == "fp32" else f"cos {r['cosine_vs_ours']:.5f}"),
              _load(r, machine)] for r in deploy["rows"]]))
    if any(results.get(k) for k in ("inference", "training", "coco", "deploy")):
        parts.append("\n" + LOAD_NOTE)
    goals = results.get("goals")
    if goals:
        parts.append("\nGoals (ratios from this run)")
        rows = []
        for g in goals:
            if g["percent"]:
                value = "-" if g["value"] is None else f"{100 * g['value']:.0f}%"
            else:
                value = _ratio(g["value"])
                if g["aggregate"] != "min" and g["min"] is not None and len(g["values"]) > 1:
                    value += f" (min {g['min']:.2f}x)"
            met = {True: "met", False: "NOT met", None: "reported only"}[g["met"]]
            rows.append([g["goal"], g["target"], value, met])
        parts.append(format_table(["goal", "target", "measured", "verdict"], rows))
        if any(g["met"] is None for g in goals):
            parts.append("reported only: backbone inference and deploy goals are judged on full CPU runs (not --quick, "
                         "with torch.compile for the fast-path goal)")
    return "\n".join(parts)
