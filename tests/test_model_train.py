"""Training: it learns, a kill -9 resumes to the very same weights, DDP on two CPU processes matches one process."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import torch

from model_helpers import tiny_config_text, write_synthetic_set
from nrt import config
from nrt.model import checkpoint
from nrt.model.checkpoint import read_weights
from nrt.model.inference import Downscaler
from nrt.model.train import train


@contextlib.contextmanager
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _nrt(*args, **kw):
    return subprocess.run([sys.executable, "-m", "nrt.cli", *args], env=_env(), capture_output=True, text=True, timeout=120, **kw)


def _assert_same_weights(path_a, path_b, atol=0.0):
    a, b = checkpoint.load(path_a).tensors, checkpoint.load(path_b).tensors
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=key)


def test_training_learns_and_exports_a_verified_checkpoint(tmp_path):
    dataset = write_synthetic_set(tmp_path / "set.safetensors")
    conf = tmp_path / "train.toml"
    conf.write_text(tiny_config_text(tmp_path / "work", dataset, steps=(60, 20)))
    cfg = config.load(conf)
    with one_thread():
        result = train(cfg, dataset, tmp_path / "out" / "m.safetensors", tmp_path / "run", progress=False)
    regression = [loss for phase, _, loss in result.history if phase == "regression"]
    assert regression[-1] < 0.7 * regression[0], regression  # the mean model learns the coarse-to-fine map
    assert result.steps == {"regression": 60, "diffusion": 20}
    loaded = Downscaler.load(result.output, "cpu", cfg.model)
    assert loaded.sha256 == result.sha256
    meta = loaded.config
    assert meta["provenance"]["dataset_sha256"] and meta["provenance"]["dataset_provenance"] == {"kind": "synthetic test set"}
    assert meta["model"]["input_stats"]["names"] == ["precip", "sin_lat", "cos_lat", "sin_lon", "cos_lon"]


def test_kill_9_mid_training_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path):
    dataset = write_synthetic_set(tmp_path / "set.safetensors")
    conf = tmp_path / "train.toml"
    conf.write_text(tiny_config_text(tmp_path / "work", dataset, steps=(50, 50), checkpoint_every=5))
    run_dir, output = tmp_path / "run", tmp_path / "killed" / "m.safetensors"
    args = ["--config", str(conf), "train", "--run-dir", str(run_dir), "--output", str(output), "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "nrt.cli", *args], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = run_dir / "state.safetensors"
    deadline = time.monotonic() + 90
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training finished before it could be killed"
    steps = read_weights(state)[1]["steps"]
    assert 0 < steps["regression"] + steps["diffusion"] < 100 and not output.exists()

    # The resumed run (one thread, its own process) and the uninterrupted reference (one thread, here) are
    # independent, so they train at the same time.
    log = tmp_path / "resumed.log"
    with log.open("w") as err:
        resumed = subprocess.Popen([sys.executable, "-m", "nrt.cli", *args], env=_env(), stdout=subprocess.DEVNULL, stderr=err)
    try:
        with one_thread():
            reference = train(config.load(conf), dataset, tmp_path / "ref" / "m.safetensors", tmp_path / "ref-run", progress=False)
        resumed.wait(timeout=120)
    finally:
        if resumed.poll() is None:
            resumed.kill()
            resumed.wait()
    assert resumed.returncode == 0, log.read_text()[-3000:]
    assert "resuming" in log.read_text()
    _assert_same_weights(output, reference.output)


def test_resume_refuses_a_state_from_other_settings_with_one_line(tmp_path, capsys):
    from nrt.cli import main

    dataset = write_synthetic_set(tmp_path / "set.safetensors", count=3)
    conf = tmp_path / "train.toml"
    conf.write_text(tiny_config_text(tmp_path / "work", dataset, steps=(3, 0)))
    assert main(["--config", str(conf), "train", "--no-progress"]) == 0
    conf.write_text(tiny_config_text(tmp_path / "work", dataset, steps=(6, 0), learning_rate=1e-4))
    capsys.readouterr()
    assert main(["--config", str(conf), "train", "--no-progress"]) == 2
    refused = capsys.readouterr().err
    assert refused.strip().count("\n") == 0 and "state.safetensors" in refused and "other settings" in refused
    assert main(["--config", str(conf), "train", "--no-progress", "--fresh"]) == 0  # an explicit fresh start is allowed


def test_train_without_a_training_set_or_span_says_what_to_give(tmp_path, capsys):
    from nrt.cli import main

    conf = tmp_path / "train.toml"
    conf.write_text(tiny_config_text(tmp_path / "work", tmp_path / "absent.safetensors"))
    assert main(["--config", str(conf), "train"]) == 2
    assert "--start/--end" in capsys.readouterr().err


def test_ddp_on_two_cpu_processes_matches_a_single_process(tmp_path):
    dataset = write_synthetic_set(tmp_path / "set.safetensors", full_mask=True)  # equal mask counts per rank
    conf = tmp_path / "train.toml"
    conf.write_text(tiny_config_text(tmp_path / "work", dataset, steps=(12, 12), checkpoint_every=6))
    output = tmp_path / "ddp" / "m.safetensors"
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "nrt.cli",
         "--config", str(conf), "train", "--run-dir", str(tmp_path / "ddp-run"), "--output", str(output), "--no-progress"],
        env=_env(), capture_output=True, text=True, timeout=180,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert checkpoint.load(output).meta["provenance"]["world_size"] == 2
    with one_thread():
        single = train(config.load(conf), dataset, tmp_path / "one" / "m.safetensors", tmp_path / "one-run", progress=False)
    _assert_same_weights(output, single.output, atol=2e-5)


def test_the_sampler_noise_range_does_not_block_resuming_but_training_settings_do():
    from nrt.model.spec import ModelSpec
    from nrt.model.train import _fingerprint

    spec = ModelSpec.from_dict(checkpoint.load(Downscaler.load("builtin:demo", "cpu").name).meta["model"])
    base = config.TrainConfig()
    same = _fingerprint(base, spec, "sha")
    assert _fingerprint(base.model_copy(update={"sigma_max": 80.0, "sigma_min": 0.01}), spec, "sha") == same
    wider = ModelSpec(**{**spec.__dict__, "sigma_max": 80.0})
    assert _fingerprint(base, wider, "sha") == same
    assert _fingerprint(base.model_copy(update={"p_std": 1.0}), spec, "sha") != same
    assert _fingerprint(base, spec, "other data") != same
