"""Measure a trained run on songs it never saw: the VAE's reconstructions and the generator's clips.

    python bench/heldout.py --run runs/d30/checkpoints --songs ~/heldout/*.mp3 --out runs/d30/heldout
    python bench/heldout.py --run checkpoints --songs a.mp3 b.mp3 --count 80 --epoch best

It writes 10 s clips at the model's rate into --out, one folder each, for an embedding-based FAD (any
tool that compares two folders of clips):
- originals/        the held-out songs, cut into clips (the reference)
- reconstructions/  the same clips rebuilt by the run's VAE (generate.py --reconstruct on the whole song)
- lowpass/          the originals low-passed at 1 kHz (a rung of the ladder: dull but real music)
- generated/        --count clips from the generator (generate.py --epoch EPOCH), unranked

and prints, as JSON on its last line, the figures issue 18 asks of a default run:
- loudness: each song's RMS level, reconstruction against original (dB; target within 1 dB);
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

from evaluate import diversity, spectral_motion_db  # noqa: E402


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


def line_profile(clips, rate, n_fft=1024, neighbours=8):
    """(freqs, level dB of the level-matched average spectrum, each bin's height above its neighbours' median)."""
    from scipy import signal

    spectra = []
    for clip in clips:
        freqs, power = signal.welch(clip.mean(axis=0).astype(np.float64), fs=rate, nperseg=n_fft)
        spectra.append(power / max(power.sum(), 1e-30))
    level = 10 * np.log10(np.mean(spectra, axis=0) + 1e-30)
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(level, neighbours, mode="edge"), 2 * neighbours + 1)
    return freqs, level, level - np.median(np.delete(windows, neighbours, axis=1), axis=1)


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
    }
    (out / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
