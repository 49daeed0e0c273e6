"""Small helpers shared by MusiGAN's scripts: loading checkpoints, finding them, the CPU allocator setting."""

import ctypes
import ctypes.util
import pickle
import re
import zipfile
from pathlib import Path

import torch

REQUIRED_KEYS = ("format_version", "model_state_dict", "optimizer_state_dict", "epoch", "config")


class CheckpointError(Exception):
    """A checkpoint that is missing, damaged or not MusiGAN's, worded for the user."""


def checkpoint_path(folder, kind, epoch):
    """folder/generator_epoch_N.pt or folder/discriminator_epoch_N.pt."""
    return Path(folder) / f"{kind}_epoch_{epoch}.pt"


def checkpoint_epochs(folder, kind="generator"):
    """The epochs that have a `kind` checkpoint in folder, sorted."""
    pattern = re.compile(rf"{kind}_epoch_(\d+)\.pt$")
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := pattern.match(p.name)))


def forked_rng(device):
    """A context in which torch's random streams (the CPU's, and `device`'s when it is a GPU) may be drawn from
    and are put back afterwards: sampling and evaluation leave training's streams alone."""
    device = torch.device(device)
    return torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else [])


def load_checkpoint(path, map_location="cpu"):
    """The checkpoint dict at path, loaded with weights_only=True; CheckpointError with a sentence otherwise."""
    path = Path(path)
    if not path.exists():
        kind = "discriminator" if "discriminator" in path.name else "generator"
        epochs = checkpoint_epochs(path.parent, kind)
        found = f"epochs there: {', '.join(map(str, epochs))}" if epochs else "there are no checkpoints there"
        raise CheckpointError(f"no checkpoint at {path} ({found})")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise CheckpointError(
            f"{path} is damaged or not a MusiGAN checkpoint ({str(e).splitlines()[0][:160]}). A run killed while "
            f"saving never leaves such a file, so it was probably cut short by a copy or a full disk; delete it "
            f"and resume from an earlier epoch."
        ) from e
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED_KEYS):
        raise CheckpointError(f"{path} is not a MusiGAN checkpoint (it lacks {', '.join(REQUIRED_KEYS)})")
    if state["format_version"] != 1:
        raise CheckpointError(f"{path} has format_version {state['format_version']}; this MusiGAN reads version 1")
    return state


def load_generator(folder, epoch, device):
    """(generator in eval mode, its config, its epoch) from folder/generator_epoch_{epoch}.pt; epoch may be 'latest'.
    A latent run's generator comes with its EMA weights, which sample better than the live ones."""
    from config_reader import config_from_checkpoint
    from piano_model import build_generator

    epochs = checkpoint_epochs(folder, "generator")
    if not epochs:
        raise CheckpointError(f"no generator checkpoints in {folder}; train first with python piano_main.py")
    if epoch == "latest":
        epoch = epochs[-1]
    if epoch not in epochs:
        raise CheckpointError(f"no generator of epoch {epoch} in {folder}; epochs there: {', '.join(map(str, epochs))}")
    path = checkpoint_path(folder, "generator", epoch)
    state = load_checkpoint(path)
    config = config_from_checkpoint(state["config"], source=f"the config inside {path}")
    generator = build_generator(config)
    try:
        generator.load_state_dict(state.get("ema_state_dict") or state["model_state_dict"])
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit the generator its own config describes "
                              f"({str(e).splitlines()[0][:200]})") from e
    return generator.to(device).eval(), config, epoch


def run_folder(checkpoint_folder=None, config=None):
    """The run's checkpoint folder: --checkpoint-folder, else the output.checkpoint_folder of --config
    (default config.yaml, or checkpoints/config.yaml when there is no config.yaml here)."""
    from config_reader import load_config_from_yaml

    if checkpoint_folder:
        return Path(checkpoint_folder)
    config_path = Path(config or ("config.yaml" if Path("config.yaml").exists() else "checkpoints/config.yaml"))
    return Path(load_config_from_yaml(config_path)["output"]["checkpoint_folder"])


def write_wav(path, audio, sample_rate):
    """(channels, samples) float audio as a 16-bit WAV at path, written to a temporary file and renamed into
    place: a kill never leaves half a file, and a hard link to an earlier file of that name (the run report
    keeps such links) keeps the earlier audio."""
    import os

    import soundfile

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")  # not *.wav: a kill mid-write leaves nothing the report would take
    soundfile.write(tmp, audio.T, sample_rate, format="WAV", subtype="PCM_16")
    os.replace(tmp, path)
    return path


M_MMAP_THRESHOLD = -3  # mallopt parameter number in glibc's malloc.h


def limit_heap_fragmentation(mmap_threshold_mib=4):
    """Ask glibc to serve allocations of mmap_threshold_mib or more straight from the OS and return them on free.

    Training on the CPU allocates and frees many activations of a few MiB each. glibc's default
    threshold climbs to 32 MiB, so those stay on its heap, where they fragment: at the seed config,
    peak RSS was 1040 MiB against about 716 MiB of live data. With a 4 MiB threshold it is about
    765 MiB, at the cost of page faults (bench/train_step.py prints both). A no-op where the C library
    is not glibc. Returns True when the setting took effect.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, int(mmap_threshold_mib * 2**20)))
    except (OSError, AttributeError, TypeError):
        return False


def configure_cpu_memory(precision):
    """The allocator setting bench/train_step.py measured best for training on the CPU in `precision`.

    float32: limit_heap_fragmentation(4), so peak RSS at the seed config is about 760 MiB instead of
    1018 (and an iteration takes 2.0 s instead of 1.6). bfloat16 activations are half the size and
    stay near 810 MiB with glibc's default, which is faster there (2.2 s instead of 2.5).
    """
    return limit_heap_fragmentation(4) if precision == "fp32" else False
