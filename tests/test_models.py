"""Generator, encoder-decoder and discriminator at tiny sizes on the CPU: shapes, gradients, errors."""

import math

import pytest
import torch
import torch.nn.functional as F

from discriminator import Discriminator_with_mdisc
from piano_encoder_decoder import VariationalEncoderDecoder, fast_dropout, upsample_factors
from piano_model import SEED_MODEL_CONFIG as SEED_CONFIG, VariationalAttentionModel

TINY = dict(sound_channels=2, n_channels=16, seq_len=1000, latent_seq_len=20, latent_dim=32, num_heads=4,
            num_layers=1, use_gaussians=True, num_of_gaussians=3, dropout=0.1, noise_dim=1500, architecture="seed")
VARIANTS = [
    TINY,
    {**TINY, "n_channels": 24, "seq_len": 997, "noise_dim": 1234},  # nothing divides evenly
    {**TINY, "use_gaussians": False, "num_layers": 2, "num_heads": 8},
    {**TINY, "sound_channels": 1, "latent_seq_len": 7, "seq_len": 333, "noise_dim": 7},
    {**TINY, "num_layers": 0, "n_channels": 8, "latent_seq_len": 50, "seq_len": 50},
]


@pytest.mark.parametrize("config", VARIANTS)
def test_generator_shapes(config):
    generator = VariationalAttentionModel(**config)
    mu, logvar, waveform = generator(torch.randn(3, config["sound_channels"], config["noise_dim"]))
    assert mu.shape == logvar.shape == (3, config["latent_seq_len"], config["latent_dim"])
    assert waveform.shape == (3, config["sound_channels"], config["seq_len"])
    assert torch.isfinite(waveform).all()


@pytest.mark.parametrize("config", VARIANTS)
def test_every_generator_parameter_receives_a_gradient(config):
    torch.manual_seed(0)
    generator = VariationalAttentionModel(**config)
    mu, logvar, waveform = generator(torch.randn(2, config["sound_channels"], config["noise_dim"]))
    (waveform.pow(2).mean() + mu.mean() + logvar.mean()).backward()
    missing = [name for name, p in generator.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_seed_config_is_small_and_its_gaussians_are_honored():
    generator = VariationalAttentionModel(**SEED_CONFIG)
    assert sum(p.numel() for p in generator.parameters()) <= 7_000_000
    envelope = generator.vae.decoder.learnable_filter
    assert envelope.proj.out_features == 2 * 6 * 3
    eight = VariationalAttentionModel(**{**TINY, "num_of_gaussians": 8}).vae.decoder.learnable_filter
    assert eight.proj.out_features == 2 * 8 * 3 and eight(torch.randn(1, 20, 32)).shape == (1, 2, 1000)


def test_untrained_output_is_not_clicks():
    # The seed's envelope widths were under a sample: 99.9 % of its untrained output was exact zeros.
    torch.manual_seed(0)
    generator = VariationalAttentionModel(**TINY).eval()
    with torch.no_grad():
        _, _, waveform = generator(torch.randn(4, 2, TINY["noise_dim"]))
        envelope = generator.vae.decoder.learnable_filter(torch.randn(4, 20, 32))
    assert (waveform == 0).float().mean() < 0.01
    middle = envelope[..., 100:-100]
    assert middle.min() > 0.6 and middle.max() < 1.4  # close to 1 everywhere: the bumps span the clip


def test_envelope_grid_matches_the_exact_sum_of_gaussians_at_the_narrowest_widths():
    torch.manual_seed(0)
    envelope = VariationalAttentionModel(**SEED_CONFIG).vae.decoder.learnable_filter
    with torch.no_grad():
        envelope.proj.bias.view(2, 6, 3)[..., 1] = -30.0  # widths at their lower bound
        envelope.proj.weight.normal_(std=0.05)
        z = torch.randn(2, 500, 512)
        coarse = envelope(z)
        params = envelope.proj(z.mean(1)).view(2, 2, 6, 1, 3)
        centre = torch.sigmoid(params[..., 0]) * 16500
        width = envelope.min_width + F.softplus(params[..., 1]) * envelope.spacing
        t = torch.arange(16500.0)
        exact = (F.softplus(params[..., 2]) * torch.exp(-0.5 * ((t - centre) / width) ** 2)).sum(2)
    assert float(width.max()) < envelope.min_width * 1.01
    assert float((coarse - exact).abs().max()) < 0.01 * float(exact.abs().max())


def test_output_can_reach_standardized_data():
    # A target well outside [0, 1], where the seed's hard-sigmoid output could never go.
    torch.manual_seed(0)
    config = {**TINY, "dropout": 0.0}
    generator = VariationalAttentionModel(**config)
    noise = torch.randn(2, 2, config["noise_dim"])
    t = torch.linspace(0, 20 * math.pi, config["seq_len"])
    target = torch.stack([torch.sin(t), torch.cos(t)]).repeat(2, 1, 1) * 2.5  # spans -2.5 .. 2.5
    optimizer = torch.optim.Adam(generator.parameters(), 3e-3)
    for _ in range(150):
        _, _, waveform = generator(noise)
        loss = F.mse_loss(waveform, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    waveform = waveform.detach()
    assert loss.item() < 0.5 and float(waveform.min()) < -1.5 and float(waveform.max()) > 1.5


def test_generator_is_deterministic_under_a_fixed_seed():
    outputs = []
    for _ in range(2):
        torch.manual_seed(123)
        generator = VariationalAttentionModel(**TINY)  # in training mode: dropout and sampling both random
        outputs.append(generator(torch.randn(2, 2, TINY["noise_dim"]))[2])
    assert torch.equal(outputs[0], outputs[1])
    torch.manual_seed(124)
    assert not torch.equal(outputs[0], VariationalAttentionModel(**TINY)(torch.randn(2, 2, TINY["noise_dim"]))[2])


@pytest.mark.parametrize("change, message", [
    ({"num_heads": 5}, "num_heads must be a positive integer that divides latent_dim"),
    ({"noise_dim": 10}, "noise_dim (10) must be at least latent_seq_len (20)"),
    ({"n_channels": 0}, "n_channels must be a positive integer"),
    ({"seq_len": 2.5}, "seq_len must be a positive integer"),
    ({"num_of_gaussians": 0}, "num_of_gaussians must be a positive integer"),
    ({"dropout": 1.5}, "dropout must be in [0, 1)"),
    ({"latent_seq_len": 2, "seq_len": 5000}, "more than the decoder can stretch"),
])
def test_unsupported_configs_get_a_clear_error(change, message):
    with pytest.raises(ValueError) as error:
        VariationalAttentionModel(**{**TINY, **change})
    assert message in str(error.value)


def test_wrong_noise_shape_is_an_error():
    with pytest.raises(ValueError, match=r"noise must be shaped \(batch, 2, 1500\)"):
        VariationalAttentionModel(**TINY)(torch.randn(2, 2, 1000))


def test_encoder_decoder_contract():
    ved = VariationalEncoderDecoder(2, 16, 20, 32, 1000, 0.1, True, 3, noise_dim=1500, architecture="seed")
    mu, logvar = ved.encoder(torch.randn(3, 2, 1500))
    assert mu.shape == logvar.shape == (3, 20, 32)
    z = ved.reparameterize(mu, logvar)
    assert z.shape == (3, 20, 32) and not torch.equal(z, mu)
    assert ved.decoder(z).shape == (3, 2, 1000)


def test_upsample_factors_cover_the_ratio_evenly():
    for ratio in (1, 2.5, 7, 33, 100, 257.8, 500):
        factors = upsample_factors(ratio)
        assert math.prod(factors) >= ratio and max(factors) <= 8
    assert sorted(upsample_factors(33)) == [3, 3, 4]


def test_fast_dropout_keeps_the_expected_value():
    torch.manual_seed(0)
    x = torch.ones(400_000)
    dropped = fast_dropout(x, 0.1)
    assert float((dropped == 0).float().mean()) == pytest.approx(0.1, abs=0.003)
    assert float(dropped.mean()) == pytest.approx(1.0, abs=0.01)
    assert torch.equal(fast_dropout(x, 0.1, training=False), x) and torch.equal(fast_dropout(x, 0.0), x)
    y = torch.randn(7, 13, requires_grad=True)  # odd sizes, and the gradient goes through the kept entries
    out = fast_dropout(y, 0.5)
    out.sum().backward()
    assert torch.equal(y.grad, (out != 0).float() * 2)


# ---------------------------------------------------------------------------------------------
# Discriminator


@pytest.mark.parametrize("batch", [2, 3, 8])
@pytest.mark.parametrize("seq_len, channels", [(1000, 2), (16500, 2), (333, 1)])
def test_discriminator_shapes_and_features(batch, seq_len, channels):
    disc = Discriminator_with_mdisc(channels, 32, seq_len)
    x = torch.randn(batch, channels, seq_len)
    logits, features = disc(x, return_features=True)
    assert logits.shape == (batch, 1)
    assert len(features) == len(disc.blocks) + 1
    assert all(f.shape[0] == batch for f in features)
    assert [f.shape[-1] for f in features] == sorted((f.shape[-1] for f in features), reverse=True)
    disc.eval()  # in training mode spectral norm's power iteration moves the weights at every call
    assert all(torch.equal(a, b) for a, b in zip(disc(x, return_features=True)[1], disc.get_intermediate_features(x)))


def test_discriminator_batch_of_one_works_and_says_why_minibatch_discrimination_is_idle():
    disc = Discriminator_with_mdisc(2, 32, 1000)
    with pytest.warns(UserWarning, match="a batch of 1 has nothing to compare"):
        assert disc(torch.randn(1, 2, 1000)).shape == (1, 1)
    plain = Discriminator_with_mdisc(2, 32, 1000, use_minibatch_discrimination=False)
    assert plain(torch.randn(1, 2, 1000)).shape == (1, 1)


def test_minibatch_discrimination_matches_a_loop_over_pairs():
    torch.manual_seed(0)
    mdisc = Discriminator_with_mdisc(2, 32, 1000).mdisc
    features = torch.randn(5, 64)
    m = (features @ mdisc.projection).view(5, mdisc.kernels, mdisc.kernel_dim)
    expected = torch.zeros(5, mdisc.kernels)
    for i in range(5):
        for j in range(5):
            if i != j:
                expected[i] += torch.exp(-(m[i] - m[j]).abs().sum(-1)) / 4
    assert torch.allclose(mdisc(features), expected, atol=1e-6)


def test_minibatch_discrimination_sees_a_collapsed_batch():
    torch.manual_seed(0)
    disc = Discriminator_with_mdisc(2, 32, 1000)
    varied = torch.randn(4, 2, 1000)
    collapsed = varied[:1].repeat(4, 1, 1)
    pooled = lambda x: disc.get_intermediate_features(x)[-1]  # noqa: E731
    stats = lambda x: disc.mdisc(torch.cat([pooled(x).mean(2), pooled(x).std(2, correction=0)], 1))  # noqa: E731
    assert torch.allclose(stats(collapsed), torch.ones_like(stats(collapsed)))  # identical to every neighbour
    assert float(stats(varied).detach().max()) < 1.0


def test_an_untrained_discriminator_is_undecided():
    torch.manual_seed(0)
    logits = Discriminator_with_mdisc(2, 32, 6000)(torch.randn(8, 2, 6000))
    assert float(logits.detach().abs().max()) < 1.5  # the summed version gave about -6.5 for everything


def test_every_discriminator_parameter_receives_a_gradient():
    disc = Discriminator_with_mdisc(2, 32, 1000)
    disc(torch.randn(3, 2, 1000)).sum().backward()
    missing = [name for name, p in disc.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_discriminator_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n_channels must be a positive integer"):
        Discriminator_with_mdisc(2, 0, 1000)
    with pytest.raises(ValueError, match=r"expected waveforms shaped \(batch, 2, samples\)"):
        Discriminator_with_mdisc(2, 32, 1000)(torch.randn(3, 1, 1000))
