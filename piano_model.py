"""MusiGAN's generator (VariationalAttentionModel) and the data it learns from (AudioDataset, LatentWindows).

    from piano_model import AudioDataset, build_generator
    generator = build_generator(config)              # VariationalAttentionModel(**config["model"], vae=config["vae"])
    noise = generator.sample_noise(8, frames=240)    # latent: (8, 240 + 2 * receptive_field, noise_dim + style_dim)
    mu, logvar, waveform = generator(noise)          # mu (8, 240, vae.latent_dim); waveform (8, 2, 240 * frame_samples)
    train = AudioDataset.from_dataset_dir("dataset", "training", seq_len=16500)
    target_norm, target_mean, target_std = train[0]   # (C, seq_len), (1, 1), (1, 1), float32
    waveform = target_norm * target_std + target_mean  # undoes the normalization (times peak: raw scale)
"""

import os

import numpy as np
import torch
from torch import nn

from create_dataset import SPLIT_FILES, DatasetError, load_dataset_info
import torch.nn.functional as F

from piano_encoder_decoder import VariationalEncoderDecoder, fast_dropout, vae_from_config
from split_and_append_chunks import split_and_append_chunks
from utilities import shared_randn


# The seed's generator settings (config.yaml's model section carries the same values).
SEED_MODEL_CONFIG = dict(sound_channels=2, n_channels=128, seq_len=16500, latent_seq_len=500, latent_dim=512,
                         num_heads=8, num_layers=1, use_gaussians=True, num_of_gaussians=6, dropout=0.1, noise_dim=48000,
                         architecture="seed")


class TransformerBlock(nn.Module):
    """A pre-norm transformer layer: x + attention(norm(x)), then x + feed_forward(norm(x)).

    Dropout acts on the residual branches and inside the feed-forward, not on the attention weights:
    that keeps attention on the fused scaled_dot_product_attention kernel, which never builds the
    (heads, frames, frames) matrix that attention-weight dropout needs.
    """

    def __init__(self, dim, num_heads, dropout):
        super().__init__()
        self.num_heads, self.dropout = num_heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.ff_in, self.ff_out = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):
        batch, frames, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(batch, frames, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        if x.device.type == "cpu":  # measured: the CPU's bfloat16 attention kernel is 2x slower than float32
            q, k, v = q.float(), k.float(), v.float()
        attended = F.scaled_dot_product_attention(q, k, v).to(x.dtype)  # (B, heads, frames, dim / heads)
        attended = self.out(attended.transpose(1, 2).reshape(batch, frames, dim))
        x = x + fast_dropout(attended, self.dropout, self.training)
        hidden = fast_dropout(F.gelu(self.ff_in(self.norm2(x))), self.dropout, self.training)
        return x + fast_dropout(self.ff_out(hidden), self.dropout, self.training)


class LocalAttentionBlock(nn.Module):
    """A pre-norm transformer layer whose attention reaches `context` frames either side (band_attention).

    Without absolute positions and with a bounded reach, the layer does the same thing at every frame:
    a stack of them turns a noise sequence of any length into a latent sequence of that length, and a
    long sequence computed in blocks equals one computed at once.
    """

    def __init__(self, dim, num_heads, dropout):
        super().__init__()
        self.num_heads, self.dropout = num_heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.feed_forward = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * dim, dim))

    def forward(self, x, context):  # x (B, frames, dim)
        batch, frames, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(batch, frames, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        attended = band_attention(q, k, v, context)  # (B, heads, frames, dim / heads)
        x = x + F.dropout(self.out(attended.transpose(1, 2).reshape(batch, frames, dim)), self.dropout, self.training)
        return x + F.dropout(self.feed_forward(self.norm2(x)), self.dropout, self.training)


def band_attention(q, k, v, context, block=16, full_up_to=256):
    """Attention in which frame i sees the frames j with |i - j| <= context: q, k, v (B, heads, frames, d).

    Up to full_up_to frames (the GAN's windows), one attention with a band mask. Longer sequences (pieces
    being generated) go block by block: each `block` queries against the block + 2 x context keys around
    them, so the cost grows with frames x (block + 2 context), not frames squared (the masked full attention
    took 13 % of generating a piece; on a 134-frame training window the blocks were 15 % slower). The same
    keys and weights either way, so the same result up to rounding.
    """
    frames = q.shape[2]
    if frames <= full_up_to:
        index = torch.arange(frames, device=q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=(index[:, None] - index[None, :]).abs() <= context)
    blocks = -(-frames // block)
    tail = blocks * block - frames
    window = block + 2 * context
    q = F.pad(q, (0, 0, 0, tail)).unflatten(2, (blocks, block))  # (B, heads, blocks, block, d)
    k, v = (F.pad(t, (0, 0, context, tail + context)).unfold(2, window, block).transpose(-1, -2) for t in (k, v))
    query = torch.arange(blocks * block, device=q.device).view(blocks, block, 1)
    key = (torch.arange(blocks, device=q.device) * block - context).view(blocks, 1, 1) + torch.arange(window, device=q.device)
    # In the band, and a real frame; padded queries (dropped below) see the padding, so no row is empty.
    mask = ((query - key).abs() <= context) & ((key >= 0) & (key < frames) | (query >= frames))
    batch, heads = q.shape[:2]  # 4-D for the fused kernels: (B x heads, blocks, block, d), the mask broadcast
    out = F.scaled_dot_product_attention(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), attn_mask=mask)
    return out.view(batch, heads, blocks * block, -1)[:, :, :frames]


class VariationalAttentionModel(nn.Module):
    """The generator: noise -> (mu, logvar, waveform). Build it with build_generator(config).

    architecture="latent" (the default; stage two of MusiGAN): noise of shape (B, frames, noise_dim +
    style_dim), drawn by sample_noise, is projected to latent_dim channels, given positions by a depthwise
    convolution, and passed through num_layers transformer layers whose attention reaches `context`
    frames either side. A linear head writes a sequence in the VAE's latent space, standardized per
    channel by the latent cache's mean and std; the VAE's decoder (frozen unless finetune_decoder)
    renders it. forward returns mu, the latent sequence in the VAE's own units (B, frames, vae latent_dim);
    logvar, None (the generator is deterministic given its noise); and the waveform (B, C, frames x
    frame_samples). Every output frame depends on the noise within receptive_field frames of it, and
    sample_noise(batch, frames) draws that context for every frame (frames + 2 x receptive_field of
    noise): the discriminator's windows, and pieces of any length, are made of frames alike, and pieces
    have no seams. With seams="joined_windows" (Musika's alternative, measured worse: docs/experiments.md),
    sample_noise draws one anchor per window boundary instead, each window is written alone from noise
    moving between its two anchors, and the discriminator judges two adjacent windows (judged_frames).

    architecture="seed": the seed's end-to-end generator, noise (B, sound_channels, noise_dim) through a
    noise encoder to latent_seq_len Gaussians of latent_dim, a sample of which passes through num_layers
    transformer layers and the sub-pixel decoder to a waveform of seq_len samples.
    """

    def __init__(self, sound_channels=2, n_channels=128, seq_len=16500, latent_seq_len=64, latent_dim=256,
                 num_heads=8, num_layers=4, use_gaussians=True, num_of_gaussians=6, dropout=0.0, noise_dim=64, *,
                 architecture="latent", context=8, style_dim=64, finetune_decoder=False, vae=None, seams="long"):
        super().__init__()
        if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1 or latent_dim % num_heads:
            raise ValueError(f"num_heads must be a positive integer that divides latent_dim ({latent_dim}), "
                             f"got {num_heads!r}")
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 0:
            raise ValueError(f"num_layers must be an integer of 0 or more, got {num_layers!r}")
        if architecture not in ("latent", "seed"):
            raise ValueError(f"architecture must be 'latent' or 'seed', got {architecture!r}")
        from config_reader import SEAMS, judged_frames

        if seams not in SEAMS:
            raise ValueError(f"seams must be one of {', '.join(SEAMS)}, got {seams!r}")
        self.architecture, self.seams = architecture, seams
        # the frames the discriminator judges: a window, or (Musika) two adjacent windows joined
        self.judged_frames = judged_frames({"latent_seq_len": latent_seq_len, "seams": seams})
        self.sound_channels, self.noise_dim, self.latent_seq_len = sound_channels, noise_dim, latent_seq_len
        if architecture == "seed":
            self.seq_len = seq_len
            self.vae = VariationalEncoderDecoder(sound_channels, n_channels, latent_seq_len, latent_dim, seq_len,
                                                 dropout, use_gaussians, num_of_gaussians, noise_dim=noise_dim,
                                                 architecture="seed")
            self.position = nn.Parameter(torch.randn(1, latent_seq_len, latent_dim) * 0.02)
            self.transformer = nn.Sequential(*(TransformerBlock(latent_dim, num_heads, dropout)
                                               for _ in range(num_layers)))
            return
        from config_reader import defaults

        self.style_dim, self.context = style_dim, context
        self.vae = vae_from_config({**defaults()["vae"], **(vae or {})}, sound_channels)
        self.vae.requires_grad_(False)
        self.vae.decoder.requires_grad_(finetune_decoder)
        self.frame_samples = self.vae.frame_samples
        self.seq_len = latent_seq_len * self.frame_samples  # samples in one window
        self.receptive_field = 3 + num_layers * context  # output frame t depends on noise frames t +- this
        self.register_buffer("latent_mean", torch.zeros(self.vae.latent_dim))
        self.register_buffer("latent_std", torch.ones(self.vae.latent_dim))
        self.input = nn.Linear(noise_dim + style_dim, latent_dim)
        self.position = nn.Conv1d(latent_dim, latent_dim, 7, padding=3, groups=latent_dim)
        self.blocks = nn.ModuleList(LocalAttentionBlock(latent_dim, num_heads, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(latent_dim)
        self.output = nn.Linear(latent_dim, self.vae.latent_dim)

    def set_vae(self, vae, latent_mean, latent_std):
        """Take the trained VAE's weights, and the latent cache's per-channel mean and std (latent_dim,)."""
        self.vae.load_state_dict(vae.state_dict())
        self.latent_mean.copy_(torch.as_tensor(latent_mean))
        self.latent_std.copy_(torch.as_tensor(latent_std))

    def sample_noise(self, batch, frames=None, generator=None, device=None):
        """White noise for `batch` pieces, from `generator` (a torch.Generator; default: the global one).

        latent: noise for `frames` output frames (default: one window, latent_seq_len), shaped (batch, frames +
        2 x receptive_field, noise_dim + style_dim): every output frame gets its full context on both sides,
        as inside a longer piece, and the first and last frames are no different from the rest. The last
        style_dim channels are the same in every frame. seed: (batch, sound_channels, noise_dim)."""
        device = device or next(self.parameters()).device
        if self.architecture == "seed":
            if generator is None:  # the global stream of the device it is for, as the seed drew it
                return shared_randn((batch, self.sound_channels, self.noise_dim), device=device)
            return torch.randn(batch, self.sound_channels, self.noise_dim, generator=generator).to(device)
        if self.seams == "joined_windows":  # one anchor per window boundary; neighbouring windows share one
            windows = -(-(frames or self.judged_frames) // self.latent_seq_len)
            anchors = shared_randn((batch, windows + 1, self.noise_dim), generator=generator)
            style = shared_randn((batch, 1, self.style_dim), generator=generator).expand(-1, windows + 1, -1)
            return torch.cat([anchors, style], dim=2).to(device)
        frames = (frames or self.latent_seq_len) + 2 * self.receptive_field  # each output frame's full context
        # shared_randn: under torchrun, this rank's rows of the global batch's noise (utilities.py says why)
        local = shared_randn((batch, frames, self.noise_dim), generator=generator)
        style = shared_randn((batch, 1, self.style_dim), generator=generator).expand(-1, frames, -1)
        return torch.cat([local, style], dim=2).to(device)

    def latents(self, noise, block_frames=2048):
        """Standardized latent sequences (B, frames, vae latent_dim) from sample_noise's (B, frames + 2 x
        receptive_field, noise channels): the frames whose context the noise holds in full. Long ones are
        computed in blocks of block_frames with receptive_field frames of context, which equals one pass."""
        if self.seams == "joined_windows":
            return self._joined_windows(noise)
        margin = self.receptive_field
        if noise.shape[1] <= 2 * margin:
            raise ValueError(f"noise of {noise.shape[1]} frames holds no output frame: it needs more than "
                             f"2 x receptive_field ({2 * margin}); draw it with sample_noise")
        run = lambda lo, hi: (self._latents(noise[:, lo:hi]),)  # noqa: E731
        z = VariationalEncoderDecoder._in_blocks(run, noise.shape[1], block_frames, margin, dim=1)[0]
        return z[:, margin:-margin]

    def _joined_windows(self, anchors):
        """Musika's latent coordinates: window i is written alone from noise that moves from anchor i to anchor
        i + 1 over its frames (rescaled to unit variance), so neighbours share the noise at their boundary and
        the discriminator, judging two adjacent windows joined, teaches them to meet without a seam.
        anchors (B, windows + 1, noise channels) -> (B, windows x latent_seq_len, vae latent_dim)."""
        batch, points = anchors.shape[:2]
        if points < 2:
            raise ValueError(f"noise of {points} anchor holds no window: draw it with sample_noise")
        t = torch.arange(self.latent_seq_len, device=anchors.device, dtype=anchors.dtype) / self.latent_seq_len
        t = t.view(1, 1, -1, 1)
        noise = anchors[..., :self.noise_dim]
        left, right = noise[:, :-1, None], noise[:, 1:, None]  # (B, windows, 1, noise_dim)
        frames = (left * (1 - t) + right * t) / torch.sqrt((1 - t) ** 2 + t ** 2)
        style = anchors[:, :1, None, self.noise_dim:].expand(-1, points - 1, self.latent_seq_len, -1)
        z = self._latents(torch.cat([frames, style], dim=-1).flatten(0, 1))
        return z.view(batch, -1, z.shape[-1])

    def _latents(self, noise):
        h = self.input(noise)
        h = h + self.position(h.transpose(1, 2)).transpose(1, 2)
        for block in self.blocks:
            h = block(h, self.context)
        return self.output(self.norm(h))

    def fake_windows(self, batch, generator=None):
        """(batch, latent_seq_len, vae latent_dim) standardized latents, every frame with its full context, as
        inside a piece of any length: what the discriminator judges."""
        return self.latents(self.sample_noise(batch, generator=generator))

    def to_vae_units(self, z):
        return z * self.latent_std + self.latent_mean

    def decode(self, z):
        """Standardized latents (B, frames, D) -> waveforms (B, C, frames x frame_samples), with gradients."""
        return self.vae.decoder(self.to_vae_units(z))

    def forward(self, noise):
        if self.architecture == "seed":
            if noise.dim() != 3 or noise.shape[1:] != (self.sound_channels, self.noise_dim):
                raise ValueError(f"noise must be shaped (batch, {self.sound_channels}, {self.noise_dim}), "
                                 f"got {tuple(noise.shape)}")
            mu, logvar = self.vae.encoder(noise)  # each (B, latent_seq_len, latent_dim)
            z = self.transformer(self.vae.reparameterize(mu, logvar) + self.position)
            return mu, logvar, self.vae.decoder(z)  # waveform (B, sound_channels, seq_len)
        if noise.dim() != 3 or noise.shape[2] != self.noise_dim + self.style_dim:
            raise ValueError(f"noise must be shaped (batch, frames + {2 * self.receptive_field}, "
                             f"{self.noise_dim + self.style_dim}) as sample_noise draws it, got {tuple(noise.shape)}")
        mu = self.to_vae_units(self.latents(noise))
        return mu, None, self.vae.decode_long(mu)


def build_generator(config):
    """The generator config describes: VariationalAttentionModel(**config["model"]) with the VAE's shape."""
    return VariationalAttentionModel(**config["model"], vae=config["vae"])


class LatentWindows:
    """Windows of the latent cache, standardized: what the latent discriminator learns real music from.

    `cache` is one split of the cache (chunks, frames_per_chunk, latent_dim); chunks 2i and 2i+1 are a
    start and its continuation, so each pair is one sequence of 2 x frames_per_chunk frames, and a window
    of `frames` frames may start anywhere in it. Held in memory as float32 (a few MB per hour of music).
    """

    def __init__(self, cache, frames, mean, std, name="latent cache"):
        array = torch.from_numpy(np.asarray(cache, dtype=np.float32))
        pairs, per_chunk = array.shape[0] // 2, array.shape[1]
        if pairs < 1:
            raise DatasetError(f"{name} holds {array.shape[0]} chunk(s); the latent GAN needs at least one pair of "
                               f"adjacent chunks (add music)")
        if frames > 2 * per_chunk:
            raise DatasetError(f"model.latent_seq_len ({frames} frames) is longer than two of the dataset's chunks "
                               f"({2 * per_chunk} latent frames); lower model.latent_seq_len to at most "
                               f"{2 * per_chunk}, or rebuild the dataset with a longer --chunk-seconds")
        self.frames = frames
        self.sequences = (array[:2 * pairs].reshape(pairs, 2 * per_chunk, -1) - mean) / std

    def __len__(self):
        return len(self.sequences)

    def batch(self, size, generator=None, starts=None):
        """(size, frames, latent_dim): random pairs at random offsets (from `generator`), or pair i at offset
        starts[i] when starts is given."""
        room = self.sequences.shape[1] - self.frames + 1
        if starts is None:
            pairs = torch.randint(len(self), (size,), generator=generator)
            starts = torch.randint(room, (size,), generator=generator)
        else:
            pairs, starts = torch.arange(size) % len(self), torch.as_tensor(starts)
        index = starts[:, None] + torch.arange(self.frames)
        return self.sequences[pairs[:, None], index]

    def fixed(self, count):
        """The same `count` windows every call: pairs in order, at offsets spread over each pair."""
        room = self.sequences.shape[1] - self.frames + 1
        return self.batch(count, starts=(torch.arange(count) * 7919) % room)


def latent_statistics(cache):
    """Per-channel mean and std (latent_dim,) of a cache split: how fake_windows's units map to the VAE's."""
    array = torch.from_numpy(np.asarray(cache, dtype=np.float32)).flatten(0, 1)
    return array.mean(dim=0), array.std(dim=0).clamp_min(1e-3)


NORMALIZATIONS = ("peak", "chunk")


class AudioDataset(torch.utils.data.Dataset):
    """Chunks of a (pairs, 2, C, T) dataset, divided by the global peak (and, for the seed, standardized).

    Item i is chunk i of split_and_append_chunks(pairs): (target_norm (C, seq_len), target_mean (1, 1),
    target_std (1, 1)), all float32.
    - normalization="peak" (the VAE's): target_norm is the chunk divided by the dataset's global peak;
      mean 0, std 1. Loudness is kept: a quiet passage stays quiet, silence stays silence.
    - normalization="chunk" (the seed's): each chunk is then standardized, its mean and std taken over
      the whole chunk (both channels, so the stereo balance survives). The std is floored at min_std,
      1 % of the global peak (-40 dB): a quieter chunk is scaled up less, so near-silence is not
      turned into loud hiss (the seed's floor of 1e-4 did that).
    When a chunk is longer than seq_len, a random crop of seq_len samples
    is taken (random_crop=False takes the start, for repeatable validation); crops use the crop seed that
    training's sampler pairs with each index, or else torch's RNG.

    `data` is the path of a .npy written by create_dataset.py, or an array of pairs (N, 2, C, T) or
    chunks (M, C, T). A path is opened with np.load(mmap_mode="r"), and crops are then read with
    positioned file reads at the offsets the memory map reports: only the crop ever enters the process,
    so a DataLoader worker's RSS stays flat however large the dataset is (reading through the mapping
    would leave every touched page resident in the worker). The dataset pickles to its path, so spawned
    DataLoader workers never copy the array.
    """

    def __init__(self, data, seq_len, peak=1.0, random_crop=True, min_std=1e-2, normalization="chunk"):
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {normalization!r}")
        self.seq_len = int(seq_len)
        self.peak = float(peak)
        self.random_crop = random_crop
        self.normalization = normalization
        self.min_std = min_std  # a near-silent chunk stays quiet instead of becoming amplified noise
        self.path = None
        self._file = None
        if isinstance(data, (str, os.PathLike)):
            self.path = os.fspath(data)
            self._open_layout()
        else:
            array = np.asarray(data)
            self.chunks = split_and_append_chunks(array) if array.ndim == 4 else array
            if self.chunks.ndim != 3:
                raise ValueError(f"expected pairs (N, 2, C, T) or chunks (M, C, T), got shape {array.shape}")
            self.n_chunks, self.channels, self.chunk_samples = self.chunks.shape
        if not 0 < self.peak < float("inf"):
            raise ValueError(f"peak must be a positive number, got {peak}")
        if self.seq_len < 1 or self.seq_len > self.chunk_samples:
            raise DatasetError(
                f"seq_len {self.seq_len} does not fit the dataset's chunks of {self.chunk_samples} samples"
                + (f" ({self.path})" if self.path else "")
                + "; lower model.seq_len, or rebuild the dataset with a longer --chunk-seconds"
            )

    @classmethod
    def from_dataset_dir(cls, dataset_dir, split, seq_len, random_crop=None, **kwargs):
        """The `split` ("training" or "validation") of a folder written by create_dataset.py."""
        if split not in SPLIT_FILES:
            raise ValueError(f"split must be one of {sorted(SPLIT_FILES)}, got {split!r}")
        info = load_dataset_info(dataset_dir)
        if random_crop is None:
            random_crop = split == "training"
        dataset = cls(os.path.join(dataset_dir, SPLIT_FILES[split]), seq_len, peak=info["peak"],
                      random_crop=random_crop, **kwargs)
        dataset.info = info
        return dataset

    def _open_layout(self):
        try:
            pairs = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as e:
            raise DatasetError(f"{self.path} cannot be opened as a dataset array ({e}); rebuild it with "
                               f"create_dataset.py") from e
        if pairs.dtype != np.float16 or pairs.ndim != 4 or pairs.shape[1] != 2 or not pairs.flags.c_contiguous:
            raise DatasetError(f"{self.path} holds {pairs.dtype} {pairs.shape}; expected contiguous float16 "
                               f"(pairs, 2, channels, samples) as create_dataset.py writes it")
        chunks = split_and_append_chunks(pairs)
        self.n_chunks, self.channels, self.chunk_samples = chunks.shape
        self._data_offset = pairs.offset
        self.chunks = None  # read through the file, see the class docstring

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_file"] = None
        return state

    def __len__(self):
        return self.n_chunks

    def _read(self, index, start):
        """Samples [start, start + seq_len) of every channel of chunk `index`, as float32 (C, seq_len)."""
        if self.chunks is not None:
            return np.asarray(self.chunks[index, :, start:start + self.seq_len], dtype=np.float32)
        if self._file is None:
            self._file = open(self.path, "rb", buffering=0)
        out = np.empty((self.channels, self.seq_len), dtype=np.float16)
        row = self.chunk_samples * 2  # bytes per channel of one chunk
        for channel in range(self.channels):
            offset = self._data_offset + (index * self.channels + channel) * row + start * 2
            # pread: positioned, so DataLoader workers that share a file opened before the fork never move
            # each other's offset (seek + read would read each other's data).
            data = os.pread(self._file.fileno(), self.seq_len * 2, offset)
            if len(data) != self.seq_len * 2:
                raise DatasetError(f"{self.path} is shorter than its header says; rebuild it with create_dataset.py")
            out[channel] = np.frombuffer(data, dtype=np.float16)
        return out.astype(np.float32)

    def __getitem__(self, index):
        """Chunk `index`; or, from piano_train.EpochSampler, (index, crop_seed): its crop then comes from that seed,
        not from torch's global RNG."""
        index, crop_seed = index if isinstance(index, tuple) else (index, None)
        if not -self.n_chunks <= index < self.n_chunks:
            raise IndexError(f"chunk {index} out of range for {self.n_chunks} chunks")
        index %= self.n_chunks
        start = 0
        if self.random_crop and self.chunk_samples > self.seq_len:
            rng = torch.Generator().manual_seed(crop_seed) if crop_seed is not None else None
            start = int(torch.randint(0, self.chunk_samples - self.seq_len + 1, (), generator=rng))
        target = torch.from_numpy(self._read(index, start)) / self.peak  # (C, seq_len)
        if self.normalization == "peak":
            return target, torch.zeros(1, 1), torch.ones(1, 1)
        target_mean = target.mean().view(1, 1)
        target_std = target.std(correction=0).clamp_min(self.min_std).view(1, 1)
        return (target - target_mean) / target_std, target_mean, target_std
