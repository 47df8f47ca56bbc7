"""EBM: CD loss, replay buffer as checkpointed (per-rank) state, divergence watchdog, inference-mode sampling."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from lit_score.callbacks import EnergyHistogram
from lit_score.data import Toy2D
from lit_score.losses.contrastive import ContrastiveDivergence
from lit_score.models import EBM, EBMDivergedError
from lit_score.networks import EnergyMLP
from lit_score.samplers import Langevin

RANGE = (-3.0, 3.0)


def make_ebm(**kw) -> EBM:
    sampler = Langevin(num_steps=5, step_size=0.05, noise_scale=0.1, grad_clip=None, clamp=RANGE)
    args = {"buffer_size": 64, "data_range": RANGE, "sample_shape": (2,), "sampler": sampler} | kw
    return EBM(EnergyMLP(2, hidden=16, depth=2), **args)


def make_data(batch_size: int = 16) -> Toy2D:
    return Toy2D(num_samples=256, val_size=32, batch_size=batch_size)


def make_trainer(tmp_path: Path, max_steps: int, callbacks=(), **kw) -> pl.Trainer:
    args = dict(
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
        callbacks=list(callbacks),
    )
    return pl.Trainer(**(args | kw))


def test_contrastive_divergence_formula():
    e_real, e_fake = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 3.0])
    expected = e_real - e_fake + 0.1 * (e_real**2 + e_fake**2)
    torch.testing.assert_close(ContrastiveDivergence(0.1)(e_real, e_fake), expected)
    with pytest.raises(ValueError, match="pair up"):
        ContrastiveDivergence()(e_real, e_fake[:1])


def test_defaults_and_uniform_initial_state():
    model = EBM(EnergyMLP(2), data_range=(-2.0, 5.0), sample_shape=(2,))
    assert isinstance(model.sampler, Langevin) and model.sampler.clamp == (-2.0, 5.0)
    assert model.loss.alpha == 0.1 and model.buffer_size == 10000 and model.reuse_prob == 0.95
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["betas"] == (0.0, 0.999)
    assert optimizer.defaults["lr"] == 1e-4
    x = model.initial_state(4000, torch.Generator().manual_seed(0))
    assert x.min() >= -2.0 and x.max() <= 5.0 and abs(float(x.mean()) - 1.5) < 0.1


def test_sampling_is_frozen_and_restores_state_and_works_under_inference_mode():
    model = make_ebm()
    model.train()
    seen: list[tuple[bool, bool]] = []
    net = model.energy_net
    forward = net.forward
    net.forward = lambda x, t=None: (seen.append((net.training, net.net[0].weight.requires_grad)), forward(x, t))[1]
    with torch.inference_mode():
        x = model.sample(8)
    assert x.shape == (8, 2) and torch.isfinite(x).all() and not x.requires_grad
    assert seen and all(s == (False, False) for s in seen) and model.training
    assert all(p.requires_grad for p in model.parameters())


def test_fit_validate_and_test_under_inference_mode(tmp_path):
    """Training logs the diagnostics; validate/test (inference_mode) run Langevin on a fresh model."""
    model, data = make_ebm(), make_data()
    hist = EnergyHistogram(num_samples=32, dirpath=str(tmp_path / "ebm"))
    trainer = make_trainer(tmp_path, 4, [hist], limit_val_batches=1, val_check_interval=4)
    trainer.fit(model, data)
    metrics = trainer.callback_metrics
    for key in (
        "train/energy_real",
        "train/energy_fake",
        "train/energy_noise",
        "train/cd_gap",
        "train/grad_norm",
        "train/rollbacks",
        "val/energy_noise",
        "ebm/ood_auroc_noise",
    ):
        assert key in metrics and torch.isfinite(metrics[key]), key
    assert set(hist.last_paths) == {"histogram", "fresh chains", "replay buffer"}
    assert all(p.is_file() for p in hist.last_paths.values())
    assert model.replay_buffer.shape == (64, 2)
    fresh = make_ebm()
    assert fresh.replay_buffer is None
    out = make_trainer(tmp_path, 1, limit_val_batches=1).validate(fresh, data, verbose=False)
    assert torch.isfinite(torch.tensor(out[0]["val/energy_fake"]))
    out = make_trainer(tmp_path, 1, limit_test_batches=1).test(fresh, data.val_dataloader(), verbose=False)
    assert torch.isfinite(torch.tensor(out[0]["test/loss"]))


class SaveAtEnd(pl.Callback):
    """Save a checkpoint and this rank's buffer shard at the end of fit."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_end(self, trainer, pl_module) -> None:
        trainer.save_checkpoint(self.path / "last.ckpt")
        torch.save(pl_module.replay_buffer.cpu(), self.path / f"buffer{trainer.global_rank}.pt")


class CheckBufferOnResume(pl.Callback):
    """On resume, each rank's buffer must equal the shard it saved."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_start(self, trainer, pl_module) -> None:
        saved = torch.load(self.path / f"buffer{trainer.global_rank}.pt")
        assert torch.equal(pl_module.replay_buffer.cpu(), saved), f"rank {trainer.global_rank} lost its shard"
        assert pl_module.rollbacks == 0
        (self.path / f"ok{trainer.global_rank}").touch()


def test_buffer_round_trip_through_checkpoint(tmp_path):
    make_trainer(tmp_path, 3, [SaveAtEnd(tmp_path)]).fit(make_ebm(), make_data())
    shards = torch.load(tmp_path / "last.ckpt", weights_only=True)["ebm_replay_buffer"]["shards"]
    assert torch.equal(shards[0], torch.load(tmp_path / "buffer0.pt"))
    resumed = make_ebm()
    make_trainer(tmp_path, 4, [CheckBufferOnResume(tmp_path)]).fit(
        resumed, make_data(), ckpt_path=tmp_path / "last.ckpt"
    )
    assert (tmp_path / "ok0").exists()
    loaded = EBM.load_from_checkpoint(
        tmp_path / "last.ckpt", energy_net=EnergyMLP(2, hidden=16, depth=2), weights_only=True
    )
    assert torch.equal(loaded.replay_buffer, shards[0])


def test_ddp_ranks_restore_their_own_shards(tmp_path):
    """Two CPU ranks (ddp_fork): both shards go into the checkpoint and each rank takes its own back."""
    ddp = {"devices": 2, "strategy": "ddp_fork"}
    make_trainer(tmp_path, 2, [SaveAtEnd(tmp_path)], **ddp).fit(make_ebm(), make_data())
    shard0, shard1 = torch.load(tmp_path / "buffer0.pt"), torch.load(tmp_path / "buffer1.pt")
    assert not torch.equal(shard0, shard1)  # ranks keep different chains
    shards = torch.load(tmp_path / "last.ckpt", weights_only=True)["ebm_replay_buffer"]["shards"]
    assert torch.equal(shards[0], shard0) and torch.equal(shards[1], shard1)
    make_trainer(tmp_path, 3, [CheckBufferOnResume(tmp_path)], **ddp).fit(
        make_ebm(), make_data(), ckpt_path=tmp_path / "last.ckpt"
    )
    assert (tmp_path / "ok0").exists() and (tmp_path / "ok1").exists()


def test_buffer_saved_by_another_world_size_is_dealt_out():
    """Two saved shards of 4 loaded on one rank with room for 10: the 8 pooled samples, then uniform noise."""
    model = make_ebm(buffer_size=10)
    shards = torch.arange(16.0).reshape(2, 4, 2)
    with pytest.warns(UserWarning, match="2 rank"):
        model.on_load_checkpoint({"ebm_replay_buffer": {"shards": shards, "rollbacks": 1}})
    assert torch.equal(model.replay_buffer[:8], shards.flatten(0, 1)) and model.rollbacks == 1
    assert model.replay_buffer.shape == (10, 2) and model.replay_buffer[8:].abs().max() <= 3.0


class BlowUp(pl.Callback):
    """Multiply the energy's output layer by 1e6 at the start of chosen steps (an injected divergence)."""

    def __init__(self, steps: set[int] | None = None, from_step: int | None = None) -> None:
        self.steps, self.from_step, self.fired = steps or set(), from_step, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = trainer.global_step
        if (step in self.steps and step not in self.fired) or (self.from_step is not None and step >= self.from_step):
            self.fired.append(step)
            with torch.no_grad():
                pl_module.energy_net.net[-1].weight.mul_(1e6)


def test_watchdog_rolls_back_and_training_continues(tmp_path):
    model = make_ebm(max_energy=100.0, snapshot_every=2)
    trainer = make_trainer(tmp_path, 8, [BlowUp({5})])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, make_data())
    messages = [str(w.message) for w in caught if "rolled back" in str(w.message)]
    assert len(messages) == 1 and "rolled back to step 4" in messages[0] and "reseeded" in messages[0]
    assert model.rollbacks == 1 and float(trainer.callback_metrics["train/rollbacks"]) == 1.0
    assert trainer.global_step >= 7  # training went on after the rollback
    trainer.save_checkpoint(tmp_path / "final.ckpt")
    state = torch.load(tmp_path / "final.ckpt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values())
    assert model.energy_net.net[-1].weight.abs().max() < 100


def test_a_resumed_run_rolls_back_to_the_snapshot_the_interrupted_run_had(tmp_path):
    """Snapshots at steps 0, 4, 8 …: stopped at step 6 and resumed, a divergence at step 7 goes back to step 4 (the
    uninterrupted run's target), not to the resume step 6, and to the weights saved at step 4."""
    make_trainer(tmp_path, 6, [SaveAtEnd(tmp_path)]).fit(make_ebm(max_energy=100.0, snapshot_every=4), make_data())
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)["ebm_replay_buffer"]["snapshot"]
    assert saved["step"] == 4 and saved["optimizers"]
    model = make_ebm(max_energy=100.0, snapshot_every=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(tmp_path, 8, [BlowUp({7})]).fit(model, make_data(), ckpt_path=tmp_path / "last.ckpt")
    messages = [str(w.message) for w in caught if "rolled back" in str(w.message)]
    assert len(messages) == 1 and "diverged at step 7" in messages[0] and "rolled back to step 4" in messages[0]


def test_watchdog_stops_after_max_rollbacks(tmp_path):
    model = make_ebm(max_energy=100.0, snapshot_every=1, max_rollbacks=2)
    with pytest.raises(EBMDivergedError, match="after 2 rollbacks"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make_trainer(tmp_path, 20, [BlowUp(from_step=3)]).fit(model, make_data())
    assert model.rollbacks == 3


@pytest.mark.parametrize("config", ["toy", "digits", "toy_shortrun"])
def test_cli_fast_dev_run(tmp_path, config):
    from lit_score.cli import main

    root = Path(__file__).resolve().parents[1]
    argv = ["fit", "--config", str(root / f"configs/ebm/{config}.yaml"), "--trainer.fast_dev_run", "true",
            "--trainer.accelerator", "cpu", "--trainer.default_root_dir", str(tmp_path), "--data.init_args.batch_size",
            "16", "--model.init_args.sampler.init_args.num_steps", "5"]  # fmt: skip
    main(argv)
    assert (tmp_path / "ebm" / "epoch=0000_energy.png").is_file()


def test_chain_regimes_short_run_keeps_no_buffer_and_cd_starts_at_the_data(tmp_path):
    short = make_ebm(chain_init="noise")
    make_trainer(tmp_path, 3).fit(short, make_data())
    assert short.replay_buffer is None  # non-persistent: nothing to keep, nothing checkpointed
    short._generator = torch.Generator().manual_seed(0)
    fakes = short.fake_samples(16)
    assert fakes.shape == (16, 2) and fakes.abs().max() <= 3.0
    # CD-k: the chains start at the data batch; with a vanishing step the fakes are the data
    cd = make_ebm(chain_init="data", sampler=Langevin(num_steps=1, step_size=1e-9, noise_scale=0.0, grad_clip=None,
                                                       clamp=None))
    cd._generator = torch.Generator().manual_seed(0)
    x = torch.randn(16, 2)
    torch.testing.assert_close(cd.fake_samples(16, x), x)
    with pytest.raises(ValueError, match="chain_init data"):
        cd.fake_samples(16)
    with pytest.raises(ValueError, match="unknown chain_init 'replay'"):
        make_ebm(chain_init="replay")


def test_data_noise_perturbs_the_real_batch_by_sigma():
    model = make_ebm(data_noise=0.03)
    model._generator = torch.Generator().manual_seed(0)
    x = torch.zeros(4000, 2)
    noisy = model.real_samples(x)
    assert abs(float(noisy.std()) - 0.03) < 0.002
    assert torch.equal(make_ebm().real_samples(x), x)


def test_sampling_can_continue_the_buffer_chains_and_says_so(tmp_path):
    model = make_ebm()
    make_trainer(tmp_path, 3).fit(model, make_data())
    assert model.sample_starts == ("noise", "buffer") and model.sample_start == "noise"
    model.set_sample_start("buffer")
    start = model.initial_state(10, torch.Generator().manual_seed(0))
    rows = {tuple(r.tolist()) for r in model.replay_buffer}
    assert all(tuple(r.tolist()) in rows for r in start) and len({tuple(r.tolist()) for r in start}) == 10
    with pytest.raises(ValueError, match="buffer of 64"):
        model.initial_state(65)
    with pytest.raises(ValueError, match="cannot start chains from 'data': choose from noise, buffer"):
        model.set_sample_start("data")
    fresh = make_ebm(chain_init="noise")
    fresh.set_sample_start("buffer")
    with pytest.raises(ValueError, match="holds no replay buffer"):
        fresh.initial_state(4)


def test_training_logs_the_chain_diagnostics_and_the_callback_r_hat(tmp_path):
    """r_t, d_t's lag-1 autocorrelation (recomputed here from the kept d_t), an MH kernel's acceptance and step, and
    split-R̂ / ESS of fresh chains' energy traces at validation."""
    from lit_score.callbacks import ChainDiagnostics
    from lit_score.samplers import MALA

    model = make_ebm(sampler=MALA(num_steps=10, step_size=0.05, adapt_steps=5, bounds=RANGE))
    diagnostics = ChainDiagnostics(num_chains=8)
    trainer = make_trainer(tmp_path, 12, [diagnostics], limit_val_batches=1, val_check_interval=12)
    trainer.fit(model, make_data())
    metrics = trainer.callback_metrics
    for key in ("train/chain_grad_norm", "train/energy_diff_autocorr", "train/chain_acceptance_rate",
                "train/chain_adapted_step_size", "ebm/chain_rhat", "ebm/chain_ess", "ebm/chain_energy"):
        assert key in metrics and torch.isfinite(metrics[key]), key
    d = torch.stack(list(model._energy_diffs)).cpu()
    d = d - d.mean()
    assert len(model._energy_diffs) == 12
    assert float(metrics["train/energy_diff_autocorr"]) == pytest.approx(float((d[1:] * d[:-1]).sum() / (d * d).sum()),
                                                                         rel=1e-5)
    assert 0 <= float(metrics["train/chain_acceptance_rate"]) <= 1
    draws = 8 * (15 - 15 // 2)  # 8 chains, the second half of 5 warm-up + 10 sampling steps
    assert diagnostics.last["chain_rhat"] >= 0.9 and 0 < diagnostics.last["chain_ess"] <= draws * math.log10(draws)
    with pytest.raises(ValueError, match="needs a model with an energy and a one-level sampler"):
        from lit_score.models import DDPM
        from lit_score.networks import MLP

        ChainDiagnostics().setup(None, DDPM(MLP(data_dim=2), sample_shape=(2,)), "fit")


class Weights(pl.Callback):
    """Record the weights after chosen steps (and, under DDP, write each rank's final weights to a file)."""

    def __init__(self, steps=(), folder: Path | None = None) -> None:
        self.steps, self.folder, self.after = set(steps), folder, {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step in self.steps:
            self.after[trainer.global_step] = {k: v.clone() for k, v in pl_module.state_dict().items()}

    def on_train_end(self, trainer, pl_module) -> None:
        if self.folder is not None:
            record = {"state": dict(pl_module.state_dict()), "rollbacks": pl_module.rollbacks}
            torch.save(record, self.folder / f"rank{trainer.global_rank}.pt")


def test_a_rolled_back_step_leaves_the_snapshot_weights_and_returns_a_loss():
    """The rolled-back step returns a zero loss (never None: Lightning refuses that under DDP) and drops its gradients:
    the weights after it are the snapshot's exactly (Adam's restored momentum does not step them)."""
    model = make_ebm(max_energy=100.0, snapshot_every=4)
    record = Weights(steps={4, 6})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make_trainer(Path("."), 7, [BlowUp({5}), record]).fit(model, make_data())
    assert model.rollbacks == 1
    snapshot_step, snapshot_state, _ = model.rollback.snapshot
    assert snapshot_step == 4
    for name, value in record.after[6].items():  # step 5 diverged and was rolled back: no update in that step
        if "replay" not in name:
            assert torch.equal(value, record.after[4][name]), name


def test_ddp_ranks_roll_back_together_and_end_with_equal_weights(tmp_path):
    """Two gloo ranks (ddp_fork); only rank 1's energies blow up at step 3. Both roll back (the decision is agreed),
    nobody hangs, and the ranks end with identical weights."""

    class BlowUpOnRankOne(BlowUp):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if trainer.global_rank == 1:
                super().on_train_batch_start(trainer, pl_module, batch, batch_idx)

    model = make_ebm(max_energy=100.0, snapshot_every=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make_trainer(tmp_path, 6, [BlowUpOnRankOne({3}), Weights(folder=tmp_path)], devices=2,
                     strategy="ddp_fork").fit(model, make_data())
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["rollbacks"] == ranks[1]["rollbacks"] == 1
    for name, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][name]), name
