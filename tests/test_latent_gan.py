"""Stage two: the GAN in the VAE's latent space. The generator, the latent discriminator, the step's losses,
R1, the EMA copy, minibatch discrimination, the real windows, and samples that leave training's RNG alone."""

import math
from contextlib import nullcontext

import numpy as np
import pytest
import torch

import config_reader
import loss_functions as L
import piano_train
from discriminator import build_discriminator
from piano_model import LatentWindows, build_generator

TINY = {"model": {"latent_seq_len": 12, "latent_dim": 16, "num_heads": 2, "num_layers": 1, "context": 3,
                  "noise_dim": 8, "style_dim": 4},
        "vae": {"n_fft": 128, "hop_length": 32, "downsample": 4, "latent_dim": 8, "width": 16, "layers": 1},
        "discriminator": {"n_channels": 16, "width": 8}}


def tiny(**sections):
    raw = {name: dict(values) for name, values in TINY.items()}
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return config_reader.validate(raw)


def models(config, seed=0):
    torch.manual_seed(seed)
    generator, disc = build_generator(config), build_discriminator(config)
    g_params = [p for p in generator.parameters() if p.requires_grad]
    return generator, disc, torch.optim.Adam(g_params, 1e-3), torch.optim.Adam(disc.parameters(), 1e-3)


@pytest.mark.parametrize("audio", [{}, {"multi_scale": True}, {"multi_resolution_stft": True},
                                   {"multi_resolution_stft": True, "finetune": True}])
@pytest.mark.parametrize("kind", L.ADVERSARIAL_KINDS)
def test_each_discriminator_and_loss_option_takes_a_step(kind, audio):
    finetune = audio.pop("finetune", False)
    config = tiny(discriminator=audio, model={"finetune_decoder": finetune},
                  loss_weights={"feature_matching": 1.0} if kind == "hinge" else {})
    generator, disc, optim_g, optim_d = models(config)
    assert (disc.audio is not None) == bool(audio)
    decoder_before = [p.detach().clone() for p in generator.vae.decoder.parameters()]
    g_before = [p.detach().clone() for p in generator.parameters() if p.requires_grad]
    d_before = [p.detach().clone() for p in disc.latent.parameters()]
    audio_before = [p.detach().clone() for p in disc.audio.parameters()] if audio else []
    logs = piano_train.latent_train_step(generator, disc, optim_g, optim_d, torch.randn(4, 12, 8), kind=kind,
                                         r1_weight=1.0, feature_matching=config["loss_weights"]["feature_matching"],
                                         smoothing=0.1 if kind == "bce" else 0.0, grad_clip=1.0)
    assert all(math.isfinite(v) for v in logs.values()) and logs["skipped/g"] == logs["skipped/d"] == 0
    assert logs["d/r1"] > 0 and ("g/feature_matching" in logs) == (kind == "hinge")
    assert ("g/audio_adversarial" in logs) == bool(audio)
    assert all(not torch.equal(a, b) for a, b in zip(g_before, [p for p in generator.parameters() if p.requires_grad]))
    assert sum(not torch.equal(a, b) for a, b in zip(d_before, disc.latent.parameters())) >= len(d_before) - 1
    if audio:  # the audio discriminator learned too
        assert sum(not torch.equal(a, b) for a, b in zip(audio_before, disc.audio.parameters())) >= len(audio_before) // 2
    decoder_moved = any(not torch.equal(a, b) for a, b in zip(decoder_before, generator.vae.decoder.parameters()))
    assert decoder_moved == finetune  # frozen by default
    assert not any(p.requires_grad for p in generator.vae.encoder.parameters())


def test_the_step_never_runs_the_encoder_and_by_default_never_decodes(monkeypatch):
    generator, disc, optim_g, optim_d = models(tiny())

    def forbidden(*args):
        raise AssertionError("the GAN step ran a part of the VAE it must not")

    monkeypatch.setattr(generator.vae.encoder, "forward", forbidden)
    monkeypatch.setattr(generator.vae.decoder, "forward", forbidden)
    logs = piano_train.latent_train_step(generator, disc, optim_g, optim_d, torch.randn(4, 12, 8))
    assert math.isfinite(logs["g/total"])


def test_r1_is_nonzero_on_real_latents_and_zero_for_a_constant_critic():
    _, disc, _, _ = models(tiny())
    real = torch.randn(4, 12, 8, requires_grad=True)
    assert float(L.r1_penalty(disc(real), real)) > 0
    constant = real.sum() * 0 + torch.ones(4, 1)
    x = torch.randn(4, 12, 8, requires_grad=True)
    assert float(L.r1_penalty(constant + 0 * x.sum(), x)) == 0


def test_adaptive_r1_rises_while_d_is_sure_and_stays_within_bounds():
    weight = 1.0
    for _ in range(500):
        weight = piano_train.adapt_r1(weight, accuracy=1.0, base=1.0)
    assert weight == piano_train.R1_MAX
    for _ in range(500):
        weight = piano_train.adapt_r1(weight, accuracy=0.5, base=1.0)
    assert weight == 1.0
    assert piano_train.adapt_r1(5.0, 1.0, base=0.0) == 0.0  # R1 off stays off


def test_minibatch_discrimination_sees_copies_of_one_fake():
    with_mdisc = models(tiny())[1].eval()
    without = models(tiny(discriminator={"use_minibatch_discrimination": False}))[1].eval()
    different = torch.randn(4, 12, 8)
    copies = different[:1].repeat(4, 1, 1)
    with torch.no_grad():
        assert not torch.allclose(with_mdisc(copies)[0], with_mdisc(different)[0], atol=1e-4)
        assert torch.allclose(without(copies)[0], without(different)[0], atol=1e-5)  # control: per-sample only


def test_ema_moves_toward_the_live_weights():
    import copy

    generator = models(tiny())[0]
    ema = copy.deepcopy(generator)
    with torch.no_grad():
        for p in generator.parameters():
            if p.requires_grad:
                p.add_(1.0)
    before = [(e.detach().clone(), p.detach().clone()) for e, p in zip(ema.parameters(), generator.parameters())
              if p.requires_grad]
    piano_train.ema_update(ema, generator, 0.9)
    after = [e for e, p in zip(ema.parameters(), generator.parameters()) if p.requires_grad]
    for (old, live), new in zip(before, after):
        assert torch.allclose(new, old + 0.1 * (live - old), atol=1e-6)
        assert (new - live).abs().max() < (old - live).abs().max()


@pytest.mark.parametrize("architecture", ["latent", "seed"])
def test_samples_from_fixed_noise_repeat_and_leave_the_training_rng_alone(architecture):
    if architecture == "seed":
        config = config_reader.validate({"model": {"architecture": "seed", "n_channels": 16, "seq_len": 600,
                                                   "latent_seq_len": 20, "latent_dim": 32, "num_heads": 4,
                                                   "num_of_gaussians": 3, "noise_dim": 800, "dropout": 0.1}})
    else:
        config = tiny()
    generator = models(config)[0]
    noise = generator.sample_noise(2, frames=30, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = piano_train.sample(generator, noise)
    assert torch.equal(torch.get_rng_state(), state)
    second = piano_train.sample(generator, noise)
    assert torch.equal(first, second) and torch.equal(torch.get_rng_state(), state)
    assert generator.training  # back in training mode


def test_the_generator_writes_any_length_in_blocks_as_in_one_pass():
    generator = models(tiny())[0].eval()
    noise = generator.sample_noise(2, frames=100, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(generator.latents(noise, block_frames=17), generator.latents(noise), atol=1e-5)
        mu, logvar, waveform = generator(noise)
    assert mu.shape == (2, 100, 8) and logvar is None and waveform.shape == (2, 2, 100 * generator.frame_samples)
    style = noise[..., generator.noise_dim:]
    assert torch.equal(style, style[:, :1].expand_as(style))  # a piece keeps its style noise throughout
    assert generator.fake_windows(3).shape == (3, 12, 8)


@pytest.mark.parametrize("frames, context", [(1, 8), (15, 8), (16, 8), (17, 8), (100, 0), (100, 3), (70, 40), (300, 8)])
@pytest.mark.parametrize("full_up_to", [0, 256])  # block by block always, and as the generator runs it
def test_band_attention_equals_a_masked_full_attention(frames, context, full_up_to):
    from piano_model import band_attention

    q, k, v = (torch.randn(2, 3, frames, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(i))
               for i in range(3))
    index = torch.arange(frames)
    mask = (index[:, None] - index[None, :]).abs() <= context
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.allclose(band_attention(q, k, v, context, full_up_to=full_up_to), expected, atol=1e-12)
    q.requires_grad_(True)
    band_attention(q, k, v, context, full_up_to=full_up_to).sum().backward()
    assert torch.isfinite(q.grad).all()  # padded rows of the last block never yield NaN


def test_joined_windows_are_written_alone_from_anchors_their_neighbours_share():
    generator = models(tiny(model={"seams": "joined_windows"}))[0].eval()
    length = generator.latent_seq_len
    assert generator.judged_frames == 2 * length and generator.fake_windows(3).shape == (3, 2 * length, 8)
    noise = generator.sample_noise(2, frames=3 * length - 1, generator=torch.Generator().manual_seed(1))
    assert noise.shape == (2, 4, 8 + 4)  # 3 windows, 4 anchors; the style channels are the same in all
    style = noise[..., 8:]
    assert torch.equal(style, style[:, :1].expand_as(style))
    with torch.no_grad():
        z = generator.latents(noise)
        assert z.shape == (2, 3 * length, 8)
        # window 1 depends on anchors 1 and 2 only: written alone, and it starts from where window 0 ends
        assert torch.allclose(generator.latents(noise[:, 1:3]), z[:, length:2 * length], atol=1e-6)
        assert not torch.allclose(generator.latents(noise[:, 1:3].flip(1)), z[:, length:2 * length], atol=1e-3)
        assert generator(noise)[2].shape == (2, 2, 3 * length * generator.frame_samples)


def test_real_windows_are_contiguous_stretches_of_adjacent_chunks():
    cache = np.arange(4 * 10 * 2, dtype=np.float16).reshape(4, 10, 2)  # 2 pairs of 10-frame chunks
    windows = LatentWindows(cache, 15, torch.zeros(2), torch.ones(2))
    batch = windows.batch(16, generator=torch.Generator().manual_seed(0))
    assert batch.shape == (16, 15, 2)
    steps = batch[:, 1:, 0] - batch[:, :-1, 0]
    assert torch.all(steps == 2)  # frame after frame, across the join of chunks 2i and 2i+1
    assert torch.equal(windows.fixed(4), windows.fixed(4))
    with pytest.raises(Exception, match="model.latent_seq_len \\(21 frames\\) is longer than two"):
        LatentWindows(cache, 21, torch.zeros(2), torch.ones(2))


def test_validation_judges_real_windows_in_training_shaped_batches():
    # Each split holds two synthetic 'songs' of 20 chunk pairs; every frame of pair p is +-(level + p), the sign
    # telling the songs apart, the level the splits (held-out 100, training 300); fakes are small. D must see
    # batches of gan_batch_size windows drawn across pairs and songs, as in training, never one song's in order.
    config = tiny(training={"gan_batch_size": 8})
    generator, disc = models(config)[:2]
    frames = generator.judged_frames

    def split(level, pairs=40):
        value = torch.arange(pairs).repeat_interleave(2) + level  # chunks 2p and 2p+1 form pair p
        value[pairs:] *= -1
        cache = value[:, None, None].expand(2 * pairs, frames, 8).numpy().astype(np.float32)
        return LatentWindows(cache, frames, torch.zeros(8), torch.ones(8))

    val_data, train_data = split(100), split(300)
    seen = []

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.disc, self.mdisc = disc, disc.mdisc

        def forward(self, z, return_features=False):
            seen.append(z.detach().clone())
            return self.disc(z, return_features=return_features)

    def validate():
        return piano_train.validate(generator, Recorder(), val_data, config, torch.device("cpu"), nullcontext,
                                    train_data=train_data)

    torch.manual_seed(0)
    state = torch.get_rng_state()
    first = validate()
    assert torch.equal(torch.get_rng_state(), state)  # training's random stream is untouched
    windows = [batch.mean(dim=(1, 2)) for batch in seen]  # each window's value: its pair and song
    held_out = [w for w in windows if ((w.abs() >= 100) & (w.abs() < 140)).all()]
    training = [w for w in windows if ((w.abs() >= 300) & (w.abs() < 340)).all()]
    fakes = [w for w in windows if (w.abs() < 50).all()]
    assert len(held_out) + len(training) + len(fakes) == len(seen)  # no batch mixes real and fake, or splits
    assert len(held_out) == len(fakes) == len(training) == 8  # 64 windows each, in 8 batches of 8
    assert all(batch.shape[0] == 8 for batch in seen)
    for batches in (held_out, training):
        assert all(len(set(w.tolist())) > 1 for w in batches)  # every batch holds windows of several pairs
        assert sum(bool((w > 0).any() and (w < 0).any()) for w in batches) >= len(batches) // 2  # and both songs
    assert not torch.equal(held_out[0], held_out[1])
    assert set(first) == {"val/d_accuracy_real", "val/d_accuracy_fake", "val/d_accuracy_train_real"}
    assert validate() == first  # the same windows and noise every epoch


def test_the_motion_critic_and_augmentation_take_a_step_with_finite_r1_even_on_still_windows():
    """discriminator.motion and training.ada_target: a step of each is finite, with R1 on real windows that do
    not move at all in some channels (torch.std's second derivative is NaN there; the critic's spread is not)."""
    config = tiny(discriminator={"motion": True})
    generator, disc, optim_g, optim_d = models(config)
    assert disc.motion is not None
    real = torch.randn(4, 12, 8)
    real[:2, :, :3] = 0.5  # still channels
    motion_before = [p.detach().clone() for p in disc.motion.parameters()]
    logs = piano_train.latent_train_step(generator, disc, optim_g, optim_d, real, r1_weight=1.0, augment_p=0.5)
    assert all(math.isfinite(v) for v in logs.values()) and logs["skipped/d"] == 0 and logs["d/r1"] > 0
    assert all(torch.isfinite(p).all() for p in disc.parameters())
    assert all(not torch.equal(a, b) for a, b in zip(motion_before, disc.motion.parameters()))  # it learned
    # The critic sees movement: a window and the same window frozen in time score apart.
    still = real[:1].mean(dim=1, keepdim=True).expand(1, 12, 8)
    stats = disc.motion.statistics
    assert float((stats(real[2:3]) - stats(still)).abs().max()) > 1


def test_adaptive_augmentation_transforms_real_and_fake_alike_and_follows_ds_overconfidence():
    z = torch.randn(64, 16, 8, requires_grad=True)
    assert piano_train.augment_latents(z, 0.0) is z
    torch.manual_seed(0)
    changed = (piano_train.augment_latents(z, 0.5) != z).flatten(1).any(1).float().mean()
    assert 0.7 < float(changed) < 1.0  # each window has four chances of one half to be transformed
    torch.manual_seed(1)
    a = piano_train.augment_latents(z, 1.0)
    torch.manual_seed(1)
    b = piano_train.augment_latents(z.detach().clone(), 1.0)
    assert torch.equal(a.detach(), b)  # the same draws whatever the windows are: no cue for D in the transform
    assert torch.autograd.grad(a.sum(), z)[0].abs().sum() > 0  # G and R1 see through it
    p = 0.0
    for _ in range(1000):
        p = piano_train.adapt_augmentation(p, accuracy_real=0.9, target=0.6)
    assert p == piano_train.ADA_MAX
    for _ in range(10):
        p = piano_train.adapt_augmentation(p, accuracy_real=0.3, target=0.6)
    assert p == pytest.approx(piano_train.ADA_MAX - 10 * piano_train.ADA_RATE)
    assert piano_train.adapt_augmentation(0.0, 0.1, 0.6) == 0.0
