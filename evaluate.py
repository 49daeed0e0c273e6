"""How far is generated audio from real audio? A Fréchet distance on music features, plus simple gaps.

    python evaluate.py --epoch latest                        # the run's generator against its validation set
    python evaluate.py --epoch 690 --config checkpoints/config.yaml --samples 64
    python evaluate.py --real my_songs/ --fake generated/      # any two folders of audio (wav, flac, ogg, mp3)

The embedding needs no download. Every clip is peak-normalized and mixed to mono, then cut into
windows of about 1 s (half overlapping). Each window is described by the mean and spread of its log-mel
spectrum, the mean and spread of its MFCCs, its chroma and its spectral contrast (librosa). The
Fréchet distance between the two sets of windows (Gaussians fitted to each; lower is closer) is the
headline figure. Beside it are the gaps in RMS loudness, silence ratio, spectral centroid and spectral
flatness (1-D Wasserstein distances between the two sets' frame values), and the spectral motion of
each set: per mel band, the std of its dB level over ~90 ms frames, the median over bands (real music
moves about 6 dB; a spectrum that never changes scores near 0), and each set's diversity (evaluate.diversity:
how far its clips' average spectra and onset rhythms are from one another; mode collapse scores near 0).
With --epoch, whole validation chunks are compared with generated clips of the same length. A table is
printed; the last line is JSON.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from create_dataset import DatasetError
from utilities import CheckpointError, forked_rng

WINDOW_SECONDS = 1.0
N_MELS = 40  # mel bands of the embedding (its first 2 x N_MELS dimensions are their means and stds)
N_FFT, HOP = 1024, 256
SILENCE_DB = -40.0  # a frame this far below the clip's peak counts as silent
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".opus")


def _mono(clip, dtype=np.float32):
    """A clip (channels, samples) or (samples,) as one channel, the mean of its channels, in `dtype`."""
    clip = np.asarray(clip, dtype)
    return clip.mean(axis=0) if clip.ndim == 2 else clip


def frame_features(clip, sample_rate):
    """(dims, frames) feature rows of a mono clip, and the per-frame gap statistics as a dict of (frames,)."""
    import librosa

    mel = librosa.power_to_db(librosa.feature.melspectrogram(y=clip, sr=sample_rate, n_fft=N_FFT, hop_length=HOP,
                                                             n_mels=N_MELS), ref=1.0, top_db=80)
    mfcc = librosa.feature.mfcc(S=mel, n_mfcc=13)
    chroma = librosa.feature.chroma_stft(y=clip, sr=sample_rate, n_fft=N_FFT, hop_length=HOP)
    contrast = librosa.feature.spectral_contrast(y=clip, sr=sample_rate, n_fft=N_FFT, hop_length=HOP, fmin=100.0,
                                                 n_bands=min(4, int(np.log2(sample_rate / 2 / 100))))
    rms = librosa.feature.rms(y=clip, frame_length=N_FFT, hop_length=HOP)[0]
    stats = {
        "rms_db": 20 * np.log10(rms + 1e-8),
        "silence": (20 * np.log10(rms + 1e-8) < SILENCE_DB).astype(np.float32),
        "centroid_hz": librosa.feature.spectral_centroid(y=clip, sr=sample_rate, n_fft=N_FFT, hop_length=HOP)[0],
        "flatness": librosa.feature.spectral_flatness(y=clip, n_fft=N_FFT, hop_length=HOP)[0],
    }
    frames = min(mel.shape[1], chroma.shape[1], contrast.shape[1])
    return mel[:, :frames], mfcc[:, :frames], chroma[:, :frames], contrast[:, :frames], stats


def embed(clips, sample_rate):
    """(windows, 123) embeddings of ~1 s windows over clips, and the pooled per-frame gap statistics.

    clips: iterable of arrays (channels, samples) or (samples,). Each is peak-normalized and mixed to mono.
    """
    windows, pooled = [], {}
    per_window = max(1, round(WINDOW_SECONDS * sample_rate / HOP))
    for clip in clips:
        mono = _mono(clip)
        peak = float(np.abs(mono).max())
        mono = mono / peak * 0.9 if peak > 0 else mono
        mel, mfcc, chroma, contrast, stats = frame_features(mono, sample_rate)
        for name, values in stats.items():
            pooled.setdefault(name, []).append(values)
        frames = mel.shape[1]
        for start in range(0, max(1, frames - per_window + 1), max(1, per_window // 2)):
            s = slice(start, start + per_window)
            windows.append(np.concatenate([mel[:, s].mean(1), mel[:, s].std(1), mfcc[:, s].mean(1), mfcc[:, s].std(1),
                                           chroma[:, s].mean(1), contrast[:, s].mean(1)]))
    if not windows:
        raise ValueError("no audio to embed")
    return np.stack(windows), {name: np.concatenate(values) for name, values in pooled.items()}


def frechet_distance(a, b, eps=1e-6):
    """Fréchet distance between Gaussians fitted to the rows of a and b: |mu_a - mu_b|^2 + Tr(Sa + Sb - 2 (Sa Sb)^1/2)."""
    from scipy import linalg

    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"the Fréchet distance needs at least 2 windows on each side, got {len(a)} and {len(b)}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    offset = np.eye(len(mu_a)) * eps
    covmean = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean))


def spectral_motion_db(clip, sample_rate, n_mels=40):
    """How much the spectrum moves in time: for each mel band, the std of its dB level over ~90 ms frames;
    the median over bands. Real music scores about 6 dB; a stationary spectrum (a drone, a fixed hiss) near 0."""
    import librosa

    mono = _mono(clip)
    n_fft = 1 << int(np.round(np.log2(0.09 * sample_rate)))  # ~90 ms frames, half overlapping
    power = librosa.feature.melspectrogram(y=mono, sr=sample_rate, n_fft=n_fft, hop_length=n_fft // 2, n_mels=n_mels)
    level = librosa.power_to_db(power, ref=np.max, top_db=80)  # (bands, frames), relative to the clip's loudest
    return float(np.median(level.std(axis=1)))


def _mean_pairwise_rms(vectors):
    """The mean over pairs of rows of the RMS of their difference."""
    v = np.stack(vectors).astype(np.float64)
    if len(v) < 2:
        return float("nan")
    diff = v[:, None, :] - v[None, :, :]
    rms = np.sqrt((diff ** 2).mean(axis=2))
    return float(rms[np.triu_indices(len(v), 1)].mean())


def diversity(clips, sample_rate, n_mels=40, max_lag_seconds=2.0):
    """How different the clips of a set are from each other (mode collapse scores near 0):
    - spectrum_db: each clip's time-averaged log-mel spectrum (dB, peak-normalized), the mean pairwise RMS
      distance over bands;
    - onset_autocorr: each clip's onset-strength autocorrelation (lags up to max_lag_seconds, lag 0 = 1),
      the mean pairwise RMS distance: how differently the clips move in time."""
    import librosa

    spectra, rhythms = [], []
    hop = 128
    lags = max(2, int(max_lag_seconds * sample_rate / hop))
    for clip in clips:
        mono = _mono(clip)
        peak = float(np.abs(mono).max())
        mono = mono / peak if peak > 0 else mono
        power = librosa.feature.melspectrogram(y=mono, sr=sample_rate, n_fft=1024, hop_length=256, n_mels=n_mels)
        spectra.append(librosa.power_to_db(power.mean(axis=1) + 1e-10, ref=1.0))
        onset = librosa.onset.onset_strength(y=mono, sr=sample_rate, hop_length=hop)
        onset = onset - onset.mean()
        full = np.correlate(onset, onset, mode="full")[len(onset) - 1:]
        auto = full / full[0] if full[0] > 0 else np.zeros_like(full)
        rhythms.append(np.pad(auto[1:lags + 1], (0, max(0, lags - len(auto) + 1))))
    return {"spectrum_db": _mean_pairwise_rms(spectra), "onset_autocorr": _mean_pairwise_rms(rhythms)}


def tonal_lines_db(clips, sample_rate, min_hz=100.0, n_fft=1024, neighbours=8):
    """(dB, Hz): how far the strongest bin of the clips' average spectrum (Welch, n_fft) stands above the median
    of its `neighbours` on each side, above min_hz, and where.

    A decoder that stamps a fixed pattern on every output shows it here. Calibration at 12 kHz with the
    defaults (11.7 Hz bins, +-94 Hz of neighbours; docs/experiments.md): the seed's untrained decoder 10.5 dB,
    a spectral decoder predicting absolute phase 12.7 dB, the spectral VAE's untrained decoder 1.7 dB; 32 clips
    of asc-music 6.9 dB. Music with sustained notes in one key scores high too (12 hyperrogue tracks: 15 dB),
    so a trained decoder is compared with the songs it learned from."""
    freqs, _, height = line_profile(clips, sample_rate, n_fft, neighbours)
    excess = np.where(freqs >= min_hz, height, -np.inf)
    peak = int(np.argmax(excess))
    return float(excess[peak]), float(freqs[peak])


def line_profile(clips, sample_rate, n_fft=1024, neighbours=8):
    """(freqs, level, height), each (bins,): the clips' average spectrum (Welch, n_fft; each clip normalized to
    the same power, loud or quiet) in dB, and how far each bin stands above the median of its `neighbours` on
    each side (dB): what tonal_lines_db reads its strongest line from."""
    from scipy import signal

    spectra = []
    for clip in clips:
        mono = _mono(clip, np.float64)
        freqs, power = signal.welch(mono, fs=sample_rate, nperseg=min(n_fft, len(mono)))
        spectra.append(power / max(power.sum(), 1e-30))
    level = 10 * np.log10(np.mean(spectra, axis=0) + 1e-30)
    padded = np.pad(level, neighbours, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * neighbours + 1)  # (bins, 2n + 1)
    return freqs, level, level - np.median(np.delete(windows, neighbours, axis=1), axis=1)


def join_report(audio, joins, sample_rate):
    """Musika's seam criteria at each join (a sample index) of a mono or (C, T) clip: the largest sample-to-
    sample jump within 2 samples of the join over the clip's 99th percentile of |diff| (a click when above
    3), and the RMS of the 50 ms around the join against the surrounding 500 ms, in dB (a dip or a bump
    when beyond +-3). Returns {"jump_ratio": [...], "rms_gap_db": [...]}, one value per join that has 250 ms
    of audio on both sides (joins nearer the clip's edges are left out)."""
    mono = _mono(audio, np.float64)
    diff = np.abs(np.diff(mono))
    typical = max(float(np.percentile(diff, 99)), 1e-12)
    near, around = sample_rate // 40, sample_rate // 4
    jumps, gaps = [], []
    for join in joins:
        if join - around < 0 or join + around > len(mono):
            continue
        jumps.append(float(diff[join - 2:join + 2].max()) / typical)
        rms = [np.sqrt(np.mean(mono[join - n:join + n] ** 2)) for n in (near, around)]
        gaps.append(float(20 * np.log10(max(rms[0], 1e-12) / max(rms[1], 1e-12))))
    return {"jump_ratio": jumps, "rms_gap_db": gaps}


def loudness_pulse(clips, sample_rate, hz, hop=32):
    """How strongly loudness pulses at `hz`: the power of the clips' RMS envelope (hop-sample frames) at hz,
    over the median power within 20 bins around it. About 1 for music; a decoder or a joining scheme that
    dips every period (a latent frame, a chunk) scores tens."""
    spectra = []
    for clip in clips:
        mono = _mono(clip, np.float64)
        frames = mono[:len(mono) // hop * hop].reshape(-1, hop)
        envelope = np.sqrt((frames ** 2).mean(axis=1))
        spectra.append(np.abs(np.fft.rfft(envelope - envelope.mean())) ** 2)
    length = min(len(s) for s in spectra)
    power = np.mean([s[:length] for s in spectra], axis=0)
    freqs = np.fft.rfftfreq(2 * length - 2, hop / sample_rate)
    i = int(np.argmin(np.abs(freqs - hz)))
    return float(power[i] / max(np.median(power[max(1, i - 20):i + 21]), 1e-30))


def balance_rms_db(balance_db):
    """One figure for compare's balance_db: the RMS over the mel bands of the level differences (dB)."""
    return float(np.sqrt(np.mean(np.square(balance_db))))


def compare(real_clips, fake_clips, sample_rate):
    """{"frechet", "gaps": {stat: {"real", "fake", "wasserstein"}}, "spectral_motion_db": {"real", "fake"},
    "diversity": {"spectrum_db": {"real", "fake"}, "onset_autocorr": {"real", "fake"}},
    "tonal_lines_db": {"real": (dB, Hz), "fake": (dB, Hz)}, "balance_db", "windows"} for two sets of clips.

    balance_db: each of the 40 mel bands' mean level in the fake clips minus the real ones' (dB, after each clip's
    peak normalization): the spectral balance, a tilt or a missing band, that the Fréchet distance folds in."""
    from scipy.stats import wasserstein_distance

    real_clips, fake_clips = list(real_clips), list(fake_clips)
    real, real_stats = embed(real_clips, sample_rate)
    fake, fake_stats = embed(fake_clips, sample_rate)
    gaps = {name: {"real": float(real_stats[name].mean()), "fake": float(fake_stats[name].mean()),
                   "wasserstein": float(wasserstein_distance(real_stats[name], fake_stats[name]))}
            for name in real_stats}
    motion = {name: float(np.mean([spectral_motion_db(clip, sample_rate) for clip in clips]))
              for name, clips in (("real", real_clips), ("fake", fake_clips))}
    spread = {name: diversity(clips, sample_rate) for name, clips in (("real", real_clips), ("fake", fake_clips))}
    lines = {name: tonal_lines_db(clips, sample_rate) for name, clips in (("real", real_clips), ("fake", fake_clips))}
    balance = fake[:, :N_MELS].mean(0) - real[:, :N_MELS].mean(0)  # each mel band's mean level, fake - real
    return {"frechet": frechet_distance(real, fake), "gaps": gaps, "spectral_motion_db": motion,
            "balance_db": [float(v) for v in balance],
            "diversity": {key: {name: spread[name][key] for name in spread} for key in spread["real"]},
            "tonal_lines_db": lines,
            "windows": {"real": len(real), "fake": len(fake)}}


# ---------------------------------------------------------------------------------------------
# Sources of clips


def load_folder(folder, sample_rate=None):
    """(clips, sample_rate) from every audio file under folder, resampled to sample_rate (default: the first file's)."""
    import soundfile
    import soxr

    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not paths:
        raise ValueError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) under {folder}")
    clips = []
    for path in paths:
        try:
            audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
        except (soundfile.LibsndfileError, RuntimeError) as e:
            raise ValueError(f"{path} cannot be read ({e})") from e
        sample_rate = sample_rate or rate
        if rate != sample_rate:
            audio = soxr.resample(audio, rate, sample_rate)
        clips.append(audio.T)
    return clips, sample_rate


def generator_clips(generator, count, seed, device, batch_size=8, samples=None):
    """`count` waveforms from the generator (eval mode, seeded), as (C, T) arrays. A latent generator writes
    `samples` samples each (default: one training window); the seed's always writes its seq_len."""
    import torch

    rng = torch.Generator().manual_seed(seed)
    was_training = generator.training
    generator.eval()
    clips = []
    frames = None
    if generator.architecture == "latent":
        samples = samples or generator.seq_len
        frames = -(-samples // generator.frame_samples)
    with forked_rng(device), torch.inference_mode():  # leaves training's random stream alone
        torch.manual_seed(seed)  # the seed's generator draws its reparameterization noise from the global RNG
        for start in range(0, count, batch_size):
            noise = generator.sample_noise(min(batch_size, count - start), frames=frames, generator=rng, device=device)
            clips += list(generator(noise)[2][..., :samples].float().cpu().numpy())
    generator.train(was_training)
    return clips


def validation_clips(dataset, count):
    """Up to `count` validation chunks (start crops), as the model sees them (embed normalizes the level)."""
    return [dataset[i][0].numpy() for i in range(min(count, len(dataset)))]


def print_report(result, real_name, fake_name):
    print(f"Fréchet distance ({real_name} vs {fake_name}): {result['frechet']:.3f}   "
          f"(windows: {result['windows']['real']} real, {result['windows']['fake']} fake; lower is closer)")
    print(f"{'statistic':<14}{'real':>12}{'generated':>12}{'gap (W1)':>12}")
    for name, gap in result["gaps"].items():
        print(f"{name:<14}{gap['real']:>12.4g}{gap['fake']:>12.4g}{gap['wasserstein']:>12.4g}")
    motion = result["spectral_motion_db"]
    print(f"{'motion (dB)':<14}{motion['real']:>12.3g}{motion['fake']:>12.3g}{abs(motion['real'] - motion['fake']):>12.3g}"
          f"   (spectral motion: real music ~6 dB, a stationary spectrum ~0)")
    lines = result["tonal_lines_db"]
    print(f"{'lines (dB)':<14}{lines['real'][0]:>12.3g}{lines['fake'][0]:>12.3g}"
          f"   (strongest bin over its neighbours in the average spectrum; fake at {lines['fake'][1]:.0f} Hz)")
    lows, mids, highs = (float(part.mean()) for part in np.array_split(np.asarray(result["balance_db"]), 3))
    print(f"{'balance (dB)':<14}{'':>12}{balance_rms_db(result['balance_db']):>12.3g}"
          f"   (RMS over {N_MELS} mel bands of the generated mean level minus the real one; "
          f"lows {lows:+.1f}, mids {mids:+.1f}, highs {highs:+.1f} dB)")
    for key, label in (("spectrum_db", "spread (dB)"), ("onset_autocorr", "rhythm spread")):
        d = result["diversity"][key]
        print(f"{label:<14}{d['real']:>12.3g}{d['fake']:>12.3g}{d['fake'] / d['real'] if d['real'] else float('nan'):>12.2f}"
              f"   (diversity between clips; the last column is generated / real, mode collapse ~0)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", help="a folder of real audio (with --fake)")
    parser.add_argument("--fake", help="a folder of generated audio (with --real)")
    parser.add_argument("--sample-rate", type=int, default=None, help="resample folders to this rate (default: the first file's)")
    parser.add_argument("--epoch", help="evaluate this generator epoch (a number, latest or best) against the run's "
                                         "validation set")
    parser.add_argument("--config", default=None, help="the run's config (default: config.yaml or checkpoints/config.yaml)")
    parser.add_argument("--checkpoint-folder", default=None, help="the run's folder (overrides the config's)")
    parser.add_argument("--samples", type=int, default=32, help="generated clips and validation chunks to compare (default: 32)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generator's noise (default: 0)")
    args = parser.parse_args(argv)
    try:
        if args.real and args.fake:
            real, rate = load_folder(args.real, args.sample_rate)
            fake, _ = load_folder(args.fake, rate)
            names = (args.real, args.fake)
        elif args.epoch:
            import torch

            from utilities import load_generator, run_folder
            from create_dataset import load_dataset_info
            from piano_model import AudioDataset

            folder = run_folder(args.checkpoint_folder, args.config)
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            generator, config, epoch = load_generator(folder, args.epoch, device)
            info = load_dataset_info(config["data"]["dataset_dir"])
            val = AudioDataset.from_dataset_dir(config["data"]["dataset_dir"], "validation", info["chunk_samples"],
                                                normalization="peak")
            real, rate = validation_clips(val, args.samples), config["data"]["sample_rate"]
            fake = generator_clips(generator, args.samples, args.seed, device, samples=info["chunk_samples"])
            names = ("validation set", f"generator epoch {epoch}")
        else:
            raise ValueError("give --real and --fake folders, or --epoch to evaluate a run's generator")
        result = compare(real, fake, rate)
    except (ValueError, DatasetError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_report(result, *names)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
