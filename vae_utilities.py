"""Saving MusiGAN checkpoints, and the VAE's own files: its checkpoint and its latent cache.

    from vae_utilities import save_checkpoint, load_vae, build_latent_cache, load_latent_cache
    save_checkpoint("checkpoints/generator_epoch_10.pt", generator, optim_g, epoch=10, config=config)
    vae, state = load_vae("checkpoints/vae.pt", config)     # CheckpointError names a mismatching key
    latents = load_latent_cache("checkpoints", vae_fingerprint(vae), "dataset")
    latents["training"]                                      # (chunks, frames, latent_dim) float16 memmap

Load checkpoints with utilities.load_checkpoint (weights_only=True, so a stranger's file cannot run code).

The latent cache is stage two's whole training set: every training and validation chunk of the dataset,
encoded once by the VAE into its means, in checkpoint_folder/latents/{training,validation}.npy, float16
(chunks, frames, latent_dim), memory-mapped. Chunks 2i and 2i+1 are a start and its continuation, as
in the dataset. latents/latents.json records the fingerprint of the VAE that made it (a hash of its
weights) and a stamp of the dataset; a cache whose VAE or dataset has changed is refused, never
silently reused.
"""

import hashlib
import json
import os
import random
from pathlib import Path

import numpy as np
import torch

from utilities import CheckpointError, load_checkpoint

CHECKPOINT_VERSION = 1


def rng_states():
    """Every random number generator's state, as types torch.load(weights_only=True) accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states = {"torch": torch.get_rng_state(), "python": random.getstate(),
              "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                        "has_gauss": has_gauss, "cached_gaussian": cached}}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states):
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def every_rank_rng_states(gather=True):
    """{"rank_rng_states": [rank 0's rng_states(), rank 1's, ...]} for a checkpoint of a run on several processes
    (a collective: every rank calls it); {} for one process, or when gather is False (a Ctrl-C save, when the
    ranks may not all be at the same point)."""
    from utilities import world_size

    if world_size() == 1 or not gather:
        return {}
    states = [None] * world_size()
    torch.distributed.all_gather_object(states, rng_states())
    return {"rank_rng_states": states}


def restore_own_rng_states(state):
    """This rank's random state from a checkpoint: its own entry of rank_rng_states when the checkpoint came from as
    many processes, else the saving process's (with one shared stream, every rank's state is that one)."""
    from utilities import rank, world_size

    per_rank = state.get("rank_rng_states")
    if per_rank and len(per_rank) == world_size():
        restore_rng_states(per_rank[rank()])
        return
    restore_rng_states(state["rng_states"])
    if world_size() > 1 and "cuda" in state["rng_states"] and torch.cuda.is_available():
        # this rank's GPU takes the stream of the saving process's own GPU (rank 0's, cuda:0), as the others do
        torch.cuda.set_rng_state(state["rng_states"]["cuda"][0], torch.cuda.current_device())


def save_checkpoint(path, model, optimizer, epoch, config, scaler=None, metrics=None, partial=False, **extra):
    """Write model, optimizer, scaler, epoch, config, RNG states and metrics (and `extra` plain values) to path,
    atomically.

    The state goes to a temporary file in the same folder, which then replaces path: a run killed at
    any moment leaves either the old file or the new one, never half of one. The module saved is the
    uncompiled one (torch.compile's wrapper is unwrapped).
    """
    path = Path(path)
    model = getattr(model, "_orig_mod", model)
    state = {
        "format_version": CHECKPOINT_VERSION,
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": optimizer.state_dict(),
        "scaler_state_dict": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "epoch": int(epoch),
        "partial": bool(partial),
        "config": config,
        "rng_states": rng_states(),
        "metrics": list(metrics or []),
        **extra,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


# ---------------------------------------------------------------------------------------------
# The VAE's checkpoint

VAE_FILE = "vae.pt"
# The keys that decide a VAE's shape: a reused VAE must agree with the config on each of them.
VAE_SHAPE_KEYS = ("n_fft", "hop_length", "downsample", "latent_dim", "width", "layers")


def vae_fingerprint(vae):
    """A short hash of the VAE's weights: the same weights give the same fingerprint, on any device."""
    digest = hashlib.sha256()
    for name, tensor in sorted(getattr(vae, "_orig_mod", vae).state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def vae_mismatch(saved, config):
    """Sentences for each way a VAE checkpoint's config disagrees with `config` on shape, rate or channels."""
    problems = []
    for key in VAE_SHAPE_KEYS:
        if saved["vae"][key] != config["vae"][key]:
            problems.append(f"vae.{key} is {saved['vae'][key]} there but {config['vae'][key]} in the config")
    for section, key in (("data", "sample_rate"), ("model", "sound_channels")):
        if saved[section][key] != config[section][key]:
            problems.append(f"{section}.{key} is {saved[section][key]} there but {config[section][key]} in the config")
    return problems


def read_vae_checkpoint(path, config=None):
    """The checkpoint dict of a vae.pt, loaded to the CPU. A file that is not a VAE checkpoint is refused; with
    `config`, so is a VAE of another shape, sample rate or channel count, with a CheckpointError naming the key."""
    from config_reader import config_from_checkpoint

    state = load_checkpoint(path)
    if state.get("kind") != "vae":
        raise CheckpointError(f"{path} is not a VAE checkpoint (it is a MusiGAN {state.get('kind', 'GAN')} "
                              f"checkpoint); name a vae.pt written by piano_main.py, or move it away")
    if config is not None:
        problems = vae_mismatch(config_from_checkpoint(state["config"], source=f"the config inside {path}"), config)
        if problems:
            raise CheckpointError(f"the VAE at {path} does not fit the config: " + "; ".join(problems)
                                  + ". Set those keys to the checkpoint's values (its run folder's config.yaml has "
                                    "them), or train a new VAE (vae.checkpoint: null).")
    return state


def vae_from_checkpoint(state, path, device="cpu"):
    """The VAE (in eval mode) that a checkpoint dict from read_vae_checkpoint holds."""
    from config_reader import config_from_checkpoint
    from piano_encoder_decoder import vae_from_config

    saved = config_from_checkpoint(state["config"], source=f"the config inside {path}")
    vae = vae_from_config(saved["vae"], saved["model"]["sound_channels"])
    try:
        vae.load_state_dict(state["model_state_dict"])
    except RuntimeError as e:
        raise CheckpointError(f"{path} holds weights of another shape than its own config says "
                              f"({str(e).splitlines()[0]}); it is damaged or was edited") from e
    return vae.to(device).eval()


def load_vae(path, config=None, device="cpu"):
    """(VAE in eval mode, its checkpoint dict) from a vae.pt; read_vae_checkpoint says what is refused."""
    state = read_vae_checkpoint(path, config)
    return vae_from_checkpoint(state, path, device), state


# ---------------------------------------------------------------------------------------------
# The latent cache

LATENT_DIR = "latents"
CACHE_VERSION = 1


class LatentCacheError(CheckpointError):
    """A latent cache that is missing, stale or damaged, worded for the user."""


def dataset_stamp(dataset_dir):
    """What identifies a dataset's contents cheaply: its dataset.json and the size and mtime of its arrays."""
    from create_dataset import SPLIT_FILES

    dataset_dir = Path(dataset_dir)
    stamp = {"dataset_json": hashlib.sha256((dataset_dir / "dataset.json").read_bytes()).hexdigest()[:16]}
    for split, name in SPLIT_FILES.items():
        stat = (dataset_dir / name).stat()
        stamp[split] = [stat.st_size, stat.st_mtime_ns]
    return stamp


def usable_samples(samples, frame_samples):
    """The longest whole number of latent frames in `samples`, in samples: what the cache encodes of each chunk,
    and the VAE's training crop."""
    return samples - samples % frame_samples


@torch.no_grad()
def build_latent_cache(vae, folder, dataset_dir, device, batch_size=8, log=print):
    """Encode every chunk of both splits of dataset_dir into folder/latents/ (see the module docstring).

    Written to temporary names and renamed, latents.json last: a run killed while building leaves no
    cache that looks complete. Returns the path of latents.json.
    """
    from tqdm import tqdm

    from create_dataset import SPLIT_FILES, load_dataset_info
    from piano_model import AudioDataset

    out = Path(folder) / LATENT_DIR
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "latents.json"
    if manifest.exists():
        manifest.unlink()  # from here on the old cache is not valid, whatever happens
    was_training = vae.training
    vae.eval()
    info, shapes = load_dataset_info(dataset_dir), {}
    samples = usable_samples(info["chunk_samples"], vae.frame_samples)
    frames = samples // vae.frame_samples
    for split in SPLIT_FILES:
        data = AudioDataset.from_dataset_dir(dataset_dir, split, samples, random_crop=False, normalization="peak")
        tmp = out / f".{split}.npy.tmp"
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(len(data), frames, vae.latent_dim))
        loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
        done = 0
        for target, _, _ in tqdm(loader, desc=f"latent cache: {split}", leave=False, dynamic_ncols=True):
            mu, _ = vae.encoder(target.to(device))
            array[done:done + len(mu)] = mu.float().cpu().numpy()
            done += len(mu)
        array.flush()
        del array
        os.replace(tmp, out / f"{split}.npy")
        shapes[split] = [len(data), frames, vae.latent_dim]
    record = {
        "format_version": CACHE_VERSION, "vae_fingerprint": vae_fingerprint(vae),
        "dataset_dir": str(Path(dataset_dir).resolve()), "dataset": dataset_stamp(dataset_dir),
        "sample_rate": info["sample_rate"], "frame_samples": vae.frame_samples,
        "frames_per_second": info["sample_rate"] / vae.frame_samples, "chunk_samples_encoded": samples,
        "shapes": shapes, "content": "encoder means (mu); chunks 2i and 2i+1 are a start and its continuation",
    }
    tmp = out / ".latents.json.tmp"
    tmp.write_text(json.dumps(record, indent=2), encoding="utf-8")
    os.replace(tmp, manifest)
    vae.train(was_training)
    log(f"latent cache: {', '.join(f'{s} {n[0]} chunks x {n[1]} frames' for s, n in shapes.items())} "
        f"({record['frames_per_second']:.1f} frames/s) in {out}")
    return manifest


def latent_cache_problem(folder, fingerprint, dataset_dir):
    """None when folder/latents/ was made by the VAE with this fingerprint from this dataset; else a sentence."""
    manifest = Path(folder) / LATENT_DIR / "latents.json"
    if not manifest.exists():
        return f"there is no latent cache in {manifest.parent}"
    try:
        record = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return f"{manifest} cannot be read ({e})"
    if record.get("format_version") != CACHE_VERSION:
        return f"{manifest} has format_version {record.get('format_version')}; this MusiGAN writes {CACHE_VERSION}"
    if record.get("vae_fingerprint") != fingerprint:
        return (f"the latent cache in {manifest.parent} was made by another VAE (fingerprint "
                f"{record.get('vae_fingerprint')}, the VAE now is {fingerprint}): it is stale")
    try:
        stamp = dataset_stamp(dataset_dir)
    except OSError as e:
        return f"the dataset {dataset_dir} cannot be read ({e})"
    if record.get("dataset") != stamp:
        return (f"the latent cache in {manifest.parent} was made from another dataset ({record.get('dataset_dir')}) "
                f"or the dataset in {dataset_dir} has changed since: it is stale")
    return None


def load_latent_cache(folder, fingerprint, dataset_dir):
    """{"training": memmap, "validation": memmap, "info": latents.json} from folder/latents/, or LatentCacheError
    when it is missing or stale (piano_main.py rebuilds it: run it again)."""
    problem = latent_cache_problem(folder, fingerprint, dataset_dir)
    if problem:
        raise LatentCacheError(f"{problem}. Run piano_main.py with this config again: it rebuilds the cache.")
    out = Path(folder) / LATENT_DIR
    record = json.loads((out / "latents.json").read_text(encoding="utf-8"))
    cache = {"info": record}
    for split, shape in record["shapes"].items():
        array = np.load(out / f"{split}.npy", mmap_mode="r", allow_pickle=False)
        if list(array.shape) != shape:
            raise LatentCacheError(f"{out / f'{split}.npy'} holds {list(array.shape)}, not {shape} as latents.json "
                                   f"says; delete {out} and run piano_main.py again")
        cache[split] = array
    return cache


def reconstruct_audio(vae, audio, peak, device):
    """(C, T) float32 at the model's rate -> its reconstruction by the VAE, (C, T), at the input's loudness.

    The level, in two steps (both a single gain for the whole input, so its dynamics are the VAE's to keep):
    - In: the encoder reads log magnitudes, so it knows only the levels it was trained on, its training songs
      divided by their global peak. `peak` divides the audio into those units. Audio cut from the dataset comes
      with that peak (vae.pt's data_peak): where training saw it. A song from elsewhere comes with None: it is
      divided by its own peak, as create_dataset.py would divide a collection of that song alone, which puts it
      where the training songs sat, however loud it was stored. Divided by the training songs' peak, a song
      stored 12 dB quieter lies outside the levels the VAE has learnt.
    - Out: the decoder rebuilds levels only roughly. Its frames' phases are never quite consistent, so its
      overlap-add partly cancels (by 6 dB when they are random). A tiny VAE trained for seconds rebuilt its own
      training song 3 to 5 dB quiet, and the same song 12 dB quieter 5 dB loud (tests/test_vae.py). So the
      reconstruction is scaled to the input's RMS over the whole input (silence stays silent).
    """
    length = audio.shape[1]
    if peak is None:
        peak = float(np.abs(audio).max()) or 1.0
    padded = -(-length // vae.frame_samples) * vae.frame_samples
    x = torch.zeros(1, audio.shape[0], padded)
    x[0, :, :length] = torch.from_numpy(audio) / peak
    with torch.inference_mode():
        mu, _ = vae.encode_long(x.to(device))
        recon = vae.decode_long(mu)[0, :, :length].float().cpu().numpy()  # in the VAE's units
    recon_rms = rms(recon)
    return recon * (rms(audio) / recon_rms if recon_rms > 0 else peak)


def rms(audio):
    """The root mean square of an array, over every channel and sample, in float64."""
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0


RECONSTRUCTIONS_DIR = "vae"  # under output.music_out_folder


def write_reconstructions(vae, dataset, folder, count, peak, sample_rate, device):
    """count pairs of the dataset (evenly spread; each a chunk and its continuation, joined) and their
    reconstructions by the VAE, as folder/pair_N.original.wav and pair_N.reconstruction.wav at the dataset's
    level, in place of any written before. Returns the paths written."""
    from utilities import write_wav

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("pair_*.wav"):  # an earlier VAE's, which may have covered other pairs
        old.unlink()
    pairs = len(dataset) // 2
    paths = []
    for index in sorted(set(np.linspace(0, pairs - 1, min(count, pairs)).round().astype(int).tolist())):
        audio = torch.cat([dataset[2 * index][0], dataset[2 * index + 1][0]], dim=-1).numpy() * peak
        recon = reconstruct_audio(vae, audio, peak, device)
        for kind, signal in (("original", audio), ("reconstruction", recon)):
            paths.append(write_wav(folder / f"pair_{index}.{kind}.wav", np.clip(signal, -1, 1), sample_rate))
    return paths
