"""Stage one on real music: train the VAE for a fixed time, then measure how well it rebuilds a song it never saw.

    python bench/vae.py                                  # Debian's asc-music, 10 minutes, 2 threads
    python bench/vae.py --minutes 3 --set vae.downsample=8 --name rate_11fps --no-report
    python bench/vae.py --music ~/Music --minutes 30 --device cuda

Prepares the music (12 kHz stereo, 30 s clips, 3 s chunks; one song held out by create_dataset.py's split
by song), runs piano_main.py with the GAN stage off for --minutes of VAE training, then measures:
- the held-out song through generate.py --reconstruct, cut into 10 s clips: evaluate.py's Fréchet distance to
  the original, against the distance from the original to the other (training) songs; spectral motion of
  both; the spectral balance gap (evaluate's balance_db) and how far it follows the training songs' balance;
  the multi-resolution STFT distance the VAE trains on; the tonal-line measure;
- the tonal-line measure of 32 clips decoded from random latents (N(0, 1)), the DESIGN's fixed-pattern check;
- decode and encode speed as real-time factors (decode also at generate.py's --precision auto), and training
  throughput in audio-seconds per second, as a fraction of this machine's float32 matmul peak.
Writes a section of docs/experiments.md (between its VAE markers), a listenable original/reconstruction
pair in docs/experiment_audio/, and the figures as JSON on the last line.
"""

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiment import run  # noqa: E402  (bench/ is on the path of a script run from it)
from evaluate import balance_rms_db, compare, loudness_pulse, tonal_lines_db  # noqa: E402
from config_reader import config_from_checkpoint  # noqa: E402
from piano_pretrain import VAE_STFT_SIZES, vae_segment  # noqa: E402
from prepare_dataset import decode_audio  # noqa: E402
from utilities import auto_precision, inference_autocast  # noqa: E402
from vae_utilities import VAE_FILE, load_vae  # noqa: E402

RATE = 12000
CLIP = 10 * RATE
MARK_BEGIN, MARK_END = "<!-- vae-benchmark:begin -->", "<!-- vae-benchmark:end -->"


def clips_of(audio, count=None):
    """Consecutive 10 s clips (2, CLIP) of a (2, T) song."""
    clips = [audio[:, i:i + CLIP] for i in range(0, audio.shape[1] - CLIP + 1, CLIP)]
    return clips[:count] if count else clips


def matmul_peak_gflops(size=1024, repeats=20):
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size ** 3 * repeats / (time.perf_counter() - started) / 1e9


def training_gflop_per_audio_second(vae, segment, batch_size):
    """FLOPs of one training step (forward, STFT distance, backward), per second of audio in the batch."""
    from torch.utils.flop_counter import FlopCounterMode

    from loss_functions import MultiResolutionSTFTLoss, kl_divergence_loss

    stft = MultiResolutionSTFTLoss(**VAE_STFT_SIZES)
    x = torch.randn(batch_size, vae.channels, segment) * 0.1
    vae.train()
    with FlopCounterMode(display=False) as counter:
        mu, logvar, recon = vae(x)
        (stft(recon, x) + kl_divergence_loss(mu, logvar)).backward()
    vae.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 1e9 / (batch_size * segment / RATE)


def real_time_factor(fn, audio_seconds, repeats=3):
    fn()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return audio_seconds * repeats / (time.perf_counter() - started)


def measure(work, folder, music, info, log):
    vae, state = load_vae(folder / VAE_FILE)
    peak = state["data_peak"]
    held_out = info["songs"]["validation"]
    others = info["songs"]["training"]
    song = music / Path(held_out[0])
    out = work / "reconstruction"
    run([sys.executable, "generate.py", "--reconstruct", song, "--vae", folder / VAE_FILE, "--out", out, "--no-plots"],
        log)
    original = decode_audio(out / f"{song.stem}.original.wav", RATE)
    recon = decode_audio(out / f"{song.stem}.reconstruction.wav", RATE)
    other = [clip for name in others for clip in clips_of(decode_audio(music / Path(name), RATE))]
    real_clips, recon_clips = clips_of(original), clips_of(recon)

    to_recon = compare(real_clips, recon_clips, RATE)
    to_other = compare(real_clips, other, RATE)
    from loss_functions import MultiResolutionSTFTLoss

    stft = MultiResolutionSTFTLoss(**VAE_STFT_SIZES)
    with torch.no_grad():
        distance = float(stft(torch.from_numpy(np.stack(recon_clips)) / peak, torch.from_numpy(np.stack(real_clips)) / peak))
        random_latents = torch.randn(32, CLIP // vae.frame_samples, vae.latent_dim, generator=torch.Generator().manual_seed(0))
        from_prior = vae.decode_long(random_latents).numpy()
        mu, _ = vae.encode_long(torch.from_numpy(np.stack(real_clips[:8])) / peak)
        from_posterior = mu.flatten(0, 1)
    seconds = 8 * CLIP / RATE
    z = torch.randn(8, CLIP // vae.frame_samples, vae.latent_dim)
    x = torch.randn(8, 2, CLIP) * 0.1
    precision, _ = auto_precision(torch.device("cpu"))  # what generate.py --precision auto runs here
    with torch.inference_mode():
        decode_rtf = real_time_factor(lambda: vae.decoder(z), seconds)
        encode_rtf = real_time_factor(lambda: vae.encoder(x), seconds)
        with inference_autocast(precision, torch.device("cpu")):
            decode_rtf_auto = real_time_factor(lambda: vae.decoder(z), seconds)
    rows = list(csv.DictReader(open(folder / "vae_metrics.csv")))
    segment = vae_segment(config_from_checkpoint(state["config"], source=str(folder / VAE_FILE)))
    flops = training_gflop_per_audio_second(vae, segment, state["config"]["data"]["batch_size"])
    throughput = round(statistics.median(float(r["audio_seconds_per_second"]) for r in rows), 1)
    peak_gflops = matmul_peak_gflops()
    lines_prior = tonal_lines_db(list(from_prior), RATE)
    lines_recon = tonal_lines_db(recon_clips, RATE)
    lines_real = tonal_lines_db(real_clips, RATE)
    return {
        "held_out": held_out[0], "clips": len(real_clips),
        "frechet_recon": round(to_recon["frechet"], 1), "frechet_other_real": round(to_other["frechet"], 1),
        "frechet_ratio": round(to_recon["frechet"] / to_other["frechet"], 3),
        "motion_original_db": round(to_recon["spectral_motion_db"]["real"], 2),
        "motion_recon_db": round(to_recon["spectral_motion_db"]["fake"], 2),
        "motion_other_db": round(to_other["spectral_motion_db"]["fake"], 2),
        "stft_distance": round(distance, 4),
        "balance_rms_db": [round(balance_rms_db(r["balance_db"]), 2) for r in (to_recon, to_other)],
        "balance_follows_training_songs": round(float(np.corrcoef(to_recon["balance_db"],
                                                                  to_other["balance_db"])[0, 1]), 2),
        "lines_prior_db": [round(v, 1) for v in lines_prior], "lines_recon_db": [round(v, 1) for v in lines_recon],
        "lines_real_db": [round(v, 1) for v in lines_real],
        "pulse_at_latent_rate": [round(loudness_pulse(clips, RATE, RATE / vae.frame_samples), 1)
                                 for clips in (real_clips, recon_clips, list(from_prior))],
        "lines_other_real_db": [round(v, 1) for v in tonal_lines_db(other, RATE)],
        "posterior_mean_std": [round(float(from_posterior.mean()), 3), round(float(from_posterior.std()), 3)],
        "decode_rtf": round(decode_rtf), "encode_rtf": round(encode_rtf),
        "decode_rtf_auto": [precision, round(decode_rtf_auto)],
        "train_audio_seconds_per_second": throughput, "train_gflop_per_audio_second": round(flops, 2),
        "train_gflops_achieved": round(throughput * flops, 1), "matmul_peak_gflops": round(peak_gflops, 1),
        "fraction_of_peak": round(throughput * flops / peak_gflops, 3),
        "epochs": int(rows[-1]["epoch"]), "steps": int(rows[-1]["step"]),
        "final_train_stft": round(float(rows[-1]["vae/stft"]), 4),
        "final_val_stft": round(float(rows[-1]["val/stft"]), 4) if rows[-1].get("val/stft") else None,
        "parameters_m": round(sum(p.numel() for p in vae.parameters()) / 1e6, 2),
        "frames_per_second": round(RATE / vae.frame_samples, 2),
        "pair": (out / f"{song.stem}.original.wav", out / f"{song.stem}.reconstruction.wav"),
    }


def write_listening_pair(result, docs, seconds=12, start_seconds=60):
    """A short original/reconstruction excerpt, with spectrograms, into docs/experiment_audio/."""
    import soundfile

    from generate import plot_audio

    docs.mkdir(parents=True, exist_ok=True)
    written = []
    for kind, path in zip(("original", "reconstruction"), result.pop("pair")):
        audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
        start = min(start_seconds * rate, max(0, len(audio) - seconds * rate))
        excerpt = audio[start:start + seconds * rate]
        target = docs / f"vae_{kind}.wav"
        soundfile.write(target, excerpt, rate, subtype="PCM_16")
        plot_audio(excerpt.T, rate, target.with_suffix(".png"), f"VAE {kind}: {result['held_out']}, {seconds} s from "
                                                                f"{start_seconds} s")
        written.append(str(target.relative_to(ROOT)))
    return written


def write_report(result, args, path):
    r = result
    lines = [
        MARK_BEGIN,
        f"Made by `python bench/vae.py --minutes {args.minutes:g}"
        + "".join(f" --set {s}" for s in args.set) + f"` on {time.strftime('%Y-%m-%d')}, "
        f"{torch.get_num_threads()} CPU threads, device {args.device}.",
        f"- Held out: `{r['held_out']}` ({r['clips']} clips of 10 s); the VAE trained on the other songs for "
        f"{args.minutes:g} minutes ({r['epochs']} epochs, {r['steps']} steps).",
        f"- Model: {r['parameters_m']} M parameters, {r['frames_per_second']} latent frames per second.",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| Fréchet, reconstruction vs original | **{r['frechet_recon']}** | at most half of the next line |",
        f"| Fréchet, other real songs vs original | {r['frechet_other_real']} | |",
        f"| ratio | **{r['frechet_ratio']}** | ≤ 0.5 |",
        f"| spectral motion, original / reconstruction (dB) | {r['motion_original_db']} / **{r['motion_recon_db']}** | "
        f"within 20 % |",
        f"| multi-resolution STFT distance, reconstruction vs original | {r['stft_distance']} | |",
        f"| spectral balance gap (RMS over 40 mel bands of the mean level's difference from the original), "
        f"reconstruction / other songs | {r['balance_rms_db'][0]} dB / {r['balance_rms_db'][1]} dB | |",
        f"| correlation of the reconstruction's balance gap with the training songs' | "
        f"{r['balance_follows_training_songs']} | near 0: the song's own balance is kept |",
        f"| strongest line above 100 Hz, 32 clips from random latents | **{r['lines_prior_db'][0]} dB** at "
        f"{r['lines_prior_db'][1]:.0f} Hz | ≤ 6 dB |",
        f"| strongest line, reconstructions / the held-out song / the training songs | {r['lines_recon_db'][0]} dB / "
        f"{r['lines_real_db'][0]} dB / {r['lines_other_real_db'][0]} dB | |",
        f"| loudness pulse at the latent rate ({r['frames_per_second']} Hz), original / reconstruction / random latents "
        f"| {' / '.join(map(str, r['pulse_at_latent_rate']))} | about 1 is none |",
        f"| decode / encode speed in float32, batch 8 × 10 s | **{r['decode_rtf']}×** / {r['encode_rtf']}× real time | "
        f"decode ≥ 300× |",
        f"| decode speed at generate.py's `--precision auto` here ({r['decode_rtf_auto'][0]}) | "
        f"**{r['decode_rtf_auto'][1]}×** real time | |",
        f"| training throughput | {r['train_audio_seconds_per_second']} audio-s/s, {r['train_gflop_per_audio_second']} "
        f"GFLOP per audio-s = {r['train_gflops_achieved']} GFLOP/s, **{r['fraction_of_peak']:.0%}** of the "
        f"{r['matmul_peak_gflops']} GFLOP/s fp32 matmul peak | |",
        f"| final STFT distance, training / validation | {r['final_train_stft']} / {r['final_val_stft']} | |",
        "",
        f"Listen: {', '.join(f'`{p}`' for p in r['listen'])} (with PNG spectrograms beside them).",
        MARK_END,
    ]
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    block = "\n".join(lines)
    if MARK_BEGIN in text:
        text = text[:text.index(MARK_BEGIN)] + block + text[text.index(MARK_END) + len(MARK_END):]
    else:
        text = text.rstrip() + "\n\n## Stage one: the VAE\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--music", default="/usr/share/games/asc/music", help="folder of mp3s (default: Debian's asc-music)")
    parser.add_argument("--work", default="runs/vae_bench", help="data and runs go here (default: runs/vae_bench)")
    parser.add_argument("--minutes", type=float, default=10.0, help="VAE training time (default: 10)")
    parser.add_argument("--name", default="default", help="name of this run's folder under --work (default: default)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="config overrides for the VAE (repeatable), for example vae.downsample=8")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default: 2)")
    parser.add_argument("--no-report", action="store_true", help="print the figures; leave docs/ alone")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    music = Path(args.music)
    work = (ROOT / args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    run([sys.executable, "prepare_dataset.py", music, "--out", work / "prepared", "--clip-seconds", "30"], log)
    if not (work / "dataset" / "dataset.json").exists():
        run([sys.executable, "create_dataset.py", work / "prepared", "--out", work / "dataset", "--chunk-seconds", "3",
             "--val-fraction", "0.34"], log)
    info = json.loads((work / "dataset" / "dataset.json").read_text())
    folder = work / args.name
    if folder.exists():
        subprocess.run(["rm", "-rf", str(folder)], check=True)
    overrides = [f"data.dataset_dir={work / 'dataset'}", f"output.checkpoint_folder={folder}",
                 f"output.music_out_folder={folder / 'samples'}", "data.sample_rate=12000", "data.num_workers=0",
                 "data.steps_per_epoch=50", "vae.epochs=100000", "vae.patience=0", f"vae.time_budget_minutes={args.minutes}",
                 "training.epochs=0", "training.pretrain_discriminator_epochs=0", *args.set]
    run([sys.executable, "piano_main.py", "--device", args.device, *[a for o in overrides for a in ("--set", o)]], log)
    result = measure(work, folder, music, info, log)
    if args.no_report:
        result.pop("pair")
    else:
        result["listen"] = write_listening_pair(result, ROOT / "docs" / "experiment_audio")
        write_report(result, args, ROOT / "docs" / "experiments.md")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
