"""The detectron2 compatibility module: stand-ins only where something is missing."""
import subprocess
import sys
import textwrap

import pytest

from resnet_backbones import compat


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True)


@pytest.mark.skipif(compat.HAS_D2_EXTENSION, reason="this detectron2 has its C++ extension")
def test_missing_extension_fails_with_a_message_that_says_so():
    from detectron2 import _C

    # detectron2's fast COCOeval and its CUDA deformable convolution call these
    for name in ("COCOevalEvaluateImages", "deform_conv_forward"):
        with pytest.raises(compat.MissingExtensionError, match=rf"detectron2._C.{name} .*without its C\+\+ extension"):
            getattr(_C, name)
        assert not hasattr(_C, name)


def test_everything_we_use_from_detectron2_imports():
    result = run_python("""
        import resnet_backbones
        import detectron2.data, detectron2.engine, detectron2.evaluation, detectron2.modeling
        from detectron2.layers import DeformConv, FrozenBatchNorm2d
        from PIL import Image
        assert Image.LINEAR == Image.BILINEAR
        print("ok")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_a_complete_detectron2_is_left_unchanged():
    result = run_python("""
        import sys, types
        real = types.ModuleType("detectron2._C")
        real.deform_conv_forward = lambda *a: "compiled"
        sys.modules["detectron2._C"] = real
        import resnet_backbones
        from resnet_backbones import compat
        from detectron2 import _C
        assert compat.HAS_D2_EXTENSION and _C is real and _C.deform_conv_forward() == "compiled"
        print("ok")
    """)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(not compat.HAS_D2_EXTENSION,
                    reason="needs detectron2 built with its C++ extension: run `make test-d2main`")
def test_a_built_extension_is_the_one_detectron2_uses():
    import torch
    from detectron2 import _C
    from detectron2.layers import nms_rotated

    assert not getattr(_C, "_is_resnet_backbones_stand_in", False)
    assert _C.__file__.endswith(".so") and callable(_C.COCOevalEvaluateImages)
    # a compiled CPU op: two rotated boxes that overlap almost entirely, one suppressed
    boxes = torch.tensor([[10.0, 10.0, 8.0, 4.0, 30.0], [10.0, 10.0, 8.0, 4.0, 31.0], [40.0, 40.0, 6.0, 6.0, 0.0]])
    assert nms_rotated(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5).tolist() == [0, 2]
