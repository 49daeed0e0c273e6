"""check_discriminator.py, generate.py and the bundled demo, on tiny trained runs in tmp_path."""

import csv
import math

import numpy as np
import pytest
import soundfile

import check_discriminator as cd
import demo
import generate
import piano_main
from conftest import SR, tiny_config

SEED_EPOCHS = list(range(540, 700, 10))


def seed_example():
    """The seed's sweep: 540-590 about 0.0003, 600-640 from 0.0025 to 0.0089, 650-690 from 0.0458 to 0.5882."""
    losses = []
    for e in SEED_EPOCHS:
        if e <= 590:
            losses.append(0.0003)
        elif e <= 640:
            losses.append(0.0025 + (e - 600) / 40 * (0.0089 - 0.0025))
        else:
            losses.append(math.exp(math.log(0.0458) + (e - 650) / 40 * (math.log(0.5882) - math.log(0.0458))))
    return losses


def test_the_seed_example_gives_the_seed_bands_and_a_healthy_verdict():
    bands, verdict = cd.classify_sweep(SEED_EPOCHS, seed_example())
    assert {e for e, b in bands.items() if b == cd.BANDS[0]} == set(range(540, 600, 10))
    assert {e for e, b in bands.items() if b == cd.BANDS[1]} == set(range(600, 650, 10))
    assert {e for e, b in bands.items() if b == cd.BANDS[2]} == set(range(650, 700, 10))
    assert verdict.startswith("a healthy arms race")


def test_bands_come_from_the_losses_not_the_epoch_numbers():
    epochs = [10, 20, 30, 40, 50, 60]
    losses = [0.5, 0.001, 0.6, 0.0012, 0.02, 0.03]  # no order in time
    bands, verdict = cd.classify_sweep(epochs, losses)
    assert bands[20] == bands[40] == cd.BANDS[0]
    assert bands[50] == bands[60] == cd.BANDS[1]
    assert bands[10] == bands[30] == cd.BANDS[2]
    assert verdict.startswith("mixed")


@pytest.mark.parametrize("losses, start", [
    ([0.002, 0.003, 0.0025, 0.004], "no learning"),
    ([1.5, 2.0, 1.8, 3.0], "generator failing"),
    ([0.3, 0.35, 0.32, 0.31], "mixed"),
])
def test_flat_sweeps_get_the_right_verdict(losses, start):
    bands, verdict = cd.classify_sweep([1, 2, 3, 4], losses)
    assert verdict.startswith(start) and len(set(bands.values())) == 1


def test_natural_breaks_and_spearman():
    assert cd.natural_breaks([0.0, 0.1, 0.2, 5.0, 5.1, 9.0, 9.2]) == [3, 5]
    assert cd.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert cd.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, dataset):
    root = tmp_path_factory.mktemp("run")
    config = tiny_config(root, dataset, training={"epochs": 3})
    assert piano_main.main(["--config", str(config)]) == 0
    return root, config


def test_a_long_piece_has_no_seams(trained_run):
    """Musika's seam criteria, at every join between the windows the discriminator was trained on."""
    import torch

    from evaluate import join_report
    from utilities import load_generator

    root, _ = trained_run
    generator, config, _ = load_generator(root / "ck", "latest", "cpu")
    window = generator.latent_seq_len
    noise = generator.sample_noise(1, frames=12 * window, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        in_blocks = generator.latents(noise, block_frames=window)  # each window computed on its own, with context
        assert torch.allclose(in_blocks, generator.latents(noise), atol=1e-5)  # ... equals one pass over the piece
        audio = generator.decode(in_blocks)[0].numpy()
    joins = list(range(window * generator.frame_samples, audio.shape[-1], window * generator.frame_samples))
    report = join_report(audio, joins, SR)
    assert len(report["jump_ratio"]) >= 8
    assert max(report["jump_ratio"]) <= 3, report  # no click
    assert max(abs(g) for g in report["rms_gap_db"]) <= 3, report  # no dip


def test_the_sweep_writes_its_plot_csv_and_table(trained_run, capsys):
    root, config = trained_run
    assert cd.main(["--gen-epoch", "3", "--config", str(config), "--samples", "6", "--batch-size", "3"]) == 0
    out = capsys.readouterr().out
    assert "verdict: " in out and "acc on real" in out
    with open(root / "ck" / "discriminator_over_epochs.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["d_epoch"]) for r in rows] == [1, 2, 3]
    assert all(r["band"] in cd.BANDS and float(r["d_loss_real_label"]) > 0 and r["val_accuracy_real"] for r in rows)
    assert (root / "ck" / "discriminator_over_epochs.png").stat().st_size > 10_000
    assert cd.main(["--gen-epoch", "latest", "--checkpoint-folder", str(root / "ck"), "--d-epochs", "2:3",
                    "--samples", "4", "--batch-size", "2"]) == 0
    assert "against 2 discriminators" in capsys.readouterr().out


def test_the_sweep_names_the_epochs_that_exist(trained_run, tmp_path, capsys):
    root, config = trained_run
    assert cd.main(["--gen-epoch", "690", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "no generator of epoch 690" in err and "epochs there: 1, 2, 3" in err
    assert cd.main(["--gen-epoch", "3", "--checkpoint-folder", str(tmp_path)]) == 2
    assert "no generator checkpoints in" in capsys.readouterr().err


def copy_with_distances(run_folder, folder, distances, drop_epochs=(), **config):
    """A copy of a run's checkpoint folder whose newest generator checkpoint holds these validation distances
    ({epoch: val/frechet}, in place of the run's own) and config overrides ({"training.eval_every": 0}), without
    the generators of drop_epochs."""
    import shutil

    import torch

    from utilities import checkpoint_epochs, checkpoint_path

    shutil.copytree(run_folder, folder)
    for epoch in drop_epochs:
        checkpoint_path(folder, "generator", epoch).unlink()
    path = checkpoint_path(folder, "generator", checkpoint_epochs(folder)[-1])
    state = torch.load(path, weights_only=True)
    for row in state["metrics"]:
        row.pop("val/frechet", None)
        if row["epoch"] in distances:
            row["val/frechet"] = distances[row["epoch"]]
    for key, value in config.items():
        section, name = key.split(".")
        state["config"][section][name] = value
    torch.save(state, path)
    return folder


def test_the_best_epoch_is_the_saved_one_closest_to_the_validation_set(trained_run, tmp_path, capsys):
    from utilities import best_epoch, load_checkpoint, resolve_epoch

    root, _ = trained_run
    history = load_checkpoint(root / "ck" / "generator_epoch_3.pt")["metrics"]
    assert [row["epoch"] for row in history if "val/frechet" in row] == [3]  # training.eval_every 10: the last epoch
    assert resolve_epoch(root / "ck", "best") == 3 and best_epoch(root / "ck")[1] == {3: history[-1]["val/frechet"]}
    # Epoch 1 measured closest but its generator is gone; of the saved ones, epoch 2 is closest, not the latest (3).
    folder = copy_with_distances(root / "ck", tmp_path / "ck", {1: 10.0, 2: 20.0, 3: 35.0}, drop_epochs=[1])
    assert resolve_epoch(folder, "best", log=lambda *_: None) == 2
    assert resolve_epoch(folder, "latest") == 3 and resolve_epoch(folder, "2") == 2
    capsys.readouterr()
    assert generate.main(["--checkpoint-folder", str(folder), "--epoch", "best", "--count", "1", "--seconds", "0.3",
                          "--out", str(tmp_path / "out"), "--no-plots", "--precision", "fp32"]) == 0
    assert "best epoch: 2, Fréchet distance 20 to the validation set" in capsys.readouterr().out
    assert [p.name for p in (tmp_path / "out").glob("*.wav")] == ["epoch2_seed0_00.wav"]
    assert cd.main(["--gen-epoch", "best", "--checkpoint-folder", str(folder), "--samples", "4",
                    "--batch-size", "2", "--device", "cpu"]) == 0
    assert "generator of epoch 2 against 3 discriminators" in capsys.readouterr().out
    assert generate.main(["--checkpoint-folder", str(folder), "--epoch", "bestest"]) == 2
    assert "epoch 'bestest' is not an epoch number, latest or best" in capsys.readouterr().err


def test_best_without_a_measured_saved_epoch_says_why(trained_run, tmp_path, capsys):
    import torch

    from utilities import CheckpointError, resolve_epoch

    root, _ = trained_run
    off = copy_with_distances(root / "ck", tmp_path / "off", {}, **{"training.eval_every": 0})
    assert generate.main(["--checkpoint-folder", str(off), "--epoch", "best"]) == 2
    err = capsys.readouterr().err
    assert "no best epoch in" in err and "training.eval_every is 0" in err and "Ask for latest" in err
    assert cd.main(["--gen-epoch", "best", "--checkpoint-folder", str(off)]) == 2
    assert "training.eval_every is 0" in capsys.readouterr().err
    unsaved = copy_with_distances(root / "ck", tmp_path / "unsaved", {1: 10.0}, drop_epochs=[1],
                                  **{"output.save_after_nepochs": 4})
    with pytest.raises(CheckpointError, match=r"measured at epochs 1, but generators are saved at epochs 2, 3, and "
                                              r"no epoch is in both \(in a new run, make training.eval_every \(10\) a "
                                              r"multiple of output.save_after_nepochs \(4\)\)"):
        resolve_epoch(unsaved, "best")
    early = copy_with_distances(root / "ck", tmp_path / "early", {})
    with pytest.raises(CheckpointError, match="stopped before its first measurement .* at epoch 10"):
        resolve_epoch(early, "best")
    state = torch.load(early / "generator_epoch_3.pt", weights_only=True)
    state["metrics"] = [{k: v for k, v in row.items() if not k.startswith("val/")} for row in state["metrics"]]
    torch.save(state, early / "generator_epoch_3.pt")
    with pytest.raises(CheckpointError, match="the run has no validation set"):
        resolve_epoch(early, "best")


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3"])
def test_generate_writes_playable_files_of_the_asked_length(trained_run, tmp_path, fmt):
    root, config = trained_run
    # 0.6 s is several of the generator's windows (16 frames of 128 samples = 0.26 s), written in one go.
    assert generate.main(["--config", str(config), "--epoch", "latest", "--count", "2", "--seconds", "0.6",
                          "--format", fmt, "--out", str(tmp_path)]) == 0
    files = sorted(tmp_path.glob(f"*.{fmt}"))
    assert len(files) == 2
    for path in files:
        audio, rate = soundfile.read(path)
        assert rate == SR and audio.shape[1] == 2
        assert abs(len(audio) - 0.6 * SR) <= (1152 if fmt == "mp3" else 0)  # mp3 frames may pad the end
        assert np.abs(audio).max() <= (1.2 if fmt == "mp3" else 1.0) and np.abs(audio).max() > 0.5  # mp3 decoding
        # rebuilds inter-sample peaks: a -1 dBFS peak of noise-like audio (a tiny model's) comes back up to ~1.5 dB higher
        assert path.with_suffix(".png").stat().st_size > 10_000


def test_generate_is_repeatable_and_ranks_by_the_discriminator(trained_run, tmp_path, capsys):
    root, config = trained_run
    for out in ("a", "b"):
        assert generate.main(["--config", str(config), "--count", "1", "--seconds", "0.3", "--seed", "5",
                              "--out", str(tmp_path / out), "--no-plots"]) == 0
    a = soundfile.read(next((tmp_path / "a").glob("*.wav")))[0]
    assert np.array_equal(a, soundfile.read(next((tmp_path / "b").glob("*.wav")))[0])
    capsys.readouterr()
    assert generate.main(["--config", str(config), "--count", "5", "--seconds", "0.3", "--rank-by-discriminator", "2",
                          "--out", str(tmp_path / "ranked"), "--no-plots"]) == 0
    logits = [float(line.split("logit ")[1].rstrip(")")) for line in capsys.readouterr().out.splitlines() if "logit" in line]
    assert len(logits) == 2 and logits[0] >= logits[1]
    assert len(list((tmp_path / "ranked").glob("*.wav"))) == 2
    assert generate.main(["--config", str(config), "--count", "2", "--rank-by-discriminator", "3"]) == 2


def test_generate_says_its_precision_and_refuses_fp16_on_the_cpu(trained_run, tmp_path, capsys):
    root, config = trained_run
    assert generate.main(["--config", str(config), "--count", "1", "--seconds", "0.3", "--out", str(tmp_path / "auto"),
                          "--no-plots", "--device", "cpu"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("precision: "))
    assert line.split()[1] in ("bf16", "fp32") and "as fast as float32 on this CPU" in line
    fp32 = ["--config", str(config), "--count", "1", "--seconds", "0.3", "--no-plots", "--precision"]
    assert generate.main(fp32 + ["fp32", "--out", str(tmp_path / "fp32")]) == 0
    assert generate.main(fp32 + ["bf16", "--out", str(tmp_path / "bf16")]) == 0
    a, b = (soundfile.read(next((tmp_path / name).glob("*.wav")))[0] for name in ("fp32", "bf16"))
    assert a.shape == b.shape and not np.array_equal(a, b)  # bf16 really ran, and changed little:
    assert 10 * np.log10((a ** 2).sum() / ((a - b) ** 2).sum()) > 20
    assert generate.main(fp32 + ["fp16", "--out", str(tmp_path / "fp16"), "--device", "cpu"]) == 2
    assert "--precision fp16 needs a CUDA GPU" in capsys.readouterr().err


def test_crossfade_join_keeps_length_and_level():
    segments = [np.ones((2, 100), np.float32) for _ in range(3)]
    joined = generate.crossfade_join(segments, 20)
    assert joined.shape == (2, 3 * 100 - 2 * 20)
    assert np.all(joined > 0.99) and np.all(joined <= 1.42)  # equal power: cos + sin peaks at sqrt(2)


def test_the_demo_runs_end_to_end_with_a_tiny_preset(tmp_path, capsys):
    overrides = ["training.epochs=1", "data.steps_per_epoch=2", "training.pretrain_discriminator_epochs=1",
                 "model.seq_len=3000", "model.latent_seq_len=20", "model.num_layers=1", "vae.epochs=1",
                 "vae.width=16", "vae.layers=1"]
    code = demo.run_demo(tmp_path, piano_main.main, overrides, song_seconds=9, clip_seconds=4, chunk_seconds=1,
                         songs=["ode_to_joy", "twinkle_twinkle", "greensleeves"])
    assert code == 0
    out = capsys.readouterr().out
    assert "Demo finished" in out and "verdict:" in out
    assert out.strip().splitlines()[-1].endswith(f"open {tmp_path / 'checkpoints' / 'report.html'} in a browser.")
    assert (tmp_path / "checkpoints" / "report.html").exists()
    for wav in (tmp_path / "generated").glob("*.wav"):
        assert soundfile.info(wav).samplerate == demo.SAMPLE_RATE and soundfile.info(wav).duration == pytest.approx(8)
    assert len(list((tmp_path / "generated").glob("*.wav"))) == 3
    assert (tmp_path / "checkpoints" / "discriminator_over_epochs.png").exists()
    assert (tmp_path / "checkpoints" / "vae.pt").exists() and (tmp_path / "checkpoints" / "latents").is_dir()
    recon = soundfile.info(tmp_path / "reconstructions" / "ode_to_joy.reconstruction.wav")
    assert recon.samplerate == demo.SAMPLE_RATE and recon.duration == pytest.approx(9, abs=0.05)
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "music").glob("*.mp3")}
    assert len(mtimes) == 3
    demo.render_collection(tmp_path / "music", 9, songs=["ode_to_joy", "twinkle_twinkle", "greensleeves"])
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "music").glob("*.mp3")} == mtimes  # reused, not re-rendered


def test_every_demo_song_renders_as_piano_like_stereo():
    for seed, (name, song) in enumerate(demo.SONGS.items()):
        audio = demo.render_song(song, 6, seed=seed)
        assert audio.shape == (6 * demo.SAMPLE_RATE, 2), name
        assert np.abs(audio).max() == pytest.approx(0.9, abs=1e-3)
        assert not np.allclose(audio[:, 0], audio[:, 1]), name  # stereo, not mono twice
    assert len(demo.SONGS) >= 8
