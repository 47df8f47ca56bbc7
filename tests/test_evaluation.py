"""Evaluation: the one generation path, torch-fidelity agreement, the protocol, distances with floors, likelihoods."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import torch_fidelity
from PIL import Image
from torch import nn

from lit_score.cli import main
from lit_score.data import Digits, GaussianMixture, ImageData, Toy2D
from lit_score.evaluation.evaluate import evaluate
from lit_score.generation import SeedBatches, batch_seed, generate, seed_loader
from lit_score.metrics import fidelity
from lit_score.models import DDPM, EBM
from lit_score.networks import MLP
from lit_score.processes import DiscreteVP
from lit_score.samplers import DDIM, Langevin

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_ddpm(seed: int = 0) -> DDPM:
    torch.manual_seed(seed)
    return DDPM(network=MLP(data_dim=2, hidden=16, depth=2), process=DiscreteVP(num_timesteps=20),
                sampler=DDIM(num_steps=4), sample_shape=(2,))


def write_pngs(images: torch.Tensor, folder: Path) -> Path:
    """uint8 (N, 3, H, W) images as numbered PNGs (sorted order = tensor order)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:05d}.png")
    return folder


# --- the generation path ---------------------------------------------------------------------------------------


def test_seed_batches_cover_every_index_once():
    batches = SeedBatches(7, 3, seed=2)
    assert len(batches) == 3
    assert torch.cat([batches[k]["index"] for k in range(3)]).tolist() == list(range(7))
    assert [batches[k]["start"] for k in range(3)] == [0, 3, 6]
    assert batch_seed(2, 6) == 2 * 2**20 + 6 and batch_seed(0, 6) != batch_seed(1, 6)
    assert batch_seed(4095, 2**20 - 1) < 2**32  # torch's CPU generator keeps 32 bits of a seed
    for bad in ((-1, 0), (4096, 0), (0, 2**20)):
        with pytest.raises(ValueError):
            batch_seed(*bad)
    # seed sets differ: the generators of batch 0 of sets 0 and 1 draw different noise
    draws = [torch.randn(3, generator=torch.Generator().manual_seed(batch_seed(s, 0))) for s in (0, 1)]
    assert not torch.equal(*draws)


def test_generation_is_exact_and_independent_of_the_world_size(tmp_path):
    """7 samples in batches of 2 (4 batches) on 1 and on 2 DDP ranks: the same values, each index once, in order;
    a batch equals ``model.sample`` with its seed-index generator."""
    model = tiny_ddpm()
    one = generate(model, 7, batch_size=2, seed=3, progress=False, trainer_kwargs={"accelerator": "cpu"})
    two = generate(model, 7, batch_size=2, seed=3, progress=False, path=tmp_path / "s.npz",
                   trainer_kwargs={"accelerator": "cpu", "devices": 2, "strategy": "ddp_fork"})
    assert one.samples.shape == (7, 2) and two.samples.shape == (7, 2)
    torch.testing.assert_close(one.samples, two.samples)
    assert np.load(tmp_path / "s.npz")["index"].tolist() == list(range(7))
    assert one.nfe == [4] * 4
    direct = model.sample(2, generator=torch.Generator().manual_seed(batch_seed(3, 2)))
    torch.testing.assert_close(one.samples[2:4], direct)


def test_autograd_samplers_run_under_predicts_inference_mode():
    """An EBM's Langevin chain needs ∇E: generation (trainer.predict, inference mode) equals direct sampling."""

    class Quadratic(nn.Module):
        def forward(self, x, t=None):
            return 0.5 * (x**2).sum(dim=1)

    model = EBM(energy_net=Quadratic(), sampler=Langevin(num_steps=5, step_size=0.1, noise_scale=0.3, grad_clip=None,
                                                             clamp=None), data_range=(-4.0, 4.0), sample_shape=(2,))
    made = generate(model, 6, batch_size=6, progress=False, trainer_kwargs={"accelerator": "cpu"})
    direct = model.sample(6, generator=torch.Generator().manual_seed(batch_seed(0, 0)))
    torch.testing.assert_close(made.samples, direct)
    assert torch.isfinite(made.samples).all() and made.nfe == [5]


TINY_TOY = ["--model.init_args.process.init_args.num_timesteps", "20", "--model.init_args.network.init_args.hidden",
            "16", "--model.init_args.network.init_args.depth", "2", "--data.init_args.val_size", "10",
            "--data.init_args.batch_size", "4", "--trainer.enable_progress_bar", "false"]


def test_predict_subcommand_writes_what_it_generates(tmp_path):
    from lit_score.cli import load_model

    config = str(ROOT / "configs/ddpm/toy.yaml")
    main(["fit", "--config", config, "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.max_steps", "1",
          "--trainer.limit_val_batches", "0", "--trainer.callbacks",
          '[{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": true}}]',
          *TINY_TOY])
    run = tmp_path / "ddpm_toy" / "version_0"
    ckpt = run / "checkpoints" / "last.ckpt"
    for _ in range(2):  # a rerun rewrites the same file
        main(["predict", "--config", config, "--ckpt_path", str(ckpt), "--trainer.logger", "false",
              "--trainer.default_root_dir", str(tmp_path), "--trainer.callbacks", "[]", *TINY_TOY])
    written = sorted((run / "predictions").glob("*.npz"))
    assert len(written) == 1 and written[0].with_suffix(".png").is_file()
    assert re.fullmatch(r"last_Ancestral-[0-9a-f]{6}_n10_seed0\.npz", written[0].name)  # the sampler's settings hash
    data = np.load(written[0])
    assert data["samples"].shape == (10, 2) and data["index"].tolist() == list(range(10))
    expected = generate(load_model(ckpt), 10, batch_size=4, seed=0, progress=False,
                        trainer_kwargs={"accelerator": "cpu"})
    np.testing.assert_allclose(data["samples"], expected.samples.numpy(), rtol=1e-5, atol=1e-6)
    # `lit-score sample` seeds its batches the same way: the same seed and batch size give the same samples
    main(["sample", "--ckpt_path", str(ckpt), "--num_samples", "10", "--batch_size", "4", "--output",
          str(tmp_path / "sampled")])
    np.testing.assert_allclose(np.load(tmp_path / "sampled.npz")["samples"], expected.samples.numpy(), rtol=1e-5,
                               atol=1e-6)


# --- image metrics agree with torch-fidelity ---------------------------------------------------------------------


def test_fid_of_a_set_against_itself_is_zero_and_positive_against_a_shift():
    digits = Digits(image_size=16)
    x = fidelity.to_uint8(digits.split_tensor("train")[:300])
    extractor = fidelity.resolve_feature_extractor("digits")
    same = fidelity.fidelity_metrics(x, x, metrics=("fid",), extractor=extractor)
    shifted = fidelity.fidelity_metrics(torch.roll(x, 2, dims=-1), x, metrics=("fid",), extractor=extractor)
    assert abs(same.values["fid"]) < 1e-6
    assert shifted.values["fid"] > 1.0


@pytest.fixture(scope="module")
def digits_samples() -> tuple[Digits, torch.Tensor]:
    """'Samples' made elsewhere: held-out digits with Gaussian noise (a deterministic stand-in for a model)."""
    digits = Digits(image_size=16)
    x = digits.split_tensor("test")[:120]
    noisy = (x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    return digits, noisy


def test_digits_metrics_equal_torch_fidelity_on_pngs(digits_samples, tmp_path):
    digits, x = digits_samples
    result = evaluate(None, digits, samples=[x], metrics=["fid", "kid", "isc", "prc"], kid_subset_size=50,
                      cache_root=tmp_path / "cache", progress=False)
    fake = write_pngs(fidelity.to_uint8(x), tmp_path / "fake")
    real = write_pngs(fidelity.to_uint8(digits.split_tensor("train")), tmp_path / "real")
    direct = torch_fidelity.calculate_metrics(input1=str(fake), input2=str(real), fid=True, kid=True, isc=True,
                                              prc=True, feature_extractor="digits-v2", kid_subset_size=50, cuda=False,
                                              cache=False, verbose=False, save_cpu_ram=True)
    got = result.metrics
    assert got["fid"]["mean"] == pytest.approx(direct["frechet_inception_distance"], rel=1e-5)
    assert got["kid"]["mean"] == pytest.approx(direct["kernel_inception_distance_mean"], rel=1e-5, abs=1e-8)
    assert got["isc"]["mean"] == pytest.approx(direct["inception_score_mean"], rel=1e-5)
    assert got["precision"]["mean"] == pytest.approx(direct["precision"])
    assert got["recall"]["mean"] == pytest.approx(direct["recall"])
    # the reference features were cached and are reused: the same numbers, and the cache file is named by content
    again = evaluate(None, digits, samples=[x], metrics=["fid"], cache_root=tmp_path / "cache", progress=False)
    assert again.metrics["fid"]["mean"] == pytest.approx(got["fid"]["mean"], rel=1e-9)
    assert len(list((tmp_path / "cache").glob("lit-score-Digits*-digits-v2-features-features.pt"))) == 1
    assert again.protocol["reference_features_sha256"] == result.protocol["reference_features_sha256"] is not None


def random_inception_weights(path: Path) -> Path:
    """A state dict of torch-fidelity's Inception with random weights (the real code path, offline)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    torch.manual_seed(0)
    with mock.patch("torch_fidelity.feature_extractor_inceptionv3.load_state_dict_from_url", return_value={}), \
            mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None):
        module = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    torch.save(module.state_dict(), path)
    return path


def test_inception_code_path_with_a_local_weights_file_equals_torch_fidelity(tmp_path):
    (tmp_path / "data").mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "data" / f"{i}.png")
    images = ImageData(root=str(tmp_path / "data"), num_workers=0, val_size=2)
    weights = random_inception_weights(tmp_path / "inception.pth")
    x = torch.rand(12, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    result = evaluate(None, images, samples=[x], metrics=["fid", "kid", "isc"], kid_subset_size=5,
                      feature_extractor="inception-v3-compat", feature_extractor_weights_path=str(weights),
                      cache_root=tmp_path / "cache", progress=False)
    fake = write_pngs(fidelity.to_uint8(x), tmp_path / "fake")
    real = write_pngs(fidelity.to_uint8(images.split_tensor("train")), tmp_path / "real")
    direct = torch_fidelity.calculate_metrics(input1=str(fake), input2=str(real), fid=True, kid=True, isc=True,
                                              kid_subset_size=5, feature_extractor_weights_path=str(weights),
                                              cuda=False, cache=False, verbose=False, save_cpu_ram=True)
    assert result.metrics["fid"]["mean"] == pytest.approx(direct["frechet_inception_distance"], rel=1e-4)
    assert result.metrics["kid"]["mean"] == pytest.approx(direct["kernel_inception_distance_mean"], rel=1e-4)
    assert result.metrics["isc"]["mean"] == pytest.approx(direct["inception_score_mean"], rel=1e-4)
    extractor = result.protocol["feature_extractor"]
    assert extractor["name"] == "inception-v3-compat" and extractor["weights_sha256"] == fidelity.sha256_file(weights)


def test_missing_inception_weights_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    npz = tmp_path / "s.npz"
    np.savez(npz, samples=np.zeros((4, 1, 16, 16), dtype=np.float32))
    with pytest.raises(SystemExit) as info:
        main(["evaluate", "--samples", f"[{npz}]", "--data", "lit_score.data.Digits", "--data.image_size", "16",
              "--feature_extractor", "inception-v3-compat", "--metrics", "fid", "--output", str(tmp_path / "out")])
    assert info.value.code == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lit-score: error:")]
    assert len(lines) == 1
    assert fidelity.INCEPTION_FILE in lines[0] and str(tmp_path / "torch" / "hub" / "checkpoints") in lines[0]
    assert not (tmp_path / "out").exists()


# --- the protocol, written by the command -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    """A tiny DDPM trained two steps on the digits through the CLI (its checkpoint records model and data)."""
    tmp = tmp_path_factory.mktemp("digits")
    unet = "--model.init_args.network.init_args."
    main(["fit", "--config", str(ROOT / "configs/ddpm/digits.yaml"), "--trainer.logger.init_args.save_dir", str(tmp),
          "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
          "--trainer.callbacks", '[{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", '
          '"init_args": {"save_last": true}}]', f"{unet}base_channels", "16", f"{unet}channel_mult", "[1, 2]",
          f"{unet}attention_resolutions", "[]", "--model.init_args.sampler.class_path", "lit_score.samplers.DDIM",
          "--model.init_args.sampler.init_args.num_steps", "3", "--model.init_args.process.init_args.num_timesteps",
          "50"])
    return tmp / "ddpm_digits" / "version_0"


def test_evaluate_command_writes_metrics_with_the_full_protocol(digits_run, tmp_path):
    ckpt = digits_run / "checkpoints" / "last.ckpt"
    out = tmp_path / "eval"
    main(["evaluate", "--ckpt_path", str(ckpt), "--num_samples", "40", "--seeds", "0,1", "--metrics", "fid,kid,isc",
          "--kid_subset_size", "20", "--batch_size", "16", "--output", str(out), "--cache_root", str(tmp_path / "c"),
          "--progress", "false"])
    record = json.loads((out / "metrics.json").read_text())
    p = record["protocol"]
    assert p["num_samples"] == 40 and p["seeds"] == [0, 1] and p["generation_batch_size"] == 16
    assert p["reference"]["split"] == "train" and p["reference"]["num_samples"] == 1617
    assert len(p["reference_features_sha256"]) == 64
    assert p["feature_extractor"]["name"] == "digits-v2" and len(p["feature_extractor"]["weights_sha256"]) == 64
    assert p["weights"] == "raw" and p["checkpoint"]["global_step"] == 2
    assert p["sampler"]["class_path"] == "lit_score.samplers.ancestral.DDIM"
    assert p["sampler"]["init_args"]["num_steps"] == 3 and p["nfe"] == 3
    assert {"lit_score", "torch", "torch_fidelity", "lightning"} <= set(p["versions"])
    assert p["wall_time"]["generation_s"] > 0 and p["wall_time"]["features_s"] > 0
    assert any("50000" in note for note in p["notes"])  # below the customary N for published numbers
    fid = record["metrics"]["fid"]
    per_seed = [row["fid"] for row in record["per_seed"]]
    assert fid["per_seed"] == per_seed and per_seed[0] != per_seed[1]
    assert fid["mean"] == pytest.approx(np.mean(per_seed)) and fid["std"] == pytest.approx(np.std(per_seed, ddof=1))
    # what was measured is what was written: the metric recomputed from samples_seed0.npz
    x = torch.from_numpy(np.load(out / "samples_seed0.npz")["samples"])
    again = fidelity.fidelity_metrics(fidelity.to_uint8(x), fidelity.to_uint8(Digits(image_size=16).split_tensor(
        "train")), metrics=("fid",), extractor=fidelity.resolve_feature_extractor("digits-v2"))
    assert again.values["fid"] == pytest.approx(per_seed[0], rel=1e-6)
    assert (out / "samples.png").is_file()
    with pytest.raises(SystemExit):  # nothing is overwritten
        main(["evaluate", "--ckpt_path", str(ckpt), "--num_samples", "40", "--output", str(out)])


# --- toy data: distances with their floor, exact data NLL, likelihood estimators ----------------------------------


def test_distances_sit_at_the_floor_for_exact_samples_and_far_above_for_shifted():
    toy = Toy2D(name="moons", num_samples=500, val_size=100)
    exact = toy.reference_samples(1000, torch.Generator().manual_seed(5))
    good = evaluate(None, toy, samples=[exact], metrics=["distances"], distance_draws=3, progress=False).metrics
    bad = evaluate(None, toy, samples=[exact + 0.5], metrics=["distances"], distance_draws=3, progress=False).metrics
    for name in ("energy_distance", "mmd", "sliced_wasserstein"):
        # data-vs-data distances at this n spread over a factor ~10 (MMD), so one exact set lands within a few x
        assert 0.2 < good[name]["ratio"] < 6.0, (name, good[name])
        assert bad[name]["ratio"] > 5 and bad[name]["ratio"] > 3 * good[name]["ratio"], (name, bad[name])


def test_exact_data_nll_where_the_density_is_known():
    mixture = GaussianMixture(num_samples=500, val_size=100)
    exact = mixture.reference_samples(1000, torch.Generator().manual_seed(1))
    result = evaluate(None, mixture, samples=[exact], metrics=["distances"], distance_draws=1,
                      progress=False).metrics["data_nll"]
    expected = float(-mixture.distribution.log_prob(exact.double()).mean())
    assert result["mean"] == pytest.approx(expected)
    assert abs(result["mean"] - result["floor"]) < 0.15  # both estimate the entropy of the mixture


class QuadraticEnergy(nn.Module):
    """E(x) = ½ xᵀ A x: p = N(0, A⁻¹)."""

    def __init__(self, a: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("a", a)

    def forward(self, x, t=None):
        return 0.5 * torch.einsum("bi,ij,bj->b", x, self.a, x)


def test_ebm_normalised_nll_equals_the_exact_gaussian_nll():
    a = torch.tensor([[2.0, 0.6], [0.6, 1.0]])
    model = EBM(energy_net=QuadraticEnergy(a), data_range=(-9.0, 9.0), sample_shape=(2,))
    assert model.likelihood_estimators() == ("quadrature", "ais")
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0)) * 0.8
    estimate = model.likelihood(x)
    gaussian = torch.distributions.MultivariateNormal(torch.zeros(2), precision_matrix=a)
    torch.testing.assert_close(estimate.nats, -gaussian.log_prob(x).double(), atol=1e-4, rtol=0)
    record = estimate.to_dict()
    assert record["estimator"] == "quadrature" and record["bits_per_dim"] == pytest.approx(
        float((-gaussian.log_prob(x)).mean()) / (2 * math.log(2)), abs=1e-4)
    exact = math.log(2 * math.pi) - 0.5 * math.log(torch.det(a).item())
    assert record["log_partition"] == pytest.approx(exact, abs=1e-5)
    ais = model.likelihood(x, estimator="ais", generator=torch.Generator().manual_seed(0), num_levels=300).to_dict()
    low, high = ais["log_partition_interval"]
    assert ais["estimator"] == "ais" and low <= exact <= high and high - low < 0.4  # box [−9, 9]²: a far base


def test_evaluate_scores_an_ebms_held_out_set_with_one_ais_log_partition():
    """Beyond one 250-sample chunk every held-out sample shares one log Ẑ (mean NLL = mean E(x) + log Ẑ), and options
    keyed by estimator reach AIS; the quadrature record normalises exactly on the same set."""
    from lit_score.evaluation.groups import held_out_likelihood as _likelihood

    a = torch.tensor([[2.0, 0.6], [0.6, 1.0]])
    model = EBM(energy_net=QuadraticEnergy(a), data_range=(-9.0, 9.0), sample_shape=(2,))
    data = Toy2D(name="8gaussians", num_samples=1200, val_size=600)
    out = _likelihood(model, data, 600, "all", {"ais": {"num_levels": 100, "num_chains": 64}}, seed=0)
    assert set(out) == {"quadrature", "ais"} and out["ais"]["num_levels"] == 100
    mean_energy = model.energy(data.split_tensor("test")).double().mean().item()
    assert out["ais"]["num_samples"] == 600
    assert out["ais"]["nats"] == pytest.approx(mean_energy + out["ais"]["log_partition"], abs=1e-9)
    exact = math.log(2 * math.pi) - 0.5 * math.log(torch.det(a).item())
    assert out["quadrature"]["log_partition"] == pytest.approx(exact, abs=1e-5)


def test_every_family_declares_its_likelihood_estimators():
    ddpm = tiny_ddpm()
    assert ddpm.likelihood_estimators("none") == ("pf_ode",)
    assert ddpm.likelihood_estimators("uniform8bit") == ("vlb", "pf_ode")
    ebm = EBM(energy_net=QuadraticEnergy(torch.eye(2)), data_range=(-3.0, 3.0), sample_shape=(2,))
    assert ebm.likelihood_estimators("uniform8bit") == ()
    with pytest.raises(ValueError, match="offers no likelihood estimator 'vlb'"):
        ddpm.likelihood(torch.zeros(2, 2), "vlb")
    # the VLB's bins are the 8-bit grid: off-grid data is scored as the 8-bit image it rounds to
    images = DDPM(network=MLP(data_dim=4, hidden=8, depth=1), process=DiscreteVP(num_timesteps=5), sample_shape=(4,))
    x = torch.rand(3, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    on_grid = ((x + 1) * 127.5).round() / 127.5 - 1
    vlb = [images.likelihood(v, "vlb", dequantize="uniform8bit", generator=torch.Generator().manual_seed(1))
           for v in (x, on_grid)]
    torch.testing.assert_close(vlb[0].bits_per_dim, vlb[1].bits_per_dim)
    toy = Toy2D(num_samples=200, val_size=50)
    result = evaluate(ddpm, toy, num_samples=50, metrics=["bpd"], likelihood_samples=20, progress=False,
                      trainer_kwargs={"accelerator": "cpu"})
    bpd = result.metrics["bpd"]
    assert bpd["estimator"] == "pf_ode" and bpd["divergence"] == "exact" and bpd["num_samples"] == 20
    assert bpd["dequantize"] == "none" and bpd["nfe"] > 0 and math.isfinite(bpd["mean"])


def test_bits_per_dim_alone_generates_nothing_and_is_the_models_likelihood_of_the_test_split(tmp_path, capsys):
    main(["fit", "--config", str(ROOT / "configs/ddpm/toy.yaml"), "--trainer.logger.init_args.save_dir",
          str(tmp_path), "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0",
          "--trainer.enable_progress_bar", "false", "--model.init_args.process.init_args.num_timesteps", "20"])
    ckpt = tmp_path / "ddpm_toy" / "version_0" / "checkpoints" / "last.ckpt"
    with mock.patch("lit_score.evaluation.evaluate.generate", side_effect=AssertionError("generated")):
        main(["evaluate", "--ckpt_path", str(ckpt), "--metrics", "bpd", "--likelihood_samples", "20",
              "--output", str(tmp_path / "eval"), "--progress", "false"])
    record = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    p = record["protocol"]
    assert p["num_samples"] == 0 and p["generation"] == [] and p["nfe"] is None and p["sampler"] is None
    assert p["reference"] is None and "no samples generated" in p["notes"][0]
    assert sorted(f.name for f in (tmp_path / "eval").iterdir()) == ["metrics.json"]  # no samples, no picture
    assert "no samples generated" in capsys.readouterr().out
    # the number is the model's PF-ODE NLL of the first 20 test points, with the evaluation's generator (seed 0)
    from lit_score.cli import load_model
    from lit_score.loading.checkpoint import checkpoint_datamodule

    model, data = load_model(ckpt, map_location="cpu"), checkpoint_datamodule(ckpt)
    data._ensure_setup()
    x = torch.stack([data.split_dataset("test")[i] for i in range(20)])
    direct = model.likelihood(x, "pf_ode", divergence="exact", generator=torch.Generator().manual_seed(0))
    assert record["metrics"]["bpd"]["mean"] == pytest.approx(float(direct.bits_per_dim.mean()), rel=1e-5)


def test_inapplicable_metrics_are_refused_in_one_line(capsys, tmp_path):
    npz = tmp_path / "s.npz"
    np.savez(npz, samples=np.zeros((10, 2), dtype=np.float32))
    with pytest.raises(SystemExit) as info:
        main(["evaluate", "--samples", f"[{npz}]", "--data", "lit_score.data.Toy2D", "--metrics", "fid",
              "--output", str(tmp_path / "o")])
    assert info.value.code == 1
    assert "fid needs image data" in capsys.readouterr().err


def test_help_lists_every_subcommand(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    for name in ("fit", "validate", "test", "predict", "sample", "evaluate", "compare"):
        assert f"  {name} " in out


def test_seed_loader_serves_whole_batches():
    loader = seed_loader(5, 2, seed=1)
    batches = list(loader)
    assert [b["index"].tolist() for b in batches] == [[0, 1], [2, 3], [4]]
    assert all(b["seed"] == 1 for b in batches)


def test_evaluate_on_two_ddp_processes_writes_what_one_process_writes(digits_run, tmp_path):
    """`lit-score evaluate --devices 2 --strategy ddp` as a user runs it: the same samples and FID as on one process."""
    import os
    import subprocess
    import sys

    ckpt = digits_run / "checkpoints" / "last.ckpt"
    common = ["evaluate", "--ckpt_path", str(ckpt), "--num_samples", "30", "--batch_size", "8", "--metrics", "fid",
              "--seeds", "0,1",  # a second seed set: every rank must take its share of both
              "--accelerator", "cpu", "--progress", "false", "--cache_root", str(tmp_path / "cache")]
    main([*common, "--output", str(tmp_path / "one")])
    result = subprocess.run([sys.executable, "-m", "lit_score.cli", *common, "--devices", "2", "--strategy", "ddp",
                             "--output", str(tmp_path / "two")], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "MPLBACKEND": "Agg"})
    assert result.returncode == 0, result.stderr[-3000:]
    for seed in (0, 1):
        one, two = (np.load(tmp_path / d / f"samples_seed{seed}.npz") for d in ("one", "two"))
        np.testing.assert_allclose(one["samples"], two["samples"], rtol=1e-5, atol=1e-6)
        assert two["index"].tolist() == list(range(30))
    fids = [json.loads((tmp_path / d / "metrics.json").read_text())["metrics"]["fid"]["mean"] for d in ("one", "two")]
    assert fids[0] == pytest.approx(fids[1], rel=1e-5)
    generation = json.loads((tmp_path / "two" / "metrics.json").read_text())["protocol"]["generation"][0]
    assert generation["world_size"] == 2


def test_evaluate_logs_the_numbers_and_protocol_to_a_logger(tmp_path):
    toy = tmp_path / "s.npz"
    x = Toy2D().reference_samples(300, torch.Generator().manual_seed(0))
    np.savez(toy, samples=x.numpy())
    main(["evaluate", "--samples", f"[{toy}]", "--data", "lit_score.data.Toy2D", "--metrics", "distances",
          "--output", str(tmp_path / "out"), "--logger", "lightning.pytorch.loggers.CSVLogger",
          "--logger.save_dir", str(tmp_path / "logs"), "--logger.name", "eval", "--progress", "false"])
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())["metrics"]
    rows = list(__import__("csv").DictReader(open(tmp_path / "logs" / "eval" / "version_0" / "metrics.csv")))
    assert float(rows[0]["eval/energy_distance"]) == pytest.approx(written["energy_distance"]["mean"], rel=1e-6)
    assert float(rows[0]["eval/energy_distance_floor"]) == pytest.approx(written["energy_distance"]["floor"])
    hparams = (tmp_path / "logs" / "eval" / "version_0" / "hparams.yaml").read_text()
    assert "eval_protocol/num_samples: 300" in hparams and "eval_protocol/versions/torch_fidelity" in hparams
