"""MusiGAN's waveform discriminator: strided residual convolutions, then minibatch discrimination.

    from discriminator import Discriminator_with_mdisc
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
                 use_minibatch_discrimination=True):
        super().__init__()
        for name, value in (("input_dim", input_dim), ("n_channels", n_channels), ("seq_len", seq_len)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if seq_len < FOLD * STRIDE:
            raise ValueError(f"seq_len must be at least {FOLD * STRIDE} samples for the discriminator, got {seq_len}")
        self.input_dim, self.seq_len = input_dim, seq_len
        frames = math.ceil(seq_len / FOLD)
        n_blocks = max(1, math.ceil(math.log(frames / 128, STRIDE))) if frames > 128 else 1
        widths = [max(8, n_channels // 2 ** (n_blocks - i)) for i in range(n_blocks)] + [n_channels]
        self.stem = spectral_norm(nn.Conv1d(input_dim * FOLD, widths[0], 7, padding=3))
        self.blocks = nn.ModuleList(DownBlock(widths[i], widths[i + 1], STRIDE) for i in range(n_blocks))
        self.mdisc = (MinibatchDiscrimination(2 * n_channels, mdisc_kernels, mdisc_kernel_dim)
                      if use_minibatch_discrimination else None)
        self.head = spectral_norm(nn.Linear(2 * n_channels + (mdisc_kernels if self.mdisc else 0), 1))

    def get_intermediate_features(self, x):
        """The output of the stem and of each block, [(B, C_i, L_i), ...]: what feature matching compares."""
        if x.dim() != 3 or x.shape[1] != self.input_dim:
            raise ValueError(f"expected waveforms shaped (batch, {self.input_dim}, samples), got {tuple(x.shape)}")
        batch, channels, length = x.shape
        padded = F.pad(x, (0, -length % FOLD))
        h = padded.view(batch, channels, -1, FOLD).transpose(2, 3).reshape(batch, channels * FOLD, -1)
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
