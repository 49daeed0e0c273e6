"""Compare training recipes at the same wall-clock budget on real music; write docs/experiments.md.

    python bench/experiment.py                                   # Debian's asc-music, 4 minutes per recipe
    python bench/experiment.py --music ~/Music --minutes 10 --recipes seed hinge_msd_stft

Prepares the music (12 kHz, 30 s clips, 3 s chunks, one song held out), trains each recipe with a
CPU-sized model for --minutes (pretraining included, training.time_budget_minutes), then measures the
Fréchet distance of its last generator to the held-out song with evaluate.py, and writes audio samples
(ranked by that recipe's discriminator). Results go to docs/experiments.md and, as JSON, to the last line.
"""

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The model every recipe trains: small enough to learn something in minutes on 2 CPU cores.
BASE = [
    "data.sample_rate=12000", "data.batch_size=8", "data.num_workers=0", "data.steps_per_epoch=25",
    "model.n_channels=48", "model.seq_len=6000", "model.latent_seq_len=60", "model.latent_dim=96", "model.num_heads=4",
    "model.num_layers=1", "model.num_of_gaussians=4", "model.noise_dim=6000",
    "discriminator.n_channels=32", "discriminator.width=16",
    "training.epochs=10000", "training.keys=12", "training.eval_every=5", "training.eval_samples=16",
    "output.save_after_nepochs=1000", "output.samples_per_save=0",
]
NO_D_STATS = ["loss_weights.d_melody=0", "loss_weights.d_silence=0", "loss_weights.d_std=0", "loss_weights.d_kl_songs=0"]
RECIPES = {
    "seed": [],  # bce, the seed's discriminator, recon x2 + adversarial x20 + KL, D's statistic terms
    "bce_stft": ["loss_weights.adversarial=1", "loss_weights.stft=1", *NO_D_STATS],
    "hinge_msd_stft": ["training.adversarial_loss=hinge", "discriminator.use_waveform_mdisc=false",
                       "discriminator.multi_scale=true", "discriminator.multi_resolution_stft=true",
                       "loss_weights.adversarial=1", "loss_weights.feature_matching=2", "loss_weights.stft=1",
                       *NO_D_STATS],
    "lsgan_mdisc_stft": ["training.adversarial_loss=lsgan", "discriminator.multi_resolution_stft=true",
                         "loss_weights.adversarial=1", "loss_weights.feature_matching=2", "loss_weights.stft=1",
                         *NO_D_STATS],
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
    parser.add_argument("--minutes", type=float, default=4.0, help="wall-clock budget per recipe (default: 4)")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES), help="recipes to run")
    parser.add_argument("--report", default="docs/experiments.md", help="where the results table goes")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    args = parser.parse_args()

    work = (ROOT / args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    python = sys.executable
    run([python, "prepare_dataset.py", args.music, "--out", work / "prepared", "--clip-seconds", "30"], log)
    if not (work / "dataset" / "dataset.json").exists():
        run([python, "create_dataset.py", work / "prepared", "--out", work / "dataset", "--chunk-seconds", "3",
             "--val-fraction", "0.34"], log)
    results = {}
    for name in args.recipes:
        folder = work / name
        overrides = [*BASE, f"data.dataset_dir={work / 'dataset'}", f"output.checkpoint_folder={folder / 'checkpoints'}",
                     f"output.music_out_folder={folder / 'samples'}", f"training.time_budget_minutes={args.minutes}",
                     *RECIPES[name]]
        if (folder / "checkpoints").exists():
            subprocess.run(["rm", "-rf", str(folder)], check=True)
        started = time.monotonic()
        run([python, "piano_main.py", "--device", args.device, *[a for o in overrides for a in ("--set", o)]], log)
        seconds = time.monotonic() - started
        with open(folder / "checkpoints" / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
        out = subprocess.run([python, "evaluate.py", "--epoch", "latest", "--checkpoint-folder", folder / "checkpoints",
                              "--samples", "48"], capture_output=True, text=True, cwd=ROOT)
        if out.returncode:
            raise SystemExit(f"evaluate.py failed for {name}:\n{out.stderr}")
        evaluation = json.loads(out.stdout.strip().splitlines()[-1])
        run([python, "generate.py", "--epoch", "latest", "--checkpoint-folder", folder / "checkpoints", "--count", "12",
             "--seconds", "8", "--rank-by-discriminator", "3", "--out", folder / "audio", "--device", args.device], log)
        last = rows[-1]
        results[name] = {
            "frechet": round(evaluation["frechet"], 1),
            "gaps": {k: round(v["wasserstein"], 4) for k, v in evaluation["gaps"].items()},
            "epochs": int(last["epoch"]), "seconds_per_epoch": round(sum(float(r["seconds"]) for r in rows) / len(rows), 1),
            "wall_seconds": round(seconds), "health": {k: last[k] for k in last if k.startswith("health/")},
            "val_d_accuracy_real": last.get("val/d_accuracy_real"), "frechet_during": [
                (int(r["epoch"]), round(float(r["val/frechet"]), 1)) for r in rows if r.get("val/frechet")],
            "audio": sorted(str(p.relative_to(ROOT)) for p in (folder / "audio").glob("*.wav")),
            "overrides": RECIPES[name],
        }
        print(f"{name}: Fréchet {results[name]['frechet']}, {results[name]['epochs']} epochs", flush=True)
    write_report(results, args, ROOT / args.report)
    print(json.dumps({name: {"frechet": r["frechet"], "epochs": r["epochs"]} for name, r in results.items()}))


def write_report(results, args, path):
    best = min(results, key=lambda n: results[n]["frechet"])
    lines = [
        "# Experiment: which recipe makes the most music-like audio?",
        "",
        f"Made by `python bench/experiment.py --minutes {args.minutes:g} --device {args.device}` on "
        f"{time.strftime('%Y-%m-%d')}.",
        f"- Music: `{args.music}`, resampled to 12 kHz stereo, cut into 30 s clips and 3 s chunks. One song is held out for validation.",
        f"- Budget: each recipe trains for {args.minutes:g} minutes of wall clock, pretraining included "
        "(`training.time_budget_minutes`).",
        "- Model: the same CPU-sized generator for every recipe (see `BASE` in `bench/experiment.py`).",
        "- Metric: `evaluate.py`, the Fréchet distance between 48 generated clips and 48 held-out chunks, on "
        "log-mel, MFCC, chroma and spectral-contrast statistics of ~1 s windows. Lower is closer.",
        "",
        "| recipe | Fréchet | RMS gap (dB) | centroid gap (Hz) | flatness gap | epochs | s/epoch | D health | G health | Recon health | D acc. on real |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in sorted(results.items(), key=lambda item: item[1]["frechet"]):
        h = r["health"]
        lines.append(f"| **{name}** | {r['frechet']} | {r['gaps']['rms_db']} | {r['gaps']['centroid_hz']} | "
                     f"{r['gaps']['flatness']} | {r['epochs']} | {r['seconds_per_epoch']} | {h.get('health/d', '')} | "
                     f"{h.get('health/g', '')} | {h.get('health/recon', '')} | {r['val_d_accuracy_real']} |")
    lines += ["", "## The recipes (overrides on top of the shared model)", ""]
    for name, r in results.items():
        lines.append(f"- **{name}**: `{' '.join(r['overrides']) or '(the seed recipe: config defaults)'}`")
    lines += ["", "## Fréchet distance during training (every 5 epochs, 16 clips)", ""]
    for name, r in results.items():
        lines.append(f"- {name}: " + ", ".join(f"epoch {e}: {v}" for e, v in r["frechet_during"]))
    lines += ["", "## Audio it produced (8 s each, the 3 its discriminator rated most real of 12)", ""]
    for name, r in results.items():
        lines.append(f"- {name}: " + ", ".join(f"`{a}`" for a in r["audio"]))
    lines += ["", f"Lowest Fréchet distance: **{best}**.", "",
              "## Rerun", "", "```bash", "sudo apt-get install -y asc-music   # three stereo mp3s",
              f"python bench/experiment.py --minutes {args.minutes:g}", "```", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
