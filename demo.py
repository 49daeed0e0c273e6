"""The bundled demo: public-domain melodies rendered on a synthetic piano, then MusiGAN's whole pipeline.

    python piano_main.py --demo                  # everything under runs/demo/
    python piano_main.py --demo --demo-dir /tmp/demo --set training.steps=64

It renders the songs below to mp3 (once; a second run reuses them), then runs prepare_dataset,
create_dataset, a small training preset, the discriminator sweep and generation, and prints where
the audio, plots, metrics and checkpoints are. On a 2-core CPU it takes a few minutes.
"""

import shutil
import subprocess
from pathlib import Path

import numpy as np

SAMPLE_RATE = 12000
NOTE_INDEX = {"C": 0, "C#": 1, "Db": 1, "D": 2, "D#": 3, "Eb": 3, "E": 4, "F": 5, "F#": 6, "Gb": 6, "G": 7,
              "G#": 8, "Ab": 8, "A": 9, "A#": 10, "Bb": 10, "B": 11}

# Public-domain tunes: "NOTE+OCTAVE/BEATS" tokens ("R" is a rest) and one chord per bar.
SONGS = {
    "ode_to_joy": dict(bpm=108, beats_per_bar=4, chords="C G C G C G C G C G C G F C G C",
                       melody="E4/1 E4/1 F4/1 G4/1 G4/1 F4/1 E4/1 D4/1 C4/1 C4/1 D4/1 E4/1 E4/1.5 D4/0.5 D4/2 "
                              "E4/1 E4/1 F4/1 G4/1 G4/1 F4/1 E4/1 D4/1 C4/1 C4/1 D4/1 E4/1 D4/1.5 C4/0.5 C4/2 "
                              "D4/1 D4/1 E4/1 C4/1 D4/1 E4/0.5 F4/0.5 E4/1 C4/1 D4/1 E4/0.5 F4/0.5 E4/1 D4/1 "
                              "C4/1 D4/1 G3/2 E4/1 E4/1 F4/1 G4/1 G4/1 F4/1 E4/1 D4/1 C4/1 C4/1 D4/1 E4/1 "
                              "D4/1.5 C4/0.5 C4/2"),
    "twinkle_twinkle": dict(bpm=100, beats_per_bar=4, chords="C F C G C F C G C F C G C F C G",
                            melody="C4/1 C4/1 G4/1 G4/1 A4/1 A4/1 G4/2 F4/1 F4/1 E4/1 E4/1 D4/1 D4/1 C4/2 "
                                   "G4/1 G4/1 F4/1 F4/1 E4/1 E4/1 D4/2 G4/1 G4/1 F4/1 F4/1 E4/1 E4/1 D4/2 "
                                   "C4/1 C4/1 G4/1 G4/1 A4/1 A4/1 G4/2 F4/1 F4/1 E4/1 E4/1 D4/1 D4/1 C4/2"),
    "frere_jacques": dict(bpm=112, beats_per_bar=4, chords="F F F F F F F F",
                          melody="F4/1 G4/1 A4/1 F4/1 F4/1 G4/1 A4/1 F4/1 A4/1 Bb4/1 C5/2 A4/1 Bb4/1 C5/2 "
                                 "C5/0.5 D5/0.5 C5/0.5 Bb4/0.5 A4/1 F4/1 C5/0.5 D5/0.5 C5/0.5 Bb4/0.5 A4/1 F4/1 "
                                 "F4/1 C4/1 F4/2 F4/1 C4/1 F4/2"),
    "mary_had_a_little_lamb": dict(bpm=110, beats_per_bar=4, chords="C C G C C C G C",
                                   melody="E4/1 D4/1 C4/1 D4/1 E4/1 E4/1 E4/2 D4/1 D4/1 D4/2 E4/1 G4/1 G4/2 "
                                          "E4/1 D4/1 C4/1 D4/1 E4/1 E4/1 E4/1 E4/1 D4/1 D4/1 E4/1 D4/1 C4/4"),
    "amazing_grace": dict(bpm=84, beats_per_bar=3, chords="C C F C C C G G C C F C C G C C",
                          melody="G3/1 C4/2 E4/0.5 C4/0.5 E4/2 D4/1 C4/2 A3/1 G3/2 G3/1 C4/2 E4/0.5 C4/0.5 "
                                 "E4/2 D4/1 G4/3 R/1 E4/1 G4/1.5 E4/0.5 G4/0.5 E4/0.5 C4/2 G3/1 A3/1.5 C4/0.5 "
                                 "C4/0.5 A3/0.5 G3/2 G3/1 C4/2 E4/0.5 C4/0.5 E4/2 D4/1 C4/3"),
    "greensleeves": dict(bpm=100, beats_per_bar=3, chords="Am Am G G Am Am E E Am Am G G Am E Am Am",
                         melody="A4/1 C5/2 D5/1 E5/1.5 F5/0.5 E5/1 D5/2 B4/1 G4/1.5 A4/0.5 B4/1 C5/2 A4/1 "
                                "A4/1.5 G#4/0.5 A4/1 B4/2 G#4/1 E4/2 A4/1 C5/2 D5/1 E5/1.5 F5/0.5 E5/1 D5/2 "
                                "B4/1 G4/1.5 A4/0.5 B4/1 C5/1.5 B4/0.5 A4/1 G#4/1.5 F#4/0.5 G#4/1 A4/3"),
    "jingle_bells": dict(bpm=120, beats_per_bar=4, chords="C C C C F C D G C C C C F C G C",
                         melody="E4/1 E4/1 E4/2 E4/1 E4/1 E4/2 E4/1 G4/1 C4/1.5 D4/0.5 E4/4 F4/1 F4/1 F4/1.5 "
                                "F4/0.5 F4/1 E4/1 E4/1 E4/0.5 E4/0.5 E4/1 D4/1 D4/1 E4/1 D4/2 G4/2 E4/1 E4/1 "
                                "E4/2 E4/1 E4/1 E4/2 E4/1 G4/1 C4/1.5 D4/0.5 E4/4 F4/1 F4/1 F4/1.5 F4/0.5 "
                                "F4/1 E4/1 E4/1 E4/0.5 E4/0.5 G4/1 G4/1 F4/1 D4/1 C4/4"),
    "oh_susanna": dict(bpm=116, beats_per_bar=4, chords="C C C G C C G C F F C G C C G C",
                       melody="C4/0.5 D4/0.5 E4/1 G4/1 G4/1.5 A4/0.5 G4/1 E4/1 C4/1.5 D4/0.5 E4/1 E4/1 "
                              "D4/1 C4/1 D4/3 C4/0.5 D4/0.5 E4/1 G4/1 G4/1.5 A4/0.5 G4/1 E4/1 C4/1.5 D4/0.5 "
                              "E4/1 E4/1 D4/1 D4/1 C4/4 F4/2 A4/2 A4/2 A4/1 G4/1 G4/1 E4/1 C4/1 D4/3 "
                              "C4/0.5 D4/0.5 E4/1 G4/1 G4/1.5 A4/0.5 G4/1 E4/1 C4/1.5 D4/0.5 E4/1 E4/1 D4/1 D4/1 C4/4"),
    "when_the_saints": dict(bpm=126, beats_per_bar=4, chords="C C C C C C G G C C F F C G C C",
                            melody="R/1 C4/1 E4/1 F4/1 G4/4 R/1 C4/1 E4/1 F4/1 G4/4 R/1 C4/1 E4/1 F4/1 G4/2 "
                                   "E4/2 C4/2 E4/2 D4/4 R/1 E4/1 E4/1 D4/1 C4/3 C4/1 E4/2 G4/2 G4/1 F4/3 R/1 "
                                   "E4/1 F4/1 G4/1 E4/2 C4/2 D4/2 C4/4"),
}


def midi(note):
    """'C#4' -> 61."""
    name, octave = note[:-1], int(note[-1])
    return 12 * (octave + 1) + NOTE_INDEX[name]


def chord_notes(symbol, octave=3):
    """'Am' -> MIDI notes of an A minor triad around the given octave."""
    minor = symbol.endswith("m")
    root = midi((symbol[:-1] if minor else symbol) + str(octave))
    return [root, root + (3 if minor else 4), root + 7]


def piano_note(frequency, seconds, sample_rate=SAMPLE_RATE, velocity=0.8, release=0.08):
    """One piano-like note: inharmonic partials (f_k = k f sqrt(1 + B k^2)) that decay faster the higher
    they are, a 3 ms attack, and a short damper release after `seconds`. float32 (samples,)."""
    total = int((seconds + release) * sample_rate)
    t = np.arange(total, dtype=np.float32) / sample_rate
    inharmonicity = 4e-4
    decay = 1.2 + frequency / 300  # high notes ring shorter
    note = np.zeros(total, np.float32)
    for k in range(1, 9):
        fk = k * frequency * np.sqrt(1 + inharmonicity * k * k)
        if fk >= sample_rate / 2:
            break
        note += np.sin(2 * np.pi * fk * t) * np.exp(-t * decay * (1 + 0.6 * (k - 1))) / k ** 1.2
    envelope = np.minimum(1.0, t / 0.003)
    key_up = int(seconds * sample_rate)
    envelope[key_up:] *= np.exp(-(t[key_up:] - seconds) / (release / 4))
    return velocity * note * envelope


def render_song(song, seconds, sample_rate=SAMPLE_RATE, seed=0):
    """The song played again and again (each pass transposed and at a slightly different tempo) until
    `seconds` are filled; stereo float32 (samples, 2) with the melody right of centre, chords left."""
    rng = np.random.default_rng(seed)
    out = np.zeros((int(seconds * sample_rate) + sample_rate, 2), np.float32)
    position = 0.0
    passes = 0
    while position < seconds:
        shift = [0, 2, -3, 5, -1][passes % 5]
        beat = 60 / (song["bpm"] * (1 + 0.04 * rng.standard_normal()))
        start = position
        for token in song["melody"].split():
            name, beats = token.split("/")
            length = float(beats) * beat
            if name != "R":
                f = 440 * 2 ** ((midi(name) + shift - 69) / 12)
                note = piano_note(f, length * 0.95, sample_rate, velocity=0.55 + 0.1 * rng.random())
                i = int(position * sample_rate)
                n = min(len(note), len(out) - i)
                if n > 0:
                    out[i:i + n, 0] += 0.6 * note[:n]
                    out[i:i + n, 1] += 0.9 * note[:n]
            position += length
        bar = song["beats_per_bar"] * beat
        for b, symbol in enumerate(song["chords"].split()):
            for note_number in chord_notes(symbol):
                f = 440 * 2 ** ((note_number + shift - 69) / 12)
                note = piano_note(f, bar * 0.9, sample_rate, velocity=0.22)
                i = int((start + b * bar) * sample_rate)
                n = min(len(note), len(out) - i)
                if n > 0 and start + b * bar < position:
                    out[i:i + n, 0] += 0.9 * note[:n]
                    out[i:i + n, 1] += 0.5 * note[:n]
        passes += 1
    out = out[:int(seconds * sample_rate)]
    return out / np.abs(out).max() * 0.9


def render_collection(folder, seconds=75, sample_rate=SAMPLE_RATE, songs=None):
    """Write each song as an mp3 in folder, unless it is there already; return the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed, name in enumerate(songs or SONGS):
        path = folder / f"{name}.mp3"
        if not path.exists():
            audio = render_song(SONGS[name], seconds, sample_rate, seed)
            tmp = path.with_name(f".{path.name}.tmp.mp3")
            subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "f32le", "-ar", str(sample_rate),
                            "-ac", "2", "-i", "-", "-b:a", "96k", str(tmp)], input=audio.tobytes(), check=True)
            tmp.replace(path)
        paths.append(path)
    return paths


# A small preset: minutes on a 2-core CPU, not a model that sounds its best. Stage one trains a small VAE of
# the rendered songs; stage two a small latent GAN (config.yaml's recipe: hinge, R1, EMA) in its latent space.
DEMO_CONFIG = {
    "data": {"sample_rate": SAMPLE_RATE, "batch_size": 8, "num_workers": 0, "steps_per_epoch": 16},
    "model": {"seq_len": 6000, "latent_seq_len": 32, "latent_dim": 64, "num_heads": 4, "num_layers": 2,
              "context": 8, "noise_dim": 32, "style_dim": 32},
    "vae": {"width": 96, "latent_dim": 32, "layers": 2, "steps": 640, "kl_warmup_steps": 200},
    "discriminator": {"n_channels": 64},
    "training": {"steps": 400, "gan_batch_size": 16, "pretrain_discriminator_epochs": 1, "eval_every": 10},
    "output": {"save_after_nepochs": 10, "samples_per_save": 2},
}


def run_demo(run_dir, train, overrides=(), song_seconds=75, clip_seconds=20, chunk_seconds=2, songs=None, log=print):
    """The whole pipeline on the rendered collection, under run_dir. Returns 0 on success.

    train(argv) is piano_main.main, which calls this for --demo and passes itself (so the two modules do not
    import each other)."""
    import check_discriminator
    import create_dataset
    import generate
    import prepare_dataset
    from config_reader import apply_override, validate, write_config

    run_dir = Path(run_dir)
    music = run_dir / "music"
    log(f"1/7 rendering the demo collection into {music} (reused when there)")
    render_collection(music, song_seconds, songs=songs)
    log("2/7 prepare_dataset.py")
    if prepare_dataset.main([str(music), "--out", str(run_dir / "prepared"), "--sample-rate", str(SAMPLE_RATE),
                             "--clip-seconds", str(clip_seconds)]) != 0:
        return 1
    log("3/7 create_dataset.py")
    if create_dataset.main([str(run_dir / "prepared"), "--out", str(run_dir / "dataset"), "--chunk-seconds",
                            str(chunk_seconds), "--val-fraction", "0.2", "--overwrite"]) != 0:
        return 1

    raw = {section: dict(values) for section, values in DEMO_CONFIG.items()}
    raw["data"]["dataset_dir"] = str(run_dir / "dataset")
    raw["output"].update(checkpoint_folder=str(run_dir / "checkpoints"), music_out_folder=str(run_dir / "samples"))
    for assignment in overrides:
        apply_override(raw, assignment)
    config = validate(raw, source="the demo preset")
    for old in ("checkpoints", "samples", "generated", "reconstructions"):  # the demo's own outputs from an earlier demo run
        shutil.rmtree(run_dir / old, ignore_errors=True)
    write_config(config, run_dir / "demo_config.yaml")
    log(f"4/7 training the demo preset ({config['vae']['steps']} VAE steps, {config['training']['steps']} GAN updates; config in {run_dir / 'demo_config.yaml'})")
    status = train(["--config", str(run_dir / "demo_config.yaml"), "--device", "cpu"])
    if status != 0:
        return status
    folder = str(run_dir / "checkpoints")
    log("5/7 check_discriminator.py")
    check_discriminator.main(["--gen-epoch", "latest", "--checkpoint-folder", folder, "--samples", "16", "--device", "cpu"])
    log("6/7 generate.py")
    generate.main(["--epoch", "latest", "--checkpoint-folder", folder, "--count", "8", "--seconds", "8",
                   "--rank-by-discriminator", "3", "--out", str(run_dir / "generated"), "--device", "cpu"])
    log("7/7 generate.py --reconstruct: a rendered song through the VAE (the ceiling of quality)")
    generate.main(["--reconstruct", str(music / f"{(songs or list(SONGS))[0]}.mp3"), "--checkpoint-folder", folder,
                   "--out", str(run_dir / "reconstructions"), "--device", "cpu"])
    log(f"""
Demo finished. Everything is under {run_dir}:
  listen:       {run_dir / 'generated'}  (ranked by the discriminator, with PNG plots)
                {run_dir / 'reconstructions'}  (a song and its rebuild by the VAE, side by side)
                {run_dir / 'samples'}/epoch_N  (samples saved during training)
  training data:{run_dir / 'music'} (rendered melodies), {run_dir / 'dataset'}
  metrics:      {run_dir / 'checkpoints' / 'metrics.csv'} and losses.png (GAN), vae_metrics.csv and
                vae_losses.png (stage one: the VAE)
  sweep:        {run_dir / 'checkpoints' / 'discriminator_over_epochs.png'} and .csv
  checkpoints:  {run_dir / 'checkpoints'}
  report:       {run_dir / 'checkpoints' / 'report.html'} (all of the above on one page)
The demo's models are small and trained for minutes: the generated pieces should show notes and
their onsets, not polished music; the reconstruction is the most any generator on this VAE can sound.
Train on your own collection with config.yaml (see README.md).

To see and hear the whole run on one page, open {run_dir / 'checkpoints' / 'report.html'} in a browser.""")
    return 0
