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

from loss_functions import (BCE_CONFUSION, discriminator_adversarial_loss, discriminator_loss, feature_matching_loss,
                            generator_adversarial_loss, generator_loss, r1_penalty, reconstruction_loss)
from report import write_report_safely
from utilities import (any_rank, average_gradients, checkpoint_path, forked_rng, is_main, mean_over_ranks, rank,
                       rank_rows, world_size, write_wav)
from vae_utilities import every_rank_rng_states, save_checkpoint


class TrainingStopped(Exception):
    """Training cannot go on (repeated NaN/Inf); the message says why and where the last good checkpoint is."""


def apply_update(optimizer, params, scaler, grad_clip, loss_finite):
    """Unscale, clip and step; returns False, having dropped the gradients, when the update is skipped.

    An update is skipped when its loss was NaN or Inf, or (without a GradScaler) its gradient norm. A
    GradScaler skips overflowing float16 gradients itself and lowers its scale; that is not counted here.
    """
    loss_finite = average_gradients(params, loss_finite)  # several ranks: one all-reduce, and a vote on skipping
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
            noise = generator.sample_noise(target.shape[0], device=target.device)
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


ADA_MAX = 0.8  # the adaptive augmentation's highest probability
ADA_RATE = 0.002  # how far the probability moves per update (0 to ADA_MAX in 400 updates)


def augment_latents(z, p):
    """Latent windows (B, frames, D) as D sees them under adaptive augmentation (Karras et al., ADA; DiffAugment):
    each window, with probability p for each of four transforms, shifted in time (circularly, up to an eighth of
    the window), scaled (gain 1 + 0.25 N), moved per channel (+0.25 N) and given frame noise (+0.1 N).
    Differentiable, and applied alike to real and fake windows, so D cannot learn the transforms as 'real': it
    must judge what remains. The draws come from torch's global stream. p = 0 returns z itself."""
    if p <= 0:
        return z
    batch, frames, channels = z.shape

    def chosen():
        return (torch.rand(batch, 1, 1, device=z.device) < p).to(z.dtype)
    shift = torch.randint(-(frames // 8), frames // 8 + 1, (batch, 1), device=z.device)
    index = (torch.arange(frames, device=z.device) - shift) % frames  # (B, frames)
    z = torch.lerp(z, torch.gather(z, 1, index[..., None].expand(batch, frames, channels)), chosen())
    z = z * (1 + chosen() * 0.25 * torch.randn(batch, 1, 1, device=z.device, dtype=z.dtype))
    z = z + chosen() * 0.25 * torch.randn(batch, 1, channels, device=z.device, dtype=z.dtype)
    return z + chosen() * 0.1 * torch.randn_like(z)


def adapt_augmentation(p, accuracy_real, target):
    """ADA's controller: raise p while D calls more than `target` of the real training windows real (its sign of
    overfitting), lower it otherwise; kept within [0, ADA_MAX]."""
    return min(ADA_MAX, max(0.0, p + (ADA_RATE if accuracy_real > target else -ADA_RATE)))


def latent_train_step(generator, discriminator, optim_g, optim_d, real, *, kind="hinge", r1_weight=1.0,
                      feature_matching=0.0, smoothing=0.0, autocast=None, grad_clip=0.0, scaler_g=None, scaler_d=None,
                      update_generator=True, augment_p=0.0):
    """One GAN iteration on latent windows (B, frames, latent_dim), in HiFi-GAN's order: the fakes, D's update
    on them detached (with R1 on the real windows), then G's update against the updated D.

    Never runs the VAE's encoder; decodes audio only when the discriminator has an audio member. Returns a
    dict of floats, as train_step does, with "d/r1" and "d/accuracy_real" / "d/accuracy_fake" (the shares
    of the batch's real windows D scores above 0 and of fakes below 0, which drive the adaptive R1 weight).
    """
    autocast = autocast or nullcontext
    audio_d = discriminator.audio
    fake = generator.fake_windows(real.shape[0])
    real = real.detach().requires_grad_(r1_weight > 0)
    with autocast():
        fake_audio = generator.decode(fake) if audio_d is not None else None
        real_logits = discriminator(augment_latents(real, augment_p))
        fake_logits = discriminator(augment_latents(fake.detach(), augment_p))
        d_adv = discriminator_adversarial_loss(real_logits, fake_logits, kind, smoothing)
        if audio_d is not None:
            with torch.no_grad():
                real_audio = generator.decode(real.detach())
            d_adv = d_adv + discriminator_adversarial_loss(audio_d(real_audio), audio_d(fake_audio.detach()), kind,
                                                           smoothing)
    r1 = (r1_penalty(real_logits, real, scale=scaler_d.get_scale() if scaler_d else 1.0) if r1_weight
          else torch.zeros((), device=real.device))
    d_total = d_adv + r1_weight * r1
    optim_d.zero_grad(set_to_none=True)
    (scaler_d.scale(d_total) if scaler_d else d_total).backward()
    skipped_d = not apply_update(optim_d, list(discriminator.parameters()), scaler_d, grad_clip,
                                 bool(torch.isfinite(d_total)))
    logs = {"d/adversarial": d_adv, "d/r1": r1, "d/total": d_total, "d/real_logit": real_logits.float().mean(),
            "d/fake_logit": fake_logits.float().mean(), "d/accuracy_real": (real_logits > 0).float().mean(),
            "d/accuracy_fake": (fake_logits < 0).float().mean()}
    skipped_g = False
    if update_generator:  # D's weights get gradients here too; its next zero_grad drops them
        with autocast():
            fake_logits, fake_features = discriminator(augment_latents(fake, augment_p), return_features=True)
            g_total = logs["g/adversarial"] = generator_adversarial_loss(fake_logits, kind)
            if feature_matching:
                with torch.no_grad():
                    real_features = discriminator(real.detach(), return_features=True)[1]
                logs["g/feature_matching"] = feature_matching_loss(real_features, fake_features)
                g_total = g_total + feature_matching * logs["g/feature_matching"]
            if audio_d is not None:
                logs["g/audio_adversarial"] = generator_adversarial_loss(audio_d(fake_audio), kind)
                g_total = g_total + logs["g/audio_adversarial"]
        logs["g/total"] = g_total
        optim_g.zero_grad(set_to_none=True)
        (scaler_g.scale(g_total) if scaler_g else g_total).backward()
        skipped_g = not apply_update(optim_g, [p for p in generator.parameters() if p.requires_grad], scaler_g,
                                     grad_clip, bool(torch.isfinite(g_total)))
    names = sorted(logs)
    result = dict(zip(names, torch.stack([logs[n].detach().float() for n in names]).tolist()))  # one sync
    result.update({"skipped/g": int(skipped_g), "skipped/d": int(skipped_d)})
    return result


@torch.no_grad()
def ema_update(ema, model, decay):
    """ema <- decay * ema + (1 - decay) * model, parameter by parameter; buffers are copied."""
    for averaged, live in zip(ema.parameters(), model.parameters()):
        if live.requires_grad:
            averaged.lerp_(live, 1 - decay)
    for averaged, live in zip(ema.buffers(), model.buffers()):
        averaged.copy_(live)


R1_MAX = 10.0  # Musika's ceiling for the adaptive R1 weight


def adapt_r1(weight, accuracy, base, target=0.75, rate=1.02):
    """Adaptive R1, after Musika: raise the weight while D tells the batch's real and fake windows apart
    better than `target` (its mean accuracy on both: it is growing overconfident), lower it otherwise;
    kept within [base, R1_MAX]."""
    if not base:
        return 0.0
    weight = weight * rate if accuracy > target else weight / rate
    return min(max(weight, base), max(base, R1_MAX))


# ---------------------------------------------------------------------------------------------
# The health report: the seed's tables as code


def _trend(values):
    """'flat', 'gentle' or 'wild' for a series of epoch means, by their relative spread."""
    if len(values) < 3:
        return "too early"
    mean = statistics.mean(values)
    spread = statistics.pstdev(values) / max(abs(mean), 0.5)  # hinge losses cross zero: no relative spread there
    if spread < 0.005:
        return "flat"
    return "gentle" if spread < 0.15 else "wild"


# D's adversarial loss per kind: (confusion point, [(upper bound, verdict), ...] from low to high). bce is the
# seed's table (DESIGN.md); hinge's confusion point is 2 (both hinges at logit 0), lsgan's 1.
D_BANDS = {
    "bce": (BCE_CONFUSION, [(0.2, "D dominates (below 0.2): the generator gets little signal"),
                            (0.4, "D winning (0.2-0.4)"), (0.7, "healthy (0.4-0.7)"), (0.8, "D near confusion (0.7-0.8)"),
                            (math.inf, "D fooled (above 0.8)")]),
    "hinge": (2.0, [(0.5, "D dominates (below 0.5): the generator gets little signal"), (1.2, "D winning (0.5-1.2)"),
                    (1.9, "healthy (1.2-1.9)"), (2.1, "D near confusion (1.9-2.1)"), (math.inf, "D fooled (above 2.1)")]),
    "lsgan": (1.0, [(0.2, "D dominates (below 0.2): the generator gets little signal"), (0.5, "D winning (0.2-0.5)"),
                    (0.9, "healthy (0.5-0.9)"), (1.1, "D near confusion (0.9-1.1)"), (math.inf, "D fooled (above 1.1)")]),
}
BLIND = 0.1  # D accuracy at or below this on real (or fake) validation windows: it is not telling them apart
PERSISTENT = 0.75  # a D problem of single epochs counts when it holds in this share of the window's epochs or more
MEMORISING_GAP = 0.25  # D calls this much larger a share of training windows real than of held-out ones: memorising
D_PROBLEMS = ("broken", "D fooled", "D dominates", "at the confusion")


def _d_state(d, accuracy_real, accuracy_fake, kind):
    """D's verdict on one set of figures (an epoch's, or the means of a window's): accuracy first, then its loss's
    band for this adversarial loss kind."""
    if accuracy_real is not None and accuracy_real <= BLIND:
        return f"broken: D calls {1 - accuracy_real:.0%} of real validation chunks fake"
    if accuracy_fake is not None and accuracy_fake <= BLIND:
        return f"D fooled: it calls {1 - accuracy_fake:.0%} of fakes real"
    if d is None or kind not in D_BANDS:
        return "not measured"
    confusion, bands = D_BANDS[kind]
    if abs(d - confusion) < 0.02 * max(1.0, confusion):
        return f"at the confusion point ({confusion:.3g}): D cannot tell real from fake"
    return next(text for upper, text in bands if d < upper)


def _d_problem(state):
    """The short name of a D problem ("D broken", "D dominates", ...) in a _d_state sentence, or None."""
    return "D " + state.split(" (")[0].split(":")[0].removeprefix("D ") if state.startswith(D_PROBLEMS) else None


def _mean_of(rows, key):
    values = [row[key] for row in rows if row.get(key) is not None]
    return statistics.fmean(values) if values else None


def _d_over_window(rows, kind):
    """(sentence, problems) for D over the window's rows.

    The window's means place D in a band, so an epoch that alternates with its neighbours moves the verdict a
    little, never across; a problem also counts when it holds, epoch by epoch, in PERSISTENT of the window or
    more (one good epoch among bad ones pulls the mean, not the verdict). Where the rows hold D's accuracy on
    real training windows too, the sentence says whether D memorises them or is simply ahead.
    """
    keys = ("d/adversarial", "val/d_accuracy_real", "val/d_accuracy_fake")
    rows = [row for row in rows if any(row.get(key) is not None for key in keys)]
    if not rows:
        return "not measured", []
    state = _d_state(*(_mean_of(rows, key) for key in keys), kind)
    problem = _d_problem(state)
    per_epoch = [_d_problem(_d_state(*(row.get(key) for key in keys), kind)) for row in rows]
    bad = [name for name in per_epoch if name]
    if problem is None and len(bad) >= PERSISTENT * len(rows):
        problem = max(dict.fromkeys(reversed(bad)), key=bad.count)  # the most frequent; the latest on a tie
        state = _d_state(*(_mean_of([row for row, name in zip(rows, per_epoch) if name == problem], key)
                           for key in keys), kind)
    if len(rows) > 1:
        state += f"; judged over the last {len(rows)} epochs" + (
            " (" + ", ".join(f"{name.removeprefix('D ')} in {bad.count(name)}" for name in dict.fromkeys(bad)) + ")"
            if bad else "")
    problems = [problem] if problem else []
    both = [row for row in rows if row.get("val/d_accuracy_train_real") is not None
            and row.get("val/d_accuracy_real") is not None]
    if not both:
        return state, problems
    train, held_out = _mean_of(both, "val/d_accuracy_train_real"), _mean_of(both, "val/d_accuracy_real")
    ahead = problem in ("D broken", "D dominates") or state.startswith("D winning")
    if train - held_out >= MEMORISING_GAP:  # a D problem in itself, and the cause of the one above if any
        state += f"; memorising: it calls {train:.0%} of training windows real but {held_out:.0%} of held-out ones"
        problems = [f"{problem} (memorising)"] if ahead and problem else problems + ["D memorising"]
    elif ahead:
        state += (f"; {'' if problem == 'D broken' else 'simply ahead, '}not memorising: it calls {train:.0%} of "
                  f"training and {held_out:.0%} of held-out real windows real")
        problems = [f"{problem} (not memorising)"] if problem else problems
    return state, problems


def health_report(history, kind="bce", window=5):
    """Verdicts for the latest `window` epochs of `history` (a list of per-epoch metric dicts), as {name: sentence}.

    health/d places the window's mean adversarial loss of D in its kind's bands, but validation accuracy comes
    first: a D that calls 90 % or more of real chunks fake (or of fakes real) is never healthy, whatever its
    loss. A problem is declared from the window's means, or when it held in most of the window's epochs
    (PERSISTENT), so that one epoch cannot flip the verdict. health/frechet follows the Fréchet distance to
    validation; health/verdict sums everything up.
    """
    last = history[-1]
    recent = history[-window:]
    verdict = {}
    verdict["health/d"], problems = _d_over_window(recent, kind)

    g_totals = [row["g/total"] for row in recent if "g/total" in row]
    g_adv = last.get("g/adversarial")
    rising = len(g_totals) >= 3 and g_totals[-1] > g_totals[-2] > g_totals[-3]
    if rising and g_totals[-1] - min(g_totals[:-1]) > max(1.0, abs(min(g_totals[:-1]))):  # doubled, or up by 1
        g = "exploding: the total rose sharply three epochs running"
        problems.append("G exploding")
    else:
        g = {"flat": "flat: not learning", "gentle": "oscillates gently: healthy",
             "wild": "swings wildly", "too early": "too early to judge"}[_trend(g_totals)]
    if kind == "bce" and g_adv is not None:
        g += f"; its BCE part is {g_adv:.3f}" + (" (at the confusion point)" if abs(g_adv - BCE_CONFUSION) < 0.05 else "")
    verdict["health/g"] = g

    recon = [row["g/recon"] for row in recent if "g/recon" in row]
    if not recon:
        verdict["health/recon"] = "not used (no unpaired reconstruction term)"
    elif len(recon) >= 2 and recon[-1] > 1.5 * recon[-2]:
        verdict["health/recon"] = "critical: a sudden jump"
    elif len(recon) >= 4 and all(b > a for a, b in zip(recon[-4:], recon[-3:])):
        verdict["health/recon"] = "bad: rising steadily"
    elif 0.4 <= recon[-1] <= 0.5:
        verdict["health/recon"] = "good (0.4-0.5)"
    else:
        verdict["health/recon"] = f"{recon[-1]:.3f}, outside the good band 0.4-0.5"

    frechet = [row["val/frechet"] for row in history if "val/frechet" in row][-3:]
    if len(frechet) < 2:
        verdict["health/frechet"] = "too early to judge"
    elif len(frechet) == 3 and frechet[2] > frechet[1] > frechet[0]:
        verdict["health/frechet"] = f"worsening: rose three measurements running, to {frechet[-1]:.1f}"
        problems.append("Fréchet rising")
    else:
        verdict["health/frechet"] = ("improving" if frechet[-1] < frechet[0] else "not improving") + f" ({frechet[-1]:.1f})"

    d_totals = [row["d/total"] for row in recent if "d/total" in row]
    trends = {_trend(d_totals), _trend(g_totals)}
    verdict["health/oscillation"] = ("too early to judge" if "too early" in trends else
                                     "wild swings: unstable" if "wild" in trends else
                                     "flat line: deadlock" if trends == {"flat"} else
                                     "gentle oscillation: healthy")
    verdict["health/verdict"] = "healthy" if not problems else "unhealthy: " + ", ".join(problems)
    return verdict


# ---------------------------------------------------------------------------------------------
# Metrics, plots, samples


# (title, metric keys, shaded bands (low, high, label)) per panel of losses.png and vae_losses.png
GAN_PANELS = [("Discriminator", ["d/total", "d/adversarial"], [(0.4, 0.7, "healthy")]),
              ("Generator", ["g/total", "g/adversarial"], [(BCE_CONFUSION, BCE_CONFUSION, "confusion")]),
              ("Reconstruction", ["g/recon", "val/recon"], [(0.4, 0.5, "good")]),
              ("Validation: D accuracy", ["val/d_accuracy_real", "val/d_accuracy_fake"], []),
              ("Fréchet distance to validation (lower is closer)", ["val/frechet"], []),
              ("Spectral motion (dB): samples, real audio",
               ["val/spectral_motion_db", "val/spectral_motion_db_real"], [])]


def gan_panels(kind):
    """GAN_PANELS with the discriminator's healthy band and confusion point for this adversarial loss kind."""
    confusion, bands = D_BANDS.get(kind, D_BANDS["bce"])
    low = next(upper for upper, text in bands if text.startswith("D winning"))
    high = next(upper for upper, text in bands if text.startswith("healthy"))
    return [("Discriminator", ["d/total", "d/adversarial"], [(low, high, "healthy")]),
            ("Generator", ["g/total", "g/adversarial"], [(confusion, confusion, "confusion")]),
            ("Reconstruction (seed) / R1 (latent)", ["g/recon", "val/recon", "d/r1", "r1_weight"],
             [(0.4, 0.5, "good recon")] if kind == "bce" else []),
            *GAN_PANELS[3:]]


VAE_PANELS = [("VAE: multi-resolution STFT distance (paired)", ["vae/stft", "val/stft"], []),
              ("VAE: KL per element", ["vae/kl", "val/kl"], []),
              ("VAE: KL weight (warm-up)", ["vae/kl_weight"], []),
              ("VAE: learning rate (cosine decay)", ["vae/learning_rate"], []),
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


class TensorBoard:
    """TensorBoard event files of one stage, checkpoint_folder/tensorboard/<stage> (output.tensorboard): scalars
    per step, epoch means and health verdicts, audio samples and their spectrograms, all on the stage's global step.
    A resumed run purges what a killed one logged after its checkpoint. With enabled=False every call is a no-op."""

    def __init__(self, folder, stage, enabled=True, resume_step=None):
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ValueError("output.tensorboard is true, but the tensorboard package is not installed: "
                                 "pip install -r requirements.txt, or set output.tensorboard: false") from e
            self.writer = SummaryWriter(str(Path(folder) / "tensorboard" / stage), purge_step=resume_step,
                                        flush_secs=30)

    def scalars(self, prefix, values, step):
        if self.writer is None:
            return
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(f"{prefix}/{key}", value, step)

    def epoch(self, row, step):
        """An epoch's means (prefix epoch/) and its health verdicts as text."""
        if self.writer is None:
            return
        self.scalars("epoch", row, step)
        health = [f"**{key.split('/', 1)[1]}**: {value}" for key, value in row.items() if key.startswith("health/")]
        if health:
            self.writer.add_text("health", f"epoch {row['epoch']}: " + "  \n".join(health), step)

    def audio(self, paths, step, prefix="samples"):
        """WAV files as audio and spectrogram images, one tag per file name."""
        if self.writer is None:
            return
        import matplotlib.pyplot as plt
        import soundfile

        from report import spectrogram_figure

        for path in paths:
            audio, sample_rate = soundfile.read(path, dtype="float32", always_2d=True)
            mono = audio.mean(axis=1)
            tag = f"{prefix}/{Path(path).stem}"
            self.writer.add_audio(tag, torch.from_numpy(mono), step, sample_rate=sample_rate)
            fig = spectrogram_figure(mono, sample_rate)
            self.writer.add_figure(f"{tag}/spectrogram", fig, step)
            plt.close(fig)
        self.writer.flush()

    def flush(self):
        if self.writer is not None:
            self.writer.flush()

    def close(self):
        if self.writer is not None:
            self.writer.close()


def sample(generator, noise, autocast=None):
    """Waveforms (N, C, T) float32 on the CPU from fixed noise, in eval mode. Training's random streams are left
    alone (fork_rng): the seed's generator draws its reparameterization noise from the global generator."""
    autocast = autocast or nullcontext
    device = noise.device
    was_training = generator.training
    generator.eval()
    with forked_rng(device), torch.no_grad(), autocast():
        waveforms = generator(noise)[2].float().cpu()
    generator.train(was_training)
    return waveforms


def write_samples(generator, noise, folder, sample_rate, autocast):
    """Generate from fixed noise and write peak-normalized 16-bit WAVs a person can play; return their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, wave in enumerate(sample(generator, noise, autocast).numpy()):
        peak = float(np.abs(wave).max())
        paths.append(write_wav(folder / f"sample_{i}.wav", wave / peak * 0.9 if peak > 0 else wave, sample_rate))
    return paths


# ---------------------------------------------------------------------------------------------
# The loop


class EpochSampler(torch.utils.data.DistributedSampler):
    """This rank's share of each epoch's order of a dataset (shuffled from seed + epoch; call set_epoch each
    epoch), each index paired with a crop seed of its own. Random crops then depend only on (seed, epoch, index),
    not on which worker or rank reads them: resume stays exact with persistent workers, and N ranks read
    together what one process reads. With shard=False every rank gets the whole dataset (validation)."""

    def __init__(self, dataset, seed, shuffle, shard=True):
        super().__init__(dataset, num_replicas=world_size() if shard else 1, rank=rank() if shard else 0,
                         shuffle=shuffle, seed=seed, drop_last=shuffle)

    def __iter__(self):
        for index in super().__iter__():
            yield index, hash((self.seed, self.epoch, index)) % 2**62


def make_loader(dataset, batch_size, num_workers, seed, shuffle, device, persistent=False, shard=True):
    """A DataLoader over an EpochSampler: its order and crops come from seed (and set_epoch), never the global RNG.
    persistent keeps its workers (with prefetch) from one epoch to the next: make it once, set_epoch each epoch."""
    workers = dict(persistent_workers=persistent, prefetch_factor=4) if num_workers else {}
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=EpochSampler(dataset, seed, shuffle, shard),
                                       drop_last=shuffle, num_workers=num_workers, pin_memory=device.type == "cuda",
                                       generator=torch.Generator().manual_seed(seed), **workers)


VALIDATION_WINDOWS = 64  # latent: real windows D is validated on per epoch, in whole training-sized batches
VALIDATION_SEED = 1234  # validation's own random streams: the same windows and noise every epoch


def training_shaped_batches(windows, batch_size, seed=VALIDATION_SEED):
    """Real latent windows for validation, drawn as training draws them (LatentWindows.batch: batches of
    batch_size random windows across all of `windows`), about VALIDATION_WINDOWS of them, from a fixed seed:
    minibatch discrimination then sees the batches it was trained on, never one song's windows together."""
    rng = torch.Generator().manual_seed(seed)
    return [windows.batch(batch_size, generator=rng) for _ in range(-(-VALIDATION_WINDOWS // batch_size))]


def _sample_logits(logits):
    """(B,) each sample's mean logit: D calls it real above 0, fake below."""
    return logits.float().flatten(1).mean(dim=1)


@torch.no_grad()
def validate(generator, discriminator, val_data, config, device, autocast, train_data=None):
    """D's accuracy on held-out real windows (chunks, for the seed) and on fakes, from random streams of their own
    (training's random state is not touched); for the seed's generator, recon of the fakes against the real
    chunks too. Latent: real and fake windows come in batches of training.gan_batch_size, the reals drawn at random
    across the validation set as training draws them, and "val/d_accuracy_train_real" is D's accuracy on real
    training windows drawn the same way (well above the held-out one: D memorises the training set)."""
    if val_data is None or len(val_data) == 0:
        return {}
    latent = config["model"]["architecture"] == "latent"
    noise_rng = torch.Generator(device="cpu").manual_seed(VALIDATION_SEED)
    train_batches = []
    if latent:
        size = config["training"]["gan_batch_size"]
        batches = [batch.to(device) for batch in training_shaped_batches(val_data, size)]
        if train_data is not None and len(train_data):
            train_batches = [batch.to(device) for batch in training_shaped_batches(train_data, size)]
    else:
        loader = make_loader(val_data, min(config["data"]["batch_size"], len(val_data)), 0, seed=0, shuffle=False,
                             device=device, shard=False)
        batches = (target.to(device) for target, _, _ in loader)
    generator.eval()
    discriminator.eval()
    correct_real = correct_fake = total = train_real = train_total = 0
    recon = []
    with forked_rng(device):
        for target in batches:
            if target.shape[0] < 2 and getattr(discriminator, "mdisc", None) is not None:
                continue  # minibatch discrimination needs two samples
            with autocast():
                if latent:
                    fake = generator.fake_windows(target.shape[0], generator=noise_rng)
                else:
                    fake = generator(generator.sample_noise(target.shape[0], generator=noise_rng))[2]
                real_logits, fake_logits = discriminator(target), discriminator(fake)
            correct_real += int((_sample_logits(real_logits) > 0).sum())
            correct_fake += int((_sample_logits(fake_logits) < 0).sum())
            total += target.shape[0]
            if not latent:
                recon.append(float(reconstruction_loss(fake, target)))
        for target in train_batches:
            with autocast():
                train_real += int((_sample_logits(discriminator(target)) > 0).sum())
            train_total += target.shape[0]
    generator.train()
    discriminator.train()
    if not total:
        return {}
    result = {"val/d_accuracy_real": correct_real / total, "val/d_accuracy_fake": correct_fake / total}
    if train_total:
        result["val/d_accuracy_train_real"] = train_real / train_total
    if recon:
        result["val/recon"] = statistics.mean(recon)
    return result


def frechet_to_validation(generator, val_audio, samples, seed, device):
    """evaluate.py's Fréchet distance and spectral motion of fixed-noise generations against validation chunks."""
    from evaluate import compare, generator_clips, validation_clips

    real = validation_clips(val_audio, samples)
    fake = generator_clips(generator, len(real), seed, device, samples=real[0].shape[-1])
    result = compare(real, fake, val_audio.info["sample_rate"])
    motion = result["spectral_motion_db"]
    return {"val/frechet": result["frechet"], "val/spectral_motion_db": motion["fake"],
            "val/spectral_motion_db_real": motion["real"]}


class GANRun:
    """What the adversarial loop works on, and the state a checkpoint keeps beyond the weights: the global step,
    the adaptive R1 weight and (latent) the generator's EMA copy, which samples and evaluates."""

    def __init__(self, generator, discriminator, optim_g, optim_d, train_data, val_data, config, device, *,
                 ema=None, val_audio=None, scaler_g=None, scaler_d=None, autocast=None, stft=None,
                 sample_rate=12000, log=print, step=0, r1_weight=None, augment_p=None, board=None):
        self.generator, self.discriminator, self.optim_g, self.optim_d = generator, discriminator, optim_g, optim_d
        self.train_data, self.val_data, self.val_audio = train_data, val_data, val_audio
        self.config, self.device, self.ema = config, device, ema
        self.scaler_g, self.scaler_d, self.autocast, self.stft = scaler_g, scaler_d, autocast or nullcontext, stft
        self.sample_rate, self.log, self.step = sample_rate, log, step
        self.board = board or TensorBoard(None, "gan", enabled=False)
        t = config["training"]
        self.latent = config["model"]["architecture"] == "latent"
        self.r1_weight = t["r1_weight"] if r1_weight is None else r1_weight
        self.augment_p = augment_p or 0.0  # ADA's probability (training.ada_target), carried by checkpoints
        self.folder = Path(config["output"]["checkpoint_folder"])
        self._loader = None  # the seed's chunk loader, made on first use

    @property
    def sampler(self):
        """The generator that samples: the EMA copy when there is one."""
        return self.ema if self.ema is not None else self.generator

    def iterations(self):
        t, data = self.config["training"], self.config["data"]
        if self.latent:  # random windows: an epoch is data.steps_per_epoch updates, whatever the collection's size
            if data["steps_per_epoch"]:
                return data["steps_per_epoch"]
            count = max(1, 2 * len(self.train_data) // (world_size() * t["gan_batch_size"]))  # the global batch
        else:
            count = len(self.train_data) // (world_size() * data["batch_size"]) // t["accumulation_steps"]
        return min(count, data["steps_per_epoch"]) if data["steps_per_epoch"] else count

    def batches(self, epoch):
        """The epoch's real batches, from a random stream seeded by the epoch (so a resumed run draws the same)."""
        t, data = self.config["training"], self.config["data"]
        seed = t["seed"] * 100_003 + epoch
        if self.latent:
            rng = torch.Generator().manual_seed(seed)
            for _ in range(self.iterations()):  # the global batch's windows, of which this rank keeps its rows
                windows = self.train_data.batch(world_size() * t["gan_batch_size"], generator=rng)
                yield rank_rows(windows).to(self.device, non_blocking=True)
            return
        if self._loader is None:  # one loader for the run: its workers persist, set_epoch reshuffles
            self._loader = make_loader(self.train_data, data["batch_size"], data["num_workers"], seed=t["seed"] * 100_003,
                                       shuffle=True, device=self.device, persistent=True)
        self._loader.sampler.set_epoch(epoch)
        loader = iter(self._loader)
        for _ in range(self.iterations()):
            yield [next(loader)[0].to(self.device, non_blocking=True) for _ in range(t["accumulation_steps"])]

    def train_step(self, batch, update_generator=True):
        t, w = self.config["training"], self.config["loss_weights"]
        if not self.latent:
            self.step += 1
            return mean_over_ranks(train_step(
                self.generator, self.discriminator, self.optim_g, self.optim_d, batch, weights=w, keys=t["keys"],
                kind=t["adversarial_loss"], smoothing=t["smoothing"], generator_updates=t["generator_updates"],
                stft=self.stft, autocast=self.autocast, grad_clip=t["grad_clip"], scaler_g=self.scaler_g,
                scaler_d=self.scaler_d))
        logs = latent_train_step(self.generator, self.discriminator, self.optim_g, self.optim_d, batch,
                                 kind=t["adversarial_loss"], r1_weight=self.r1_weight,
                                 feature_matching=w["feature_matching"], smoothing=t["smoothing"],
                                 autocast=self.autocast, grad_clip=t["grad_clip"], scaler_g=self.scaler_g,
                                 scaler_d=self.scaler_d, update_generator=update_generator,
                                 augment_p=self.augment_p)
        logs = mean_over_ranks(logs)  # the global batch's figures: every rank adapts R1 alike
        logs["r1_weight"] = self.r1_weight
        if t["ada_target"]:
            logs["d/augment_p"] = self.augment_p
            self.augment_p = adapt_augmentation(self.augment_p, logs["d/accuracy_real"], t["ada_target"])
        if t["r1_adaptive"]:
            accuracy = (logs["d/accuracy_real"] + logs["d/accuracy_fake"]) / 2
            self.r1_weight = adapt_r1(self.r1_weight, accuracy, t["r1_weight"])
        if update_generator:
            decay = min(t["ema_decay"], (1 + self.step) / (10 + self.step))  # a short warm-up, then the set decay
            ema_update(self.ema, self.generator, decay)
            self.step += 1
        return logs

    def validate(self, epoch):
        """Validation figures on the main process (others return {}: they write nothing)."""
        t = self.config["training"]
        if not is_main():
            return {}
        row = validate(self.generator, self.discriminator, self.val_data, self.config, self.device, self.autocast,
                       train_data=self.train_data if self.latent else None)
        if t["eval_every"] and self.val_audio is not None and (epoch % t["eval_every"] == 0 or epoch == t["epochs"]):
            row.update(frechet_to_validation(self.sampler, self.val_audio, t["eval_samples"], t["seed"], self.device))
        return row

    def sample_noise(self):
        """The fixed noise of the samples written at each save (its own random stream)."""
        t, out = self.config["training"], self.config["output"]
        frames = 4 * self.generator.latent_seq_len if self.latent else None
        return self.sampler.sample_noise(out["samples_per_save"], frames=frames,
                                         generator=torch.Generator().manual_seed(t["seed"] + 7))

    def save(self, epoch, history, partial=False):
        """Both checkpoints, written by rank 0; every rank calls it (it gathers each rank's random state)."""
        extra = dict(step=self.step, r1_weight=self.r1_weight, augment_p=self.augment_p,
                     **every_rank_rng_states(gather=not partial))
        if not is_main():
            return
        for kind, model, optimizer, scaler in (("generator", self.generator, self.optim_g, self.scaler_g),
                                              ("discriminator", self.discriminator, self.optim_d, self.scaler_d)):
            ema = {"ema_state_dict": self.ema.state_dict()} if kind == "generator" and self.ema is not None else {}
            save_checkpoint(checkpoint_path(self.folder, kind, epoch), model, optimizer, epoch, self.config,
                            scaler=scaler, metrics=history, partial=partial, **extra, **ema)


def run_epoch(run, epoch, desc, update_generator=True):
    """One epoch of run.train_step with a progress bar; returns the means of its logs, or raises KeyboardInterrupt
    (with .completed set) or TrainingStopped."""
    t = run.config["training"]
    iterations = run.iterations()
    sums, count, nonfinite_in_a_row = {}, 0, 0
    bar = tqdm(total=iterations, desc=desc, unit="it", dynamic_ncols=True, leave=False, disable=not is_main())
    try:
        for batch in run.batches(epoch):
            logs = run.train_step(batch, update_generator)
            if update_generator:
                run.board.scalars("step", logs, run.step)
            bad = logs["skipped/g"] + logs["skipped/d"]
            nonfinite_in_a_row = nonfinite_in_a_row + bad if bad else 0
            if nonfinite_in_a_row >= t["max_nonfinite_in_a_row"]:
                raise TrainingStopped(
                    f"{nonfinite_in_a_row} updates in a row had a NaN or Inf loss or gradient (epoch {epoch}); "
                    f"stopping. Try a lower learning_rate, grad_clip: 1.0, or precision: fp32.")
            for key, value in logs.items():
                if math.isfinite(value):
                    sums[key] = sums.get(key, 0.0) + value
            count += 1
            bar.set_postfix(D=f"{sums.get('d/total', 0) / count:.3f}", G=f"{sums.get('g/total', 0) / count:.3f}",
                            refresh=False)
            bar.update()
    except KeyboardInterrupt as e:
        e.completed = (count, iterations)
        raise
    finally:
        bar.close()
    row = {key: value / max(count, 1) for key, value in sorted(sums.items()) if not key.startswith("skipped/")}
    row["skipped_updates"] = sums.get("skipped/g", 0) + sums.get("skipped/d", 0)
    return row


def pretrain_latent_discriminator(run, log=print):
    """training.pretrain_discriminator_epochs of D-only updates against the untrained generator's latents."""
    epochs = run.config["training"]["pretrain_discriminator_epochs"]
    for epoch in range(1, epochs + 1):
        row = run_epoch(run, -epoch, f"pretrain discriminator {epoch}/{epochs}", update_generator=False)
        log(f"pretrain discriminator epoch {epoch}: D {row.get('d/total', float('nan')):.4f}")


def estimate_line(stage, seconds_per_step, steps_done, steps_total, deadline, now):
    """One line after a stage's first epoch: its speed and when it will end, by its steps or its time budget."""
    left = max(steps_total - steps_done, 0) * seconds_per_step
    if deadline is not None and now + left > deadline:
        steps = steps_done + int(max(deadline - now, 0) / seconds_per_step)
        return (f"{stage}: {seconds_per_step:.3f} s per step; at this speed its time budget ends it after about "
                f"{steps} of {steps_total} steps, in {(deadline - now) / 60:.1f} more minutes")
    return f"{stage}: {seconds_per_step:.3f} s per step; its {steps_total} steps end in about {left / 60:.1f} more minutes"


def log_epoch(row, log):
    log(f"epoch {row['epoch']}: D {row.get('d/total', float('nan')):.4f}  G {row.get('g/total', float('nan')):.4f}  "
        + (f"Recon {row['g/recon']:.4f}  " if "g/recon" in row else "")
        + (f"R1 {row['d/r1']:.4f} (x{row['r1_weight']:.2f})  " if "d/r1" in row else "")
        + (f"val D acc real/fake {row['val/d_accuracy_real']:.2f}/{row['val/d_accuracy_fake']:.2f}  "
           if "val/d_accuracy_real" in row else "")
        + (f"Fréchet {row['val/frechet']:.1f}  " if "val/frechet" in row else "")
        + f"{row['seconds']:.1f}s" + ("  [saved]" if row.get("checkpoint") else ""))
    log(f"  health: {row['health/verdict']} | D: {row['health/d']} | G: {row['health/g']} | "
        f"Fréchet: {row['health/frechet']} | {row['health/oscillation']}")


def train_vae_gan(run, *, start_epoch=1, history=None, deadline=None):
    """Adversarial training of a GANRun from start_epoch to config.training.epochs (or until time.monotonic() passes
    deadline). Each epoch: run_epoch, validation, the means of every logged term with the health verdicts
    (printed, and appended to history / metrics.csv / losses.png). Every output.save_after_nepochs epochs, and at
    the last one: audio samples from fixed noise and both checkpoints. Ctrl-C saves a checkpoint and returns.
    Returns (history, status): "done" or "interrupted"."""
    config, log = run.config, run.log
    t, out = config["training"], config["output"]
    history = list(history or [])
    sample_noise = run.sample_noise() if out["samples_per_save"] else None
    last_saved = max((row["epoch"] for row in history if row.get("checkpoint")), default=None)
    for epoch in range(start_epoch, t["epochs"] + 1):
        started = time.perf_counter()
        try:
            row = {"epoch": epoch, **run_epoch(run, epoch, f"epoch {epoch}/{t['epochs']}")}
        except KeyboardInterrupt as e:
            run.save(epoch, history, partial=True)  # rank 0's (run.save writes on the main process only)
            done, total = getattr(e, "completed", ("?", "?"))
            log(f"\nInterrupted during epoch {epoch} ({done}/{total} iterations). Saved both models as epoch "
                f"{epoch} (partial) in {run.folder}. To continue: --set output.resume_from_checkpoint=latest")
            return history, "interrupted"
        except TrainingStopped as e:
            where = (f"the last good checkpoint is epoch {last_saved} in {run.folder}" if last_saved
                     else "no checkpoint was saved yet")
            raise TrainingStopped(f"{e} {where[0].upper() + where[1:]}.") from None
        row.update(run.validate(epoch))  # rank 0 validates, writes and reports; every rank trains and saves
        row["seconds"] = round(time.perf_counter() - started, 2)
        history.append(row)
        out_of_time = any_rank(deadline is not None and time.monotonic() >= deadline)  # all ranks stop together
        save = epoch % out["save_after_nepochs"] == 0 or epoch == t["epochs"] or out_of_time
        if is_main():
            row.update(health_report(history, t["adversarial_loss"]))
            if save and sample_noise is not None:
                paths = write_samples(run.sampler, sample_noise.to(run.device),
                                      Path(out["music_out_folder"]) / f"epoch_{epoch}", run.sample_rate, run.autocast)
                run.board.audio(paths, run.step)
        if save:
            row["checkpoint"] = True
            run.save(epoch, history)
            last_saved = epoch
        if is_main():
            write_metrics(history, run.folder, panels=gan_panels(t["adversarial_loss"]))
            run.board.epoch(row, run.step)
            if save:
                run.board.flush()
                write_report_safely(run.folder, log)
            log_epoch(row, log)
        if epoch == start_epoch and epoch < t["epochs"]:
            log(estimate_line("stage two (GAN)", row["seconds"] / run.iterations(), epoch * run.iterations(),
                              t["epochs"] * run.iterations(), deadline, time.monotonic()))
        if out_of_time:
            log(f"time budget of {t['time_budget_minutes']:g} minutes used up after epoch {epoch}")
            break
    return history, "done"
