"""Sweep every saved discriminator against one fixed generator: is the arms race healthy?

    python check_discriminator.py --gen-epoch 690
    python check_discriminator.py --gen-epoch latest --d-epochs 540:700 --samples 64 --batch-size 16
    python check_discriminator.py --gen-epoch best          # the saved epoch closest to the validation set
    python check_discriminator.py --gen-epoch 690 --config checkpoints/config.yaml

The generator of --gen-epoch makes a fixed set of fakes from fixed noise. Every
discriminator_epoch_*.pt in the checkpoint folder, in epoch order, scores them: the mean BCE of
D(G(noise)) against the label "real". Low means that discriminator is fooled by this generator.
Each discriminator's accuracy on real validation chunks is measured too, so one that calls
everything fake is not mistaken for a strong one.

Writes discriminator_over_epochs.png, .csv and .json to the checkpoint folder, rewrites the run's
report.html there with the sweep in it, prints a table that sorts the epochs into the seed's three bands (found from the losses themselves),
and ends with a verdict:
- a healthy arms race: the loss rises toward recent discriminators;
- no learning: every discriminator is fooled;
- generator failing: every discriminator sees through it.
"""

import argparse
import csv
import json
import math
import statistics
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from config_reader import config_from_checkpoint
from create_dataset import DatasetError
from discriminator import build_discriminator
from piano_model import AudioDataset, LatentWindows
from report import SWEEP_FILE, report_line
from utilities import (CheckpointError, checkpoint_epochs, checkpoint_path, forked_rng, load_checkpoint,  # noqa: F401
                       load_generator, run_folder)
from vae_utilities import LATENT_DIR

BANDS = ("fooled (old D)", "catching up", "strong (generator challenged)")
FOOLED_BELOW = 0.1  # BCE against "real": D gives the fakes at least exp(-0.1) = 90 % of being real
SEES_THROUGH_ABOVE = math.log(2)  # D gives the fakes less than half a chance of being real


def natural_breaks(values, classes=3):
    """Split sorted `values` into `classes` groups that minimize the spread within each (Jenks, exhaustively).

    Returns the index where each group after the first starts. Fine for the few hundred values a sweep has.
    """
    n = len(values)
    if n <= classes:
        return list(range(1, n))
    prefix, prefix_sq = [0.0], [0.0]
    for v in values:
        prefix.append(prefix[-1] + v)
        prefix_sq.append(prefix_sq[-1] + v * v)

    def cost(i, j):  # spread of values[i:j]
        s, q, m = prefix[j] - prefix[i], prefix_sq[j] - prefix_sq[i], j - i
        return q - s * s / m

    best = min(((a, b) for a in range(1, n - 1) for b in range(a + 1, n)),
               key=lambda ab: cost(0, ab[0]) + cost(ab[0], ab[1]) + cost(ab[1], n))
    return list(best)


def classify_sweep(epochs, losses):
    """({epoch: band}, verdict) for discriminator epochs and their mean d_loss against the label real.

    Bands come from natural breaks in log10(loss): the lowest group is "fooled (old D)", the highest
    "strong (generator challenged)". When the losses span less than a factor of 3 there are no bands to
    tell apart, and every epoch goes to the band its level suggests.
    """
    if not epochs:
        raise ValueError("no discriminator epochs to classify")
    order = sorted(range(len(losses)), key=lambda i: losses[i])
    logs = [math.log10(max(losses[i], 1e-12)) for i in order]
    bands = {}
    if max(losses) / max(min(losses), 1e-12) < 3:
        level = statistics.mean(losses)
        band = BANDS[0] if level < FOOLED_BELOW else BANDS[2] if level > SEES_THROUGH_ABOVE else BANDS[1]
        bands = {epochs[i]: band for i in order}
    else:
        starts = [0, *natural_breaks(logs), len(order)]
        for group, (a, b) in enumerate(zip(starts, starts[1:])):
            for i in order[a:b]:
                bands[epochs[i]] = BANDS[group]

    if max(losses) < FOOLED_BELOW:
        verdict = "no learning: every discriminator is fooled by this generator (all losses low)"
    elif min(losses) > SEES_THROUGH_ABOVE:
        verdict = "generator failing: every discriminator sees through it (all losses high)"
    elif spearman(epochs, losses) > 0.5 and bands[max(epochs)] != BANDS[0]:
        verdict = "a healthy arms race: the loss rises toward recent discriminators"
    else:
        verdict = "mixed: the losses do not rise with the discriminator's epoch; look at the plot"
    return bands, verdict


def spearman(xs, ys):
    """Spearman rank correlation (ties get their mean rank); 0 for fewer than 3 points."""
    if len(xs) < 3:
        return 0.0

    def ranks(values):
        order = sorted(range(len(values)), key=lambda i: values[i])
        result = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                result[order[k]] = (i + j) / 2
            i = j + 1
        return result

    rx, ry = ranks(xs), ranks(ys)
    mx, my = statistics.mean(rx), statistics.mean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    var = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return cov / var if var else 0.0


# ---------------------------------------------------------------------------------------------
# The sweep


def parse_range(text):
    """'540:700' -> (540, 700); '540:' and ':700' leave one end open."""
    try:
        low, high = text.split(":")
        return (int(low) if low else 0, int(high) if high else 10**9)
    except ValueError as e:
        raise ValueError(f"--d-epochs {text!r}: expected FIRST:LAST, for example 540:700") from e


@torch.no_grad()
def sweep(folder, gen_epoch, d_range, samples, batch_size, device, dataset_dir=None, seed=0):
    generator, config, gen_epoch = load_generator(folder, gen_epoch, device)
    d_epochs = [e for e in checkpoint_epochs(folder, "discriminator") if d_range[0] <= e <= d_range[1]]
    if not d_epochs:
        available = checkpoint_epochs(folder, "discriminator")
        raise CheckpointError(f"no discriminator checkpoints in {folder} within epochs {d_range[0]}-{d_range[1]}; "
                              f"epochs there: {', '.join(map(str, available)) or 'none'}")
    noise_rng = torch.Generator().manual_seed(seed)
    latent = generator.architecture == "latent"
    fakes = []
    with forked_rng(device):
        torch.manual_seed(seed)  # the seed's generator draws from the global RNG: the same fakes every run
        for start in range(0, samples, batch_size):
            n = min(batch_size, samples - start)
            fakes.append(generator.fake_windows(n, generator=noise_rng) if latent else
                         generator(generator.sample_noise(n, generator=noise_rng))[2])
    real = None
    dataset_dir = dataset_dir or config["data"]["dataset_dir"]
    try:
        if latent:  # D judges latent windows: the real ones come from the run's latent cache
            cache = np.load(Path(folder) / LATENT_DIR / "validation.npy", mmap_mode="r")
            val = LatentWindows(cache, generator.judged_frames, generator.latent_mean.cpu(), generator.latent_std.cpu())
            # drawn at random across the validation set, as training draws its batches: minibatch discrimination
            # reads a batch of one song's windows as a collapsed batch
            real = val.batch(samples, generator=torch.Generator().manual_seed(seed)).to(device)
        else:
            val = AudioDataset.from_dataset_dir(dataset_dir, "validation", config["model"]["seq_len"])
            if len(val):
                real = torch.stack([val[i][0] for i in range(min(len(val), samples))]).to(device)
    except (DatasetError, OSError, ValueError):
        pass  # accuracy on real chunks needs the dataset (or the latent cache); the sweep itself does not
    rows = []
    for epoch in d_epochs:
        state = load_checkpoint(checkpoint_path(folder, "discriminator", epoch))
        disc = build_discriminator(config_from_checkpoint(state["config"], source=f"discriminator_epoch_{epoch}.pt")).to(device)
        disc.load_state_dict(state["model_state_dict"])
        disc.eval()
        losses = [F.softplus(-disc(fake).float()).mean() * len(fake) for fake in fakes]  # BCE(logits, real)
        row = {"d_epoch": epoch, "d_loss_real_label": float(sum(losses)) / samples}
        if real is not None and len(real) >= 2:
            correct = sum(int((disc(chunk).float().mean(dim=1) > 0).sum())  # per sample: its mean logit
                          for chunk in real.split(batch_size) if len(chunk) >= 2)
            row["val_accuracy_real"] = correct / len(real)
        rows.append(row)
    return rows, gen_epoch


def write_outputs(rows, bands, verdict, gen_epoch, folder, samples=None):
    """discriminator_over_epochs.csv, .png, and .json (rows, bands and verdict, which the run report shows)."""
    folder = Path(folder)
    rows = [{**row, "band": bands[row["d_epoch"]]} for row in rows]
    (folder / SWEEP_FILE).write_text(json.dumps({"gen_epoch": gen_epoch, "samples": samples, "verdict": verdict,
                                                 "rows": rows}, indent=1), encoding="utf-8")
    csv_path = folder / "discriminator_over_epochs.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["d_epoch", "d_loss_real_label", "band", "val_accuracy_real"])
        writer.writeheader()
        writer.writerows(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    colours = dict(zip(BANDS, ("tab:green", "tab:orange", "tab:red")))
    for band in BANDS:
        points = [(r["d_epoch"], r["d_loss_real_label"]) for r in rows if bands[r["d_epoch"]] == band]
        if points:
            ax.scatter(*zip(*points), color=colours[band], label=band, zorder=3)
    ax.plot([r["d_epoch"] for r in rows], [r["d_loss_real_label"] for r in rows], color="grey", linewidth=1)
    ax.axvline(gen_epoch, color="black", linestyle="--", linewidth=1, label=f"generator epoch {gen_epoch}")
    ax.axhline(math.log(2), color="grey", linestyle=":", linewidth=1, label="0.693 (confusion)")
    ax.set_yscale("log")
    ax.set_xlabel("discriminator epoch")
    ax.set_ylabel("mean d_loss of G(noise), label real")
    ax.set_title(textwrap.fill(verdict, 110), fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    png_path = folder / "discriminator_over_epochs.png"
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return csv_path, png_path


def print_table(rows, bands):
    has_acc = any("val_accuracy_real" in r for r in rows)
    print(f"{'D epoch':>8}  {'d_loss (label real)':>20}  " + ("acc on real  " if has_acc else "") + "interpretation")
    for r in rows:
        acc = f"{r['val_accuracy_real']:>11.2f}  " if "val_accuracy_real" in r else ("-".rjust(11) + "  " if has_acc else "")
        note = ""
        if r.get("val_accuracy_real") == 0.0:
            note = "  (it calls real chunks fake too)"
        print(f"{r['d_epoch']:>8}  {r['d_loss_real_label']:>20.4f}  {acc}{bands[r['d_epoch']]}{note}")
    for band in BANDS:
        members = [r["d_epoch"] for r in rows if bands[r["d_epoch"]] == band]
        if members:
            losses = [r["d_loss_real_label"] for r in rows if bands[r["d_epoch"]] == band]
            print(f"  {band}: epochs {members[0]}-{members[-1]} ({len(members)}), "
                  f"d_loss {min(losses):.4g} to {max(losses):.4g}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gen-epoch", required=True,
                        help="the generator's epoch: a number, latest, or best (the saved epoch with the lowest "
                             "Fréchet distance to the validation set, val/frechet)")
    parser.add_argument("--config", default=None,
                        help="config whose output.checkpoint_folder holds the run (default: config.yaml, "
                             "or checkpoints/config.yaml when config.yaml is absent)")
    parser.add_argument("--checkpoint-folder", default=None, help="the run's folder (overrides the config's)")
    parser.add_argument("--d-epochs", default=":", help="discriminator epochs to sweep, FIRST:LAST (default: all)")
    parser.add_argument("--samples", type=int, default=32, help="fakes generated from the fixed noise (default: 32)")
    parser.add_argument("--batch-size", type=int, default=8, help="fakes scored at once (default: 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fixed noise (default: 0)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    args = parser.parse_args(argv)
    try:
        if args.samples < 2 or args.batch_size < 2:
            raise ValueError("--samples and --batch-size must be at least 2 (minibatch discrimination compares samples)")
        folder = run_folder(args.checkpoint_folder, args.config)
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        rows, gen_epoch = sweep(folder, args.gen_epoch, parse_range(args.d_epochs), args.samples, args.batch_size, device,
                                seed=args.seed)
    except (ValueError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    bands, verdict = classify_sweep([r["d_epoch"] for r in rows], [r["d_loss_real_label"] for r in rows])
    accuracies = [r["val_accuracy_real"] for r in rows if "val_accuracy_real" in r]
    if accuracies and statistics.mean(accuracies) < 0.5:
        verdict += (f"; but these discriminators also call most real chunks fake (mean accuracy on real "
                    f"{statistics.mean(accuracies):.2f}), so a high loss here is not strength")
    print(f"generator of epoch {gen_epoch} against {len(rows)} discriminators, {args.samples} fixed fakes")
    print_table(rows, bands)
    csv_path, png_path = write_outputs(rows, bands, verdict, gen_epoch, folder, samples=args.samples)
    print(f"verdict: {verdict}")
    print(f"wrote {png_path} and {csv_path}")
    report_line(folder, rewrite=True)  # the sweep is part of the report
    return 0


if __name__ == "__main__":
    sys.exit(main())
