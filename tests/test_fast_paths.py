"""The fast paths give the results of the plain path, and the benchmark runs.

Correctness only: speed is what ``tools/benchmark.py`` reports, never asserted here.
- norm folding (``resnet_backbones.modeling.fold``): equal outputs within 1e-4;
- ``MODEL.RESNETS.CHANNELS_LAST``: equal outputs;
- ``torch.compile``: the backbone compiles as one graph (no graph breaks), equal outputs; compiled
  for inference, its weights are frozen (constants of the compiled code);
- ``MODEL.RESNETS.CHECKPOINT_STAGES``: equal outputs and gradients, and at least 40% less peak
  training memory of the backbone, measured as the benchmark measures it
  (:func:`resnet_backbones.benchmark.timing.peak_memory_bytes`);
- the benchmark's ``main`` on tiny settings writes the JSON it documents.
"""
from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from detectron2.modeling import build_backbone, build_model
from torch import nn
from torch._inductor.utils import run_and_get_code

from resnet_backbones.benchmark import main as benchmark_main
from resnet_backbones.benchmark.models import backbone_cfg, mask_rcnn_cfg, max_abs_diff
from resnet_backbones.benchmark.report import evaluate_goals
from resnet_backbones.benchmark.timing import interleaved, peak_memory_bytes
from resnet_backbones.config import NEW_KEYS
from resnet_backbones.modeling.fold import fold_norms, folded_convs
from resnet_backbones.modeling.inference import compile_for_inference, native_bfloat16
from resnet_backbones.modeling.layers import ConvNorm

from conftest import randomize_norms

CPU = torch.device("cpu")
REPO = Path(__file__).resolve().parents[1]

# pycocotools' mask code under NumPy 2 warns on every mask (in the benchmark's COCO section).
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)
STAGES = ["res2", "res3", "res4", "res5"]


def build(depth=18, kind="fpn", freeze_at=2, **resnets):
    cfg = backbone_cfg(depth, kind, CPU, **resnets)
    cfg.MODEL.BACKBONE.FREEZE_AT = freeze_at
    torch.manual_seed(0)
    return randomize_norms(build_backbone(cfg)).eval(), cfg


def outputs_close(a, b, atol=1e-4):
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].abs().max() > 1e-2, "degenerate comparison"
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0)


def image(h=64, w=96, seed=1, batch=2):
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


def norm_convs(model):
    return [m for m in model.modules() if isinstance(m, nn.Conv2d) and getattr(m, "norm", None) is not None]


# ---- folding --------------------------------------------------------------------------------


@pytest.mark.parametrize("depth, kind, norm, fpn_norm", [
    (50, "plain", "FrozenBN", ""),
    (50, "fpn", "FrozenBN", ""),
    (18, "fpn", "BN", "BN"),  # eval-mode BN, also in the FPN
    (50, "plain", "SyncBN", ""),  # plain BN in one process
])
def test_folding_equals_unfolded(depth, kind, norm, fpn_norm):
    model, cfg = build(depth, kind, freeze_at=0, NORM=norm)
    if fpn_norm:
        cfg = cfg.clone()
        cfg.MODEL.FPN.NORM = fpn_norm
        torch.manual_seed(0)
        model = randomize_norms(build_backbone(cfg)).eval()
    before = len(norm_convs(model))
    folded = fold_norms(model)
    assert len(folded_convs(folded)) == before > 0
    assert not norm_convs(folded), "every FrozenBN/eval BN is folded"
    assert len(norm_convs(model)) == before, "the original is untouched (folding works on a copy)"
    x = image(64, 64, batch=1)
    with torch.no_grad():
        outputs_close(folded(x), model(x))


@pytest.mark.skipif("MODEL.RESNETS.PREACT" not in NEW_KEYS, reason="no pre-activation variant")
def test_folding_leaves_pre_activation_norms_alone():
    """A pre-activation norm acts on the convolution's input (through a ReLU): not foldable."""
    model, _ = build(18, "plain", freeze_at=0, NORM="BN", PREACT=True)
    pre = [m for m in norm_convs(model) if getattr(m, "norm_first", False)]
    assert pre
    folded = fold_norms(model)
    assert not any(name in folded_convs(folded) for name, m in model.named_modules() if m in pre)
    x = image(64, 64, batch=1)
    with torch.no_grad():
        outputs_close(folded(x), model(x))


def test_folding_in_place_keeps_dtype_requires_grad_and_leaves_other_norms():
    model, _ = build(18, "plain", freeze_at=0, NORM="GN")  # GN is no fixed affine map: not folded
    assert fold_norms(model, inplace=True) is model
    assert folded_convs(model) == ()
    model, _ = build(18, "plain", freeze_at=0, NORM="BN")
    model.train()  # BN in training mode normalizes with batch statistics: not folded
    assert folded_convs(fold_norms(model)) == ()
    model.eval()
    conv = model.stem.conv1
    requires_grad = conv.weight.requires_grad
    fold_norms(model, inplace=True)
    assert conv.norm is None and conv.bias is not None
    assert conv.weight.dtype == conv.bias.dtype == torch.float32
    assert conv.weight.requires_grad == conv.bias.requires_grad == requires_grad


def test_folding_applies_after_loading_unfolded_checkpoints():
    """Checkpoints load into the unfolded model as always; folding comes after."""
    model, cfg = build(18, "fpn")
    state = model.state_dict()
    assert any(k.endswith("conv1.norm.running_var") for k in state)
    fresh = build_backbone(cfg).eval()
    fresh.load_state_dict(state, strict=True)
    folded = fold_norms(fresh)
    assert not any(".norm." in k for k in folded.state_dict() if "fpn" not in k)
    with torch.no_grad():
        outputs_close(folded(image()), model(image()))


def test_folding_a_whole_detector_in_eval_mode():
    cfg = mask_rcnn_cfg(18, CPU)
    torch.manual_seed(0)
    model = randomize_norms(build_model(cfg)).eval()
    folded = fold_norms(model)
    assert len(folded_convs(folded)) == len(norm_convs(model)) > 0
    x = image(128, 128, batch=2)
    with torch.no_grad():
        a = model.backbone(x)
        b = folded.backbone(x)
    outputs_close(a, b)


# ---- fixed norms in place ---------------------------------------------------------------------


@pytest.mark.parametrize("norm, mode", [("FrozenBN", "eval"), ("FrozenBN", "train"), ("BN", "eval"), ("BN", "train")])
def test_fixed_norms_apply_in_place_where_nothing_needs_gradients(norm, mode):
    torch.manual_seed(0)
    conv = randomize_norms(ConvNorm(8, 16, 3, norm=norm)).train(mode == "train")
    x = torch.randn(2, 8, 20, 20)
    raw = nn.functional.conv2d(x, conv.weight, None, conv.stride, conv.padding)
    expected = conv.norm(raw).detach()  # a training BN normalises by the batch: calls agree
    with torch.no_grad():
        outputs = conv(x)
    torch.testing.assert_close(outputs, expected, atol=1e-6, rtol=1e-6)
    with_grad = conv(x)
    assert with_grad.grad_fn is not None  # with gradients, the norm's own differentiable path
    torch.testing.assert_close(with_grad.detach(), expected, atol=1e-6, rtol=1e-6)


# ---- channels_last ----------------------------------------------------------------------------

needs_key = pytest.mark.skipif(
    "MODEL.RESNETS.CHANNELS_LAST" not in NEW_KEYS or "MODEL.RESNETS.CHECKPOINT_STAGES" not in NEW_KEYS,
    reason="CHANNELS_LAST / CHECKPOINT_STAGES config keys not present",
)


@needs_key
@pytest.mark.parametrize("depth, kind", [(50, "plain"), (18, "fpn")])
def test_channels_last_equals_contiguous(depth, kind):
    model, cfg = build(depth, kind)
    cl_cfg = cfg.clone()
    cl_cfg.MODEL.RESNETS.CHANNELS_LAST = True
    cl_model = build_backbone(cl_cfg).eval()
    cl_model.load_state_dict(model.state_dict(), strict=True)
    x = image(64, 64, batch=1)
    with torch.no_grad():
        expected, actual = model(x), cl_model(x)  # the model converts its (contiguous) input itself
    outputs_close(actual, expected)
    assert all(v.is_contiguous(memory_format=torch.channels_last) for v in actual.values()), \
        "features stay channels_last through the backbone and FPN"
    with torch.no_grad():
        outputs_close(fold_norms(cl_model)(x), expected)  # folding keeps working in channels_last


# ---- torch.compile ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["plain", "fpn"])
def test_backbone_compiles_without_graph_breaks_and_equals_eager(kind):
    model, _ = build(18, kind)
    x = image(64, 64, batch=1)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    # fullgraph=True fails on any graph break; aot_eager traces forward and backward graphs as
    # inductor does, without its (minutes-long on CPU) code generation.
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        outputs_close(compiled(x), model(x), atol=1e-5)
    torch._dynamo.reset()


@needs_key
def test_fast_paths_together_compile_without_graph_breaks():
    model, cfg = build(18, "fpn")
    cfg = cfg.clone()
    cfg.MODEL.RESNETS.CHANNELS_LAST = True
    fast = build_backbone(cfg).eval()
    fast.load_state_dict(model.state_dict())
    fast = fold_norms(fast)
    x = image(64, 64, batch=1)
    torch._dynamo.reset()
    assert torch._dynamo.explain(fast)(x).graph_break_count == 0
    with torch.no_grad():
        outputs_close(torch.compile(fast, fullgraph=True, backend="aot_eager")(x), model(x))
    torch._dynamo.reset()


@needs_key
def test_compile_for_inference_freezes_the_weights_and_equals_eager():
    """Inductor with freezing (real code generation, ~20 s on 2 CPU cores), as the backbone of a
    Mask R-CNN: equal features and detections, and the weights are constants of the compiled
    code, which is what lets inductor pack them for oneDNN (a plain torch.compile would follow
    a change of the weights)."""
    cfg = mask_rcnn_cfg(18, CPU)
    cfg.MODEL.RESNETS.CHANNELS_LAST = True
    torch.manual_seed(0)
    model = randomize_norms(build_model(cfg)).eval()
    eager_backbone = model.backbone
    # 64x64 is already a multiple of the size divisibility: the detector's padded batch and x
    # have the same shape, so the backbone compiles once.
    x = image(64, 64, batch=1)
    inputs = [{"image": (x[0] * 50 + 100).clamp(0, 255)}]
    with torch.no_grad():
        expected = eager_backbone(x)
        expected_instances = model(inputs)[0]["instances"]
    torch._dynamo.reset()
    compiled = compile_for_inference(fold_norms(eager_backbone))
    model.backbone = compiled
    actual = compiled(x)
    outputs_close(actual, expected)
    instances = model(inputs)[0]["instances"]
    assert len(instances) == len(expected_instances) > 0
    torch.testing.assert_close(instances.pred_boxes.tensor, expected_instances.pred_boxes.tensor, atol=1e-3, rtol=0)
    assert compiled.output_shape() == eager_backbone.output_shape()
    assert compiled.size_divisibility == eager_backbone.size_divisibility
    assert not any(p.requires_grad for p in compiled.parameters())
    assert set(compiled.state_dict()) == {"model." + k for k in compiled.model.state_dict()}, \
        "the compiled module is not registered a second time"
    with torch.no_grad():
        for parameter in compiled.model.parameters():
            parameter.mul_(0.5)
        changed = compiled.model(x)
    assert max_abs_diff(changed, actual) > 1e-2, "halving every weight changes the eager output"
    # Not followed, as an unfrozen compiled model would (inductor may still share some constants,
    # such as biases, with the module: changing the weights after compiling is not supported).
    assert max_abs_diff(compiled(x), changed) > 1e-2, "frozen: the convolution weights are constants of the compiled code"
    with pytest.raises(RuntimeError, match="inference only"):
        model.train()
    torch._dynamo.reset()


@needs_key
@pytest.mark.parametrize("cpp_wrapper", [None, False])
def test_compile_for_inference_wraps_the_kernels_in_cpp_on_cpu_unless_told(cpp_wrapper):
    """The default on CPU is inductor's C++ wrapper (the kernels called from generated C++, not
    Python); ``cpp_wrapper=False`` keeps Python's; both equal eager."""
    model, _ = build(18, "plain")
    x = image(64, 64, batch=1)
    with torch.no_grad():
        expected = model(x)
    torch._dynamo.reset()
    compiled = compile_for_inference(fold_norms(model), cpp_wrapper=cpp_wrapper)
    assert compiled.cpp_wrapper is (cpp_wrapper is None)
    actual, code = run_and_get_code(compiled, x)
    outputs_close(actual, expected)
    # the Python wrapper defines call(args) in Python; the C++ one loads a compiled module
    assert any("def call(" in c for c in code) is (cpp_wrapper is False)
    torch._dynamo.reset()


KEPT_MEMORY_PROBE = """
import ctypes, torch
from resnet_backbones.modeling.inference import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
big = 100 * 2 ** 20
buffer = torch.empty(big, dtype=torch.uint8)
before = libc.mallinfo2().hblkhd  # mapped for this buffer alone, unmapped on free
del buffer
assert keep_freed_memory()
buffer = torch.empty(big, dtype=torch.uint8)
after = libc.mallinfo2()
del buffer
print(before >= big, after.hblkhd < big, libc.mallinfo2().fordblks >= big)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc: keep_freed_memory does nothing elsewhere")
def test_keep_freed_memory_serves_large_buffers_from_the_kept_heap():
    """What compile_for_inference does to malloc (in a fresh process: it lasts): a 100 MiB
    buffer gets its own mapping before, comes from the heap after, and stays there once freed
    (so the next call of a model finds its pages already faulted in)."""
    result = subprocess.run([sys.executable, "-c", KEPT_MEMORY_PROBE], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["True", "True", "True"], result.stdout + result.stderr


@needs_key
def test_training_with_checkpointing_compiles_without_graph_breaks():
    cfg = backbone_cfg(18, "plain", CPU, NORM="BN", CHECKPOINT_STAGES=["stem", *STAGES])
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    torch.manual_seed(0)
    model = build_backbone(cfg).train()
    x = image(64, 64, batch=2)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch._dynamo.reset()


# ---- activation checkpointing ---------------------------------------------------------------


def training_step(model, x):
    model.zero_grad(set_to_none=False)
    outputs = model(x)
    sum(o.pow(2).mean() for o in outputs.values()).backward()
    return {k: v.detach() for k, v in outputs.items()}


@needs_key
def test_checkpointing_gives_equal_results_and_saves_memory():
    cfg = backbone_cfg(50, "fpn", CPU, NORM="BN")
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    torch.manual_seed(0)
    plain = randomize_norms(build_backbone(cfg)).train()
    ckpt_cfg = cfg.clone()
    ckpt_cfg.MODEL.RESNETS.CHECKPOINT_STAGES = ["stem", *STAGES]
    ckpt = build_backbone(ckpt_cfg).train()
    ckpt.load_state_dict(plain.state_dict(), strict=True)
    x = image(128, 128, batch=2)

    outputs_plain, outputs_ckpt = training_step(plain, x), training_step(ckpt, x)
    outputs_close(outputs_ckpt, outputs_plain, atol=1e-5)
    grads_plain = dict((n, p.grad) for n, p in plain.named_parameters() if p.requires_grad)
    grads_ckpt = dict((n, p.grad) for n, p in ckpt.named_parameters() if p.requires_grad)
    assert grads_plain.keys() == grads_ckpt.keys()
    for name in grads_plain:
        torch.testing.assert_close(grads_ckpt[name], grads_plain[name], atol=1e-5, rtol=1e-4, msg=name)
    for (name, a), (_, b) in zip(plain.named_buffers(), ckpt.named_buffers()):
        torch.testing.assert_close(b, a, msg=f"BN statistics advance once per step: {name}")

    # Gradients are allocated by the steps above: the peak is what the step adds (activations).
    peak_plain = peak_memory_bytes(lambda: training_step(plain, x), CPU)
    peak_ckpt = peak_memory_bytes(lambda: training_step(ckpt, x), CPU)
    assert peak_plain and peak_ckpt
    print(f"peak training memory: {peak_plain / 2**20:.1f} MiB, checkpointing {peak_ckpt / 2**20:.1f} MiB")
    assert peak_ckpt <= 0.6 * peak_plain, f"{peak_ckpt / 2**20:.1f} MiB vs {peak_plain / 2**20:.1f} MiB"


def test_peak_memory_measures_what_a_call_allocates():
    def allocate():
        a = torch.empty(4 * 2**20, dtype=torch.uint8)  # 4 MiB, freed at once
        b = torch.empty(8 * 2**20, dtype=torch.uint8)
        del a, b

    peak = peak_memory_bytes(allocate, CPU)
    assert 12 * 2**20 <= peak < 13 * 2**20


# ---- the benchmark ----------------------------------------------------------------------------


def test_benchmark_quick_writes_its_json(tmp_path, capsys):
    output = tmp_path / "bench.json"
    status = benchmark_main([
        "--quick", "--only", "inference", "coco", "pipeline", "--threads", "1",
        "--depths", "18", "--kinds", "plain", "--sizes", "64x64", "--no-channels-last",
        "--min-repeats", "1", "--max-repeats", "1", "--warmup", "1",
        "--eval-images", "12", "--eval-detections", "20",
        "--pipeline-images", "8", "--pipeline-workers", "0",
        "--cache-dir", str(tmp_path / "cache"), "--output", str(output),
    ])
    assert status == 0
    printed = capsys.readouterr().out
    assert "Backbone inference" in printed and "COCO evaluation" in printed and "Goals" in printed
    results = json.loads(output.read_text())
    assert results["sections"] == ["inference", "coco", "pipeline"]
    assert {"cpu", "cpu_cores_available", "torch_threads", "torch", "device"} <= results["machine"].keys()
    assert results["command"].startswith("python tools/benchmark.py --quick")

    inference = results["inference"]["rows"]
    assert [r["variant"] for r in inference] == ["detectron2", "ours", "ours+fold"]
    for row in inference:
        assert row["images_per_s"] > 0 and row["ratio_vs_detectron2"] > 0
        assert row["model"] == "R-18" and row["size"] == "64x64" and len(row["times_s"]) == 1
    diffs = results["inference"]["checks"][0]["max_abs_diff"]
    # ours applies fixed norms in place (x * scale + shift): equal to Detectron2's up to rounding
    assert diffs["detectron2"] < 1e-5 and diffs["ours+fold"] < 1e-4

    coco = results["coco"]["rows"]
    assert {(r["iou_type"], r["tool"]) for r in coco} == {
        (iou, tool) for iou in ("bbox", "segm") for tool in ("pycocotools", "evaluate_coco (faster-coco-eval)")}
    assert all(r["identical"] and len(r["stats"]) == 12 for r in coco)

    pipeline = results["pipeline"]["rows"]
    assert [r["workers"] for r in pipeline] == [0] and pipeline[0]["images"] == 8

    goals = {g["goal"]: g for g in results["goals"]}
    assert any(name.startswith("COCO evaluation") for name in goals)
    assert all(isinstance(g["met"], (bool, type(None))) for g in goals.values())
    assert all(g["met"] is None for name, g in goals.items() if name.startswith("backbone inference")), \
        "a --quick run reports the inference goals without judging them"


def inference_rows(ratios, last_switches):
    rows = []
    for model in ("R-50", "R-50-FPN"):
        for variant, ratio in zip(("detectron2", "ours", "ours+fold+channels_last"), ratios):
            switches = last_switches if variant.startswith("ours+") else {}
            rows.append({"model": model, "size": "224x224", "variant": variant, "switches": switches,
                         "ratio_vs_detectron2": ratio})
    return {"rows": rows}


@pytest.mark.parametrize("quick, switches, equal_met, fast_met", [
    (False, {"fold_norms": True, "channels_last": True, "compile": True}, True, True),
    (False, {"fold_norms": True, "channels_last": True}, True, None),  # no compile: not all fast paths
    (True, {"fold_norms": True, "channels_last": True, "compile": True}, None, None),
])
def test_inference_goals_are_judged_on_full_runs_only(quick, switches, equal_met, fast_met):
    results = {"quick": quick, "inference": inference_rows([1.0, 1.02, 1.3], switches)}
    goals = {g["goal"]: g for g in evaluate_goals(results, "cpu")}
    assert goals["backbone inference (cpu), ours vs Detectron2 at equal settings"]["met"] is equal_met
    assert goals["backbone inference (cpu), ours with all fast paths on vs Detectron2"]["met"] is fast_met
    slow = {"quick": False, "inference": inference_rows([1.0, 0.9, 1.2], switches)}
    verdicts = [g["met"] for g in evaluate_goals(slow, "cpu")]
    assert verdicts == [False, False if switches.get("compile") else None], "a full run judges"


def test_settled_rounds_time_each_candidate_after_calls_of_its_own():
    """A candidate slowed by the one before it (as by a runtime's threads still spinning) is timed
    at its steady speed once turns are settled; unsettled, some of its timed calls are the slow ones."""
    calls = []

    def candidate(name):
        def call():
            time.sleep(0.03 if calls and calls[-1] != name else 0.001)
            calls.append(name)
        return call

    candidates = {"ours": candidate("ours"), "theirs": candidate("theirs")}
    settled = interleaved(candidates, warmup=1, min_repeats=4, max_repeats=4, settle_s=0.005)
    runs = [len(list(group)) for _, group in itertools.groupby(calls)]
    assert min(runs) >= 2 and len(calls) >= 2 * 2 * (1 + 4)  # every timed call follows one of its own
    assert all(len(m.times) == 4 and max(m.times) < 0.02 for m in settled.values())
    calls.clear()
    unsettled = interleaved(candidates, warmup=1, min_repeats=4, max_repeats=4)
    assert len(calls) == 2 * (1 + 4)
    assert all(max(m.times) >= 0.03 for m in unsettled.values())


def test_deploy_goals_hold_at_every_setting_and_are_judged_on_full_runs_only():
    def row(variant, size, vs_ort, vs_ov, gflops, fast_ratio=1.0):
        return {"variant": variant, "size": size, "ratio_vs_onnxruntime": vs_ort, "ratio_vs_openvino": vs_ov,
                "gflops": gflops, "peak_gflops": 100.0, "ratio_vs_ours_fast_fp32": fast_ratio}
    rows = [row("ours fast", "224x224", 1.10, 1.06, 80), row("ours fast", "800x1216", 1.07, 1.04, 92),
            row("ours bf16", "800x1216", None, 0.9, 150, fast_ratio=1.9)]
    goals = {g["goal"]: g for g in evaluate_goals({"quick": False, "deploy": {"rows": rows}}, "cpu")}
    verdicts = {name.split(", ", 1)[-1]: (g["value"], g["met"]) for name, g in goals.items()}
    assert verdicts == {
        "ours (every fast path) vs ONNX Runtime": (1.07, True),
        "ours (every fast path) vs OpenVINO": (1.04, False),  # the smallest setting decides
        "ours: share of the 3x3 convolution peak": (0.92, True),  # at 800x1216 only
        "CPU deploy bf16 vs ours fp32 (every fast path)": (1.9, True),
    }
    quick = evaluate_goals({"quick": True, "deploy": {"rows": rows}}, "cpu")
    assert [g["met"] for g in quick] == [None] * 4


def test_benchmark_deploy_section_compares_every_runtime_on_the_same_weights(tmp_path):
    """ours eager, compiled fp32, bf16 and int8 against ONNX Runtime (fp32, int8) and OpenVINO
    (fp32, bf16), on one tiny setting: the outputs agree before anything is timed.

    In a process of its own: OpenVINO's and ONNX Runtime's thread pools, once started, crash a
    later torchrun test of this session (a segmentation fault in the pytest process)."""
    output = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(REPO / "tools" / "benchmark.py"), "--quick", "--only", "deploy",
                             "--depths", "18", "--kinds", "plain", "--sizes", "64x64", "--deploy-threads", "1",
                             "--min-repeats", "1", "--max-repeats", "1", "--output", str(output)],
                            capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "CPU deployment" in result.stdout
    deploy = json.loads(output.read_text())["deploy"]
    rows = {r["variant"]: r for r in deploy["rows"]}
    bf16 = native_bfloat16(CPU)
    assert set(rows) == {"ours", "ours fast", "ours int8", "onnxruntime", "onnxruntime int8", "openvino"} | (
        {"ours bf16", "openvino bf16"} if bf16 else set())
    for name, row in rows.items():
        assert row["images_per_s"] > 0 and row["macs"] == rows["ours"]["macs"] > 0
        if row["precision"] == "fp32":
            assert row["max_abs_diff_vs_ours"] < 1e-3, name  # the same weights through each runtime
        else:
            assert row["cosine_vs_ours"] > 0.99, name
    assert rows["ours int8"]["ratio_vs_onnxruntime"] == pytest.approx(
        rows["onnxruntime int8"]["median_s"] / rows["ours int8"]["median_s"])
    peak = deploy["peaks"][0]
    assert peak["threads"] == 1 and peak["fp32_gflops"] > 1 and rows["ours fast"]["peak_gflops"] == peak["fp32_gflops"]
    assert rows["ours int8"]["peak_gflops"] is None


def test_benchmark_training_section_on_a_tiny_model(tmp_path):
    output = tmp_path / "bench.json"
    status = benchmark_main([
        "--quick", "--only", "training", "--threads", "1", "--depths", "18", "--train-size", "64x64",
        "--train-repeats", "1", "--train-overrides", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16",
        "MODEL.RPN.POST_NMS_TOPK_TRAIN", "50", "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
        "MODEL.ROI_MASK_HEAD.CONV_DIM", "16", "--output", str(output),
    ])
    assert status == 0
    training = json.loads(output.read_text())["training"]
    rows = {r["variant"]: r for r in training["rows"]}
    assert set(rows) == {"detectron2", "ours"}
    assert rows["ours"]["step_s"] > 0 and rows["ours"]["peak_memory_bytes"] > 0
    assert rows["detectron2"]["max_abs_loss_diff_vs_ours"] < 1e-4, "same weights, same losses"
    if "MODEL.RESNETS.CHECKPOINT_STAGES" in NEW_KEYS:
        memory = training["backbone_memory"]
        assert {(r["norm"], r["variant"]) for r in memory} == {
            (n, v) for n in ("FrozenBN", "BN") for v in ("ours", "ours+checkpointing")}
        for row in memory:
            if row["variant"] == "ours+checkpointing":
                assert row["max_abs_output_diff_vs_ours"] < 1e-5 and row["max_abs_grad_diff_vs_ours"] < 1e-5


@pytest.mark.parametrize("argv, message", [
    (["--sizes", "64"], "HEIGHTxWIDTH"),
    (["--sizes", "70x70", "--kinds", "fpn"], "multiples of 32"),
    (["--depths", "42"], "--depths [42]"),
    (["--eval-images", "0"], "--eval-images must be at least 1"),
    (["--device", "cuda"] if not torch.cuda.is_available() else ["--threads", "0"], "error"),
])
def test_benchmark_rejects_bad_arguments(argv, message, capsys):
    try:
        status = benchmark_main(argv)
    except SystemExit as exit_:  # argparse's own errors
        status = exit_.code
    assert status == 2
    assert message in capsys.readouterr().err




# ---- the COCO evaluation fast path ------------------------------------------------------------


def test_fast_coco_evaluation_path_is_active_and_gives_pycocotools_numbers():
    """evaluate_coco's faster-coco-eval backend loads results and computes mask IoUs its own way
    (resnet_backbones.evaluation.backends): same 12 numbers as pycocotools, bit for bit."""
    from resnet_backbones.evaluation import backends, evaluate_coco, run_coco_eval
    from resnet_backbones.evaluation.synthetic_results import synthetic_ground_truth, synthetic_results

    selected = backends._load_backend("faster-coco-eval")
    assert selected.fast_results and selected.segm_cocoeval_class is not None, \
        "faster-coco-eval's internals changed: the segm fast path is off"
    ground_truth = synthetic_ground_truth(40, seed=7)  # polygons, crowd RLE, empty images
    for iou_type in ("bbox", "segm"):
        results = synthetic_results(ground_truth, iou_type, detections_per_image=30, seed=8)
        fast = run_coco_eval(ground_truth, results, iou_type, backend="faster-coco-eval")
        reference = run_coco_eval(ground_truth, results, iou_type, backend="pycocotools")
        assert list(fast.stats) == list(reference.stats)
        # C++ and Python accumulate precision in different orders: 1-ulp differences, as ever.
        assert abs(fast.eval["precision"] - reference.eval["precision"]).max() <= 1e-12
        if iou_type == "segm":
            assert type(fast).__name__ == "COCOevalFasterMaskIoU" and fast._pycocotools_ious
            assert fast.params.compute_rle, "params are restored after evaluate()"
    # Mask results that carry boxes: COCO then takes areas from the boxes (loadRes's rule).
    segm = synthetic_results(ground_truth, "segm", detections_per_image=30, seed=8)
    boxes = synthetic_results(ground_truth, "bbox", detections_per_image=30, seed=8)
    with_boxes = [dict(s, bbox=b["bbox"]) for s, b in zip(segm, boxes)]
    fast = evaluate_coco(ground_truth, with_boxes, "segm", backend="faster-coco-eval")
    reference = evaluate_coco(ground_truth, with_boxes, "segm", backend="pycocotools")
    assert fast == reference


def test_gc_paused_restores_the_collector():
    import gc

    from resnet_backbones.evaluation.backends import gc_paused

    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled(), "a collector that was off stays off"
    finally:
        gc.enable()
