# Pixel statistics of ImageNet, in the two conventions a detector's input can follow.
from omegaconf import OmegaConf

constants = OmegaConf.create(dict(
    # BGR images in 0..255 with unit std, for weights converted from Caffe (MSRA)
    imagenet_bgr256_mean=[103.530, 116.280, 123.675],
    imagenet_bgr256_std=[1.0, 1.0, 1.0],
    # RGB images in 0..255 normalised by the std, for torchvision/timm-style weights
    imagenet_rgb256_mean=[123.675, 116.280, 103.530],
    imagenet_rgb256_std=[58.395, 57.120, 57.375],
))
