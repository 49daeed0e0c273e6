"""Turn a trained generator into music you can play: white noise in, audio files out.

    python generate.py --epoch latest
    python generate.py --epoch best                  # the saved epoch closest to the validation set
    python generate.py --epoch 690 --count 4 --seconds 30 --format mp3 --out generated
    python generate.py --epoch latest --count 32 --rank-by-discriminator 4    # keep the 4 most convincing

--epoch best takes, of the saved generators, the one whose Fréchet distance to the validation set
(val/frechet, measured every training.eval_every epochs) is lowest.

Each file is `--seconds` long. The latent generator (the default) writes the whole piece in one go: one
noise sequence, as long as the piece, through its transformer (whose attention reaches a fixed number
of frames either side) and the VAE's decoder, so there are no joins. The seed's generator makes
`model.seq_len` samples at a time, so its longer audio is made of independent segments joined with a
short equal-power crossfade (--crossfade-ms).
Levels are normalized to a peak of -1 dBFS (no clipping), at the dataset's sample rate. Beside each
audio file goes a PNG with its waveform and spectrogram.

With --rank-by-discriminator K, --count candidates are generated and the discriminator of the same
epoch scores each one (the mean of its logits over the candidate's segments); the K it rates most
real are kept, best first.

    python generate.py --reconstruct song.mp3                 # through the run's VAE: the ceiling of quality
    python generate.py --reconstruct ~/Music/album --out reconstructions --vae checkpoints/vae.pt

--reconstruct encodes and decodes any audio file, or every audio file under a folder, with the run's
trained VAE (checkpoint_folder/vae.pt, or --vae). For each, NAME.original.wav (the input at the model's
sample rate, stereo, as training saw it) and NAME.reconstruction.wav go side by side into --out
(default: reconstructions): what the VAE keeps is the best any generator built on it can sound. Each song
is encoded at the level of the training songs (divided by its own peak, as the dataset is by its peak),
whatever level it was stored at, and its reconstruction comes back at the song's own RMS level
(vae_utilities.reconstruct_audio). A file that cannot be decoded is skipped with the reason.
"""

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

from config_reader import config_from_checkpoint
from discriminator import build_discriminator
from report import report_line
from utilities import CheckpointError, checkpoint_path, inference_autocast, load_checkpoint, load_generator, run_folder

FORMATS = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "mp3": ("MP3", "MPEG_LAYER_III")}
PEAK = 10 ** (-1 / 20)  # -1 dBFS


def crossfade_join(segments, fade):
    """Join (C, T) segments, overlapping each pair by `fade` samples with an equal-power crossfade."""
    if fade <= 0 or len(segments) == 1:
        return np.concatenate(segments, axis=1)
    t = np.linspace(0, np.pi / 2, fade, dtype=np.float32)
    fade_out, fade_in = np.cos(t), np.sin(t)
    out = segments[0]
    for seg in segments[1:]:
        overlap = out[:, -fade:] * fade_out + seg[:, :fade] * fade_in
        out = np.concatenate([out[:, :-fade], overlap, seg[:, fade:]], axis=1)
    return out


def make_pieces(generator, count, samples, fade, rng, device, batch_size=8):
    """`count` pieces of exactly `samples` samples each: (count, C, samples) float32, plus what the discriminator
    judges of each: (count, per_piece, ...) segments (seed) or latent windows (latent)."""
    if generator.architecture == "latent":  # one noise sequence per piece, one pass: no joins to hide
        frames = -(-samples // generator.frame_samples)
        window = generator.judged_frames
        per_piece = max(1, frames // window)
        noise = generator.sample_noise(count, frames=frames, generator=rng, device=device)
        pieces, windows = [], []
        with torch.inference_mode():
            for batch in noise.split(batch_size):
                z = generator.latents(batch)  # standardized: what the discriminator judges
                pieces.append(generator.vae.decode_long(generator.to_vae_units(z))[..., :samples].float().cpu())
                if z.shape[1] >= window:
                    z = z[:, :per_piece * window]
                    windows.append(z.reshape(len(z), per_piece, window, -1).float().cpu())
        return torch.cat(pieces).numpy(), (torch.cat(windows) if windows else None)
    seq_len = generator.seq_len
    per_piece = 1 if samples <= seq_len else math.ceil((samples - fade) / (seq_len - fade))
    noise = generator.sample_noise(count * per_piece, generator=rng, device="cpu")
    segments = []
    with torch.inference_mode():
        for batch in noise.split(batch_size):
            segments.append(generator(batch.to(device))[2].float().cpu())
    segments = torch.cat(segments).view(count, per_piece, generator.sound_channels, seq_len)
    pieces = np.stack([crossfade_join(list(piece.numpy()), fade)[:, :samples] for piece in segments])
    return pieces, segments


def peak_normalize(audio):
    peak = float(np.abs(audio).max())
    return audio * (PEAK / peak) if peak > 0 else audio


def plot_audio(audio, sample_rate, path, title):
    """A PNG with the waveform (both channels) over a log-magnitude spectrogram of their mix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seconds = np.arange(audio.shape[1]) / sample_rate
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 5), sharex=True, gridspec_kw={"height_ratios": [1, 2]})
    for channel, name in zip(audio, ("left", "right")):
        top.plot(seconds, channel, linewidth=0.4, alpha=0.8, label=name)
    top.set_ylim(-1, 1)
    top.legend(fontsize=7, loc="upper right")
    top.set_title(title, fontsize=10)
    bottom.specgram(audio.mean(axis=0), NFFT=512, Fs=sample_rate, noverlap=384, cmap="magma")
    bottom.set_xlabel("seconds")
    bottom.set_ylabel("Hz")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def discriminator_scores(folder, epoch, config, segments, device, batch_size=8):
    """Mean discriminator logit per piece over its segments: higher is rated more real."""
    state = load_checkpoint(checkpoint_path(folder, "discriminator", epoch))
    disc = build_discriminator(config_from_checkpoint(state["config"], source=f"discriminator_epoch_{epoch}.pt")).to(device).eval()
    disc.load_state_dict(state["model_state_dict"])
    count, per_piece = segments.shape[:2]
    flat = segments.flatten(0, 1)
    logits = []
    with torch.inference_mode():
        for batch in flat.split(batch_size):
            if len(batch) < 2:  # minibatch discrimination needs company: score the last one beside its neighbour
                batch = torch.cat([flat[-2:-1], batch])
                logits.append(disc(batch.to(device)).float().mean(dim=1).cpu()[1:])
            else:
                logits.append(disc(batch.to(device)).float().mean(dim=1).cpu())
    return torch.cat(logits).view(count, per_piece).mean(dim=1)


RECONSTRUCT_SUFFIXES = (".mp3", ".wav", ".flac", ".ogg", ".opus", ".m4a")


def reconstruct_paths(target):
    """The audio files --reconstruct works on: the file itself, or every audio file under a folder."""
    target = Path(target)
    if target.is_dir():
        paths = sorted(p for p in target.rglob("*") if p.is_file() and p.suffix.lower() in RECONSTRUCT_SUFFIXES)
        if not paths:
            raise ValueError(f"no audio files ({', '.join(RECONSTRUCT_SUFFIXES)}) under {target}")
        return paths
    if not target.exists():
        raise ValueError(f"--reconstruct {target}: no such file or folder")
    return [target]


def reconstruct(args):
    """generate.py --reconstruct: each file through the VAE, written beside a copy of the input. Returns the exit status."""
    import soundfile

    from prepare_dataset import PrepareError, decode_audio
    from vae_utilities import VAE_FILE, load_vae, reconstruct_audio

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    vae_path = Path(args.vae) if args.vae else run_folder(args.checkpoint_folder, args.config) / VAE_FILE
    if not vae_path.exists():
        raise CheckpointError(f"no VAE at {vae_path}; train one with python piano_main.py (stage one writes "
                              f"checkpoint_folder/{VAE_FILE}), or name one with --vae")
    vae, state = load_vae(vae_path, device=device)
    sample_rate = state["sample_rate"]
    paths = reconstruct_paths(args.reconstruct)
    out = Path(args.out or "reconstructions")
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    for path in paths:
        try:
            audio = decode_audio(path, sample_rate)
        except PrepareError as e:
            print(f"skipped {path}: {e}", file=sys.stderr)
            continue
        recon = reconstruct_audio(vae, audio, None, device)  # a whole song: it enters at its own peak
        name = path.stem if len(paths) == 1 else "_".join(path.relative_to(args.reconstruct).with_suffix("").parts)
        for kind, signal in (("original", audio), ("reconstruction", recon)):
            file = out / f"{name}.{kind}.wav"
            soundfile.write(file, np.clip(signal, -1, 1).T, sample_rate, subtype="PCM_16")
            if not args.no_plots:
                plot_audio(np.clip(signal, -1, 1), sample_rate, file.with_suffix(".png"), f"{file.name} ({vae_path})")
        written += 1
        print(f"wrote {out / name}.original.wav and .reconstruction.wav ({audio.shape[1] / sample_rate:.1f} s, "
              f"{sample_rate} Hz)")
    if not written:
        print(f"error: none of the {len(paths)} file(s) could be decoded", file=sys.stderr)
        return 1
    if (vae_path.parent / "config.yaml").exists():  # the VAE of a run: point at that run's report
        report_line(vae_path.parent, "the VAE's own reconstructions are in it too")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epoch", default="latest",
                        help="the generator's epoch: a number, latest, or best (the saved epoch with the lowest "
                             "Fréchet distance to the validation set, val/frechet) (default: latest)")
    parser.add_argument("--count", type=int, default=4, help="pieces to generate (default: 4)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each piece in seconds (default: 10)")
    parser.add_argument("--format", choices=sorted(FORMATS), default="wav", help="audio format (default: wav)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise; the same seed gives the same music (default: 0)")
    parser.add_argument("--out", default=None,
                        help="output folder (default: generated, or reconstructions with --reconstruct)")
    parser.add_argument("--crossfade-ms", type=float, default=50.0, help="overlap between segments (default: 50)")
    parser.add_argument("--rank-by-discriminator", type=int, default=0, metavar="K",
                        help="keep only the K of --count pieces the discriminator rates most real (default: off)")
    parser.add_argument("--config", default=None,
                        help="config whose output.checkpoint_folder holds the run (default: config.yaml, or "
                             "checkpoints/config.yaml when config.yaml is absent)")
    parser.add_argument("--checkpoint-folder", default=None, help="the run's folder (overrides the config's)")
    parser.add_argument("--no-plots", action="store_true", help="skip the waveform/spectrogram PNGs")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                        help="arithmetic of the generator's matrix products: auto picks bf16 on a GPU of compute "
                             "capability 8 or more (fp16 below) and on a CPU where a bfloat16 matmul is faster, "
                             "else fp32, and says why; the phase rotation and inverse STFT stay float32 "
                             "(default: auto)")
    parser.add_argument("--reconstruct", metavar="PATH", default=None,
                        help="encode and decode this audio file, or every audio file under this folder, with the "
                             "run's VAE; writes NAME.original.wav and NAME.reconstruction.wav to --out "
                             "(default there: reconstructions)")
    parser.add_argument("--vae", default=None, help="the VAE for --reconstruct (default: the run folder's vae.pt)")
    args = parser.parse_args(argv)
    if args.reconstruct:
        try:
            return reconstruct(args)
        except (ValueError, CheckpointError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    try:
        if args.count < 1 or args.seconds <= 0:
            raise ValueError("--count must be at least 1 and --seconds positive")
        if args.rank_by_discriminator and not 1 <= args.rank_by_discriminator <= args.count:
            raise ValueError(f"--rank-by-discriminator {args.rank_by_discriminator} must be between 1 and --count "
                             f"({args.count}): it keeps the best K of --count candidates")
        folder = run_folder(args.checkpoint_folder, args.config)
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        generator, config, epoch = load_generator(folder, args.epoch, device)
        autocast = inference_autocast(args.precision, device)
    except (ValueError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    import soundfile

    sample_rate = config["data"]["sample_rate"]
    samples = round(args.seconds * sample_rate)
    fade = min(round(args.crossfade_ms / 1000 * sample_rate), generator.seq_len // 4)  # seed only
    rng = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)  # the seed's generator (reparameterize) draws from the global RNG
    with autocast:
        pieces, segments = make_pieces(generator, args.count, samples, fade, rng, device)
    order, scores = list(range(args.count)), None
    if args.rank_by_discriminator and segments is None:
        print(f"warning: pieces of {args.seconds:g} s are shorter than the window the discriminator judges; "
              f"not ranking them", file=sys.stderr)
    elif args.rank_by_discriminator:
        scores = discriminator_scores(folder, epoch, config, segments, device)
        order = scores.argsort(descending=True).tolist()[:args.rank_by_discriminator]
    out = Path(args.out or "generated")
    out.mkdir(parents=True, exist_ok=True)
    fmt, subtype = FORMATS[args.format]
    for rank, index in enumerate(order):
        audio = peak_normalize(pieces[index])
        name = f"epoch{epoch}_seed{args.seed}_{rank:02d}"
        path = out / f"{name}.{args.format}"
        soundfile.write(path, audio.T, sample_rate, format=fmt, subtype=subtype)
        score = f", discriminator logit {float(scores[index]):+.2f}" if scores is not None else ""
        if not args.no_plots:
            plot_audio(audio, sample_rate, out / f"{name}.png", f"{path.name}: epoch {epoch}{score}")
        print(f"wrote {path} ({args.seconds:g} s, {sample_rate} Hz{score})")
    report_line(folder, "training's samples, curves and health; open it in a browser")
    return 0


if __name__ == "__main__":
    sys.exit(main())
