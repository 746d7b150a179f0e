"""Deployment export: scripting equals eager for body, FPNs and the C4 head; the exported demo
Mask R-CNN (ONNX run by onnxruntime, TorchScript loaded back), RetinaNet and Faster R-CNN (ONNX,
scripted) give PyTorch's detections;
torch.export of the backbone; folding and channels_last survive; the tool's bad input."""
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.modeling import build_backbone, build_model
from detectron2.modeling.postprocessing import detector_postprocess
from PIL import Image

from resnet_backbones.config import load_config
from resnet_backbones.data import DEMO_STYLE, ensure_synthetic_coco
from resnet_backbones.data.synthetic_coco import coco_split_paths
from resnet_backbones.export import (build_model_from_config, detector_inference, export_backbone_program, export_detector,
                                     instances_from_outputs,
                                     load_torchscript, main, prepare_image, run_onnx, script_detector,
                                     script_module)
from resnet_backbones.modeling.arch import ResNetArch
from resnet_backbones.modeling.fold import fold_norms
from resnet_backbones.modeling.resnet import ResNet

from conftest import randomize_norms

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = str(ROOT / "configs/Demo/mask_rcnn_R_18_FPN_synthetic.yaml")
LAZY_DEMO_CONFIG = str(ROOT / "configs/Demo/mask_rcnn_R_18_FPN_synthetic.py")  # the same model
FPN_CONFIG = str(ROOT / "configs/COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml")
RETINANET_CONFIG = str(ROOT / "configs/COCO-Detection/retinanet_R_50_FPN_1x.yaml")
C4_CONFIG = str(ROOT / "configs/COCO-Detection/faster_rcnn_R_50_C4_1x.yaml")
SMALL = ["MODEL.WEIGHTS", "", "MODEL.RESNETS.NORM", "BN", "MODEL.BACKBONE.FREEZE_AT", "0",
         "MODEL.RESNETS.STEM_OUT_CHANNELS", "16", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
         "MODEL.FPN.OUT_CHANNELS", "32"]
NARROW_BOTTLENECKS = ["MODEL.RESNETS.WIDTH_PER_GROUP", "16"]
#: the random-init demo model's scores, with its class scorer scaled up (see demo_export), spread
#: over about 0.50-0.53: this threshold keeps part of them, a different number on each image
DEMO_SCORE_THRESH = "0.51"

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning",
                                        "ignore::FutureWarning")


def images(n=2, size=64, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def assert_outputs_equal(eager, scripted):
    # within float rounding: eager applies a fixed norm in place, as two ops, scripted as one
    assert eager.keys() == scripted.keys()
    for name in eager:
        torch.testing.assert_close(scripted[name], eager[name], rtol=1e-4, atol=1e-4, msg=name)


# --- scripting ------------------------------------------------------------------------------


BODY_VARIANTS = {
    "plain R-18": dict(depth=18, norm="BN"),
    "R-50 FrozenBN, stem output": dict(depth=50, width_per_group=16, res2_out_channels=64,
                                       out_features=("stem", "res2", "res3", "res4", "res5")),
    "deep stem, avg_down": dict(depth=50, preset="resnet_d", norm="BN", width_per_group=16, res2_out_channels=64),
    "SE, ResNeXt": dict(depth=50, preset="seresnext", norm="BN"),
    "preact, GN": dict(depth=18, preact=True, norm="GN"),
    "deformable v2": dict(depth=50, norm="BN", width_per_group=16, res2_out_channels=64,
                          deform_on_per_stage=(False, True, True, True),
                          deform_modulated=True, deform_num_groups=2),
    "shortcut A, dilated res5": dict(depth=18, norm="BN", shortcut="A", output_stride=16),
    "ResNet-RS (conv stem pool, SE)": dict(depth=50, preset="resnet_rs", norm="BN", width_per_group=16,
                                           res2_out_channels=64),
    "tiered stem, blur pool, ECA, few blocks": dict(depth=20, num_blocks=(1, 2, 2, 1), stem_type="tiered",
                                                    stride_in_1x1=False, anti_alias="blur", eca=True, norm="BN",
                                                    width_per_group=16, res2_out_channels=64),
}


#: covered by the full run (make test-slow) only, to keep the normal suite short
SLOW_BODY_VARIANTS = ("R-50 FrozenBN, stem output", "shortcut A, dilated res5")


@pytest.mark.parametrize("variant", [pytest.param(v, marks=pytest.mark.slow) if v in SLOW_BODY_VARIANTS else v
                                     for v in BODY_VARIANTS])
def test_scripted_body_equals_eager(variant):
    torch.manual_seed(0)
    body = randomize_norms(ResNet.from_arch(ResNetArch(**BODY_VARIANTS[variant]))).eval()
    if variant == "deformable v2":  # non-zero offsets, so that the deformable path is exercised
        for block in body.modules():
            if getattr(block, "conv2_offset", None) is not None:
                torch.nn.init.normal_(block.conv2_offset.weight, std=0.05)
    scripted = script_module(body)
    x = images()
    with torch.no_grad():
        assert_outputs_equal(body(x), scripted(x))


@pytest.mark.slow
def test_scripted_body_trains_like_eager_with_drop_path():
    body = ResNet.from_arch(ResNetArch(depth=18, norm="BN", drop_path_rate=0.2)).train()
    scripted = script_module(body)
    x = images(n=4)
    torch.manual_seed(3)
    eager_out = body(x)["res5"]
    torch.manual_seed(3)
    scripted_out = scripted(x)["res5"]
    torch.testing.assert_close(scripted_out, eager_out)


def test_checkpointing_cannot_be_scripted_in_training_but_can_in_eval():
    body = ResNet.from_arch(ResNetArch(depth=18, norm="BN", checkpoint_stages=("stem", "res3")))
    with pytest.raises(ValueError, match=r"cannot express activation checkpointing \(MODEL.RESNETS.CHECKPOINT_STAGES\)"):
        script_module(body.train())
    body.eval()
    x = images()
    with torch.no_grad():
        assert_outputs_equal(body(x), script_module(body)(x))


@pytest.mark.parametrize("config, extra", [
    (FPN_CONFIG, ["MODEL.RESNETS.DEPTH", "18"]),
    pytest.param(FPN_CONFIG, NARROW_BOTTLENECKS + ["MODEL.RESNETS.PRESET", "resnet_rs", "MODEL.FPN.NORM", "GN"],
                 marks=pytest.mark.slow),
    (RETINANET_CONFIG, ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.PREACT", "True"]),
], ids=["FPN R-18", "FPN ResNet-RS, GN", "RetinaNet FPN preact"])
def test_scripted_fpn_backbones_equal_eager(config, extra):
    cfg = load_config(config, SMALL + extra)
    torch.manual_seed(0)
    backbone = randomize_norms(build_backbone(cfg)).eval()
    scripted = script_module(backbone)
    x = images(size=96)
    with torch.no_grad():
        eager = backbone(x)
        assert_outputs_equal(eager, scripted(x))
    assert list(eager) == (["p3", "p4", "p5", "p6", "p7"] if config == RETINANET_CONFIG
                           else ["p2", "p3", "p4", "p5", "p6"])


@pytest.mark.parametrize("extra", [NARROW_BOTTLENECKS, ["MODEL.RESNETS.PRESET", "seresnext"]],
                         ids=["plain", "SE-ResNeXt"])
def test_scripted_c4_head_res5_equals_eager(extra):
    cfg = load_config(C4_CONFIG, SMALL + extra)
    torch.manual_seed(0)
    res5 = randomize_norms(build_model(cfg).roi_heads.res5).eval()
    scripted = script_module(res5)
    x = torch.randn(3, res5[0].in_channels, 14, 14, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), res5(x))


# --- folding and channels_last survive; torch.export ------------------------------------------


def _folded_channels_last_fpn():
    cfg = load_config(FPN_CONFIG, SMALL + ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.CHANNELS_LAST", "True"])
    torch.manual_seed(0)
    backbone = randomize_norms(build_backbone(cfg)).eval()
    folded = fold_norms(backbone)
    assert folded.bottom_up.res2[0].conv1.norm is None
    return backbone, folded


def test_folding_and_channels_last_survive_scripting_and_saving(tmp_path):
    backbone, folded = _folded_channels_last_fpn()
    torch.jit.save(script_module(folded), str(tmp_path / "fpn.ts"))
    loaded = torch.jit.load(str(tmp_path / "fpn.ts"))
    graph = str(loaded.inlined_graph)
    assert "aten::batch_norm" not in graph and "aten::conv2d" in graph
    unfolded_graph = str(script_module(backbone).inlined_graph)
    assert "aten::batch_norm" in unfolded_graph
    weight = getattr(loaded.bottom_up.res3, "0").conv1.weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    x = images(size=96)
    with torch.no_grad():
        out, reference = loaded(x), backbone(x)
    assert out["p2"].is_contiguous(memory_format=torch.channels_last)
    assert_outputs_equal(reference, out)


def test_torch_export_of_the_backbone_equals_eager_and_keeps_folding_and_channels_last(tmp_path):
    backbone, folded = _folded_channels_last_fpn()
    x = images(size=96)
    program = export_backbone_program(folded, x)
    torch.export.save(program, str(tmp_path / "fpn.pt2"))
    loaded = torch.export.load(str(tmp_path / "fpn.pt2"))
    calls = [node for node in loaded.graph.nodes if node.op == "call_function"]
    ops = {str(node.target) for node in calls}
    assert "aten.conv2d.default" in ops and not any("batch_norm" in op for op in ops), ops
    # the body converts its input
    assert any(node.kwargs.get("memory_format") == torch.channels_last for node in calls)
    with torch.no_grad():
        out, reference = loaded.module()(x), backbone(x)
    assert out["p2"].is_contiguous(memory_format=torch.channels_last)
    assert_outputs_equal(reference, out)
    # unfolded and plain: the norms are in the graph, and it equals eager as well
    plain = randomize_norms(build_backbone(load_config(FPN_CONFIG, SMALL + ["MODEL.RESNETS.DEPTH", "18"]))).eval()
    plain_program = export_backbone_program(plain, x)
    assert any("batch_norm" in str(node.target) for node in plain_program.graph.nodes)
    with torch.no_grad():
        assert_outputs_equal(plain(x), plain_program.module()(x))


# --- the demo Mask R-CNN, exported and run back ----------------------------------------------


@pytest.fixture(scope="module")
def demo_export(tmp_path_factory):
    """A random-init demo Mask R-CNN, its checkpoint, and what the tool exported of it."""
    tmp = tmp_path_factory.mktemp("export")
    splits = ensure_synthetic_coco(tmp / "synthetic", num_train=1, num_val=4, style=DEMO_STYLE)
    _, image_dir = coco_split_paths(tmp / "synthetic", "val")
    val_images = sorted(Path(image_dir).iterdir())
    assert len(val_images) == 4 and splits
    overrides = ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", DEMO_SCORE_THRESH]
    torch.manual_seed(0)
    model = randomize_norms(build_model(load_config(DEMO_CONFIG, ["MODEL.DEVICE", "cpu"] + overrides)))
    with torch.no_grad():
        # Random heads score every box about alike and predict mask probabilities of about 0.5;
        # larger weights spread the scores and make the masks decisive, so that equality at a
        # threshold is a real check and not a coin flip on rounding.
        torch.nn.init.normal_(model.roi_heads.box_predictor.cls_score.weight, std=2.0)
        torch.nn.init.normal_(model.roi_heads.mask_head.predictor.weight, std=1.0)
    torch.save({"model": model.state_dict()}, tmp / "model.pth")
    overrides += ["MODEL.WEIGHTS", str(tmp / "model.pth")]
    common = ["--config-file", DEMO_CONFIG, "--sample-image", str(val_images[0])]
    assert main(common + ["--format", "onnx", "--output", str(tmp / "onnx")] + overrides) == 0
    assert main(common + ["--format", "torchscript", "--export-method", "tracing", "--output", str(tmp / "traced")]
                + overrides) == 0
    assert main(common + ["--format", "torchscript", "--export-method", "scripting", "--fold-norms",
                          "--output", str(tmp / "scripted")] + overrides + ["MODEL.RESNETS.CHANNELS_LAST", "True"]) == 0
    model, cfg = build_model_from_config(DEMO_CONFIG, overrides)
    inputs = [prepare_image(cfg, np.asarray(Image.open(path).convert("RGB")))  # the demo's INPUT.FORMAT
              for path in val_images]
    expected = [detector_inference(model, [{"image": image}])[0] for image, _, _ in inputs]
    return dict(tmp=tmp, inputs=inputs, expected=expected, sample_image=str(val_images[0]))


def _val_inputs(demo_export):
    """(image, height, width, PyTorch's detections) of each demo val image."""
    for (image, height, width), expected in zip(demo_export["inputs"], demo_export["expected"]):
        yield image, height, width, expected


def assert_same_detections(actual, expected, height, width):
    """Same count and classes, boxes within 1e-3, scores within 1e-4, pasted masks (where the
    detector has them) equal at 0.5.

    Detections are paired by class and box rather than by rank: two whose scores differ by less
    than the runtimes' rounding may come out in either order.
    """
    assert len(actual) == len(expected)
    distance = torch.cdist(expected.pred_boxes.tensor, actual.pred_boxes.tensor, p=float("inf"))
    distance[expected.pred_classes[:, None] != actual.pred_classes[None, :]] = float("inf")
    pairing = distance.argmin(dim=1) if len(expected) else torch.zeros(0, dtype=torch.long)
    assert sorted(pairing.tolist()) == list(range(len(expected))), "not one detection for each"
    actual = actual[pairing]
    assert torch.equal(actual.pred_classes, expected.pred_classes)
    torch.testing.assert_close(actual.pred_boxes.tensor, expected.pred_boxes.tensor, rtol=0, atol=1e-3)
    torch.testing.assert_close(actual.scores, expected.scores, rtol=0, atol=1e-4)
    assert actual.has("pred_masks") == expected.has("pred_masks")
    if not expected.has("pred_masks"):
        return
    actual_masks = detector_postprocess(actual, height, width).pred_masks
    expected_masks = detector_postprocess(expected, height, width).pred_masks
    assert actual_masks.shape == (len(expected), height, width)
    assert torch.equal(actual_masks, expected_masks)


def test_onnx_runtime_gives_pytorchs_detections_on_the_demo_val_images(demo_export):
    counts = []
    for image, height, width, expected in _val_inputs(demo_export):
        outputs = run_onnx(demo_export["tmp"] / "onnx" / "model.onnx", image)
        assert set(outputs) == {"pred_boxes", "pred_classes", "pred_masks", "scores", "image_size"}
        assert_same_detections(instances_from_outputs(outputs), expected, height, width)
        counts.append(len(expected))
    # detections on every image, fewer than the cap of 100, not the same number everywhere
    print("detections per val image:", counts)
    assert min(counts) >= 5 and max(counts) < 100 and len(set(counts)) > 1, counts


def test_traced_torchscript_loaded_back_gives_pytorchs_detections(demo_export):
    traced, names = load_torchscript(demo_export["tmp"] / "traced" / "model.ts")
    assert names == ["pred_boxes", "pred_classes", "pred_masks", "scores", "image_size"]
    for image, height, width, expected in _val_inputs(demo_export):
        with torch.no_grad():
            outputs = dict(zip(names, traced(image)))
        assert_same_detections(instances_from_outputs(outputs), expected, height, width)


def test_scripted_folded_channels_last_torchscript_gives_pytorchs_detections(demo_export):
    scripted, names = load_torchscript(demo_export["tmp"] / "scripted" / "model.ts")
    assert names is None  # a scripted detector returns named fields itself
    assert "aten::batch_norm" not in str(scripted.inlined_graph)  # folded: heads and FPN included
    weight = getattr(scripted.model.backbone.bottom_up.res2, "0").conv1.weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    for image, height, width, expected in _val_inputs(demo_export):
        with torch.no_grad():
            fields = scripted(({"image": image},))[0]
        assert_same_detections(instances_from_outputs({**fields, "image_size": torch.tensor(image.shape[1:])}),
                               expected, height, width)


def test_the_lazy_config_of_the_demo_model_exports_the_same_detector(demo_export):
    tmp = demo_export["tmp"]
    sample = demo_export["sample_image"]
    assert main(["--config-file", LAZY_DEMO_CONFIG, "--format", "onnx", "--sample-image", sample,
                 "--output", str(tmp / "lazy_onnx"), f"train.init_checkpoint={tmp / 'model.pth'}",
                 f"model.roi_heads.box_predictor.test_score_thresh={DEMO_SCORE_THRESH}"]) == 0
    for image, height, width, expected in _val_inputs(demo_export):
        outputs = run_onnx(tmp / "lazy_onnx" / "model.onnx", image)
        assert_same_detections(instances_from_outputs(outputs), expected, height, width)


def small_detector(config):
    """A random R-18 RetinaNet or Faster R-CNN whose scores differ from detection to detection."""
    cfg = load_config(config, SMALL + ["MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", "18",
                                       "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0"])
    torch.manual_seed(0)
    model = randomize_norms(build_model(cfg)).eval()
    if config == RETINANET_CONFIG:  # its prior-probability init gives every anchor the same score
        torch.nn.init.normal_(model.head.cls_score.weight, std=0.1)
        torch.nn.init.normal_(model.head.cls_score.bias, mean=-3.0)
    return model


def test_retinanet_and_faster_rcnn_in_onnx_runtime_give_pytorchs_detections(tmp_path):
    for config in (RETINANET_CONFIG, FPN_CONFIG):
        model = small_detector(config)
        sample = torch.rand(3, 128, 160, generator=torch.Generator().manual_seed(0)) * 255
        path = export_detector(model, sample, tmp_path / f"{Path(config).stem}.onnx", format="onnx")
        # another image than the tracing sample (of its size, which the traced graph fixes, as
        # Detectron2's export_model.py does): detections are computed, not the sample's constants
        image = torch.rand(3, 128, 160, generator=torch.Generator().manual_seed(1)) * 255
        outputs = run_onnx(path, image)
        assert set(outputs) == {"pred_boxes", "pred_classes", "scores", "image_size"}, config
        expected = detector_inference(model, [{"image": image}])[0]
        assert len(expected) >= 10, config
        assert_same_detections(instances_from_outputs(outputs), expected, *image.shape[1:])


def test_scripted_retinanet_and_faster_rcnn_equal_eager():
    for config in (RETINANET_CONFIG, FPN_CONFIG):
        model = small_detector(config)
        scripted = script_detector(model)
        image = torch.rand(3, 128, 160, generator=torch.Generator().manual_seed(0)) * 255
        with torch.no_grad():
            fields = scripted(({"image": image},))[0]
        expected = detector_inference(model, [{"image": image}])[0]
        assert 10 <= len(expected) == len(fields["scores"])
        torch.testing.assert_close(fields["scores"], expected.scores, rtol=0, atol=1e-5)
        torch.testing.assert_close(fields["pred_boxes"], expected.pred_boxes.tensor, rtol=0, atol=1e-3)
        assert torch.equal(fields["pred_classes"], expected.pred_classes)


# --- the tool's bad input ---------------------------------------------------------------------


@pytest.mark.parametrize("arguments, message", [
    (["--config-file", "no/such.yaml"], "no/such.yaml: no such config file"),
    (["--config-file", DEMO_CONFIG, "MODEL.NO_SUCH_KEY", "1"], "MODEL.NO_SUCH_KEY"),
    (["--config-file", DEMO_CONFIG, "--format", "onnx", "--export-method", "scripting"],
     "--format onnx goes through tracing"),
    (["--config-file", DEMO_CONFIG, "--sample-image", "no/such.png"], "--sample-image no/such.png: no such file"),
    (["--config-file", DEMO_CONFIG, "MODEL.WEIGHTS", "no/such.pth"], "MODEL.WEIGHTS = no/such.pth: no such file"),
    (["--config-file", DEMO_CONFIG, "MODEL.META_ARCHITECTURE", "SemanticSegmentor"],
     "cannot export a SemanticSegmentor"),
], ids=["missing config", "unknown key", "onnx by scripting", "missing image", "missing weights", "not a detector"])
def test_bad_input_is_one_error_line_and_exit_2(tmp_path, capsys, arguments, message):
    output = tmp_path / "out"
    assert main(arguments[:2] + ["--output", str(output)] + arguments[2:]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not output.exists() or not any(output.iterdir())


def test_unreadable_sample_image_and_output_file(tmp_path, capsys):
    (tmp_path / "image.png").write_text("not an image")
    assert main(["--config-file", DEMO_CONFIG, "--sample-image", str(tmp_path / "image.png"),
                 "--output", str(tmp_path / "out")]) == 2
    assert "not a readable image" in capsys.readouterr().err
    (tmp_path / "file").write_text("keep me")
    assert main(["--config-file", DEMO_CONFIG, "--output", str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --output {tmp_path / 'file'}: exists and is not a directory"]
    assert (tmp_path / "file").read_text() == "keep me"


# --- detectron2.export on v0.6 and on main ----------------------------------------------------


def _run_python(code, *, pythonpath=None):
    import os
    import subprocess
    import sys
    import textwrap

    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env)


def test_detectron2_export_imports_with_its_scripting_patches():
    result = _run_python("""
        import resnet_backbones
        import detectron2.export.torchscript
        from detectron2.export import TracingAdapter, dump_torchscript_IR, scripting_with_instances
        from detectron2.modeling.backbone import FPN
        assert hasattr(FPN, "__prepare_scriptable__")
        print("ok")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.parametrize("init, expected", [
    ("X = 1\n", "complete"),  # detectron2 main, or a torch that still has caffe2
    ("from caffe2.proto import caffe2_pb2\n", "without caffe2"),  # v0.6's first line
    ("import no_such_module\n", "ModuleNotFoundError: No module named 'no_such_module'"),
], ids=["complete", "v0.6 without caffe2", "another missing module"])
def test_the_export_stand_in_applies_only_where_caffe2_is_missing(tmp_path, init, expected):
    export = tmp_path / "detectron2" / "export"
    export.mkdir(parents=True)
    (tmp_path / "detectron2" / "__init__.py").write_text("")
    (export / "__init__.py").write_text(init)
    (export / "flatten.py").write_text("TracingAdapter = 'flatten'\n")
    (export / "torchscript.py").write_text("scripting_with_instances = dump_torchscript_IR = 'torchscript'\n")
    compat = ROOT / "resnet_backbones" / "compat.py"
    result = _run_python(f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("compat", {str(compat)!r})
        spec.loader.exec_module(importlib.util.module_from_spec(spec))  # installs the stand-ins
        import detectron2.export as export
        if hasattr(export, "X"):
            print("complete", hasattr(export, "TracingAdapter"))
        else:
            assert export.TracingAdapter == "flatten" and export.scripting_with_instances == "torchscript"
            print("without caffe2", export._resnet_backbones_without_caffe2)
    """, pythonpath=tmp_path)
    if expected == "complete":
        assert result.stdout.strip() == "complete False", result.stderr
    elif expected == "without caffe2":
        assert result.stdout.strip() == "without caffe2 True", result.stderr
    else:
        assert result.returncode != 0 and expected in result.stderr
