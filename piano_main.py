"""Train MusiGAN: stage one, a VAE of your music and its latent cache; then the discriminator and the GAN loop.

    python piano_main.py --config config.yaml
    python piano_main.py --config config.yaml --set training.time_budget_minutes=30 --set model.num_layers=2
    python piano_main.py --config config.yaml --set batch_size=16          # a bare key one section has
    python piano_main.py --config config.yaml --set output.resume_from_checkpoint=latest
    python piano_main.py --config checkpoints/config.yaml      # the resolved config of an earlier run
    python piano_main.py --demo                                # the bundled demo, end to end, in runs/demo/
    torchrun --nproc_per_node 4 piano_main.py --config config.yaml     # 4 GPUs; batch sizes are per process

Stage one (vae.enabled, the default) trains VariationalEncoderDecoder to rebuild real chunks, or reuses
the trained vae.pt that vae.checkpoint names, then encodes the whole dataset once into the latent cache
(checkpoint_folder/latents/). configs/seed.yaml instead pretrains the seed's generator on reconstruction.

Needs a dataset made by prepare_dataset.py and create_dataset.py (data.dataset_dir). Uses CUDA when
present. training.precision: auto picks bfloat16 autocast on a GPU of compute capability 8 or more,
float16 with a GradScaler below that, and on the CPU bfloat16 where a short probe finds it faster
(it prints its choice). Writes checkpoints, metrics.csv, losses.png, TensorBoard event files, report.html
(open it in a browser) and the resolved config to output.checkpoint_folder, and audio samples to
output.music_out_folder. Ctrl-C saves a checkpoint and exits; resume with output.resume_from_checkpoint=latest.
Under torchrun every process trains its share of each global batch and rank 0 writes (README: Several GPUs).
"""

import argparse
import copy
import math
import os
import random
import shutil
import sys
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import numpy as np
import torch

from config_reader import judged_frames, load_config_from_yaml, write_config
from create_dataset import DatasetError, load_dataset_info
from discriminator import build_discriminator
from loss_functions import MultiResolutionSTFTLoss
from discriminator import MultiResolutionSTFTDiscriminator
from piano_encoder_decoder import vae_from_config
from piano_model import AudioDataset, LatentWindows, build_generator, latent_statistics
from piano_pretrain import pretrain_discriminator, pretrain_generator, pretrain_vae, vae_schedule, vae_segment
from piano_train import (VAE_PANELS, GANRun, TensorBoard, TrainingStopped, pretrain_latent_discriminator, train_vae_gan,
                         write_metrics)
from report import report_line, write_report_safely
from update_checkpoint import update_checkpoint
from utilities import (AUTOCAST_DTYPES, CheckpointError, auto_precision, barrier, checkpoint_epochs, checkpoint_path,
                       configure_cpu_memory, from_main, is_main, load_checkpoint, setup_distributed, world_size)
from vae_utilities import (RECONSTRUCTIONS_DIR, VAE_FILE, build_latent_cache, latent_cache_problem, load_latent_cache,
                           read_vae_checkpoint, restore_own_rng_states, save_checkpoint, vae_fingerprint,
                           vae_from_checkpoint, every_rank_rng_states, write_reconstructions)


def check_dataset_matches(info, config, dataset_dir):
    """A sentence for each way the dataset and the config disagree; DatasetError if any."""
    model = config["model"]
    problems = []
    if info["sample_rate"] != config["data"]["sample_rate"]:
        problems.append(f"the dataset is at {info['sample_rate']} Hz but data.sample_rate is "
                        f"{config['data']['sample_rate']}; set data.sample_rate: {info['sample_rate']}, or rebuild the "
                        f"dataset with prepare_dataset.py --sample-rate {config['data']['sample_rate']}")
    if info["channels"] != model["sound_channels"]:
        problems.append(f"the dataset has {info['channels']} channels but model.sound_channels is "
                        f"{model['sound_channels']}; set model.sound_channels: {info['channels']}")
    if model["seq_len"] > info["chunk_samples"]:
        problems.append(f"model.seq_len ({model['seq_len']}) is longer than the dataset's chunks "
                        f"({info['chunk_samples']} samples); lower model.seq_len, or rebuild the dataset with "
                        f"create_dataset.py --chunk-seconds {model['seq_len'] / info['sample_rate']:.3g} or more")
    if info["pairs"]["training"] * 2 < config["data"]["batch_size"] * config["training"]["accumulation_steps"]:
        problems.append(f"the training set has {info['pairs']['training'] * 2} chunks, fewer than one iteration needs "
                        f"(data.batch_size x training.accumulation_steps); add music or lower data.batch_size")
    if problems:
        raise DatasetError(f"{dataset_dir} does not match the config: " + "; and ".join(problems) + ".")


def resolve_precision(config, device, resumed_precision=None, log=print):
    """training.precision for this device: auto is decided here (and printed, with the reason); a resumed run
    keeps what the run it resumes decided."""
    precision = config["training"]["precision"]
    if precision == "auto":
        if resumed_precision not in (None, "auto") and not (resumed_precision == "fp16" and device.type != "cuda"):
            precision, why = resumed_precision, "as the run being resumed chose"
        else:
            precision, why = auto_precision(device)
        log(f"precision: {precision} ({why}; set training.precision to choose)")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("training.precision: fp16 needs a CUDA GPU; use fp32 or bf16 on the CPU")
    return precision


def precision_setup(config, device, resumed_precision=None, log=print):
    """(name, autocast factory, GradScaler for G, for D) for training.precision on this device (resolve_precision
    says how auto is decided)."""
    precision = resolve_precision(config, device, resumed_precision, log)
    if precision == "fp32":
        return precision, nullcontext, None, None
    autocast = partial(torch.autocast, device.type, dtype=AUTOCAST_DTYPES[precision])
    scalers = [torch.amp.GradScaler(device.type) for _ in range(2)] if precision == "fp16" else [None, None]
    return precision, autocast, *scalers


def configure_cuda(device):
    """The usual settings for training on a GPU: cuDNN picks its fastest kernels for our fixed shapes, and float32
    matmuls and convolutions use TF32 tensor cores (on compute capability 8 and above)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def resolve_resume(config):
    """The GAN epoch to resume from, or None: a fresh run (which must not write over an earlier one), or a run
    stopped during stage one (folder/vae.pt, resumed by stage_one)."""
    out = config["output"]
    folder = Path(out["checkpoint_folder"])
    epochs = checkpoint_epochs(folder, "generator")
    has_vae = (folder / VAE_FILE).exists()
    wanted = out["resume_from_checkpoint"]
    if wanted is False:
        if epochs or has_vae:
            held = f"epochs {epochs[0]}-{epochs[-1]}" if epochs else f"a VAE, {VAE_FILE}"
            raise CheckpointError(
                f"{folder} already holds a run ({held}). Resume it with --set "
                f"output.resume_from_checkpoint=latest, or start afresh in another output.checkpoint_folder.")
        return None
    if epochs and config["vae"]["enabled"] and not has_vae:
        raise CheckpointError(f"{folder} holds a GAN run without a VAE (made with vae.enabled: false, or before "
                              f"stage one existed); resume it with --set vae.enabled=false")
    if not epochs:
        if has_vae and config["vae"]["enabled"]:
            return None  # stopped in stage one: stage_one resumes it
        raise CheckpointError(f"output.resume_from_checkpoint is {wanted!r}, but {folder} holds no checkpoints")
    if wanted == "latest":
        return epochs[-1]
    if wanted not in epochs:
        raise CheckpointError(f"no checkpoint of epoch {wanted} in {folder}; epochs there: "
                              f"{', '.join(map(str, epochs))}")
    return wanted


def compile_models(generator, discriminator, r1_weight, log=print):
    """training.compile: torch.compile what training runs, in place, so state dicts (and checkpoints) keep the
    plain modules' keys. The latent generator's training path is its transformer (_latents); the seed's is forward.
    The discriminator stays eager under R1, whose double backward torch.compile does not support."""
    if getattr(generator, "architecture", "seed") == "latent":
        generator._latents = torch.compile(generator._latents)
    else:
        generator.compile()
    if r1_weight:
        log("training.compile: the generator is compiled; the discriminator stays eager, because R1 "
            "(training.r1_weight) needs a double backward, which torch.compile does not support")
    else:
        discriminator.compile()
        log("training.compile: the generator and discriminator are compiled (their first steps take a while)")


def resuming_vae(config):
    """True when the checkpoint folder holds a VAE that this run goes on from (stage one, or the GAN after it)."""
    return config["vae"]["enabled"] and (Path(config["output"]["checkpoint_folder"]) / VAE_FILE).exists()


def folder_config_precision(config):
    """training.precision in the config.yaml that the run being resumed wrote to its folder, or None."""
    path = Path(config["output"]["checkpoint_folder"]) / "config.yaml"
    try:
        return load_config_from_yaml(path)["training"]["precision"] if path.exists() else None
    except ValueError:
        return None


def load_model_state(model, state, path):
    try:
        model.load_state_dict(state["model_state_dict"])
    except RuntimeError as e:
        raise CheckpointError(f"{path} was saved by a model of another shape ({str(e).splitlines()[0]}). Use the "
                              f"config it was trained with (saved beside it as config.yaml)"
                              + (", or set output.update_discriminator: true" if "discriminator" in str(path) else "")
                              ) from e


def copy_atomically(source, destination):
    tmp = Path(destination).with_name(f".{Path(destination).name}.{os.getpid()}.tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, destination)


def stage_one(config, device, info, autocast, deadline, gan_started=False, log=print):
    """The VAE of the music: trained (or resumed) in checkpoint_folder/vae.pt, or copied there from
    vae.checkpoint; then its latent cache, built unless an up-to-date one is there. Returns (vae, status).

    A VAE that stopped early (Ctrl-C, a kill) is trained on when the run resumes; so is one whose vae.steps
    was raised, until the GAN stage has begun on its latents. One that stopped on its time budget or on a
    plateau of its validation distance is final."""
    v, out = config["vae"], config["output"]
    folder = Path(out["checkpoint_folder"])
    path = folder / VAE_FILE
    dataset_dir = config["data"]["dataset_dir"]
    if v["checkpoint"] and not path.exists():
        if not Path(v["checkpoint"]).is_file():
            raise CheckpointError(f"vae.checkpoint is {v['checkpoint']}, which does not exist; point it at a vae.pt "
                                  f"that piano_main.py wrote, or set it to null to train a VAE")
        read_vae_checkpoint(v["checkpoint"], config)  # refuses a VAE that does not fit, naming the key
        if is_main():
            copy_atomically(v["checkpoint"], path)
        log(f"stage one: reusing the VAE at {v['checkpoint']} (copied to {path})")
    barrier()
    state = read_vae_checkpoint(path, config) if path.exists() else None
    total_steps = vae_schedule(v, vae_steps_per_epoch(config, info))[1]
    more_steps = (state is not None and not gan_started and state.get("stop_reason") == "done"
                  and state.get("step", 0) < total_steps)  # vae.steps was raised before the GAN stage began
    trained = state is None or not state.get("complete") or more_steps
    if trained:
        status = train_vae(config, device, info, autocast, state, deadline, log)
        if status == "interrupted":
            return None, status
        barrier()  # rank 0 has written vae.pt
        state = read_vae_checkpoint(path, config)
    vae = vae_from_checkpoint(state, path, device)
    vae.requires_grad_(False)
    recon_folder = Path(out["music_out_folder"]) / RECONSTRUCTIONS_DIR
    if is_main() and out["samples_per_save"] and (trained or not any(recon_folder.glob("*.wav"))):
        split = "validation" if info["pairs"]["validation"] else "training"
        chunks = AudioDataset.from_dataset_dir(dataset_dir, split, info["chunk_samples"], random_crop=False,
                                               normalization="peak")
        paths = write_reconstructions(vae, chunks, recon_folder, out["samples_per_save"], info["peak"],
                                      info["sample_rate"], device)
        board = TensorBoard(folder, "vae", out["tensorboard"])
        board.audio(paths, state.get("step", 0), prefix="reconstructions")
        board.close()
        log(f"stage one: {split} pairs and their reconstructions by the VAE in {recon_folder}")
    fingerprint = vae_fingerprint(vae)
    if is_main():  # rank 0 builds the cache; the others wait, then read it
        write_report_safely(folder, log)
        problem = latent_cache_problem(folder, fingerprint, dataset_dir)
        if problem:
            log(f"latent cache: {problem}; building it")
            build_latent_cache(vae, folder, dataset_dir, device, batch_size=config["data"]["batch_size"], log=log)
        else:
            log(f"latent cache: up to date (VAE {fingerprint})")
    barrier()
    return vae, "done"


def train_vae(config, device, info, autocast, state, deadline, log):
    """Train the VAE into checkpoint_folder/vae.pt, from scratch or from an unfinished `state`. Returns the status."""
    v = config["vae"]
    folder = Path(config["output"]["checkpoint_folder"])
    dataset_dir = config["data"]["dataset_dir"]
    segment = vae_segment(config)
    train_data = AudioDataset.from_dataset_dir(dataset_dir, "training", segment, normalization="peak")
    val_data = (AudioDataset.from_dataset_dir(dataset_dir, "validation", segment, normalization="peak")
                if info["pairs"]["validation"] else None)
    channels = config["model"]["sound_channels"]
    vae = vae_from_config(v, channels).to(device)
    if config["training"]["compile"]:
        vae.compile()
    optim = torch.optim.Adam(vae.parameters(), v["learning_rate"], betas=(0.9, 0.999))
    discriminator = optim_d = None
    if v["adversarial_epochs"]:
        discriminator = MultiResolutionSTFTDiscriminator(channels, width=config["discriminator"]["width"]).to(device)
        optim_d = torch.optim.Adam(discriminator.parameters(), v["learning_rate"], betas=(0.5, 0.9))
    scaler = torch.amp.GradScaler(device.type) if config["training"]["precision"] == "fp16" else None
    start_epoch, step, history = 1, 0, []
    if state is not None:
        vae.load_state_dict(state["model_state_dict"])
        optim.load_state_dict(state["optimizer_state_dict"])
        if scaler is not None and state.get("scaler_state_dict"):
            scaler.load_state_dict(state["scaler_state_dict"])
        if discriminator is not None and state.get("discriminator_state_dict"):
            discriminator.load_state_dict(state["discriminator_state_dict"])
            optim_d.load_state_dict(state["discriminator_optimizer_state_dict"])
        restore_own_rng_states(state)
        start_epoch, step, history = state["epoch"] + 1, state["step"], state["metrics"]
        log(f"stage one: resuming the VAE after epoch {state['epoch']}")
    board = TensorBoard(folder, "vae", config["output"]["tensorboard"] and is_main(),
                        resume_step=step + 1 if state else None)
    log(f"stage one: a VAE of {sum(p.numel() for p in vae.parameters()) / 1e6:.2f} M parameters, "
        f"{info['sample_rate'] / vae.frame_samples:.1f} latent frames per second x {v['latent_dim']}; "
        f"{len(train_data)} training chunks, crops of {segment} samples")

    def save(epoch, history, step, partial=False, complete=False, stop_reason=None):
        extra = every_rank_rng_states(gather=not partial)  # every rank takes part; rank 0 writes
        if not is_main():
            return
        if discriminator is not None:
            extra.update(discriminator_state_dict=discriminator.state_dict(),
                         discriminator_optimizer_state_dict=optim_d.state_dict())
        save_checkpoint(folder / VAE_FILE, vae, optim, epoch, config, scaler=scaler, metrics=history, partial=partial,
                        kind="vae", step=step, complete=complete, stop_reason=stop_reason, data_peak=float(info["peak"]),
                        sample_rate=int(info["sample_rate"]), fingerprint=vae_fingerprint(vae), **extra)
        if history:
            write_metrics(history, folder, name="vae_metrics", panels=VAE_PANELS, plot_name="vae_losses.png")
        write_report_safely(folder, log)

    vae_deadline = stage_one_deadline(config, deadline, time.monotonic())
    try:
        history, step, status = pretrain_vae(vae, optim, train_data, val_data, config, device, autocast=autocast,
                                             scaler=scaler, start_epoch=start_epoch, step=step, history=history,
                                             discriminator=discriminator, optim_d=optim_d, save=save,
                                             deadline=vae_deadline, log=log, board=board)
    finally:
        board.close()
    if status != "interrupted":
        save(history[-1]["epoch"] if history else 0, history, step, complete=True, stop_reason=status)
    return status


def stage_one_deadline(config, deadline, now):
    """When stage one must stop: vae.time_budget_minutes from now, or vae.budget_share of the run's budget (which
    ends at `deadline`, training.time_budget_minutes from the run's start), never after the run's deadline."""
    v, t = config["vae"], config["training"]
    if v["time_budget_minutes"]:
        own = now + 60 * v["time_budget_minutes"]
    elif deadline is not None:
        own = deadline - 60 * t["time_budget_minutes"] * (1 - v["budget_share"])
    else:
        return None
    return own if deadline is None else min(own, deadline)


def vae_steps_per_epoch(config, info):
    """Stage one's steps per epoch, as pretrain_vae takes them: data.steps_per_epoch, or with 0 one pass over the
    training set (each rank's share of the chunks, in whole batches)."""
    chunks = 2 * info["pairs"]["training"]
    return config["data"]["steps_per_epoch"] or max(1, chunks // (world_size() * config["data"]["batch_size"]))


def plan_lines(config, info, folder):
    """What the run will do, printed at its start: each stage's steps and its share of the time budget."""
    v, t, data = config["vae"], config["training"], config["data"]
    budget = t["time_budget_minutes"]
    lines = []
    if v["enabled"] and v["checkpoint"]:
        lines.append(f"plan: stage one (VAE): reuses {v['checkpoint']}, no training")
    elif v["enabled"] and (Path(folder) / VAE_FILE).exists():
        lines.append(f"plan: stage one (VAE): {Path(folder) / VAE_FILE} is there: reused if complete, else trained on")
    if v["enabled"] and not v["checkpoint"]:
        steps = vae_schedule(v, vae_steps_per_epoch(config, info))[0]
        sized = f"vae.epochs {v['epochs']}: {steps} steps" if v["epochs"] is not None else f"{steps} steps (vae.steps)"
        limit = (f"; or {v['time_budget_minutes']:g} minutes (vae.time_budget_minutes)" if v["time_budget_minutes"] else
                 f"; or {v['budget_share'] * budget:g} of the {budget:g} minutes (vae.budget_share {v['budget_share']:g})"
                 if budget else "")
        stop = (f", or sooner once its validation distance stops improving (vae.patience {v['patience']})"
                if v["patience"] and not v["adversarial_epochs"] else "")
        adversarial = (f", then {v['adversarial_epochs']} epochs of adversarial fine-tuning" if v["adversarial_epochs"]
                       else "")
        lines.append(f"plan: stage one (VAE): {sized}{limit}{stop}{adversarial}")
    sized = (f"training.epochs {t['epochs']}" if t["epochs"] is not None else f"{t['steps']} updates (training.steps)")
    rest = f"; or what is left of the {budget:g} minutes" if budget else ""
    epoch = f"{data['steps_per_epoch']} steps" if data["steps_per_epoch"] else "one pass over the data"
    lines.append(f"plan: stage two (GAN): {sized}{rest}. Each stage prints its speed and an estimate after its "
                 f"first epoch ({epoch}).")
    return lines


def latent_data(config, vae, folder, info):
    """The latent GAN's data: (training windows, validation windows or None, validation audio or None, the
    training cache's per-channel mean and std), all read from the latent cache stage one built."""
    dataset_dir = config["data"]["dataset_dir"]
    cache = load_latent_cache(folder, vae_fingerprint(vae), dataset_dir)
    mean, std = latent_statistics(cache["training"])
    frames = judged_frames(config["model"])
    train = LatentWindows(cache["training"], frames, mean, std, name="the training set's latent cache")
    val = val_audio = None
    if len(cache["validation"]) >= 2:
        val = LatentWindows(cache["validation"], frames, mean, std, name="the validation set's latent cache")
        val_audio = AudioDataset.from_dataset_dir(dataset_dir, "validation", info["chunk_samples"], normalization="peak")
    return train, val, val_audio, mean, std


def quiet(*args, **kwargs):
    """The log of ranks other than 0: only rank 0 prints."""


def run(config, device, log=print):
    started = time.monotonic()
    t, out = config["training"], config["output"]
    deadline = started + 60 * t["time_budget_minutes"] if t["time_budget_minutes"] else None
    dataset_dir = config["data"]["dataset_dir"]
    latent = config["model"]["architecture"] == "latent"
    info = load_dataset_info(dataset_dir)
    check_dataset_matches(info, config, dataset_dir)
    resume_epoch = resolve_resume(config)
    barrier()  # every rank has looked at the folder before rank 0 writes to it
    if resume_epoch is not None and latent and config["discriminator"]["motion"]:
        saved = load_checkpoint(checkpoint_path(out["checkpoint_folder"], "discriminator", resume_epoch), mmap=True)
        if "motion" not in (saved["config"].get("discriminator") or {}):
            log("resuming a run trained before discriminator.motion existed: it goes on without the motion critic")
            config = {**config, "discriminator": {**config["discriminator"], "motion": False}}

    previous = folder_config_precision(config) if resume_epoch is not None or resuming_vae(config) else None
    precision = from_main(resolve_precision(config, device, previous, log))  # one decision for every rank
    config = {**config, "training": {**t, "precision": precision}}  # the folder's config.yaml records the choice
    t = config["training"]
    precision, autocast, scaler_g, scaler_d = precision_setup(config, device)
    configure_cuda(device)
    if device.type == "cpu":
        configure_cpu_memory(precision)
    torch.manual_seed(t["seed"])
    np.random.seed(t["seed"])
    random.seed(t["seed"])
    generator = build_generator(config).to(device)
    discriminator = build_discriminator(config).to(device)
    g_params = [p for p in generator.parameters() if p.requires_grad]
    optim_g = torch.optim.Adam(g_params, t["learning_rate"], betas=tuple(t["betas"]))
    optim_d = torch.optim.Adam(discriminator.parameters(), t["learning_rate_disc"], betas=tuple(t["betas"]))
    folder = Path(out["checkpoint_folder"])
    if is_main():
        folder.mkdir(parents=True, exist_ok=True)
        write_config({**config, "output": {**out, "resume_from_checkpoint": False}}, folder / "config.yaml")

    for line in plan_lines(config, info, folder):
        log(line)
    # Stage one comes before the GAN's random state is restored: building or loading the VAE draws from it.
    if config["vae"]["enabled"]:
        vae, status = stage_one(config, device, info, autocast, deadline, gan_started=resume_epoch is not None, log=log)
        if status == "interrupted":
            return status
        # The GAN's random stream starts afresh (a resume restores it below): the same whether stage one trained
        # the VAE here, resumed it, or reused one.
        torch.manual_seed(t["seed"] + 1)
    if latent:
        train_data, val_data, val_audio, mean, std = latent_data(config, vae, folder, info)
        generator.set_vae(vae, mean, std)
        stft = None
    else:
        train_data = AudioDataset.from_dataset_dir(dataset_dir, "training", config["model"]["seq_len"])
        val_data = val_audio = (AudioDataset.from_dataset_dir(dataset_dir, "validation", config["model"]["seq_len"])
                                if info["pairs"]["validation"] else None)
        stft = MultiResolutionSTFTLoss().to(device) if config["loss_weights"]["stft"] else None
    ema = copy.deepcopy(generator).requires_grad_(False) if latent else None
    if t["compile"]:
        compile_models(generator, discriminator, t["r1_weight"] if latent else 0.0, log)
    processes = f" x {world_size()} processes (global batch x {world_size()})" if world_size() > 1 else ""
    log(f"MusiGAN ({config['model']['architecture']} GAN) on {device}{processes} ({precision}): generator "
        f"{sum(p.numel() for p in g_params) / 1e6:.2f} M trained parameters, discriminator "
        f"{sum(p.numel() for p in discriminator.parameters()) / 1e6:.2f} M; {len(train_data)} training "
        + ("pairs of latent chunks" if latent else "chunks"))

    history, start_epoch, gan_state = [], 1, {}
    if resume_epoch is not None:
        g_path, d_path = checkpoint_path(folder, "generator", resume_epoch), checkpoint_path(folder, "discriminator", resume_epoch)
        g_state, d_state = load_checkpoint(g_path), load_checkpoint(d_path)
        load_model_state(generator, g_state, g_path)
        optim_g.load_state_dict(g_state["optimizer_state_dict"])
        if ema is not None:
            ema.load_state_dict(g_state["ema_state_dict"])
        if out["update_discriminator"]:
            report = update_checkpoint(discriminator, d_state["model_state_dict"], optim_d, d_state["optimizer_state_dict"])
            log(f"update_discriminator: {report.summary()}")
        else:
            load_model_state(discriminator, d_state, d_path)
            optim_d.load_state_dict(d_state["optimizer_state_dict"])
        for scaler, state in ((scaler_g, g_state), (scaler_d, d_state)):
            if scaler is not None and state.get("scaler_state_dict"):
                scaler.load_state_dict(state["scaler_state_dict"])
        restore_own_rng_states(g_state)
        history = g_state["metrics"]
        gan_state = dict(step=g_state.get("step", 0), r1_weight=g_state.get("r1_weight"),
                         augment_p=g_state.get("augment_p"))
        start_epoch = resume_epoch + 1
        log(f"resumed from epoch {resume_epoch}" + (" (saved partway through that epoch)" if g_state["partial"] else ""))

    gan = GANRun(generator, discriminator, optim_g, optim_d, train_data, val_data, config, device, ema=ema,
                 val_audio=val_audio, scaler_g=scaler_g, scaler_d=scaler_d, autocast=autocast, stft=stft,
                 sample_rate=info["sample_rate"], log=log, **gan_state)
    if t["epochs"] is None:  # sized in updates (training.steps), whole epochs of gan.iterations() updates each,
        # counted on from a resumed run's epoch and step (its epochs may have been of another size)
        t["epochs"] = start_epoch - 1 + math.ceil(max(t["steps"] - gan.step, 0) / gan.iterations())
    log(f"stage two (GAN): {t['epochs']} epochs of {gan.iterations()} updates")
    if resume_epoch is None:
        if latent:
            try:
                pretrain_latent_discriminator(gan, log=log)
            except KeyboardInterrupt:
                log(f"\nInterrupted while pretraining the discriminator; the VAE and its latent cache in {folder} are "
                    f"kept. To continue: --set output.resume_from_checkpoint=latest")
                return "interrupted"
        else:  # the seed's pretraining: (unpaired) reconstruction, then the discriminator
            pretrain_generator(generator, optim_g, train_data, config, device, autocast, scaler_g, log=log)
            pretrain_discriminator(discriminator, generator, optim_d, train_data, config, device, autocast, scaler_d,
                                   log=log)
    # What a killed run logged after its checkpoint's step is dropped; that step's own events are kept.
    gan.board = TensorBoard(folder, "gan", out["tensorboard"] and is_main(),
                            resume_step=gan_state["step"] + 1 if resume_epoch is not None else None)
    try:
        history, status = train_vae_gan(gan, start_epoch=start_epoch, history=history, deadline=deadline)
    finally:  # a run stopped by NaNs is the one most worth looking at
        gan.board.close()
        if is_main():
            report_line(folder, log=log, rewrite=True)
    if status == "done":
        log(f"done: checkpoints, metrics.csv and losses.png in {folder}; audio samples in {out['music_out_folder']}")
    return status


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="config.yaml", help="YAML config (default: config.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="[SECTION.]KEY=VALUE",
                        help="override one config key, for example --set training.steps=500 (repeatable). A bare key "
                             "(--set r1_weight=2) works when one section has it; an ambiguous one lists the sections")
    parser.add_argument("--device", default=None,
                        help="cuda, cuda:1 or cpu (default: cuda when available, else cpu)")
    parser.add_argument("--demo", action="store_true",
                        help="render the bundled public-domain melodies and run the whole pipeline on them: "
                             "dataset, a small training preset, the discriminator sweep and generation")
    parser.add_argument("--demo-dir", default="runs/demo", help="where the demo puts everything (default: runs/demo)")
    args = parser.parse_args(argv)
    if args.demo:
        import demo

        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            print("error: --demo runs as one process; start it with python, not torchrun", file=sys.stderr)
            return 2

        try:
            return demo.run_demo(args.demo_dir, main, args.set)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    try:
        config = load_config_from_yaml(args.config, args.set)
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for, but PyTorch sees no CUDA GPU")
        device = setup_distributed(device)  # under torchrun: join the process group; this rank's GPU
        try:
            status = run(config, device, log=print if is_main() else quiet)
            # Every rank finishes (rank 0 writes the last report) before any tears its connections down: a rank
            # that leaves early can die in gloo's teardown ("terminate called without an active exception").
            # Not after an error or Ctrl-C, when another rank may still be inside a collective.
            if status != "interrupted":
                barrier()
        finally:
            if torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
    except (ValueError, DatasetError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingStopped as e:
        print(f"stopped: {e}", file=sys.stderr)
        return 3
    return 130 if status == "interrupted" else 0


if __name__ == "__main__":
    sys.exit(main())
