"""Long runs that can be trusted: exact resume after SIGKILL, saving on signals, atomic checkpoints, skipped
non-finite steps, checkpoint checks before anything is imported or trained."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lit_score.callbacks.resume import NonFiniteGuard, NonFiniteStepsError
from lit_score.checkpointing import AtomicCheckpointIO, NonFiniteWeightsError

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent


def fit(tmp: Path, config: str, name: str, *extra, callbacks: list[dict] | None = None) -> subprocess.CompletedProcess:
    """``lit-score fit`` in a fresh process, as a user (or a scheduler) runs it."""
    argv = [sys.executable, "-m", "lit_score.cli", "fit", "--config", str(ROOT / config),
            "--trainer.logger.init_args.save_dir", str(tmp), "--trainer.logger.init_args.name", name,
            "--trainer.enable_progress_bar", "false", "--trainer.callbacks", json.dumps(callbacks or []),
            *map(str, extra)]
    env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run(argv, cwd=tmp, capture_output=True, text=True, env=env, timeout=300)


def checkpoint_every(steps: int) -> dict:
    return {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"every_n_train_steps": steps, "save_last": True, "save_top_k": -1}}


EMA = {"class_path": "lit_score.callbacks.EMA", "init_args": {"decay": 0.9}}


def kill_at(step: int, signal_name: str = "SIGKILL") -> dict:
    return {"class_path": "resume_helpers.SignalAt", "init_args": {"step": step, "signal_name": signal_name}}


def max_difference(a: dict, b: dict, key: str) -> float:
    """max |Δ| over every tensor under ``key`` of two checkpoints (nested dicts / lists walked)."""
    def tensors(tree):
        if torch.is_tensor(tree):
            yield tree
        elif isinstance(tree, dict):
            for k in sorted(tree, key=str):
                yield from tensors(tree[k])
        elif isinstance(tree, (list, tuple)):
            for v in tree:
                yield from tensors(v)
    pairs = list(zip(tensors(a[key]), tensors(b[key]), strict=True))
    assert pairs, key
    return max(float((x.double() - y.double()).abs().max()) if x.numel() else 0.0 for x, y in pairs)


TOY = ["--data.init_args.num_samples", 2000, "--data.init_args.batch_size", 100, "--trainer.check_val_every_n_epoch", 1,
       "--trainer.limit_val_batches", 2]
DDPM = ["--model.init_args.process.init_args.num_timesteps", 100]
EBM = ["--model.init_args.sampler.init_args.num_steps", 10, "--model.init_args.buffer_size", 500]
LOSS_AWARE = json.dumps({"class_path": "lit_score.losses.DenoisingLoss", "init_args": {"time_sampling": "loss_aware"}})
EPOCHLY = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True}}

# (config, extra args, callbacks, the states compared, kill step, the step of the checkpoint it resumes from):
# 20 training batches an epoch and a validation after each; checkpoints every 25 steps (mid-epoch) or at every
# validation end (the configs' default, on an epoch's last batch); SIGKILL a few steps after a checkpoint.
CASES = {
    "ddpm": ("configs/ddpm/toy.yaml", [*TOY, *DDPM], [EMA, checkpoint_every(25)],
             ("state_dict", "current_model_state", "optimizer_states"), 31, 25),
    "ddpm-epoch-end": ("configs/ddpm/toy.yaml", [*TOY, *DDPM], [EMA, EPOCHLY],
                       ("state_dict", "current_model_state", "optimizer_states"), 45, 40),
    # iDDPM's loss-aware steps: the per-step loss history (warm after ~10 steps of 100 draws) resumes with the run
    "ddpm-loss-aware": ("configs/ddpm/toy.yaml", [*TOY, *DDPM, "--model.init_args.loss", LOSS_AWARE],
                        [EMA, checkpoint_every(25)], ("state_dict", "optimizer_states", "lit_score_loss"), 31, 25),
    "ebm": ("configs/ebm/toy.yaml", [*TOY, *EBM], [checkpoint_every(25)],
            ("state_dict", "optimizer_states", "ebm_replay_buffer"), 31, 25),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_sigkill_then_resume_last_is_bit_identical_to_an_uninterrupted_run(tmp_path, case):
    config, extra, callbacks, keys, kill, saved = CASES[case]
    steps = ["--trainer.max_steps", 60, "--trainer.max_epochs", -1]
    plain = fit(tmp_path, config, "plain", *steps, *extra, callbacks=callbacks)
    assert plain.returncode == 0, plain.stderr[-3000:]
    killed = fit(tmp_path, config, "killed", *steps, *extra, callbacks=[*callbacks, kill_at(kill)])
    assert killed.returncode == -9, killed.stderr[-2000:]  # died by SIGKILL, after a checkpoint
    run = tmp_path / "killed" / "version_0"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == saved
    resumed = fit(tmp_path, config, "killed", *steps, *extra, "--ckpt_path", "last", callbacks=callbacks)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "not resumable" not in resumed.stderr  # lit-score restores the loaders' position itself
    assert not (tmp_path / "killed" / "version_1").exists()  # it continued in the killed run's own folder
    assert (run / "config.yaml").is_file() and (run / "config_resume_1.yaml").is_file()
    assert not list(run.glob("checkpoints/last-v*.ckpt"))
    a = torch.load(tmp_path / "plain" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 60
    for key in keys:  # weights, EMA and raw weights, Adam moments, the EBM buffer and chain generator
        assert max_difference(a, b, key) == 0.0, key
    assert a["lr_schedulers"] == b["lr_schedulers"]
    assert a["epoch"] == b["epoch"]  # (Lightning's own epoch_progress.processed counts a validation-end resume twice)


def test_sigterm_and_ctrl_c_save_a_checkpoint_and_exit_non_zero(tmp_path):
    extra = ["--data.init_args.num_samples", 2000, "--data.init_args.batch_size", 100, "--trainer.max_steps", 60,
             "--model.init_args.process.init_args.num_timesteps", 100]
    save_last = EPOCHLY
    for name, code in (("SIGTERM", 143), ("SIGINT", 130), ("SIGUSR1", 138)):
        result = fit(tmp_path, "configs/ddpm/toy.yaml", name, *extra, callbacks=[save_last, kill_at(7, name)])
        assert result.returncode == code, result.stderr[-2000:]
        ckpt = tmp_path / name / "version_0" / "checkpoints" / "last.ckpt"
        assert f"lit-score: stopped by {name} at step 7: saved {ckpt}" in result.stderr
        assert "Traceback" not in result.stderr
        assert torch.load(ckpt, weights_only=True)["global_step"] == 7


def test_a_second_ctrl_c_stops_at_once_without_saving(tmp_path):
    twice = {"class_path": "resume_helpers.SignalAt", "init_args": {"step": 7, "signal_name": "SIGINT", "times": 2}}
    result = fit(tmp_path, "configs/ddpm/toy.yaml", "twice", "--data.init_args.num_samples", 2000,
                 "--data.init_args.batch_size", 100, "--model.init_args.process.init_args.num_timesteps", 100,
                 callbacks=[EPOCHLY, twice])
    assert result.returncode == 130, result.stderr[-2000:]
    assert "lit-score: stopped by a second Ctrl-C, at once: no checkpoint was written" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list((tmp_path / "twice").rglob("*.ckpt"))


def test_a_stop_between_checkpoints_writes_last_ckpt_of_the_final_weights(tmp_path):
    stop = {"class_path": "resume_helpers.StopAt", "init_args": {"step": 23}}  # as max_time does, mid-epoch
    save_last = EPOCHLY
    result = fit(tmp_path, "configs/ddpm/toy.yaml", "stopped", "--data.init_args.num_samples", 2000,
                 "--data.init_args.batch_size", 100, "--model.init_args.process.init_args.num_timesteps", 100,
                 callbacks=[save_last, stop])
    assert result.returncode == 0, result.stderr[-2000:]
    ckpt = torch.load(tmp_path / "stopped" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 23  # not the end of the previous epoch (step 18)


# --- atomic, finite checkpoints --------------------------------------------------------------------------------
def test_a_write_killed_midway_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, path)

    def dies_midway(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # the process is stopped while writing

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["global_step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no debris


def test_non_finite_weights_are_never_written(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    with pytest.raises(NonFiniteWeightsError, match="net.w"):
        io.save_checkpoint({"state_dict": {"net.w": torch.tensor([1.0, float("nan")])}}, path)
    assert torch.equal(torch.load(path, weights_only=True)["state_dict"]["w"], torch.ones(3))


# --- non-finite steps ------------------------------------------------------------------------------------------
def _guarded_fit(tmp_path, bad_batches: set[int], max_steps: int, max_consecutive: int = 3):
    import lightning.pytorch as pl

    from lit_score.models import DDPM
    from lit_score.networks import MLP
    from lit_score.processes import DiscreteVP

    torch.manual_seed(0)
    data = torch.randn(64, 2)
    for b in bad_batches:
        data[8 * b] = float("nan")  # one NaN in batch b poisons its loss and every gradient
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    model = DDPM(network=MLP(data_dim=2, hidden=16, depth=1), process=DiscreteVP(num_timesteps=20), sample_shape=(2,))
    guard = NonFiniteGuard(max_consecutive=max_consecutive)
    seen = []

    class Watch(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            opt = trainer.optimizers[0]
            steps = [float(s["step"]) for s in opt.state.values()] if opt.state else [0.0]
            seen.append((batch_idx, [p.detach().clone() for p in pl_module.parameters()], max(steps)))

    trainer = pl.Trainer(max_steps=max_steps, callbacks=[guard, Watch()], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, loader)
    return guard, seen


def test_a_non_finite_step_is_skipped_with_the_optimizer_untouched(tmp_path):
    guard, seen = _guarded_fit(tmp_path, bad_batches={2, 5}, max_steps=8)
    assert guard.skipped == 2 and guard.consecutive == 0
    for i in (2, 5):  # a skipped step moves no parameter and no Adam step count
        (_, before, step_before), (_, after, step_after) = seen[i - 1], seen[i]
        assert all(torch.equal(x, y) for x, y in zip(before, after)) and step_after == step_before
    assert all(torch.isfinite(p).all() for p in seen[-1][1])
    assert seen[-1][2] == 6.0  # 8 steps, 2 skipped


def test_consecutive_non_finite_steps_stop_the_run(tmp_path):
    with pytest.raises(NonFiniteStepsError, match="3 training steps in a row"):
        _guarded_fit(tmp_path, bad_batches={1, 2, 3}, max_steps=8, max_consecutive=3)


# --- checkpoints checked before use ----------------------------------------------------------------------------
from lit_score.cli import main  # noqa: E402


def error_line(argv: list, capsys, code: int = 1) -> str:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    assert info.value.code == code
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("lit-score: error:")]
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err[-2000:]
    return lines[0]


def short_fit(tmp: Path, config: str, name: str, *extra) -> Path:
    main(["fit", "--config", str(ROOT / config), "--trainer.logger.init_args.save_dir", str(tmp),
          "--trainer.logger.init_args.name", name, "--trainer.max_steps", "3", "--trainer.limit_val_batches", "1",
          "--trainer.enable_progress_bar", "false", "--data.init_args.num_samples", "500",
          "--trainer.callbacks", json.dumps([checkpoint_every(3)]), *map(str, extra)])
    return tmp / name / "version_0" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def tiny_ddpm(tmp_path_factory) -> Path:
    return short_fit(tmp_path_factory.mktemp("tiny"), "configs/ddpm/toy.yaml", "ddpm",
                     "--model.init_args.process.init_args.num_timesteps", 50)


def test_a_checkpoint_naming_another_module_is_refused_before_it_is_imported(tmp_path, capsys, monkeypatch):
    sys.modules.pop("this", None)  # the standard library's `this` prints a poem when imported
    top = tmp_path / "top.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"_class_path": "this.Model"}}, top)
    nested = tmp_path / "nested.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"_class_path": "lit_score.models.DDPM", "process": {
        "class_path": "this.Process", "init_args": {}}}}, nested)
    as_string = tmp_path / "string.ckpt"  # a callable argument given as a dotted string (jsonargparse imports it)
    torch.save({"state_dict": {}, "hyper_parameters": {"_class_path": "lit_score.models.DDPM",
                                                       "optimizer": "this.Nope"}}, as_string)
    for ckpt, command in ((top, "sample"), (nested, "sample"), (nested, "evaluate"), (as_string, "sample")):
        line = error_line([command, "--ckpt_path", ckpt], capsys)
        assert "this." in line and "outside the allowed packages" in line and "LIT_SCORE_ALLOWED_PACKAGES" in line
        assert "this" not in sys.modules
    monkeypatch.setenv("LIT_SCORE_ALLOWED_PACKAGES", "this")  # allowed: now it is imported, and found wanting
    assert "is not a class" in error_line(["sample", "--ckpt_path", top], capsys)


def test_corrupt_checkpoints_are_one_line(tmp_path, capsys, tiny_ddpm):
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(tiny_ddpm.read_bytes()[: tiny_ddpm.stat().st_size // 2])
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(os.urandom(4096))
    pickled = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": {}, "payload": __import__("argparse").Namespace(a=1)}, pickled)
    for ckpt, reason in ((truncated, "truncated or not a checkpoint"), (garbage, "truncated or not a checkpoint"),
                         (pickled, "pickled objects")):
        line = error_line(["sample", "--ckpt_path", ckpt], capsys)
        assert f"cannot read checkpoint {ckpt}" in line and reason in line


def test_resuming_with_another_process_or_target_is_refused_naming_each_difference(tmp_path, capsys, tiny_ddpm):
    ve = short_fit(tmp_path, "configs/sde/ve_toy.yaml", "ve")
    line = error_line(["fit", "--config", ROOT / "configs/sde/vp_toy.yaml", "--ckpt_path", ve,
                       "--trainer.logger.init_args.save_dir", tmp_path], capsys)
    assert "process.class_path: 'lit_score.processes.VE' → 'lit_score.processes.VP'" in line
    line = error_line(["fit", "--config", ROOT / "configs/ddpm/toy.yaml", "--ckpt_path", tiny_ddpm,
                       "--model.init_args.process.init_args.num_timesteps", 50, "--model.init_args.target", "x0",
                       "--trainer.logger.init_args.save_dir", tmp_path], capsys)
    assert "target: None → 'x0'" in line
    assert not (tmp_path / "ddpm_toy").exists()  # nothing was started


def test_resume_applies_a_changed_sampler(tmp_path, tiny_ddpm):
    run = tmp_path / "copy"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = run / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(tiny_ddpm.read_bytes())
    main(["fit", "--config", str(ROOT / "configs/ddpm/toy.yaml"), "--ckpt_path", str(ckpt),
          "--trainer.max_steps", "5", "--model.init_args.process.init_args.num_timesteps", "50",
          "--trainer.logger.init_args.save_dir", str(tmp_path),
          "--trainer.callbacks", json.dumps([checkpoint_every(100)]), "--trainer.enable_progress_bar", "false",
          "--data.init_args.num_samples", "500", "--trainer.limit_val_batches", "1",
          "--model.init_args.sampler", '{"class_path": "lit_score.samplers.DDIM", "init_args": {"num_steps": 7}}'])
    resumed = torch.load(tmp_path / "ddpm_toy" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 5
    assert resumed["hyper_parameters"]["sampler"]["init_args"]["num_steps"] == 7
