"""report.html: written by a tiny real run and its sweep, complete on disk, movable, and rendered by a real browser."""

import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

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
    return [src for src in page.images + page.audio if not (report.parent / unquote(src)).is_file()]


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


def test_the_report_survives_its_run_folder_being_moved(run, dataset, tmp_path, monkeypatch):
    root, folder = run
    moved = tmp_path / "elsewhere" / "ck"
    shutil.copytree(folder, moved)
    hidden = [(root / "samples", root / "samples.hidden"), (dataset, dataset.with_name("dataset.hidden"))]
    for place, away in hidden:  # the originals are gone: the moved report must not need them
        os.rename(place, away)
    monkeypatch.chdir(tmp_path)  # and it is rebuilt from another directory
    try:
        assert missing_sources(moved / REPORT_FILE) == []
        before = len(parse(moved / REPORT_FILE).audio)
        write_report(moved)  # rewritten in its new place: the copies and the dataset summary come along
        page = parse(moved / REPORT_FILE)
        assert missing_sources(moved / REPORT_FILE) == []
        assert len(page.audio) == before > 0
        assert "sample rate" in " ".join(page.text)
    finally:
        for place, away in hidden:
            os.rename(away, place)


def test_a_damaged_file_beside_the_report_does_not_stop_it(run, tmp_path):
    _, folder = run
    copy = tmp_path / "ck"
    shutil.copytree(folder, copy)
    (copy / "report" / "sources.json").write_text(json.dumps({"music_out_folder": str(tmp_path / "gone")}))
    (copy / "report" / "samples" / "epoch_1" / "sample_0.wav").write_bytes(b"")  # a disk that filled up
    (copy / "report" / "samples" / "epoch_1" / "sample_0.png").unlink()
    (copy / "discriminator_over_epochs.json").write_text("{ cut short")
    with open(copy / "metrics.csv", "a") as f:
        f.write("3,0.5\n")  # a row cut short by a crash
    page = parse(write_report(copy))
    assert "could not be read" in " ".join(page.text) and "Discriminator sweep" not in " ".join(page.text)
    assert missing_sources(copy / REPORT_FILE) == []  # no picture is promised for the unreadable recording


def test_the_sweep_and_generate_print_the_report_path(run, capsys, tmp_path):
    import generate

    _, folder = run
    assert check_discriminator.main(["--gen-epoch", "latest", "--checkpoint-folder", str(folder), "--samples", "4",
                                     "--batch-size", "2", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith(f"run report: {folder / REPORT_FILE}")
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


# Appended to a copy of the page for the browser test (the report itself has no script): every picture decoded,
# every recording readable, nothing wider than the window. Problems go to the console, which the test reads.
CHECKER = """<script>
window.addEventListener("load", () => {
  for (const img of document.images)
    if (!img.complete || img.naturalWidth === 0) console.error("broken image " + img.getAttribute("src"));
  for (const a of document.querySelectorAll("audio")) if (a.error) console.error("broken audio " + a.getAttribute("src"));
  if (document.documentElement.scrollWidth > window.innerWidth + 1)
    console.error("wider than the window: " + document.documentElement.scrollWidth + " > " + window.innerWidth);
});
for (const a of document.querySelectorAll("audio"))
  a.addEventListener("error", () => console.error("broken audio " + a.getAttribute("src")));
</script>"""


def checked_copy(report, name, breakage=None):
    """A copy of report beside it, with CHECKER, eager images, and optionally one source broken on purpose."""
    text = report.read_text(encoding="utf-8").replace(' loading="lazy"', "")
    if breakage:
        text = text.replace(*breakage, 1)
    page = report.with_name(name)
    page.write_text(text.replace("</body>", CHECKER + "</body>"), encoding="utf-8")
    return page


def render(page, screenshot, width):
    """Screenshot page with headless Chromium; returns the page's console messages."""
    profile = screenshot.with_name(f"{screenshot.stem}.profile")  # a fresh profile: no first-run or lock surprises
    result = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic",
         f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
         f"--window-size={width},2400", f"--screenshot={screenshot}", Path(page).resolve().as_uri()],
        capture_output=True, text=True, timeout=120)
    assert screenshot.exists(), result.stderr[-2000:]
    return [line for line in result.stderr.splitlines() if ":CONSOLE" in line]


def test_a_real_browser_renders_the_report_without_console_errors(run, tmp_path):
    from PIL import Image

    _, folder = run
    report = folder / REPORT_FILE
    page = parse(report)
    try:  # the check itself: a missing picture, a missing recording and an overwide page are all caught
        for name, breakage, expected in (
                ("img.html", (f'src="{page.images[0]}"', 'src="missing.png"'), "broken image"),
                ("audio.html", (f'src="{page.audio[0]}"', 'src="missing.wav"'), "broken audio"),
                ("wide.html", ("<body>", '<body><div style="width:2000px">x</div>'), "wider than the window")):
            messages = render(checked_copy(report, name, breakage), tmp_path / f"{name}.png", 800)
            assert any(expected in line for line in messages), (name, messages)
        for width in (1200, 360):  # a desktop window, and a phone-sized one
            shot = tmp_path / f"report_{width}.png"
            assert render(checked_copy(report, "checked.html"), shot, width) == []
            assert render(report, shot, width) == []  # and the page as it is
            pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
            assert pixels.std() > 10  # not blank
            assert (pixels < 128).mean() > 0.01  # text and pictures, not an empty white page
            colours = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
            assert len(np.unique(colours[::7], axis=0)) > 200  # the plots and spectrograms were drawn
    finally:
        for name in ("img.html", "audio.html", "wide.html", "checked.html"):
            (folder / name).unlink(missing_ok=True)


def test_firefox_renders_the_report_too(run, tmp_path):
    from PIL import Image

    firefox = shutil.which("firefox-esr") or shutil.which("firefox")
    if not firefox:
        pytest.skip("firefox is not installed (sudo apt-get install -y firefox-esr)")
    _, folder = run
    shot = tmp_path / "firefox.png"
    (tmp_path / "profile").mkdir()
    subprocess.run([firefox, "--headless", "--no-remote", "--profile", str(tmp_path / "profile"), "--screenshot",
                    str(shot), "--window-size=900,2000", (folder / REPORT_FILE).resolve().as_uri()],
                   capture_output=True, timeout=180)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.std() > 10 and (pixels < 128).mean() > 0.01


def test_a_run_killed_before_any_epoch_still_gets_a_page(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    report = write_report(folder)
    assert "Nothing trained yet" in report.read_text(encoding="utf-8")
    assert (folder / MEDIA_DIR).is_dir()


def test_tensorboard_holds_step_scalars_epoch_means_health_audio_and_spectrograms(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, folder = run
    gan = EventAccumulator(str(folder / "tensorboard" / "gan"), size_guidance={"audio": 0, "images": 0}).Reload()
    tags = gan.Tags()
    steps = gan.Scalars("step/d/total")
    assert len(steps) >= 2 and [e.step for e in steps] == sorted(e.step for e in steps)
    assert "epoch/val/d_accuracy_real" in tags["scalars"] and "step/g/total" in tags["scalars"]
    assert [e.step for e in gan.Scalars("epoch/epoch")] and gan.Scalars("epoch/epoch")[-1].value == 2
    assert "samples/sample_0" in tags["audio"] and "samples/sample_0/spectrogram" in tags["images"]
    clip = gan.Audio("samples/sample_0")[-1]
    assert clip.sample_rate > 0 and len(clip.encoded_audio_string) > 1000  # a real WAV, not an empty one
    assert any("health" in tag for tag in tags["tensors"])  # add_text is stored as a tensor summary
    vae = EventAccumulator(str(folder / "tensorboard" / "vae"), size_guidance={"audio": 0}).Reload()
    assert "step/vae/stft" in vae.Tags()["scalars"] and "epoch/val/stft" in vae.Tags()["scalars"]
    assert any(tag.startswith("reconstructions/") for tag in vae.Tags()["audio"])
