"""``tools/benchmark.py`` (``make bench``): ours against Detectron2's ResNet and pycocotools, in
one run, with the fast paths.

Sections (``--only`` picks some):

- ``inference`` (:mod:`.inference`): backbone images/s, R-50 (and R-101) plain and FPN, at
  224x224 and 800x1216, Detectron2's and ours at the same config and weights, then ours with
  norm folding, channels_last, ``torch.compile`` and, on GPU, AMP.
- ``training`` (:mod:`.training`): Mask R-CNN R-50/R-101-FPN training step time and peak memory
  at batch 2 with either backbone; the backbone's peak training memory with activation
  checkpointing.
- ``coco`` (:mod:`.coco_eval`): ``evaluate_coco`` against pycocotools, 5,000 images x 100
  detections over 80 categories (COCO val2017's shape), bbox and segm, numbers compared.
- ``pipeline`` (:mod:`.pipeline`): pretraining input pipeline images/s by worker count.
- ``deploy`` (:mod:`.deploy`, CPU): ours eager, ours with every fast path, bf16 and int8,
  against ONNX Runtime and OpenVINO (fp32, bf16, int8) on the same weights, by thread count,
  with GFLOP/s beside a compute-bound convolution's peak timed in the same run.

Every comparison is timed in interleaved rounds and reported as medians and ratios from the same
run (:mod:`.timing`). The table is printed, and everything (with the machine and the command)
is written as JSON. ``--quick`` runs smaller settings in under two minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

__all__ = ["SECTIONS", "build_parser", "main", "run_benchmark"]

SECTIONS = ("inference", "training", "coco", "pipeline", "deploy")

# Defaults per profile: (full, quick); device-dependent ones are resolved in _resolve.
_PROFILES: Dict[str, tuple] = {
    "depths": ([50, 101], [50]),
    "kinds": (["plain", "fpn"], ["plain", "fpn"]),
    "warmup": (1, 1),
    "min_repeats": (3, 3),
    "max_repeats": (15, 5),
    "budget_s": (45.0, 4.0),
    "train_batch": (2, 2),
    "train_min_repeats": (5, 2),
    "train_max_repeats": (7, 2),
    "train_budget_s": (60.0, 0.0),
    "eval_images": (5000, 400),
    "eval_detections": (100, 100),
    "eval_repeats": (3, 1),
    "eval_warmup": (0, 0),
    "pipeline_images": (256, 64),
    "pipeline_image_size": (320, 320),
    "pipeline_crop": (224, 224),
    "pipeline_batch": (32, 32),
    "pipeline_repeats": (3, 1),
    "deploy_threads": ([1, 2], [1]),
}
_SIZES = {("cpu", False): ["224x224", "800x1216"], ("cpu", True): ["224x224", "448x672"],
          ("cuda", False): ["224x224", "800x1216"], ("cuda", True): ["224x224", "800x1216"]}
# --quick: lighter R-CNN heads (the step is otherwise dominated by 512 RoIs of box and mask head).
_QUICK_TRAIN_OVERRIDES = ("MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "128", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "500")
_TRAIN_SIZE = {("cpu", False): "512x512", ("cpu", True): "256x256",
               ("cuda", False): "800x1216", ("cuda", True): "512x512"}


def _size(text: str) -> tuple:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HEIGHTxWIDTH (e.g. 800x1216), got {text!r}") from None
    if height < 32 or width < 32:
        raise argparse.ArgumentTypeError(f"size must be at least 32x32, got {text!r}")
    return height, width


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tools/benchmark.py",
        description="Ours against Detectron2's ResNet and pycocotools in one run: medians and ratios, "
                    "printed and written as JSON.")
    parser.add_argument("--quick", action="store_true", help="smaller settings; under 2 minutes on 2 CPU cores")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, metavar="SECTION",
                        help=f"run these sections only (of {', '.join(SECTIONS)})")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: cuda when available")
    parser.add_argument("--threads", type=int, help="torch threads (default: the cores available)")
    parser.add_argument("--output", type=Path, help="JSON file (default output/benchmark/benchmark[_quick].json)")
    parser.add_argument("--cache-dir", type=Path, default=Path("output/benchmark/cache"),
                        help="generated COCO files and images, reused between runs")
    parser.add_argument("--seed", type=int, default=0)
    g = parser.add_argument_group("inference")
    g.add_argument("--depths", type=int, nargs="+", help="ResNet depths (default 50 101; quick: 50)")
    g.add_argument("--kinds", nargs="+", choices=("plain", "fpn"))
    g.add_argument("--sizes", type=_size, nargs="+", help="input sizes HxW (default 224x224 800x1216)")
    g.add_argument("--batch", type=int, default=1, help="images per inference call")
    g.add_argument("--compile", dest="compile", action="store_true", default=None,
                   help="add a torch.compile variant of the one with every other fast path on (default: on, except with --quick)")
    g.add_argument("--no-compile", dest="compile", action="store_false")
    g.add_argument("--no-fold", action="store_true", help="leave out the norm-folding variants")
    g.add_argument("--no-channels-last", action="store_true", help="leave out the channels_last variants")
    g.add_argument("--warmup", type=int)
    g.add_argument("--min-repeats", type=int)
    g.add_argument("--max-repeats", type=int)
    g.add_argument("--budget", dest="budget_s", type=float, help="seconds of timed rounds per comparison")
    g = parser.add_argument_group("training")
    g.add_argument("--train-size", type=_size, help="image size HxW (default: CPU 512x512, GPU 800x1216)")
    g.add_argument("--train-batch", type=int)
    g.add_argument("--train-repeats", type=int, help="timed steps per model")
    g.add_argument("--no-checkpointing", action="store_true", help="leave out the checkpointing variants")
    g.add_argument("--train-overrides", nargs="+", metavar="KEY VALUE",
                   help="config overrides of the Mask R-CNN (quick default: 128 RoIs, 500 proposals per image)")
    g = parser.add_argument_group("coco")
    g.add_argument("--eval-images", type=int)
    g.add_argument("--eval-detections", type=int)
    g.add_argument("--eval-categories", type=int, default=80, help="categories of the generated set (COCO's 80)")
    g.add_argument("--eval-repeats", type=int)
    g.add_argument("--eval-both-backends", action="store_true",
                   help="also time evaluate_coco with --backend pycocotools")
    g = parser.add_argument_group("deploy")
    g.add_argument("--deploy-threads", type=int, nargs="+",
                   help="thread counts of the deploy section (default 1 2; quick: 1); its models and sizes are "
                        "--depths, --kinds and --sizes")
    g = parser.add_argument_group("pipeline")
    g.add_argument("--pipeline-images", type=int)
    g.add_argument("--pipeline-workers", type=int, nargs="+", help="worker counts (default 0 1 2; quick 0 2)")
    g.add_argument("--pipeline-repeats", type=int)
    return parser


def _resolve(args: argparse.Namespace) -> argparse.Namespace:
    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    elif args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    profile = 1 if args.quick else 0
    for key, values in _PROFILES.items():
        if getattr(args, key, None) is None:
            setattr(args, key, values[profile])
    if args.train_repeats is not None:
        args.train_min_repeats = args.train_max_repeats = args.train_repeats
    if args.sizes is None:
        args.sizes = [_size(s) for s in _SIZES[(args.device, args.quick)]]
    if args.train_size is None:
        args.train_size = _size(_TRAIN_SIZE[(args.device, args.quick)])
    if args.compile is None:
        args.compile = not args.quick
    if args.train_overrides is None:
        args.train_overrides = list(_QUICK_TRAIN_OVERRIDES) if args.quick else []
    if len(args.train_overrides) % 2:
        raise ValueError(f"--train-overrides takes KEY VALUE pairs, got {args.train_overrides}")
    if args.pipeline_workers is None:
        args.pipeline_workers = [0, 2] if args.quick else [0, 1, 2]
    if args.output is None:
        args.output = Path("output/benchmark") / ("benchmark_quick.json" if args.quick else "benchmark.json")
    if not 2 <= args.eval_categories <= 1000:
        raise ValueError(f"--eval-categories must be between 2 and 1000, got {args.eval_categories}")
    for name in ("batch", "train_batch", "eval_images", "eval_detections", "eval_repeats", "pipeline_images",
                 "pipeline_repeats", "min_repeats", "max_repeats"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}")
    if any(t < 1 for t in args.deploy_threads):
        raise ValueError(f"--deploy-threads {args.deploy_threads}: each at least 1")
    if args.only and "deploy" in args.only and args.device != "cpu":
        raise ValueError("--only deploy: the deploy section measures CPU inference (--device cpu)")
    if any(w < 0 for w in args.pipeline_workers):
        raise ValueError(f"--pipeline-workers must be >= 0, got {args.pipeline_workers}")
    bad_depths = [d for d in args.depths if d not in (18, 34, 50, 101, 152, 200)]
    if bad_depths:
        raise ValueError(f"--depths {bad_depths}: each must be one of 18, 34, 50, 101, 152, 200")
    if "fpn" in args.kinds and any(h % 32 or w % 32 for h, w in args.sizes):
        raise ValueError(f"--sizes {args.sizes}: FPN inputs must be multiples of 32")
    return args


def run_benchmark(args: argparse.Namespace, argv: Sequence[str], log=None) -> Dict[str, Any]:
    """Runs the sections of resolved ``args``; returns the results (as written to JSON)."""
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the CPU profiler's start/stop chatter
    import torch

    from .timing import available_cpus, load_average, machine_info

    log = log or _stderr_log
    threads = args.threads or available_cpus()
    load = load_average()
    if load and load[0] > available_cpus():
        log(f"note: load average {load[0]:.1f} on {available_cpus()} cores: other processes compete for them, "
            "absolute times will be noisy (ratios are from interleaved runs; --threads 1 is steadier)")
    torch.set_num_threads(threads)
    device = torch.device(args.device)
    sections = list(args.only or SECTIONS)
    results: Dict[str, Any] = {
        "format": "resnet_backbones.benchmark/1",
        "command": "python tools/benchmark.py " + " ".join(argv),
        "quick": bool(args.quick),
        "machine": machine_info(device, threads),
        "settings": _settings(args),
        "sections": sections,
    }
    started = time.perf_counter()
    for section in sections:
        log(f"[{time.perf_counter() - started:6.1f} s] {section} ...")
        if section == "inference":
            from .inference import run_inference

            results["inference"] = run_inference(args, device, log)
        elif section == "training":
            from .training import run_training

            results["training"] = run_training(args, device, log)
        elif section == "coco":
            from .coco_eval import run_coco_eval_benchmark

            results["coco"] = run_coco_eval_benchmark(args, log)
        elif section == "pipeline":
            from .pipeline import run_pipeline

            results["pipeline"] = run_pipeline(args, log)
        elif section == "deploy":
            if device.type != "cpu":
                log("  deploy: skipped, it measures CPU inference (--device cpu)")
                continue
            from .deploy import run_deploy

            results["deploy"] = run_deploy(args, log)
    from .report import evaluate_goals

    results["goals"] = evaluate_goals(results, device.type)
    results["seconds"] = time.perf_counter() - started
    results["machine"]["load_average_at_end"] = load_average()
    log(f"[{results['seconds']:6.1f} s] done")
    return results


def _settings(args: argparse.Namespace) -> Dict[str, Any]:
    settings = {}
    for key, value in vars(args).items():
        if isinstance(value, Path):
            value = str(value)
        elif key in ("sizes",):
            value = [f"{h}x{w}" for h, w in value]
        elif key == "train_size":
            value = f"{value[0]}x{value[1]}"
        settings[key] = value
    return settings


def _stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def main(argv: Optional[List[str]] = None) -> int:
    """Runs the benchmark; prints the table, writes the JSON; returns the exit status (2 for bad
    arguments, with one ``error: ...`` line)."""
    from ..cli import exits_cleanly

    argv = list(sys.argv[1:] if argv is None else argv)

    @exits_cleanly
    def run() -> int:
        args = _resolve(build_parser().parse_args(argv))
        from .. import compat  # noqa: F401  (before detectron2)
        from ..fileio import write_json_atomic
        from .report import format_report

        results = run_benchmark(args, argv)
        print(format_report(results))
        write_json_atomic(args.output, _json_safe(results), indent=2, allow_nan=False)
        print(f"\nwrote {args.output}")
        return 0

    return run()
