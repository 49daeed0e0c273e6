"""Pretraining before the adversarial loop: the generator alone, then the discriminator alone.

    from piano_pretrain import pretrain_generator, pretrain_discriminator
    pretrain_generator(generator, optim_g, train_data, config, device)
    pretrain_discriminator(discriminator, generator, optim_d, train_data, config, device)

The generator first learns to reconstruct (the recon and kl terms of loss_weights), so the discriminator
does not start against pure noise; the discriminator then learns to tell real chunks from what that
generator makes, so the generator's first adversarial signal is informative.
"""

import math
from contextlib import nullcontext

import torch
from tqdm import tqdm

from loss_functions import discriminator_loss, kl_divergence_loss, reconstruction_loss
from piano_train import apply_update, make_loader


def _epochs(name, epochs, train_data, config, device, step, log):
    """Run `step(target) -> float loss` over `epochs` of train_data with a progress bar; return epoch means."""
    means = []
    for epoch in range(1, epochs + 1):
        loader = make_loader(train_data, config["data"]["batch_size"], config["data"]["num_workers"],
                             seed=config["training"]["seed"] * 100_003 - epoch, shuffle=True, device=device)
        limit = config["data"]["steps_per_epoch"] or len(loader)
        total, count = 0.0, 0
        with tqdm(total=min(limit, len(loader)), desc=f"pretrain {name} {epoch}/{epochs}", leave=False,
                  dynamic_ncols=True) as bar:
            for i, (target, _, _) in enumerate(loader):
                if i >= limit:
                    break
                loss = step(target.to(device, non_blocking=True))
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
        noise = torch.randn(target.shape[0], generator.sound_channels, generator.noise_dim, device=device)
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
        noise = torch.randn(target.shape[0], generator.sound_channels, generator.noise_dim, device=device)
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
