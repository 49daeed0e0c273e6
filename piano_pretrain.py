"""Pretraining before the adversarial loop: the VAE of the music (stage one), or the seed's generator and
discriminator.

    from piano_pretrain import pretrain_vae, pretrain_generator, pretrain_discriminator
    history, step, status = pretrain_vae(vae, optim, train_data, val_data, config, device, save=save)
    pretrain_generator(generator, optim_g, train_data, config, device)          # the seed's preset
    pretrain_discriminator(discriminator, generator, optim_d, train_data, config, device)

pretrain_vae trains VariationalEncoderDecoder to rebuild real chunks: a paired multi-resolution STFT
distance between each chunk and its own reconstruction, plus KL with a linear warm-up (RAVE's phase 1).
With vae.adversarial_epochs it then freezes the encoder and fine-tunes the decoder against a
multi-resolution spectrogram discriminator, hinge loss plus feature matching, the STFT distance kept
(RAVE's phase 2).

The seed's generator instead learns to reconstruct real chunks from unrelated noise (unpaired: it is
kept only for configs/seed.yaml), and its discriminator then learns against that generator.
"""

import math
import time
from contextlib import nullcontext

import torch
from tqdm import tqdm

from loss_functions import (MultiResolutionSTFTLoss, discriminator_adversarial_loss, discriminator_loss,
                            feature_matching_loss, generator_adversarial_loss, kl_divergence_loss, reconstruction_loss)
from piano_train import TensorBoard, TrainingStopped, apply_update, estimate_line, make_loader
from utilities import any_rank, is_main, mean_over_ranks, shared_randn

clock = time.monotonic  # the VAE's time budget and learning-rate schedule read this (a test replaces it)

# The VAE's distance: five resolutions from 11 ms to 170 ms at 12 kHz, hop a quarter of the window.
VAE_STFT_SIZES = dict(fft_sizes=(2048, 1024, 512, 256, 128), hop_sizes=(512, 256, 128, 64, 32),
                      win_lengths=(2048, 1024, 512, 256, 128))


def _epochs(name, epochs, train_data, config, device, step, log):
    """Run `step(target) -> float loss` over `epochs` of train_data with a progress bar; return epoch means."""
    means = []
    for epoch in range(1, epochs + 1):
        loader = make_loader(train_data, config["data"]["batch_size"], config["data"]["num_workers"],
                             seed=config["training"]["seed"] * 100_003 - epoch, shuffle=True, device=device)
        limit = config["data"]["steps_per_epoch"] or len(loader)
        total, count = 0.0, 0
        with tqdm(total=min(limit, len(loader)), desc=f"pretrain {name} {epoch}/{epochs}", leave=False,
                  dynamic_ncols=True, disable=not is_main()) as bar:
            for i, (target, _, _) in enumerate(loader):
                if i >= limit:
                    break
                loss = mean_over_ranks({"loss": step(target.to(device, non_blocking=True))})["loss"]
                if math.isfinite(loss):
                    total, count = total + loss, count + 1
                bar.set_postfix(loss=f"{total / max(count, 1):.4f}", refresh=False)
                bar.update()
        means.append(total / max(count, 1))
        log(f"pretrain {name} epoch {epoch}: loss {means[-1]:.4f}")
    return means


def pretrain_generator(generator, optim_g, train_data, config, device, autocast=None, scaler=None, log=print):
    """Reconstruction (and KL) only, with the generator's own optimizer."""
    weights = config["loss_weights"]
    recon_weight = weights["recon"] or 1.0  # pretraining is reconstruction, even when the GAN phase skips it
    autocast = autocast or nullcontext
    params = [p for p in generator.parameters() if p.requires_grad]

    def step(target):
        noise = generator.sample_noise(target.shape[0], device=device)
        with autocast():
            mu, logvar, fake = generator(noise)
            loss = recon_weight * reconstruction_loss(fake, target)
            if weights["kl"]:
                loss = loss + weights["kl"] * kl_divergence_loss(mu, logvar)
        optim_g.zero_grad(set_to_none=True)
        (scaler.scale(loss) if scaler else loss).backward()
        apply_update(optim_g, params, scaler, config["training"]["grad_clip"], bool(torch.isfinite(loss)))
        return float(loss.detach())

    return _epochs("generator", config["training"]["pretrain_generator_epochs"], train_data, config, device, step, log)


def pretrain_discriminator(discriminator, generator, optim_d, train_data, config, device, autocast=None, scaler=None,
                           log=print):
    """The discriminator's adversarial loss and statistic terms against the (fixed) generator's fakes."""
    t = config["training"]
    autocast = autocast or nullcontext
    params = list(discriminator.parameters())

    def step(target):
        noise = generator.sample_noise(target.shape[0], device=device)
        with torch.no_grad(), autocast():
            fake = generator(noise)[2]
        with autocast():
            loss, _ = discriminator_loss(target, fake, discriminator(target), discriminator(fake), config["loss_weights"],
                                         keys=t["keys"], kind=t["adversarial_loss"], smoothing=t["smoothing"])
        optim_d.zero_grad(set_to_none=True)
        (scaler.scale(loss) if scaler else loss).backward()
        apply_update(optim_d, params, scaler, t["grad_clip"], bool(torch.isfinite(loss)))
        return float(loss.detach())

    return _epochs("discriminator", t["pretrain_discriminator_epochs"], train_data, config, device, step, log)


# ---------------------------------------------------------------------------------------------
# Stage one: the VAE


def vae_schedule(v, steps_per_epoch):
    """(reconstruction steps, all steps) of stage one, from config["vae"]: vae.steps (or vae.epochs of
    steps_per_epoch, from an older config), then vae.adversarial_epochs of steps_per_epoch."""
    recon_steps = v["steps"] if v["epochs"] is None else v["epochs"] * steps_per_epoch
    return recon_steps, recon_steps + v["adversarial_epochs"] * steps_per_epoch


def kl_weight_at(step, weight, warmup_steps):
    """The KL weight after `step` updates: rising linearly from 0 to `weight` over warmup_steps."""
    return weight * min(1.0, step / warmup_steps) if warmup_steps else weight


def learning_rate_factor(progress, final):
    """Cosine decay of the learning rate: 1 at progress 0, `final` at progress 1 (and after)."""
    progress = min(max(progress, 0.0), 1.0)
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))


def plateaued(history, patience, min_improvement, key="val/stft"):
    """True when the best `key` of the last `patience` reconstruction epochs is not min_improvement (relative) below
    the best before them: stage one has stopped improving. Reads the history, so a resumed run judges alike."""
    values = [row.get(key, row.get("vae/stft")) for row in history if row.get("phase", "vae") == "vae"]
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not patience or len(values) <= patience:
        return False
    return min(values[-patience:]) > min(values[:-patience]) * (1 - min_improvement)


def endless_batches(loader, epoch):
    """The loader's batches for one epoch of any length: pass after pass, each reshuffled (its own sampler epoch,
    so a resumed run draws the same). An epoch is a number of steps, not a pass: the collection's size does not
    change how far a stage trains."""
    if len(loader) == 0:
        raise TrainingStopped(f"stage one has no whole batch to train on: each process holds "
                              f"{len(loader.sampler)} training chunks, fewer than data.batch_size "
                              f"({loader.batch_size}). Lower data.batch_size, use fewer processes, or add music.")
    for rerun in range(1_000_000):
        loader.sampler.set_epoch(epoch + 1_000_003 * rerun)  # the first pass is the epoch's own shuffle
        yield from loader


def vae_segment(config):
    """Samples per training crop: model.seq_len, rounded down to whole latent frames."""
    from vae_utilities import usable_samples

    return usable_samples(config["model"]["seq_len"], config["vae"]["hop_length"] * config["vae"]["downsample"])


@torch.no_grad()
def random_equalizer(x, sample_rate, spread_db, anchors=8, low_hz=40.0):
    """x (B, C, T) through a random smooth equalizer, one per chunk, both channels alike: gains drawn from
    N(0, spread_db^2) dB at `anchors` log-spaced frequencies from low_hz to Nyquist, joined linearly in
    log-frequency (flat below low_hz), and shifted to a mean of 0 dB so the loudness stays about the same.

    The VAE's training augmentation (vae.augment_eq_db): with two or three songs, a VAE learns their spectral
    balance and gives it to every song it rebuilds. Seeing each chunk under another balance, as input and target
    alike, makes it carry the balance in the latents. spread_db 0 returns x unchanged.
    """
    if not spread_db:
        return x
    samples = x.shape[-1]
    gains = shared_randn((x.shape[0], anchors), device=x.device) * spread_db  # this rank's rows of the global batch
    gains = gains - gains.mean(1, keepdim=True)
    freqs = torch.fft.rfftfreq(samples, 1 / sample_rate, device=x.device)
    position = (torch.log2(freqs.clamp(min=low_hz) / low_hz) / math.log2(sample_rate / 2 / low_hz)) * (anchors - 1)
    below = position.floor().long().clamp(max=anchors - 2)
    share = position - below
    curve_db = gains[:, below] * (1 - share) + gains[:, below + 1] * share  # (B, bins)
    spectrum = torch.fft.rfft(x.float(), dim=-1) * torch.pow(10.0, curve_db / 20)[:, None, :]
    return torch.fft.irfft(spectrum, n=samples, dim=-1).to(x.dtype)


@torch.no_grad()
def validate_vae(vae, val_data, stft, device, autocast, max_chunks=64, batch_size=8):
    """The STFT distance of the validation chunks' reconstructions from their means (no sampling), and their KL."""
    if val_data is None or len(val_data) == 0:
        return {}
    vae.eval()
    distances, kls = [], []
    for start in range(0, min(len(val_data), max_chunks), batch_size):
        target = torch.stack([val_data[i][0] for i in range(start, min(start + batch_size, len(val_data), max_chunks))])
        target = target.to(device)
        with autocast():
            mu, logvar = vae.encoder(target)
            recon = vae.decoder(mu)
        distances.append(float(stft(recon, target)))
        kls.append(float(kl_divergence_loss(mu, logvar)))
    vae.train()
    return {"val/stft": sum(distances) / len(distances), "val/kl": sum(kls) / len(kls)}


def pretrain_vae(vae, optim, train_data, val_data, config, device, *, autocast=None, scaler=None, start_epoch=1,
                 step=0, history=None, discriminator=None, optim_d=None, save=None, deadline=None, log=print,
                 board=None):
    """Stage one: vae.epochs of reconstruction, then vae.adversarial_epochs of decoder fine-tuning.

    Stage one is sized in steps: vae.steps of reconstruction (or vae.epochs of data.steps_per_epoch from an older
    config), then vae.adversarial_epochs. Epochs are numbered through both phases, so start_epoch resumes either.
    train_data and val_data are AudioDatasets with normalization="peak". save(epoch, history, step, partial)
    is called after every epoch and on Ctrl-C. board (a piano_train.TensorBoard) gets every step's terms and
    every epoch's means. Returns (history, step, status): "done", "interrupted", "out of time" or "plateau"
    (the validation distance stopped improving: vae.patience).
    """
    v, t = config["vae"], config["training"]
    autocast = autocast or nullcontext
    board = board or TensorBoard(None, "vae", enabled=False)
    history = list(history or [])
    stft = MultiResolutionSTFTLoss(**VAE_STFT_SIZES).to(device)
    sample_rate = config["data"]["sample_rate"]
    batch_size, workers = config["data"]["batch_size"], config["data"]["num_workers"]
    seconds_per_batch = batch_size * train_data.seq_len / sample_rate
    vae_params = [p for p in vae.parameters() if p.requires_grad]
    decoder_params = list(vae.decoder.parameters())
    nonfinite_in_a_row = 0

    def update(optimizer, loss, params):
        """One optimizer step on loss; False when it was skipped for a NaN or Inf."""
        optimizer.zero_grad(set_to_none=True)
        (scaler.scale(loss) if scaler else loss).backward()
        return apply_update(optimizer, params, scaler, v["grad_clip"], bool(torch.isfinite(loss)))

    def reconstruction_step(target):
        beta = kl_weight_at(step, v["kl_weight"], v["kl_warmup_steps"])
        with autocast():
            mu, logvar, recon = vae(target)
        distance, kl = stft(recon, target), kl_divergence_loss(mu, logvar)
        ok = update(optim, distance + beta * kl, vae_params)
        return ok, {"vae/stft": distance, "vae/kl": kl, "vae/kl_weight": torch.tensor(beta)}

    def adversarial_step(target):  # HiFi-GAN's order: the fake, D on it detached, then the decoder
        with torch.no_grad(), autocast():
            z = vae.reparameterize(*vae.encoder(target))
        with autocast():
            recon = vae.decoder(z)
            real_logits, real_features = discriminator(target)
            fake_logits, _ = discriminator(recon.detach())
            d_loss = discriminator_adversarial_loss(real_logits, fake_logits, kind="hinge")
        ok_d = update(optim_d, d_loss, list(discriminator.parameters()))
        with autocast():
            fake_logits, fake_features = discriminator(recon)
            adversarial = generator_adversarial_loss(fake_logits, kind="hinge")
            matching = feature_matching_loss(real_features, fake_features)
        distance = stft(recon, target)
        ok_g = update(optim, distance + v["adversarial_weight"] * adversarial + v["feature_matching_weight"] * matching,
                      decoder_params)
        return ok_d and ok_g, {"vae/stft": distance, "adv/d": d_loss, "adv/g": adversarial, "adv/feature_matching": matching}

    # One loader for the whole stage: its workers persist (with prefetch), and set_epoch reshuffles each pass.
    loader = make_loader(train_data, batch_size, workers, seed=t["seed"] * 100_003 + 50_000, shuffle=True,
                         device=device, persistent=True)
    steps_per_epoch = config["data"]["steps_per_epoch"] or len(loader)
    # Sized in steps (vae.steps) or, from an older config, in epochs (vae.epochs): the reconstruction phase ends
    # at recon_steps exactly, then vae.adversarial_epochs of fine-tuning follow.
    recon_steps, total_steps = vae_schedule(v, steps_per_epoch)
    adversarial_done = sum(row.get("phase") == "adversarial" for row in history)

    def phase_after(step, adversarial_done):
        """The phase the next epoch trains, or None when stage one is complete. The reconstruction phase runs to
        its step count exactly, however its epochs were cut (a Ctrl-C, another data.steps_per_epoch)."""
        if step < recon_steps:
            return "vae"
        return "adversarial" if adversarial_done < v["adversarial_epochs"] else None
    total = (start_epoch - 1 + math.ceil(max(recon_steps - step, 0) / steps_per_epoch)
             + v["adversarial_epochs"] - adversarial_done)  # for the progress bar
    run_started, run_first_step = clock(), step
    # The decay follows the epochs or the time budget, whichever is further along. A resumed run's budget starts
    # afresh, so its time share goes on from where the schedule stood (the last epoch's row) to 1 over it.
    started, resumed_at = clock(), (history[-1].get("vae/schedule", 0.0) if history else 0.0)
    progress = resumed_at if deadline is not None else 0.0  # without a budget the steps alone set the schedule

    def time_share():
        return resumed_at + (1 - resumed_at) * (clock() - started) / max(deadline - started, 1e-9)
    finish = None  # (from step, from progress, to step) once a plateau is found: the rate decays, then it stops
    epoch = start_epoch - 1
    while (phase := phase_after(step, adversarial_done)) is not None:
        epoch += 1
        epoch_steps = min(steps_per_epoch, recon_steps - step) if phase == "vae" else steps_per_epoch
        if phase == "adversarial":
            vae.encoder.requires_grad_(False)  # RAVE's phase 2: the latent space stays as it is
        epoch_started = time.perf_counter()
        sums, count = {}, 0
        bar = tqdm(total=epoch_steps, desc=f"{'VAE' if phase == 'vae' else 'VAE decoder, adversarial'} epoch {epoch}/{total}",
                   unit="batch", leave=False, dynamic_ncols=True, disable=not is_main())
        try:
            for _, (target, _, _) in zip(range(epoch_steps), endless_batches(loader, epoch)):
                progress = max(progress, step / max(total_steps, 1))
                if finish is not None:  # a plateau: the rest of the cosine over the last vae.patience epochs
                    progress = max(progress, finish[1] + (1 - finish[1]) * (step + 1 - finish[0]) / (finish[2] - finish[0]))
                factor = learning_rate_factor(progress, v["lr_decay"])
                for group in optim.param_groups:
                    group["lr"] = v["learning_rate"] * factor
                target = random_equalizer(target.to(device), sample_rate, v["augment_eq_db"])  # both phases
                ok, terms = (reconstruction_step if phase == "vae" else adversarial_step)(target)
                step += 1
                nonfinite_in_a_row = 0 if ok else nonfinite_in_a_row + 1
                if nonfinite_in_a_row >= t["max_nonfinite_in_a_row"]:
                    raise TrainingStopped(f"{nonfinite_in_a_row} VAE updates in a row had a NaN or Inf loss or gradient "
                                          f"(epoch {epoch}); stopping. Try a lower vae.learning_rate or "
                                          f"vae.grad_clip.")
                values = dict(zip(terms, torch.stack([term.detach().float() for term in terms.values()]).tolist()))
                if deadline is not None:  # the same on every rank: the config decides
                    values["schedule"] = time_share()
                values = mean_over_ranks(values)  # the global batch's figures, and one time share for all ranks
                progress = max(progress, min(1.0, values.pop("schedule", 0.0)))  # for the next step
                board.scalars("step", values, step)
                for key, value in values.items():
                    if math.isfinite(value):
                        sums[key] = sums.get(key, 0.0) + value
                sums["skipped"] = sums.get("skipped", 0) + (not ok)
                count += 1
                bar.set_postfix(stft=f"{sums.get('vae/stft', 0) / count:.3f}", kl=f"{sums.get('vae/kl', 0) / count:.3f}",
                                refresh=False)
                bar.update()
        except KeyboardInterrupt:
            bar.close()
            if save:
                save(epoch, history, step, partial=True)
            log(f"\nInterrupted during VAE epoch {epoch}; saved it (partial). To continue: "
                f"--set output.resume_from_checkpoint=latest")
            return history, step, "interrupted"
        bar.close()
        seconds = time.perf_counter() - epoch_started
        row = {"epoch": epoch, "phase": phase, "step": step, "vae/learning_rate": optim.param_groups[0]["lr"],
               "vae/schedule": round(progress, 6)}
        row.update({key: value / max(count, 1) for key, value in sorted(sums.items()) if key != "skipped"})
        row["skipped_updates"] = int(sums.get("skipped", 0))
        row.update(validate_vae(vae, val_data, stft, device, autocast) if is_main() else {})
        row["seconds"] = round(seconds, 2)
        row["audio_seconds_per_second"] = round(count * seconds_per_batch / seconds, 1)
        history.append(row)
        adversarial_done += phase == "adversarial"
        more = phase_after(step, adversarial_done) is not None
        board.epoch(row, step)
        if save:
            save(epoch, history, step, partial=False)
        log(f"VAE epoch {epoch} ({phase}): STFT distance {row.get('vae/stft', float('nan')):.4f} "
            + (f"(validation {row['val/stft']:.4f})  " if "val/stft" in row else " ")
            + (f"KL {row['vae/kl']:.3f} x {row['vae/kl_weight']:.2g}  " if "vae/kl" in row else "")
            + (f"D {row['adv/d']:.3f} G {row['adv/g']:.3f}  " if "adv/d" in row else "")
            + f"{row['audio_seconds_per_second']:.0f} audio-s/s  {seconds:.1f}s")
        if epoch == start_epoch and more:
            log(estimate_line("stage one (VAE)", (clock() - run_started) / max(step - run_first_step, 1), step,
                              total_steps, deadline, clock()))
        if any_rank(deadline is not None and clock() >= deadline) and more:  # all ranks alike
            log(f"stage one's time budget used up after epoch {epoch} (step {step})")
            return history, step, "out of time"
        if finish is not None and step >= finish[2] and more:
            log(f"stage one stops after epoch {epoch} (step {step}), its learning rate decayed after the plateau")
            return history, step, "plateau"
        if (finish is None and phase == "vae" and not v["adversarial_epochs"] and more
                and any_rank(is_main() and plateaued(history, v["patience"], v["min_improvement"]))):
            finish = (step, progress, step + v["patience"] * steps_per_epoch)
            log(f"stage one's validation distance has not improved by {100 * v['min_improvement']:g} % in "
                f"{v['patience']} epochs (vae.patience): its learning rate now decays to vae.lr_decay over "
                f"{v['patience']} more epochs, then stage one stops")
    vae.encoder.requires_grad_(True)
    return history, step, "done"
