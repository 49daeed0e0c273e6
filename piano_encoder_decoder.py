"""The variational encoder and waveform decoder inside MusiGAN's generator.

    from piano_encoder_decoder import VariationalEncoderDecoder
    ved = VariationalEncoderDecoder(input_dim=2, n_channels=128, n_seq=500, latent_dim=512,
                                    song_duration=16500, noise_dim=48000)
    mu, logvar = ved.encoder(noise)            # noise (B, 2, 48000) -> each (B, 500, 512)
    z = ved.reparameterize(mu, logvar)         # (B, 500, 512)
    waveform = ved.decoder(z)                  # (B, 2, 16500)

The encoder folds the input into n_seq frames (space-to-depth) and maps each frame to a Gaussian in
latent space. The decoder stretches the latent sequence to song_duration with sub-pixel convolutions
(depth-to-space). No convolution runs at the audio's full length: on a CPU, a narrow convolution over
16500 samples ran at 4 GFLOP/s where a matmul runs at 200. Most of the generator's compute therefore
stays in the transformer between the two.
"""

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

LOGVAR_RANGE = (-12.0, 8.0)  # exp(-12/2) .. exp(8/2): keeps reparameterize and KL finite


def check_positive_ints(**values):
    """Raise ValueError naming the first value that is not a positive integer."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


class NoiseEncoder(nn.Module):
    """(B, C, noise_dim) -> mu, logvar, each (B, n_seq, latent_dim)."""

    def __init__(self, input_dim, n_channels, n_seq, latent_dim, noise_dim):
        super().__init__()
        if noise_dim < n_seq:
            raise ValueError(f"noise_dim ({noise_dim}) must be at least latent_seq_len ({n_seq}): each "
                             f"latent frame is made from noise_dim // latent_seq_len input samples")
        self.n_seq = n_seq
        self.fold = noise_dim // n_seq  # input samples per latent frame; the remainder is unused
        self.net = nn.Sequential(
            nn.Conv1d(input_dim * self.fold, n_channels, 3, padding=1), nn.GELU(),
            nn.Conv1d(n_channels, n_channels, 3, padding=1), nn.GELU(),
        )
        self.to_gaussian = nn.Linear(n_channels, 2 * latent_dim)

    def forward(self, x):
        batch, channels, _ = x.shape
        frames = x[..., :self.fold * self.n_seq].reshape(batch, channels, self.n_seq, self.fold)
        frames = frames.permute(0, 1, 3, 2).reshape(batch, channels * self.fold, self.n_seq)  # (B, C*fold, n_seq)
        h = self.net(frames).transpose(1, 2)  # (B, n_seq, n_channels)
        mu, logvar = self.to_gaussian(h).chunk(2, dim=-1)
        return mu, logvar.clamp(*LOGVAR_RANGE)


def fast_dropout(x, p, training=True):
    """Dropout with p rounded to 1/65536, whose mask costs a quarter of nn.Dropout's RNG time on a CPU.

    Each random int64 gives three uniform 16-bit words (its top word is not uniform: int64 random_
    leaves the sign bit clear). In the seed, dropout's RNG took 23 % of an iteration.
    """
    if not training or p == 0:
        return x
    threshold = round(p * 65536)
    n = x.numel()
    words = torch.empty((n + 2) // 3, dtype=torch.int64, device=x.device).random_()
    keep = words.view(torch.int16).view(-1, 4)[:, :3] >= threshold - 32768  # (ceil(n/3), 3), contiguous
    del words
    return x.mul(keep.view(-1)[:n].view(x.shape)).mul_(65536 / (65536 - threshold))


def upsample_factors(ratio, stages=3, max_factor=8):
    """`stages` integer factors, each at most max_factor, whose product covers `ratio` with little waste.

    Among the products within 10 % of the smallest one that reaches the ratio, the most even split wins.
    The largest factor comes first, where the layers are widest. (33 -> (4, 3, 3): 36x, 8 % cropped.)
    """
    need = max(1, math.ceil(ratio - 1e-9))
    candidates = [c for c in itertools.product(range(1, max_factor + 1), repeat=stages) if math.prod(c) >= need]
    if not candidates:
        raise ValueError(f"seq_len / latent_seq_len = {ratio:.1f} is more than the decoder can stretch "
                         f"({max_factor ** stages}x); raise latent_seq_len or lower seq_len")
    smallest = min(math.prod(c) for c in candidates)
    return min((c for c in candidates if math.prod(c) <= 1.1 * smallest),
               key=lambda c: (max(c), math.prod(c), tuple(-f for f in c)))


def depth_to_space(x, factor):
    """(B, C * factor, L) -> (B, C, L * factor): each input step becomes `factor` output steps."""
    batch, channels, length = x.shape
    return x.view(batch, channels // factor, factor, length).transpose(2, 3).reshape(batch, -1, length * factor)


class UpsampleBlock(nn.Module):
    """Stretch (B, C_in, L) to (B, C_out, L * factor): a sub-pixel convolution, plus a nearest-neighbour
    residual path. Every convolution runs at the shorter length, where it is cheap."""

    def __init__(self, in_channels, out_channels, factor, kernel_size=5):
        super().__init__()
        self.factor = factor
        self.conv = nn.Conv1d(in_channels, out_channels * factor, kernel_size, padding=kernel_size // 2)
        self.skip = nn.Conv1d(in_channels, out_channels, 1)

    def forward(self, x):
        up = F.gelu(depth_to_space(self.conv(x), self.factor))
        return up + self.skip(x).repeat_interleave(self.factor, dim=2)


class GaussianEnvelope(nn.Module):
    """A loudness envelope per channel: a sum of num_of_gaussians bumps whose centres, widths and
    heights are predicted from the latent sequence.

    At initialization the bumps are evenly spaced and as wide as their spacing, so the envelope is
    close to 1 over the whole clip. Widths are bounded below by an eighth of the spacing, so an
    envelope can shape phrases but never collapse into clicks.
    """

    def __init__(self, latent_dim, channels, num_of_gaussians, length):
        super().__init__()
        self.channels, self.count, self.length = channels, num_of_gaussians, length
        self.spacing = length / num_of_gaussians
        self.min_width = self.spacing / 8
        self.proj = nn.Linear(latent_dim, channels * num_of_gaussians * 3)
        nn.init.normal_(self.proj.weight, std=1e-3)
        centres = (torch.arange(num_of_gaussians) + 0.5) / num_of_gaussians
        bias = torch.stack([
            torch.logit(centres),  # centre, as a fraction of the clip, through a sigmoid
            torch.full_like(centres, math.log(math.expm1(1 - 1 / 8))),  # width = spacing at init
            torch.full_like(centres, math.log(math.expm1(1 / math.sqrt(2 * math.pi)))),  # sum of bumps ~ 1
        ], dim=-1)  # (count, 3)
        with torch.no_grad():
            self.proj.bias.copy_(bias.repeat(channels, 1).flatten())

    def forward(self, z):
        batch = z.shape[0]
        params = self.proj(z.mean(dim=1)).float().view(batch, self.channels, self.count, 1, 3)
        centre = torch.sigmoid(params[..., 0]) * self.length
        width = self.min_width + F.softplus(params[..., 1]) * self.spacing
        height = F.softplus(params[..., 2])
        # The bumps are at least min_width wide, so a grid of 64 points per bump, linearly interpolated
        # to every sample, is exact to a fraction of a percent at a fraction of the memory.
        points = min(self.length, 64 * self.count)
        t = torch.linspace(0, self.length - 1, points, device=z.device)  # (points,)
        bumps = height * torch.exp(-0.5 * ((t - centre) / width) ** 2)  # (B, C, count, points)
        envelope = bumps.sum(dim=2)  # (B, C, points)
        if points == self.length:
            return envelope
        return F.interpolate(envelope, size=self.length, mode="linear", align_corners=True)  # (B, C, T)


class WaveDecoder(nn.Module):
    """(B, n_seq, latent_dim) -> waveform (B, output_dim, song_duration), unbounded (matches standardized data).

    Two sub-pixel stages, each half as wide as the last, then a sub-pixel output layer stretch the
    latent sequence by upsample_factors(song_duration / n_seq); the few samples past song_duration are
    cropped.
    """

    def __init__(self, latent_dim, n_channels, n_seq, output_dim, song_duration, use_gaussians, num_of_gaussians):
        super().__init__()
        self.song_duration = song_duration
        *hidden, self.out_factor = upsample_factors(song_duration / n_seq)
        widths = [n_channels] + [max(8, n_channels // 2 ** (i + 1)) for i in range(len(hidden))]
        self.from_latent = nn.Linear(latent_dim, n_channels)
        self.blocks = nn.ModuleList(UpsampleBlock(widths[i], widths[i + 1], f) for i, f in enumerate(hidden))
        self.to_wave = nn.Conv1d(widths[-1], output_dim * self.out_factor, 7, padding=3)
        self.learnable_filter = (GaussianEnvelope(latent_dim, output_dim, num_of_gaussians, song_duration)
                                 if use_gaussians else None)

    def forward(self, z):
        h = self.from_latent(z).transpose(1, 2)  # (B, n_channels, n_seq)
        for block in self.blocks:
            h = block(h)
        wave = depth_to_space(self.to_wave(h), self.out_factor)[..., :self.song_duration]  # (B, output_dim, T)
        if self.learnable_filter is not None:
            wave = wave * self.learnable_filter(z).to(wave.dtype)
        return wave


class VariationalEncoderDecoder(nn.Module):
    """A VAE over waveforms: encoder(x) -> (mu, logvar), reparameterize, decoder(z) -> waveform.

    input_dim: audio channels in and out; n_channels: convolution width; n_seq: latent frames;
    latent_dim: size of each latent frame; song_duration: output samples; noise_dim: input samples
    (defaults to song_duration); use_gaussians / num_of_gaussians: the loudness envelope.
    """

    def __init__(self, input_dim, n_channels, n_seq, latent_dim, song_duration, dropout=0.1,
                 use_gaussians=True, num_of_gaussians=6, noise_dim=None):
        super().__init__()
        noise_dim = song_duration if noise_dim is None else noise_dim
        check_positive_ints(input_dim=input_dim, n_channels=n_channels, latent_seq_len=n_seq, latent_dim=latent_dim,
                            seq_len=song_duration, noise_dim=noise_dim)
        if use_gaussians:
            check_positive_ints(num_of_gaussians=num_of_gaussians)
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.dropout = dropout  # used by the transformer between encoder and decoder
        self.encoder = NoiseEncoder(input_dim, n_channels, n_seq, latent_dim, noise_dim)
        self.decoder = WaveDecoder(latent_dim, n_channels, n_seq, input_dim, song_duration,
                                   use_gaussians, num_of_gaussians)

    @staticmethod
    def reparameterize(mu, logvar):
        """A sample of N(mu, exp(logvar)) that gradients flow through."""
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)

    def forward(self, x):
        mu, logvar = self.encoder(x)
        return mu, logvar, self.decoder(self.reparameterize(mu, logvar))
