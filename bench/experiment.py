"""Compare training recipes at the same wall-clock budget on real music; write docs/experiments.md.

    python bench/experiment.py                                   # Debian's asc-music, 30 minutes per recipe
    python bench/experiment.py --music ~/Music --minutes 10 --recipes latent seed
    python bench/experiment.py --recipes latent bce_stft --reuse # re-measure runs already in runs/experiments
    python bench/experiment.py --recipes latent latent_joined --vae runs/experiments/latent/checkpoints/vae.pt

Prepares the music (12 kHz, 30 s clips, 3 s chunks, one song held out), trains each recipe with a
CPU-sized model for --minutes (pretraining included, training.time_budget_minutes), then measures its
last generator against the held-out song with evaluate.py (Fréchet distance, spectral motion, diversity),
beside real references (other real songs; the held-out song low-passed at 1 kHz), and writes audio
(ranked by that recipe's discriminator). Results go between the experiment markers of docs/experiments.md,
into each run folder's result.json and, as JSON, to the last line.
"""

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # evaluate.py and friends, for the references and the seam figures

# What every recipe shares: the data, the epochs' length, evaluation and saving.
BASE = [
    "data.sample_rate=12000", "data.batch_size=8", "data.num_workers=0", "data.steps_per_epoch=25",
    "training.epochs=100000", "training.eval_every=5", "training.eval_samples=16",
    "output.save_after_nepochs=100000", "output.samples_per_save=0",
]
# The seed's end-to-end generator, CPU-sized: what the recipes before the latent GAN trained (vae.enabled false).
SEED_SIZE = [
    "model.n_channels=48", "model.seq_len=6000", "model.latent_seq_len=60", "model.latent_dim=96", "model.num_heads=4",
    "model.num_layers=1", "model.num_of_gaussians=4", "model.noise_dim=6000", "discriminator.n_channels=32",
    "discriminator.width=16", "training.keys=12",
]
# The latent GAN, CPU-sized: a VAE trained for a third of the budget, then a small transformer generator.
LATENT_SIZE = [
    "vae.epochs=100000", "vae.patience=0", "vae.time_budget_minutes=12", "data.steps_per_epoch=50", "training.eval_every=10",
    "model.latent_seq_len=64", "model.latent_dim=128", "model.num_heads=4", "model.num_layers=3", "model.context=8",
    "model.noise_dim=32", "model.style_dim=32", "training.gan_batch_size=32", "discriminator.n_channels=128",
]
NO_D_STATS = ["loss_weights.d_melody=0", "loss_weights.d_silence=0", "loss_weights.d_std=0", "loss_weights.d_kl_songs=0"]
RECIPES = {  # name: (config file, overrides)
    "latent": ("config.yaml", LATENT_SIZE),  # the default: hinge + adaptive R1 on latents, EMA generator
    "latent_audio_d": ("config.yaml", [*LATENT_SIZE, "discriminator.multi_resolution_stft=true"]),
    "latent_joined": ("config.yaml", [*LATENT_SIZE, "model.seams=joined_windows"]),
    "bce_stft": ("configs/seed.yaml", [*SEED_SIZE, "loss_weights.adversarial=1", "loss_weights.stft=1", *NO_D_STATS]),
    "seed": ("configs/seed.yaml", SEED_SIZE),  # bce, recon x2 + adversarial x20 + KL, D's statistic terms
}
DESCRIPTIONS = {
    "latent": "the new default: VAE, then a local-attention transformer writing latents, judged on latents (hinge, adaptive R1, EMA)",
    "latent_audio_d": "the same, plus a multi-resolution STFT discriminator on the decoded audio",
    "latent_joined": "the same, but Musika's seams: each window written alone from noise between two shared anchors, D judging two adjacent windows joined",
    "bce_stft": "the previous default: the seed's end-to-end generator with BCE, unpaired recon x2 and STFT x1",
    "seed": "the seed's recipe exactly (configs/seed.yaml)",
}


def run(command, log):
    print("$ " + " ".join(map(str, command)), flush=True)
    with open(log, "a") as f:
        result = subprocess.run(list(map(str, command)), stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    if result.returncode:
        raise SystemExit(f"{command[1]} failed; see {log}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--music", default="/usr/share/games/asc/music", help="folder of mp3s (default: Debian's asc-music)")
    parser.add_argument("--work", default="runs/experiments", help="where data, runs and audio go (default: runs/experiments)")
    parser.add_argument("--minutes", type=float, default=30.0, help="wall-clock budget per recipe (default: 30)")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES), help="recipes to run")
    parser.add_argument("--reuse", action="store_true",
                        help="a recipe whose run folder exists is not trained again: its result.json is read, or it "
                             "is measured when there is none (to build one report from runs made in parallel)")
    parser.add_argument("--report", default="docs/experiments.md", help="the file whose experiment block is rewritten")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--vae", default=None,
                        help="a trained vae.pt that the latent recipes reuse instead of training their own, so that "
                             "the whole budget goes to the GAN stage (to compare GAN recipes on one VAE)")
    args = parser.parse_args()

    work = (ROOT / args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    python = sys.executable
    run([python, "prepare_dataset.py", args.music, "--out", work / "prepared", "--clip-seconds", "30"], log)
    if not (work / "dataset" / "dataset.json").exists():
        run([python, "create_dataset.py", work / "prepared", "--out", work / "dataset", "--chunk-seconds", "3",
             "--val-fraction", "0.34"], log)
    references = reference_scores(work / "dataset")
    results = {}
    for name in args.recipes:
        folder = work / name
        config, recipe = RECIPES[name]
        overrides = [*BASE, *recipe, f"data.dataset_dir={work / 'dataset'}",
                     f"output.checkpoint_folder={folder / 'checkpoints'}", f"output.music_out_folder={folder / 'samples'}",
                     f"training.time_budget_minutes={args.minutes}"]
        if args.vae and config == "config.yaml":
            overrides.append(f"vae.checkpoint={Path(args.vae).resolve()}")
        if args.device == "cpu":  # the recorded CPU figures are fp32; auto would pick by this CPU's bf16 speed
            overrides.append("training.precision=fp32")
        seconds = None
        if args.reuse and (folder / "result.json").exists():  # trained and measured already
            results[name] = json.loads((folder / "result.json").read_text())
            continue
        if not (args.reuse and (folder / "checkpoints").exists()):
            if (folder / "checkpoints").exists():
                subprocess.run(["rm", "-rf", str(folder)], check=True)
            started = time.monotonic()
            run([python, "piano_main.py", "--config", config, "--device", args.device,
                 *[a for o in overrides for a in ("--set", o)]], log)
            seconds = time.monotonic() - started
        results[name] = measure(name, folder, args, log)
        results[name]["wall_seconds"] = round(seconds) if seconds else None
        (folder / "result.json").write_text(json.dumps(results[name], indent=1))
        print(f"{name}: Fréchet {results[name]['frechet']}, {results[name]['epochs']} epochs", flush=True)
    write_report(results, references, args, ROOT / args.report)
    print(json.dumps({name: {"frechet": r["frechet"], "epochs": r["epochs"]} for name, r in results.items()}))


def reference_scores(dataset):
    """evaluate.py's figures for real audio: held-out chunks against training chunks (other real songs), and
    against themselves low-passed at 1 kHz. What a recipe's Fréchet distance is read against."""
    import numpy as np
    from scipy.signal import butter, sosfiltfilt

    from create_dataset import load_dataset_info
    from evaluate import compare, validation_clips
    from piano_model import AudioDataset

    info = load_dataset_info(dataset)
    val = validation_clips(AudioDataset.from_dataset_dir(dataset, "validation", info["chunk_samples"],
                                                         normalization="peak"), 48)
    train = validation_clips(AudioDataset.from_dataset_dir(dataset, "training", info["chunk_samples"], random_crop=False,
                                                           normalization="peak"), 48)
    sos = butter(8, 1000, fs=info["sample_rate"], output="sos")
    low = [sosfiltfilt(sos, clip).astype(np.float32) for clip in val]
    other = compare(val, train, info["sample_rate"])
    low_passed = compare(val, low, info["sample_rate"])
    return {"other_real": round(other["frechet"], 1), "low_passed_1khz": round(low_passed["frechet"], 1),
            "motion_real": round(other["spectral_motion_db"]["real"], 2),
            "diversity_real": {k: round(v["real"], 3) for k, v in other["diversity"].items()}}


def measure(name, folder, args, log):
    """evaluate.py and generate.py on a recipe's last checkpoint; one clip and its picture into docs."""
    python = sys.executable
    with open(folder / "checkpoints" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    out = subprocess.run([python, "evaluate.py", "--epoch", "latest", "--checkpoint-folder", folder / "checkpoints",
                          "--samples", "48"], capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        raise SystemExit(f"evaluate.py failed for {name}:\n{out.stderr}")
    evaluation = json.loads(out.stdout.strip().splitlines()[-1])
    subprocess.run(["rm", "-rf", str(folder / "audio")], check=True)
    run([python, "generate.py", "--epoch", "latest", "--checkpoint-folder", folder / "checkpoints", "--count", "12",
         "--seconds", "8", "--rank-by-discriminator", "3", "--out", folder / "audio", "--device", args.device], log)
    audio = sorted((folder / "audio").glob("*.wav"))
    listen = ROOT / "docs" / "experiment_audio"
    listen.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(audio[0], listen / f"{name}.wav")
    shutil.copyfile(audio[0].with_suffix(".png"), listen / f"{name}.png")
    last = rows[-1]
    seconds = [float(r["seconds"]) for r in rows]
    seams = seam_report(folder / "checkpoints")
    return {
        "frechet": round(evaluation["frechet"], 1),
        "motion": {k: round(v, 2) for k, v in evaluation["spectral_motion_db"].items()},
        "lines_db": {k: [round(v[0], 1), round(v[1])] for k, v in evaluation["tonal_lines_db"].items()},
        "diversity": {k: {s: round(x, 3) for s, x in v.items()} for k, v in evaluation["diversity"].items()},
        "gaps": {k: round(v["wasserstein"], 4) for k, v in evaluation["gaps"].items()},
        "epochs": int(last["epoch"]), "seconds_per_epoch": round(sum(seconds) / len(seconds), 1),
        "health": {k: last[k] for k in last if k.startswith("health/")},
        "val_d_accuracy": [last.get("val/d_accuracy_real"), last.get("val/d_accuracy_fake")],
        "frechet_during": [(int(r["epoch"]), round(float(r["val/frechet"]), 1)) for r in rows if r.get("val/frechet")],
        "audio": [str(p.relative_to(ROOT)) for p in audio],
        "seams": seams,
    }


def seam_report(folder, seconds=60.0):
    """generate.py's way of making one --seconds piece, and evaluate.join_report at its joins: the latent
    generator's window boundaries (it has no joins; these are where the windows it was trained on meet),
    or the seed's crossfades. Also the same figures at points halfway between joins, for comparison."""
    import numpy as np
    import torch

    from evaluate import join_report
    from generate import make_pieces
    from utilities import load_generator

    generator, config, _ = load_generator(folder, "latest", "cpu")
    rate = config["data"]["sample_rate"]
    samples = int(seconds * rate)
    if generator.architecture == "latent":
        fade, step = 0, generator.latent_seq_len * generator.frame_samples
    else:
        fade = min(round(0.05 * rate), generator.seq_len // 4)
        step = generator.seq_len - fade
    pieces, _ = make_pieces(generator, 1, samples, fade, torch.Generator().manual_seed(0), "cpu")
    joins = list(range(step, samples, step))
    at, between = join_report(pieces[0], joins, rate), join_report(pieces[0], [j + step // 2 for j in joins], rate)
    summary = lambda r: {"max_jump_ratio": round(max(r["jump_ratio"]), 2),  # noqa: E731
                         "max_abs_rms_gap_db": round(max(map(abs, r["rms_gap_db"])), 2),
                         "mean_rms_gap_db": round(float(np.mean(r["rms_gap_db"])), 2)}
    return {"joins": len(at["jump_ratio"]), "at_joins": summary(at), "between_joins": summary(between)}


BEGIN, END = "<!-- experiment:begin -->", "<!-- experiment:end -->"


def write_report(results, references, args, path):
    """Rewrite the block between BEGIN and END in `path` (the rest of the file, read by hand, stays)."""
    best = min(results, key=lambda n: results[n]["frechet"])
    rd = references["diversity_real"]
    lines = [
        BEGIN,
        "# Experiment: which recipe makes the most music-like audio?",
        "",
        f"Made by `python bench/experiment.py --minutes {args.minutes:g} --device {args.device}` on "
        f"{time.strftime('%Y-%m-%d')}.",
        f"- Music: `{args.music}`, 12 kHz stereo, 30 s clips, 3 s chunks; one song held out for validation.",
        f"- Budget: {args.minutes:g} minutes of wall clock per recipe, pretraining (the VAE included) counted "
        "(`training.time_budget_minutes`).",
        "- Metric: `evaluate.py --epoch latest --samples 48`: Fréchet distance between 48 generated 3 s clips and 48 "
        "held-out 3 s chunks on log-mel, MFCC, chroma and spectral-contrast statistics of ~1 s windows (lower is "
        "closer); spectral motion (dB); diversity between clips (average-spectrum distance in dB, onset-rhythm "
        "distance).",
        f"- Real references on the same held-out chunks: other real songs (the training set) **{references['other_real']}**; "
        f"the held-out chunks low-passed at 1 kHz **{references['low_passed_1khz']}**; their spectral motion "
        f"{references['motion_real']} dB; their diversity {rd['spectrum_db']} dB / {rd['onset_autocorr']}.",
        "",
        "| recipe | Fréchet | motion dB (real) | spectrum diversity dB (real) | rhythm diversity (real) | "
        "lines dB @ Hz (real) | epochs | s/epoch | val D acc real/fake | health |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in sorted(results.items(), key=lambda item: item[1]["frechet"]):
        h, d = r["health"], r["diversity"]
        verdict = h.get("health/verdict") or f"D: {h.get('health/d', '')}; G: {h.get('health/g', '')}"
        accuracy = "/".join(f"{float(a):.2f}" if a not in (None, "") else "-" for a in r["val_d_accuracy"])
        lines.append(f"| **{name}** | {r['frechet']} | {r['motion']['fake']} ({r['motion']['real']}) | "
                     f"{d['spectrum_db']['fake']} ({d['spectrum_db']['real']}) | {d['onset_autocorr']['fake']} "
                     f"({d['onset_autocorr']['real']}) | {r['lines_db']['fake'][0]} @ {r['lines_db']['fake'][1]} "
                     f"({r['lines_db']['real'][0]}) | {r['epochs']} | {r['seconds_per_epoch']} | {accuracy} | {verdict} |")
    lines += ["", "## Seams: one 60 s piece per recipe (`generate.py`'s way), `evaluate.join_report`", "",
              "A click is a jump above 3x the clip's 99th-percentile sample step; a dip or bump is an RMS gap beyond "
              "+-3 dB between the 50 ms around a join and the surrounding 500 ms. The latent generator has no joins: "
              "its figures are at the boundaries of the windows it was trained on. The seed's are at its crossfades. "
              "Halfway between joins is the control.", "",
              "| recipe | joins | max jump ratio | max abs RMS gap dB | mean RMS gap dB | control: max jump | "
              "control: max abs gap dB |", "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        a, b = r["seams"]["at_joins"], r["seams"]["between_joins"]
        lines.append(f"| {name} | {r['seams']['joins']} | {a['max_jump_ratio']} | {a['max_abs_rms_gap_db']} | "
                     f"{a['mean_rms_gap_db']} | {b['max_jump_ratio']} | {b['max_abs_rms_gap_db']} |")
    lines += ["", "## The recipes", ""]
    for name in results:
        config, overrides = RECIPES[name]
        lines.append(f"- **{name}**: {DESCRIPTIONS[name]}. `--config {config}` with `{' '.join(overrides)}` "
                     f"(and `{' '.join(BASE)}`)")
    lines += ["", "## Fréchet distance during training (16 clips, against validation chunks)", ""]
    for name, r in results.items():
        lines.append(f"- {name}: " + ", ".join(f"epoch {e}: {v}" for e, v in r["frechet_during"]))
    lines += ["", "## Listen and look", "",
              "The clip each recipe's discriminator rated most real of 12 (8 s), and its spectrogram:", ""]
    for name in results:
        lines.append(f"- {name}: `docs/experiment_audio/{name}.wav`, ![{name}](experiment_audio/{name}.png)")
    lines += ["", f"Lowest Fréchet distance: **{best}**.", "", "Rerun:", "", "```bash",
              "sudo apt-get install -y asc-music   # three stereo mp3s",
              f"python bench/experiment.py --minutes {args.minutes:g}", "```", END]
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    block = "\n".join(lines)
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = block + "\n\n" + text
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
