"""Classifier guidance (issue 10) against a labelled Gaussian mixture, and the noise-conditional classifier.

Closed forms: by Bayes' rule on the noised marginals, p_t(x | y) = p(y | x_t = x)·p_t(x)/p(y), so
∇ₓ log p_t(x | y) = ∇ₓ log p_t(x) + ∇ₓ log p(y | x_t = x): an unconditional score guided by the exact noise-conditional
classifier at w_c = 1 is component y's noised score, and at any w_c it is s + w_c·(s_y − s). The exact classifier
is ``NoisedMixture.log_prob_class``, the exact unconditional ε ``NoisedMixture.eps``. Sample quality is judged as in
tests/test_samplers_oracle.py: the median energy distance of 1000-sample sets to fresh reference draws against the
data-vs-data floor (the median distance between two independent draws). The trained classifier is judged against
the Bayes classifier arg max_k p(k | x_t) of the same noisy points.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from lit_score.cli import load_model, main
from lit_score.data import GaussianMixture
from lit_score.data.mixture import GaussianMixtureDistribution
from lit_score.metrics.distances import energy_distance
from lit_score.models import NoiseConditionalClassifier, ScoreSDE
from lit_score.networks import MLP, EncoderUNet
from lit_score.processes import VP, DiscreteVP, LearnedVP
from lit_score.samplers import DDIM, EulerMaruyama, Heun
from lit_score.scores import NetworkScore

ROOT = Path(__file__).resolve().parents[1]
MIXTURE = GaussianMixtureDistribution(
    torch.tensor([[-1.5, -1.0], [1.5, -1.0], [0.0, 1.5]]), torch.tensor([0.3, 0.4, 0.25]), torch.tensor([0.3, 0.3, 0.4])
)
N, SETS = 1000, 3
# the network's time conditioning c_noise(t), inverted
TIME_OF = {"vp": (VP, lambda c: c / 999.0), "discrete_vp": (DiscreteVP, lambda c: (c + 1) / 1000.0)}

pytestmark = pytest.mark.usefixtures("one_thread")


class ExactEps(nn.Module):
    """The unconditional ε̂(x, c_noise) = E[ε | x_t] of MIXTURE under ``process`` (no labels: num_classes 0)."""

    def __init__(self, process, time_of) -> None:
        super().__init__()
        self.noised, self.time_of = MIXTURE.noised(process), time_of

    def forward(self, x, c_noise):
        return self.noised.eps(x, torch.broadcast_to(self.time_of(c_noise), x.shape[:1]))


class ExactClassifier:
    """log p(y | x_t = x) of MIXTURE's components under ``process``: the classifier guidance needs, in closed form."""

    num_classes = MIXTURE.num_components

    def __init__(self, process) -> None:
        self.noised = MIXTURE.noised(process)

    def log_prob(self, x, t, y):
        return self.noised.log_prob_class(x, t, y)


def exact_model(name: str):
    cls, time_of = TIME_OF[name]
    process = cls()
    return NetworkScore(ExactEps(process, time_of), process, "eps"), ExactClassifier(process), process


def component_scores(process, x, t, y):
    return torch.stack([MIXTURE.component(int(k)).noised(process).score(x[i : i + 1], t[i : i + 1])[0]
                        for i, k in enumerate(y)])


@pytest.mark.parametrize("name", list(TIME_OF))
def test_exact_classifier_guidance_is_the_class_conditional_score(name):
    score_model, classifier, process = exact_model(name)
    generator = torch.Generator().manual_seed(0)
    x = 2 * torch.randn(96, 2, generator=generator)
    t = process.discretize(torch.linspace(0.02, 0.95, 96))
    y = torch.arange(96) % 3
    conditional, unconditional = component_scores(process, x, t, y), MIXTURE.noised(process).score(x, t)
    torch.testing.assert_close(score_model.score(x, t), unconditional, rtol=1e-4, atol=1e-5)
    guided = score_model.with_condition(y, classifier=classifier, classifier_scale=1.0)
    torch.testing.assert_close(guided.score(x, t), conditional, rtol=1e-4, atol=1e-4)
    # x̂₀ and ε̂ follow the guided score (ε̃ = −σ s̃); w_c scales the classifier's gradient linearly
    x0, eps = guided.predict(x, t)
    sigma, alpha = process.sigma(t)[:, None], process.alpha(t)[:, None]
    torch.testing.assert_close(eps, -sigma * conditional, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(x0, (x - sigma * eps) / alpha)
    strong = score_model.with_condition(y, classifier=classifier, classifier_scale=3.0)
    torch.testing.assert_close(strong.score(x, t), unconditional + 3 * (conditional - unconditional), rtol=1e-4,
                               atol=1e-3)
    # a single label is repeated over the batch; labels only reach the classifier (the network is unconditional)
    one = score_model.with_condition(torch.tensor(2), classifier=classifier, classifier_scale=1.0)
    torch.testing.assert_close(one.score(x, t), component_scores(process, x, t, torch.full((96,), 2)), rtol=1e-4,
                               atol=1e-4)


def floor(distribution: GaussianMixtureDistribution) -> float:
    generator = torch.Generator().manual_seed(0)
    draws = [(distribution.sample(N, generator), distribution.sample(N, generator)) for _ in range(SETS)]
    return statistics.median(float(energy_distance(a, b)) for a, b in draws)


def distance(samples: torch.Tensor, distribution: GaussianMixtureDistribution) -> float:
    generator = torch.Generator().manual_seed(3)
    return statistics.median(float(energy_distance(part, distribution.sample(N, generator)))
                             for part in samples.split(N))


@pytest.mark.parametrize(("sampler", "name"), [
    (DDIM(num_steps=100), "discrete_vp"),
    (Heun(num_steps=30), "vp"),
    pytest.param(EulerMaruyama(num_steps=200), "vp", marks=pytest.mark.slow),  # 2-8 s on a shared CPU
], ids=["ddim", "heun", "em"])
def test_classifier_guided_samples_of_class_y_reproduce_component_y(sampler, name):
    score_model, classifier, process = exact_model(name)
    generator = torch.Generator().manual_seed(1)
    for k in range(MIXTURE.num_components):
        guided = score_model.with_condition(torch.full((N * SETS,), k), classifier=classifier, classifier_scale=1.0)
        x = sampler(guided, process.prior_sample((N * SETS, 2), generator), process, generator=generator)
        component = MIXTURE.component(k)
        assert distance(x, component) < 2 * floor(component), (k, distance(x, component) / floor(component))


# --- the trained classifier ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained():
    """A classifier trained for 200 steps on an overlapping 4-component ring (Bayes accuracy below 1 at t_min)."""
    pl.seed_everything(0, verbose=False)
    data = GaussianMixture(num_components=4, radius=1.0, std=0.45, num_samples=20000, val_size=500, batch_size=512,
                           labels=True)
    model = NoiseConditionalClassifier(MLP(2, hidden=64, depth=2, out_dim=4), VP(), sample_shape=(2,),
                                       optimizer=lambda params: torch.optim.Adam(params, lr=3e-3))
    trainer = pl.Trainer(max_steps=200, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1,
                         check_val_every_n_epoch=1)
    trainer.fit(model, datamodule=data)
    return model.eval(), data, trainer


@pytest.mark.parametrize("t", [1e-3, 0.3])
def test_trained_classifier_is_close_to_the_bayes_classifier(trained, t):
    model, data, _ = trained
    generator = torch.Generator().manual_seed(5)
    x0, y = data.distribution.sample_with_components(8000, generator)
    times = torch.full((8000,), t)
    x_t = model.process.perturb(x0, times, torch.randn(x0.shape, generator=generator))
    exact = data.distribution.noised(model.process).log_posterior(x_t, times)
    with torch.no_grad():
        learned = model.log_posterior(x_t, times)
    bayes = float((exact.argmax(1) == y).float().mean())
    accuracy = float((learned.argmax(1) == y).float().mean())
    assert 0.3 < bayes < 0.97  # the components overlap: accuracy has room above and below
    assert accuracy > bayes - 0.02, (accuracy, bayes)
    # its cross-entropy is near the Bayes one (the KL of the exact posterior to the learned one is small)
    kl = float((exact.exp() * (exact - learned)).sum(1).mean())
    assert kl < 0.05, kl


def test_classifier_logs_and_log_prob_is_a_log_softmax(trained):
    model, _, trainer = trained
    assert {"train/loss", "train/accuracy", "val/loss", "val/accuracy", "val/accuracy_t_min"} <= set(
        trainer.callback_metrics)
    assert float(trainer.callback_metrics["val/accuracy_t_min"]) > float(trainer.callback_metrics["val/accuracy"])
    x, t = torch.randn(16, 2), torch.rand(16)
    with torch.no_grad():
        logits = model.logits(x, t)
        per_class = torch.stack([model.log_prob(x, t, torch.full((16,), k)) for k in range(4)], dim=1)
    torch.testing.assert_close(per_class, logits.log_softmax(1))
    torch.testing.assert_close(per_class.logsumexp(1), torch.zeros(16), atol=1e-6, rtol=0)
    torch.testing.assert_close(model.log_prob(x, t, 2), per_class[:, 2])  # one label for the batch
    with pytest.raises(ValueError, match="class labels must lie in 0 … 3"):
        model.log_prob(x, t, 4)


def test_classifier_checks_its_network_labels_and_process():
    with pytest.raises(ValueError, match="num_classes is 4 but the network has 3 outputs"):
        NoiseConditionalClassifier(MLP(2, out_dim=3), VP(), num_classes=4)
    with pytest.raises(ValueError, match="LearnedVP's schedule is learned"):
        NoiseConditionalClassifier(MLP(2, out_dim=3), LearnedVP())
    model = NoiseConditionalClassifier(MLP(2, hidden=16, depth=1, out_dim=3), VP(), sample_shape=(2,))
    assert model.num_classes == 3
    with pytest.raises(ValueError, match="data.init_args.labels true"):
        model.objective(torch.randn(8, 2))
    loss, correct = model.objective((torch.randn(8, 2), torch.arange(8) % 3))
    assert loss.shape == correct.shape == (8,)
    assert model.process_mismatch(VP()) is None
    assert "differ in alpha" in model.process_mismatch(VP(beta_max=10.0))
    assert "VP and the model's DiscreteVP differ in alpha" in model.process_mismatch(DiscreteVP())
    assert "t in [0.001, 1]" in model.process_mismatch(VP(t_min=1e-2))
    bad = NoiseConditionalClassifier(MLP(3, hidden=16, depth=1, out_dim=3), VP(), sample_shape=(2,))
    with pytest.raises(ValueError, match="cannot take data of sample shape"):
        bad.setup("fit")
    for call in (lambda: model.sample(4), lambda: model.set_sample_start(None)):
        with pytest.raises(ValueError, match="draws no samples"):
            call()


def test_encoder_unet_gives_logits_and_starts_uniform():
    net = EncoderUNet(10, in_channels=1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                      attention_resolutions=(7,), resolution=14)
    x, t = torch.randn(3, 1, 14, 14), torch.rand(3) * 999
    assert net(x, t).shape == (3, 10) and not net(x, t).any()  # zero-initialised head: log p = −log K
    nn.init.normal_(net.head.weight)
    out = net(x, t)
    assert out.shape == (3, 10) and torch.isfinite(out).all() and not torch.allclose(out[0], out[1])
    assert not torch.allclose(net(x, t * 0.5), out)  # the noise level enters


# --- the CLI ---------------------------------------------------------------------------------------------------
def run(argv: list) -> None:
    main([str(a) for a in argv])


def logs(tmp_path: Path) -> list:
    return ["--trainer.logger.init_args.save_dir", tmp_path, "--trainer.default_root_dir", tmp_path,
            "--trainer.enable_progress_bar", "false"]


def fails(argv: list, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        run(argv)
    assert info.value.code == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lit-score: error:")]
    assert len(err) == 1, err
    return err[0]


def test_digits_classifier_config_runs_through_the_cli(tmp_path):
    run(["fit", "--config", ROOT / "configs/classifier/digits.yaml", *logs(tmp_path), "--trainer.fast_dev_run", "true"])


def test_toy_classifier_fits_loads_and_guides_a_model(tmp_path, capsys):
    config = ROOT / "configs/classifier/toy.yaml"
    run(["fit", "--config", config, *logs(tmp_path), "--trainer.max_steps", 3, "--trainer.limit_val_batches", 1,
         "--data.init_args.num_samples", 2000])
    ckpt = tmp_path / "classifier_toy" / "version_0" / "checkpoints" / "last.ckpt"
    classifier = load_model(ckpt)
    assert type(classifier) is NoiseConditionalClassifier and classifier.num_classes == 8
    x, t = torch.randn(5, 2), torch.rand(5)
    assert classifier.log_prob(x, t, torch.arange(5)).shape == (5,)
    # it guides an unconditional model on its process: labels by seed index go to the classifier only
    model = ScoreSDE(MLP(2, hidden=16, depth=1), process=VP(), sample_shape=(2,))
    assert classifier.process_mismatch(model.process) is None
    model.set_condition(class_label=3, classifier=classifier, classifier_scale=2.0)
    labels = model.condition_labels(torch.arange(6))
    assert labels.tolist() == [3] * 6
    samples = model.sample(6, EulerMaruyama(num_steps=5), torch.Generator().manual_seed(0), labels=labels)
    assert samples.shape == (6, 2) and torch.isfinite(samples).all()
    # sampling a classifier, and training one on unlabelled data, are refused in one line each
    assert "draws no samples" in fails(["sample", "--ckpt_path", ckpt, "--num_samples", 4], capsys)
    error = fails(["fit", "--config", config, *logs(tmp_path / "plain"), "--data.init_args.labels", "false",
                   "--trainer.max_steps", 1], capsys)
    assert "set data.init_args.labels true" in error


def test_a_classifier_refuses_to_draw_and_to_take_a_likelihood_callback():
    """The generation path calls ``draw``: a classifier refuses it in one line, as it refuses ``sample``; the
    likelihood callback refuses it at setup (it has a process but no likelihood), not at the first validation."""
    from lit_score.callbacks import LikelihoodCallback
    from lit_score.generation import seed_batch_draw

    model = NoiseConditionalClassifier(MLP(2, out_dim=3), VP(), num_classes=3, sample_shape=(2,))
    for call in (lambda: model.draw(4), lambda: seed_batch_draw(model, {"seed": 0, "start": 0,
                                                                        "index": torch.arange(4)})):
        with pytest.raises(ValueError, match="draws no samples"):
            call()
    with pytest.raises(ValueError, match="needs a model with a noise process and a likelihood"):
        LikelihoodCallback().setup(None, model, "fit")
