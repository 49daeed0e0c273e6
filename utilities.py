"""Small helpers shared by MusiGAN's scripts: loading checkpoints, finding them, the CPU allocator setting."""

import ctypes
import ctypes.util
import math
import pickle
import re
import time
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


def load_checkpoint(path, map_location="cpu", mmap=False):
    """The checkpoint dict at path, loaded with weights_only=True; CheckpointError with a sentence otherwise.
    mmap=True maps the tensors' storage instead of reading it: cheap when only the plain values are wanted."""
    path = Path(path)
    if not path.exists():
        kind = "discriminator" if "discriminator" in path.name else "generator"
        epochs = checkpoint_epochs(path.parent, kind)
        found = f"epochs there: {', '.join(map(str, epochs))}" if epochs else "there are no checkpoints there"
        raise CheckpointError(f"no checkpoint at {path} ({found})")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
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


EPOCH_CHOICES = "an epoch number, latest or best"


def resolve_epoch(folder, wanted, log=print):
    """The saved generator epoch that `wanted` names, as an int: a number (or its digits), "latest" (the newest
    saved) or "best" (the saved one with the lowest validation distance, see best_epoch; its choice is logged).
    CheckpointError with a sentence when there is no such epoch; ValueError for anything else."""
    epochs = checkpoint_epochs(folder, "generator")
    if not epochs:
        raise CheckpointError(f"no generator checkpoints in {folder}; train first with python piano_main.py")
    if wanted == "latest":
        return epochs[-1]
    if wanted == "best":
        epoch, distances = best_epoch(folder, epochs)
        log(f"best epoch: {epoch}, Fréchet distance {distances[epoch]:.4g} to the validation set (the lowest of "
            f"{len(distances)} saved epoch{'s' if len(distances) > 1 else ''} that measured it)")
        return epoch
    try:
        epoch = int(wanted)
    except (TypeError, ValueError):
        raise ValueError(f"epoch {wanted!r} is not {EPOCH_CHOICES}") from None
    if epoch not in epochs:
        raise CheckpointError(f"no generator of epoch {epoch} in {folder}; epochs there: {', '.join(map(str, epochs))}")
    return epoch


def best_epoch(folder, epochs=None):
    """(epoch, {epoch: distance}): among the saved generator epochs whose metrics row has a validation distance
    (val/frechet, the Fréchet distance to the validation set that training logs every training.eval_every
    epochs), the one with the lowest. The rows come from the newest generator checkpoint, whose metrics hold
    every epoch's row up to it. CheckpointError saying why when no saved epoch has a distance."""
    epochs = epochs or checkpoint_epochs(folder, "generator")
    if not epochs:
        raise CheckpointError(f"no generator checkpoints in {folder}; train first with python piano_main.py")
    state = load_checkpoint(checkpoint_path(folder, "generator", epochs[-1]), mmap=True)
    rows = state["metrics"]
    measured = {}  # {epoch: distance} for every epoch that measured one, saved or not
    for row in rows:
        distance = row.get("val/frechet")
        if distance is not None and math.isfinite(distance):
            measured[int(row["epoch"])] = float(distance)
    distances = {epoch: measured[epoch] for epoch in epochs if epoch in measured}
    if distances:
        return min(distances, key=lambda epoch: (distances[epoch], epoch)), distances
    eval_every = state["config"]["training"].get("eval_every")
    if measured:
        save_every = state["config"]["output"].get("save_after_nepochs")
        if eval_every and save_every and eval_every % save_every == 0:  # every measured epoch was saved
            how = "the generators of the measured epochs have been deleted"
        else:
            how = (f"in a new run, make training.eval_every ({eval_every}) a multiple of output.save_after_nepochs "
                   f"({save_every})")
        why = (f"the validation distance was measured at epochs {epoch_list(sorted(measured))}, but generators are "
               f"saved at epochs {epoch_list(epochs)}, and no epoch is in both ({how})")
    elif eval_every == 0:
        why = "training.eval_every is 0, so the run never measured its distance to the validation set"
    elif not rows:
        why = "no epoch of the run has finished yet"
    elif not any(key.startswith("val/") for row in rows for key in row):
        why = ("the run has no validation set (its dataset has no validation songs; see create_dataset.py "
               "--val-fraction)")
    else:
        why = (f"the run stopped before its first measurement of the distance to the validation set, at epoch "
               f"{eval_every} (training.eval_every)")
    raise CheckpointError(f"no best epoch in {folder}: {why}. Ask for latest or an epoch number instead.")


def epoch_list(epochs, limit=8):
    """'1, 2, 3' or, for many, '10, 20, 30, ..., 680, 690, 700 (70 epochs)'."""
    if len(epochs) <= limit:
        return ", ".join(map(str, epochs))
    return f"{', '.join(map(str, epochs[:3]))}, ..., {', '.join(map(str, epochs[-3:]))} ({len(epochs)} epochs)"


def load_generator(folder, epoch, device, log=print):
    """(generator in eval mode, its config, its epoch) from a saved generator of folder; epoch is what resolve_epoch
    takes (a number, latest or best). A latent run's generator comes with its EMA weights, which sample better than
    the live ones."""
    from config_reader import config_from_checkpoint
    from piano_model import build_generator

    epoch = resolve_epoch(folder, epoch, log)
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


# ---------------------------------------------------------------------------------------------
# Several processes (torchrun): every rank runs the same loop on its share of each global batch.
#
# All ranks share one random stream (the same seed): every per-sample draw (noise, the VAE's reparameterization,
# the latent windows) is made for the whole global batch, and each rank keeps its own rows (rank_rows). So each
# rank's samples differ, a run on N processes equals one process at N x the batch (up to the order of float sums),
# and one RNG state is the whole run's. Gradients are averaged by one all-reduce per update (average_gradients,
# as StyleGAN2-ADA does: R1's double backward and the generator's pass through D need no DDP wrapper, so modules
# and checkpoints stay plain). Without torchrun every helper is the single-process identity.


def world_size():
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def rank():
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def is_main():
    """True on the process that prints and writes files (rank 0, or the only process)."""
    return rank() == 0


def barrier():
    if world_size() > 1:
        torch.distributed.barrier()


def setup_distributed(device):
    """Join torchrun's process group when launched by it (WORLD_SIZE > 1): NCCL on CUDA, gloo on the CPU. Returns
    the device this rank trains on (cuda:LOCAL_RANK on a GPU)."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.distributed.is_initialized():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    from datetime import timedelta

    # Rank 0 alone builds the latent cache and validates while the others wait at a collective: allow it hours
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(hours=2))
    return device


def rank_rows(tensor):
    """This rank's rows of a global batch: rows rank, rank + world, rank + 2 world, ..., as DistributedSampler deals
    a dataset's order to the ranks (so the noise drawn for a row goes with the chunk that row reads)."""
    return tensor if world_size() == 1 else tensor[rank()::world_size()]


def shared_randn(shape, *, dtype=None, device=None, generator=None):
    """torch.randn(shape), drawn (from the shared stream) for the global batch of world x shape[0] rows, of which
    this rank keeps its own: different on every rank, and what one process at the global batch would draw. With
    a generator of its own the draw is local."""
    world = world_size()
    if world == 1 or generator is not None:
        return torch.randn(shape, dtype=dtype, device=device, generator=generator)
    return rank_rows(torch.randn((world * shape[0], *shape[1:]), dtype=dtype, device=device))


def average_gradients(params, ok=True):
    """Average params' gradients over the ranks in one all-reduce, with a vote: returns True only when `ok` holds
    on every rank (a NaN loss on one rank skips the update on all of them)."""
    if world_size() == 1:
        return ok
    params = [p for p in params if p.requires_grad]
    device = params[0].device if params else torch.device("cpu")
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    has_grad = [0.0 if p.grad is None else 1.0 for p in params]  # a parameter no rank used keeps grad None
    flat = torch.cat([g.reshape(-1).float() for g in grads]
                     + [torch.tensor(has_grad + [0.0 if ok else 1.0], device=device)])
    torch.distributed.all_reduce(flat)
    offset, flags = 0, flat[-len(params) - 1:-1].tolist()
    for p, g, used in zip(params, grads, flags):
        n = g.numel()
        p.grad = (flat[offset:offset + n] / world_size()).view_as(p).to(p.dtype) if used else None
        offset += n
    return bool(flat[-1] == 0)


def from_main(value):
    """Rank 0's value on every rank (a decision that must agree, such as the precision a CPU probe picked)."""
    if world_size() == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _collective_device():
    """Where small collectives run: the rank's GPU under NCCL (which takes no CPU tensors), else the CPU."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def mean_over_ranks(values):
    """{name: float} averaged over the ranks (logged figures, and the batch accuracy adaptive R1 follows)."""
    if world_size() == 1 or not values:
        return values
    names = sorted(values)
    flat = torch.tensor([float(values[n]) for n in names], dtype=torch.float64, device=_collective_device())
    torch.distributed.all_reduce(flat)
    return dict(zip(names, (flat / world_size()).tolist()))


def any_rank(flag):
    """True when flag is true on any rank (stopping on the time budget: every rank stops after the same epoch)."""
    if world_size() == 1:
        return bool(flag)
    value = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
    torch.distributed.all_reduce(value)
    return bool(value.item() > 0)


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


def cpu_bf16_speedup(seconds=0.3):
    """How many times faster a bfloat16 matmul (under autocast, as training runs it) is than float32 on this
    CPU: the better of repeated timings of both, about `seconds` in all."""
    rng = torch.Generator().manual_seed(0)  # training's random stream is left alone
    a, b = torch.randn(256, 1024, generator=rng), torch.randn(1024, 1024, generator=rng)

    def best(dtype):
        fastest, spent = float("inf"), 0.0
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            (a @ b).sum()  # warm-up
            while spent < seconds / 2:
                started = time.perf_counter()
                for _ in range(4):
                    a @ b
                took = time.perf_counter() - started
                fastest, spent = min(fastest, took), spent + took
        return fastest

    return best(torch.float32) / best(torch.bfloat16)


def auto_precision(device):
    """(precision, why) for training.precision: auto on this device."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        name = torch.cuda.get_device_name(device)
        if major >= 8:
            return "bf16", f"{name} has compute capability {major}.{minor}: native bfloat16"
        return "fp16", (f"{name} has compute capability {major}.{minor}, below 8.0, where bfloat16 is emulated: "
                        f"float16 with a GradScaler")
    if device.type != "cpu":
        return "fp32", f"{device.type} is neither a CUDA GPU nor the CPU"
    speedup = cpu_bf16_speedup()
    if speedup >= 1.3:
        return "bf16", f"a bfloat16 matmul ran {speedup:.1f}x as fast as float32 on this CPU"
    return "fp32", f"a bfloat16 matmul ran only {speedup:.2f}x as fast as float32 on this CPU"


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def inference_autocast(precision, device, log=print):
    """An autocast context for generating with `precision` (auto, fp32, bf16 or fp16) on `device`; auto decides
    as training does (auto_precision) and says why."""
    from contextlib import nullcontext

    if precision == "auto":
        precision, why = auto_precision(device)
        log(f"precision: {precision} ({why})")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("--precision fp16 needs a CUDA GPU; on the CPU use bf16 or fp32")
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])
