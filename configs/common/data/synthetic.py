# The built-in synthetic shapes (resnet_backbones.data, generated on first use by tools/train_net.py):
# 256 px RGB images, five categories with instance masks; the inputs of configs/Demo.
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L

from .coco import dataloader

dataloader.train.dataset.names = "synthetic_shapes_train"
dataloader.test.dataset.names = "synthetic_shapes_val"
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=(256,), sample_style="choice", max_size=256),
    L(T.RandomFlip)(horizontal=True),
]
dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=256, max_size=256)]
dataloader.train.mapper.image_format = "RGB"
dataloader.train.total_batch_size = 4
dataloader.train.num_workers = 1
dataloader.test.num_workers = 1
