"""Submitting ``train_net`` and ``pretrain_imagenet`` to a SLURM cluster through submitit.

:func:`submit` turns a :class:`ClusterRequest` (nodes, GPUs, CPUs, memory, partition, account,
QoS, constraint, time limit, job name, extra ``#SBATCH`` lines) into one submitit job of
``nodes x tasks_per_node`` tasks, one training process per GPU, as FAIR's training repositories
(DETR, DINO, MAE, ConvNeXt) submit theirs. Each task is a :class:`ClusterJob`:

* it reads its rank, the world size and the rendezvous (the first node of the allocation, a port
  derived from the job id) from SLURM's environment through submitit's
  ``TorchDistributedEnvironment`` and exports them as ``torchrun`` would, so the tools start their
  process group exactly as under ``torchrun``;
* it continues the run in its output directory when there is one to continue (a requeued job,
  or a job SLURM restarted after a node failure): ``--resume``;
* it handles the preemption signals (:mod:`.preemption`): every rank stops after the same
  iteration, rank 0 writes that iteration's checkpoint, and the job requeues itself through
  submitit's checkpointing protocol (its ``checkpoint`` method returns the same job).

Everything of a run lands in one ``--output-dir``: the tool's checkpoints and logs, and
``slurm/`` with the sbatch script and the stdout/stderr of every task (``<job>_<task>_log.*``).
"""
from __future__ import annotations

import importlib
import logging
import os
import re
import shlex
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import preemption

logger = logging.getLogger(__name__)

#: tool name -> the ``main(argv)`` it runs
TOOLS: Dict[str, str] = {
    "train_net": "resnet_backbones.engine.train_net:main",
    "pretrain_imagenet": "resnet_backbones.pretrain.cli:main",
}
CLUSTERS = ("slurm", "local")
SUBMITIT_FOLDER = "slurm"
#: where a pretraining run keeps what ``--resume`` continues
PRETRAIN_CHECKPOINT = "checkpoint.pth"
#: ``#SBATCH`` keys this module writes itself; an extra line may not replace them
MANAGED_SBATCH_KEYS = ("output", "error", "signal", "nodes", "ntasks-per-node", "gpus-per-node", "cpus-per-task",
                       "mem", "time", "job-name", "partition", "account", "qos", "constraint", "open-mode")


def import_submitit():
    try:
        import submitit
    except ImportError:
        raise ValueError("submitit is not installed: pip install 'resnet-backbones[cluster]' "
                         "(or pip install submitit)") from None
    return submitit


def parse_time_limit(text: str) -> int:
    """Minutes of a SLURM time limit: ``MINUTES``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]`` or ``MM:SS``."""
    value = str(text).strip()
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", value)
    if not match:
        raise ValueError(f"--time {text!r}: not a SLURM time limit (MINUTES, HH:MM:SS or D-HH:MM:SS)")
    days, first, second, third = match.groups()
    if days is not None:  # D-HH, D-HH:MM, D-HH:MM:SS
        hours, minutes, seconds = int(first), int(second or 0), int(third or 0)
    elif third is not None:  # HH:MM:SS
        hours, minutes, seconds = int(first), int(second), int(third)
    elif second is not None:  # MM:SS
        hours, minutes, seconds = 0, int(first), int(second)
    else:
        hours, minutes, seconds = 0, int(first), 0
    total = (int(days or 0) * 24 + hours) * 60 + minutes + (seconds + 59) // 60
    if total < 1:
        raise ValueError(f"--time {text!r}: the time limit must be at least one minute")
    return total


def parse_sbatch_line(text: str) -> Tuple[str, Any]:
    """``KEY=VALUE`` or ``KEY`` (a flag) of an extra ``#SBATCH --KEY=VALUE`` line."""
    key, separator, value = str(text).strip().removeprefix("#SBATCH").strip().lstrip("-").partition("=")
    key = key.strip()
    if not re.fullmatch(r"[a-zA-Z][a-zA-Z0-9_-]*", key):
        raise ValueError(f"--sbatch {text!r}: not KEY=VALUE or KEY (e.g. exclusive, mail-type=END)")
    key = key.replace("_", "-")
    if key in MANAGED_SBATCH_KEYS:
        raise ValueError(f"--sbatch {text!r}: {key} is set by its own option of submit.py")
    return key, (value.strip() if separator else True)


@dataclass
class ClusterRequest:
    """What the job asks SLURM for; :meth:`check` rejects what cannot work, naming the option."""

    nodes: int = 1
    gpus_per_node: int = 8
    tasks_per_node: Optional[int] = None  # default: one per GPU (one on a CPU-only request)
    cpus_per_task: int = 10
    mem_gb: Optional[float] = None  # per node
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    time_min: int = 72 * 60
    job_name: str = "resnet_backbones"
    signal: str = "USR2"  # sent signal_delay_s before the time limit; TERM comes before preemption
    signal_delay_s: int = 120
    sbatch: Dict[str, Any] = field(default_factory=dict)
    max_timeouts: int = 3  # requeues after reaching the time limit (preemptions are not counted)

    @property
    def tasks(self) -> int:
        return self.tasks_per_node or max(self.gpus_per_node, 1)

    @property
    def world_size(self) -> int:
        return self.nodes * self.tasks

    def check(self, cluster: str = "slurm") -> None:
        if cluster not in CLUSTERS:
            raise ValueError(f"--cluster {cluster!r} is not allowed: one of {list(CLUSTERS)}")
        for name in ("nodes", "cpus_per_task", "time_min"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be at least 1")
        if self.gpus_per_node < 0:
            raise ValueError(f"--gpus-per-node {self.gpus_per_node}: must be 0 or more")
        if self.tasks_per_node is not None and self.tasks_per_node < 1:
            raise ValueError(f"--tasks-per-node {self.tasks_per_node}: must be at least 1")
        if self.gpus_per_node and self.tasks_per_node and self.tasks_per_node != self.gpus_per_node:
            raise ValueError(f"--tasks-per-node {self.tasks_per_node} with --gpus-per-node {self.gpus_per_node}: "
                             "the tools run one process per GPU; leave --tasks-per-node out")
        if self.mem_gb is not None and self.mem_gb <= 0:
            raise ValueError(f"--mem-gb {self.mem_gb}: must be more than 0")
        preemption.parse_signal(self.signal)
        if not 0 <= self.signal_delay_s < self.time_min * 60:
            raise ValueError(f"--signal-delay-s {self.signal_delay_s} with --time {self.time_min} min: the warning "
                             "must come after the job starts (0 <= delay < the time limit)")
        if self.max_timeouts < 0:
            raise ValueError(f"--max-timeouts {self.max_timeouts}: must be 0 or more")
        if cluster == "local" and self.nodes != 1:
            raise ValueError(f"--nodes {self.nodes} with --cluster local: the local executor runs one machine")

    def signal_name(self) -> str:
        return preemption.parse_signal(self.signal).name.removeprefix("SIG")

    def slurm_parameters(self) -> Dict[str, Any]:
        """``SlurmExecutor.update_parameters`` arguments (sbatch's names)."""
        params: Dict[str, Any] = {
            "job_name": self.job_name, "nodes": self.nodes, "ntasks_per_node": self.tasks,
            "cpus_per_task": self.cpus_per_task, "time": self.time_min, "signal_delay_s": self.signal_delay_s,
            # submitit reads its preemption signal from this variable when the job's Python starts
            "setup": [f"export SUBMITIT_PREEMPT_SIGNAL={self.signal_name()}"],
            "additional_parameters": {**self.sbatch, "signal": f"{self.signal_name()}@{self.signal_delay_s}"},
        }
        if self.gpus_per_node:
            params["gpus_per_node"] = self.gpus_per_node
        if self.mem_gb is not None:
            whole = self.mem_gb == int(self.mem_gb)
            params["mem"] = f"{int(self.mem_gb)}GB" if whole else f"{int(self.mem_gb * 1024)}MB"
        for name in ("partition", "account", "qos", "constraint"):
            if getattr(self, name):
                params[name] = getattr(self, name)
        return params

    def local_parameters(self) -> Dict[str, Any]:
        return {"tasks_per_node": self.tasks, "gpus_per_node": self.gpus_per_node, "timeout_min": self.time_min,
                "signal_delay_s": self.signal_delay_s}


# --------------------------------------------------------------------------- the job
def tool_main(tool: str) -> Callable[[List[str]], int]:
    module, _, name = TOOLS[tool].partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass
class ClusterJob:
    """One task of a submitted run: ``tool``'s ``main(argv)`` with the rendezvous from SLURM.

    Requeued through submitit's protocol: :meth:`checkpoint` (called by submitit on rank 0
    once the preemption checkpoint is written) returns the same job, which resumes from it.
    """

    tool: str
    argv: List[str]
    output_dir: str
    signals: Tuple[str, ...] = preemption.DEFAULT_SIGNALS

    def resuming(self) -> bool:
        out = Path(self.output_dir)
        if self.tool == "pretrain_imagenet":
            return (out / PRETRAIN_CHECKPOINT).is_file()
        return (out / "last_checkpoint").is_file()

    def command_line(self) -> List[str]:
        """The tool's arguments for this start: ``--resume`` when there is a run to continue."""
        # first: the tools' trailing config overrides take every argument after them
        return (["--resume"] if self.resuming() else []) + list(self.argv)

    def __call__(self) -> int:
        submitit = import_submitit()
        job_env = submitit.JobEnvironment()
        dist_env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False,
                                                                         overwrite=True)
        if job_env.cluster == "local":  # one machine: no name to resolve
            os.environ["MASTER_ADDR"] = "127.0.0.1"
        requeue_signal = job_env._usr_sig()
        requeue = signal.getsignal(requeue_signal)  # submitit's: checkpoint() and requeue (rank 0)
        preemption.install(set(self.signals) | {requeue_signal.name.removeprefix("SIG")})
        argv = self.command_line()
        print(f"{self.tool} rank {dist_env.rank}/{dist_env.world_size} (local rank {dist_env.local_rank}, "
              f"rendezvous {os.environ['MASTER_ADDR']}:{dist_env.master_port}, job {job_env.job_id}): "
              f"{shlex.join(argv)}", flush=True)
        try:
            code = tool_main(self.tool)(argv)
        except preemption.Preempted:
            preemption.uninstall()
            print(f"requeueing job {job_env.job_id}", flush=True)
            if callable(requeue):
                requeue(requeue_signal, None)  # rank 0 exits in it; the others just return
            raise SystemExit(0) from None
        finally:
            preemption.uninstall()
        if code:
            raise RuntimeError(f"{self.tool} exited with status {code}; its error is in the task's log")
        return code

    def checkpoint(self, *args: Any, **kwargs: Any):
        # the same job: it finds the checkpoint in output_dir and resumes from it
        return import_submitit().helpers.DelayedSubmission(ClusterJob(self.tool, list(self.argv), self.output_dir,
                                                                      tuple(self.signals)))


# --------------------------------------------------------------------------- submission
def _value_after(argv: Sequence[str], flag: str) -> Optional[str]:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def tool_arguments(tool: str, argv: Sequence[str], output_dir: str, world_size: int) -> List[str]:
    """``argv`` of ``tool`` with the run's output directory; what would conflict with the
    request is a ``ValueError`` naming the argument."""
    if tool not in TOOLS:
        raise ValueError(f"tool {tool!r} is not allowed: one of {sorted(TOOLS)}")
    argv = list(argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    config = _value_after(argv, "--config-file")
    if config is not None and not Path(config).is_file():
        raise ValueError(f"--config-file {config}: no such file")
    if "--resume" in argv:
        raise ValueError("--resume: a submitted job resumes by itself from the checkpoint in --output-dir")
    if tool == "pretrain_imagenet":
        if _value_after(argv, "--output-dir") is not None:
            raise ValueError("--output-dir: give it to submit.py, before the tool's name")
        return ["--output-dir", output_dir] + argv  # before the trailing overrides
    for flag in ("--num-gpus", "--num-machines", "--machine-rank", "--dist-url"):
        if _value_after(argv, flag) is not None:
            raise ValueError(f"{flag}: the processes come from --nodes and --gpus-per-node of submit.py "
                             f"({world_size} in all); leave {flag} out")
    if config is None:
        raise ValueError("train_net needs --config-file")
    if any(a == "OUTPUT_DIR" or a.startswith("train.output_dir=") for a in argv):
        raise ValueError("OUTPUT_DIR / train.output_dir: give --output-dir to submit.py instead")
    lazy = config.endswith(".py")
    return argv + ([f"train.output_dir={output_dir}"] if lazy else ["OUTPUT_DIR", output_dir])


def check_batch_size(tool: str, argv: Sequence[str], request: ClusterRequest) -> None:
    """The tool's batch, over all processes, must divide among the ``request``'s processes."""
    if tool == "pretrain_imagenet":
        from ..pretrain.cli import _overrides, build_parser
        from ..pretrain.config import load_pretrain_config

        args = build_parser().parse_args(list(argv))
        if not args.config_file:
            return
        key, batch = "PRETRAIN.BATCH_SIZE", load_pretrain_config(args.config_file, _overrides(args)).PRETRAIN.BATCH_SIZE
    else:
        from .config_frontends import load_training_config
        from .train_net import argument_parser

        args = argument_parser().parse_args(list(argv))
        key, batch = "SOLVER.IMS_PER_BATCH", load_training_config(args.config_file, args.opts).SOLVER.IMS_PER_BATCH
    if batch % request.world_size:
        raise ValueError(f"{key} = {batch} is not allowed with --nodes {request.nodes} x {request.tasks} processes: "
                         f"the batch is over all {request.world_size} processes and must divide evenly among them")


@dataclass
class Submission:
    job: ClusterJob
    folder: Path
    parameters: Dict[str, Any]
    cluster: str
    max_timeouts: int = 3
    signal: str = "USR2"

    def sbatch_script(self) -> str:
        """The sbatch script submitit writes for this job (a SLURM request)."""
        from submitit.slurm.slurm import _make_sbatch_string  # what SlurmExecutor writes, without srun

        command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(self.folder))])
        return _make_sbatch_string(command=command, folder=self.folder, **self.parameters)


def prepare(tool: str, tool_argv: Sequence[str], output_dir: str, request: ClusterRequest,
            cluster: str = "slurm") -> Submission:
    """Check everything and build the job, without submitting it."""
    import_submitit()
    request.check(cluster)
    output_dir = str(Path(output_dir).expanduser().absolute())
    argv = tool_arguments(tool, tool_argv, output_dir, request.world_size)
    check_batch_size(tool, argv, request)
    signals = tuple(dict.fromkeys([request.signal_name(), "TERM"]))
    params = request.slurm_parameters() if cluster == "slurm" else request.local_parameters()
    return Submission(ClusterJob(tool, argv, output_dir, signals), Path(output_dir) / SUBMITIT_FOLDER, params,
                      cluster, request.max_timeouts, request.signal_name())


def submit(submission: Submission):
    """Submit a prepared job; returns submitit's ``Job``."""
    submitit = import_submitit()
    if submission.cluster == "local":
        executor = submitit.LocalExecutor(folder=submission.folder, max_num_timeout=submission.max_timeouts)
    else:
        try:
            executor = submitit.SlurmExecutor(folder=submission.folder, max_num_timeout=submission.max_timeouts)
        except RuntimeError as error:  # no srun on this machine
            raise ValueError(f"cannot submit to SLURM from here: {error} "
                             "(--dry-run prints the sbatch script)") from None
    executor.update_parameters(**submission.parameters)
    with submitit.helpers.clean_env():  # a job submitted from inside another must not inherit its ranks
        # the local executor's processes inherit this environment (a SLURM job: the setup line)
        os.environ["SUBMITIT_PREEMPT_SIGNAL"] = submission.signal
        try:
            return executor.submit(submission.job)
        finally:
            del os.environ["SUBMITIT_PREEMPT_SIGNAL"]


# --------------------------------------------------------------------------- command line
def argument_parser():
    import argparse

    parser = argparse.ArgumentParser(
        prog="submit.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Submit tools/train_net.py or tools/pretrain_imagenet.py to SLURM through submitit: one "
                    "process per GPU, the rendezvous from SLURM, checkpoint and requeue on preemption.",
        epilog="examples:\n"
               "  submit.py --nodes 2 --gpus-per-node 8 --partition gpu --time 72:00:00 --output-dir out/mask_rcnn \\\n"
               "      train_net --config-file configs/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml\n"
               "  submit.py --gpus-per-node 8 --time 2-00:00:00 --output-dir out/r50 pretrain_imagenet \\\n"
               "      --config-file configs/ImageNet/R_50.yaml --data-path /data/imagenet\n"
               "  submit.py --dry-run ... (prints the sbatch script, submits nothing)")
    default = ClusterRequest()
    parser.add_argument("--output-dir", required=True,
                        help="the run's folder (on shared storage): checkpoints, logs, slurm/ with every task's output")
    parser.add_argument("--nodes", type=int, default=default.nodes)
    parser.add_argument("--gpus-per-node", type=int, default=default.gpus_per_node,
                        help="GPUs per node, one training process each (default %(default)s)")
    parser.add_argument("--tasks-per-node", type=int, help="processes per node of a CPU-only request")
    parser.add_argument("--cpus-per-task", type=int, default=default.cpus_per_task,
                        help="CPUs per process, for its data-loading workers (default %(default)s)")
    parser.add_argument("--mem-gb", type=float, help="memory per node")
    parser.add_argument("--partition")
    parser.add_argument("--account")
    parser.add_argument("--qos")
    parser.add_argument("--constraint", help="node features, e.g. volta32gb")
    parser.add_argument("--time", default="72:00:00", help="time limit: MINUTES, HH:MM:SS or D-HH:MM:SS "
                                                          "(default %(default)s)")
    parser.add_argument("--job-name", default=default.job_name)
    parser.add_argument("--signal", default=default.signal,
                        help="the signal SLURM sends --signal-delay-s before the time limit (default %(default)s; "
                             "TERM, sent before a preemption, is always handled)")
    parser.add_argument("--signal-delay-s", type=int, default=default.signal_delay_s,
                        help="the warning time: enough to finish an iteration and write a checkpoint "
                             "(default %(default)s)")
    parser.add_argument("--max-timeouts", type=int, default=default.max_timeouts,
                        help="requeues after reaching the time limit (default %(default)s; preemptions do not count)")
    parser.add_argument("--sbatch", action="append", default=[], metavar="KEY[=VALUE]",
                        help="an extra #SBATCH --KEY=VALUE line (repeatable), e.g. exclusive, mail-type=END")
    parser.add_argument("--cluster", choices=CLUSTERS, default="slurm",
                        help="local: run the job's processes on this machine (submitit's local executor)")
    parser.add_argument("--dry-run", action="store_true", help="print the sbatch script; submit nothing")
    parser.add_argument("tool", choices=sorted(TOOLS), help="the tool to run")
    parser.add_argument("tool_args", nargs="...", metavar="...", help="the tool's own arguments")
    return parser


def request_from_args(args) -> ClusterRequest:
    return ClusterRequest(
        nodes=args.nodes, gpus_per_node=args.gpus_per_node, tasks_per_node=args.tasks_per_node,
        cpus_per_task=args.cpus_per_task, mem_gb=args.mem_gb, partition=args.partition, account=args.account,
        qos=args.qos, constraint=args.constraint, time_min=parse_time_limit(args.time), job_name=args.job_name,
        signal=args.signal, signal_delay_s=args.signal_delay_s, max_timeouts=args.max_timeouts,
        sbatch=dict(parse_sbatch_line(line) for line in args.sbatch))


def main(argv: Optional[List[str]] = None) -> int:
    from ..cli import exits_cleanly

    return exits_cleanly(_main)(argv)


def _main(argv: Optional[List[str]]) -> int:
    args = argument_parser().parse_args(argv)
    request = request_from_args(args)
    submission = prepare(args.tool, args.tool_args, args.output_dir, request, cluster=args.cluster)
    every = f"each of the {request.world_size} tasks runs {args.tool} {shlex.join(submission.job.argv)}"
    if args.dry_run:
        if args.cluster == "slurm":
            print(submission.sbatch_script(), end="")
        else:
            print(f"# local executor: {submission.parameters}")
        print(f"# {every} (+ --resume once {args.output_dir} has a checkpoint)")
        return 0
    job = submit(submission)
    print(f"submitted job {job.job_id}: {every}\nlogs: {submission.folder}/{job.job_id}_<task>_log.out/.err")
    return 0
