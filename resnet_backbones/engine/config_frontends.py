"""Two config front ends, one trainer: yacs YAML files and LazyConfig Python files.

:func:`load_training_config` reads either kind into what :class:`Trainer` reads, a yacs
``CfgNode``. A YAML file is read as before (``KEY VALUE`` overrides). A ``.py`` file is a
Detectron2 LazyConfig (``model``, ``dataloader``, ``optimizer``, ``lr_multiplier``, ``train``, as
in ``configs/common``) with ``key=value`` overrides in LazyConfig syntax; its run keys (``train.*``)
fill the yacs keys they stand for, the config itself travels with the ``CfgNode``, and
:class:`LazyConfigTrainer`, the same :class:`Trainer` with its components instantiated from the
LazyConfig, trains it: the same step, hooks, checkpoints, evaluation and reports.

A bad LazyConfig (unknown key, a value of the wrong type, a body that cannot be built) raises a
``ValueError`` whose message names the key path and the value, before anything is built.
"""
from __future__ import annotations

import inspect
import logging
import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple

import detectron2.data.transforms as T
import torch
from detectron2.config import CfgNode, LazyConfig, instantiate
from detectron2.solver import LRMultiplier
from detectron2.solver.build import maybe_add_gradient_clipping
from detectron2.utils.registry import locate
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from ..config import get_default_config, load_config
from ..modeling.lazy import ResNetFamily, ResNetFamilyRes5, arch_from_keywords
from .trainer import AMP_PRECISIONS, Trainer

logger = logging.getLogger(__name__)

LAZY_SUFFIX = ".py"
_LAZY_ATTRIBUTE = "_lazy_config"

#: LazyConfig key -> the yacs key the trainer reads it from
RUN_KEYS: Dict[str, str] = {
    "train.output_dir": "OUTPUT_DIR",
    "train.init_checkpoint": "MODEL.WEIGHTS",
    "train.max_iter": "SOLVER.MAX_ITER",
    "train.amp.enabled": "SOLVER.AMP.ENABLED",
    "train.amp.precision": "SOLVER.AMP.PRECISION",
    "train.clip_gradients.enabled": "SOLVER.CLIP_GRADIENTS.ENABLED",
    "train.clip_gradients.clip_type": "SOLVER.CLIP_GRADIENTS.CLIP_TYPE",
    "train.clip_gradients.clip_value": "SOLVER.CLIP_GRADIENTS.CLIP_VALUE",
    "train.clip_gradients.norm_type": "SOLVER.CLIP_GRADIENTS.NORM_TYPE",
    "train.checkpointer.period": "SOLVER.CHECKPOINT_PERIOD",
    "train.eval_period": "TEST.EVAL_PERIOD",
    "train.best_metric": "TEST.BEST_METRIC",
    "train.device": "MODEL.DEVICE",
    "train.seed": "SEED",
    "train.cudnn_benchmark": "CUDNN_BENCHMARK",
    "dataloader.train.total_batch_size": "SOLVER.IMS_PER_BATCH",
    # the input convention, which converted weights record and the checkpointer checks
    "model.input_format": "INPUT.FORMAT",
    "model.pixel_mean": "MODEL.PIXEL_MEAN",
    "model.pixel_std": "MODEL.PIXEL_STD",
}
#: what training needs besides ``model`` (``--eval-only`` needs only the model and the test data)
TRAINING_KEYS = ("optimizer", "lr_multiplier", "dataloader.train", "train.max_iter", "train.output_dir")
#: Detectron2's ``train`` keys for its own loop that this trainer does not use (speed and logging
#: options only; accepted, with a warning, so that configs written for ``lazyconfig_train_net.py`` load)
IGNORED_TRAIN_KEYS = ("train.ddp", "train.log_period", "train.checkpointer.max_to_keep")

_BODY_TARGETS = (ResNetFamily, ResNetFamilyRes5)


# --------------------------------------------------------------------------- loading
def is_lazy_config_file(config_file: str) -> bool:
    return str(config_file).endswith(LAZY_SUFFIX)


def load_lazy_config(config_file: str, overrides: Optional[Sequence[str]] = None) -> DictConfig:
    """A LazyConfig file with ``key=value`` overrides, each checked (see :func:`check_override`),
    and every call in it checked against its callable's arguments."""
    if not Path(config_file).is_file():
        raise ValueError(f"{config_file}: no such config file")
    try:
        cfg = LazyConfig.load(str(config_file))
    except (ImportError, AttributeError, KeyError, NameError, SyntaxError) as error:
        raise ValueError(f"{config_file}: cannot be loaded as a LazyConfig: {type(error).__name__}: {error}") from None
    overrides = list(overrides or [])
    if overrides:
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from hydra.errors import HydraException

        try:
            parsed = OverridesParser.create().parse_overrides(overrides)
        except HydraException as error:
            raise ValueError(f"command-line overrides {overrides}: not key=value in LazyConfig syntax: "
                             f"{str(error).splitlines()[0]}") from None
        for override in parsed:
            if override.is_delete():
                raise ValueError(f"override {override.input_line!r}: deleting a key is not supported")
            check_override(cfg, override.key_or_group, override.value())
        LazyConfig.apply_overrides(cfg, overrides)
    check_calls(cfg)
    return cfg


def check_override(cfg: DictConfig, key: str, value: Any) -> None:
    """``key`` must exist in ``cfg``, or be an argument of the call it would be added to, and
    ``value`` must be of the kind of what it replaces (or of the argument's default)."""
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key, default=None) if parent_key else cfg
    shown = f"{key}={value!r}"
    if isinstance(parent, ListConfig) and leaf.isdigit():
        if int(leaf) >= len(parent):
            raise ValueError(f"override {shown}: {parent_key} has {len(parent)} items")
        exists = True
    elif isinstance(parent, DictConfig):
        exists = leaf in parent
    else:
        raise ValueError(f"override {shown}: the config has no key {parent_key!r}"
                         + ("" if parent is None else f" that holds keys (it is {parent!r})"))
    if exists:
        old = OmegaConf.select(cfg, key, default=None)
        if not _same_kind(old, value):
            raise ValueError(f"override {shown}: wrong type, {key} is {old!r} ({_kind(old)})")
        return
    if "_target_" in parent:
        parameter = _parameters(parent._target_).get(leaf)
        if parameter is not None or _takes_any_keyword(parent._target_):
            default = parameter.default if parameter is not None else None
            if default is not inspect.Parameter.empty and not _same_kind(default, value):
                raise ValueError(f"override {shown}: wrong type, {leaf} of {_name(parent._target_)} "
                                 f"defaults to {default!r} ({_kind(default)})")
            return
        raise ValueError(f"override {shown}: {_name(parent._target_)} has no argument {leaf!r}; "
                         f"its arguments: {sorted(_parameters(parent._target_))}")
    raise ValueError(f"override {shown}: no such key; {parent_key or 'the config'} has {sorted(parent.keys())}")


def check_calls(cfg: DictConfig) -> None:
    """Every ``L(callable)(...)`` in ``cfg`` names only arguments of its callable; our body's
    arguments are checked by :class:`ResNetArch`, with the full key path in the message."""
    for path, node in _calls(cfg, ""):
        target = _target(node._target_)
        keywords = {key: node[key] for key in node.keys() if key != "_target_"}
        if target in _BODY_TARGETS:
            arch_from_keywords(keywords, key_prefix=f"{path}.")
            continue
        if _takes_any_keyword(target):
            continue
        accepted = _parameters(target)
        unknown = [key for key in keywords if key not in accepted]
        if unknown:
            raise ValueError(f"{path}.{unknown[0]} = {keywords[unknown[0]]!r}: {_name(target)} has no argument "
                             f"{unknown[0]!r}; its arguments: {sorted(accepted)}")


def _calls(node: Any, path: str) -> Iterator[Tuple[str, DictConfig]]:
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield path, node
        for key in node.keys():
            if key != "_target_" and not OmegaConf.is_missing(node, key):
                yield from _calls(node[key], f"{path}.{key}" if path else str(key))
    elif isinstance(node, ListConfig):
        for index, item in enumerate(node):
            yield from _calls(item, f"{path}.{index}")


def _target(target: Any) -> Callable:
    found = locate(target) if isinstance(target, str) else target
    if not callable(found):
        raise ValueError(f"_target_ {target!r} is not callable")
    return found


def _parameters(target: Any) -> Dict[str, inspect.Parameter]:
    try:
        signature = inspect.signature(_target(target))
    except (TypeError, ValueError):  # a builtin without a signature: nothing to check against
        return {}
    return {name: p for name, p in signature.parameters.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _takes_any_keyword(target: Any) -> bool:
    try:
        signature = inspect.signature(_target(target))
    except (TypeError, ValueError):
        return True
    return any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values())


def _name(target: Any) -> str:
    found = _target(target)
    return getattr(found, "__qualname__", repr(found))


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "True or False"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple, ListConfig)):
        return "a list"
    if isinstance(value, (dict, DictConfig)):
        return "a group of keys"
    return type(value).__name__


def _same_kind(old: Any, new: Any) -> bool:
    """Whether an override ``new`` may replace ``old``: None either way, int for float, a list for
    a list, a list of strings for a string (dataset names take either), a group for a group;
    other objects only by values of their own type."""
    if old is None or new is None:
        return True
    if isinstance(old, str) and isinstance(new, list):
        return all(isinstance(item, str) for item in new)
    if isinstance(old, bool) or isinstance(new, bool):
        return isinstance(old, bool) and isinstance(new, bool)
    if isinstance(old, float):
        return isinstance(new, (int, float))
    for kinds in (int, str, (list, tuple, ListConfig), (dict, DictConfig)):
        if isinstance(old, kinds):
            return isinstance(new, kinds)
    return not isinstance(new, (int, float, str, list, dict)) or isinstance(new, type(old))


# --------------------------------------------------------------------------- the run config
def run_config_from_lazy(lazy: DictConfig, training: bool = True) -> CfgNode:
    """The yacs keys :class:`Trainer` reads, filled from ``lazy`` (see :data:`RUN_KEYS`), with
    ``lazy`` attached (:func:`lazy_config_of`)."""
    required = ("model",) + (TRAINING_KEYS if training else ())
    missing = [key for key in required if OmegaConf.select(lazy, key, default=None) is None]
    if missing:
        raise ValueError(f"the LazyConfig has no {missing[0]!r}, which "
                         f"{'training' if training else 'evaluation'} needs (see configs/common)")
    _check_run_values(lazy)
    cfg = get_default_config()
    for lazy_key, yacs_key in RUN_KEYS.items():
        value = OmegaConf.select(lazy, lazy_key, default=None)
        if value is not None:
            value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
            *parents, leaf = yacs_key.split(".")
            node = cfg
            for part in parents:
                node = node[part]
            node[leaf] = type(node[leaf])(value) if isinstance(node[leaf], (tuple, list)) else value
    cfg.DATASETS.TRAIN = _dataset_names(lazy, "dataloader.train.dataset.names")
    cfg.DATASETS.TEST = _dataset_names(lazy, "dataloader.test.dataset.names")
    heads = OmegaConf.select(lazy, "model.roi_heads", default=None)
    if isinstance(heads, DictConfig):
        cfg.MODEL.MASK_ON = heads.get("mask_head") is not None
        cfg.MODEL.KEYPOINT_ON = heads.get("keypoint_head") is not None
    _fill_test_resize(cfg, lazy)
    body = next((node for _, node in _calls(lazy.model, "model") if _target(node._target_) is ResNetFamily), None)
    if body is not None:
        cfg.MODEL.RESNETS.STRIDE_IN_1X1 = arch_from_keywords(
            {key: body[key] for key in body.keys() if key != "_target_"}).stride_in_1x1
    cfg.__dict__[_LAZY_ATTRIBUTE] = lazy
    return cfg


def _fill_test_resize(cfg: CfgNode, lazy: DictConfig) -> None:
    """``INPUT.MIN/MAX_SIZE_TEST`` from the test mapper's ``ResizeShortestEdge``, as the yacs
    keys that stand for it (what an exported model's sample image is resized by)."""
    augmentations = OmegaConf.select(lazy, "dataloader.test.mapper.augmentations", default=None)
    for node in augmentations or ():
        if isinstance(node, DictConfig) and "_target_" in node and _target(node._target_) is T.ResizeShortestEdge:
            short = node.get("short_edge_length")
            if short is not None:
                cfg.INPUT.MIN_SIZE_TEST = int(short if isinstance(short, int) else short[-1])
            if node.get("max_size") is not None:
                cfg.INPUT.MAX_SIZE_TEST = int(node.max_size)


def _check_run_values(lazy: DictConfig) -> None:
    unused = [key for key in IGNORED_TRAIN_KEYS if OmegaConf.select(lazy, key, default=None) is not None]
    if unused:
        logger.warning("%s: options of Detectron2's own training loop, not used here", ", ".join(unused))
    for key, allowed in (("train.amp.precision", AMP_PRECISIONS),
                         ("train.clip_gradients.clip_type", ("value", "norm"))):
        value = OmegaConf.select(lazy, key, default=None)
        if value is not None and value not in allowed:
            raise ValueError(f"{key} = {value!r} is not allowed: one of {list(allowed)}")


def _dataset_names(lazy: DictConfig, key: str) -> Tuple[str, ...]:
    names = OmegaConf.select(lazy, key, default=None)
    if names is None:
        return ()
    return (names,) if isinstance(names, str) else tuple(names)


def lazy_config_of(cfg: CfgNode) -> Optional[DictConfig]:
    """The LazyConfig a run config was made from (None for a YAML config)."""
    return cfg.__dict__.get(_LAZY_ATTRIBUTE)


def load_training_config(config_file: str, overrides: Optional[Sequence[str]] = None,
                         training: bool = True) -> CfgNode:
    """The run config of a YAML or LazyConfig file (by its suffix), with its overrides."""
    if is_lazy_config_file(config_file):
        return run_config_from_lazy(load_lazy_config(config_file, overrides), training=training)
    return load_config(config_file, list(overrides or []))


def recorded_config(cfg: CfgNode):
    """What ``default_setup`` records as the run's ``config.yaml``: the LazyConfig itself, or ``cfg``."""
    lazy = lazy_config_of(cfg)
    return cfg if lazy is None else lazy


def trainer_class(cfg: CfgNode) -> type:
    return Trainer if lazy_config_of(cfg) is None else LazyConfigTrainer


# --------------------------------------------------------------------------- building
def _resolved(node: DictConfig) -> Any:
    """A plain copy of ``node`` with its interpolations resolved, to change and instantiate."""
    return OmegaConf.to_container(node, resolve=True)


def build_lazy_model(lazy: DictConfig, device: str) -> nn.Module:
    """``lazy.model`` instantiated on ``device``; what cannot be built is a ``ValueError``."""
    try:
        model = instantiate(lazy.model)
    except (AssertionError, TypeError, ValueError, KeyError, IndexError) as error:
        raise ValueError(f"model: cannot be built from this config: {type(error).__name__}: {error}") from None
    for module in model.modules():
        # as the registered FPN builders: a channels-last body hands its FPN channels-last features
        if getattr(getattr(module, "bottom_up", None), "channels_last", False):
            module.to(memory_format=torch.channels_last)
    return model.to(device)


def build_model_from_run_config(cfg: CfgNode) -> nn.Module:
    """The model of a run config (:func:`load_training_config`), with random weights, on its device."""
    return trainer_class(cfg).build_model(cfg)


def build_model_from_config_file(config_file: str, overrides: Optional[Sequence[str]] = None) -> nn.Module:
    """The model of a YAML (``KEY VALUE`` overrides) or LazyConfig (``key=value``) file, with
    random weights, on the config's device (``MODEL.DEVICE`` / ``train.device``)."""
    return build_model_from_run_config(load_training_config(config_file, overrides, training=False))


class LazyConfigTrainer(Trainer):
    """:class:`Trainer`, with model, optimizer, schedule, data and evaluator instantiated from
    the LazyConfig of a run config (:func:`run_config_from_lazy`)."""

    def __init__(self, cfg: CfgNode):
        super().__init__(cfg)
        self._trainer.divergence_advice = (
            "Lower optimizer.lr, lengthen lr_multiplier.warmup_length or set train.clip_gradients.enabled=True.")

    @classmethod
    def build_model(cls, cfg):
        model = build_lazy_model(lazy_config_of(cfg), cfg.MODEL.DEVICE)
        logging.getLogger("detectron2").info("Model:\n%s", model)
        return model

    @classmethod
    def build_optimizer(cls, cfg, model):
        spec = _resolved(lazy_config_of(cfg).optimizer)
        spec["params"]["model"] = model
        if cfg.SOLVER.CLIP_GRADIENTS.ENABLED:
            spec["_target_"] = maybe_add_gradient_clipping(cfg, _target(spec["_target_"]))
        return instantiate(spec)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        multiplier = instantiate(_resolved(lazy_config_of(cfg).lr_multiplier))
        return LRMultiplier(optimizer, multiplier=multiplier, max_iter=cfg.SOLVER.MAX_ITER)

    @classmethod
    def build_train_loader(cls, cfg):
        return instantiate(lazy_config_of(cfg).dataloader.train)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        spec = _resolved(lazy_config_of(cfg).dataloader.test)
        spec["dataset"]["names"] = dataset_name
        return instantiate(spec)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        lazy = lazy_config_of(cfg)
        if lazy.dataloader.get("evaluator") is None:
            return super().build_evaluator(cfg, dataset_name, output_folder)
        spec = _resolved(lazy.dataloader.evaluator)
        spec["dataset_name"] = dataset_name
        accepted = _parameters(spec["_target_"])
        if "output_dir" in accepted and spec.get("output_dir") is None:
            spec["output_dir"] = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        if "tasks" in accepted and spec.get("tasks") is None:
            # as the YAML path: the tasks come from the model (a mask model not detecting yet gets segm AP 0)
            spec["tasks"] = ["bbox"] + ["segm"] * cfg.MODEL.MASK_ON + ["keypoints"] * cfg.MODEL.KEYPOINT_ON
        return instantiate(spec)


__all__ = ["LazyConfigTrainer", "build_lazy_model", "build_model_from_config_file", "build_model_from_run_config", "check_calls", "check_override",
           "is_lazy_config_file", "lazy_config_of", "load_lazy_config", "load_training_config", "recorded_config",
           "run_config_from_lazy", "trainer_class"]
