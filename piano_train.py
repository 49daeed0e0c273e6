"""The VAE-GAN training loop: train_step (one adversarial iteration) and train_vae_gan (the epochs around it).

    from piano_train import train_step, train_vae_gan
    logs = train_step(generator, discriminator, optim_g, optim_d, [target], weights=SEED_LOSS_WEIGHTS)

One adversarial iteration is `generator_updates` generator updates and one discriminator update, as
the seed counted it. The last generator update and the discriminator update come from the same
generator forward: the discriminator learns from its fakes, detached, while the generator learns
against the same discriminator (a simultaneous step). The seed ran an extra, undetached generator
forward for the discriminator, which cost a third of the iteration and also pushed the
discriminator's loss back into the generator.
"""

import csv
import math
import os
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from loss_functions import BCE_CONFUSION, discriminator_loss, generator_loss, reconstruction_loss
from utilities import checkpoint_path
from vae_utilities import save_checkpoint


class TrainingStopped(Exception):
    """Training cannot go on (repeated NaN/Inf); the message says why and where the last good checkpoint is."""


def apply_update(optimizer, params, scaler, grad_clip, loss_finite):
    """Unscale, clip and step; returns False, having dropped the gradients, when the update is skipped.

    An update is skipped when its loss was NaN or Inf, or (without a GradScaler) its gradient norm. A
    GradScaler skips overflowing float16 gradients itself and lowers its scale; that is not counted here.
    """
    if scaler is not None:
        scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip else float("inf"))
    ok = loss_finite and (scaler is not None or math.isfinite(float(norm)))
    if ok:
        (scaler.step(optimizer) if scaler is not None else optimizer.step())
    else:
        optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.update()
    return ok


def train_step(generator, discriminator, optim_g, optim_d, targets, *, weights, keys=33, kind="bce",
               smoothing=0.0, generator_updates=2, stft=None, autocast=None, grad_clip=0.0,
               scaler_g=None, scaler_d=None):
    """One adversarial iteration over `targets`: a batch (B, C, seq_len) of normalized real chunks, or a list of
    them whose gradients add up to each update (gradient accumulation).

    Returns a sorted dict of floats: "d/<term>" and "g/<term>" (the last generator update's), "d/total",
    "g/total", the mean real and fake logits, and "skipped/g", "skipped/d": updates dropped because a loss
    or a gradient was NaN or Inf (fp16's GradScaler overflows are its own business and not counted).
    """
    targets = [targets] if torch.is_tensor(targets) else list(targets)
    autocast = autocast or nullcontext
    scale = 1.0 / len(targets)
    need_features = bool(weights.get("feature_matching", 0))
    g_params = [p for p in generator.parameters() if p.requires_grad]
    logs, skipped = {}, {"g": 0, "d": 0}

    for update in range(generator_updates):
        train_d = update == generator_updates - 1
        optim_g.zero_grad(set_to_none=True)
        if train_d:
            optim_d.zero_grad(set_to_none=True)
        finite = {"g": torch.ones((), dtype=torch.bool, device=targets[0].device), "d": None}
        finite["d"] = finite["g"].clone()
        for target in targets:
            noise = torch.randn(target.shape[0], generator.sound_channels, generator.noise_dim, device=target.device)
            with autocast():
                mu, logvar, fake = generator(noise)  # fake (B, C, seq_len)
            if train_d:
                discriminator.requires_grad_(True)
                with autocast():
                    real_logits = discriminator(target)
                    fake_logits_d = discriminator(fake.detach())
                    d_total, d_terms = discriminator_loss(target, fake.detach(), real_logits, fake_logits_d, weights,
                                                          keys=keys, kind=kind, smoothing=smoothing)
                finite["d"] &= torch.isfinite(d_total)
                (scaler_d.scale(d_total * scale) if scaler_d else d_total * scale).backward()
            discriminator.requires_grad_(False)  # the generator's backward needs no weight gradients of D
            with autocast():
                fake_logits, fake_features = discriminator(fake, return_features=True)
                real_features = None
                if need_features:
                    with torch.no_grad():
                        real_features = discriminator.get_intermediate_features(target)
                g_total, g_terms = generator_loss(fake, target, mu, logvar, fake_logits, weights, keys=keys, kind=kind,
                                                  stft=stft, real_features=real_features, fake_features=fake_features)
            finite["g"] &= torch.isfinite(g_total)
            (scaler_g.scale(g_total * scale) if scaler_g else g_total * scale).backward()
        discriminator.requires_grad_(True)

        steps = [("g", optim_g, g_params, scaler_g)]
        if train_d:
            steps.append(("d", optim_d, list(discriminator.parameters()), scaler_d))
        for name, optimizer, params, scaler in steps:
            if not apply_update(optimizer, params, scaler, grad_clip, bool(finite[name])):  # one sync per update
                skipped[name] += 1

    logs.update({f"d/{name}": term.detach() for name, term in d_terms.items()})
    logs.update({f"g/{name}": term.detach() for name, term in g_terms.items()})
    logs.update({"d/total": d_total.detach(), "g/total": g_total.detach(),
                 "d/real_logit": real_logits.detach().float().mean(), "d/fake_logit": fake_logits_d.detach().float().mean()})
    names = sorted(logs)
    values = torch.stack([logs[name].float() for name in names]).tolist()  # one device sync, not one per term
    result = dict(zip(names, values))
    result.update({"skipped/g": skipped["g"], "skipped/d": skipped["d"]})
    return result


# ---------------------------------------------------------------------------------------------
# The health report: the seed's tables as code


def _trend(values):
    """'flat', 'gentle' or 'wild' for a series of epoch means, by their relative spread."""
    if len(values) < 3:
        return "too early"
    mean = statistics.mean(values)
    spread = statistics.pstdev(values) / max(abs(mean), 1e-8)
    if spread < 0.005:
        return "flat"
    return "gentle" if spread < 0.15 else "wild"


def health_report(history, kind="bce", window=5):
    """Verdicts for the latest epoch of `history` (a list of per-epoch metric dicts), as {name: sentence}."""
    last = history[-1]
    recent = history[-window:]
    verdict = {}
    d = last.get("d/adversarial")
    if kind != "bce" or d is None:
        verdict["health/d"] = f"{kind} loss: the BCE table does not apply"
    elif abs(d - BCE_CONFUSION) < 0.02:
        verdict["health/d"] = "at the confusion point (0.693): D cannot tell real from fake"
    elif d < 0.2:
        verdict["health/d"] = "D dominates (below 0.2): the generator gets little signal"
    elif d < 0.4:
        verdict["health/d"] = "D winning (0.2-0.4)"
    elif d <= 0.7:
        verdict["health/d"] = "healthy (0.4-0.7)"
    elif d <= 0.8:
        verdict["health/d"] = "D near confusion (0.7-0.8)"
    else:
        verdict["health/d"] = "D fooled (above 0.8)"

    g_totals = [row["g/total"] for row in recent if "g/total" in row]
    g_adv = last.get("g/adversarial")
    if len(g_totals) >= 3 and g_totals[-1] > 2 * min(g_totals[:-1]) and g_totals[-1] > g_totals[-2] > g_totals[-3]:
        g = "exploding: the total rose sharply three epochs running"
    else:
        g = {"flat": "flat: not learning", "gentle": "oscillates gently: healthy",
             "wild": "swings wildly", "too early": "too early to judge"}[_trend(g_totals)]
    if kind == "bce" and g_adv is not None:
        g += f"; its BCE part is {g_adv:.3f}" + (" (at the confusion point)" if abs(g_adv - BCE_CONFUSION) < 0.05 else "")
    verdict["health/g"] = g

    recon = [row["g/recon"] for row in recent if "g/recon" in row]
    if not recon:
        verdict["health/recon"] = "recon is switched off"
    elif len(recon) >= 2 and recon[-1] > 1.5 * recon[-2]:
        verdict["health/recon"] = "critical: a sudden jump"
    elif len(recon) >= 4 and all(b > a for a, b in zip(recon[-4:], recon[-3:])):
        verdict["health/recon"] = "bad: rising steadily"
    elif 0.4 <= recon[-1] <= 0.5:
        verdict["health/recon"] = "good (0.4-0.5)"
    else:
        verdict["health/recon"] = f"{recon[-1]:.3f}, outside the good band 0.4-0.5"

    d_totals = [row["d/total"] for row in recent if "d/total" in row]
    trends = {_trend(d_totals), _trend(g_totals)}
    verdict["health/oscillation"] = ("too early to judge" if "too early" in trends else
                                     "wild swings: unstable" if "wild" in trends else
                                     "flat line: deadlock" if trends == {"flat"} else
                                     "gentle oscillation: healthy")
    return verdict


# ---------------------------------------------------------------------------------------------
# Metrics, plots, samples


# (title, metric keys, shaded bands (low, high, label)) per panel of losses.png and vae_losses.png
GAN_PANELS = [("Discriminator", ["d/total", "d/adversarial"], [(0.4, 0.7, "healthy")]),
              ("Generator", ["g/total", "g/adversarial"], [(BCE_CONFUSION, BCE_CONFUSION, "confusion")]),
              ("Reconstruction", ["g/recon", "val/recon"], [(0.4, 0.5, "good")]),
              ("Validation: D accuracy", ["val/d_accuracy_real", "val/d_accuracy_fake"], []),
              ("Fréchet distance to validation (lower is closer)", ["val/frechet"], [])]
VAE_PANELS = [("VAE: multi-resolution STFT distance (paired)", ["vae/stft", "val/stft"], []),
              ("VAE: KL per element", ["vae/kl", "val/kl"], []),
              ("VAE: KL weight (warm-up)", ["vae/kl_weight"], []),
              ("Decoder fine-tuning (hinge)", ["adv/d", "adv/g"], []),
              ("Decoder fine-tuning: feature matching", ["adv/feature_matching"], [])]


def write_metrics(history, folder, name="metrics", panels=GAN_PANELS, plot_name="losses.png"):
    """checkpoint_folder/<name>.csv (atomically; one row per epoch) and its plot."""
    folder = Path(folder)
    columns = list(dict.fromkeys(key for row in history for key in row))
    tmp = folder / f".{name}.csv.tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, folder / f"{name}.csv")
    plot_losses(history, folder / plot_name, panels)


def plot_losses(history, path, panels=GAN_PANELS):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, axes = plt.subplots(2, 3, figsize=(15, 7), sharex=True)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (title, keys, bands) in zip(axes.flat, panels):
        for key in keys:
            points = [(row["epoch"], row[key]) for row in history if key in row]
            ax.plot(*zip(*points) if points else ([], []), marker="o" if len(epochs) < 30 else None, markersize=3,
                    label=key)
        for low, high, label in bands:
            if low == high:
                ax.axhline(low, color="grey", linestyle="--", linewidth=1, label=label)
            else:
                ax.axhspan(low, high, color="green", alpha=0.1, label=label)
        ax.set_title(title)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        if not any(key in row for row in history for key in keys):
            ax.text(0.5, 0.5, "not measured in this run", ha="center", va="center", transform=ax.transAxes,
                    color="grey")
    for ax in axes[1]:
        ax.set_xlabel("epoch")
    axes.flat[0].set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    fig.tight_layout()
    tmp = Path(path).with_name(".losses.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)


def write_samples(generator, noise, folder, sample_rate, autocast):
    """Generate from fixed noise and write peak-normalized 16-bit WAVs a person can play; return their paths."""
    import soundfile

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    was_training = generator.training
    generator.eval()
    with torch.no_grad(), autocast():
        waveforms = generator(noise)[2].float().cpu().numpy()  # (N, C, T)
    generator.train(was_training)
    paths = []
    for i, wave in enumerate(waveforms):
        peak = float(np.abs(wave).max())
        audio = wave / peak * 0.9 if peak > 0 else wave
        path = folder / f"sample_{i}.wav"
        soundfile.write(path, audio.T, sample_rate, subtype="PCM_16")
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------
# The loop


def make_loader(dataset, batch_size, num_workers, seed, shuffle, device):
    """A DataLoader whose shuffling and worker seeds come from its own generator, never the global RNG."""
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=shuffle,
                                       num_workers=num_workers, pin_memory=device.type == "cuda",
                                       generator=torch.Generator().manual_seed(seed),
                                       persistent_workers=False)


@torch.no_grad()
def validate(generator, discriminator, val_data, config, device, autocast):
    """D's accuracy on held-out real chunks and on fakes, and recon of fakes against them (own RNG: training's
    random state is not touched)."""
    if val_data is None or len(val_data) == 0:
        return {}
    batch_size = min(config["data"]["batch_size"], len(val_data))
    loader = make_loader(val_data, batch_size, 0, seed=0, shuffle=False, device=device)
    noise_rng = torch.Generator(device="cpu").manual_seed(1234)
    generator.eval()
    discriminator.eval()
    correct_real = correct_fake = total = 0
    recon = []
    for target, _, _ in loader:
        target = target.to(device)
        noise = torch.randn(target.shape[0], generator.sound_channels, generator.noise_dim, generator=noise_rng).to(device)
        with autocast():
            fake = generator(noise)[2]
            if target.shape[0] < 2 and getattr(discriminator, "mdisc", None) is not None:
                continue  # minibatch discrimination needs two samples
            real_logits, fake_logits = discriminator(target), discriminator(fake)
        correct_real += int((real_logits.float().mean(dim=1) > 0).sum())  # per sample: its mean logit
        correct_fake += int((fake_logits.float().mean(dim=1) < 0).sum())
        total += target.shape[0]
        recon.append(float(reconstruction_loss(fake, target)))
    generator.train()
    discriminator.train()
    if not total:
        return {}
    return {"val/d_accuracy_real": correct_real / total, "val/d_accuracy_fake": correct_fake / total,
            "val/recon": statistics.mean(recon)}


def frechet_to_validation(generator, val_data, samples, seed, device):
    """evaluate.py's Fréchet distance between fixed-noise generations and validation chunks."""
    from evaluate import compare, generator_clips, validation_clips

    real = validation_clips(val_data, samples)
    fake = generator_clips(generator, len(real), seed, device)
    return compare(real, fake, val_data.info["sample_rate"])["frechet"]


def train_vae_gan(generator, discriminator, optim_g, optim_d, train_data, val_data, config, device, *,
                  start_epoch=1, history=None, scaler_g=None, scaler_d=None, autocast=None, stft=None,
                  sample_rate=12000, deadline=None, log=print):
    """Adversarial training from start_epoch to config.training.epochs (or until time.monotonic() passes deadline).

    Each epoch: a progress bar with running D, G and Recon losses; then validation, the per-epoch means
    of every loss term with the health verdicts (printed, and appended to history / metrics.csv /
    losses.png). Every output.save_after_nepochs epochs, and at the last one: audio samples and both
    checkpoints. Ctrl-C saves a checkpoint and returns. Returns (history, status): "done" or "interrupted".
    """
    t, out = config["training"], config["output"]
    autocast = autocast or nullcontext
    history = list(history or [])
    folder = Path(out["checkpoint_folder"])
    sample_noise = torch.randn(out["samples_per_save"], generator.sound_channels, generator.noise_dim,
                               generator=torch.Generator().manual_seed(t["seed"] + 7)).to(device)
    nonfinite_in_a_row = 0
    last_saved = max((row["epoch"] for row in history if row.get("checkpoint")), default=None)
    steps_per_epoch = config["data"]["steps_per_epoch"]
    accumulation = t["accumulation_steps"]
    step_kwargs = dict(weights=config["loss_weights"], keys=t["keys"], kind=t["adversarial_loss"],
                       smoothing=t["smoothing"], generator_updates=t["generator_updates"], stft=stft,
                       autocast=autocast, grad_clip=t["grad_clip"], scaler_g=scaler_g, scaler_d=scaler_d)

    def save(epoch, partial=False):
        for kind, model, optimizer, scaler in (("generator", generator, optim_g, scaler_g),
                                              ("discriminator", discriminator, optim_d, scaler_d)):
            save_checkpoint(checkpoint_path(folder, kind, epoch), model, optimizer, epoch, config, scaler=scaler,
                            metrics=history, partial=partial)

    for epoch in range(start_epoch, t["epochs"] + 1):
        started = time.perf_counter()
        loader = make_loader(train_data, config["data"]["batch_size"], config["data"]["num_workers"],
                             seed=t["seed"] * 100_003 + epoch, shuffle=True, device=device)
        iterations = len(loader) // accumulation
        if steps_per_epoch:
            iterations = min(iterations, steps_per_epoch)
        sums, count = {}, 0
        bar = tqdm(total=iterations, desc=f"epoch {epoch}/{t['epochs']}", unit="it", dynamic_ncols=True, leave=False)
        batches = iter(loader)
        try:
            for _ in range(iterations):
                targets = [next(batches)[0].to(device, non_blocking=True) for _ in range(accumulation)]
                logs = train_step(generator, discriminator, optim_g, optim_d, targets, **step_kwargs)
                bad = logs["skipped/g"] + logs["skipped/d"]
                nonfinite_in_a_row = nonfinite_in_a_row + bad if bad else 0
                if nonfinite_in_a_row >= t["max_nonfinite_in_a_row"]:
                    where = (f"the last good checkpoint is epoch {last_saved} in {folder}" if last_saved
                             else "no checkpoint was saved yet")
                    raise TrainingStopped(
                        f"{nonfinite_in_a_row} updates in a row had a NaN or Inf loss or gradient (epoch {epoch}); "
                        f"stopping. {where[0].upper() + where[1:]}. Try a lower learning_rate, grad_clip: 1.0, or "
                        f"precision: fp32.")
                for key, value in logs.items():
                    if math.isfinite(value):
                        sums[key] = sums.get(key, 0.0) + value
                count += 1
                bar.set_postfix(D=f"{sums.get('d/total', 0) / count:.3f}", G=f"{sums.get('g/total', 0) / count:.3f}",
                                Recon=f"{sums.get('g/recon', 0) / count:.3f}", refresh=False)
                bar.update()
        except KeyboardInterrupt:
            bar.close()
            save(epoch, partial=True)
            log(f"\nInterrupted during epoch {epoch} ({count}/{iterations} iterations). Saved both models as epoch "
                f"{epoch} (partial) in {folder}. To continue: --set output.resume_from_checkpoint=latest")
            return history, "interrupted"
        bar.close()
        row = {"epoch": epoch}
        row.update({key: value / count for key, value in sorted(sums.items()) if not key.startswith("skipped/")})
        row["skipped_updates"] = sums.get("skipped/g", 0) + sums.get("skipped/d", 0)
        row.update(validate(generator, discriminator, val_data, config, device, autocast))
        if t["eval_every"] and val_data is not None and (epoch % t["eval_every"] == 0 or epoch == t["epochs"]):
            row["val/frechet"] = frechet_to_validation(generator, val_data, t["eval_samples"], t["seed"], device)
        row["seconds"] = round(time.perf_counter() - started, 2)
        history.append(row)
        row.update(health_report(history, t["adversarial_loss"]))
        out_of_time = deadline is not None and time.monotonic() >= deadline
        save_now = epoch % out["save_after_nepochs"] == 0 or epoch == t["epochs"] or out_of_time
        if save_now:
            if out["samples_per_save"]:
                write_samples(generator, sample_noise, Path(out["music_out_folder"]) / f"epoch_{epoch}", sample_rate,
                              autocast)
            row["checkpoint"] = True
            save(epoch)
            last_saved = epoch
        write_metrics(history, folder)
        log(f"epoch {epoch}: D {row.get('d/total', float('nan')):.4f}  G {row.get('g/total', float('nan')):.4f}  "
            f"Recon {row.get('g/recon', float('nan')):.4f}  "
            + (f"val D acc real/fake {row['val/d_accuracy_real']:.2f}/{row['val/d_accuracy_fake']:.2f}  "
               if "val/d_accuracy_real" in row else "")
            + (f"Fréchet {row['val/frechet']:.1f}  " if "val/frechet" in row else "")
            + f"{row['seconds']:.1f}s" + ("  [saved]" if save_now else ""))
        log(f"  health: D: {row['health/d']} | G: {row['health/g']} | Recon: {row['health/recon']} | "
            f"{row['health/oscillation']}")
        if out_of_time:
            log(f"time budget of {t['time_budget_minutes']:g} minutes used up after epoch {epoch}")
            break
    return history, "done"
