"""bf16 and int8 inference switches, each against fp32: feature similarity, the demo detector's
detections, the command line, and the refusals.

Each compiles with inductor (about 15-30 s on 2 CPU cores). The demo model's AP at each
precision is the slow test at the end (it trains the demo first).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_backbone, build_model
from detectron2.structures import pairwise_iou

from resnet_backbones.benchmark.models import backbone_cfg
from resnet_backbones.config import load_config
from resnet_backbones.engine.train_net import main
from resnet_backbones.modeling.fold import fold_norms
from resnet_backbones.modeling.inference import compile_for_inference, native_bfloat16
from resnet_backbones.modeling.quantize import quantize_for_inference

from conftest import randomize_norms

CPU = torch.device("cpu")
REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "Demo" / "mask_rcnn_R_18_FPN_synthetic.yaml"
STAGES = ["res2", "res3", "res4", "res5"]
BF16 = native_bfloat16(CPU)


def body(kind="plain", depth=18):
    cfg = backbone_cfg(depth, kind, CPU)
    torch.manual_seed(0)
    return randomize_norms(build_backbone(cfg)).eval()


def images(n, h=96, w=128, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 3, h, w, generator=generator) for _ in range(n)]


def cosines(a, b):
    assert a.keys() == b.keys()
    return {k: float(F.cosine_similarity(a[k].flatten().float(), b[k].flatten().float(), dim=0)) for k in a}


@pytest.fixture
def no_native_bfloat16(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)


def test_bfloat16_is_refused_without_native_support(no_native_bfloat16):
    model = body()
    with pytest.raises(ValueError, match="neither AVX512-BF16 nor AMX"):
        compile_for_inference(model, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="dtype=torch.float16"):
        compile_for_inference(model, dtype=torch.float16)


def test_bfloat16_switch_without_native_support_is_one_error_line(tmp_path, tiny_shapes, no_native_bfloat16, capsys):
    code = main(["--config-file", str(DEMO_CONFIG), *tiny_shapes, "--eval-only", "--inference-precision", "bf16",
                 "OUTPUT_DIR", str(tmp_path), "MODEL.WEIGHTS", "", "DATASETS.TEST", "('tiny_shapes_val',)"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "AVX512-BF16" in err, err


@pytest.mark.skipif(not BF16, reason="the refusal above is this CPU's test")
def test_bfloat16_features_match_float32():
    model = body("plain")
    x = images(1)[0]
    with torch.no_grad():
        expected = model(x)
    compiled = compile_for_inference(fold_norms(model), dtype=torch.bfloat16)
    actual = compiled(x)
    assert compiled.precision == "bfloat16"
    assert set(actual) == set(STAGES) and all(t.dtype == torch.float32 for t in actual.values())
    similarity = cosines(actual, expected)
    assert min(similarity.values()) >= 0.999, similarity
    # it did compute in bfloat16: float32 through the same compiled path agrees ~1000x better
    error = max((actual[k] - expected[k]).abs().max().item() for k in STAGES)
    fp32 = compile_for_inference(fold_norms(model))(x)
    assert max((fp32[k] - expected[k]).abs().max().item() for k in STAGES) < error / 100
    torch._dynamo.reset()


def test_int8_quantizes_every_convolution_and_matches_float32():
    model = body("fpn")
    calibration = images(4)
    quantized = quantize_for_inference(model, calibration)
    assert quantized.precision == "int8"
    program = quantized._compiled._orig_mod
    targets = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    assert targets.count("aten.conv2d.default") == convs
    # every convolution's weight is dequantized from int8 per channel (the quantizer found them all)
    assert targets.count("quantized_decomposed.dequantize_per_channel.default") == convs
    for x in (images(1, seed=7)[0], images(1, 160, 96, seed=8)[0]):  # the calibration size, and another
        with torch.no_grad():
            expected = model(x)
        actual = quantized(x)
        similarity = cosines(actual, expected)
        assert min(similarity.values()) >= 0.99, similarity
        assert {k: v.shape for k, v in actual.items()} == {k: v.shape for k, v in expected.items()}
    torch._dynamo.reset()


def test_int8_needs_calibration_images():
    with pytest.raises(ValueError, match="no input batch"):
        quantize_for_inference(body(), [])
    with pytest.raises(ValueError, match="float tensor"):
        quantize_for_inference(body(), [torch.zeros(3, 64, 64)])


def demo_detector():
    cfg = load_config(str(DEMO_CONFIG), ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    return randomize_norms(build_model(cfg)).eval(), cfg


def matched_share(reference, candidate, iou=0.9) -> float:
    """Share of the reference's boxes that the candidate has, same class, at IoU >= ``iou``."""
    overlaps = pairwise_iou(reference.pred_boxes, candidate.pred_boxes)
    same_class = reference.pred_classes[:, None] == candidate.pred_classes[None, :]
    return float(((overlaps >= iou) & same_class).any(dim=1).float().mean())


@pytest.mark.parametrize("precision", ["bf16", "int8"] if BF16 else ["int8"])
def test_demo_detector_detections_at_low_precision(precision, tiny_shapes):
    from resnet_backbones.data import register_dataset_specs
    from resnet_backbones.engine.low_precision import set_backbone_precision

    register_dataset_specs(tiny_shapes[1::2])  # tiny_shapes_val: the int8 calibration images
    model, cfg = demo_detector()
    image = (torch.rand(3, 128, 128, generator=torch.Generator().manual_seed(3)) * 255)
    inputs = [{"image": image, "height": 128, "width": 128}]
    with torch.no_grad():
        expected = model(inputs)[0]["instances"]
    cfg.defrost()
    cfg.DATASETS.TEST = ("tiny_shapes_val",)
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 128, 128
    set_backbone_precision(cfg, model, precision, num_calibration=4)
    assert model.backbone.precision == {"bf16": "bfloat16", "int8": "int8"}[precision]
    with torch.no_grad():
        actual = model(inputs)[0]["instances"]
    assert len(expected) > 10
    share = matched_share(expected[:20], actual)
    assert share >= (0.9 if precision == "bf16" else 0.75), share
    torch._dynamo.reset()


def test_eval_only_at_int8_on_the_command_line(tmp_path, tiny_shapes):
    overrides = ["DATASETS.TEST", "('tiny_shapes_val',)", "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128",
                 "MODEL.WEIGHTS", "", "DATALOADER.NUM_WORKERS", "0", "TEST.DETECTIONS_PER_IMAGE", "20"]
    code = main(["--config-file", str(DEMO_CONFIG), *tiny_shapes, "--eval-only", "--inference-precision", "int8",
                 "OUTPUT_DIR", str(tmp_path), *overrides])
    assert code == 0
    results = json.loads((tmp_path / "inference" / "tiny_shapes_val" / "coco_instances_results.json").read_text())
    assert results and all(len(r["bbox"]) == 4 for r in results)
    torch._dynamo.reset()


def test_low_precision_is_for_evaluation_only(tmp_path, tiny_shapes, capsys):
    code = main(["--config-file", str(DEMO_CONFIG), *tiny_shapes, "--inference-precision", "int8",
                 "OUTPUT_DIR", str(tmp_path), "MODEL.WEIGHTS", ""])
    assert code == 2 and "only with --eval-only" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_model_ap_at_bf16_and_int8(tmp_path, monkeypatch):
    """The trained demo model (``make demo``) on the synthetic val set: box and mask AP with the
    backbone in bf16 within 0.3 of fp32, in int8 within 1.0."""
    from resnet_backbones.engine.demo import run_demo
    from resnet_backbones.engine.train_net import argument_parser, run

    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "datasets"))
    out = tmp_path / "demo"
    results = {"fp32": run_demo(str(out), data_root=str(tmp_path / "datasets" / "synthetic_shapes"), num_pictures=0)}
    for precision in (["bf16"] if BF16 else []) + ["int8"]:
        args = argument_parser().parse_args([
            "--config-file", str(DEMO_CONFIG), "--eval-only", "--inference-precision", precision,
            "OUTPUT_DIR", str(tmp_path / precision), "MODEL.WEIGHTS", str(out / "model_final.pth")])
        results[precision] = run(args)
        torch._dynamo.reset()
    print(json.dumps({p: {t: r[t]["AP"] for t in ("bbox", "segm")} for p, r in results.items()}))
    for precision, bound in (("bf16", 0.3), ("int8", 1.0)):
        for task in ("bbox", "segm") if precision in results else ():
            assert abs(results[precision][task]["AP"] - results["fp32"][task]["AP"]) <= bound, (precision, task)
