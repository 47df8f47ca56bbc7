"""Class conditioning and classifier-free guidance (issue 10) against a labelled Gaussian mixture.

The oracle: a "network" that returns the exact ε of the mixture's noised marginal for the null label and of
component y's noised marginal for label y, so ``NetworkScore`` sees the exact conditional and unconditional scores.
Closed forms used: ∇ log p_t(x | y) is component y's noised score; classifier-free guidance with w is
s̃ = (1 + w)·s(x | y) − w·s(x), so w = 0 is the conditional score; its samples of class y reproduce component y.
Sample quality is judged as in tests/test_samplers_oracle.py: the median energy distance of 1000-sample sets to fresh
reference draws against the data-vs-data floor (the median distance between two independent draws).
"""

from __future__ import annotations

import statistics

import pytest
import torch
from torch import nn

from lit_score.data import Digits, GaussianMixture, Toy2D
from lit_score.data.mixture import GaussianMixtureDistribution
from lit_score.generation import seed_batch_draw
from lit_score.metrics.distances import energy_distance
from lit_score.models import DDPM, ScoreSDE
from lit_score.networks import MLP, UNet
from lit_score.processes import VP
from lit_score.samplers import DDIM, Heun
from lit_score.scores import NetworkScore

MIXTURE = GaussianMixtureDistribution(
    torch.tensor([[-1.5, -1.0], [1.5, -1.0], [0.0, 1.5]]), torch.tensor([0.3, 0.4, 0.25]), torch.tensor([0.3, 0.3, 0.4])
)
N, SETS = 1000, 3

pytestmark = pytest.mark.usefixtures("one_thread")


class ExactConditionalEps(nn.Module):
    """ε̂(x, t, y): the mixture's for y = None / −1, component y's for y = k (c_noise = 999·t is VP's conditioning)."""

    num_classes = MIXTURE.num_components

    def __init__(self, process) -> None:
        super().__init__()
        self.process = process
        self.components = [MIXTURE.component(k).noised(process) for k in range(self.num_classes)]
        self.calls = 0

    def forward(self, x, c_noise, y=None):
        self.calls += 1
        t = torch.broadcast_to(c_noise / 999.0, x.shape[:1])
        out = MIXTURE.noised(self.process).eps(x, t)
        if y is not None:
            for k, component in enumerate(self.components):
                rows = y == k
                if rows.any():
                    out[rows] = component.eps(x[rows], t[rows])
        return out


@pytest.fixture(scope="module")
def process():
    return VP()


def floor(distribution: GaussianMixtureDistribution) -> float:
    generator = torch.Generator().manual_seed(0)
    pairs = ((distribution.sample(N, generator), distribution.sample(N, generator)) for _ in range(SETS))
    return statistics.median(float(energy_distance(a, b)) for a, b in pairs)


def distance(samples: torch.Tensor, distribution: GaussianMixtureDistribution) -> float:
    generator = torch.Generator().manual_seed(3)
    return statistics.median(float(energy_distance(part, distribution.sample(N, generator)))
                             for part in samples.split(N))


def test_guidance_zero_is_the_conditional_score_and_w_mixes_it_with_the_unconditional(process):
    model = NetworkScore(ExactConditionalEps(process), process, "eps")
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0)) * 2
    t = torch.linspace(0.05, 0.9, 64)
    y = torch.arange(64) % 3
    conditional = torch.stack([MIXTURE.component(int(k)).noised(process).score(x[i : i + 1], t[i : i + 1])[0]
                               for i, k in enumerate(y)])
    unconditional = MIXTURE.noised(process).score(x, t)
    torch.testing.assert_close(model.with_condition(y).score(x, t), conditional, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.score(x, t), unconditional, rtol=1e-4, atol=1e-5)  # no labels: the null label
    for w in (0.0, 1.5):
        guided = model.with_condition(y, guidance_scale=w)
        expected = (1 + w) * conditional - w * unconditional
        torch.testing.assert_close(guided.score(x, t), expected, rtol=1e-4, atol=1e-4)
        # every conversion guides alike: x0, eps and the velocity come from the same guided raw output
        x0, eps = guided.predict(x, t)
        torch.testing.assert_close(eps, -process.sigma(t)[:, None] * expected, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(x0, (x - process.sigma(t)[:, None] * eps) / process.alpha(t)[:, None])
    # one batched network call serves both the conditional and the null evaluation
    net = model.network
    before = net.calls
    model.with_condition(y, guidance_scale=2.0).score(x, t)
    assert net.calls == before + 1
    # the view shares the network and leaves the model itself unconditional
    view = model.with_condition(y, guidance_scale=2.0)
    assert view.network is model.network and model.labels is None and model.guidance_scale == 0.0
    assert list(dict(model.named_parameters())) == list(dict(view.named_parameters()))


@pytest.mark.parametrize("sampler", [DDIM(num_steps=200), Heun(num_steps=30)], ids=["ddim", "heun"])
def test_samples_of_class_y_reproduce_component_y(process, sampler):
    model = NetworkScore(ExactConditionalEps(process), process, "eps")
    generator = torch.Generator().manual_seed(1)
    for k in range(MIXTURE.num_components):
        labels = torch.full((N * SETS,), k)
        x = sampler(model.with_condition(labels), process.prior_sample((N * SETS, 2), generator), process,
                    generator=generator)
        component = MIXTURE.component(k)
        assert distance(x, component) < 2 * floor(component), k


def test_guidance_sharpens_towards_the_class(process):
    """Guidance w > 0 samples p(x | y)·p(y | x)^w: away from the other classes and tighter around component y, so the
    exact classifier's log p(y | x) rises and the spread shrinks below the component's 0.25."""
    model = NetworkScore(ExactConditionalEps(process), process, "eps")
    generator = torch.Generator().manual_seed(2)
    labels = torch.full((2000,), 0)
    log_posterior, spread = [], []
    for w in (0.0, 3.0):
        x = DDIM(num_steps=100)(model.with_condition(labels, guidance_scale=w), process.prior_sample((2000, 2),
                                generator), process, generator=generator)
        t_min = torch.full((2000,), process.t_min, dtype=torch.float64)
        log_posterior.append(float(MIXTURE.noised(process).log_prob_class(x.double(), t_min, labels).mean()))
        spread.append(float(x.std(0).mean()))
    assert log_posterior[1] > log_posterior[0]
    assert spread[1] < 0.9 * spread[0] and abs(spread[0] - 0.3) < 0.03


def test_label_embedding_null_row_and_unconditional_networks_refuse_labels():
    net = MLP(2, hidden=16, depth=1, num_classes=3)
    x, t = torch.randn(4, 2), torch.rand(4)
    with torch.no_grad():
        net.label_embed.table.weight.normal_()
        null = net(x, t)
        assert torch.equal(null, net(x, t, torch.full((4,), -1)))  # −1 and None are the null label
        assert not torch.allclose(null, net(x, t, torch.tensor([0, 1, 2, 0])))
    with pytest.raises(ValueError, match="unconditional .num_classes 0."):
        MLP(2, hidden=16, depth=1)(x, t, torch.zeros(4, dtype=torch.long))
    unet = UNet(1, base_channels=8, channel_mult=(1,), num_res_blocks=1, attention_resolutions=(), resolution=8,
                num_classes=10)
    assert unet(torch.randn(2, 1, 8, 8), torch.rand(2), torch.tensor([3, -1])).shape == (2, 1, 8, 8)


def test_data_labels_align_with_the_samples_and_only_labelled_data_has_them():
    digits = Digits(labels=True, batch_size=16)
    digits.setup()
    x, y = next(iter(digits.val_dataloader()))
    plain = Digits(batch_size=16)
    plain.setup()
    assert torch.equal(next(iter(plain.val_dataloader())), x)  # the same images, now with their classes
    from lit_score.data.digits import load_digit_images, load_digit_labels

    images, classes = load_digit_images(8), load_digit_labels()
    for image, label in zip(x, y):
        index = int((images - image).flatten(1).abs().sum(1).argmin())
        assert classes[index] == label
    mixture = GaussianMixture(num_components=4, labels=True, num_samples=400, val_size=50)
    mixture.setup()
    xs, ys = mixture.train_labels, mixture.train_dataset.data
    # the component each sample came from is the one whose mean is nearest (radius 2, std 0.2: no overlap)
    nearest = torch.cdist(ys, mixture.distribution.means).argmin(1)
    assert torch.equal(nearest, xs)
    toy = Toy2D("8gaussians", labels=True, num_samples=400, val_size=50)
    toy.setup()
    angle = torch.atan2(toy.train_dataset.data[:, 1], toy.train_dataset.data[:, 0]) % (2 * torch.pi)
    nearest_mode = ((angle / (torch.pi / 4)).round() % 8).long()  # modes 6 std apart: a few cross the midline
    assert float((nearest_mode == toy.train_labels).float().mean()) > 0.99
    unlabelled = Toy2D("8gaussians", num_samples=400, val_size=50)
    unlabelled.setup()
    assert torch.equal(unlabelled.train_dataset.data, toy.train_dataset.data)  # the same draws either way
    assert reference_is_plain(toy)
    with pytest.raises(ValueError, match="Toy2D-moons has no class labels"):
        Toy2D("moons", labels=True)


def reference_is_plain(data) -> bool:
    """The metrics' datasets stay plain tensors when the loaders yield (x, y)."""
    return torch.is_tensor(data.reference_samples(3, torch.Generator().manual_seed(0)))


def test_conditional_model_trains_on_labels_with_dropout_and_samples_by_seed_index():
    model = DDPM(MLP(2, hidden=16, depth=1, num_classes=4), label_dropout=0.25, sample_shape=(2,))
    batch = (torch.randn(4000, 2), torch.arange(4000) % 4)
    dropped = model.training_labels(batch, torch.Generator().manual_seed(0))
    assert abs(float((dropped == -1).float().mean()) - 0.25) < 0.03  # 4 binomial standard errors
    assert torch.equal(dropped[dropped >= 0], batch[1][dropped >= 0])
    with pytest.raises(ValueError, match="class-conditional .4 classes. but the data has no labels"):
        model.objective(torch.randn(8, 2))
    assert model.objective(batch).shape == (4000,)
    # labels follow the seed index: every class in turn, one class, or the null label
    index = torch.arange(10, 16)
    assert model.condition_labels(index).tolist() == [2, 3, 0, 1, 2, 3]
    model.set_condition(class_label=1, guidance_scale=2.0)
    assert model.condition_labels(index).tolist() == [1] * 6
    assert model.condition == {"class_label": 1, "guidance_scale": 2.0, "classifier_scale": 0.0, "classifier": False}
    model.set_condition(class_label=-1)
    assert model.condition_labels(index).tolist() == [-1] * 6
    with pytest.raises(ValueError, match="class_label must lie in 0 … 3"):
        model.set_condition(class_label=4)
    with pytest.raises(ValueError, match="guidance towards the null label"):
        model.set_condition(class_label=-1, guidance_scale=1.0)
    # a sample's value depends on its seed index only: a batch split in two gives the same samples
    model.set_condition(guidance_scale=1.0)
    sampler = DDIM(num_steps=4)
    whole, nfe, _ = seed_batch_draw(model, {"seed": 0, "start": 0, "index": torch.arange(6)}, sampler)
    assert nfe == 4
    assert whole.shape == (6, 2) and torch.isfinite(whole).all()


def test_unconditional_models_refuse_conditions():
    model = ScoreSDE(MLP(2, hidden=16, depth=1), sample_shape=(2,))
    assert model.num_classes == 0 and model.condition_labels(torch.arange(3)) is None
    with pytest.raises(ValueError, match="ScoreSDE is unconditional: --class_label needs"):
        model.set_condition(class_label=1)
    with pytest.raises(ValueError, match="classifier-free guidance needs a class-conditional network"):
        model.set_condition(guidance_scale=1.0)
    with pytest.raises(ValueError, match="label_dropout trains a class-conditional network"):
        DDPM(MLP(2, hidden=16, depth=1), label_dropout=0.1)


def write_mnist(root, n_train: int = 12, n_test: int = 6):
    """A tiny MNIST in torchvision's raw idx format (big-endian magic 2051 / 2049), with known labels."""
    import struct

    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    labels = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = (torch.arange(n * 28 * 28) % 256).to(torch.uint8).reshape(n, 28, 28)
        labels[split] = torch.arange(n) % 10
        header = struct.pack(">IIII", 2051, n, 28, 28)
        (raw / f"{split}-images-idx3-ubyte").write_bytes(header + images.numpy().tobytes())
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n)
                                                         + labels[split].to(torch.uint8).numpy().tobytes())
    return labels


def test_torchvision_targets_and_folder_classes_become_labels(tmp_path):
    from PIL import Image

    from lit_score.data import ImageData

    labels = write_mnist(tmp_path)
    data = ImageData(str(tmp_path), dataset="mnist", labels=True, val_size=4, batch_size=4, num_workers=0)
    data.setup()
    assert data.num_classes == 10 and torch.equal(data.train_labels, labels["train"])
    x, y = next(iter(data.val_dataloader()))
    assert x.shape == (4, 1, 28, 28) and set(y.tolist()) <= set(labels["t10k"].tolist())
    folder = tmp_path / "folder"
    for name, count in (("cats", 3), ("dogs", 2)):
        (folder / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(torch.full((8, 8), 40 * i, dtype=torch.uint8).numpy()).save(folder / name / f"{i}.png")
    images = ImageData(str(folder), labels=True, val_size=0, batch_size=5, num_workers=0)
    images.setup()
    assert images.class_names == ["cats", "dogs"] and images.num_classes == 2
    assert sorted(images.train_labels.tolist() + images.val_labels.tolist()) == [0, 0, 0, 1, 1]
    (folder / "loose.png").write_bytes((folder / "cats" / "0.png").read_bytes())
    with pytest.raises(ValueError, match="loose.png lies directly in it"):
        ImageData(str(folder), labels=True)
    with pytest.raises(ValueError, match="has no class labels"):
        ImageData(str(tmp_path), dataset="celeba", labels=True)


def test_the_datas_classes_are_checked_once_at_setup_not_per_batch(tmp_path):
    """More classes in the data than the network has, or unlabelled data, stop the run at setup in one line (on
    every rank alike), instead of a host-synchronising check of every batch."""
    import lightning.pytorch as pl

    def fit(data) -> None:
        model = DDPM(MLP(2, hidden=8, depth=1, num_classes=4), sample_shape=(2,))
        pl.Trainer(fast_dev_run=True, logger=False, enable_progress_bar=False, enable_model_summary=False,
                   default_root_dir=tmp_path).fit(model, data)

    with pytest.raises(ValueError, match="the data has 6 classes but the network has num_classes 4"):
        fit(GaussianMixture(num_components=6, labels=True, num_samples=64, val_size=8, batch_size=8))
    with pytest.raises(ValueError, match="class-conditional .4 classes. but the data has no labels"):
        fit(GaussianMixture(num_components=4, num_samples=64, val_size=8, batch_size=8))


def test_losses_that_bypass_the_score_see_the_labels():
    """VDM's learned schedule calls the network at its own c_noise, and annealed SSM repeats the batch: both must
    still condition on the view's labels."""
    from lit_score.losses import SlicedScoreMatching, VDMLoss
    from lit_score.processes import LearnedVP

    torch.manual_seed(0)
    net = MLP(2, hidden=16, depth=1, num_classes=3)
    torch.nn.init.normal_(net.label_embed.table.weight)  # labels matter
    x = torch.randn(8, 2)

    def losses(model, loss):
        seed = lambda: torch.Generator().manual_seed(1)  # noqa: E731
        return [loss(view, x, seed()) for view in (model.score_model.with_condition(torch.zeros(8, dtype=torch.long)),
                                                   model.score_model.with_condition(torch.full((8,), 2)))]

    vdm = ScoreSDE(net, process=LearnedVP(hidden=8), target="eps", loss=VDMLoss(), sample_shape=(2,))
    a, b = losses(vdm, vdm.loss)
    assert not torch.allclose(a, b)
    ssm = ScoreSDE(net, sample_shape=(2,))
    a, b = losses(ssm, SlicedScoreMatching(num_projections=3, anneal=True))  # batch repeated 3 times, labels too
    assert a.shape == (8,) and not torch.allclose(a, b)
