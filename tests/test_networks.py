"""Contracts of lit_score.networks: shapes, time conditioning, DDPM init, twice-differentiable energies."""

from __future__ import annotations

import math

import pytest
import torch

from lit_score.networks import MLP, EnergyCNN, EnergyMLP, FourierEmbedding, SinusoidalEmbedding, UNet


def small_unet(**kw) -> UNet:
    """A narrow U-Net that runs fast on CPU; ``kw`` overrides the defaults."""
    cfg = {"base_channels": 16, "channel_mult": (1, 2), "num_res_blocks": 1, "attention_resolutions": (4,)}
    return UNet(**(cfg | {"resolution": 8} | kw))


# ---------------------------------------------------------------- embeddings


@pytest.mark.parametrize("emb", [SinusoidalEmbedding(32), FourierEmbedding(32)], ids=["positional", "fourier"])
def test_embedding_shape_and_distinct_times(emb):
    t = torch.tensor([0.0, 0.1, 0.5, 1.0])
    e = emb(t)
    assert e.shape == (4, 32)
    assert torch.isfinite(e).all()
    # Different times give different embeddings (pairwise).
    assert torch.cdist(e, e).add(torch.eye(4)).min() > 1e-3


def test_sinusoidal_matches_formula():
    dim, t = 8, torch.tensor([0.3, 0.7])
    e = SinusoidalEmbedding(dim, max_period=100.0, time_scale=1.0)(t)
    k = torch.arange(dim // 2)
    args = t.reshape(2, 1) * 100.0 ** (-k / (dim // 2))
    torch.testing.assert_close(e, torch.cat([args.sin(), args.cos()], dim=1))


def test_fourier_weights_are_a_fixed_buffer():
    emb = FourierEmbedding(16, scale=16.0)
    assert list(emb.parameters()) == []
    assert "W" in emb.state_dict()
    # sin² + cos² = 1 for every frequency.
    e = emb(torch.rand(5))
    torch.testing.assert_close(e[:, :8] ** 2 + e[:, 8:] ** 2, torch.ones(5, 8))


@pytest.mark.parametrize("embedding", ["positional", "fourier"])
@pytest.mark.parametrize("network", ["mlp", "unet"])
def test_time_scale_multiplies_both_times_before_the_embedding(network, embedding):
    """A network built with ``time_scale`` κ gives, at (t, s), what the same network (same seed) gives at (κ·t, κ·s):
    MeanFlow's configs embed the interpolant's t itself (κ = 1e-3 on c_noise = 1000·t). The s-branch's last layer
    starts at zero (its output would ignore s), so both networks get the same random last layer first. κ ≤ 0 is
    refused by either embedding."""
    def build(**kw):
        torch.manual_seed(0)
        if network == "mlp":
            net = MLP(2, hidden=16, depth=1, time_embed_dim=8, embedding=embedding, two_time=True, **kw)
            shape = (5, 2)
        else:
            net = UNet(1, base_channels=8, channel_mult=(1,), num_res_blocks=1, attention_resolutions=(),
                       resolution=8, num_groups=4, embedding=embedding, zero_init_output=False, two_time=True,
                       dropout=0.0, **kw)
            shape = (5, 1, 8, 8)
        torch.nn.init.normal_(net.target_time_embed[-1].weight, generator=torch.Generator().manual_seed(1))
        return net, shape

    (scaled, shape), (plain, _) = build(time_scale=1e-3), build()
    x, t, s = torch.randn(shape), 1000 * torch.rand(5), 500 * torch.rand(5)
    torch.testing.assert_close(scaled(x, t, s=s), plain(x, 1e-3 * t, s=1e-3 * s))
    assert not torch.allclose(scaled(x, t, s=s), plain(x, 1e-3 * t, s=s))  # s reaches the output, scaled
    assert not torch.allclose(scaled(x, t, s=s), plain(x, t, s=1e-3 * s))  # t too
    for kind in (SinusoidalEmbedding, FourierEmbedding):
        with pytest.raises(ValueError, match="time_scale"):
            kind(8, time_scale=0.0)


def test_odd_dim_rejected():
    with pytest.raises(ValueError):
        SinusoidalEmbedding(7)


# ---------------------------------------------------------------- MLP


@pytest.mark.parametrize("data_dim", [2, 5])
@pytest.mark.parametrize("embedding", ["positional", "fourier"])
def test_mlp_shapes(data_dim, embedding):
    net = MLP(data_dim, hidden=32, depth=2, time_embed_dim=16, embedding=embedding)
    x, t = torch.randn(7, data_dim), torch.rand(7)
    assert net(x, t).shape == (7, data_dim)
    assert MLP(data_dim, hidden=32, depth=2, out_dim=3)(x, t).shape == (7, 3)


@pytest.mark.parametrize("activation", ["silu", "gelu", "relu"])
def test_mlp_depends_on_time(activation):
    net = MLP(2, hidden=32, depth=2, time_embed_dim=16, activation=activation)
    x = torch.randn(4, 2)
    assert not torch.allclose(net(x, torch.full((4,), 0.1)), net(x, torch.full((4,), 0.9)))
    # A scalar time broadcasts over the batch.
    torch.testing.assert_close(net(x, torch.tensor(0.3)), net(x, torch.full((4,), 0.3)))


# ---------------------------------------------------------------- UNet


@pytest.mark.parametrize(
    "size, kw",
    [
        (8, {}),
        (16, {"channel_mult": (1, 2, 2), "attention_resolutions": (8,), "resolution": 16}),
        (28, {"channel_mult": (1, 2, 2), "attention_resolutions": (14, 7), "resolution": 28}),  # 28 -> 14 -> 7
        (28, {"channel_mult": (1, 1, 1, 1), "resolution": 28, "resample_with_conv": False}),  # 7 -> 4 and back
        (32, {"channel_mult": (1, 2), "embedding": "fourier", "skip_rescale": False}),
    ],
)
def test_unet_shapes(size, kw):
    net = small_unet(in_channels=1, **kw)
    assert net(torch.randn(2, 1, size, size), torch.rand(2)).shape == (2, 1, size, size)


def test_unet_out_channels_and_narrow_groupnorm():
    # base_channels=6 is not divisible by 32 groups: GroupNorm falls back to a divisor (here 1 group).
    net = small_unet(in_channels=3, out_channels=6, base_channels=6, num_groups=32)
    assert net(torch.randn(2, 3, 8, 8), torch.rand(2)).shape == (2, 6, 8, 8)


def test_unet_zero_at_init_then_trains():
    torch.manual_seed(0)
    net = small_unet(in_channels=1)
    x, t = torch.randn(4, 1, 8, 8), torch.rand(4)
    assert torch.equal(net(x, t), torch.zeros_like(x))  # DDPM zero-initialises the final conv

    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss = (net(x, t) - torch.randn_like(x)).pow(2).mean()
    loss.backward()
    opt.step()
    net.eval()
    out = net(x, t)
    assert out.abs().max() > 0
    # Once trained, the output depends on time (GroupNorm must not erase the time embedding in narrow layers).
    assert (out - net(x, 1 - t)).abs().max() > 1e-2 * out.abs().max()


def test_unet_default_is_ddpm_cifar10_size():
    # Ho et al. 2020 (Appendix B) report 35.7M parameters for their CIFAR-10 model.
    net = UNet()
    n_params = sum(p.numel() for p in net.parameters())
    assert 30e6 < n_params < 40e6
    assert math.isclose(n_params, 35.7e6, rel_tol=0.01)
    with torch.no_grad():
        assert net(torch.randn(1, 3, 32, 32), torch.rand(1)).shape == (1, 3, 32, 32)


# ---------------------------------------------------------------- energy networks


def energy_cases():
    return [
        (EnergyMLP(2, hidden=16, depth=2), (6, 2)),
        (EnergyMLP(5, hidden=16, depth=3, spectral_norm=True), (6, 5)),
        (EnergyCNN(1, channels=(8, 16, 16), resolution=16), (6, 1, 16, 16)),
        (EnergyCNN(3, channels=(8, 16), resolution=7, spectral_norm=True), (6, 3, 7, 7)),
    ]


@pytest.mark.parametrize("net, shape", energy_cases(), ids=["mlp", "mlp-sn", "cnn", "cnn-sn-odd"])
def test_energy_twice_differentiable(net, shape):
    x = torch.randn(shape, requires_grad=True)
    energy = net(x)
    assert energy.shape == (shape[0],)
    # Score −∇E with create_graph, then a loss through E and the score: second derivatives w.r.t. the parameters.
    (grad_x,) = torch.autograd.grad(energy.sum(), x, create_graph=True)
    assert grad_x.shape == shape
    (energy.mean() + grad_x.pow(2).sum()).backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(g.abs().sum() > 0 for g in grads)
    # t is ignored (compared in eval mode: training-mode spectral norm advances its power iteration per call).
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x, torch.rand(shape[0])), net(x))


def test_spectral_norm_bounds_layers():
    net = EnergyMLP(4, hidden=32, depth=2, spectral_norm=True)
    for _ in range(20):  # power iteration converges over training-mode calls
        net(torch.randn(3, 4))
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert all(hasattr(m, "parametrizations") for m in linears)
    for m in linears:
        assert torch.linalg.matrix_norm(m.weight.detach(), ord=2) < 1.05
