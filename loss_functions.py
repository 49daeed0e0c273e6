"""Every loss term of MusiGAN, vectorized: no Python loop over the batch or over time segments.

    import loss_functions as L
    kl = L.kl_divergence_loss(mu, logvar)
    d_loss = L.discriminator_adversarial_loss(real_logits, fake_logits, kind="bce", smoothing=0.1)
    total, terms = L.generator_loss(fake, target, mu, logvar, fake_logits, weights)

Waveforms are (B, C, T). `keys` splits T into that many equal segments (the seed's default is 33);
the few samples past keys * (T // keys) are left out. Every term is computed in float32, whatever
autocast does around it, and every standard deviation or correlation has an epsilon: in the seed,
correlations over flat segments sent the gradients (not the losses) to NaN within 110 iterations.
"""

import torch
import torch.nn.functional as F

EPS = 1e-5
BCE_CONFUSION = 0.6931  # ln 2: the BCE of a discriminator that cannot tell real from fake

# What the seed actually summed (DESIGN.md); every other term is off. Keys are config's loss_weights.
SEED_LOSS_WEIGHTS = {
    "recon": 2.0, "adversarial": 20.0, "kl": 5e-5, "stft": 0.0, "feature_matching": 0.0,
    "d_melody": 1.0, "d_silence": 1.0, "d_std": 1.0, "d_kl_songs": 1.0,
}
# Terms the seed's code carried that no preset uses: gone. Old configs list them at 0, which is accepted.
REMOVED_LOSS_WEIGHTS = ("no_seconds", "no_silence", "melody", "melody_match", "silence_match", "std_match",
                        "min_max_match", "kl_songs_match", "d_min_max")


# ---------------------------------------------------------------------------------------------
# Helpers


def segments(x, keys):
    """(B, C, T) -> (B, C, keys, T // keys), a view."""
    seg_len = x.shape[-1] // keys
    if keys < 1 or seg_len < 2:
        raise ValueError(f"keys={keys} must be at least 1 and leave 2 or more samples per segment of {x.shape[-1]}")
    return x[..., :keys * seg_len].unflatten(-1, (keys, seg_len))


def correlation(a, b, dim=-1):
    """Pearson correlation of a and b along dim; 0 where either is flat (the epsilon keeps it finite)."""
    a = a - a.mean(dim, keepdim=True)
    b = b - b.mean(dim, keepdim=True)
    return (a * b).mean(dim) / torch.sqrt((a * a).mean(dim) * (b * b).mean(dim) + EPS)


def segment_std(x, keys):
    """(B, C, T) -> (B, C, keys): the loudness envelope, sqrt(var + eps) so its gradient is finite on silence."""
    return torch.sqrt(segments(x, keys).var(dim=-1, correction=0) + EPS)


def match_statistics(real_stats, fake_stats, d_fake_logits=None):
    """Mean squared gap between each fake's statistics (B, ...) and the real batch's mean statistics.

    Without logits this is a plain matching term for the generator. With d_fake_logits (B, K) each
    fake's gap is fixed and weighted by sigmoid(logit), the discriminator's belief that the fake is
    real: minimizing it teaches the discriminator to reject fakes whose statistics are off.
    """
    target = real_stats.detach().float().mean(dim=0, keepdim=True)
    gap = (fake_stats.float() - target).pow(2).flatten(1).mean(dim=1)  # (B,)
    if d_fake_logits is None:
        return gap.mean()
    belief = torch.sigmoid(d_fake_logits.float().flatten(1).mean(dim=1))  # (B,): one verdict per fake
    return (belief * gap.detach()).mean()


# ---------------------------------------------------------------------------------------------
# Generator-side terms


def kl_divergence_loss(mu, logvar):
    """Keeps the latent code close to N(0, 1), so any noise decodes to music: KL averaged per element."""
    mu, logvar = mu.float(), logvar.float()
    return -0.5 * torch.mean(1 + logvar - mu.pow(2) - logvar.exp())


def reconstruction_loss(fake, target):
    """Keeps the output near real music sample by sample: Smooth L1, as the seed used."""
    return F.smooth_l1_loss(fake.float(), target.float())


def feature_matching_loss(real_features, fake_features):
    """Makes fakes sound real to every layer of the discriminator: mean L1 between its features."""
    losses = [F.l1_loss(fake.float(), real.detach().float()) for real, fake in zip(real_features, fake_features)]
    return torch.stack(losses).mean()


class MultiResolutionSTFTLoss(torch.nn.Module):
    """Makes the spectrum match at several time-frequency resolutions: auraloss's MultiResolutionSTFTLoss.

    At each resolution, spectral convergence (|||Y| - |X|||_F / |||Y|||_F over the batch) plus the mean L1
    between log magnitudes (magnitudes floored at 1e-4), averaged over the resolutions; a Hann window, centred
    frames. stereo=True compares the sum and difference of the channels instead, and averages the two
    (auraloss.freq.SumAndDifferenceSTFTLoss), so the stereo image is matched too. Runs in float32 with autocast
    off.

    The same numbers and gradients as auraloss's (a test checks), in about three quarters of its time (0.17
    against 0.24 s for the VAE's five resolutions on a batch of 16 x 2 x 16384, 2 CPU threads): auraloss also
    computes both signals' phase, which these terms never use, and builds each magnitude in four steps where
    one complex abs does. The VAE spends a third of its training step in this loss.
    """

    def __init__(self, fft_sizes=(512, 1024, 2048), hop_sizes=(50, 120, 240), win_lengths=(240, 600, 1200),
                 stereo=False, floor=1e-4):
        super().__init__()
        self.sizes = list(zip(fft_sizes, hop_sizes, win_lengths))
        self.stereo, self.floor = stereo, floor
        for i, (_, _, win_length) in enumerate(self.sizes):
            self.register_buffer(f"window_{i}", torch.hann_window(win_length), persistent=False)

    def distance(self, fake, target):
        """The loss between two batches of mono signals (N, T)."""
        total = 0.0
        for i, (n_fft, hop, win_length) in enumerate(self.sizes):
            window = getattr(self, f"window_{i}").to(fake.device)  # a no-op once the module is on that device
            fake_mag, target_mag = (torch.stft(x, n_fft, hop, win_length, window, return_complex=True).abs()
                                    .clamp(min=self.floor) for x in (fake, target))
            convergence = torch.linalg.vector_norm(target_mag - fake_mag) / torch.linalg.vector_norm(target_mag)
            total = total + convergence + F.l1_loss(fake_mag.log(), target_mag.log())
        return total / len(self.sizes)

    def forward(self, fake, target):
        with torch.autocast(fake.device.type, enabled=False):
            fake, target = fake.float(), target.float()
            if not self.stereo:
                return self.distance(fake.reshape(-1, fake.shape[-1]), target.reshape(-1, target.shape[-1]))
            return (self.distance(fake.sum(1), target.sum(1))
                    + self.distance(fake[:, 0] - fake[:, 1], target[:, 0] - target[:, 1])) / 2


# ---------------------------------------------------------------------------------------------
# Statistic-matching terms: a real batch against a fake batch (see match_statistics)


def melody_statistics(x, keys):
    """(B, C, T) -> (B, C + 1): each channel's mean correlation with itself one segment later, and left/right."""
    seg = segments(x.float(), keys)
    stats = correlation(seg[:, :, :-1], seg[:, :, 1:]).mean(dim=-1)  # (B, C)
    if x.shape[1] >= 2:
        stats = torch.cat([stats, correlation(x[:, 0].float(), x[:, 1].float()).unsqueeze(1)], dim=1)
    return stats


def melody_loss_d(real, fake, d_fake_logits=None, keys=33):
    """Matches how continuous the music is: segment-to-segment and left/right correlations."""
    return match_statistics(melody_statistics(real, keys), melody_statistics(fake, keys), d_fake_logits)


def loud_share(x, threshold=0.5, softness=0.1):
    """(B, C, T) -> (B, 1): the soft share of samples louder than threshold."""
    return torch.sigmoid((x.float().abs() - threshold) / softness).mean(dim=(1, 2)).unsqueeze(1)


def silence_loss_d(real, fake, d_fake_logits=None, threshold=0.5):
    """Matches the share of loud content, so fakes are neither all silence nor all noise."""
    return match_statistics(loud_share(real, threshold), loud_share(fake, threshold), d_fake_logits)


def compute_std_loss_d(real, fake, d_fake_logits=None, keys=33):
    """Matches the loudness envelope: the standard deviation of every segment (the seed used only the last)."""
    return match_statistics(segment_std(real.float(), keys), segment_std(fake.float(), keys), d_fake_logits)


def spectral_distribution(x, bands=64):
    """(B, C, T) -> (B, bands): each sample's power spectrum, summed into bands and normalized to 1."""
    power = torch.fft.rfft(x.float(), dim=-1).abs().pow(2).mean(dim=1)  # (B, F)
    usable = power.shape[-1] // bands * bands
    if usable == 0:
        raise ValueError(f"{x.shape[-1]} samples are too few for {bands} spectral bands")
    banded = power[:, :usable].unflatten(-1, (bands, -1)).sum(dim=-1) + EPS
    return banded / banded.sum(dim=-1, keepdim=True)


def batch_diversity(x, bands=64):
    """(B, C, T) -> (B,): each sample's mean Jensen-Shannon divergence to the other samples in its batch.

    Jensen-Shannon rather than plain KL: it is symmetric and bounded by ln 2, so this term cannot
    swamp the discriminator's loss (symmetric KL between real spectra reached 12 in a tiny run).
    """
    p = spectral_distribution(x, bands)
    pi, pj = p.unsqueeze(1), p.unsqueeze(0)  # (B, 1, bands), (1, B, bands)
    m = 0.5 * (pi + pj)
    divergence = 0.5 * (pi * (pi / m).log() + pj * (pj / m).log()).sum(dim=-1)  # (B, B), zero on the diagonal
    return divergence.sum(dim=1) / max(1, p.shape[0] - 1)


def kl_loss_songs_d(real, fake, d_fake_logits=None, bands=64):
    """Matches diversity within a batch (against mode collapse): how different fakes are from one another,
    against how different real songs are. Zero when either batch has a single sample."""
    if real.shape[0] < 2 or fake.shape[0] < 2:
        return fake.float().sum() * 0  # nothing to compare; keeps the graph
    real_diversity = batch_diversity(real, bands).mean().reshape(1, 1)
    return match_statistics(real_diversity, batch_diversity(fake, bands).unsqueeze(1), d_fake_logits)


# ---------------------------------------------------------------------------------------------
# Adversarial losses: bce (the seed's, with one-sided label smoothing), hinge, lsgan


ADVERSARIAL_KINDS = ("bce", "hinge", "lsgan")


def discriminator_adversarial_loss(real_logits, fake_logits, kind="bce", smoothing=0.0):
    """Teaches the discriminator to tell real from fake. For bce this is the mean of the real and fake
    BCE, so a confused discriminator scores ln 2 = 0.693, as the health table expects."""
    real_logits, fake_logits = real_logits.float(), fake_logits.float()
    if kind == "bce":
        real = F.binary_cross_entropy_with_logits(real_logits, torch.full_like(real_logits, 1 - smoothing))
        fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
        return 0.5 * (real + fake)
    if kind == "hinge":
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
    if kind == "lsgan":
        return (real_logits - 1).pow(2).mean() + fake_logits.pow(2).mean()
    raise ValueError(f"adversarial loss kind must be one of {ADVERSARIAL_KINDS}, got {kind!r}")


def generator_adversarial_loss(fake_logits, kind="bce"):
    """Teaches the generator to be taken for real."""
    fake_logits = fake_logits.float()
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
    if kind == "hinge":
        return -fake_logits.mean()
    if kind == "lsgan":
        return (fake_logits - 1).pow(2).mean()
    raise ValueError(f"adversarial loss kind must be one of {ADVERSARIAL_KINDS}, got {kind!r}")


def r1_penalty(real_logits, real, scale=1.0):
    """R1 (Mescheder et al. 2018): half the mean squared norm of D's gradient at the real samples, which
    `real` must require. Keeps D smooth where the data is, so it cannot overfit the real set.

    Under float16 autocast, pass the GradScaler's scale: the gradient is taken of the scaled logits, so small
    gradients do not flush to zero in float16, and then divided back (as StyleGAN2-ADA does)."""
    grad, = torch.autograd.grad(real_logits.float().sum() * scale, real, create_graph=True)
    return 0.5 * (grad.float() / scale).pow(2).flatten(1).sum(dim=1).mean()


# ---------------------------------------------------------------------------------------------
# The sums, as the config weights them. A weight of 0 skips computing the term.


# The statistic-matching terms, (real, fake, d_fake_logits or None, keys) -> loss, which the discriminator
# weighs as "d_<name>" (each fake's gap weighted by its belief that the fake is real).
STATISTIC_TERMS = {
    "melody": lambda real, fake, logits, keys: melody_loss_d(real, fake, logits, keys=keys),
    "silence": lambda real, fake, logits, keys: silence_loss_d(real, fake, logits),
    "std": lambda real, fake, logits, keys: compute_std_loss_d(real, fake, logits, keys=keys),
    "kl_songs": lambda real, fake, logits, keys: kl_loss_songs_d(real, fake, logits),
}


def generator_loss(fake, target, mu, logvar, fake_logits, weights, keys=33, kind="bce", stft=None,
                   real_features=None, fake_features=None):
    """(total, {name: term}) for the generator. stft is a MultiResolutionSTFTLoss, needed when its weight is set;
    the features come from the discriminator, needed for feature matching."""
    w = weights.get
    terms = {}
    if w("recon", 0):
        terms["recon"] = reconstruction_loss(fake, target)
    if w("adversarial", 0):
        terms["adversarial"] = generator_adversarial_loss(fake_logits, kind)
    if w("kl", 0):
        terms["kl"] = kl_divergence_loss(mu, logvar)
    if w("stft", 0):
        terms["stft"] = stft(fake, target)
    if w("feature_matching", 0):
        terms["feature_matching"] = feature_matching_loss(real_features, fake_features)
    total = sum(weights[name] * term for name, term in terms.items())
    return total, terms


def discriminator_loss(real, fake, real_logits, fake_logits, weights, keys=33, kind="bce", smoothing=0.0):
    """(total, {name: term}) for the discriminator: the adversarial loss plus the weighted statistic terms,
    each weighted per fake by the discriminator's belief that it is real."""
    w = weights.get
    terms = {"adversarial": discriminator_adversarial_loss(real_logits, fake_logits, kind, smoothing)}
    fake = fake.detach()
    for name, statistic in STATISTIC_TERMS.items():
        if w(f"d_{name}", 0):
            terms[name] = statistic(real, fake, fake_logits, keys)
    total = terms["adversarial"] + sum(weights["d_" + name] * term for name, term in terms.items() if name != "adversarial")
    return total, terms
