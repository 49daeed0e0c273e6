"""The run report: one HTML page per run that a person opens from disk, to see and hear how training went.

    python report.py                                 # the run of config.yaml (or checkpoints/config.yaml)
    python report.py --checkpoint-folder runs/demo/checkpoints

piano_main.py rewrites checkpoint_folder/report.html at every save and at the end of each stage, and
check_discriminator.py rewrites it after a sweep; this script rebuilds it by hand. The page holds the
run's config and dataset, the loss curves with their health bands, the discriminator's accuracy, the
Fréchet distance and spectral motion over epochs, every saved epoch's samples as players beside their
spectrograms, the VAE's reconstructions beside their originals, and the latest discriminator sweep.

Everything it shows is a file in the checkpoint folder, referenced by a relative path: the plots that
training writes there, and report/, where the report keeps its own copies of the audio (hard links where
the file system allows, so they take no space) and their spectrograms. The folder can be moved, copied or
shared, and the page still works. It needs no server, no network and no JavaScript.
"""

import argparse
import csv
import html
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from urllib.parse import quote

import yaml

REPORT_FILE = "report.html"
MEDIA_DIR = "report"  # the report's own files, beside report.html
SWEEP_FILE = "discriminator_over_epochs.json"  # written by check_discriminator.py
SOURCES_FILE = "sources.json"  # in MEDIA_DIR: where the run's samples and dataset were, as absolute paths
EPOCH_FOLDER = re.compile(r"epoch_(\d+)")

STYLE = """
:root { color-scheme: light; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; padding: 0 1rem 3rem;
       max-width: 72rem; color: #1c1c1c; background: #fff; }
h1 { font-size: 1.6rem; margin: 1.2rem 0 0.2rem; overflow-wrap: anywhere; }
h2 { font-size: 1.25rem; margin: 2rem 0 0.5rem; border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; }
h3 { font-size: 1.05rem; margin: 1.2rem 0 0.4rem; }
.muted { color: #666; }
.verdict { padding: 0.6rem 0.8rem; border-radius: 6px; margin: 0.8rem 0; background: #f3f3f3; }
.verdict.good { background: #e7f5e9; } .verdict.bad { background: #fbe9e7; }
img { max-width: 100%; height: auto; display: block; }
figure { margin: 0; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(17rem, 1fr)); gap: 0.8rem; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 0.5rem; }
.card audio { width: 100%; margin-top: 0.3rem; }
.card figcaption { font-size: 0.85rem; color: #444; overflow-wrap: anywhere; }
.pair { display: grid; grid-template-columns: repeat(auto-fit, minmax(17rem, 1fr)); gap: 0.8rem; margin-bottom: 0.8rem; }
.table { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.85rem; }
th, td { border: 1px solid #ddd; padding: 0.2rem 0.45rem; text-align: right; white-space: nowrap; }
th { background: #f6f6f6; } td.text { text-align: left; white-space: normal; min-width: 12rem; }
details { margin: 0.6rem 0; } summary { cursor: pointer; font-weight: 600; }
pre { background: #f6f6f6; padding: 0.6rem; overflow-x: auto; font-size: 0.8rem; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 0.15rem 0.8rem; margin: 0.4rem 0; }
dt { font-weight: 600; } dd { margin: 0; overflow-wrap: anywhere; }
"""


# ---------------------------------------------------------------------------------------------
# Reading the run


def read_csv(path):
    """Rows of a metrics CSV with a numeric epoch, numbers as floats; [] when there is no file."""
    if not Path(path).exists():
        return []
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            row = {key: _number(value) for key, value in row.items() if key and isinstance(value, str) and value}
            if isinstance(row.get("epoch"), float):  # a row cut short by a crash is left out
                rows.append(row)
    return rows


def _number(text):
    try:
        return float(text)
    except ValueError:
        return text


def read_json(path):
    """The JSON object at path, or None when it is missing or unreadable."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def run_sources(config, media):
    """{"music_out_folder", "dataset_dir"}: absolute paths, fixed the first time the report sees them (from
    training, whose working directory the config's relative paths mean), so a report rebuilt from elsewhere
    (a sweep in another directory, a moved folder) never reads another run's files."""
    path = media / SOURCES_FILE
    sources = read_json(path) or {}
    wanted = {"music_out_folder": (config.get("output") or {}).get("music_out_folder"),
              "dataset_dir": (config.get("data") or {}).get("dataset_dir")}
    changed = False
    for key, configured in wanted.items():
        if key not in sources and configured and Path(configured).exists():
            sources[key] = str(Path(configured).resolve())
            changed = True
    if changed:
        path.write_text(json.dumps(sources, indent=1), encoding="utf-8")
    return sources


def dataset_summary(dataset_dir, media):
    """The dataset's dataset.json, kept in media/dataset.json so the report still has it when the dataset moves."""
    from create_dataset import DatasetError, load_dataset_info

    kept = media / "dataset.json"
    if dataset_dir:
        try:
            info = {**load_dataset_info(dataset_dir), "dataset_dir": str(dataset_dir)}
            if read_json(kept) != info:  # written once, not at every save
                kept.write_text(json.dumps(info, indent=1), encoding="utf-8")
            return info
        except (DatasetError, OSError):
            pass
    return read_json(kept)


def sync_audio(source_folder, media_folder, mirror=False):
    """Copy (hard-link where possible) the WAVs under source_folder into media_folder, keeping their relative paths;
    a copy is refreshed when its source changed. Copies whose source has gone are kept (the report is a record),
    unless mirror. The writers replace files rather than rewrite them, so a link keeps the audio it was made of."""
    source_folder, media_folder = Path(source_folder), Path(media_folder)
    if not source_folder.is_dir() or source_folder.resolve() == media_folder.resolve():
        return
    sources = sorted(source_folder.rglob("*.wav"))
    if mirror and media_folder.is_dir():
        keep = {source.relative_to(source_folder) for source in sources}
        for stale in media_folder.rglob("*.wav"):
            if stale.relative_to(media_folder) not in keep:
                stale.unlink()
                stale.with_suffix(".png").unlink(missing_ok=True)
    for source in sources:
        target = media_folder / source.relative_to(source_folder)
        stat = source.stat()
        if target.exists():  # a link, or a copy2 copy, of the same file has its size and mtime
            kept = target.stat()
            if kept.st_size == stat.st_size and kept.st_mtime_ns == stat.st_mtime_ns:
                continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copy2(source, tmp)
        os.replace(tmp, target)


def spectrogram_figure(mono, sample_rate):
    """A small matplotlib figure: the log-magnitude spectrogram of a mono signal (the report's and TensorBoard's)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 1.9))
    if len(mono) >= 512:
        ax.specgram(mono, NFFT=512, Fs=sample_rate, noverlap=384, cmap="magma", vmin=-120)
    ax.set_xlabel("seconds", fontsize=7)
    ax.set_ylabel("Hz", fontsize=7)
    ax.tick_params(labelsize=6)
    fig.tight_layout(pad=0.3)
    return fig


def spectrogram_png(wav, png):
    """spectrogram_figure of a WAV (its channels mixed) as png, unless png is newer than wav."""
    if png.exists() and png.stat().st_mtime_ns >= wav.stat().st_mtime_ns:
        return
    import matplotlib.pyplot as plt
    import soundfile

    audio, sample_rate = soundfile.read(wav, dtype="float32", always_2d=True)
    fig = spectrogram_figure(audio.mean(axis=1), sample_rate)
    tmp = png.with_name(f".{png.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png)


# ---------------------------------------------------------------------------------------------
# Writing the page


def _e(value):
    return html.escape(str(value), quote=True)


def _href(path, root):
    return quote(Path(path).relative_to(root).as_posix())


def _fmt(value, digits=3):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def audio_card(wav, root, caption):
    """A player with the spectrogram above it; a file that cannot be read gets a note instead of a picture."""
    png = wav.with_suffix(".png")
    try:
        spectrogram_png(wav, png)
        picture = f'<img src="{_href(png, root)}" alt="spectrogram of {_e(wav.name)}" loading="lazy">'
    except Exception as e:  # noqa: BLE001  (soundfile and matplotlib raise many kinds; one file must not stop the page)
        picture = f'<p class="muted">no spectrogram: {_e(wav.name)} could not be read ({_e(type(e).__name__)})</p>'
    return (f'<figure class="card">{picture}<audio controls preload="metadata" src="{_href(wav, root)}"></audio>'
            f'<figcaption>{_e(caption)}</figcaption></figure>')


def image(path, root, alt):
    """The picture at path, linked to itself (full size on a narrow screen); nothing when there is none."""
    if not path.exists():
        return ""
    return f'<a href="{_href(path, root)}"><img src="{_href(path, root)}" alt="{_e(alt)}"></a>'



def table(rows, columns, text_columns=()):
    head = "".join(f"<th>{_e(label)}</th>" for label, _ in columns)
    body = []
    for row in rows:
        cells = []
        for _, key in columns:
            value = row.get(key, "")
            cls = ' class="text"' if key in text_columns else ""
            cells.append(f"<td{cls}>{_e(_fmt(value))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<div class="table"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def verdict_box(text, details="", verdict=None):
    """A shaded box: green when the verdict (default: the text) is healthy, red when it is not."""
    text, verdict = str(text), str(verdict or text)
    cls = "good" if verdict.startswith(("healthy", "a healthy")) else "bad" if verdict.startswith(
        ("unhealthy", "broken", "generator failing", "no learning")) else ""
    more = f'<br><span class="muted">{_e(details)}</span>' if details else ""
    return f'<div class="verdict {cls}"><strong>{_e(text)}</strong>{more}</div>'


def run_name(folder):
    folder = Path(folder).resolve()
    return f"{folder.parent.name}/{folder.name}" if folder.name == "checkpoints" and folder.parent.name else folder.name


EPOCH_COLUMNS = [("epoch", "epoch"), ("D", "d/total"), ("G", "g/total"), ("R1", "d/r1"),
                 ("val D acc real", "val/d_accuracy_real"), ("val D acc fake", "val/d_accuracy_fake"),
                 ("train D acc real", "val/d_accuracy_train_real"), ("Fréchet", "val/frechet"),
                 ("motion dB", "val/spectral_motion_db"), ("real motion dB", "val/spectral_motion_db_real"),
                 ("s", "seconds"), ("verdict", "health/verdict")]
VAE_COLUMNS = [("epoch", "epoch"), ("phase", "phase"), ("STFT", "vae/stft"), ("val STFT", "val/stft"),
               ("KL", "vae/kl"), ("audio-s/s", "audio_seconds_per_second"), ("s", "seconds")]


def write_report(folder):
    """Write folder/report.html (atomically) from what the run left in folder; returns its path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no run at {folder}: the checkpoint folder does not exist")
    media = folder / MEDIA_DIR
    media.mkdir(exist_ok=True)
    config_path = folder / "config.yaml"
    config_text = config_path.read_text(encoding="utf-8") if config_path.exists() else ""
    try:
        config = yaml.safe_load(config_text) if config_text else {}
    except yaml.YAMLError:
        config = None
    config = config if isinstance(config, dict) else {}
    history, vae_history = read_csv(folder / "metrics.csv"), read_csv(folder / "vae_metrics.csv")
    sources = run_sources(config, media)
    if sources.get("music_out_folder"):  # this run's saved epochs only: another run may share the folder
        music = Path(sources["music_out_folder"])
        for epoch in sorted({int(row["epoch"]) for row in history if row.get("checkpoint") in ("True", 1.0)}):
            sync_audio(music / f"epoch_{epoch}", media / "samples" / f"epoch_{epoch}")
        sync_audio(music / "vae", media / "vae", mirror=True)
    info = dataset_summary(sources.get("dataset_dir"), media)
    sweep = read_json(folder / SWEEP_FILE)
    if sweep and not isinstance(sweep.get("rows"), list):
        sweep = None

    name = run_name(folder)
    parts = [f"<h1>MusiGAN run: {_e(name)}</h1>",
             f'<p class="muted">Report written {_e(time.strftime("%Y-%m-%d %H:%M"))} from {_e(folder.name)}/. '
             f"Every picture and recording is a file beside this page.</p>"]
    model = config.get("model") or {}
    training, data = config.get("training") or {}, config.get("data") or {}
    total = training.get("epochs")
    if total is None and training.get("steps") and data.get("steps_per_epoch"):  # sized in updates
        total = -(-training["steps"] // data["steps_per_epoch"])
    if history:
        last = history[-1]
        parts.append(f"<p>Stage two ({_e(model.get('architecture', 'latent'))} GAN): epoch {_e(_fmt(last['epoch']))}"
                     + (f" of {_e(total)}" if total else "") + ".</p>")
        if "health/verdict" in last:
            parts.append(verdict_box(f"Health at epoch {_fmt(last['epoch'])}: {last['health/verdict']}",
                                     f"D: {last.get('health/d', '?')}. G: {last.get('health/g', '?')}. "
                                     f"Fréchet: {last.get('health/frechet', '?')}. {last.get('health/oscillation', '')}",
                                     verdict=last["health/verdict"]))
    elif vae_history:
        parts.append(f"<p>Stage one (the VAE): epoch {_e(_fmt(vae_history[-1]['epoch']))}; the GAN has not begun.</p>")
    else:
        parts.append("<p>Nothing trained yet.</p>")

    # The run: config and dataset
    parts.append("<h2>The run</h2>")
    try:
        songs = info.get("songs") or {}
        seconds = info.get("chunk_seconds") or info["chunk_samples"] / info["sample_rate"]
        facts = [("dataset", info.get("dataset_dir", "?")), ("sample rate", f"{info['sample_rate']} Hz"),
                 ("channels", info["channels"]), ("chunks", f"{seconds:g} s each, in pairs (a chunk and its continuation)")]
    except (AttributeError, KeyError, TypeError, ZeroDivisionError):
        info = None
    if info:
        for split, pairs in info["pairs"].items():
            count = len(songs.get(split, []))
            facts.append((split, f"{pairs} pairs ({2 * pairs * seconds / 60:.1f} min)"
                          + (f" from {count} song{'s' if count != 1 else ''}" if count else "")))
        parts.append("<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts) + "</dl>")
        if songs:
            listing = "".join(f"<h3>{_e(split)}</h3><p>{_e(', '.join(names))}</p>" for split, names in songs.items())
            parts.append(f"<details><summary>Songs</summary>{listing}</details>")
    else:
        parts.append('<p class="muted">The dataset summary is not available (dataset.json not found).</p>')
    if config_text:
        parts.append(f'<details><summary>Config (<a href="config.yaml">config.yaml</a>)</summary>'
                     f"<pre>{_e(config_text)}</pre></details>")

    # Stage two: curves, table, samples
    if history:
        parts.append("<h2>Stage two: the GAN</h2>")
        parts.append("<p>Loss curves with their healthy bands shaded, the discriminator's accuracy on held-out real "
                     "and generated windows (and, in the table, on real training windows: well above the held-out "
                     "figure, D memorises the training set), the Fréchet distance of samples to the validation audio "
                     "(lower is closer) and their spectral motion beside the real audio's "
                     '(<a href="metrics.csv">metrics.csv</a>).</p>')
        parts.append(image(folder / "losses.png", folder, "GAN loss curves with health bands"))
        columns = [c for c in EPOCH_COLUMNS if any(c[1] in row for row in history)]
        parts.append(f"<details><summary>Every epoch ({len(history)})</summary>"
                     f"{table(history, columns, text_columns=('health/verdict',))}</details>")
        by_epoch = {int(row["epoch"]): row for row in history}
        sample_dirs = sorted(((int(m.group(1)), p) for p in (media / "samples").glob("epoch_*")
                              if p.is_dir() and (m := EPOCH_FOLDER.fullmatch(p.name))), reverse=True)
        if sample_dirs:
            parts.append("<h3>Samples from fixed noise, newest first</h3>")
        for epoch, sample_dir in sample_dirs:
            row = by_epoch.get(epoch)
            verdict = f" — {row['health/verdict']}" if row and "health/verdict" in row else ""
            cards = "".join(audio_card(wav, folder, wav.name) for wav in sorted(sample_dir.glob("*.wav")))
            parts.append(f"<h3>Epoch {_e(epoch)}{_e(verdict)}</h3><div class=\"grid\">{cards}</div>")

    # Stage one: the VAE
    if vae_history or (media / "vae").is_dir():
        parts.append("<h2>Stage one: the VAE</h2>")
        if vae_history:
            parts.append('<p>Its paired reconstruction distance and KL (<a href="vae_metrics.csv">vae_metrics.csv'
                         "</a>).</p>")
            parts.append(image(folder / "vae_losses.png", folder, "VAE loss curves"))
            columns = [c for c in VAE_COLUMNS if any(c[1] in row for row in vae_history)]
            parts.append(f"<details><summary>Every VAE epoch ({len(vae_history)})</summary>"
                         f"{table(vae_history, columns, text_columns=('phase',))}</details>")
        originals = sorted((media / "vae").glob("*.original.wav"))
        if originals:
            parts.append("<h3>Reconstructions beside their originals</h3><p>A real pair of chunks, and what the VAE "
                         "makes of it: the most any generator on this VAE can sound like.</p>")
        for original in originals:
            recon = original.with_name(original.name.replace(".original.wav", ".reconstruction.wav"))
            cards = audio_card(original, folder, f"original: {original.name}")
            if recon.exists():
                cards += audio_card(recon, folder, f"reconstruction: {recon.name}")
            parts.append(f'<div class="pair">{cards}</div>')

    # The discriminator sweep
    if sweep:
        parts.append("<h2>Discriminator sweep</h2>")
        parts.append(f"<p>Generator of epoch {_e(sweep.get('gen_epoch', '?'))} against {len(sweep['rows'])} saved "
                     f"discriminators, {_e(sweep.get('samples', '?'))} fixed fakes "
                     f'(<a href="discriminator_over_epochs.csv">discriminator_over_epochs.csv</a>).</p>')
        parts.append(verdict_box(sweep.get("verdict", "no verdict")))
        parts.append(image(folder / "discriminator_over_epochs.png", folder, "discriminator sweep"))
        columns = [("D epoch", "d_epoch"), ("d_loss (label real)", "d_loss_real_label"), ("band", "band"),
                   ("accuracy on real", "val_accuracy_real")]
        parts.append(table([row for row in sweep["rows"] if isinstance(row, dict)], columns, text_columns=("band",)))

    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<link rel="icon" href="data:,">'
            f"<title>MusiGAN run: {_e(name)}</title><style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(parts) + "\n</body></html>\n")
    path = folder / REPORT_FILE
    tmp = folder / f".{REPORT_FILE}.tmp"
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_report_safely(folder, log=print):
    """write_report for training and the scripts that end by pointing at it: a report that cannot be written (a
    full disk, a damaged file beside it) is reported in one line and the work goes on. Returns the path, or None."""
    try:
        return write_report(folder)
    except Exception as e:  # noqa: BLE001  (the report is a view of the run; it must never stop or lose the run)
        log(f"warning: the run report in {folder} could not be written ({type(e).__name__}: {e}); "
            f"rebuild it later with python report.py --checkpoint-folder {folder}")
        return None


def report_line(folder, note="open it in a browser", log=print, rewrite=False):
    """Print where folder's report.html is: the last line of training, a sweep and generate.py. rewrite writes it
    afresh first (after training or a sweep); otherwise it is written only when the run has none yet (a run
    trained before reports existed). Nothing is printed when it cannot be written."""
    path = Path(folder) / REPORT_FILE
    if (path.exists() and not rewrite) or write_report_safely(folder, log):
        log(f"run report: {path} ({note})")


def main(argv=None):
    from utilities import run_folder

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None,
                        help="config whose output.checkpoint_folder holds the run (default: config.yaml, "
                             "or checkpoints/config.yaml when config.yaml is absent)")
    parser.add_argument("--checkpoint-folder", default=None, help="the run's folder (overrides the config's)")
    args = parser.parse_args(argv)
    try:
        path = write_report(run_folder(args.checkpoint_folder, args.config))
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"run report: {path} (open it in a browser)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
