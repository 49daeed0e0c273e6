"""report.html: written by a tiny real run and its sweep, complete on disk, movable, and rendered by a real browser."""

import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import check_discriminator
import piano_main
from conftest import tiny_config
from report import MEDIA_DIR, REPORT_FILE, write_report


class Sources(HTMLParser):
    """The src of every <img> and <audio>, and the text of the page."""

    def __init__(self):
        super().__init__()
        self.images, self.audio, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        elif tag == "audio":
            self.audio.append(attrs["src"])

    def handle_data(self, data):
        self.text.append(data)


def parse(path):
    parser = Sources()
    parser.feed(Path(path).read_text(encoding="utf-8"))
    return parser


def missing_sources(report):
    page = parse(report)
    return [src for src in page.images + page.audio if not (report.parent / src).is_file()]


@pytest.fixture(scope="module")
def run(tmp_path_factory, dataset):
    """A tiny two-stage run, saved at both epochs, then swept."""
    root = tmp_path_factory.mktemp("reported")
    config = tiny_config(root, dataset, training={"epochs": 2})
    assert piano_main.main(["--config", str(config)]) == 0
    folder = root / "ck"
    assert check_discriminator.main(["--gen-epoch", "latest", "--checkpoint-folder", str(folder), "--samples", "4",
                                     "--batch-size", "2", "--device", "cpu"]) == 0
    return root, folder


def test_the_page_shows_every_sample_and_reconstruction_and_only_files_that_exist(run):
    root, folder = run
    report = folder / REPORT_FILE
    assert report.exists()
    assert missing_sources(report) == []
    page = parse(report)
    written = sorted((root / "samples").glob("epoch_*/*.wav"))
    reconstructions = sorted((root / "samples" / "vae").glob("*.wav"))
    assert len(written) == 2 * 2 and len(reconstructions) >= 2  # 2 saves x samples_per_save 2; pairs of (orig, recon)
    assert len(page.audio) == len(written) + len(reconstructions)
    assert len(page.images) >= len(page.audio) + 3  # a spectrogram per player, the GAN, VAE and sweep plots
    text = " ".join(page.text)
    for heading in ("Stage two: the GAN", "Stage one: the VAE", "Discriminator sweep", "Config", "sample rate"):
        assert heading in text
    assert "losses.png" in page.images and "vae_losses.png" in page.images
    assert "discriminator_over_epochs.png" in page.images
    assert not any(src.startswith(("/", "file:", "http")) for src in page.images + page.audio)  # relative only


def test_the_report_survives_its_run_folder_being_moved(run, tmp_path):
    root, folder = run
    moved = tmp_path / "elsewhere" / "ck"
    shutil.copytree(folder, moved)
    samples, hidden = root / "samples", root / "samples.hidden"
    os.rename(samples, hidden)  # the originals are gone: the moved report must not need them
    try:
        assert missing_sources(moved / REPORT_FILE) == []
        before = len(parse(moved / REPORT_FILE).audio)
        write_report(moved)  # rewritten in its new place: the copies and the dataset summary come along
        page = parse(moved / REPORT_FILE)
        assert missing_sources(moved / REPORT_FILE) == []
        assert len(page.audio) == before > 0
        assert "sample rate" in " ".join(page.text)
    finally:
        os.rename(hidden, samples)


def test_the_sweep_and_generate_print_the_report_path(run, capsys, tmp_path):
    import generate

    _, folder = run
    assert generate.main(["--epoch", "latest", "--checkpoint-folder", str(folder), "--count", "1", "--seconds", "1",
                          "--out", str(tmp_path / "g"), "--no-plots", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith(f"run report: {folder / REPORT_FILE}")


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    if os.environ.get("MUSIGAN_REQUIRE_BROWSER"):
        pytest.fail("MUSIGAN_REQUIRE_BROWSER is set but no chromium is installed (apt-get install chromium)")
    pytest.skip("chromium is not installed (.ci/run installs it)")


def render(page, screenshot, width):
    """Screenshot page with headless Chromium; returns the page's console messages."""
    result = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
         "--allow-file-access-from-files", "--enable-logging=stderr", "--v=0", f"--window-size={width},2400",
         f"--screenshot={screenshot}", Path(page).resolve().as_uri()],
        capture_output=True, text=True, timeout=120)
    assert screenshot.exists(), result.stderr[-2000:]
    return [line for line in result.stderr.splitlines() if ":CONSOLE" in line]


def test_a_real_browser_renders_the_report_without_console_errors(run, tmp_path):
    from PIL import Image

    _, folder = run
    broken = tmp_path / "broken.html"  # the check itself: a page that logs an error is caught
    broken.write_text('<!DOCTYPE html><html><body><script>console.error("broken on purpose")</script></body></html>')
    assert any("broken on purpose" in line for line in render(broken, tmp_path / "broken.png", 800))
    for width in (1200, 360):  # a desktop window, and a phone-sized one
        shot = tmp_path / f"report_{width}.png"
        assert render(folder / REPORT_FILE, shot, width) == []
        pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
        assert pixels.std() > 10  # not blank
        assert (pixels < 128).mean() > 0.01  # text and pictures, not an empty white page
        colours = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
        assert len(np.unique(colours[::7], axis=0)) > 200  # the plots and spectrograms were drawn


def test_a_run_killed_before_any_epoch_still_gets_a_page(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    report = write_report(folder)
    assert "Nothing trained yet" in report.read_text(encoding="utf-8")
    assert (folder / MEDIA_DIR).is_dir()
