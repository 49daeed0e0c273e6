"""Measure a trained run on songs it never saw: the VAE's reconstructions and the generator's clips.

    python bench/heldout.py --run runs/d30/checkpoints --songs ~/heldout/*.mp3 --out runs/d30/heldout
    python bench/heldout.py --run checkpoints --songs a.mp3 b.mp3 --count 80 --epoch best

It writes 10 s clips at the model's rate into --out, one folder each, for an embedding-based FAD (any
tool that compares two folders of clips):
- originals/        the held-out songs, cut into clips (the reference)
- reconstructions/  the same clips rebuilt by the run's VAE (generate.py --reconstruct on the whole song)
- lowpass/          the originals low-passed at 1 kHz (a rung of the ladder: dull but real music)
- generated/        --count clips from the generator (generate.py --epoch EPOCH), unranked

and spectrograms.png (a row each of originals, reconstructions and generated clips), and prints, as JSON on its
last line, the figures issue 18 asks of a default run:
- loudness: each song's RMS level, reconstruction against original (dB; target within 1 dB; generate.py scales the
  reconstruction to its input's RMS, so this checks that path end to end);
- lines: the level-matched average spectra of reconstructions against originals, bin by bin above 100 Hz. A
  bin's "line" is how far it stands above the median of its neighbours (+-94 Hz); an invented line is a bin whose
  line in the reconstructions exceeds the originals' line at that bin (the originals' own ripple) by over 3 dB.
  Reported: the worst excess and where, and the count of bins over 3 dB;
- motion: evaluate.spectral_motion_db, median over clips, for each set (target: reconstructions within 20 % of
  the originals', generated within 25 % of the reconstructions');
- diversity (evaluate.diversity) of each set.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evaluate import diversity, line_profile, spectral_motion_db  # noqa: E402


def read(path):
    import soundfile

    audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
    return audio.T, rate


def write(path, audio, rate):
    import soundfile

    soundfile.write(path, np.clip(audio, -1, 1).T, rate, subtype="PCM_16")


def cut(audio, rate, seconds):
    """Non-overlapping clips of `seconds` from a (C, T) song; the remainder is dropped."""
    size = int(seconds * rate)
    return [audio[:, i:i + size] for i in range(0, audio.shape[1] - size + 1, size)]


def low_pass(audio, rate, hz=1000.0):
    spectrum = np.fft.rfft(audio, axis=-1)
    spectrum[:, np.fft.rfftfreq(audio.shape[-1], 1 / rate) > hz] = 0
    return np.fft.irfft(spectrum, n=audio.shape[-1], axis=-1).astype(np.float32)


def rms_db(audio):
    return float(10 * np.log10(np.mean(np.asarray(audio, np.float64) ** 2) + 1e-20))


def invented_lines(originals, reconstructions, rate, min_hz=100.0, limit_db=3.0):
    freqs, level_o, line_o = line_profile(originals, rate)
    _, level_r, line_r = line_profile(reconstructions, rate)
    above = freqs >= min_hz
    excess = np.where(above, line_r - np.maximum(line_o, 0.0), -np.inf)
    worst = np.argsort(excess)[::-1][:5]
    difference = np.where(above, np.abs(level_r - level_o), 0.0)  # the raw level-matched gap, for reference
    return {"worst_excess_db": round(float(excess[worst[0]]), 2),
            "worst_bins": [[round(float(freqs[i]), 1), round(float(excess[i]), 2)] for i in worst],
            "bins_over_3db": int((excess > limit_db).sum()),
            "max_level_gap_db": round(float(difference.max()), 2),
            "level_gap_rms_db": round(float(np.sqrt((difference[above] ** 2).mean())), 2)}


def latent_motion(z, frames_per_second):
    """How standardized latents (N, frames, D) move: per channel, the mean |change| over 1 frame and over ~0.7 s,
    and the spread of 1 s block means (motion over seconds); each the median over channels, mean over pieces."""
    lag = max(1, round(0.7 * frames_per_second))
    block = max(1, round(frames_per_second))
    usable = z.shape[1] // block * block
    blocks = z[:, :usable].unflatten(1, (-1, block)).mean(dim=2)  # (N, blocks, D)
    return {"step_1_frame": round(float((z[:, 1:] - z[:, :-1]).abs().mean(1).median(-1).values.mean()), 3),
            "step_0_7_s": round(float((z[:, lag:] - z[:, :-lag]).abs().mean(1).median(-1).values.mean()), 3),
            "block_means_std": round(float(blocks.std(1).median(-1).values.mean()), 3)}


def latent_motions(run, epoch, originals, rate, clip_seconds, count=32):
    """latent_motion of the generator's latents (EMA weights) beside those of the held-out originals, encoded by
    the same VAE and standardized alike: the GAN's own figure, free of the decoder."""
    import torch

    from utilities import load_generator

    generator, _, _ = load_generator(run, epoch, "cpu", log=lambda *_: None)
    vae = generator.vae
    fps = rate / vae.frame_samples
    frames = int(clip_seconds * fps)
    with torch.inference_mode():
        fake = generator.latents(generator.sample_noise(count, frames=frames, generator=torch.Generator().manual_seed(0)))
        real, raw_level = [], []
        for clip in originals:
            x = torch.from_numpy(clip[:, :frames * vae.frame_samples])[None]
            x = x / x.abs().max().clamp_min(1e-9)
            mu, _ = vae.encoder(x)
            real.append((mu[0] - generator.latent_mean) / generator.latent_std)
            raw_level.append(rms_db(vae.decoder(mu).numpy()) - rms_db(x.numpy()))  # before the level match
    return {"generated": latent_motion(fake.float(), fps), "originals": latent_motion(torch.stack(real).float(), fps),
            "decoder_level_db_before_matching": round(float(np.median(raw_level)), 2)}


def spectrogram_grid(sets, rate, path, per_row=4):
    """A PNG: one row per set ({name: clips}), its first `per_row` clips as log-mel spectrograms."""
    import librosa
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(sets), per_row, figsize=(3.2 * per_row, 2.2 * len(sets)), squeeze=False)
    for row, (name, clips) in enumerate(sets.items()):
        picks = [clips[int(i)] for i in np.linspace(0, len(clips) - 1, per_row).round()] if clips else []
        for col, ax in enumerate(axes[row]):
            ax.set_xticks([]), ax.set_yticks([])
            if col < len(picks):
                mel = librosa.feature.melspectrogram(y=picks[col].mean(axis=0), sr=rate, n_fft=1024, hop_length=256,
                                                     n_mels=64)
                ax.imshow(librosa.power_to_db(mel, ref=np.max, top_db=80), origin="lower", aspect="auto",
                          cmap="magma")
            if col == 0:
                ax.set_ylabel(name)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def median_motion(clips, rate):
    return round(float(np.median([spectral_motion_db(c, rate) for c in clips])), 2)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="the run's checkpoint folder (vae.pt and generator_epoch_*.pt)")
    parser.add_argument("--songs", nargs="+", required=True, help="held-out audio files the run never trained on")
    parser.add_argument("--out", required=True, help="folder for the clips and result.json")
    parser.add_argument("--count", type=int, default=80, help="generated clips (default 80)")
    parser.add_argument("--epoch", default="latest", help="the generator's epoch: a number, latest or best")
    parser.add_argument("--clip-seconds", type=float, default=10.0, help="clip length (default 10)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    whole = out / "whole"
    folders = {name: out / name for name in ("originals", "reconstructions", "lowpass", "generated")}
    for folder in (whole, *folders.values()):
        folder.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    for song in args.songs:
        subprocess.run([python, str(ROOT / "generate.py"), "--reconstruct", song, "--vae", str(Path(args.run) / "vae.pt"),
                        "--out", str(whole), "--no-plots"], check=True)
    loudness, originals, reconstructions = {}, [], []
    for original_path in sorted(whole.glob("*.original.wav")):
        name = original_path.name.removesuffix(".original.wav")
        original, rate = read(original_path)
        recon, _ = read(whole / f"{name}.reconstruction.wav")
        loudness[name] = round(rms_db(recon) - rms_db(original), 2)
        for i, (a, b) in enumerate(zip(cut(original, rate, args.clip_seconds), cut(recon, rate, args.clip_seconds))):
            write(folders["originals"] / f"{name}_{i:03d}.wav", a, rate)
            write(folders["reconstructions"] / f"{name}_{i:03d}.wav", b, rate)
            write(folders["lowpass"] / f"{name}_{i:03d}.wav", low_pass(a, rate), rate)
            originals.append(a)
            reconstructions.append(b)
    subprocess.run([python, str(ROOT / "generate.py"), "--checkpoint-folder", args.run, "--epoch", str(args.epoch),
                    "--count", str(args.count), "--seconds", str(args.clip_seconds), "--out", str(folders["generated"]),
                    "--no-plots"], check=True)
    generated = [read(p)[0] for p in sorted(folders["generated"].glob("*.wav"))]
    result = {
        "clips": {"originals": len(originals), "generated": len(generated)},
        "loudness_db": loudness,
        "loudness_worst_db": max(loudness.values(), key=abs) if loudness else None,
        "lines": invented_lines(originals, reconstructions, rate),
        "motion_db": {"originals": median_motion(originals, rate), "reconstructions": median_motion(reconstructions, rate),
                      "generated": median_motion(generated, rate)},
        "diversity_db": {name: round(diversity(clips, rate)["spectrum_db"], 2)
                         for name, clips in (("originals", originals), ("generated", generated))},
        "latent_motion": latent_motions(args.run, args.epoch, originals, rate, args.clip_seconds),
    }
    spectrogram_grid({"original": originals, "reconstruction": reconstructions, "generated": generated}, rate,
                     out / "spectrograms.png")
    (out / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
