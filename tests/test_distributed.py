"""torchrun's processes on the CPU (gloo): two ranks train as one process at twice the batch, resume, and agree on
skipping a NaN. Each test launches real processes, as torchrun does (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, tiny_config
from utilities import load_checkpoint


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world, argv, script=None, timeout=300):
    """Run `python piano_main.py argv` (or script) as `world` ranks; returns their (returncode, output) by rank."""
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": str(world),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, str(script or ROOT / "piano_main.py"), *argv]
    procs = [subprocess.Popen(command, cwd=ROOT, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(world)]
    results = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=timeout)  # a hung rank fails the test instead of hanging it
            results.append((proc.returncode, out))
    finally:
        for proc in procs:
            proc.kill()
    return results


def small_run(root, dataset, batch, **sections):
    """One VAE step, one D-only step and one GAN step at `batch` per process, with nothing but checkpoints written."""
    return tiny_config(root, dataset, **{
        "data": {"batch_size": batch, "steps_per_epoch": 1, "num_workers": 0},
        "vae": {"n_fft": 128, "hop_length": 32, "downsample": 4, "latent_dim": 8, "width": 16, "layers": 1,
                "epochs": 1},
        "discriminator": {"n_channels": 16, "use_minibatch_discrimination": False},
        "training": {"epochs": 1, "gan_batch_size": batch, "pretrain_discriminator_epochs": 1, "eval_every": 0},
        "output": {"save_after_nepochs": 1, "samples_per_save": 0, "tensorboard": False},
        **sections})


def test_two_ranks_at_batch_b_train_as_one_process_at_batch_2b(tmp_path, dataset):
    """The VAE step, the D-only step and the GAN step of two ranks at batch 2 against one process at batch 4."""
    one = small_run(tmp_path / "one", dataset, batch=4)
    assert piano_main_exit(one) == 0
    reference = {name: load_checkpoint(tmp_path / "one" / "ck" / name)
                 for name in ("vae.pt", "generator_epoch_1.pt", "discriminator_epoch_1.pt")}
    # Stage two on the same VAE: the two ranks' windows and noise are the rows of the one process's global batch,
    # and their gradients are averaged, so the weights agree to float precision.
    two = small_run(tmp_path / "two", dataset, batch=2, vae={"checkpoint": str(tmp_path / "one" / "ck" / "vae.pt")})
    results = launch(2, ["--config", str(two), "--device", "cpu"])
    assert [code for code, _ in results] == [0, 0], results[0][1][-3000:] + results[1][1][-3000:]
    assert "MusiGAN" in results[0][1] and "MusiGAN" not in results[1][1]  # only rank 0 prints
    g, d = (load_checkpoint(tmp_path / "two" / "ck" / name) for name in ("generator_epoch_1.pt",
                                                                          "discriminator_epoch_1.pt"))
    assert g["metrics"][0]["d/total"] == pytest.approx(reference["generator_epoch_1.pt"]["metrics"][0]["d/total"],
                                                       rel=1e-6)  # the same windows and fakes, to float precision
    t = reference["generator_epoch_1.pt"]["config"]["training"]
    assert_adam_close(g["model_state_dict"], reference["generator_epoch_1.pt"]["model_state_dict"], t["learning_rate"], 1)
    assert_adam_close(g["ema_state_dict"], reference["generator_epoch_1.pt"]["ema_state_dict"], t["learning_rate"], 1)
    assert_adam_close(d["model_state_dict"], reference["discriminator_epoch_1.pt"]["model_state_dict"],
                      t["learning_rate_disc"], 2, share=0.01)
    # Stage one on two ranks: the same chunks, crops and reparameterization noise as the one process (its KL is
    # the same to float precision). The STFT distance's spectral-convergence term is a ratio of norms over a
    # batch, so two half batches give a slightly different gradient than the whole; Adam's first step, about
    # lr x sign(gradient), turns that into at most 2 lr where a gradient is near zero.
    # With a time budget, each step also averages the ranks' time shares for the learning-rate decay.
    three = small_run(tmp_path / "three", dataset, batch=2, vae={
        "n_fft": 128, "hop_length": 32, "downsample": 4, "latent_dim": 8, "width": 16, "layers": 1, "epochs": 1,
        "time_budget_minutes": 60.0})
    results = launch(2, ["--config", str(three), "--device", "cpu"])
    assert [code for code, _ in results] == [0, 0], results[0][1][-3000:]
    a, b = reference["vae.pt"], load_checkpoint(tmp_path / "three" / "ck" / "vae.pt")
    assert b["metrics"][0]["vae/kl"] == pytest.approx(a["metrics"][0]["vae/kl"], rel=1e-5)
    assert b["metrics"][0]["vae/stft"] == pytest.approx(a["metrics"][0]["vae/stft"], rel=1e-3)
    assert_adam_close(b["model_state_dict"], a["model_state_dict"], a["config"]["vae"]["learning_rate"], 1, share=0.05)


def assert_adam_close(state, reference, lr, steps, share=0.001):
    """Weights equal to float precision, but for the few whose gradient is near zero: Adam's early steps, about
    lr x sign(gradient), turn a float-rounding difference there into up to 2 lr a step."""
    differing = total = 0
    for param, value in reference.items():
        difference = (state[param].float() - value.float()).abs()
        assert float(difference.max()) <= 2 * steps * lr + 1e-6, param
        differing += int((difference > 1e-6).sum())
        total += difference.numel()
    assert differing <= share * total, f"{differing} of {total} weights differ"


def piano_main_exit(config):
    """One process, as `python piano_main.py --config config` runs it."""
    return subprocess.run([sys.executable, str(ROOT / "piano_main.py"), "--config", str(config), "--device", "cpu"],
                          cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          timeout=300).returncode


def test_two_ranks_resume_and_write_each_file_once(tmp_path, dataset):
    config = small_run(tmp_path, dataset, batch=2, training={"epochs": 2, "gan_batch_size": 2,
                                                             "pretrain_discriminator_epochs": 1, "eval_every": 1},
                       output={"save_after_nepochs": 1, "samples_per_save": 1, "tensorboard": True})
    results = launch(2, ["--config", str(config), "--device", "cpu"])
    assert [code for code, _ in results] == [0, 0], results[0][1][-3000:]
    results = launch(2, ["--config", str(config), "--device", "cpu", "--set", "output.resume_from_checkpoint=latest",
                         "--set", "training.epochs=3"])
    assert [code for code, _ in results] == [0, 0], results[0][1][-3000:]
    assert "resumed from epoch 2" in results[0][1]
    ck = tmp_path / "ck"
    for epoch in (1, 2, 3):
        for kind in ("generator", "discriminator"):
            state = load_checkpoint(ck / f"{kind}_epoch_{epoch}.pt")
            assert state["epoch"] == epoch
            # every rank's random state is saved; they are one shared stream (rank 0's extra work draws nothing)
            first, second = state["rank_rng_states"]
            assert torch.equal(first["torch"], second["torch"]) and torch.equal(first["torch"], state["rng_states"]["torch"])
    rows = (ck / "metrics.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["1", "2", "3"]  # each epoch once, from rank 0
    assert len((ck / "vae_metrics.csv").read_text().splitlines()) == 2
    assert len(list((ck / "tensorboard" / "gan").glob("events.*"))) == 2  # one writer per launch: rank 0's
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["epoch_1", "epoch_2", "epoch_3", "vae"]
    assert not list(ck.glob(".*tmp*"))  # no half-written file left by two ranks writing at once


DRIVER = """
import json, os, sys
import piano_main, piano_train
real_loss, real_update = piano_train.discriminator_adversarial_loss, piano_train.apply_update
calls, updates = {"loss": 0}, []

def nan_on_rank_1(*args, **kwargs):
    # D's loss of the first GAN step reads NaN on rank 1 only. Its gradient stays finite, so only the vote in
    # utilities.average_gradients (not the averaged gradients) can make rank 0 skip that update too.
    calls["loss"] += 1
    value = real_loss(*args, **kwargs)
    if os.environ["RANK"] == "1" and calls["loss"] == 3:
        return value.detach() * float("nan") + (value - value.detach())
    return value

def recorded(*args, **kwargs):
    ok = real_update(*args, **kwargs)
    updates.append(ok)
    return ok

piano_train.discriminator_adversarial_loss, piano_train.apply_update = nan_on_rank_1, recorded
code = piano_main.main(sys.argv[1:])
print("UPDATES " + json.dumps(updates))
sys.exit(code)
"""


def test_a_nan_on_one_rank_is_skipped_on_both_and_nothing_hangs(tmp_path, dataset):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    config = small_run(tmp_path, dataset, batch=2, data={"batch_size": 2, "steps_per_epoch": 2, "num_workers": 0},
                       training={"epochs": 1, "gan_batch_size": 2, "pretrain_discriminator_epochs": 1,
                                 "eval_every": 0})
    results = launch(2, ["--config", str(config), "--device", "cpu"], script=script, timeout=240)
    assert [code for code, _ in results] == [0, 0], results[0][1][-3000:] + results[1][1][-3000:]
    updates = [json.loads(out.split("UPDATES ")[1].splitlines()[0]) for _, out in results]
    assert updates[0] == updates[1] and updates[0].count(False) == 1  # the same update skipped on both ranks
    rows = (tmp_path / "ck" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert float(rows[1].split(",")[header.index("skipped_updates")]) == 1
