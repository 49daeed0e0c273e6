"""The VAE-GAN training step.

    from piano_train import train_step
    logs = train_step(generator, discriminator, optim_g, optim_d, target, weights=SEED_LOSS_WEIGHTS)

One adversarial iteration is `generator_updates` generator updates and one discriminator update, as
the seed counted it. The discriminator learns from the fakes of the last generator forward, detached,
just before that forward's generator update (HiFi-GAN's order): the seed ran an extra, undetached
generator forward for the discriminator, which cost a third of the iteration and also pushed the
discriminator's loss back through the generator.
"""

from contextlib import nullcontext

import torch

from loss_functions import discriminator_loss, generator_loss


def train_step(generator, discriminator, optim_g, optim_d, target, *, weights, keys=33, kind="bce",
               smoothing=0.0, generator_updates=2, stft=None, autocast=None, grad_clip=None):
    """One adversarial iteration on a batch of normalized real chunks `target` (B, C, seq_len).

    Returns a sorted dict of floats: "d/<term>" and "g/<term>" (the last generator update's terms),
    "d/total", "g/total", and "d/real_logit", "d/fake_logit" means.
    """
    autocast = autocast or nullcontext
    batch = target.shape[0]
    noise_shape = (batch, generator.sound_channels, generator.noise_dim)
    need_features = bool(weights.get("feature_matching", 0))
    logs = {}
    for update in range(generator_updates):
        noise = torch.randn(noise_shape, device=target.device)
        with autocast():
            mu, logvar, fake = generator(noise)  # fake (B, C, seq_len)

        if update == generator_updates - 1:  # the discriminator's update, on these fakes
            discriminator.requires_grad_(True)
            with autocast():
                real_logits = discriminator(target)
                fake_logits = discriminator(fake.detach())
                d_total, d_terms = discriminator_loss(target, fake.detach(), real_logits, fake_logits, weights,
                                                      keys=keys, kind=kind, smoothing=smoothing)
            optim_d.zero_grad(set_to_none=True)
            d_total.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(discriminator.parameters(), grad_clip)
            optim_d.step()
            logs.update({f"d/{name}": term.detach() for name, term in d_terms.items()})
            logs.update({"d/total": d_total.detach(), "d/real_logit": real_logits.detach().float().mean(),
                         "d/fake_logit": fake_logits.detach().float().mean()})

        discriminator.requires_grad_(False)  # the generator's backward needs no weight gradients of D
        with autocast():
            fake_logits, fake_features = discriminator(fake, return_features=True)
            real_features = None
            if need_features:
                with torch.no_grad():
                    real_features = discriminator.get_intermediate_features(target)
            g_total, g_terms = generator_loss(fake, target, mu, logvar, fake_logits, weights, keys=keys, kind=kind,
                                              stft=stft, real_features=real_features, fake_features=fake_features)
        optim_g.zero_grad(set_to_none=True)
        g_total.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(generator.parameters(), grad_clip)
        optim_g.step()
    discriminator.requires_grad_(True)
    logs.update({f"g/{name}": term.detach() for name, term in g_terms.items()})
    logs["g/total"] = g_total.detach()
    names = sorted(logs)
    values = torch.stack([logs[name].float() for name in names]).tolist()  # one device sync, not one per term
    return dict(zip(names, values))
