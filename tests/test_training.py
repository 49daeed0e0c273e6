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
from conftest import SR, tiny_config, tiny_seed_config
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
    for key in ("d/adversarial", "d/r1", "d/total", "g/adversarial", "g/total", "r1_weight", "val/d_accuracy_real",
                "val/d_accuracy_fake", "health/d", "health/g", "health/frechet", "health/oscillation", "health/verdict",
                "seconds"):
        assert rows[-1][key] != "", key
    assert not any(key.startswith(("g/recon", "g/stft", "g/kl")) for key in rows[-1])  # unpaired terms are gone
    assert (ck / "losses.png").stat().st_size > 10_000
    assert config_reader.load_config_from_yaml(ck / "config.yaml")["model"]["seq_len"] == 2000
    for epoch in (1, 2):
        state = load_checkpoint(ck / f"generator_epoch_{epoch}.pt")
        assert state["epoch"] == epoch and not state["partial"] and len(state["metrics"]) == epoch
        assert state["ema_state_dict"].keys() == state["model_state_dict"].keys() and state["step"] > 0
        assert load_checkpoint(ck / f"discriminator_epoch_{epoch}.pt")["epoch"] == epoch
        wavs = sorted((tmp_path / "samples" / f"epoch_{epoch}").glob("*.wav"))
        assert len(wavs) == 2
        for wav in wavs:  # four windows of 16 latent frames of 128 samples
            info = soundfile.info(wav)
            assert info.samplerate == SR and info.channels == 2 and info.frames == 4 * 16 * 128
    out = capsys.readouterr().out
    assert "health: " in out and "VAE epoch 1 (vae): STFT distance" in out and "latent cache: " in out
    assert "pretrain discriminator epoch 1" in out and "MusiGAN (latent GAN)" in out
    assert "pretrain generator" not in out  # stage one replaces the seed's unpaired reconstruction pretraining
    assert load_checkpoint(ck / "vae.pt")["kind"] == "vae" and (ck / "vae_losses.png").exists()
    assert [row["phase"] for row in read_metrics_named(ck, "vae_metrics")] == ["vae"]
    assert (ck / "latents" / "training.npy").exists() and (ck / "latents" / "latents.json").exists()


def test_musikas_joined_windows_train_and_generate(tmp_path, dataset, capsys):
    config = tiny_config(tmp_path, dataset, model={"seams": "joined_windows"}, training={"epochs": 1})
    assert piano_main.main(["--config", str(config)]) == 0
    ck = tmp_path / "ck"
    assert load_checkpoint(ck / "generator_epoch_1.pt")["config"]["model"]["seams"] == "joined_windows"
    import generate

    assert generate.main(["--checkpoint-folder", str(ck), "--count", "2", "--seconds", "1.3", "--no-plots",
                          "--rank-by-discriminator", "1", "--out", str(tmp_path / "gen")]) == 0
    (wav,) = (tmp_path / "gen").glob("*.wav")
    assert soundfile.info(wav).frames == round(1.3 * SR)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, dataset, monkeypatch):
    straight = tiny_config(tmp_path / "a", dataset, training={"epochs": 3})
    assert piano_main.main(["--config", str(straight)]) == 0
    # Killed partway through the GAN's epoch 3 (no Ctrl-C handler runs, nothing of epoch 3 is saved) ...
    real, calls = piano_train.latent_train_step, {"n": 0}

    def killed_in_epoch_3(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == calls["killed_at"]:
            raise SystemExit("killed")
        return real(*args, **kwargs)

    calls["killed_at"] = 2 * (len(read_metrics(tmp_path / "a" / "ck")) and 0) or None  # set below
    steps = load_checkpoint(tmp_path / "a" / "ck" / "generator_epoch_2.pt")["step"]
    pretrain = steps // 2  # the D-only pretraining epoch has as many steps as a GAN epoch
    calls["killed_at"] = pretrain + steps + 2
    monkeypatch.setattr(piano_train, "latent_train_step", killed_in_epoch_3)
    stopped = tiny_config(tmp_path / "b", dataset, training={"epochs": 3})
    with pytest.raises(SystemExit):
        piano_main.main(["--config", str(stopped)])
    assert sorted(p.name for p in (tmp_path / "b" / "ck").glob("generator_*")) == ["generator_epoch_1.pt",
                                                                                   "generator_epoch_2.pt"]
    # ... and resumed: the same weights, EMA, step and R1 weight as the straight run, bit for bit.
    monkeypatch.setattr(piano_train, "latent_train_step", real)
    assert piano_main.main(["--config", str(stopped), "--set", "output.resume_from_checkpoint=latest"]) == 0

    for kind, states in (("generator", ("model_state_dict", "ema_state_dict")), ("discriminator", ("model_state_dict",))):
        a = load_checkpoint(tmp_path / "a" / "ck" / f"{kind}_epoch_3.pt")
        b = load_checkpoint(tmp_path / "b" / "ck" / f"{kind}_epoch_3.pt")
        assert a["step"] == b["step"] and a["r1_weight"] == b["r1_weight"]
        for state in states:
            assert a[state].keys() == b[state].keys()
            for name in a[state]:
                assert torch.equal(a[state][name], b[state][name]), (kind, state, name)
    # TensorBoard: what the killed run logged after its checkpoint is purged, and the checkpoint's own step is kept
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def logged(run, tag):
        return [e.step for e in EventAccumulator(str(tmp_path / run / "ck" / "tensorboard" / "gan")).Reload().Scalars(tag)]

    for tag in ("step/d/total", "epoch/epoch"):
        assert logged("b", tag) == logged("a", tag) and len(logged("a", tag)) == len(set(logged("a", tag))), tag
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
    ("model.num_heads=5", "model.num_heads (5) must divide model.latent_dim (16)"),
    ("loss_weights.recon=2", "loss_weights.recon is 2, but it compares waveforms and applies only to "
                             "model.architecture: seed"),
    ("vae.enabled=false", "model.architecture: latent generates in the VAE's latent space and needs vae.enabled: true"),
    ("model.latent_seq_len=100", "model.latent_seq_len (100 frames) is longer than two of the dataset's chunks (62 "
                                 "latent frames)"),
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


def test_a_bare_set_key_resolves_when_one_section_has_it(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("training:\n  epochs: 3\n")
    loaded = config_reader.load_config_from_yaml(config, ["batch_size=16", "r1_weight=2.5"])
    assert loaded["data"]["batch_size"] == 16 and loaded["training"]["r1_weight"] == 2.5
    err = capsys.readouterr().err
    assert "--set batch_size: means data.batch_size" in err and "--set r1_weight: means training.r1_weight" in err
    # the GAN's batch of latent windows was training.batch_size before it was renamed; old configs still read
    assert config_reader.validate({"training": {"batch_size": 12}})["training"]["gan_batch_size"] == 12


def test_an_ambiguous_or_unknown_bare_set_key_is_refused_by_name(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"epochs is in 2 sections.*vae\.epochs.*training\.epochs"):
        config_reader.apply_override({}, "epochs=3")
    with pytest.raises(ValueError, match=r"no section has a key 'batch_sise'; did you mean data\.batch_size\?"):
        config_reader.apply_override({}, "batch_sise=3")
    config = tmp_path / "c.yaml"
    config.write_text("training:\n  epochs: 3\n")
    assert piano_main.main(["--config", str(config), "--set", "learning_rate=1e-3"]) == 2  # said, no traceback
    assert "vae.learning_rate" in capsys.readouterr().err


def test_nan_losses_are_skipped_then_stop_the_run(tmp_path, dataset, monkeypatch, capsys):
    real = piano_train.discriminator_adversarial_loss
    calls = {"n": 0}

    def sometimes_nan(*args, **kwargs):
        calls["n"] += 1
        value = real(*args, **kwargs)
        return value * float("nan") if calls["n"] in (2, 3) else value

    monkeypatch.setattr(piano_train, "discriminator_adversarial_loss", sometimes_nan)
    config = tiny_config(tmp_path, dataset, training={"epochs": 1, "pretrain_discriminator_epochs": 0})
    assert piano_main.main(["--config", str(config)]) == 0
    row = read_metrics(tmp_path / "ck")[0]
    assert float(row["skipped_updates"]) == 2 and row["d/adversarial"] not in ("", "nan")

    monkeypatch.setattr(piano_train, "discriminator_adversarial_loss", lambda *a, **k: real(*a, **k) * float("nan"))
    config = tiny_config(tmp_path / "second", dataset, training={"epochs": 3, "max_nonfinite_in_a_row": 3,
                                                                 "pretrain_discriminator_epochs": 0})
    assert piano_main.main(["--config", str(config)]) == 3
    err = capsys.readouterr().err
    assert re.search(r"stopped: 3 updates in a row had a NaN or Inf loss", err) and "No checkpoint was saved yet" in err


def test_the_seeds_nan_guard_still_holds(tmp_path, dataset, monkeypatch, capsys):
    real = loss_functions.reconstruction_loss
    monkeypatch.setattr(loss_functions, "reconstruction_loss", lambda fake, target: real(fake, target) * float("nan"))
    config = tiny_seed_config(tmp_path, dataset, training={"epochs": 3, "max_nonfinite_in_a_row": 3,
                                                           "pretrain_generator_epochs": 0})
    assert piano_main.main(["--config", str(config)]) == 3
    assert re.search(r"stopped: [34] updates in a row had a NaN or Inf loss", capsys.readouterr().err)


def test_ctrl_c_saves_and_exits_cleanly(tmp_path, dataset, monkeypatch, capsys):
    real = piano_train.latent_train_step
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(piano_train, "latent_train_step", interrupted)
    config = tiny_config(tmp_path, dataset, training={"epochs": 2, "pretrain_discriminator_epochs": 0})
    assert piano_main.main(["--config", str(config)]) == 130
    assert "Interrupted during epoch 1" in capsys.readouterr().out
    state = load_checkpoint(tmp_path / "ck" / "generator_epoch_1.pt")
    assert state["partial"] and state["epoch"] == 1
    monkeypatch.setattr(piano_train, "latent_train_step", real)
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
    config = tiny_config(tmp_path, dataset, training={"epochs": 1},
                         discriminator={"n_channels": 16, "use_minibatch_discrimination": False})
    assert piano_main.main(["--config", str(config)]) == 0
    changed = ["--set", "discriminator.use_minibatch_discrimination=true", "--set", "training.epochs=2",
               "--set", "output.resume_from_checkpoint=latest"]
    assert piano_main.main(["--config", str(config), *changed]) == 2
    assert "output.update_discriminator: true" in capsys.readouterr().err
    assert piano_main.main(["--config", str(config), *changed, "--set", "output.update_discriminator=true"]) == 0
    assert "new in the model, initialized fresh: latent.mdisc.projection" in capsys.readouterr().out


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
    assert healthy["health/verdict"] == "healthy" and dominated["health/verdict"].startswith("unhealthy: D dominates")
    hinge = piano_train.health_report(rows([1.5, 1.6, 1.5, 1.55], [0.2, -0.1, 0.1, 0.0], [0] * 4), kind="hinge")
    assert hinge["health/d"].startswith("healthy (1.2-1.9)") and hinge["health/verdict"] == "healthy"
    assert piano_train.health_report(rows([0.3], [1], [0]), kind="hinge")["health/d"].startswith("D dominates")
    assert piano_train.health_report(rows([2.0], [0], [0]), kind="hinge")["health/d"].startswith("at the confusion")


def test_a_discriminator_that_calls_real_music_fake_is_never_healthy():
    # Losses in the healthy band, but D calls every real validation chunk fake (today's demo was "healthy" so).
    history = [{"epoch": i + 1, "d/adversarial": 0.55, "d/total": 0.55 + 0.01 * i, "g/total": 0.7 + 0.01 * (i % 2),
                "g/adversarial": 0.7, "val/d_accuracy_real": 0.0, "val/d_accuracy_fake": 1.0} for i in range(5)]
    for kind in ("bce", "hinge", "lsgan"):
        verdict = piano_train.health_report(history, kind=kind)
        assert verdict["health/d"].startswith("broken: D calls 100% of real validation chunks fake")
        assert verdict["health/verdict"] != "healthy" and "healthy" not in verdict["health/d"]
    for row in history:
        row["val/d_accuracy_real"] = 0.1  # 90 % called fake: still not healthy
    assert piano_train.health_report(history)["health/verdict"].startswith("unhealthy")
    history[-1]["val/d_accuracy_real"] = 0.6  # one good epoch after four broken ones: still broken
    assert piano_train.health_report(history)["health/verdict"].startswith("unhealthy: D broken")
    for row in history:
        row["val/d_accuracy_real"] = 0.6
    assert piano_train.health_report(history)["health/verdict"] == "healthy"


def test_the_verdict_judges_a_window_of_epochs_not_one():
    def rows(d, accuracy_real=None):
        return [{"epoch": i + 1, "d/adversarial": a, "d/total": a, "g/total": 0.7 + 0.01 * (i % 2),
                 "g/adversarial": 0.7, "val/d_accuracy_fake": 0.8,
                 **({"val/d_accuracy_real": accuracy_real[i]} if accuracy_real else {})} for i, a in enumerate(d)]

    def verdicts(history, kind="bce"):  # the verdict each epoch from the fifth on would print
        return [piano_train.health_report(history[:end], kind=kind)["health/verdict"]
                for end in range(5, len(history) + 1)]

    # Single epochs alternate between a D that dominates (or calls all real music fake) and a healthy one: a
    # per-epoch verdict flips every epoch, the window's verdict does not.
    for kind, low, high in (("bce", 0.1, 0.5), ("hinge", 0.3, 1.5)):
        flipping = verdicts(rows([low, high] * 5), kind)
        assert len(set(flipping)) == 1, flipping
    flipping = verdicts(rows([0.5] * 10, [0.0, 0.6] * 5))
    assert len(set(flipping)) == 1 and flipping[0] == "healthy", flipping
    assert "broken in" in piano_train.health_report(rows([0.5] * 10, [0.0, 0.6] * 5))["health/d"]  # still said

    # A problem that persists is flagged, even with one good epoch at the end of the window.
    assert set(verdicts(rows([0.1] * 10))) == {"unhealthy: D dominates"}
    persistent = piano_train.health_report(rows([0.5] * 5, [0.0, 0.0, 0.0, 0.0, 0.9]))
    assert persistent["health/verdict"] == "unhealthy: D broken"
    assert persistent["health/d"].startswith("broken: D calls 100% of real validation chunks fake")
    hinge = piano_train.health_report(rows([0.3, 0.3, 1.5, 0.3, 0.3, 0.3]), kind="hinge")  # mean 0.54
    assert hinge["health/verdict"] == "unhealthy: D dominates"


def test_the_verdict_tells_a_memorising_discriminator_from_one_simply_ahead():
    def rows(d, held_out, training):
        return [{"epoch": i + 1, "d/adversarial": d, "d/total": d, "g/total": 0.7 + 0.01 * (i % 2),
                 "val/d_accuracy_real": held_out, "val/d_accuracy_fake": 0.9, "val/d_accuracy_train_real": training}
                for i in range(5)]

    memorising = piano_train.health_report(rows(0.5, 0.05, 0.95))
    assert memorising["health/verdict"] == "unhealthy: D broken (memorising)"
    assert "memorising: it calls 95% of training windows real but 5% of held-out ones" in memorising["health/d"]
    assert piano_train.health_report(rows(0.5, 0.05, 0.05))["health/verdict"] == "unhealthy: D broken (not memorising)"
    ahead = piano_train.health_report(rows(0.1, 0.9, 0.92))
    assert ahead["health/verdict"] == "unhealthy: D dominates (not memorising)"
    assert "simply ahead, not memorising" in ahead["health/d"]
    assert piano_train.health_report(rows(0.1, 0.5, 0.95))["health/verdict"] == "unhealthy: D dominates (memorising)"
    assert "simply ahead" in piano_train.health_report(rows(0.3, 0.9, 0.9))["health/d"]  # winning, not a problem
    # Losses in the healthy band, but D knows the training windows far better than held-out ones.
    assert piano_train.health_report(rows(0.5, 0.5, 0.95))["health/verdict"] == "unhealthy: D memorising"
    assert piano_train.health_report(rows(0.5, 0.8, 0.9))["health/verdict"] == "healthy"


def test_a_rising_frechet_distance_is_flagged():
    history = [{"epoch": i + 1, "d/adversarial": 1.5, "d/total": 1.5, "g/total": 0.1, "val/frechet": f}
               for i, f in enumerate([90.0, 80.0, 85.0, 95.0])]
    verdict = piano_train.health_report(history, kind="hinge")
    assert verdict["health/frechet"].startswith("worsening") and "Fréchet rising" in verdict["health/verdict"]
    history[-1]["val/frechet"] = 70.0
    assert piano_train.health_report(history, kind="hinge")["health/frechet"].startswith("improving")





def test_a_time_budget_stops_after_the_epoch_that_uses_it_up(tmp_path, dataset, capsys):
    config = tiny_config(tmp_path, dataset, training={"epochs": 50, "keys": 8, "time_budget_minutes": 0.0001},
                         output={"save_after_nepochs": 10})
    assert piano_main.main(["--config", str(config)]) == 0
    assert [row["epoch"] for row in read_metrics(tmp_path / "ck")] == ["1"]
    assert load_checkpoint(tmp_path / "ck" / "generator_epoch_1.pt")["epoch"] == 1
    assert "time budget of 0.0001 minutes used up after epoch 1" in capsys.readouterr().out
