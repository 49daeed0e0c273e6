"""piano_main.py end to end on a tiny config and a dataset made from synthesized mp3s: training, exact resume,
checkpoints, config errors, NaN handling, Ctrl-C and update_checkpoint."""

import csv
import re

import pytest
import soundfile
import torch

import config_reader
import loss_functions
import piano_main
import piano_train
from conftest import SR, tiny_config
from discriminator import Discriminator_with_mdisc
from update_checkpoint import update_checkpoint
from utilities import load_checkpoint
from vae_utilities import save_checkpoint

def read_metrics(folder):
    return read_metrics_named(folder, "metrics")


def read_metrics_named(folder, name):
    with open(folder / f"{name}.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_two_epochs_end_to_end(tmp_path, dataset, capsys):
    assert piano_main.main(["--config", str(tiny_config(tmp_path, dataset))]) == 0

    ck = tmp_path / "ck"
    rows = read_metrics(ck)
    assert [row["epoch"] for row in rows] == ["1", "2"]
    for key in ("d/adversarial", "d/total", "g/stft", "g/recon", "g/adversarial", "g/kl", "g/total",
                "val/d_accuracy_real", "val/recon", "health/d", "health/g", "health/recon", "health/oscillation",
                "seconds"):
        assert rows[-1][key] != "", key
    assert (ck / "losses.png").stat().st_size > 10_000
    assert config_reader.load_config_from_yaml(ck / "config.yaml")["model"]["seq_len"] == 2000
    for epoch in (1, 2):
        state = load_checkpoint(ck / f"generator_epoch_{epoch}.pt")
        assert state["epoch"] == epoch and not state["partial"] and len(state["metrics"]) == epoch
        assert load_checkpoint(ck / f"discriminator_epoch_{epoch}.pt")["epoch"] == epoch
        for wav in sorted((tmp_path / "samples" / f"epoch_{epoch}").glob("*.wav")):
            info = soundfile.info(wav)
            assert info.samplerate == SR and info.channels == 2 and info.frames == 2000
    out = capsys.readouterr().out
    assert "health: D: " in out and "VAE epoch 1 (vae): STFT distance" in out and "latent cache: " in out
    assert "pretrain generator" not in out  # stage one replaces the seed's unpaired reconstruction pretraining
    assert load_checkpoint(ck / "vae.pt")["kind"] == "vae" and (ck / "vae_losses.png").exists()
    assert [row["phase"] for row in read_metrics_named(ck, "vae_metrics")] == ["vae"]
    assert (ck / "latents" / "training.npy").exists() and (ck / "latents" / "latents.json").exists()


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, dataset):
    straight = tiny_config(tmp_path / "a", dataset, training={"epochs": 3, "keys": 8})
    assert piano_main.main(["--config", str(straight)]) == 0
    stopped = tiny_config(tmp_path / "b", dataset, training={"epochs": 2, "keys": 8})
    assert piano_main.main(["--config", str(stopped)]) == 0
    assert piano_main.main(["--config", str(stopped), "--set", "training.epochs=3",
                            "--set", "output.resume_from_checkpoint=latest"]) == 0

    for kind in ("generator", "discriminator"):
        a = load_checkpoint(tmp_path / "a" / "ck" / f"{kind}_epoch_3.pt")
        b = load_checkpoint(tmp_path / "b" / "ck" / f"{kind}_epoch_3.pt")
        assert a["model_state_dict"].keys() == b["model_state_dict"].keys()
        for name in a["model_state_dict"]:
            assert torch.equal(a["model_state_dict"][name], b["model_state_dict"][name]), (kind, name)
    assert [r["g/total"] for r in read_metrics(tmp_path / "a" / "ck")] == \
        [r["g/total"] for r in read_metrics(tmp_path / "b" / "ck")]


def test_a_fresh_run_never_writes_over_an_earlier_one(tmp_path, dataset, capsys):
    config = tiny_config(tmp_path, dataset, training={"epochs": 1, "keys": 8})
    assert piano_main.main(["--config", str(config)]) == 0
    before = (tmp_path / "ck" / "generator_epoch_1.pt").read_bytes()
    assert piano_main.main(["--config", str(config)]) == 2
    assert "already holds a run (epochs 1-1)" in capsys.readouterr().err
    assert (tmp_path / "ck" / "generator_epoch_1.pt").read_bytes() == before


def test_a_truncated_checkpoint_gives_a_clear_error(tmp_path, dataset, capsys):
    config = tiny_config(tmp_path, dataset, training={"epochs": 1, "keys": 8})
    assert piano_main.main(["--config", str(config)]) == 0
    path = tmp_path / "ck" / "generator_epoch_1.pt"
    path.write_bytes(path.read_bytes()[:2000])

    assert piano_main.main(["--config", str(config), "--set", "output.resume_from_checkpoint=1"]) == 2
    err = capsys.readouterr().err
    assert "generator_epoch_1.pt is damaged or not a MusiGAN checkpoint" in err and "Traceback" not in err
    assert piano_main.main(["--config", str(config), "--set", "output.resume_from_checkpoint=7"]) == 2
    assert "no checkpoint of epoch 7" in capsys.readouterr().err


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 3)
    optimizer = torch.optim.Adam(model.parameters())
    path = save_checkpoint(tmp_path / "generator_epoch_1.pt", model, optimizer, 1, {"a": 1})
    before = path.read_bytes()

    def killed(state, f):  # as if the process died halfway through writing
        open(f, "wb").write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model, optimizer, 2, {"a": 1})
    assert path.read_bytes() == before and load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["generator_epoch_1.pt"]


@pytest.mark.parametrize("override, message", [
    ("model.num_layer=2", "unknown key model.num_layer; did you mean 'num_layers'?"),
    ("training.learning_rat=0.1", "did you mean 'learning_rate'?"),
    ("model.batch_size=4", "'batch_size' belongs in section 'data'"),
    ("training.epochs=ten", "training.epochs: 'ten' is not allowed; expected an integer of at least 0"),
    ("training.adversarial_loss=wgan", "not one of bce, hinge, lsgan"),
    ("model.dropout=2", "model.dropout: 2 is out of range"),
    ("model.num_heads=5", "model.num_heads (5) must divide model.latent_dim (32)"),
    ("output.resume_from_checkpoint=yesterday", "an epoch number, latest, or false"),
])
def test_config_errors_name_the_key_and_what_is_allowed(tmp_path, dataset, capsys, override, message):
    assert piano_main.main(["--config", str(tiny_config(tmp_path, dataset)), "--set", override]) == 2
    err = capsys.readouterr().err
    assert message in err, err


@pytest.mark.parametrize("override, message", [
    ("data.sample_rate=12000", "the dataset is at 8000 Hz but data.sample_rate is 12000"),
    ("model.sound_channels=1", "the dataset has 2 channels but model.sound_channels is 1"),
    ("model.seq_len=5000", "model.seq_len (5000) is longer than the dataset's chunks (4000 samples)"),
])
def test_a_dataset_that_does_not_match_the_config_is_a_sentence(tmp_path, dataset, capsys, override, message):
    assert piano_main.main(["--config", str(tiny_config(tmp_path, dataset)), "--set", override]) == 2
    assert message in capsys.readouterr().err


def test_a_missing_dataset_says_how_to_make_one(tmp_path, dataset, capsys):
    config = tiny_config(tmp_path, dataset, data={"dataset_dir": str(tmp_path / "nowhere")})
    assert piano_main.main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "python prepare_dataset.py" in err and "python create_dataset.py prepared --out" in err


def test_config_yaml_is_the_schema_and_overrides_nest():
    root = config_reader.Path(__file__).parents[1]
    assert config_reader.load_config_from_yaml(root / "config.yaml") == config_reader.defaults()
    seed = config_reader.load_config_from_yaml(root / "configs" / "seed.yaml")
    assert seed == config_reader.seed_config() and seed["loss_weights"] == loss_functions.SEED_LOSS_WEIGHTS
    for name, (make, header) in config_reader.PRESETS.items():  # the files are what `python config_reader.py` writes
        assert (root / name).read_text() == config_reader.commented_yaml(make(), header), name
    raw = config_reader.apply_override({}, "training.betas=[0.0, 0.99]")
    assert config_reader.validate(raw)["training"]["betas"] == [0.0, 0.99]
    assert config_reader.validate({"training": {"learning_rate": 1}})["training"]["learning_rate"] == 1.0
    # PyYAML reads 1e-4 without a dot as text; users write it that way.
    assert config_reader.validate(config_reader.apply_override({}, "training.learning_rate=1e-4"))["training"]["learning_rate"] == 1e-4


def test_nan_losses_are_skipped_then_stop_the_run(tmp_path, dataset, monkeypatch, capsys):
    real = loss_functions.reconstruction_loss
    calls = {"n": 0}

    def sometimes_nan(fake, target):
        calls["n"] += 1
        value = real(fake, target)
        return value * float("nan") if calls["n"] in (5, 6) else value

    monkeypatch.setattr(loss_functions, "reconstruction_loss", sometimes_nan)
    config = tiny_config(tmp_path, dataset, training={"epochs": 1, "keys": 8, "pretrain_generator_epochs": 0})
    assert piano_main.main(["--config", str(config)]) == 0
    row = read_metrics(tmp_path / "ck")[0]
    assert float(row["skipped_updates"]) == 2 and row["g/recon"] not in ("", "nan")

    monkeypatch.setattr(loss_functions, "reconstruction_loss", lambda fake, target: real(fake, target) * float("nan"))
    config = tiny_config(tmp_path / "second", dataset, training={"epochs": 3, "keys": 8, "max_nonfinite_in_a_row": 3,
                                                                 "pretrain_generator_epochs": 0})
    assert piano_main.main(["--config", str(config)]) == 3
    err = capsys.readouterr().err
    assert re.search(r"stopped: [34] updates in a row had a NaN or Inf loss", err) and "No checkpoint was saved yet" in err


def test_ctrl_c_saves_and_exits_cleanly(tmp_path, dataset, monkeypatch, capsys):
    real = piano_train.train_step
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(piano_train, "train_step", interrupted)
    config = tiny_config(tmp_path, dataset, training={"epochs": 2, "keys": 8})
    assert piano_main.main(["--config", str(config)]) == 130
    assert "Interrupted during epoch 1" in capsys.readouterr().out
    state = load_checkpoint(tmp_path / "ck" / "generator_epoch_1.pt")
    assert state["partial"] and state["epoch"] == 1
    monkeypatch.setattr(piano_train, "train_step", real)
    assert piano_main.main(["--config", str(config), "--set", "output.resume_from_checkpoint=latest"]) == 0
    assert [row["epoch"] for row in read_metrics(tmp_path / "ck")] == ["2"]


def test_update_checkpoint_loads_a_discriminator_that_gained_a_layer(tmp_path, dataset, capsys):
    old = Discriminator_with_mdisc(2, 16, 2000, use_minibatch_discrimination=False)
    new = Discriminator_with_mdisc(2, 16, 2000)  # adds minibatch discrimination: a new layer, a wider head
    optimizer = torch.optim.Adam(new.parameters())
    before = {k: v.clone() for k, v in new.state_dict().items()}
    report = update_checkpoint(new, old.state_dict(), optimizer, torch.optim.Adam(old.parameters()).state_dict())
    assert report.missing == ["mdisc.projection"]
    assert any(name.startswith("head.") for name in report.mismatched)
    assert report.optimizer_reset and "initialized fresh: mdisc.projection" in report.summary()
    stem = "stem.parametrizations.weight.original"
    assert torch.equal(new.state_dict()[stem], old.state_dict()[stem])
    assert torch.equal(new.state_dict()["mdisc.projection"], before["mdisc.projection"])

    # The same through piano_main: resume a run whose discriminator config changed.
    config = tiny_config(tmp_path, dataset, training={"epochs": 1, "keys": 8},
                         discriminator={"n_channels": 16, "use_minibatch_discrimination": False})
    assert piano_main.main(["--config", str(config)]) == 0
    changed = ["--set", "discriminator.use_minibatch_discrimination=true", "--set", "training.epochs=2",
               "--set", "output.resume_from_checkpoint=latest"]
    assert piano_main.main(["--config", str(config), *changed]) == 2
    assert "output.update_discriminator: true" in capsys.readouterr().err
    assert piano_main.main(["--config", str(config), *changed, "--set", "output.update_discriminator=true"]) == 0
    assert "new in the model, initialized fresh: mdisc.projection" in capsys.readouterr().out


def test_health_report_follows_the_seed_tables():
    def rows(d, g, recon):
        return [{"epoch": i + 1, "d/adversarial": a, "d/total": a, "g/total": b, "g/adversarial": b, "g/recon": c}
                for i, (a, b, c) in enumerate(zip(d, g, recon))]

    healthy = piano_train.health_report(rows([0.5, 0.55, 0.52, 0.56], [0.7, 0.75, 0.68, 0.72], [0.48, 0.46, 0.47, 0.45]))
    assert healthy["health/d"].startswith("healthy") and healthy["health/recon"].startswith("good")
    assert healthy["health/g"].startswith("oscillates gently") and healthy["health/oscillation"].startswith("gentle")
    dominated = piano_train.health_report(rows([0.1] * 4, [3.0, 3.0, 3.0, 3.0], [0.3, 0.35, 0.4, 0.45]))
    assert dominated["health/d"].startswith("D dominates") and dominated["health/recon"] == "bad: rising steadily"
    assert dominated["health/oscillation"].startswith("flat line")
    fooled = piano_train.health_report(rows([0.9, 0.95], [1, 1], [0.45, 0.9]))
    assert fooled["health/d"].startswith("D fooled") and fooled["health/recon"].startswith("critical")
    exploding = piano_train.health_report(rows([0.5] * 4, [1.0, 1.2, 2.0, 4.0], [0.45] * 4))
    assert exploding["health/g"].startswith("exploding")
    assert piano_train.health_report(rows([0.693], [0.69], [0.45]))["health/d"].startswith("at the confusion point")
    assert "does not apply" in piano_train.health_report(rows([0.5], [1], [0.4]), kind="hinge")["health/d"]


def test_a_time_budget_stops_after_the_epoch_that_uses_it_up(tmp_path, dataset, capsys):
    config = tiny_config(tmp_path, dataset, training={"epochs": 50, "keys": 8, "time_budget_minutes": 0.0001},
                         output={"save_after_nepochs": 10})
    assert piano_main.main(["--config", str(config)]) == 0
    assert [row["epoch"] for row in read_metrics(tmp_path / "ck")] == ["1"]
    assert load_checkpoint(tmp_path / "ck" / "generator_epoch_1.pt")["epoch"] == 1
    assert "time budget of 0.0001 minutes used up after epoch 1" in capsys.readouterr().out
