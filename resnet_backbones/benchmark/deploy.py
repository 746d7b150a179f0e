"""CPU deployment: ours against ONNX Runtime and OpenVINO on the same weights, in fp32, bf16 and
int8, and how close each comes to the machine's convolution peak.

For each thread count, depth, body kind (plain, FPN) and input size (batch 1, FrozenBN, the
same random weights and norm statistics as the inference section):

- ``ours``: our backbone, eager, unfolded;
- ``ours fast``: every fast path (folded norms, channels_last, ``winograd_convolutions``,
  ``compile_for_inference``);
- ``onnxruntime`` and ``openvino``: the folded model exported by
  :func:`resnet_backbones.export.export_backbone_onnx` (``torch.onnx.export(dynamo=True)``),
  OpenVINO reshaped to the timed size, both at fp32 (OpenVINO's ``INFERENCE_PRECISION_HINT f32``);
- bf16: ``ours bf16`` (``compile_for_inference(..., dtype=torch.bfloat16)``) and ``openvino
  bf16``, where the CPU has native bfloat16;
- int8: ``ours int8`` (:func:`resnet_backbones.modeling.quantize.quantize_for_inference`, PT2E
  with the X86 inductor quantizer) and ``onnxruntime int8`` (``quantize_static``, QDQ, int8
  weights per channel), both calibrated on the same few images.

Outputs are compared with ``ours`` before timing (max |diff| for fp32, the lowest cosine
similarity of any feature map for bf16 and int8). Every variant of one setting is timed in the
same interleaved rounds, each variant's turn settled by ``SETTLE_S`` seconds of untimed calls of
its own (the runtimes' worker threads, still spinning after their call, would otherwise slow the
variant timed next: see :mod:`resnet_backbones.benchmark.timing`). ``GFLOP/s`` is 2 x
multiply-adds (fvcore's count) / median time, beside the peak: the best of three compute-bound
3x3 convolutions (``PEAK_SHAPES``, compiled and frozen as ours, fp32 and bf16) timed at the same
thread count in the same run.

onnxruntime and openvino are optional (the ``[deploy]`` extra); a runtime that is missing is left
out with a message. Threads: torch's, ONNX Runtime's ``intra_op_num_threads`` and OpenVINO's
``INFERENCE_NUM_THREADS``; inductor generates its kernels for the thread count of the run
(``cpp.threads``), so each thread count compiles anew.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F

from ..analysis import count_backbone
from ..modeling.fold import fold_norms
from ..modeling.inference import compile_for_inference, native_bfloat16
from ..modeling.quantize import quantize_for_inference
from ..modeling.winograd import winograd_convolutions
from .models import backbone_cfg, build_backbone_pair, build_our_backbone, max_abs_diff
from .timing import interleaved

__all__ = ["REFERENCE", "conv_peak", "run_deploy"]

REFERENCE = "ours"
FAST = "ours fast"
#: the runtimes' variant at each precision, which ours at that precision is compared with
ONNXRUNTIME = {"fp32": "onnxruntime", "int8": "onnxruntime int8"}
OPENVINO = {"fp32": "openvino", "bf16": "openvino bf16"}
#: compute-bound 3x3 convolutions (N, C, H, W), C -> C channels: res2-res4 widths at larger sizes
PEAK_SHAPES = ((1, 128, 112, 112), (1, 256, 56, 56), (1, 512, 28, 28))
CALIBRATION_IMAGES = 4
#: untimed calls of a variant before each timed one, in seconds (at least one call)
SETTLE_S = 0.1


def _missing(module: str) -> Optional[str]:
    try:
        __import__(module)
    except ImportError:
        return f"{module} is not installed (pip install 'resnet-backbones[deploy]'): the variants it runs are left out"
    return None


def conv_peak(threads: int, dtype: torch.dtype, *, shapes=PEAK_SHAPES, repeats: int = 9) -> float:
    """GFLOP/s of compiled, frozen 3x3 convolutions (``PEAK_SHAPES``, channels_last, no bias
    traffic to speak of) at ``threads``, the best of them: the machine's practical limit for
    the backbones' convolutions through oneDNN."""
    best = 0.0
    for n, c, h, w in shapes:
        torch.manual_seed(0)
        conv = torch.nn.Conv2d(c, c, 3, padding=1, bias=True).eval().to(memory_format=torch.channels_last)
        model = compile_for_inference(conv, dtype=None if dtype == torch.float32 else dtype)
        x = torch.randn(n, c, h, w).contiguous(memory_format=torch.channels_last)
        with torch._inductor.config.patch({"cpp.threads": threads}):
            model(x)
        timed = interleaved({"conv": lambda: model(x)}, warmup=2, min_repeats=repeats, max_repeats=repeats)
        best = max(best, 2 * c * c * 9 * h * w * n / timed["conv"].median / 1e9)
    return best


def _cosine(a: Any, b: Any) -> float:
    if isinstance(a, dict):
        return min(_cosine(a[k], b[k]) for k in a)
    return float(F.cosine_similarity(a.float().flatten(), b.float().flatten(), dim=0))


class _OnnxRuntime:
    def __init__(self, path: Path, names: List[str], threads: int):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.names = names

    def __call__(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        outputs = self.session.run(self.names, {"image": x.numpy()})
        return {name: torch.from_numpy(value) for name, value in zip(self.names, outputs)}


class _OpenVINO:
    def __init__(self, path: Path, names: List[str], threads: int, shape, precision: str):
        import openvino

        core = openvino.Core()
        model = core.read_model(str(path))
        model.reshape({"image": list(shape)})  # static, as ours compiles for the timed size
        self.request = core.compile_model(model, "CPU", {
            "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": precision,
            "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}).create_infer_request()
        self.names = names

    def __call__(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        results = self.request.infer({"image": x.numpy()})
        by_name = {next(iter(port.get_names())): value for port, value in results.items()}
        return {name: torch.from_numpy(by_name[name].copy()) for name in self.names}


def _onnx_int8(fp32_path: Path, output: Path, calibration: List[torch.Tensor]) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"image": batch.numpy()}

    quantize_static(str(fp32_path), str(output), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return output


def _variants(depth: int, kind: str, size, threads: int, work: Path, seed: int) -> Dict[str, Dict[str, Any]]:
    """name -> {"run": callable of x, "precision": ...}, every variant built for this setting."""
    from ..export import export_backbone_onnx

    cfg = backbone_cfg(depth, kind, torch.device("cpu"))
    ours, _, state = build_backbone_pair(cfg, kind, seed=seed)
    cl_cfg = cfg.clone()
    cl_cfg.MODEL.RESNETS.CHANNELS_LAST = True
    fast_model = fold_norms(build_our_backbone(cl_cfg, kind, state))
    height, width = size
    generator = torch.Generator().manual_seed(seed + 1)
    calibration = [torch.randn(1, 3, height, width, generator=generator) for _ in range(CALIBRATION_IMAGES)]
    variants: Dict[str, Dict[str, Any]] = {
        REFERENCE: {"run": ours, "precision": "fp32"},
        FAST: {"run": compile_for_inference(winograd_convolutions(fast_model)), "precision": "fp32"},
    }
    bf16 = native_bfloat16(torch.device("cpu"))
    if bf16:
        variants["ours bf16"] = {"run": compile_for_inference(fast_model, dtype=torch.bfloat16), "precision": "bf16"}
    if _missing("torchao") is None:
        variants["ours int8"] = {"run": quantize_for_inference(fast_model, calibration), "precision": "int8"}
    if _missing("onnx") or _missing("onnxscript"):
        return variants
    names = list(ours.output_shape())  # the feature maps in forward's order, as the export names them
    onnx_path = work / f"R{depth}_{kind}.onnx"
    if not onnx_path.exists():
        export_backbone_onnx(fold_norms(ours), calibration[0], onnx_path)
    if _missing("onnxruntime") is None:
        variants["onnxruntime"] = {"run": _OnnxRuntime(onnx_path, names, threads), "precision": "fp32"}
        int8_path = work / f"R{depth}_{kind}_{height}x{width}_int8.onnx"
        if not int8_path.exists():
            _onnx_int8(onnx_path, int8_path, calibration)
        variants["onnxruntime int8"] = {"run": _OnnxRuntime(int8_path, names, threads), "precision": "int8"}
    if _missing("openvino") is None:
        shape = (1, 3, height, width)
        variants["openvino"] = {"run": _OpenVINO(onnx_path, names, threads, shape, "f32"), "precision": "fp32"}
        if bf16:
            variants["openvino bf16"] = {"run": _OpenVINO(onnx_path, names, threads, shape, "bf16"),
                                         "precision": "bf16"}
    return variants


def run_deploy(options, log) -> Dict[str, Any]:
    """Rows of (model, size, threads, variant, precision, images/s, ratios, GFLOP/s, % of peak)."""
    rows: List[Dict[str, Any]] = []
    peaks: List[Dict[str, Any]] = []
    notes = [n for n in map(_missing, ("torchao", "onnx", "onnxscript", "onnxruntime", "openvino")) if n]
    if not native_bfloat16(torch.device("cpu")):
        notes.append("this CPU has no native bfloat16 (AVX512-BF16 or AMX): the bf16 columns are left out")
    for note in notes:
        log(f"  deploy: {note}")
    previous_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="deploy_") as work_dir:
        work = Path(work_dir)
        for threads in options.deploy_threads:
            torch.set_num_threads(threads)
            torch._dynamo.reset()
            with torch._inductor.config.patch({"cpp.threads": threads}):
                shapes = PEAK_SHAPES[1:2] if options.quick else PEAK_SHAPES  # --quick: one of them
                peak = {"threads": threads, "fp32_gflops": conv_peak(threads, torch.float32, shapes=shapes)}
                if native_bfloat16(torch.device("cpu")):
                    peak["bf16_gflops"] = conv_peak(threads, torch.bfloat16, shapes=shapes)
                peaks.append(peak)
                log(f"  deploy: {threads} thread(s), 3x3 convolution peak "
                    + ", ".join(f"{k.split('_')[0]} {v:.0f} GFLOP/s" for k, v in peak.items() if k != "threads"))
                for depth in options.depths:
                    for kind in options.kinds:
                        for size in options.sizes:
                            rows += _measure(depth, kind, size, threads, peak, work, options, log)
                            torch._dynamo.reset()
    torch.set_num_threads(previous_threads)
    return {"rows": rows, "peaks": peaks, "notes": notes}


def _ratio(medians: Dict[str, float], reference: Optional[str], name: str) -> Optional[float]:
    """How many times faster ``name`` is than ``reference`` (the same precision's runtime)."""
    if reference is None or reference not in medians:
        return None
    return medians[reference] / medians[name]


def _measure(depth, kind, size, threads, peak, work, options, log) -> List[Dict[str, Any]]:
    height, width = size
    model_name = f"R-{depth}" + ("-FPN" if kind == "fpn" else "")
    variants = _variants(depth, kind, size, threads, work, options.seed)
    x = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(options.seed))
    with torch.no_grad():
        reference = variants[REFERENCE]["run"](x)
        agreement = {}
        for name, variant in variants.items():
            out = variant["run"](x)  # compiles the compiled ones (untimed)
            agreement[name] = (max_abs_diff(out, reference), _cosine(out, reference))
    macs = count_backbone(variants[REFERENCE]["run"], height, width)[-1].macs

    def runner(fn):
        def run():
            with torch.no_grad():
                return fn(x)
        return run

    timed = interleaved({name: runner(v["run"]) for name, v in variants.items()}, warmup=options.warmup,
                        min_repeats=options.min_repeats, max_repeats=options.max_repeats, budget_s=options.budget_s,
                        settle_s=SETTLE_S)
    medians = {name: m.median for name, m in timed.items()}
    rows = []
    for name, variant in variants.items():
        precision = variant["precision"]
        gflops = 2 * macs / medians[name] / 1e9
        peak_key = {"fp32": "fp32_gflops", "bf16": "bf16_gflops"}.get(precision)  # no int8 peak is measured
        rows.append({
            "model": model_name, "depth": depth, "kind": kind, "size": f"{height}x{width}", "threads": threads,
            "variant": name, "precision": precision, "images_per_s": 1 / medians[name],
            "ratio_vs_ours": medians[REFERENCE] / medians[name],
            "ratio_vs_ours_fast_fp32": medians[FAST] / medians[name],
            "ratio_vs_onnxruntime": _ratio(medians, ONNXRUNTIME.get(precision), name),
            "ratio_vs_openvino": _ratio(medians, OPENVINO.get(precision), name),
            "gflops": gflops, "peak_gflops": peak.get(peak_key) if peak_key else None, "macs": macs,
            "max_abs_diff_vs_ours": agreement[name][0], "cosine_vs_ours": agreement[name][1],
            **timed[name].to_dict(),
        })
    log(f"  deploy {model_name} {height}x{width}, {threads} thread(s): " + ", ".join(
        f"{r['variant']} {r['images_per_s']:.2f} img/s" for r in rows))
    return rows
