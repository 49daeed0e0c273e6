"""The VAE of the user's music (stage one), and the seed's noise encoder and waveform decoder.

    from piano_encoder_decoder import VariationalEncoderDecoder
    vae = VariationalEncoderDecoder(input_dim=2, n_channels=256, latent_dim=64)      # the spectral VAE
    mu, logvar = vae.encoder(chunk)            # chunk (B, 2, T) -> each (B, T // 512, 64)
    z = vae.reparameterize(mu, logvar)
    recon = vae.decoder(z)                     # (B, 2, T): the same chunk, rebuilt

    seed = VariationalEncoderDecoder(2, 128, 500, 512, 16500, noise_dim=48000, architecture="seed")
    mu, logvar = seed.encoder(noise)           # noise (B, 2, 48000) -> each (B, 500, 512)
    waveform = seed.decoder(z)                 # (B, 2, 16500)

architecture="stft" (the default) is a real VAE of audio. The encoder reads the log-magnitude STFT of
every channel (n_fft, hop_length), runs convolutions at the STFT frame rate, and strides down by
`downsample` to the latent rate: at 12 kHz, hop 128 and downsample 4 give 23.4 latent frames per second.
The decoder mirrors it: convolutions at the latent rate, windowed-sinc interpolation up to the frame
rate followed by a convolution there (BandlimitedUpsample: no loudness dip between latent frames), then,
per channel and bin, a log-magnitude and a phase, which torch's inverse FFT and an overlap-add turn
into samples. The phase is the angle of a bias-free 2-vector, relative to the rotation of a tone at the
centre of its bin (SpectralCodec.bin_advance); predicted absolutely, a slowly changing phase puts lines
at multiples of sample_rate / hop_length in every output. Every convolution runs at the frame or latent
rate, never at the audio rate, which is what makes decoding hundreds of times faster than real time on
a CPU.

architecture="seed" is the seed's generator path (configs/seed.yaml): the encoder folds white noise into
n_seq frames (space-to-depth) and the decoder stretches the latent sequence to song_duration with
sub-pixel convolutions (depth-to-space). Its sub-pixel output layer has no layer at the output rate,
so it stamps lines at k * sample_rate / factor; it is kept only so the seed's preset behaves as before.
"""

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from utilities import shared_randn

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


# ---------------------------------------------------------------------------------------------
# The spectral VAE (architecture="stft")


class ConvBlock(nn.Module):
    """x + pointwise(gelu(pointwise(norm(depthwise(x))))): a ConvNeXt-style residual block (Vocos) at one rate.

    The depthwise convolution mixes neighbouring frames cheaply; the two pointwise layers are matrix
    multiplies, the fastest thing a CPU or GPU does. The residual branch starts small (layer scale).
    """

    def __init__(self, width, kernel_size=7, dilation=1, expansion=2):
        super().__init__()
        self.depthwise = nn.Conv1d(width, width, kernel_size, padding=dilation * (kernel_size // 2),
                                   dilation=dilation, groups=width)
        self.norm = nn.LayerNorm(width)
        self.expand = nn.Linear(width, expansion * width)
        self.contract = nn.Linear(expansion * width, width)
        self.scale = nn.Parameter(torch.full((width,), 0.1))

    def forward(self, x):  # (B, width, frames)
        h = self.norm(self.depthwise(x).transpose(1, 2))  # (B, frames, width)
        h = self.contract(F.gelu(self.expand(h))) * self.scale
        return x + h.transpose(1, 2)


class BandlimitedUpsample(nn.Module):
    """(B, C, L) -> (B, C, L * factor) by windowed-sinc interpolation: band-limited, so it adds no pattern.

    Linear interpolation of a sequence whose neighbours are independent gives its in-between points less
    variance than the points themselves (0.53 against 1 halfway), so every decoded latent frame pulsed in
    loudness at the latent rate. Sinc interpolation keeps the variance of every output phase within 4 % of
    the others for independent inputs (a 33-tap Kaiser window per phase), and reproduces smooth inputs
    exactly, so neither kind pulses. Output frame t sits at latent time (t + 0.5) / factor - 0.5, where the
    encoder's strided convolution centres it.
    """

    def __init__(self, factor, half_width=16, beta=6.0):
        super().__init__()
        self.factor, self.half_width = factor, half_width
        offsets = torch.arange(-half_width, half_width + 1, dtype=torch.float64)  # latent frames around
        phases = ((torch.arange(factor, dtype=torch.float64) + 0.5) / factor - 0.5)[:, None]  # (factor, 1)
        x = offsets[None, :] - phases  # (factor, taps): distance from each tap to the output's position
        window = torch.special.i0(beta * torch.sqrt((1 - (x / (half_width + 1)) ** 2).clamp_min(0))) / torch.special.i0(
            torch.tensor(beta, dtype=torch.float64))
        kernel = torch.sinc(x) * window
        kernel = kernel / kernel.sum(dim=1, keepdim=True)  # a constant stays that constant at every phase
        self.register_buffer("kernel", kernel.float(), persistent=False)  # (factor, taps)

    def forward(self, x):
        batch, channels, length = x.shape
        padded = F.pad(x, (self.half_width, self.half_width), mode="replicate")
        weight = self.kernel.repeat(channels, 1).unsqueeze(1).to(x.dtype)  # (channels * factor, 1, taps)
        out = F.conv1d(padded, weight, groups=channels)  # (B, channels * factor, L): phase p of channel c
        return out.view(batch, channels, self.factor, length).transpose(2, 3).reshape(batch, channels, -1)


def conv_stack(width, layers):
    """`layers` blocks with growing dilation (1, 2, 4, ...), so the stack sees a wide context."""
    return nn.Sequential(*(ConvBlock(width, dilation=2 ** (i % 3)) for i in range(layers)))


class SpectralCodec(nn.Module):
    """The STFT and its inverse with "same" padding: T samples <-> T // hop_length frames, exactly.

    The signal is padded by (n_fft - hop_length) / 2 on each side (reflected), so frame i is centred on
    samples [i * hop, (i + 1) * hop). The inverse is an inverse real FFT, a windowed overlap-add and a
    division by the summed squared window, trimmed back to T samples (Vocos's ISTFT, padding="same").
    """

    def __init__(self, n_fft, hop_length):
        super().__init__()
        if n_fft < hop_length or (n_fft - hop_length) % 2:
            raise ValueError(f"vae.n_fft ({n_fft}) must be at least vae.hop_length ({hop_length}) and differ from "
                             f"it by an even number")
        self.n_fft, self.hop = n_fft, hop_length
        self.pad = (n_fft - hop_length) // 2
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    @property
    def bins(self):
        return self.n_fft // 2 + 1

    def bin_advance(self, frames):
        """(cos, sin) of 2 pi k hop t / n_fft, float32 (frames, bins): the phase a tone at the centre of bin k has
        in frame t.

        The decoder predicts phase relative to this. A prediction that changes slowly from frame to frame then
        means a tone near the centre of its own bin, as in real music; predicted as an absolute phase, the same
        slow change would mean a phase that repeats every frame, that is a comb of lines at multiples of
        sample_rate / hop_length in every output (the artefact of naive per-frame phase prediction).
        Computed once for the longest length asked for on this device, and sliced.
        """
        table = getattr(self, "_advance", None)
        if table is None or table[0].device != self.window.device or table[0].shape[0] < frames:
            with torch.inference_mode(False):  # a plain tensor even when first asked for while generating
                t = torch.arange(max(frames, 1024), device=self.window.device)[:, None]
                k = torch.arange(self.bins, device=self.window.device)[None, :]
                angle = 2 * math.pi * ((k * self.hop * t % self.n_fft).double() / self.n_fft)  # exact integers first
                table = self._advance = (angle.cos().float(), angle.sin().float())
        return table[0][:frames], table[1][:frames]

    def stft(self, x):
        """(B, C, T) -> complex (B, C, bins, T // hop)."""
        batch, channels, length = x.shape
        frames = length // self.hop
        x = F.pad(x.float().reshape(batch * channels, 1, length), (self.pad, self.pad), mode="reflect")
        spec = torch.stft(x[:, 0, :frames * self.hop + 2 * self.pad], self.n_fft, self.hop, window=self.window,
                          center=False, return_complex=True)
        return spec.view(batch, channels, self.bins, frames)

    def istft(self, spec):
        """complex (B, frames, C, bins) -> (B, C, frames * hop). Frames come before bins, as the decoder writes
        them, so the inverse FFTs run along the last dimension and the overlap-add needs no transposition."""
        batch, frames, channels, _ = spec.shape
        chunks = torch.fft.irfft(spec, n=self.n_fft, dim=-1) * self.window  # (B, frames, C, n_fft)
        audio = self.overlap_add(chunks)  # (B, (frames - 1) * hop + n_fft, C)
        envelope = self.overlap_add(self.window.square().expand(1, frames, 1, -1))[0, :, 0]
        keep = slice(self.pad, self.pad + frames * self.hop)
        return (audio[:, keep] / envelope[keep, None].clamp_min(1e-8)).transpose(1, 2)

    def overlap_add(self, chunks):
        """(N, frames, C, n_fft) -> (N, (frames - 1) * hop + n_fft, C): frame t added in at sample t * hop."""
        count, frames, channels, _ = chunks.shape
        total = (frames - 1) * self.hop + self.n_fft
        if self.n_fft % self.hop:  # the general case
            fold = dict(output_size=(1, total), kernel_size=(1, self.n_fft), stride=(1, self.hop))
            columns = chunks.permute(0, 2, 3, 1).reshape(count * channels, self.n_fft, frames)
            return F.fold(columns, **fold).view(count, channels, total).transpose(1, 2)
        # hop divides n_fft: each frame is n_fft / hop hop-long pieces, and piece j of frame t lands on output
        # block t + j, so the sum is n_fft / hop shifted additions (several times faster than F.fold on a CPU).
        parts = self.n_fft // self.hop
        pieces = chunks.unflatten(-1, (parts, self.hop))  # (N, frames, C, parts, hop)
        out = chunks.new_zeros(count, frames + parts - 1, self.hop, channels)
        for j in range(parts):
            out[:, j:j + frames] += pieces[:, :, :, j].transpose(2, 3)
        return out.view(count, total, channels)


class SpectralEncoder(nn.Module):
    """(B, C, T) -> mu, logvar, each (B, T // (hop_length * downsample), latent_dim)."""

    def __init__(self, codec, channels, width, latent_dim, downsample, layers):
        super().__init__()
        self.codec = codec
        self.inp = nn.Conv1d(channels * codec.bins, width, 1)
        self.frame_blocks = conv_stack(width, max(0, layers - 1))
        self.down = nn.Conv1d(width, width, 2 * downsample, stride=downsample, padding=downsample // 2)
        self.latent_blocks = conv_stack(width, layers)
        self.to_gaussian = nn.Conv1d(width, 2 * latent_dim, 1)
        self.downsample = downsample

    def forward(self, x):
        with torch.autocast(x.device.type, enabled=False):  # the STFT and its logarithm in float32
            spec = self.codec.stft(x)
            features = torch.log(spec.abs().square() + 1e-8).mul(0.5)  # log-magnitude, floored near -80 dB
        batch, channels, bins, frames = features.shape
        frames -= frames % self.downsample
        h = self.inp(features[..., :frames].reshape(batch, channels * bins, frames).to(self.inp.weight.dtype))
        h = self.latent_blocks(self.down(self.frame_blocks(h)))  # (B, width, latent frames)
        mu, logvar = self.to_gaussian(h).transpose(1, 2).chunk(2, dim=-1)
        return mu, logvar.clamp(*LOGVAR_RANGE)


class SpectralDecoder(nn.Module):
    """(B, latent frames, latent_dim) -> (B, C, frames * downsample * hop_length)."""

    def __init__(self, codec, channels, width, latent_dim, downsample, layers):
        super().__init__()
        self.codec, self.channels, self.downsample = codec, channels, downsample
        self.inp = nn.Conv1d(latent_dim, width, 3, padding=1)
        self.latent_blocks = conv_stack(width, layers)
        self.upsample = BandlimitedUpsample(downsample)
        self.up = nn.Conv1d(width, width, 3, padding=1)  # after interpolation: a convolution at the new rate
        self.frame_blocks = conv_stack(width, max(0, layers - 1))
        self.to_magnitude = nn.Conv1d(width, channels * codec.bins, 1)
        self.to_phase = nn.Conv1d(width, 2 * channels * codec.bins, 1, bias=False)  # no bias: no fixed phase
        # Magnitudes start flat and quiet: random weights here would give each bin a fixed random gain, lines
        # of up to 15 dB in the average spectrum of an untrained decoder.
        nn.init.zeros_(self.to_magnitude.weight)
        nn.init.constant_(self.to_magnitude.bias, -2.0)

    def forward(self, z):
        h = self.latent_blocks(self.inp(z.transpose(1, 2)))  # (B, width, latent frames)
        h = self.frame_blocks(self.up(self.upsample(h)))  # (B, width, frames)
        batch, _, frames = h.shape
        channels, bins = self.channels, self.codec.bins
        # Both 1x1 convolutions as one matrix product, frames first. In training, in float32, as the loss sees
        # them; when generating (no gradients), at autocast's precision like every layer before them (bfloat16
        # changes the output by -40 dB against float32, and makes generation 1.3x faster on a CPU).
        weight = torch.cat([self.to_magnitude.weight, self.to_phase.weight])[..., 0]
        bias = F.pad(self.to_magnitude.bias, (0, self.to_phase.out_channels))
        rows = h.transpose(1, 2).reshape(batch * frames, -1)
        if torch.is_grad_enabled():
            with torch.autocast(z.device.type, enabled=False):
                out = F.linear(rows.float(), weight.float(), bias.float())
        else:
            out = F.linear(rows, weight, bias)  # under the caller's autocast, if any
        out = out.view(batch, frames, -1).float()
        with torch.autocast(z.device.type, enabled=False):  # the rotation and the inverse FFT in float32
            log_magnitude = out[..., :channels * bins].unflatten(-1, (channels, bins)).clamp(max=8.0)  # e^8: loud
            x, y = out[..., channels * bins:].unflatten(-1, (channels, 2, bins)).unbind(-2)  # (B, frames, C, bins)
            # The angle of (x, y). Its gradient grows as 1 / |(x, y)|: the epsilon bounds it (training diverged
            # without it), at the price of a softer magnitude where |(x, y)| falls below 0.1.
            norm = torch.addcmul(torch.addcmul(torch.full_like(x, 1e-2), x, x), y, y)
            gain = torch.exp(log_magnitude) * torch.rsqrt(norm)
            gx, gy = gain * x, gain * y
            # magnitude x unit(x, y) x bin_advance, written in real arithmetic (3x faster than complex products)
            cos, sin = (t[:, None] for t in self.codec.bin_advance(frames))  # (frames, 1, bins)
            spec = torch.complex(torch.addcmul(gx * cos, gy, sin, value=-1), torch.addcmul(gx * sin, gy, cos))
            return self.codec.istft(spec)


class VariationalEncoderDecoder(nn.Module):
    """A VAE: encoder(x) -> (mu, logvar), reparameterize(mu, logvar) -> z, decoder(z) -> x rebuilt.

    architecture="stft" (default), the VAE of the user's music: input_dim audio channels; n_channels,
    the convolution width; latent_dim, the size of a latent frame; n_fft, hop_length and downsample set
    the latent rate (sample_rate / (hop_length * downsample) frames per second). Each half has `layers`
    residual blocks at the latent rate and layers - 1 at the STFT frame rate, where a block costs
    `downsample` times more.
    It takes any length that is a multiple of frame_samples (hop_length * downsample); song_duration, when
    given, is checked against that, and n_seq is not used.

    architecture="seed", the seed's generator path (see the module docstring): n_seq latent frames,
    song_duration output samples, noise_dim input samples (defaults to song_duration), and with
    use_gaussians a learned loudness envelope of num_of_gaussians bumps. dropout is kept for the
    transformer that the seed's generator runs between the two halves.
    """

    def __init__(self, input_dim=2, n_channels=256, n_seq=None, latent_dim=64, song_duration=None, dropout=0.1,
                 use_gaussians=False, num_of_gaussians=6, noise_dim=None, *, architecture="stft", n_fft=512,
                 hop_length=128, downsample=4, layers=3):
        super().__init__()
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.dropout = dropout
        self.architecture = architecture
        if architecture == "seed":
            noise_dim = song_duration if noise_dim is None else noise_dim
            check_positive_ints(input_dim=input_dim, n_channels=n_channels, latent_seq_len=n_seq,
                                latent_dim=latent_dim, seq_len=song_duration, noise_dim=noise_dim)
            if use_gaussians:
                check_positive_ints(num_of_gaussians=num_of_gaussians)
            self.encoder = NoiseEncoder(input_dim, n_channels, n_seq, latent_dim, noise_dim)
            self.decoder = WaveDecoder(latent_dim, n_channels, n_seq, input_dim, song_duration,
                                       use_gaussians, num_of_gaussians)
            return
        if architecture != "stft":
            raise ValueError(f"architecture must be 'stft' or 'seed', got {architecture!r}")
        check_positive_ints(input_dim=input_dim, n_channels=n_channels, latent_dim=latent_dim, n_fft=n_fft,
                            hop_length=hop_length, downsample=downsample)
        if isinstance(layers, bool) or not isinstance(layers, int) or layers < 0:
            raise ValueError(f"layers must be an integer of 0 or more, got {layers!r}")
        if use_gaussians:
            raise ValueError("use_gaussians belongs to the seed's decoder (architecture='seed'); the spectral VAE "
                             "keeps loudness through its magnitudes")
        self.frame_samples = hop_length * downsample
        if song_duration is not None and song_duration % self.frame_samples:
            raise ValueError(f"seq_len ({song_duration}) must be a multiple of hop_length x downsample "
                             f"({self.frame_samples})")
        codec = SpectralCodec(n_fft, hop_length)
        self.encoder = SpectralEncoder(codec, input_dim, n_channels, latent_dim, downsample, layers)
        self.decoder = SpectralDecoder(codec, input_dim, n_channels, latent_dim, downsample, layers)
        self.latent_dim, self.channels = latent_dim, input_dim

    @staticmethod
    def reparameterize(mu, logvar, generator=None):
        """A sample of N(mu, exp(logvar)) that gradients flow through (`generator`: a torch.Generator of its own)."""
        eps = shared_randn(mu.shape, dtype=mu.dtype, device=mu.device, generator=generator)  # this rank's rows
        return mu + eps * torch.exp(0.5 * logvar)

    def forward(self, x):
        mu, logvar = self.encoder(x)
        return mu, logvar, self.decoder(self.reparameterize(mu, logvar))

    @torch.no_grad()
    def encode_long(self, x, block_frames=1024, margin_frames=64):
        """encoder(x) for audio of any length (B, C, T), T a multiple of frame_samples, in blocks of block_frames
        latent frames. Each block is encoded with margin_frames of real context on both sides, more than the
        encoder sees, so the result matches encoding the whole signal at once: no seams, bounded memory."""
        fs = self.frame_samples
        return self._in_blocks(lambda lo, hi: self.encoder(x[..., lo * fs:hi * fs]), x.shape[-1] // fs,
                               block_frames, margin_frames, dim=1)

    @torch.no_grad()
    def decode_long(self, z, block_frames=1024, margin_frames=64):
        """decoder(z) for a latent sequence of any length (B, frames, latent_dim), in blocks, without seams."""
        fs = self.frame_samples
        return self._in_blocks(lambda lo, hi: (self.decoder(z[:, lo:hi]),), z.shape[1], block_frames, margin_frames,
                               dim=-1, scale=fs)[0]

    @staticmethod
    def _in_blocks(run, frames, block_frames, margin_frames, dim, scale=1):
        """Concatenate, along `dim`, the central part of run(lo, hi) for blocks of block_frames latent frames."""
        pieces = []
        for start in range(0, frames, block_frames):
            stop = min(frames, start + block_frames)
            lo, hi = max(0, start - margin_frames), min(frames, stop + margin_frames)
            keep = slice((start - lo) * scale, (stop - lo) * scale)
            pieces.append([out.narrow(dim, keep.start, keep.stop - keep.start) for out in run(lo, hi)])
        return [torch.cat(parts, dim=dim) for parts in zip(*pieces)]


def vae_from_config(vae_config, channels):
    """The spectral VAE that config["vae"] describes, for `channels` audio channels."""
    return VariationalEncoderDecoder(channels, vae_config["width"], latent_dim=vae_config["latent_dim"],
                                     dropout=0.0, n_fft=vae_config["n_fft"], hop_length=vae_config["hop_length"],
                                     downsample=vae_config["downsample"], layers=vae_config["layers"])
