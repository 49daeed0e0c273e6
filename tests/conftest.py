"""Shared helpers: short, music-like audio synthesized and encoded in tmp_path, so tests run anywhere."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the project is flat scripts, not a package


def synth_song(seconds, sample_rate=8000, channels=2, seed=0):
    """A melody of decaying, slightly inharmonic piano-like notes; float32 (samples, channels) in [-1, 1]."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sample_rate)
    out = np.zeros((n, channels), np.float32)
    t_note = np.arange(int(0.6 * sample_rate)) / sample_rate
    start = 0
    while start < n:
        f0 = 110 * 2 ** (rng.integers(0, 36) / 12)
        note = sum(np.sin(2 * np.pi * f0 * k * np.sqrt(1 + 4e-4 * k * k) * t_note) * np.exp(-t_note * (2 + k)) / k
                   for k in range(1, 5))
        pan = rng.uniform(0.2, 0.8)
        gains = [1 - pan, pan][:channels] if channels <= 2 else rng.uniform(0.2, 1, channels)
        end = min(n, start + len(note))
        for c in range(channels):
            out[start:end, c] += 0.4 * gains[c] * note[:end - start]
        start += int(rng.integers(1, 4) * 0.15 * sample_rate)
    return out / max(1.0, np.abs(out).max() / 0.9)


def write_audio(path, audio, sample_rate):
    """Encode (samples, channels) float32 audio to path with ffmpeg; the format follows the suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "f32le", "-ar", str(sample_rate),
                    "-ac", str(audio.shape[1]), "-i", "-", str(path)],
                   input=np.ascontiguousarray(audio, np.float32).tobytes(), check=True)
    return path


@pytest.fixture
def make_song():
    """make_song(path, seconds, channels=2, seed=0, sample_rate=16000) writes a song and returns its path."""
    def make(path, seconds, channels=2, seed=0, sample_rate=16000):
        return write_audio(path, synth_song(seconds, sample_rate, channels, seed), sample_rate)
    return make


SR = 8000


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    for i in range(4):
        write_audio(root / "music" / f"song{i}.mp3", synth_song(6.5, 16000, 2, seed=i), 16000)
    import create_dataset
    import prepare_dataset

    assert prepare_dataset.main([str(root / "music"), "--out", str(root / "prepared"), "--sample-rate", str(SR),
                                 "--clip-seconds", "3", "--workers", "1"]) == 0
    assert create_dataset.main([str(root / "prepared"), "--out", str(root / "dataset"), "--chunk-seconds", "0.5",
                                "--val-fraction", "0.25"]) == 0
    return root / "dataset"


# The generators at test size. The tiny VAE below writes 31 latent frames per 0.5 s chunk (62 per pair).
TINY_LATENT_MODEL = {"seq_len": 2000, "latent_seq_len": 16, "latent_dim": 16, "num_heads": 2, "num_layers": 1,
                     "context": 4, "noise_dim": 8, "style_dim": 4}
TINY_SEED_MODEL = {"architecture": "seed", "n_channels": 16, "seq_len": 2000, "latent_seq_len": 20, "latent_dim": 32,
                   "num_heads": 4, "num_of_gaussians": 3, "noise_dim": 3000, "dropout": 0.1}
SEED_LOSSES = {"recon": 2.0, "adversarial": 1.0, "kl": 5e-5, "stft": 1.0}  # the old default recipe (bce_stft)


def tiny_seed_config(tmp_path, dataset, **sections):
    """tiny_config with the seed's end-to-end generator and the old default losses (BCE, recon, STFT)."""
    sections["model"] = {**TINY_SEED_MODEL, **sections.get("model", {})}
    sections["loss_weights"] = {**SEED_LOSSES, **sections.get("loss_weights", {})}
    sections["training"] = {"adversarial_loss": "bce", **sections.get("training", {})}
    return tiny_config(tmp_path, dataset, **sections)


def tiny_config(tmp_path, dataset, **sections):
    """Write a tiny config to tmp_path and return its path; sections override keys of the tiny one."""
    config = {
        "data": {"dataset_dir": str(dataset), "sample_rate": SR, "batch_size": 4, "num_workers": 0, "steps_per_epoch": 0},
        "model": dict(TINY_LATENT_MODEL),
        "vae": {"n_fft": 128, "hop_length": 32, "downsample": 4, "latent_dim": 8, "width": 16, "layers": 1,
                "epochs": 1},
        "discriminator": {"n_channels": 16},
        "training": {"epochs": 2, "keys": 8, "gan_batch_size": 4, "pretrain_generator_epochs": 1,
                     "pretrain_discriminator_epochs": 1, "precision": "fp32"},  # auto would differ between CPUs
        "output": {"checkpoint_folder": str(tmp_path / "ck"), "music_out_folder": str(tmp_path / "samples"),
                   "save_after_nepochs": 1, "samples_per_save": 2},
    }
    for section, values in sections.items():
        if section == "model" and values.get("architecture") == "seed":
            config["model"] = {}  # the latent sizes mean other things to the seed's generator
        config.setdefault(section, {}).update(values)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
