"""tools/submit.py: the sbatch script, preemption and requeue under submitit's local executor
(pretraining and detection), torchrun's elastic restarts, and signals during a checkpoint write."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("submitit")

from detectron2.engine.train_loop import HookBase  # noqa: E402

from resnet_backbones.data import ensure_imagefolder  # noqa: E402
from resnet_backbones.engine import preemption, slurm  # noqa: E402
from resnet_backbones.engine.train_net import argument_parser, setup  # noqa: E402
from resnet_backbones.engine.trainer import Trainer  # noqa: E402
from resnet_backbones.pretrain import CHECKPOINT_NAME  # noqa: E402
from resnet_backbones.pretrain.cli import main as pretrain_main  # noqa: E402
from resnet_backbones.pretrain.engine import Pretrainer  # noqa: E402
from resnet_backbones.weights import BackboneCheckpointer  # noqa: E402
from test_pretrain import ITERS_PER_EPOCH, TINY, one_thread, read_metrics, subprocess_env  # noqa: E402,F401  (one_thread: the jobs' single thread here too)
from conftest import free_port  # noqa: E402
from test_training import DEMO_CONFIG, checkpoint, small_run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LAZY_CONFIG = ROOT / "configs" / "new_baselines" / "mask_rcnn_R_50_FPN_100ep_LSJ.py"


@pytest.fixture
def job_env(monkeypatch):
    """The environment the local executor's processes inherit: this worktree, one thread."""
    for key, value in subprocess_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SUBMITIT_LOCAL_JOB_ID", "")  # nothing of an enclosing job


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return ensure_imagefolder(tmp_path_factory.mktemp("imagefolder"), num_classes=2, train_per_class=96,
                              val_per_class=32, image_size=40)


def wait_for(condition, job, what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert job.state == "RUNNING", f"the job ended before {what}: {job.stderr() and job.stderr()[-3000:]}"
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.05)


def job_log(out: Path) -> str:
    """Task 0's stdout and stderr (the training loggers write to the latter)."""
    return "".join(p.read_text() for p in sorted((out / slurm.SUBMITIT_FOLDER).glob("*_0_log.*")))


# --------------------------------------------------------------------------- the sbatch script
def test_dry_run_renders_the_sbatch_script_of_a_two_node_request(tmp_path, capsys):
    out = tmp_path / "run"
    code = slurm.main(["--nodes", "2", "--gpus-per-node", "8", "--cpus-per-task", "10", "--mem-gb", "480",
                       "--partition", "gpu", "--account", "vision", "--qos", "high", "--constraint", "volta32gb",
                       "--time", "3-00:00:00", "--job-name", "mrcnn", "--signal", "USR1", "--signal-delay-s", "180",
                       "--sbatch", "exclusive", "--sbatch", "mail-type=END", "--output-dir", str(out), "--dry-run",
                       "train_net", "--config-file", str(DEMO_CONFIG), "SOLVER.IMS_PER_BATCH", "32"])
    assert code == 0
    printed = capsys.readouterr().out
    lines = set(printed.splitlines())
    folder = out / "slurm"
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --cpus-per-task=10", "#SBATCH --mem=480GB", "#SBATCH --partition=gpu",
                 "#SBATCH --account=vision", "#SBATCH --qos=high", "#SBATCH --constraint=volta32gb",
                 "#SBATCH --time=4320", "#SBATCH --job-name=mrcnn", "#SBATCH --signal=USR1@180",
                 "#SBATCH --exclusive", "#SBATCH --mail-type=END", f"#SBATCH --output={folder}/%j_0_log.out",
                 "export SUBMITIT_PREEMPT_SIGNAL=USR1"):
        assert line in lines, f"{line!r} not in\n{printed}"
    # every task's log in the run's folder, and submitit's own runner (the rendezvous comes from SLURM)
    srun = next(line for line in lines if line.startswith("srun "))
    assert f"--output {folder}/%j_%t_log.out --error {folder}/%j_%t_log.err" in srun
    assert srun.endswith(f"-m submitit.core._submit {folder}")
    assert f"# each of the 16 tasks runs train_net --config-file {DEMO_CONFIG} SOLVER.IMS_PER_BATCH 32 " \
           f"OUTPUT_DIR {out}" in printed
    assert "MASTER_ADDR" not in printed


def test_each_tool_and_config_kind_gets_the_output_dir():
    assert slurm.tool_arguments("train_net", ["--config-file", str(LAZY_CONFIG), "train.max_iter=10"], "/o", 8) == [
        "--config-file", str(LAZY_CONFIG), "train.max_iter=10", "train.output_dir=/o"]
    assert slurm.tool_arguments("pretrain_imagenet", ["--", "--config-file", str(TINY), "PRETRAIN.EPOCHS", "3"],
                                "/o", 8) == ["--output-dir", "/o", "--config-file", str(TINY), "PRETRAIN.EPOCHS", "3"]
    job = slurm.ClusterJob("pretrain_imagenet", ["--output-dir", "/nonexistent", "X", "1"], "/nonexistent")
    assert job.command_line() == ["--output-dir", "/nonexistent", "X", "1"]  # nothing to resume yet


def test_a_requeued_job_is_the_same_job_and_resumes_from_the_checkpoint_it_finds(tmp_path):
    job = slurm.ClusterJob("train_net", ["--config-file", "c.yaml", "OUTPUT_DIR", str(tmp_path)], str(tmp_path))
    assert job.command_line()[0] == "--config-file"
    (tmp_path / "last_checkpoint").write_text("model_0000003.pth")
    # first: the trailing config overrides would swallow it
    assert job.command_line() == ["--resume", "--config-file", "c.yaml", "OUTPUT_DIR", str(tmp_path)]
    requeued = job.checkpoint()  # what submitit pickles for the requeued job
    assert requeued.function == job and requeued.function is not job and not requeued.args


@pytest.mark.parametrize("options, expected", [
    (["--time", "90", "--signal-delay-s", "5400"], "--signal-delay-s 5400 with --time 90 min"),
    (["--time", "1:2:3:4"], "--time '1:2:3:4': not a SLURM time limit"),
    (["--signal", "USR9"], "signal 'USR9' is not a signal name"),
    (["--nodes", "0"], "--nodes 0: must be at least 1"),
    (["--gpus-per-node", "8", "--tasks-per-node", "4"], "the tools run one process per GPU"),
    (["--mem-gb", "0"], "--mem-gb 0.0: must be more than 0"),
    (["--sbatch", "output=x"], "output is set by its own option"),
    (["--cluster", "local", "--nodes", "2"], "the local executor runs one machine"),
])
def test_settings_that_cannot_work_get_one_error_line(tmp_path, capsys, options, expected):
    code = slurm.main([*options, "--output-dir", str(tmp_path), "--dry-run", "train_net", "--config-file",
                       str(DEMO_CONFIG)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and expected in err and err.count("\n") == 1, err


@pytest.mark.parametrize("tool_args, expected", [
    (["train_net", "--config-file", "missing.yaml"], "--config-file missing.yaml: no such file"),
    (["train_net", "--config-file", str(DEMO_CONFIG), "--num-gpus", "8"], "--num-gpus: the processes come from"),
    (["train_net", "--config-file", str(DEMO_CONFIG), "OUTPUT_DIR", "x"], "give --output-dir to submit.py"),
    (["pretrain_imagenet", "--resume"], "a submitted job resumes by itself"),
    (["--nodes", "3", "pretrain_imagenet", "--config-file", str(TINY), "--data-path", "d"],
     "PRETRAIN.BATCH_SIZE = 16 is not allowed with --nodes 3 x 8 processes"),
    (["train_net", "--config-file", str(DEMO_CONFIG), "SOLVER.IMS_PER_BATCH", "12"],
     "SOLVER.IMS_PER_BATCH = 12 is not allowed with --nodes 1 x 8 processes"),
])
def test_tool_arguments_that_conflict_with_the_request_are_refused(tmp_path, capsys, tool_args, expected):
    assert slurm.main(["--output-dir", str(tmp_path), "--dry-run", *tool_args]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1, err


def test_a_missing_submitit_is_one_error_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import fails as if not installed
    assert slurm.main(["--output-dir", str(tmp_path), "--dry-run", "train_net", "--config-file",
                       str(DEMO_CONFIG)]) == 2
    assert capsys.readouterr().err == ("error: submitit is not installed: pip install 'resnet-backbones[cluster]' "
                                       "(or pip install submitit)\n")


# --------------------------------------------------------------------------- signals
def test_a_signal_during_a_checkpoint_write_or_twice_leaves_a_loadable_last_checkpoint(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    checkpointer = BackboneCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000001", iteration=1)
    handler = preemption.install(["USR1", "TERM"])
    try:
        real_save = torch.save

        def save_while_signalled(obj, f):
            f.write(b"half a checkpoint")  # the signals arrive in the middle of the write
            os.kill(os.getpid(), signal.SIGUSR1)
            os.kill(os.getpid(), signal.SIGTERM)
            f.seek(0)
            real_save(obj, f)

        monkeypatch.setattr(torch, "save", save_while_signalled)
        checkpointer.save("model_0000002", iteration=2)
        monkeypatch.setattr(torch, "save", real_save)
        assert handler.received == signal.SIGUSR1  # the first one counts; the second changes nothing
        assert preemption.stop_requested()
    finally:
        preemption.uninstall()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL and not preemption.stop_requested()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000002.pth"
    state = checkpoint(tmp_path / "model_0000002.pth")
    assert state["iteration"] == 2
    torch.testing.assert_close(state["model"]["weight"], model.weight.detach())
    assert not list(tmp_path.glob(".*.tmp"))


# --------------------------------------------------------------------------- requeue: pretraining
def test_preempted_pretraining_requeues_and_ends_where_an_uninterrupted_run_ends(data, tmp_path, job_env):
    common = ["--config-file", str(TINY), "--data-path", str(data), "--epochs", "1", "MODEL.DEVICE", "cpu"]
    reference = tmp_path / "reference"
    assert pretrain_main(["--output-dir", str(reference), *common]) == 0

    out = tmp_path / "preempted"
    request = slurm.ClusterRequest(gpus_per_node=0, tasks_per_node=1, time_min=60, signal="USR1")
    job = slurm.submit(slurm.prepare("pretrain_imagenet", common, str(out), request, cluster="local"))
    # the signal as soon as a batch is done: on an idle machine the whole epoch takes under a second,
    # so a fixed wait after the start could miss it; tqdm may skip a count (0/12, then 2/12), so any
    # count inside the epoch will do
    def inside_the_epoch():
        return any(0 < int(done) < ITERS_PER_EPOCH
                   for done in re.findall(rf"(\d+)/{ITERS_PER_EPOCH} \[", job_log(out)))

    wait_for(inside_the_epoch, job, "the first batch")
    job._process.send_signal(signal.SIGTERM)  # what SLURM sends before it preempts; the controller forwards it
    assert job.result() == 0

    log = job_log(out)
    stop = re.search(r"Preempted \(SIGTERM\) in epoch (\d) after iteration (\d+) \((\d+) of 12 batches\)", log)
    assert stop, log[-3000:]
    epoch, iteration, batches = map(int, stop.groups())
    assert "Caught signal SIGUSR1" in log and "this job is preempted" in log and "Requeued job" in log
    assert f"resumed in epoch {epoch} after iteration {iteration} ({batches} of 12 batches done)" in log
    assert 0 < batches < ITERS_PER_EPOCH, "the preemption did not stop the run inside an epoch"

    assert_same_pretraining_end(out, reference, epochs=1)


def assert_same_pretraining_end(out: Path, reference: Path, epochs: int) -> None:
    """The final metrics within 1e-5, and the same iteration, schedule and weights."""
    resumed, expected = read_metrics(out), read_metrics(reference)
    assert [r["epoch"] for r in resumed] == list(range(1, epochs + 1))
    for a, b in zip(resumed, expected):
        for key in ("train_loss", "top1", "top5", "val_loss", "ema_top1", "ema_top5", "ema_val_loss", "lr",
                    "train_images", "iteration"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), key
    final = torch.load(out / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
    uninterrupted = torch.load(reference / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
    assert final["iteration"] == uninterrupted["iteration"] == epochs * ITERS_PER_EPOCH
    assert final["scheduler"] == uninterrupted["scheduler"] and final["epoch_progress"] == {}
    for key, value in uninterrupted["model"].items():
        torch.testing.assert_close(final["model"][key], value, atol=1e-5, rtol=0, msg=key)


def test_pretraining_stopped_by_a_signal_resumes_mid_epoch_exactly(data, tmp_path, monkeypatch):
    """The same in this process (no job): the signal during iteration 5, every rank's stop after it."""
    common = ["--config-file", str(TINY), "--data-path", str(data), "--epochs", "1", "MODEL.DEVICE", "cpu"]
    reference = tmp_path / "reference"
    assert pretrain_main(["--output-dir", str(reference), *common]) == 0

    step = Pretrainer._step

    def step_then_signal(self, images, targets):
        loss = step(self, images, targets)
        if self.iteration == 5:
            os.kill(os.getpid(), signal.SIGUSR1)
        return loss

    out = tmp_path / "preempted"
    monkeypatch.setattr(Pretrainer, "_step", step_then_signal)
    preemption.install(["USR1"])
    try:
        with pytest.raises(preemption.Preempted, match=r"in epoch 1 after iteration 5 \(5 of 12 batches\)"):
            pretrain_main(["--output-dir", str(out), *common])
    finally:
        preemption.uninstall()
        monkeypatch.undo()
    saved = torch.load(out / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
    assert saved["iteration"] == 5 and saved["epoch"] == 0 and saved["epoch_progress"]["batches"] == 5
    assert len(saved["epoch_progress"]["rng"]) == 1
    assert pretrain_main(["--output-dir", str(out), "--resume", *common]) == 0
    assert_same_pretraining_end(out, reference, epochs=1)


# --------------------------------------------------------------------------- requeue: detection
class _LossRecorder(HookBase):
    def after_train(self):
        self.losses = [value for value, _ in self.trainer.storage.history("total_loss").values()]


def _trainer(argv):
    cfg = setup(argument_parser().parse_args(argv))
    return Trainer(cfg)


class _SignalAfter(HookBase):
    def __init__(self, iteration: int):
        self.iteration = iteration

    def after_step(self):
        if self.trainer.iter == self.iteration:
            os.kill(os.getpid(), signal.SIGUSR1)


def test_detection_training_stopped_by_a_signal_resumes_with_the_same_losses(tmp_path, tiny_shapes):
    """In this process (no job): the signal after iteration 2, every rank's stop after 3; the
    resumed run's losses, iteration by iteration, and its final state are the uninterrupted run's."""
    overrides = small_run(tmp_path, 6, "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()", "SOLVER.STEPS", "(4,)",
                          "SOLVER.CHECKPOINT_PERIOD", "100")[2:]
    args = ["--config-file", str(DEMO_CONFIG), *tiny_shapes, *overrides]
    out, reference = tmp_path / "preempted", tmp_path / "reference"
    uninterrupted = _trainer([*args, "OUTPUT_DIR", str(reference)])
    expected = _LossRecorder()
    uninterrupted.register_hooks([expected])
    uninterrupted.resume_or_load(resume=False)
    uninterrupted.train()

    trainer = _trainer([*args, "OUTPUT_DIR", str(out)])
    trainer.register_hooks([_SignalAfter(2)])  # after the preemption hook: the stop comes one iteration later
    trainer.resume_or_load(resume=False)
    preemption.install(["USR1"])
    try:
        with pytest.raises(preemption.Preempted, match="after iteration 3: saved model_0000003.pth"):
            trainer.train()
    finally:
        preemption.uninstall()
    assert (out / "last_checkpoint").read_text() == "model_0000003.pth"
    assert checkpoint(out / "model_0000003.pth")["trainer"]["resume"]["data"]["position"] == 4 * 2

    resumed = _trainer([*args, "OUTPUT_DIR", str(out)])
    after = _LossRecorder()
    resumed.register_hooks([after])
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 4
    resumed.train()
    assert after.losses == pytest.approx(expected.losses[4:], rel=1e-6)
    assert_same_detection_end(out, reference, 6)


def assert_same_detection_end(out: Path, reference: Path, max_iter: int) -> None:
    final, uninterrupted = checkpoint(out / "model_final.pth"), checkpoint(reference / "model_final.pth")
    assert final["iteration"] == uninterrupted["iteration"] == max_iter - 1
    assert final["trainer"]["hooks"]["LRScheduler"] == uninterrupted["trainer"]["hooks"]["LRScheduler"]
    a, b = final["trainer"]["_trainer"]["optimizer"], uninterrupted["trainer"]["_trainer"]["optimizer"]
    assert a["param_groups"] == b["param_groups"] and a["state"].keys() == b["state"].keys()
    for key in b["state"]:
        for name, value in b["state"][key].items():
            torch.testing.assert_close(a["state"][key][name], value, atol=1e-6, rtol=1e-5)
    for key, value in uninterrupted["model"].items():
        torch.testing.assert_close(final["model"][key], value, atol=1e-6, rtol=1e-5, msg=key)


@pytest.mark.slow
def test_preempted_detection_training_requeues_and_resumes_at_the_next_iteration(tmp_path, tiny_shapes, job_env):
    max_iter = 10
    overrides = small_run(tmp_path, max_iter, "SOLVER.CHECKPOINT_PERIOD", "3", "TEST.EVAL_PERIOD", "0",
                          "DATASETS.TEST", "()", "SOLVER.STEPS", "(6,)")[2:]  # without OUTPUT_DIR
    common = ["--config-file", str(DEMO_CONFIG), *tiny_shapes, *overrides]

    out = tmp_path / "preempted"
    request = slurm.ClusterRequest(gpus_per_node=0, tasks_per_node=1, time_min=60)
    job = slurm.submit(slurm.prepare("train_net", common, str(out), request, cluster="local"))
    wait_for(lambda: (out / "model_0000002.pth").exists(), job, "first periodic checkpoint")
    job._process.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    job._process.send_signal(signal.SIGTERM)  # twice: still one stop and one checkpoint
    assert job.result() == 0

    log = job_log(out)
    stop = re.search(r"Preempted \(SIGTERM\) after iteration (\d+): saved (model_\d+\.pth)", log)
    assert stop, log[-3000:]
    stopped, saved = int(stop.group(1)), stop.group(2)
    assert 2 <= stopped < max_iter - 1 and "Requeued job" in log
    assert f"Starting training from iteration {stopped + 1}" in (out / "log.txt").read_text()
    assert log.count("Preempted (SIGTERM)") == 1

    # the uninterrupted run, in this process (the same arithmetic, one thread), with every loss
    reference = tmp_path / "reference"
    trainer = _trainer(["--config-file", str(DEMO_CONFIG), *tiny_shapes, "OUTPUT_DIR", str(reference),
                        *overrides])
    recorder = _LossRecorder()
    trainer.register_hooks([recorder])
    trainer.resume_or_load(resume=False)
    trainer.train()

    assert_same_detection_end(out, reference, max_iter)

    # the first step after the resume, from the preemption checkpoint: the uninterrupted run's loss
    probe = tmp_path / "probe"
    probe.mkdir()
    shutil.copy(out / saved, probe / saved)
    (probe / "last_checkpoint").write_text(saved)
    resumed = _trainer(["--config-file", str(DEMO_CONFIG), *tiny_shapes, "OUTPUT_DIR", str(probe), *overrides])
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == stopped + 1
    resumed.max_iter = stopped + 2  # one step
    first = _LossRecorder()
    resumed.register_hooks([first])
    resumed.train()
    assert first.losses == pytest.approx([recorder.losses[stopped + 1]], rel=1e-6)


# --------------------------------------------------------------------------- torchrun --max-restarts
def _children(pid: int) -> list:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            if re.search(rf"^PPid:\s+{pid}$", status, re.M):
                found.append(int(entry.name))
    return found


@pytest.mark.slow
def test_torchrun_restarts_a_killed_worker_and_the_run_resumes_from_its_last_checkpoint(data, tmp_path):
    out = tmp_path / "elastic"
    command = [sys.executable, "-m", "torch.distributed.run", "--master-port", str(free_port()),
               "--nproc-per-node", "2", "--max-restarts", "1", str(ROOT / "tools" / "pretrain_imagenet.py"),
               "--config-file", str(TINY), "--data-path", str(data), "--output-dir", str(out), "--epochs", "2",
               "MODEL.DEVICE", "cpu"]
    process = subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    try:
        deadline = time.monotonic() + 240
        while not (out / CHECKPOINT_NAME).exists():
            assert process.poll() is None and time.monotonic() < deadline, "no checkpoint was written"
            time.sleep(0.05)
        workers = _children(process.pid)
        assert len(workers) == 2, workers
        os.kill(workers[1], signal.SIGKILL)
        output, _ = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output[-3000:]
    assert "resumed after epoch 1 (iteration 12); continuing at epoch 2" in output, output[-3000:]
    assert [r["epoch"] for r in read_metrics(out)] == [1, 2]
    state = torch.load(out / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
    assert state["epoch"] == 2 and state["iteration"] == 2 * ITERS_PER_EPOCH and state["world_size"] == 2


@pytest.mark.slow
def test_a_signal_to_one_of_two_processes_stops_both_at_the_same_iteration(data, tmp_path, job_env):
    """Two tasks of one local job (the ranks and rendezvous from submitit, as on SLURM): SIGTERM to
    the second only; both stop after the same iteration, the first writes both random states."""
    out = tmp_path / "two"
    common = ["--config-file", str(TINY), "--data-path", str(data), "--epochs", "1", "MODEL.DEVICE", "cpu"]
    request = slurm.ClusterRequest(gpus_per_node=0, tasks_per_node=2, time_min=60)
    job = slurm.submit(slurm.prepare("pretrain_imagenet", common, str(out), request, cluster="local"))
    wait_for(lambda: (out / "metrics.json").exists(), job, "start of training")
    time.sleep(1.0)
    tasks = _children(job._process.pid)
    assert len(tasks) == 2, tasks
    second = max(tasks, key=lambda pid: Path(f"/proc/{pid}/environ").read_bytes().count(b"SUBMITIT_LOCAL_LOCALID=1"))
    os.kill(second, signal.SIGTERM)
    assert job.results() == [0, 0]

    log = job_log(out)
    stop = re.search(r"Preempted \(another process's signal\) in epoch 1 after iteration (\d+)", log)
    assert stop, log[-3000:]
    other = "".join(p.read_text() for p in sorted((out / slurm.SUBMITIT_FOLDER).glob("*_1_log.*")))
    assert "Not checkpointing nor requeuing since I am a slave" in other and "requeueing job" in other
    assert f"resumed in epoch 1 after iteration {stop.group(1)}" in log
    state = torch.load(out / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
    assert state["iteration"] == ITERS_PER_EPOCH and state["world_size"] == 2
    assert [r["epoch"] for r in read_metrics(out)] == [1] and read_metrics(out)[0]["train_images"] == 12 * 16
