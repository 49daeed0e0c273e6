"""Stage one: the VAE of the user's music. It learns, stamps no fixed lines, keeps loudness, caches its latents
(and refuses a stale cache), rebuilds any audio file with generate.py --reconstruct, resumes exactly, and can
be reused by a later run; the seed's preset still trains without it."""

import csv
import json
from contextlib import nullcontext

import numpy as np
import pytest
import soundfile
import torch
import torch.nn.functional as F
import yaml

import config_reader
import generate
import piano_main
from conftest import ROOT, SR, TINY_SEED_MODEL, synth_song, tiny_config, write_audio
from evaluate import spectral_motion_db, tonal_lines_db
from piano_encoder_decoder import VariationalEncoderDecoder, vae_from_config
from piano_model import AudioDataset
from piano_pretrain import VAE_STFT_SIZES, learning_rate_factor, pretrain_vae, random_equalizer, validate_vae
from loss_functions import MultiResolutionSTFTLoss
from utilities import load_checkpoint
from vae_utilities import (LatentCacheError, build_latent_cache, load_latent_cache, load_vae, reconstruct_audio,
                           save_checkpoint, vae_fingerprint)

TINY_VAE = {"n_fft": 128, "hop_length": 32, "downsample": 4, "latent_dim": 8, "width": 16, "layers": 1, "epochs": 1}
GAN_OFF = {"epochs": 0, "keys": 8, "pretrain_discriminator_epochs": 0}


def test_encoder_and_decoder_shapes_and_any_length():
    vae = VariationalEncoderDecoder(2, 16, latent_dim=8, n_fft=128, hop_length=32, downsample=4, layers=1)
    for length in (128, 1280, 4096):
        x = torch.randn(3, 2, length) * 0.1
        mu, logvar = vae.encoder(x)
        assert mu.shape == logvar.shape == (3, length // 128, 8)
        assert vae.decoder(vae.reparameterize(mu, logvar)).shape == (3, 2, length)  # stereo stays stereo
    with pytest.raises(ValueError, match="seq_len .* must be a multiple of hop_length x downsample"):
        VariationalEncoderDecoder(2, 16, latent_dim=8, song_duration=1000, n_fft=128, hop_length=32, downsample=4)


def test_long_signals_in_blocks_equal_one_pass():
    torch.manual_seed(0)
    vae = VariationalEncoderDecoder(2, 16, latent_dim=8, n_fft=128, hop_length=32, downsample=4, layers=2).eval()
    x = torch.randn(1, 2, 128 * 300) * 0.1
    with torch.no_grad():
        mu, _ = vae.encoder(x)
        whole = vae.decoder(mu)
    mu_blocks, _ = vae.encode_long(x, block_frames=64, margin_frames=32)
    torch.testing.assert_close(mu_blocks, mu, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(vae.decode_long(mu, block_frames=64, margin_frames=32), whole, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n_fft, hop", [(512, 128), (64, 16), (60, 24)])  # hop dividing n_fft, and not
def test_the_codec_inverts_its_own_stft(n_fft, hop):
    from piano_encoder_decoder import SpectralCodec

    codec = SpectralCodec(n_fft, hop)
    x = torch.randn(2, 2, 40 * hop, generator=torch.Generator().manual_seed(0))
    spec = codec.stft(x)  # (B, C, bins, frames); istft takes frames before channels and bins
    rebuilt = codec.istft(spec.permute(0, 3, 1, 2))
    inner = slice(n_fft, -n_fft)  # the ends are reflected padding, which the overlap-add cannot restore exactly
    assert rebuilt.shape == x.shape and torch.allclose(rebuilt[..., inner], x[..., inner], atol=1e-5)


def test_the_decoder_computes_magnitude_times_rotated_phase_then_overlap_adds():
    """The decoder's fast tail (one matrix product for both heads, real arithmetic, frames-first inverse STFT)
    against the formula written plainly: complex products per bin and frame, a loop of windowed inverse FFTs."""
    import math

    torch.manual_seed(0)
    vae = VariationalEncoderDecoder(2, 16, latent_dim=4, n_fft=64, hop_length=16, downsample=2, layers=2).double()
    dec, codec = vae.decoder, vae.decoder.codec
    with torch.no_grad():
        for p in dec.parameters():
            p.normal_(0, 0.3)
        z = torch.randn(2, 6, 4, dtype=torch.float64)
        h = dec.frame_blocks(dec.up(dec.upsample(dec.latent_blocks(dec.inp(z.transpose(1, 2))))))
        frames, bins = h.shape[-1], codec.bins
        log_magnitude = F.conv1d(h, dec.to_magnitude.weight, dec.to_magnitude.bias).clamp(max=8.0)
        xy = F.conv1d(h, dec.to_phase.weight).view(2, 2, 2, bins, frames)
        unit = torch.complex(xy[:, :, 0], xy[:, :, 1]) / torch.sqrt(xy.square().sum(dim=2) + 1e-2)
        k, t = torch.arange(bins)[:, None], torch.arange(frames)[None, :]
        spec = torch.exp(log_magnitude).view(2, 2, bins, frames) * unit * torch.exp(2j * math.pi * (k * 16 * t % 64) / 64)
        total = (frames - 1) * 16 + 64
        audio, envelope = torch.zeros(2, 2, total, dtype=torch.float64), torch.zeros(total, dtype=torch.float64)
        window = torch.hann_window(64, dtype=torch.float64)
        for i in range(frames):
            audio[..., i * 16:i * 16 + 64] += torch.fft.irfft(spec[..., i], n=64) * window
            envelope[i * 16:i * 16 + 64] += window ** 2
        expected = (audio / envelope.clamp_min(1e-8))[..., 24:24 + frames * 16]
        got = dec(z)
    assert got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-5, atol=1e-6 * expected.abs().max())


def test_untrained_decoder_stamps_no_fixed_lines():
    """Average spectrum of 32 clips from random latents: no bin above 100 Hz more than 6 dB above its neighbours."""
    torch.manual_seed(0)
    vae = VariationalEncoderDecoder().eval()  # the default config's VAE
    with torch.no_grad():
        clips = vae.decoder(torch.randn(32, 47, 64)).numpy()  # 2 s each at 12 kHz
    excess, hz = tonal_lines_db(list(clips), 12000)
    assert excess <= 6.0, f"a line {excess:.1f} dB above its neighbours at {hz:.0f} Hz"
    # The same measure catches the seed's sub-pixel decoder, whose lines sit at multiples of fs / factor.
    seed = VariationalEncoderDecoder(2, 32, 50, 32, 2000, noise_dim=2000, architecture="seed").eval()
    with torch.no_grad():
        seed_clips = seed.decoder(torch.randn(32, 50, 32)).numpy()
    assert tonal_lines_db(list(seed_clips), 12000)[0] > 6.0


def test_a_quiet_passage_stays_quiet():
    t = np.arange(4000) / SR
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float16)
    chunks = np.stack([np.stack([tone, tone]) * 0.5, np.stack([tone, tone]) * 0.005, np.zeros((2, 4000), np.float16)])
    peak = AudioDataset(chunks, 4000, random_crop=False, normalization="peak")
    loud, quiet, silent = (peak[i][0] for i in range(3))
    assert float(loud.std() / quiet.std()) == pytest.approx(100, rel=0.01)  # 40 dB apart before, 40 dB after
    assert float(silent.abs().max()) == 0
    # The seed's per-chunk standardization no longer blows a -40 dB passage up to full loudness.
    seed = AudioDataset(chunks, 4000, random_crop=False, normalization="chunk")
    assert float(seed[0][0].std()) == pytest.approx(1, rel=0.01)
    assert float(seed[1][0].std()) < 0.5


def test_the_random_equalizer_changes_each_chunks_balance_not_its_loudness_or_stereo_image():
    torch.manual_seed(0)
    x = torch.randn(8, 2, 24000) * 0.1
    assert torch.equal(random_equalizer(x, SR, 0.0), x)
    y = random_equalizer(x, SR, 6.0)
    gain_db = 10 * torch.log10(torch.fft.rfft(y).abs().square() / torch.fft.rfft(x).abs().square())  # (8, 2, bins)
    bands = gain_db[..., 201:].unflatten(-1, (8, -1)).mean(-1)  # 8 bands of the gain curve, per chunk and channel
    assert torch.allclose(gain_db[:, 0], gain_db[:, 1], atol=1e-2)  # both channels alike
    assert float(bands.amax(-1).sub(bands.amin(-1)).min()) > 3  # every chunk's balance moved
    assert float((bands[0] - bands[1]).abs().max()) > 1  # and each chunk differently
    loudness_db = 10 * torch.log10(y.square().mean((1, 2)) / x.square().mean((1, 2)))
    assert float(loudness_db.abs().max()) < 6
    assert float(random_equalizer(torch.zeros(2, 2, 4000), SR, 6.0).abs().max()) == 0  # silence stays silent


def vae_config(**vae):
    config = config_reader.defaults()
    config["data"].update(sample_rate=SR, batch_size=8, num_workers=0, steps_per_epoch=0)
    config["model"]["seq_len"] = 4096
    config["vae"].update({"n_fft": 256, "hop_length": 64, "downsample": 4, "latent_dim": 16, "width": 48, "layers": 2,
                          **vae})
    return config


@pytest.fixture(scope="module")
def song_vae():
    """A tiny VAE trained for seconds on one synthesized song (peak 0.9, its dataset's peak left at 1.0): a namespace
    of the VAE, its config, the song (2, T), the training and validation chunks, the validation STFT distance before
    training, and what pretrain_vae returned."""
    from types import SimpleNamespace

    torch.manual_seed(0)
    song = synth_song(16, SR, 2, seed=3).T  # (2, T)
    chunks = np.stack([song[:, i:i + 8192] for i in range(0, song.shape[1] - 8192 + 1, 2048)]).astype(np.float16)
    train = AudioDataset(chunks, 4096, normalization="peak")
    val = AudioDataset(chunks[:8], 4096, random_crop=False, normalization="peak")
    # One synthesized song: no other song's balance to confuse it with, so no equalizer augmentation.
    config = vae_config(epochs=40, learning_rate=1e-3, kl_weight=1e-4, kl_warmup_steps=50, augment_eq_db=0.0,
                        patience=0)  # the whole 40 epochs: this test measures what they reach
    vae = vae_from_config(config["vae"], 2)
    stft = MultiResolutionSTFTLoss(**VAE_STFT_SIZES)
    before = validate_vae(vae, val, stft, "cpu", nullcontext)["val/stft"]
    history, step, status = pretrain_vae(vae, torch.optim.Adam(vae.parameters(), 1e-3), train, val, config,
                                         torch.device("cpu"), log=lambda *_: None)
    return SimpleNamespace(vae=vae.eval(), config=config, song=song, train=train, val=val, before=before,
                           history=history, step=step, status=status)


def test_the_vae_learns_a_song_within_seconds(song_vae):
    """A tiny VAE halves its STFT distance to a synthesized song's chunks in seconds of training."""
    vae, val = song_vae.vae, song_vae.val
    batches = len(song_vae.train) // 8
    assert song_vae.status == "done" and song_vae.step == 40 * batches and len(song_vae.history) == 40
    assert batches >= 5
    after = song_vae.history[-1]["val/stft"]
    assert after <= 0.5 * song_vae.before, (song_vae.before, after)
    with torch.no_grad():
        recon = vae.decoder(vae.encoder(val[0][0][None])[0])[0].numpy()
    assert abs(spectral_motion_db(recon, SR) - spectral_motion_db(val[0][0].numpy(), SR)) < 3


def rms_db(audio):
    return float(10 * np.log10(np.mean(np.square(audio, dtype=np.float64))))


def test_a_reconstruction_keeps_the_loudness_of_its_input(song_vae, tmp_path):
    """Within 1 dB of the input's RMS, for the training song and one it never heard, at the training level and 12 dB
    quieter, whether the audio comes as the dataset holds it (divided by the data's peak) or as a song from elsewhere
    (its own peak). Left to itself this decoder rebuilt its training song about 5 dB quiet, and that song stored
    12 dB quieter about 5 dB loud."""
    vae, quieter = song_vae.vae, 10 ** (-12 / 20)
    held_out = synth_song(6, SR, 2, seed=11).T
    for audio in (song_vae.song, held_out):
        for gain in (1.0, quieter):
            x = np.ascontiguousarray(audio * gain, np.float32)
            for peak in (1.0, None):
                recon = reconstruct_audio(vae, x, peak, "cpu")
                level_db = rms_db(recon) - rms_db(x)
                assert recon.shape == x.shape and abs(level_db) <= 1.0, (gain, peak, level_db)
    # A song from elsewhere enters at its own peak: 12 dB quieter in, the same reconstruction 12 dB quieter out.
    loud, quiet = (reconstruct_audio(vae, np.float32(held_out * gain), None, "cpu") for gain in (1.0, quieter))
    assert np.allclose(quiet, loud * quieter, atol=1e-4 * np.abs(loud).max())
    assert not reconstruct_audio(vae, np.zeros((2, 4096), np.float32), None, "cpu").any()  # silence stays silent

    # generate.py --reconstruct, file to file: a song stored 12 dB quieter than the one the VAE learnt.
    save_checkpoint(tmp_path / "vae.pt", vae, torch.optim.Adam(vae.parameters()), 40, song_vae.config, kind="vae",
                    data_peak=1.0, sample_rate=SR, complete=True)
    song = write_audio(tmp_path / "quiet.wav", held_out.T * quieter, SR)
    assert generate.main(["--reconstruct", str(song), "--vae", str(tmp_path / "vae.pt"), "--out", str(tmp_path / "out"),
                          "--no-plots", "--device", "cpu"]) == 0
    original, recon = (soundfile.read(tmp_path / "out" / f"quiet.{kind}.wav")[0]
                       for kind in ("original", "reconstruction"))
    assert abs(rms_db(original) - rms_db(held_out * quieter)) < 0.1 and abs(rms_db(recon) - rms_db(original)) <= 1.0


def test_the_learning_rate_decays_along_a_cosine_by_epochs_or_by_time(monkeypatch):
    assert learning_rate_factor(0.0, 0.1) == 1.0
    assert learning_rate_factor(0.5, 0.1) == pytest.approx(0.55)
    assert learning_rate_factor(1.0, 0.1) == pytest.approx(0.1) == learning_rate_factor(3.0, 0.1)
    assert learning_rate_factor(0.7, 1.0) == 1.0  # lr_decay: 1 keeps it constant
    chunks = np.stack([synth_song(2, SR, 2, seed=i).T[:, :8192] for i in range(4)]).astype(np.float16)
    config = vae_config(epochs=3, lr_decay=0.2, **{k: v for k, v in TINY_VAE.items() if k != "epochs"})
    config["data"]["batch_size"] = 2
    vae = vae_from_config(config["vae"], 2)
    optim = torch.optim.Adam(vae.parameters(), 1e-3)
    history, _, _ = pretrain_vae(vae, optim, AudioDataset(chunks, 4096, normalization="peak"), None, config,
                                 torch.device("cpu"), log=lambda *_: None)
    # Each epoch logs the rate of its last step: steps 1, 3 and 5 of 6.
    expected = [1e-3 * learning_rate_factor(s / 6, 0.2) for s in (1, 3, 5)]
    assert [row["vae/learning_rate"] for row in history] == pytest.approx(expected)
    # With a time budget, the decay follows the share of it already used, when that is ahead of the epochs:
    # here 10000 epochs could never end, and a budget of 1 s on a clock that ticks 0.05 s a reading does.
    import piano_pretrain

    ticks = iter(range(10**6))
    monkeypatch.setattr(piano_pretrain, "clock", lambda: 0.05 * next(ticks))
    config["vae"]["epochs"] = 10_000

    def run(history=None):
        vae = vae_from_config(config["vae"], 2)
        data = AudioDataset(chunks, 4096, normalization="peak")
        return pretrain_vae(vae, torch.optim.Adam(vae.parameters(), 1e-3), data, None, config, torch.device("cpu"),
                            deadline=piano_pretrain.clock() + 1.0, history=history, log=lambda *_: None)

    history, _, status = run()
    rates, shares = [row["vae/learning_rate"] for row in history], [row["vae/schedule"] for row in history]
    assert status == "out of time" and len(history) >= 4
    assert rates[0] > 0.95e-3 and rates[-1] < 0.3e-3 and rates == sorted(rates, reverse=True)
    assert shares == sorted(shares) and 0.8 < shares[-1] <= 1.0
    # A resumed run's new budget takes the schedule on from where it stood, not back to the start.
    history, _, _ = run(history=[{"epoch": 1, "vae/schedule": 0.5}])
    first = history[1]["vae/learning_rate"]
    assert 1e-3 * learning_rate_factor(1.0, 0.2) <= first <= 1e-3 * learning_rate_factor(0.5, 0.2)


def run_stage_one(tmp_path, dataset, name="run", **sections):
    sections.setdefault("vae", TINY_VAE)
    sections.setdefault("training", GAN_OFF)
    config = tiny_config(tmp_path / name, dataset, **sections)
    return config, tmp_path / name / "ck"


def test_latent_cache_holds_the_encoder_means_and_refuses_a_stale_vae(tmp_path, dataset):
    torch.manual_seed(0)
    vae = vae_from_config(TINY_VAE, 2).eval()
    build_latent_cache(vae, tmp_path, dataset, "cpu", log=lambda *_: None)
    cache = load_latent_cache(tmp_path, vae_fingerprint(vae), dataset)
    chunks = AudioDataset.from_dataset_dir(dataset, "validation", 3968, random_crop=False, normalization="peak")
    assert cache["validation"].shape == (len(chunks), 31, 8) and cache["validation"].dtype == np.float16
    with torch.no_grad():
        mu = vae.encoder(torch.stack([chunks[i][0] for i in range(len(chunks))]))[0].numpy()
    np.testing.assert_allclose(cache["validation"], mu, rtol=2e-3, atol=2e-3)  # float16 of the same means
    assert cache["info"]["frames_per_second"] == SR / 128

    with torch.no_grad():
        vae.decoder.inp.weight.add_(0.01)  # another VAE
    with pytest.raises(LatentCacheError, match="made by another VAE .* it is stale"):
        load_latent_cache(tmp_path, vae_fingerprint(vae), dataset)


def test_piano_main_rebuilds_a_stale_cache_and_reuses_a_fresh_one(tmp_path, dataset, capsys):
    config, ck = run_stage_one(tmp_path, dataset)
    assert piano_main.main(["--config", str(config)]) == 0
    manifest = ck / "latents" / "latents.json"
    record = json.loads(manifest.read_text())
    assert record["vae_fingerprint"] == load_checkpoint(ck / "vae.pt")["fingerprint"]
    capsys.readouterr()
    assert piano_main.main(["--config", str(config), "--set", "output.resume_from_checkpoint=latest"]) == 0
    assert "latent cache: up to date" in capsys.readouterr().out

    manifest.write_text(json.dumps({**record, "vae_fingerprint": "0123456789abcdef"}))  # made by another VAE
    assert piano_main.main(["--config", str(config), "--set", "output.resume_from_checkpoint=latest"]) == 0
    assert "was made by another VAE" in capsys.readouterr().out
    assert json.loads(manifest.read_text())["vae_fingerprint"] == record["vae_fingerprint"]


def test_stage_one_resumes_exactly(tmp_path, dataset):
    # Run b is extended from 1 to 2 epochs. The cosine decay follows vae.epochs, so an extended run follows
    # another schedule from its step on: the rate is held constant here to compare the two runs' weights.
    constant = {**TINY_VAE, "lr_decay": 1.0}
    straight, ck_a = run_stage_one(tmp_path, dataset, "a", vae={**constant, "epochs": 2})
    assert piano_main.main(["--config", str(straight)]) == 0
    stopped, ck_b = run_stage_one(tmp_path, dataset, "b", vae=constant)
    assert piano_main.main(["--config", str(stopped)]) == 0
    assert load_checkpoint(ck_b / "vae.pt")["epoch"] == 1
    assert piano_main.main(["--config", str(stopped), "--set", "vae.epochs=2",
                            "--set", "output.resume_from_checkpoint=latest"]) == 0
    a, b = load_checkpoint(ck_a / "vae.pt"), load_checkpoint(ck_b / "vae.pt")
    assert a["epoch"] == b["epoch"] == 2
    for name, tensor in a["model_state_dict"].items():
        assert torch.equal(tensor, b["model_state_dict"][name]), name
    assert a["fingerprint"] == b["fingerprint"]


def test_a_trained_vae_is_reused_and_a_mismatching_one_is_named(tmp_path, dataset, capsys):
    config, ck = run_stage_one(tmp_path, dataset)
    assert piano_main.main(["--config", str(config)]) == 0
    vae_path = ck / "vae.pt"
    reuse, ck2 = run_stage_one(tmp_path, dataset, "reuse", vae={**TINY_VAE, "checkpoint": str(vae_path)})
    capsys.readouterr()
    assert piano_main.main(["--config", str(reuse)]) == 0
    out = capsys.readouterr().out
    assert f"reusing the VAE at {vae_path}" in out and "VAE epoch" not in out
    assert load_checkpoint(ck2 / "vae.pt")["fingerprint"] == load_checkpoint(vae_path)["fingerprint"]
    assert (ck2 / "latents" / "latents.json").exists()

    wrong, ck3 = run_stage_one(tmp_path, dataset, "wrong", vae={**TINY_VAE, "latent_dim": 4, "checkpoint": str(vae_path)})
    assert piano_main.main(["--config", str(wrong)]) == 2
    err = capsys.readouterr().err
    assert str(vae_path) in err and "vae.latent_dim is 8 there but 4 in the config" in err
    assert not (ck3 / "vae.pt").exists()

    gan_checkpoint = ck / "generator_epoch_1.pt"
    state = load_checkpoint(vae_path)
    save_checkpoint(gan_checkpoint, torch.nn.Linear(1, 1), torch.optim.Adam(torch.nn.Linear(1, 1).parameters()), 1,
                    state["config"])
    with pytest.raises(Exception, match="not a VAE checkpoint"):
        load_vae(gan_checkpoint)


def test_adversarial_fine_tuning_freezes_the_encoder_and_trains_the_decoder(tmp_path, dataset):
    config, ck = run_stage_one(tmp_path, dataset)
    assert piano_main.main(["--config", str(config)]) == 0
    before = load_checkpoint(ck / "vae.pt")["model_state_dict"]
    assert piano_main.main(["--config", str(config), "--set", "vae.adversarial_epochs=1",
                            "--set", "output.resume_from_checkpoint=latest"]) == 0
    state = load_checkpoint(ck / "vae.pt")
    after = state["model_state_dict"]
    assert state["epoch"] == 2 and state["discriminator_state_dict"]
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("encoder."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    with open(ck / "vae_metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["phase"] for r in rows] == ["vae", "adversarial"]
    assert all(np.isfinite(float(rows[1][k])) for k in ("adv/d", "adv/g", "adv/feature_matching", "vae/stft"))


def test_a_missing_vae_checkpoint_is_a_sentence(tmp_path, dataset, capsys):
    config, _ = run_stage_one(tmp_path, dataset, vae={**TINY_VAE, "checkpoint": str(tmp_path / "nope.pt")})
    assert piano_main.main(["--config", str(config)]) == 2
    assert "vae.checkpoint is" in capsys.readouterr().err


def test_reconstruct_a_file_and_a_folder_with_a_corrupt_file(tmp_path, dataset, capsys):
    config, ck = run_stage_one(tmp_path, dataset)
    assert piano_main.main(["--config", str(config)]) == 0
    music = tmp_path / "mine"
    song = write_audio(music / "a song.mp3", synth_song(2.3, 16000, 2, seed=5), 16000)
    write_audio(music / "album" / "mono.wav", synth_song(1.1, 22050, 1, seed=6), 22050)
    (music / "album" / "broken.mp3").write_bytes(b"ID3" + bytes(range(256)) * 8)

    out = tmp_path / "one"
    assert generate.main(["--reconstruct", str(song), "--vae", str(ck / "vae.pt"), "--out", str(out)]) == 0
    original, rate = soundfile.read(out / "a song.original.wav")
    recon, rate2 = soundfile.read(out / "a song.reconstruction.wav")
    assert rate == rate2 == SR and original.shape == recon.shape and original.shape[1] == 2
    assert abs(len(original) - 2.3 * SR) < 0.05 * SR and (out / "a song.reconstruction.png").exists()

    capsys.readouterr()
    out = tmp_path / "all"
    assert generate.main(["--reconstruct", str(music), "--checkpoint-folder", str(ck), "--out", str(out),
                          "--no-plots"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "a song.original.wav", "a song.reconstruction.wav", "album_mono.original.wav", "album_mono.reconstruction.wav"]
    err = capsys.readouterr().err
    assert "skipped" in err and "broken.mp3" in err and "cannot be decoded" in err and "Traceback" not in err

    assert generate.main(["--reconstruct", str(music / "album" / "broken.mp3"), "--vae", str(ck / "vae.pt"),
                          "--out", str(tmp_path / "none")]) == 1
    assert generate.main(["--reconstruct", str(tmp_path / "nothing.mp3"), "--vae", str(ck / "vae.pt")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert generate.main(["--reconstruct", str(song), "--vae", str(tmp_path / "missing.pt")]) == 2
    assert "no VAE at" in capsys.readouterr().err


def test_the_seed_preset_still_trains_one_epoch(tmp_path, dataset, capsys):
    tiny = yaml.safe_load(tiny_config(tmp_path, dataset).read_text())
    tiny["model"] = {k: v for k, v in TINY_SEED_MODEL.items() if k != "architecture"}
    tiny["training"].pop("gan_batch_size")
    overrides = [f"{section}.{key}={json.dumps(value)}" for section, values in tiny.items() if section != "vae"
                 for key, value in values.items()] + ["training.epochs=1"]
    seed = config_reader.load_config_from_yaml(ROOT / "configs" / "seed.yaml", overrides)
    assert not seed["vae"]["enabled"] and seed["loss_weights"]["adversarial"] == 20.0
    assert seed["model"]["architecture"] == "seed" and seed["training"]["adversarial_loss"] == "bce"
    config_reader.write_config(seed, tmp_path / "seed.yaml")
    assert piano_main.main(["--config", str(tmp_path / "seed.yaml")]) == 0
    out = capsys.readouterr().out
    assert "pretrain generator epoch 1" in out and "stage one" not in out
    assert (tmp_path / "ck" / "generator_epoch_1.pt").exists() and not (tmp_path / "ck" / "vae.pt").exists()


def test_ctrl_c_in_stage_one_saves_and_resumes(tmp_path, dataset, monkeypatch, capsys):
    import piano_pretrain

    real = piano_pretrain.make_loader

    fired = []

    def interrupted(*args, **kwargs):  # the second epoch of the first run is cut off by Ctrl-C after one batch
        loader = real(*args, **kwargs)

        class CutOff:
            epochs = 0
            sampler = loader.sampler
            batch_size = loader.batch_size

            def __len__(self):
                return len(loader)

            def __iter__(self):
                CutOff.epochs += 1
                for i, batch in enumerate(loader):
                    if CutOff.epochs == 2 and i == 1 and not fired:
                        fired.append(True)
                        raise KeyboardInterrupt
                    yield batch
        return CutOff()

    monkeypatch.setattr(piano_pretrain, "make_loader", interrupted)
    config, ck = run_stage_one(tmp_path, dataset, vae={**TINY_VAE, "epochs": 3})
    assert piano_main.main(["--config", str(config)]) == 130
    assert "Interrupted during VAE epoch 2" in capsys.readouterr().out
    state = load_checkpoint(ck / "vae.pt")
    assert state["epoch"] == 2 and state["partial"] and not state["complete"]
    assert not (ck / "latents" / "latents.json").exists()

    assert piano_main.main(["--config", str(config), "--set", "output.resume_from_checkpoint=latest"]) == 0
    assert "resuming the VAE after epoch 2" in capsys.readouterr().out
    state = load_checkpoint(ck / "vae.pt")
    # The one step of epoch 2 counts: stage one trains on to exactly 3 epochs' steps, in epochs 3 and 4.
    steps = state["metrics"][0]["step"]  # one pass
    assert state["complete"] and state["step"] == 3 * steps
    assert [r["epoch"] for r in state["metrics"]] == [1, 3, 4] and state["metrics"][1]["step"] == 2 * steps + 1
    assert (ck / "latents" / "latents.json").exists()
