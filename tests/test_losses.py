"""Every loss term: known values against plain loops written here, finiteness on silence and batch 1,
and one tiny training step with each adversarial loss."""

import math

import pytest
import torch

import loss_functions as L
from discriminator import Discriminator_with_mdisc
from piano_model import VariationalAttentionModel
from piano_train import train_step

KEYS = 4


def hand_made(batch=3, channels=2, samples=41, seed=0):
    """A small waveform with some structure, some flat stretches and an odd length (41 = 4 * 10 + 1)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, samples, generator=g, dtype=torch.float64)
    x[:, :, 10:20] = 0.0  # one flat segment per channel
    return x


def segs(x, keys=KEYS):
    n = x.shape[-1] // keys
    return [x[..., k * n:(k + 1) * n] for k in range(keys)]


def corr_loop(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).mean() / math.sqrt(float((a * a).mean() * (b * b).mean()) + L.EPS))


def std_loop(seg):
    return math.sqrt(float(((seg - seg.mean()) ** 2).mean()) + L.EPS)


def match_loop(real_stats, fake_stats, fake_logits=None):
    target = sum(real_stats) / len(real_stats)
    gaps = [float(((f - target) ** 2).mean()) for f in fake_stats]
    if fake_logits is None:
        return sum(gaps) / len(gaps)
    return sum(1 / (1 + math.exp(-float(l))) * g for l, g in zip(fake_logits, gaps)) / len(gaps)


# ---------------------------------------------------------------------------------------------
# Known values against loops


def test_kl_divergence_per_element():
    mu, logvar = torch.randn(2, 3, 4, dtype=torch.float64), torch.randn(2, 3, 4, dtype=torch.float64)
    expected = sum(-0.5 * (1 + lv - m * m - math.exp(lv)) for m, lv in zip(mu.flatten().tolist(), logvar.flatten().tolist())) / 24
    assert float(L.kl_divergence_loss(mu, logvar)) == pytest.approx(expected, rel=1e-5)
    assert float(L.kl_divergence_loss(torch.zeros(2, 3), torch.zeros(2, 3))) == 0.0


def melody_stats_loop(x):
    out = []
    for b in range(x.shape[0]):
        per_channel = []
        for c in range(x.shape[1]):
            s = segs(x[b, c])
            per_channel.append(sum(corr_loop(s[k], s[k + 1]) for k in range(KEYS - 1)) / (KEYS - 1))
        per_channel.append(corr_loop(x[b, 0], x[b, 1]))
        out.append(torch.tensor(per_channel, dtype=torch.float64))
    return out


@pytest.mark.parametrize("with_logits", [False, True])
def test_statistic_matching_terms(with_logits):
    real, fake = hand_made(seed=1), hand_made(seed=2) * 0.5
    logits = torch.tensor([[0.3], [-1.0], [2.0]]) if with_logits else None

    def std_stats(x):
        return [torch.tensor([[std_loop(s) for s in segs(x[b, c])] for c in range(2)]) for b in range(3)]

    def loud_stats(x):
        return [torch.tensor([float(torch.sigmoid((x[b].abs() - 0.5) / 0.1).mean())]) for b in range(3)]

    cases = [
        (L.melody_loss_d(real, fake, logits, keys=KEYS), melody_stats_loop),
        (L.compute_std_loss_d(real, fake, logits, keys=KEYS), std_stats),
        (L.silence_loss_d(real, fake, logits), loud_stats),
    ]
    for value, stats in cases:
        expected = match_loop(stats(real), stats(fake), logits.flatten().tolist() if with_logits else None)
        assert float(value) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("batch", [2, 3, 5])
def test_kl_loss_songs_d_for_any_batch_size(batch):
    real, fake = hand_made(batch=batch, samples=300, seed=3), hand_made(batch=batch, samples=300, seed=4)
    fake[0] = fake[1]  # two identical fakes: less diverse

    def diversity_loop(x):
        p = [L.spectral_distribution(x[i:i + 1], bands=8)[0] for i in range(x.shape[0])]
        def js(a, b):
            m = (a + b) / 2
            return 0.5 * float((a * (a / m).log()).sum() + (b * (b / m).log()).sum())
        return [sum(js(p[i], p[j]) for j in range(len(p)) if j != i) / (len(p) - 1) for i in range(len(p))]

    real_div = sum(diversity_loop(real)) / batch
    expected = sum((d - real_div) ** 2 for d in diversity_loop(fake)) / batch
    assert float(L.kl_loss_songs_d(real, fake, bands=8)) == pytest.approx(expected, rel=1e-4)


def test_spectral_distribution_sums_to_one():
    p = L.spectral_distribution(hand_made(samples=300), bands=8)
    assert p.shape == (3, 8) and torch.allclose(p.sum(-1), torch.ones(3, dtype=p.dtype))


def test_compute_std_loss_d_looks_at_every_segment():
    # The seed compared only the last segment's std: a difference in the first one went unseen.
    real = torch.ones(2, 2, 40) * torch.tensor([1.0, -1.0]).repeat(20)
    fake = real.clone()
    fake[..., :10] *= 3
    assert float(L.compute_std_loss_d(real, fake, keys=KEYS)) > 0.5
    assert float(L.compute_std_loss_d(real, real.clone(), keys=KEYS)) == 0.0


def test_adversarial_losses_known_values():
    zero = torch.zeros(4, 1)
    assert float(L.discriminator_adversarial_loss(zero, zero, "bce")) == pytest.approx(L.BCE_CONFUSION, abs=1e-4)
    assert float(L.generator_adversarial_loss(zero, "bce")) == pytest.approx(math.log(2), abs=1e-6)
    smoothed = L.discriminator_adversarial_loss(torch.full((4, 1), 10.0), torch.full((4, 1), -10.0), "bce", smoothing=0.1)
    assert float(smoothed) == pytest.approx(0.5 * (0.1 * 10 + math.log1p(math.exp(-10)) + math.log1p(math.exp(-10))), rel=1e-3)
    real, fake = torch.tensor([[2.0], [0.5]]), torch.tensor([[-0.5], [0.25]])
    assert float(L.discriminator_adversarial_loss(real, fake, "hinge")) == pytest.approx((0 + 0.5) / 2 + (0.5 + 1.25) / 2)
    assert float(L.discriminator_adversarial_loss(real, fake, "lsgan")) == pytest.approx((1 + 0.25) / 2 + (0.25 + 0.0625) / 2)
    assert float(L.generator_adversarial_loss(fake, "hinge")) == pytest.approx(0.125)
    assert float(L.generator_adversarial_loss(fake, "lsgan")) == pytest.approx((2.25 + 0.5625) / 2)
    with pytest.raises(ValueError, match="one of"):
        L.generator_adversarial_loss(fake, "wasserstein")


def test_feature_matching_and_stft_losses():
    real = [torch.ones(2, 3, 5), torch.zeros(2, 4, 2)]
    fake = [torch.zeros(2, 3, 5), torch.ones(2, 4, 2)]
    assert float(L.feature_matching_loss(real, fake)) == pytest.approx(1.0)
    stft = L.MultiResolutionSTFTLoss(fft_sizes=(64, 128), hop_sizes=(16, 32), win_lengths=(64, 128))
    x = hand_made(samples=1000).float()
    assert float(stft(x, x)) == pytest.approx(0.0, abs=1e-4)
    assert float(stft(x * 0.5, x)) > 0.1
    stereo = L.MultiResolutionSTFTLoss(fft_sizes=(64,), hop_sizes=(16,), win_lengths=(64,), stereo=True)
    mono = x.mean(dim=1, keepdim=True).expand_as(x)
    assert float(stereo(mono, x)) > 3 * float(stft(mono, x))  # the side signal is gone: only stereo sees it


@pytest.mark.parametrize("stereo", [False, True])
def test_the_stft_loss_equals_auralosss_in_value_and_gradient(stereo):
    import auraloss

    sizes = dict(fft_sizes=[256, 64], hop_sizes=[64, 16], win_lengths=[256, 48])
    ref = (auraloss.freq.SumAndDifferenceSTFTLoss if stereo else auraloss.freq.MultiResolutionSTFTLoss)(**sizes)
    ours = L.MultiResolutionSTFTLoss(**sizes, stereo=stereo)
    torch.manual_seed(0)
    target = torch.randn(3, 2, 2000)
    fake = torch.randn(3, 2, 2000) * 0.3
    fake[0] = 0  # silence: magnitudes at the floor
    grads = []
    for loss in (ref, ours):
        x = fake.clone().requires_grad_()
        value = loss(x, target)
        value.backward()
        grads.append((float(value), x.grad))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-5)
    assert torch.allclose(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# Finite on silence and on one sample: values and gradients


def every_term(real, fake, mu, logvar, logits):
    return {
        "kl": L.kl_divergence_loss(mu, logvar),
        "melody_d": L.melody_loss_d(real, fake, keys=KEYS),
        "melody_d_logits": L.melody_loss_d(real, fake, logits, keys=KEYS),
        "silence_d": L.silence_loss_d(real, fake),
        "std_d": L.compute_std_loss_d(real, fake, keys=KEYS),
        "kl_songs_d": L.kl_loss_songs_d(real, fake, bands=8),
        "recon": L.reconstruction_loss(fake, real),
    }


@pytest.mark.parametrize("batch", [1, 2, 3])
@pytest.mark.parametrize("kind", ["zeros", "constant", "noise"])
def test_every_loss_is_finite_with_finite_gradients(batch, kind):
    shape = (batch, 2, 64)
    make = {"zeros": torch.zeros, "constant": lambda s: torch.full(s, 0.3), "noise": torch.randn}[kind]
    real = make(shape)
    fake = make(shape).requires_grad_(True)
    mu = torch.zeros(batch, 3, 4, requires_grad=True)
    logvar = torch.zeros(batch, 3, 4, requires_grad=True)
    logits = torch.zeros(batch, 1, requires_grad=True)
    for name, value in every_term(real, fake, mu, logvar, logits).items():
        assert torch.isfinite(value), name
        grads = torch.autograd.grad(value, [fake, mu, logvar, logits], allow_unused=True)
        assert all(g is None or torch.isfinite(g).all() for g in grads), name


# ---------------------------------------------------------------------------------------------
# The sums and the step


def test_a_weight_of_zero_skips_the_term():
    fake, real = torch.randn(2, 2, 640), torch.randn(2, 2, 640)
    mu = logvar = torch.zeros(2, 3, 4)
    total, terms = L.generator_loss(fake, real, mu, logvar, torch.zeros(2, 1), {"recon": 2.0, "kl": 0.0}, keys=KEYS)
    assert list(terms) == ["recon"] and float(total) == pytest.approx(2 * float(terms["recon"]))
    total, terms = L.discriminator_loss(real, fake, torch.zeros(2, 1), torch.zeros(2, 1), L.SEED_LOSS_WEIGHTS, keys=KEYS)
    assert sorted(terms) == ["adversarial", "kl_songs", "melody", "silence", "std"]


def test_removed_loss_terms_are_accepted_at_zero_and_refused_otherwise():
    import config_reader

    old = {"loss_weights": {name: 0.0 for name in L.REMOVED_LOSS_WEIGHTS}}  # an older config.yaml lists them all
    assert "no_seconds" not in config_reader.validate(old)["loss_weights"]
    with pytest.raises(ValueError, match="loss_weights.melody is no longer a loss term"):
        config_reader.validate({"model": {"architecture": "seed"}, "loss_weights": {"melody": 1.0}})


TINY = dict(sound_channels=2, n_channels=16, seq_len=600, latent_seq_len=20, latent_dim=32, num_heads=4,
            num_layers=1, use_gaussians=True, num_of_gaussians=3, dropout=0.1, noise_dim=800, architecture="seed")


@pytest.mark.parametrize("kind", L.ADVERSARIAL_KINDS)
def test_one_training_step_with_each_adversarial_loss(kind):
    torch.manual_seed(0)
    generator = VariationalAttentionModel(**TINY)
    disc = Discriminator_with_mdisc(2, 16, 600)
    optim_g = torch.optim.Adam(generator.parameters(), 1e-3)
    optim_d = torch.optim.Adam(disc.parameters(), 1e-3)
    g_before = [p.detach().clone() for p in generator.parameters()]
    d_before = [p.detach().clone() for p in disc.parameters()]
    weights = {**L.SEED_LOSS_WEIGHTS, "stft": 1.0, "feature_matching": 1.0}
    stft = L.MultiResolutionSTFTLoss(fft_sizes=(64, 128), hop_sizes=(16, 32), win_lengths=(64, 128))

    logs = train_step(generator, disc, optim_g, optim_d, torch.randn(3, 2, 600), weights=weights, keys=KEYS,
                      kind=kind, smoothing=0.1, stft=stft, grad_clip=1.0)

    assert all(math.isfinite(v) for v in logs.values())
    assert {"g/adversarial", "g/recon", "g/kl", "g/stft", "g/feature_matching", "d/adversarial", "d/std"} <= set(logs)
    assert all(not torch.equal(a, b) for a, b in zip(g_before, generator.parameters()))
    assert sum(not torch.equal(a, b) for a, b in zip(d_before, disc.parameters())) >= len(d_before) - 1


def test_the_discriminator_loss_never_reaches_the_generator(monkeypatch):
    import piano_train

    torch.manual_seed(0)
    generator = VariationalAttentionModel(**TINY)
    disc = Discriminator_with_mdisc(2, 16, 600)
    reached = []

    def checked(*args, **kwargs):
        total, terms = L.discriminator_loss(*args, **kwargs)
        grads = torch.autograd.grad(total, list(generator.parameters()), allow_unused=True, retain_graph=True)
        reached.append(sum(g is not None for g in grads))
        return total, terms

    monkeypatch.setattr(piano_train, "discriminator_loss", checked)
    train_step(generator, disc, torch.optim.SGD(generator.parameters(), 1e-3), torch.optim.SGD(disc.parameters(), 1e-3),
               [torch.randn(2, 2, 600), torch.randn(2, 2, 600)], weights=L.SEED_LOSS_WEIGHTS, keys=KEYS)
    assert reached == [0, 0]  # one discriminator loss per accumulated batch, none touching the generator


@pytest.mark.parametrize("members", [
    {"use_waveform_mdisc": True, "multi_scale": True, "multi_resolution_stft": False},
    {"use_waveform_mdisc": False, "multi_scale": False, "multi_resolution_stft": True},
    {"use_waveform_mdisc": True, "multi_scale": True, "multi_resolution_stft": True},
])
@pytest.mark.parametrize("kind", L.ADVERSARIAL_KINDS)
def test_each_discriminator_option_builds_and_takes_a_training_step(members, kind):
    import config_reader
    from discriminator import MultiDiscriminator, build_discriminator

    config = config_reader.validate({"model": TINY, "discriminator": {"n_channels": 16, "width": 8, **members}})
    torch.manual_seed(0)
    disc = build_discriminator(config)
    assert isinstance(disc, MultiDiscriminator) and len(disc.members) == sum(members.values())
    logits, features = disc(torch.randn(3, 2, 600), return_features=True)
    assert logits.shape[0] == 3 and logits.dim() == 2 and all(f.shape[0] == 3 for f in features)
    generator = VariationalAttentionModel(**TINY)
    d_before = [p.detach().clone() for p in disc.parameters()]
    weights = {**L.SEED_LOSS_WEIGHTS, "feature_matching": 1.0}
    logs = train_step(generator, disc, torch.optim.Adam(generator.parameters(), 1e-3), torch.optim.Adam(disc.parameters(), 1e-3),
                      torch.randn(3, 2, 600), weights=weights, keys=KEYS, kind=kind, smoothing=0.1)
    assert all(math.isfinite(v) for v in logs.values()) and logs["skipped/d"] == 0
    changed = sum(not torch.equal(a, b) for a, b in zip(d_before, disc.parameters()))
    assert changed >= len(d_before) - 2  # every member learned (spectral norm's originals, projections, heads)


def test_the_seed_discriminator_alone_keeps_its_checkpoint_layout():
    import config_reader
    from discriminator import build_discriminator

    config = config_reader.validate({"model": TINY, "discriminator": {"n_channels": 16}})
    disc = build_discriminator(config)
    assert isinstance(disc, Discriminator_with_mdisc)
    assert set(disc.state_dict()) == set(Discriminator_with_mdisc(2, 16, 600).state_dict())
    with pytest.raises(ValueError, match="enable at least one"):
        build_discriminator(config_reader.validate({"model": TINY, "discriminator": {"use_waveform_mdisc": False}}))
