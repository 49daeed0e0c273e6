"""One budget, split well: stage one takes vae.budget_share of training.time_budget_minutes and stops sooner on a
plateau of its validation distance; without a budget both stages are sized in optimizer steps, so a collection
twice as large trains as far; the run prints its plan; older configs' epochs still work."""

import numpy as np
import pytest
import torch

import config_reader
import piano_main
import piano_pretrain
from conftest import SR, synth_song, tiny_config
from piano_encoder_decoder import vae_from_config
from piano_model import AudioDataset
from piano_pretrain import plateaued, pretrain_vae
from utilities import load_checkpoint

TINY_VAE = {"n_fft": 128, "hop_length": 32, "downsample": 4, "latent_dim": 8, "width": 16, "layers": 1}


def small_config(**vae):
    config = config_reader.defaults()
    config["data"].update(sample_rate=SR, batch_size=2, num_workers=0, steps_per_epoch=0)
    config["model"]["seq_len"] = 4096
    config["vae"].update(TINY_VAE, **vae)
    return config


def chunks(count):
    return AudioDataset(np.stack([synth_song(1, SR, 2, seed=i).T[:, :4096] for i in range(count)]).astype(np.float16),
                        4096, normalization="peak")


def train(config, data, **kwargs):
    torch.manual_seed(0)
    vae = vae_from_config(config["vae"], 2)
    return pretrain_vae(vae, torch.optim.Adam(vae.parameters(), 1e-3), data, kwargs.pop("val", None), config,
                        torch.device("cpu"), log=kwargs.pop("log", lambda *_: None), **kwargs)


def test_stage_one_takes_its_share_of_the_run_budget_on_a_fake_clock(monkeypatch):
    config = small_config(steps=10_000, budget_share=0.4, patience=0)
    config["training"]["time_budget_minutes"] = 1.0  # 60 s for the run
    assert piano_main.stage_one_deadline(config, None, 5.0) is None  # no budget: no deadline
    assert piano_main.stage_one_deadline(config, 60.0, 0.0) == pytest.approx(24.0)  # 40 % of 60 s
    config["vae"]["time_budget_minutes"] = 0.1  # an explicit budget of its own wins (6 s from now)
    assert piano_main.stage_one_deadline(config, 60.0, 1.0) == pytest.approx(7.0)
    config["vae"]["time_budget_minutes"] = 0.0

    ticks = iter(range(10**6))
    monkeypatch.setattr(piano_pretrain, "clock", lambda: 0.5 * next(ticks))  # half a second a reading
    started = piano_pretrain.clock()
    deadline = piano_main.stage_one_deadline(config, started + 60.0, started)
    history, step, status = train(config, chunks(4), deadline=deadline)
    stopped = piano_pretrain.clock()
    assert status == "out of time" and step < 10_000
    # It stops after the epoch that crosses its share: between 24 s and one epoch later, far before the run's 60 s.
    epoch_seconds = (stopped - started) / len(history)
    assert 24.0 <= stopped - started <= 24.0 + 2 * epoch_seconds < 60.0


def test_stage_one_stops_early_when_its_validation_distance_plateaus(monkeypatch):
    assert not plateaued([{"val/stft": v} for v in (3, 2.5, 2.0, 1.9, 1.8)], patience=3, min_improvement=0.01)
    assert plateaued([{"val/stft": v} for v in (3, 2.0, 2.1, 2.05, 2.0)], patience=3, min_improvement=0.01)
    assert not plateaued([{"val/stft": 2.0}] * 3, patience=3, min_improvement=0.01)  # too few epochs to judge
    assert not plateaued([{"val/stft": 2.0}] * 9, patience=0, min_improvement=0.01)  # patience 0 is off

    # A real training run whose validation distance stops falling after epoch 2 finds the plateau at epoch
    # 2 + patience; its learning rate then falls to vae.lr_decay over `patience` more epochs, and it stops.
    figures = iter([4.0, 3.0] + [2.99] * 100)
    monkeypatch.setattr(piano_pretrain, "validate_vae", lambda *a, **k: {"val/stft": next(figures)})
    config = small_config(steps=10_000, patience=3, min_improvement=0.01, lr_decay=0.1)
    history, step, status = train(config, chunks(4), val=chunks(2))
    assert status == "plateau" and len(history) == 2 + 3 + 3 and step == 8 * 2
    rates = [row["vae/learning_rate"] for row in history]
    assert rates[4] > 0.9e-3 and rates[-1] < 0.15e-3 and rates[4:] == sorted(rates[4:], reverse=True)
    # With vae.patience: 0 it trains on (here to its steps).
    figures = iter([4.0, 3.0] + [2.99] * 100)
    config = small_config(steps=16, patience=0)
    history, step, status = train(config, chunks(4), val=chunks(2))
    assert status == "done" and step == 16


@pytest.mark.parametrize("steps_per_epoch", [0, 5])
def test_stage_one_is_sized_in_steps_whatever_the_collections_size(steps_per_epoch):
    config = small_config(steps=12, patience=0)
    config["data"]["steps_per_epoch"] = steps_per_epoch
    small, large = train(config, chunks(4)), train(config, chunks(8))  # 2 and 4 batches a pass
    assert small[1] == large[1] == 12 and small[2] == large[2] == "done"
    if steps_per_epoch:  # epochs of 5 steps, however many batches a pass holds: 5, 5, 2
        assert [row["step"] for row in small[0]] == [row["step"] for row in large[0]] == [5, 10, 12]
    else:  # an epoch is one pass: more epochs on the smaller set, the same steps
        assert (len(small[0]), len(large[0])) == (6, 3)
    # An older config's vae.epochs still works: epochs of steps_per_epoch (or of one pass).
    config["vae"]["epochs"] = 2
    history, step, _ = train(config, chunks(4))
    assert len(history) == 2 and step == 2 * (steps_per_epoch or 2)


def test_the_run_prints_its_plan_and_sizes_the_gan_in_updates(tmp_path, dataset, capsys):
    """piano_main on the tiny dataset: the plan comes first; the GAN makes training.steps updates in epochs of
    data.steps_per_epoch, however few windows the collection has."""
    config = tiny_config(tmp_path, dataset, data={"steps_per_epoch": 3},
                         vae={"epochs": None, "steps": 4}, training={"epochs": None, "steps": 7, "eval_every": 0},
                         output={"save_after_nepochs": 100, "samples_per_save": 0, "tensorboard": False})
    assert piano_main.main(["--config", str(config), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    plan = [line for line in out.splitlines() if line.startswith("plan:")]
    assert plan[0].startswith("plan: stage one (VAE): 4 steps (vae.steps)")
    assert plan[1].startswith("plan: stage two (GAN): 7 updates (training.steps)")
    assert out.index("plan: stage one") < out.index("stage one: a VAE")
    assert "stage one (VAE): " in out and " s per step" in out  # the estimate after the first epoch
    ck = tmp_path / "ck"
    assert load_checkpoint(ck / "vae.pt")["step"] == 4
    generator = load_checkpoint(ck / "generator_epoch_3.pt")  # ceil(7 / 3) epochs of 3 updates
    assert generator["step"] == 9 and [row["epoch"] for row in generator["metrics"]] == [1, 2, 3]


def test_an_older_configs_epochs_keys_still_load():
    config = config_reader.validate({"vae": {"epochs": 10}, "training": {"epochs": 700}})
    assert config["vae"]["epochs"] == 10 and config["training"]["epochs"] == 700
    defaults = config_reader.defaults()
    assert defaults["vae"]["epochs"] is None and defaults["training"]["epochs"] is None
    with pytest.raises(ValueError, match="vae.steps"):
        config_reader.validate({"vae": {"steps": "many"}})
