"""The degradation experiment of He et al. (2016, figures 1 and 6), on a real 10-class image set.

Plain networks (``MODEL.RESNETS.SHORTCUT: none``) and ResNets of two depths, each a pretraining
config of ``configs/CIFAR/``, are trained alike: same data, order, augmentation and recipe (the
config's optimizer and schedule, with the experiment's epochs, batch and rate). The paper's
finding is that the deeper plain network ends with the higher training error, while with
shortcuts the deeper network ends with the lower one.

The images are scikit-learn's handwritten digits (``sklearn.datasets.load_digits``: 1797 real
8x8 grey images of the digits 0-9, bundled in its wheel, so nothing downloads), upsampled to
``image_size`` and repeated over three channels. Augmentation is a random shift of up to
``max_shift`` pixels (the paper pads by 4 and crops 32), which keeps the task from being memorised
in a few epochs, or clutter (:func:`clutter`), which no network here can memorise.

Training error is counted two ways. The running one, as the paper's curves are logged: on the
augmented mini-batches of each epoch, in training mode, while the weights still move. And the
network's own, at the end of each epoch: in inference mode, on the training images under one fixed
draw of the augmentation. The running error also carries the noise of batch statistics (which
adds up over depth) and of weights that are still moving; the second is the error of the network
the epoch ended with, which :meth:`DegradationResult.final_train_error` reports by default.
"""
from __future__ import annotations

import argparse
import functools
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F

from ..fileio import atomic_output, write_json_atomic
from ..modeling.arch import ResNetArch
from .config import load_pretrain_config
from .model import ImageNetClassifier
from .optim import build_optimizer, build_scheduler

CURVES_NAME = "degradation.json"
PLOT_NAME = "degradation.png"
NUM_CLASSES = 10
DIGIT_SIZE = 8  # scikit-learn's digits
CLUTTER_FRAGMENT_SIZE = 4

#: the paper's figure 1 / figure 6 (left and middle) at the depths 20 and 56: name -> config
DEFAULT_RUNS = {"plain-20": "plain_20.yaml", "plain-56": "plain_56.yaml",
                "ResNet-20": "R_20.yaml", "ResNet-56": "R_56.yaml"}


@dataclass
class DigitsSplit:
    train_images: torch.Tensor  # uint8 N x 3 x S x S, 0-255
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


def load_digits_split(image_size: int = 16, test_fraction: float = 0.2, seed: int = 0) -> DigitsSplit:
    """scikit-learn's digits as uint8 RGB images of ``image_size``, split at random (stratified)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ValueError("the degradation experiment trains on scikit-learn's bundled digits: "
                         "pip install scikit-learn (or the package's [experiments] extra)") from None
    digits = load_digits()
    images = torch.from_numpy(digits.images).float()[:, None] * (255 / 16)  # 0-16 grey levels
    images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = images.clamp(0, 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(digits.target).long()
    generator = torch.Generator().manual_seed(seed)
    test = torch.zeros(len(labels), dtype=torch.bool)
    for digit in range(NUM_CLASSES):  # the same share of every digit in the test split
        members = (labels == digit).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        test[members[: round(len(members) * test_fraction)]] = True
    return DigitsSplit(images[~test], labels[~test], images[test], labels[test])


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Each image moved by up to ``max_shift`` pixels in x and y, the border filled with zeros
    (the digits' background)."""
    if max_shift == 0:
        return images
    n, _, h, w = images.shape
    padded = F.pad(images, (max_shift,) * 4)
    dx, dy = (torch.randint(0, 2 * max_shift + 1, (n,), generator=generator) for _ in range(2))
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(n, images.shape[1], h, w + 2 * max_shift)
    shifted = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(n, images.shape[1], h, w)
    return shifted.gather(3, cols)


def clutter(images: torch.Tensor, canvas: int, fragments: int, fragment_size: int,
            generator: torch.Generator) -> torch.Tensor:
    """Each image at a random place of a ``canvas`` x ``canvas`` field, with ``fragments``
    square pieces of other images of the batch scattered over it (the brighter pixel wins where
    they overlap): the cluttered digits of Mnih et al. (2014), which no network of these sizes
    can memorise, unlike the clean 1437."""
    n, channels, h, w = images.shape
    if canvas < max(h, w):
        raise ValueError(f"--image-size {canvas}: the cluttered field is at least the digits' {max(h, w)} pixels")
    canvases = torch.zeros(n, channels, canvas, canvas, dtype=images.dtype)
    ys, xs = (torch.randint(0, canvas - size + 1, (n,), generator=generator) for size in (h, w))
    for i in range(n):
        canvases[i, :, ys[i]:ys[i] + h, xs[i]:xs[i] + w] = images[i]
    f = fragment_size
    for _ in range(fragments):
        sources = torch.randint(0, n, (n,), generator=generator)
        sy, sx = (torch.randint(0, size - f + 1, (n,), generator=generator) for size in (h, w))
        ty, tx = (torch.randint(0, canvas - f + 1, (n,), generator=generator) for _ in range(2))
        for i in range(n):
            region = canvases[i, :, ty[i]:ty[i] + f, tx[i]:tx[i] + f]
            torch.maximum(region, images[sources[i], :, sy[i]:sy[i] + f, sx[i]:sx[i] + f], out=region)
    return canvases


@dataclass
class Curve:
    name: str
    config: str
    params: int
    train_error: List[float] = field(default_factory=list)  # percent, per epoch: running, in training mode
    train_error_eval: List[float] = field(default_factory=list)  # at the epoch's end, in inference mode
    train_loss: List[float] = field(default_factory=list)
    test_error: List[float] = field(default_factory=list)
    seconds: float = 0.0


@torch.no_grad()
def error_rate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    model.eval()
    wrong = sum(int((model(images[i:i + batch_size].float()).argmax(1) != labels[i:i + batch_size]).sum())
                for i in range(0, len(labels), batch_size))
    return 100 * wrong / len(labels)


Augment = Callable[..., torch.Tensor]  # (uint8 images, generator=...) -> uint8 images


def train_curve(name: str, cfg, data: DigitsSplit, *, augment: Augment, seed: int,
                train_eval_images: torch.Tensor, log: Callable[[str], None] = print) -> Curve:
    """Train ``cfg``'s classifier on ``data`` for ``PRETRAIN.EPOCHS``; its per-epoch curves.
    ``train_eval_images``: the training images under one fixed draw of ``augment``, on which the
    inference-mode training error is counted."""
    p = cfg.PRETRAIN
    torch.manual_seed(seed)
    model = ImageNetClassifier.from_config(cfg, NUM_CLASSES)
    iters_per_epoch = len(data.train_labels) // p.BATCH_SIZE
    if iters_per_epoch < 1:
        raise ValueError(f"PRETRAIN.BATCH_SIZE = {p.BATCH_SIZE} is more than the {len(data.train_labels)} "
                         "training images")
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer, iters_per_epoch)
    curve = Curve(name, "", sum(t.numel() for t in model.parameters()))
    generator = torch.Generator().manual_seed(seed)  # the same order and shifts for every network
    start = time.perf_counter()
    for epoch in range(p.EPOCHS):
        model.train()
        order = torch.randperm(len(data.train_labels), generator=generator)
        wrong, loss_sum, seen = 0, 0.0, 0
        for i in range(iters_per_epoch):
            batch = order[i * p.BATCH_SIZE:(i + 1) * p.BATCH_SIZE]
            images = augment(data.train_images[batch], generator=generator).float()
            labels = data.train_labels[batch]
            logits = model(images)
            loss = F.cross_entropy(logits, labels)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{name}: the training loss is {loss.item()} at epoch {epoch + 1}; "
                                         "lower the learning rate (--lr)")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            wrong += int((logits.detach().argmax(1) != labels).sum())
            loss_sum += loss.item() * len(labels)
            seen += len(labels)
        curve.train_error.append(100 * wrong / seen)
        curve.train_loss.append(loss_sum / seen)
        curve.train_error_eval.append(error_rate(model, train_eval_images, data.train_labels))
        curve.test_error.append(error_rate(model, data.test_images, data.test_labels))
        log(f"{name} epoch {epoch + 1}/{p.EPOCHS}: train error {curve.train_error[-1]:.2f} % running, "
            f"{curve.train_error_eval[-1]:.2f} % at the end, loss {curve.train_loss[-1]:.4f}, "
            f"test error {curve.test_error[-1]:.2f} %")
    curve.seconds = time.perf_counter() - start
    return curve


@dataclass
class DegradationResult:
    curves: List[Curve]
    settings: Dict[str, object]
    seconds: float

    def final_train_error(self, name: str, *, running: bool = False) -> float:
        """``name``'s training error after the last epoch: the network's own (inference mode), or
        with ``running`` the last epoch's running error (training mode)."""
        curve = next(c for c in self.curves if c.name == name)
        return (curve.train_error if running else curve.train_error_eval)[-1]


def experiment_overrides(*, epochs: int, batch_size: int, lr: float, images: torch.Tensor) -> List[str]:
    """The recipe every network of the experiment shares, as config overrides: the paper's
    schedule (rate divided by 10 at 50 % and 75 % of the epochs) after its ResNet-110 warm-up (a
    tenth of the rate, here for the first epoch), and the statistics of the training ``images``
    (as the networks see them)."""
    mean = images.float().mean().item()
    std = images.float().std().item()
    steps = (max(1, epochs // 2), max(1, epochs * 3 // 4))
    return ["PRETRAIN.EPOCHS", str(epochs), "PRETRAIN.BATCH_SIZE", str(batch_size),
            "PRETRAIN.BASE_LR", str(lr * 256 / batch_size), "PRETRAIN.LR_SCHEDULER", "step",
            "PRETRAIN.STEPS", str(steps), "PRETRAIN.WARMUP_EPOCHS", str(min(1.0, epochs / 4)),
            "PRETRAIN.WARMUP_FACTOR", "0.1",
            "MODEL.PIXEL_MEAN", str([mean] * 3), "MODEL.PIXEL_STD", str([std] * 3)]


def experiment_configs(config_files: Mapping[str, str], overrides: Sequence[str], *,
                       zero_init_residual: bool = False) -> Dict[str, object]:
    """name -> each config file with the shared ``overrides``; with ``zero_init_residual`` also
    ``MODEL.RESNETS.ZERO_INIT_RESIDUAL`` in the networks that have shortcuts."""
    cfgs = {name: load_pretrain_config(path, overrides) for name, path in config_files.items()}
    if zero_init_residual:
        cfgs = {name: cfg if cfg.MODEL.RESNETS.SHORTCUT == "none" else
                load_pretrain_config(config_files[name], list(overrides) + ["MODEL.RESNETS.ZERO_INIT_RESIDUAL", "True"])
                for name, cfg in cfgs.items()}
    return cfgs


def _train_in_process(name: str, cfg, data: DigitsSplit, augment: Augment, seed: int,
                      train_eval_images: torch.Tensor, threads: int) -> Curve:
    torch.set_num_threads(threads)
    return train_curve(name, cfg, data, augment=augment, seed=seed, train_eval_images=train_eval_images)


def run_degradation(config_files: Mapping[str, str], output_dir, *, epochs: int = 24, batch_size: int = 32,
                    lr: float = 0.05, image_size: int = 8, max_shift: int = 1, clutter_fragments: int = 0,
                    seed: int = 0, jobs: int = 1, zero_init_residual: bool = False,
                    overrides: Sequence[str] = (), log: Callable[[str], None] = print) -> DegradationResult:
    """Train each ``name -> config file`` alike on the digits; write the curves (JSON) and their
    plot (PNG) into ``output_dir``. ``lr`` is the rate for ``batch_size`` (the paper: 0.1 for 128).
    ``jobs`` > 1 trains that many networks at once, in processes of one thread each (the same
    numbers as one after the other: each network's seed, order and shifts are its own).
    ``zero_init_residual`` starts the last norm of every residual branch at zero (Goyal et al.,
    2017; timm's default), in the networks with shortcuts only: a plain network has no identity
    for a zeroed block to fall back on.

    The defaults fit the 20 minutes of 2 shared CPU cores: the digits at their own 8x8 (the CIFAR
    body then ends at 2x2), shifts of up to 1 pixel (the paper's 4 of 32), and batches of 32, for
    four times the paper's iterations per image seen (small images cost per image, not per batch)."""
    for key, value in (("--epochs", epochs), ("--batch-size", batch_size), ("--image-size", image_size),
                       ("--jobs", jobs)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} {value}: a positive integer")
    if max_shift < 0 or max_shift >= image_size:
        raise ValueError(f"--max-shift {max_shift}: 0 up to less than the image size ({image_size})")
    if clutter_fragments < 0:
        raise ValueError(f"--clutter {clutter_fragments}: 0 (clean digits) or more fragments")
    if not lr > 0:
        raise ValueError(f"--lr {lr}: a positive rate")
    if clutter_fragments:
        # the digits at their own 8x8 on a field of image_size, new clutter every batch
        data = load_digits_split(DIGIT_SIZE, seed=seed)
        augment = functools.partial(clutter, canvas=image_size, fragments=clutter_fragments,
                                    fragment_size=CLUTTER_FRAGMENT_SIZE)
        data.test_images = augment(data.test_images, generator=torch.Generator().manual_seed(seed + 1))
    else:
        data = load_digits_split(image_size, seed=seed)
        augment = functools.partial(random_shift, max_shift=max_shift)
    # one fixed draw of the augmented training images: their statistics, and the inference-mode training error
    augmented_train = augment(data.train_images, generator=torch.Generator().manual_seed(seed + 2))
    shared = experiment_overrides(epochs=epochs, batch_size=batch_size, lr=lr, images=augmented_train) + list(overrides)
    cfgs = experiment_configs(config_files, shared, zero_init_residual=zero_init_residual)  # all checked first
    output_dir = Path(output_dir)
    settings = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "image_size": image_size,
                "max_shift": 0 if clutter_fragments else max_shift, "clutter_fragments": clutter_fragments,
                "seed": seed, "train_images": len(data.train_labels),
                "test_images": len(data.test_labels), "threads": torch.get_num_threads() if jobs == 1 else 1,
                "jobs": jobs, "zero_init_residual": zero_init_residual,
                "overrides": list(overrides)}
    log(f"degradation experiment: {len(data.train_labels)} train / {len(data.test_labels)} test digits at "
        f"{image_size}x{image_size}, {epochs} epochs, batch {batch_size}, lr {lr}, "
        + (f"{jobs} networks at once, 1 thread each" if jobs > 1 else f"{torch.get_num_threads()} thread(s)"))
    start = time.perf_counter()
    if jobs == 1:
        curves = [train_curve(name, cfg, data, augment=augment, seed=seed, train_eval_images=augmented_train,
                              log=log) for name, cfg in cfgs.items()]
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # the costliest networks first, so that the cheap ones fill in after them
        order = sorted(cfgs, key=lambda n: -sum(ResNetArch.from_cfg(cfgs[n]).blocks_per_stage))
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {n: pool.submit(_train_in_process, n, cfgs[n], data, augment, seed, augmented_train, 1) for n in order}
            curves = [futures[name].result() for name in cfgs]
    for curve in curves:
        curve.config = str(config_files[curve.name])
    result = DegradationResult(curves, settings, time.perf_counter() - start)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output_dir / CURVES_NAME, {"settings": settings, "seconds": result.seconds,
                                                 "curves": [asdict(c) for c in curves]}, indent=1)
    plot_degradation(result, output_dir / PLOT_NAME)
    return result


def plot_degradation(result: DegradationResult, path: Path) -> None:
    """Training error (thin: dashed the network's own at each epoch's end, dotted the running one)
    and test error (bold) against epochs, plain networks left and ResNets right, as the paper's
    figure 6. Each panel's error axis ends at twice its highest final error (at least 20 %, as the
    paper's figure), so that the ends of the curves, where the comparison is, stay apart."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4), tight_layout=True)
    FigureCanvasAgg(figure)
    plain, residual = figure.subplots(1, 2)
    for axes, title, is_plain in ((plain, "plain networks", True), (residual, "residual networks", False)):
        panel = [c for c in result.curves if c.name.lower().startswith("plain") == is_plain]
        for curve in panel:
            epochs = range(1, len(curve.train_error) + 1)
            line, = axes.plot(epochs, curve.train_error_eval, "--", linewidth=1, label=f"{curve.name} train")
            axes.plot(epochs, curve.train_error, ":", linewidth=1, color=line.get_color(),
                      label=f"{curve.name} train, running")
            axes.plot(epochs, curve.test_error, "-", linewidth=2, color=line.get_color(), label=f"{curve.name} test")
        highest = max((max(c.train_error_eval[-1], c.train_error[-1], c.test_error[-1]) for c in panel), default=50)
        axes.set(title=title, xlabel="epoch", ylabel="error (%)", ylim=(0, min(100, max(20, 2 * highest))))
        axes.grid(alpha=0.3)
        if axes.lines:
            axes.legend(loc="upper right")
    with atomic_output(path) as f:
        figure.savefig(f, format="png", dpi=100)


def summary(result: DegradationResult) -> str:
    """The last epoch's errors: training (the network's own, and the running one), test."""
    lines = [f"{'network':<12} {'params':>9} {'train error':>12} {'(running)':>10} {'test error':>11} {'time':>8}"]
    lines += [f"{c.name:<12} {c.params:>9,} {c.train_error_eval[-1]:>11.2f}% {c.train_error[-1]:>9.2f}% "
              f"{c.test_error[-1]:>10.2f}% {c.seconds:>7.0f}s" for c in result.curves]
    lines.append(f"total {result.seconds:.0f} s")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="degradation_experiment.py",
        description="He et al.'s degradation experiment: plain-20/56 and ResNet-20/56 (configs/CIFAR) trained "
                    "alike on scikit-learn's handwritten digits; writes the training-error curves as JSON and a "
                    "PNG plot.")
    parser.add_argument("--output-dir", required=True, help=f"where {CURVES_NAME} and {PLOT_NAME} go")
    parser.add_argument("--config-dir", default=str(Path(__file__).resolve().parents[2] / "configs" / "CIFAR"),
                        help="the folder of %(default)s's plain_20/56 and R_20/56 configs")
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05, help="the rate for --batch-size (the paper: 0.1 for 128)")
    parser.add_argument("--image-size", type=int, default=8, help="the 8x8 digits are resized to this size")
    parser.add_argument("--max-shift", type=int, default=1, help="random shifts of up to this many pixels")
    parser.add_argument("--clutter", type=int, default=0, metavar="FRAGMENTS",
                        help="cluttered digits: each 8x8 digit at a random place of an --image-size field with this "
                             "many 4x4 fragments of other digits (0: clean digits resized to --image-size, shifted)")
    parser.add_argument("--zero-init-residual", action="store_true",
                        help="start each residual branch's last norm at zero (MODEL.RESNETS.ZERO_INIT_RESIDUAL), in "
                             "the ResNets only: a plain network has no shortcut to carry the signal past a zeroed block")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="networks trained at once, one thread each (2 on 2 cores; --threads then ignored)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                        help="config overrides for every network")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ..cli import exits_cleanly

    @exits_cleanly
    def run() -> int:
        args = build_parser().parse_args(argv)
        config_dir = Path(args.config_dir)
        files = {name: config_dir / file for name, file in DEFAULT_RUNS.items()}
        missing = [str(f) for f in files.values() if not f.is_file()]
        if missing:
            raise ValueError(f"--config-dir {config_dir}: no {', '.join(missing)}")
        if args.threads < 0:
            raise ValueError(f"--threads {args.threads}: 0 (torch's default) or more")
        if args.threads:
            torch.set_num_threads(args.threads)
        result = run_degradation({n: str(f) for n, f in files.items()}, args.output_dir, epochs=args.epochs,
                                 batch_size=args.batch_size, lr=args.lr, image_size=args.image_size,
                                 max_shift=args.max_shift, clutter_fragments=args.clutter, seed=args.seed, jobs=args.jobs,
                                 zero_init_residual=args.zero_init_residual, overrides=args.opts)
        print(summary(result))
        print(f"curves: {Path(args.output_dir) / CURVES_NAME}, plot: {Path(args.output_dir) / PLOT_NAME}")
        return 0

    return run()
