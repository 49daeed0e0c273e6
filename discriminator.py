"""MusiGAN's discriminators: the seed's (strided residual convolutions, then minibatch discrimination) on
waveforms or on latent windows, and the field's waveform and spectrogram discriminators.

    from discriminator import Discriminator_with_mdisc
    disc = build_discriminator(config)                        # latent: LatentDiscriminator, judges (B, frames, latent_dim)
    disc = Discriminator_with_mdisc(input_dim=2, n_channels=128, seq_len=16500)
    logits = disc(waveforms)                                   # (B, 2, 16500) -> (B, 1)
    logits, features = disc(waveforms, return_features=True)   # features: one tensor per block
"""

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from config_reader import judged_frames

FOLD = 4  # input samples folded into channels before the first convolution
STRIDE = 4


class DownBlock(nn.Module):
    """(B, C_in, L) -> (B, C_out, ceil(L / stride)): strided conv + conv, with an average-pool residual path."""

    def __init__(self, in_channels, out_channels, stride):
        super().__init__()
        self.stride = stride
        self.conv1 = spectral_norm(nn.Conv1d(in_channels, out_channels, 2 * stride + 1, stride=stride, padding=stride))
        self.conv2 = spectral_norm(nn.Conv1d(out_channels, out_channels, 3, padding=1))
        self.skip = spectral_norm(nn.Conv1d(in_channels, out_channels, 1))

    def forward(self, x):
        h = F.leaky_relu(self.conv2(F.leaky_relu(self.conv1(x), 0.2)), 0.2)
        return h + self.skip(F.avg_pool1d(x, self.stride, ceil_mode=True))


class MinibatchDiscrimination(nn.Module):
    """Salimans et al. (2016): for each sample, how close it is to the others in the batch, in
    `kernels` learned projections, averaged over the others. A generator that collapses to one output
    makes these approach 1."""

    def __init__(self, in_features, kernels=16, kernel_dim=8):
        super().__init__()
        self.kernels, self.kernel_dim = kernels, kernel_dim
        self.projection = nn.Parameter(torch.randn(in_features, kernels * kernel_dim) * (1 / math.sqrt(in_features)))

    def forward(self, features):  # (B, A) -> (B, kernels)
        batch = features.shape[0]
        if batch < 2:
            warnings.warn("minibatch discrimination compares the samples of a batch, and a batch of 1 has nothing "
                          "to compare: its features are zero. Use a batch size of at least 2 when training.",
                          stacklevel=3)
            return features.new_zeros(batch, self.kernels)
        m = (features @ self.projection).view(batch, self.kernels, self.kernel_dim)
        distance = (m.unsqueeze(0) - m.unsqueeze(1)).abs().sum(-1)  # (B, B, kernels), L1 between samples
        # The mean similarity to the others (minus each sample's similarity to itself), in [0, 1]: a sum,
        # as in the paper, grows with the batch and at initialization pushed every logit to about -6.5.
        return (torch.exp(-distance.float()).sum(dim=1) - 1) / (batch - 1)


class Discriminator_with_mdisc(nn.Module):  # noqa: N801  (public name, kept for users' checkpoints)
    """Waveform (B, input_dim, seq_len) -> one logit per sample (B, 1): high means "real".

    The input is folded FOLD samples to a frame, then stride-STRIDE residual blocks widen it towards
    n_channels until at most 128 frames remain. The mean and standard deviation of each channel over
    time, with the minibatch-discrimination features beside them, feed a linear layer. Every layer
    but the minibatch projection is spectrally normalized.
    """

    def __init__(self, input_dim=2, n_channels=128, seq_len=16500, mdisc_kernels=16, mdisc_kernel_dim=8,
                 use_minibatch_discrimination=True, *, fold=FOLD, stride=STRIDE, max_frames=128, min_width=8):
        super().__init__()
        for name, value in (("input_dim", input_dim), ("n_channels", n_channels), ("seq_len", seq_len)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if seq_len < fold * stride:
            raise ValueError(f"seq_len must be at least {fold * stride} samples for the discriminator, got {seq_len}")
        self.input_dim, self.seq_len, self.fold = input_dim, seq_len, fold
        frames = math.ceil(seq_len / fold)
        n_blocks = max(1, math.ceil(math.log(frames / max_frames, stride))) if frames > max_frames else 1
        widths = [max(min_width, n_channels // 2 ** (n_blocks - i)) for i in range(n_blocks)] + [n_channels]
        self.stem = spectral_norm(nn.Conv1d(input_dim * fold, widths[0], 7, padding=3))
        self.blocks = nn.ModuleList(DownBlock(widths[i], widths[i + 1], stride) for i in range(n_blocks))
        self.mdisc = (MinibatchDiscrimination(2 * n_channels, mdisc_kernels, mdisc_kernel_dim)
                      if use_minibatch_discrimination else None)
        self.head = spectral_norm(nn.Linear(2 * n_channels + (mdisc_kernels if self.mdisc else 0), 1))

    def get_intermediate_features(self, x):
        """The output of the stem and of each block, [(B, C_i, L_i), ...]: what feature matching compares."""
        if x.dim() != 3 or x.shape[1] != self.input_dim:
            raise ValueError(f"expected waveforms shaped (batch, {self.input_dim}, samples), got {tuple(x.shape)}")
        batch, channels, length = x.shape
        padded = F.pad(x, (0, -length % self.fold))
        h = padded.view(batch, channels, -1, self.fold).transpose(2, 3).reshape(batch, channels * self.fold, -1)
        features = [F.leaky_relu(self.stem(h), 0.2)]
        for block in self.blocks:
            features.append(block(features[-1]))
        return features

    def forward(self, x, return_features=False):
        features = self.get_intermediate_features(x)
        last = features[-1].float()
        pooled = torch.cat([last.mean(dim=2), last.std(dim=2, correction=0)], dim=1)  # (B, 2 * n_channels)
        if self.mdisc is not None:
            pooled = torch.cat([pooled, self.mdisc(pooled)], dim=1)
        logits = self.head(pooled)  # (B, 1)
        return (logits, features) if return_features else logits


# ---------------------------------------------------------------------------------------------
# The field's discriminators, used together with (or instead of) the seed's when the config enables them


class ScaleDiscriminator(nn.Module):
    """MelGAN's waveform discriminator at one scale: wide grouped strided convolutions, a logit per frame."""

    def __init__(self, input_dim, width=16, max_width=256):
        super().__init__()
        w = [width, min(width * 4, max_width), min(width * 16, max_width)]
        self.layers = nn.ModuleList([
            spectral_norm(nn.Conv1d(input_dim, w[0], 15, padding=7)),
            spectral_norm(nn.Conv1d(w[0], w[1], 41, stride=4, padding=20, groups=4)),
            spectral_norm(nn.Conv1d(w[1], w[2], 41, stride=4, padding=20, groups=16)),
            spectral_norm(nn.Conv1d(w[2], w[2], 5, padding=2)),
        ])
        self.out = spectral_norm(nn.Conv1d(w[2], 1, 3, padding=1))

    def forward(self, x):
        features = []
        for layer in self.layers:
            x = F.leaky_relu(layer(x), 0.2)
            features.append(x)
        return self.out(x).flatten(1), features  # (B, frames)


class MultiScaleDiscriminator(nn.Module):
    """Three ScaleDiscriminators on the waveform at full, half and quarter rate (MelGAN, HiFi-GAN)."""

    def __init__(self, input_dim, width=16, scales=3):
        super().__init__()
        self.scales = nn.ModuleList(ScaleDiscriminator(input_dim, width) for _ in range(scales))

    def forward(self, x):
        logits, features = [], []
        for i, scale in enumerate(self.scales):
            if i:
                x = F.avg_pool1d(x, 4, stride=2, padding=1)
            out, feats = scale(x)
            logits.append(out)
            features += feats
        return torch.cat(logits, dim=1), features


class STFTDiscriminator(nn.Module):
    """2-D convolutions over the log-magnitude spectrogram of each channel at one resolution (UnivNet, DAC)."""

    def __init__(self, input_dim, n_fft, width=16):
        super().__init__()
        self.n_fft = n_fft
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.layers = nn.ModuleList([
            spectral_norm(nn.Conv2d(input_dim, width, (3, 9), padding=(1, 4))),
            spectral_norm(nn.Conv2d(width, width, (3, 9), stride=(1, 2), padding=(1, 4))),
            spectral_norm(nn.Conv2d(width, width, (3, 9), stride=(1, 2), padding=(1, 4))),
            spectral_norm(nn.Conv2d(width, width, (3, 3), padding=1)),
        ])
        self.out = spectral_norm(nn.Conv2d(width, 1, (3, 3), padding=1))

    def forward(self, x):
        batch, channels, length = x.shape
        with torch.autocast(x.device.type, enabled=False):  # the STFT runs in float32
            spec = torch.stft(x.float().reshape(batch * channels, length), self.n_fft, self.n_fft // 4,
                              window=self.window, return_complex=True)
            h = torch.log1p(spec.abs()).view(batch, channels, *spec.shape[1:]).transpose(2, 3)  # (B, C, frames, bins)
        features = []
        for layer in self.layers:
            h = F.leaky_relu(layer(h), 0.2)
            features.append(h)
        return self.out(h).flatten(1), features


class MultiResolutionSTFTDiscriminator(nn.Module):
    def __init__(self, input_dim, fft_sizes=(256, 512, 1024), width=16):
        super().__init__()
        self.resolutions = nn.ModuleList(STFTDiscriminator(input_dim, n, width) for n in fft_sizes)

    def forward(self, x):
        logits, features = [], []
        for resolution in self.resolutions:
            out, feats = resolution(x)
            logits.append(out)
            features += feats
        return torch.cat(logits, dim=1), features


class MultiDiscriminator(nn.Module):
    """Several discriminators as one: logits (B, K) side by side, features one list. The adversarial losses
    average over all K logits; a per-sample verdict is the mean logit of its row."""

    def __init__(self, members):
        super().__init__()
        self.members = nn.ModuleDict(members)

    @property
    def mdisc(self):  # minibatch discrimination, if the seed's discriminator is a member
        seed = self.members["waveform_mdisc"] if "waveform_mdisc" in self.members else None
        return seed.mdisc if seed is not None else None

    def get_intermediate_features(self, x):
        return self(x, return_features=True)[1]

    def forward(self, x, return_features=False):
        logits, features = [], []
        for member in self.members.values():
            if isinstance(member, Discriminator_with_mdisc):
                out, feats = member(x, return_features=True)
            else:
                out, feats = member(x)
            logits.append(out.flatten(1))
            features += feats
        logits = torch.cat(logits, dim=1)
        return (logits, features) if return_features else logits


def spread(x, dim=1, eps=1e-6):
    """The standard deviation over `dim`, with an epsilon inside the root: a channel that stands still gives
    finite gradients, including R1's second derivative (torch.std's is NaN at 0)."""
    return (x.var(dim=dim, correction=0) + eps).sqrt()


class MotionCritic(nn.Module):
    """How a latent window moves, judged as a whole: for each channel, the mean size and the spread of its change
    over lags of 1 to 16 frames (43 ms to 0.7 s at 23.4 frames a second), and how far its mean drifts between the
    window's quarters (over seconds), as logs, into a small spectrally normalized MLP -> (B, 1).

    The convolutional critic pools over at most 8 positions, so a window that stands still scores like one that
    moves; this branch sees the movement's statistics directly (issue 18: the GAN wrote one static texture)."""

    LAGS = (1, 2, 4, 8, 16)

    def __init__(self, latent_dim, frames, hidden=128):
        super().__init__()
        self.lags = tuple(lag for lag in self.LAGS if lag < frames) or (1,)
        self.quarters = 4 if frames >= 8 else 1
        features = latent_dim * (2 * len(self.lags) + (self.quarters > 1))
        self.mlp = nn.Sequential(spectral_norm(nn.Linear(features, hidden)), nn.LeakyReLU(0.2),
                                 spectral_norm(nn.Linear(hidden, 1)))

    def statistics(self, z):  # (B, frames, D) -> (B, features)
        z = z.float()
        stats = []
        for lag in self.lags:
            step = z[:, lag:] - z[:, :-lag]  # (B, frames - lag, D)
            stats += [step.abs().mean(dim=1), spread(step)]
        if self.quarters > 1:
            usable = z.shape[1] // self.quarters * self.quarters
            means = z[:, :usable].unflatten(1, (self.quarters, -1)).mean(dim=2)  # (B, quarters, D)
            stats.append(spread(means))
        return torch.log(torch.cat(stats, dim=1) + 1e-3)

    def forward(self, z):
        return self.mlp(self.statistics(z))


class LatentDiscriminator(nn.Module):
    """The latent GAN's critic: the seed's discriminator, minibatch discrimination included, on latent windows.

    forward(z): standardized latents (B, frames, latent_dim) -> logits (B, 1). The window is read as
    latent_dim channels over time, without folding, and halved in time by each block down to 8 frames or
    fewer. `audio`, when the config enables an audio discriminator, judges decoded waveforms (B, C, T).
    """

    def __init__(self, latent_dim, frames, n_channels=128, mdisc_kernels=16, mdisc_kernel_dim=8,
                 use_minibatch_discrimination=True, audio=None, motion=False):
        super().__init__()
        self.latent = Discriminator_with_mdisc(latent_dim, n_channels, frames, mdisc_kernels, mdisc_kernel_dim,
                                               use_minibatch_discrimination, fold=1, stride=2, max_frames=8,
                                               min_width=max(8, n_channels // 2))
        self.audio = audio
        self.motion = MotionCritic(latent_dim, frames) if motion else None

    @property
    def mdisc(self):
        return self.latent.mdisc

    def forward(self, z, return_features=False):
        out = self.latent(z.transpose(1, 2), return_features=return_features)
        if self.motion is None:
            return out
        logits, features = out if return_features else (out, None)
        logits = logits + self.motion(z).to(logits.dtype)  # one verdict: the window's content and its movement
        return (logits, features) if return_features else logits


def build_discriminator(config):
    """The discriminator the config asks for. model.architecture latent: a LatentDiscriminator (with an audio
    discriminator inside when multi_scale or multi_resolution_stft is on). seed: the seed's alone (as before),
    or several as a MultiDiscriminator."""
    d, m = config["discriminator"], config["model"]
    if m["architecture"] == "latent":
        audio = {}
        if d["multi_scale"]:
            audio["multi_scale"] = MultiScaleDiscriminator(m["sound_channels"], d["width"])
        if d["multi_resolution_stft"]:
            audio["multi_resolution_stft"] = MultiResolutionSTFTDiscriminator(m["sound_channels"], width=d["width"])
        return LatentDiscriminator(config["vae"]["latent_dim"], judged_frames(m), d["n_channels"],
                                   d["mdisc_kernels"], d["mdisc_kernel_dim"], d["use_minibatch_discrimination"],
                                   MultiDiscriminator(audio) if audio else None, motion=d["motion"])
    members = {}
    if d["use_waveform_mdisc"]:
        members["waveform_mdisc"] = Discriminator_with_mdisc(m["sound_channels"], d["n_channels"], m["seq_len"],
                                                             d["mdisc_kernels"], d["mdisc_kernel_dim"],
                                                             d["use_minibatch_discrimination"])
    if d["multi_scale"]:
        members["multi_scale"] = MultiScaleDiscriminator(m["sound_channels"], d["width"])
    if d["multi_resolution_stft"]:
        members["multi_resolution_stft"] = MultiResolutionSTFTDiscriminator(m["sound_channels"], width=d["width"])
    if not members:
        raise ValueError("discriminator: enable at least one of use_waveform_mdisc, multi_scale, multi_resolution_stft")
    if list(members) == ["waveform_mdisc"]:
        return members["waveform_mdisc"]  # the seed's layout: its checkpoints load as before
    return MultiDiscriminator(members)
