"""MusiGAN's generator (VariationalAttentionModel) and the dataset it learns from (AudioDataset).

    from piano_model import AudioDataset, VariationalAttentionModel
    generator = VariationalAttentionModel(**config["model"])
    mu, logvar, waveform = generator(torch.randn(8, 2, 48000))   # waveform (8, 2, seq_len)
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

from piano_encoder_decoder import VariationalEncoderDecoder, fast_dropout
from split_and_append_chunks import split_and_append_chunks


# The seed's generator settings (config.yaml's model section carries the same values).
SEED_MODEL_CONFIG = dict(sound_channels=2, n_channels=128, seq_len=16500, latent_seq_len=500, latent_dim=512,
                         num_heads=8, num_layers=1, use_gaussians=True, num_of_gaussians=6, dropout=0.1, noise_dim=48000)


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


class VariationalAttentionModel(nn.Module):
    """The generator: noise (B, sound_channels, noise_dim) -> (mu, logvar, waveform (B, sound_channels, seq_len)).

    The encoder maps noise to a sequence of latent Gaussians (latent_seq_len frames of latent_dim),
    a sample of which passes through num_layers transformer layers (num_heads heads) that let every
    frame attend to every other, and the decoder turns the result into a waveform. The waveform is
    unbounded, like the standardized chunks it imitates (the seed's hard-sigmoid to [0, 1] could not
    reach them). A learned position embedding tells the transformer where each frame sits in time.
    """

    def __init__(self, sound_channels=2, n_channels=128, seq_len=16500, latent_seq_len=500, latent_dim=512,
                 num_heads=8, num_layers=1, use_gaussians=True, num_of_gaussians=6, dropout=0.1, noise_dim=48000):
        super().__init__()
        if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1 or latent_dim % num_heads:
            raise ValueError(f"num_heads must be a positive integer that divides latent_dim ({latent_dim}), "
                             f"got {num_heads!r}")
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 0:
            raise ValueError(f"num_layers must be an integer of 0 or more, got {num_layers!r}")
        self.sound_channels, self.seq_len, self.noise_dim = sound_channels, seq_len, noise_dim
        self.vae = VariationalEncoderDecoder(sound_channels, n_channels, latent_seq_len, latent_dim, seq_len,
                                             dropout, use_gaussians, num_of_gaussians, noise_dim=noise_dim,
                                             architecture="seed")
        self.position = nn.Parameter(torch.randn(1, latent_seq_len, latent_dim) * 0.02)
        self.transformer = nn.Sequential(*(TransformerBlock(latent_dim, num_heads, dropout) for _ in range(num_layers)))

    def forward(self, noise):
        if noise.dim() != 3 or noise.shape[1:] != (self.sound_channels, self.noise_dim):
            raise ValueError(f"noise must be shaped (batch, {self.sound_channels}, {self.noise_dim}), "
                             f"got {tuple(noise.shape)}")
        mu, logvar = self.vae.encoder(noise)  # each (B, latent_seq_len, latent_dim)
        z = self.transformer(self.vae.reparameterize(mu, logvar) + self.position)
        return mu, logvar, self.vae.decoder(z)  # waveform (B, sound_channels, seq_len)


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
    is taken (random_crop=False takes the start, for repeatable validation); crops use torch's RNG, so
    torch.manual_seed and DataLoader worker seeding make them reproducible.

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
            self._file.seek(offset)
            if self._file.readinto(out[channel]) != self.seq_len * 2:
                raise DatasetError(f"{self.path} is shorter than its header says; rebuild it with create_dataset.py")
        return out.astype(np.float32)

    def __getitem__(self, index):
        if not -self.n_chunks <= index < self.n_chunks:
            raise IndexError(f"chunk {index} out of range for {self.n_chunks} chunks")
        index %= self.n_chunks
        start = 0
        if self.random_crop and self.chunk_samples > self.seq_len:
            start = int(torch.randint(0, self.chunk_samples - self.seq_len + 1, ()))
        target = torch.from_numpy(self._read(index, start)) / self.peak  # (C, seq_len)
        if self.normalization == "peak":
            return target, torch.zeros(1, 1), torch.ones(1, 1)
        target_mean = target.mean().view(1, 1)
        target_std = target.std(correction=0).clamp_min(self.min_std).view(1, 1)
        return (target - target_mean) / target_std, target_mean, target_std
