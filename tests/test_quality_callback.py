"""SampleQuality: the logged numbers are the metrics of the samples the one generation path makes, on 1 or 2 ranks.

The short fits below train with a learning rate of 0, so a single-process run and a 2-rank DDP run sample the very
same weights: what the DDP comparison checks is the sharding of generation and reference data and the metrics' sync.
"""

from __future__ import annotations

import csv
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from lit_score.callbacks import SampleQuality
from lit_score.data import Digits, Toy2D
from lit_score.generation import SeedBatches, draw_seed_batch
from lit_score.metrics.distances import distance_report
from lit_score.metrics.fidelity import UInt8Images, to_uint8
from lit_score.models import DDPM
from lit_score.networks import MLP, UNet
from lit_score.processes import DiscreteVP
from lit_score.samplers import DDIM

pytestmark = pytest.mark.usefixtures("one_thread")

N, BATCH, SEED = 300, 100, 3  # three generation batches: under 2 ranks, rank 0 draws two and rank 1 one


def frozen(params):
    return torch.optim.SGD(params, lr=0.0)


def toy_model() -> DDPM:
    torch.manual_seed(0)
    return DDPM(network=MLP(data_dim=2, hidden=32, depth=2), process=DiscreteVP(num_timesteps=20), sample_shape=(2,),
                sampler=DDIM(num_steps=3), optimizer=frozen)


def digits_model() -> DDPM:
    torch.manual_seed(0)
    network = UNet(in_channels=1, base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(),
                   dropout=0.0, resolution=16, num_groups=8)
    return DDPM(network=network, process=DiscreteVP(num_timesteps=20), sample_shape=(1, 16, 16),
                sampler=DDIM(num_steps=3), optimizer=frozen)


def toy_data() -> Toy2D:
    return Toy2D(num_samples=400, batch_size=50)


def digits_data() -> Digits:
    return Digits(image_size=16, batch_size=64)


def short_fit(model, datamodule, callback, tmp_path, devices: int = 1, ckpt_path=None, **kwargs) -> pl.Trainer:
    ddp = {"strategy": "ddp_fork", "devices": 2} if devices == 2 else {"devices": 1}
    options = {"max_epochs": 1, "limit_train_batches": 1, "limit_val_batches": 1, "num_sanity_val_steps": 0,
               "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
               "enable_model_summary": False, **kwargs}
    trainer = pl.Trainer(accelerator="cpu", callbacks=[callback], default_root_dir=tmp_path, **ddp, **options)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    return trainer


def logged(trainer: pl.Trainer) -> dict[str, float]:
    """What the callback logged, as the parent process sees it (also after a forked DDP run)."""
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/") and k != "val/loss"}


def our_samples(model: DDPM) -> torch.Tensor:
    """The callback's samples, drawn here through the same seed batches."""
    return torch.cat([draw_seed_batch(model, batch) for batch in (SeedBatches(N, BATCH, SEED)[k] for k in range(3))])


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    model, data = toy_model(), toy_data()
    callback = SampleQuality(num_samples=N, batch_size=BATCH, seed=SEED)
    trainer = short_fit(model, data, callback, tmp_path_factory.mktemp("toy"))
    return SimpleNamespace(model=model, data=data, callback=callback, trainer=trainer, logged=logged(trainer))


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    model, data = digits_model(), digits_data()
    callback = SampleQuality(num_samples=N, batch_size=BATCH, seed=SEED, kid_subset_size=100)
    trainer = short_fit(model, data, callback, tmp_path_factory.mktemp("digits"))
    return SimpleNamespace(model=model, data=data, callback=callback, trainer=trainer, logged=logged(trainer))


def test_toy_distances_are_distance_report_of_the_generated_samples(toy_run):
    x = our_samples(toy_run.model)
    report = distance_report(x.double(), lambda k, g: toy_run.data.reference_draw(k, g, "train"), 1, SEED)
    expected = {f"val/{name}{suffix}": row[key] for name, row in report.items()
                for suffix, key in (("", "value"), ("_floor", "floor"), ("_ratio", "ratio"))}
    assert set(expected) | {"val/quality_nfe"} == set(toy_run.callback.last_metrics)
    for name, value in expected.items():
        assert toy_run.callback.last_metrics[name] == value  # the same samples and draws: the same numbers
        assert toy_run.logged[name] == pytest.approx(value, rel=1e-6)  # logged as float32
    assert toy_run.logged["val/quality_nfe"] == 3


def test_fid_equals_torch_fidelity_on_the_same_images(digits_run):
    import torch_fidelity

    samples = to_uint8(our_samples(digits_run.model))
    reference = to_uint8(digits_run.data.split_tensor("train"))
    expected = torch_fidelity.calculate_metrics(
        input1=UInt8Images(samples), input2=UInt8Images(reference), fid=True, feature_extractor="digits-v2", cuda=False,
        cache=False, verbose=False, save_cpu_ram=True,
    )["frechet_inception_distance"]
    fid = digits_run.logged["val/fid"]
    assert fid == pytest.approx(expected, rel=1e-3)  # torchmetrics' FID maths (eigvals) vs torch-fidelity's
    assert {"val/fid", "val/kid", "val/kid_std", "val/quality_nfe"} == set(digits_run.logged)
    assert digits_run.logged["val/kid"] > 0


def test_validate_measures_the_same_under_inference_mode(digits_run):
    """trainer.validate (inference_mode) is always measured; the kept reference features are reused."""
    before = dict(digits_run.callback.last_metrics)
    digits_run.trainer.validate(digits_run.model, datamodule=digits_run.data, verbose=False)
    assert digits_run.callback.last_metrics == before
    assert digits_run.callback.validation_runs == 1  # a standalone validation is not counted


def test_ddp_two_ranks_log_what_one_process_logs(toy_run, digits_run, tmp_path):
    for run, model, data in ((toy_run, toy_model, toy_data), (digits_run, digits_model, digits_data)):
        callback = SampleQuality(num_samples=N, batch_size=BATCH, seed=SEED, kid_subset_size=100)
        ddp = logged(short_fit(model(), data(), callback, tmp_path, devices=2))
        assert set(ddp) == set(run.logged)
        for name, value in run.logged.items():
            assert ddp[name] == pytest.approx(value, rel=1e-6, abs=1e-12), name  # KID too: rows are put in order


def read_csv(path) -> list[dict[str, str]]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_schedule_skips_runs_and_the_counter_survives_a_checkpoint(tmp_path):
    data = toy_data()
    first = SampleQuality(every_n_validations=2, num_samples=64, batch_size=32)
    trainer = short_fit(toy_model(), data, first, tmp_path, num_sanity_val_steps=1)  # sanity checks are not counted
    assert first.validation_runs == 1 and first.last_metrics == {}  # run 1 of every 2: nothing measured
    assert "val/energy_distance" not in trainer.callback_metrics
    ckpt = tmp_path / "first.ckpt"
    trainer.save_checkpoint(ckpt)
    assert torch.load(ckpt, weights_only=True)["callbacks"]["SampleQuality"] == {"validation_runs": 1}

    resumed = SampleQuality(every_n_validations=2, num_samples=64, batch_size=32)
    logger = CSVLogger(tmp_path, name="resumed")
    short_fit(toy_model(), data, resumed, tmp_path, max_epochs=3, logger=logger, ckpt_path=ckpt)
    assert resumed.validation_runs == 3
    rows = read_csv(logger.log_dir + "/metrics.csv")
    measured = [int(row["epoch"]) for row in rows if row.get("val/energy_distance")]
    validated = [int(row["epoch"]) for row in rows if row.get("val/loss")]
    assert validated == [1, 2] and measured == [1]  # run 2 (epoch 1) is due; run 3 (epoch 2) is skipped


def test_metrics_must_fit_the_data():
    toy = SimpleNamespace(datamodule=Toy2D(num_samples=100))
    with pytest.raises(ValueError, match="'fid' is not for this data"):
        SampleQuality(metrics=["fid"]).setup(toy, None, "fit")
    with pytest.raises(ValueError, match="'fdi' is unknown"):
        SampleQuality(metrics=["fdi"]).setup(toy, None, "fit")
    digits = SimpleNamespace(datamodule=Digits(image_size=16))
    with pytest.raises(ValueError, match="'mmd' is not for this data"):
        SampleQuality(metrics=["mmd"]).setup(digits, None, "fit")


def test_a_data_module_of_another_library_is_refused_in_one_line_or_treated_as_bare_loaders():
    """Only a lit-score data module declares reference data, labels and ranges: another library's
    ``LightningDataModule`` gets the one-line refusal (SampleQuality, NCSN's sigma_max_from_data) or the bare-loader
    fallback (class checks), never an AttributeError."""
    from lit_score.data.base import lit_datamodule

    foreign = SimpleNamespace(datamodule=pl.LightningDataModule())
    assert lit_datamodule(foreign) is None and lit_datamodule(None) is None
    with pytest.raises(ValueError, match="needs a lit_score datamodule"):
        SampleQuality(num_samples=10).setup(foreign, None, "fit")
