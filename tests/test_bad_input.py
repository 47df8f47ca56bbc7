"""Bad input, table-driven: each ends in one `lit-score: error:` line naming the problem and the fix, a non-zero
exit, no traceback, nothing existing changed and nothing left behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from lit_score.cli import main

ROOT = Path(__file__).resolve().parents[1]
TOY = str(ROOT / "configs/ddpm/toy.yaml")
SHORT = ["--trainer.max_steps", "2", "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
         "--data.init_args.num_samples", "300", "--model.init_args.process.init_args.num_timesteps", "20"]
SAVE_LAST = json.dumps([{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                          "init_args": {"save_last": True}}])


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A folder with what bad inputs can be made of: a real DDPM and EBM run, broken and unsafe files."""
    w = tmp_path_factory.mktemp("bad")
    main(["fit", "--config", TOY, "--trainer.logger.init_args.save_dir", str(w / "runs"), *SHORT,
          "--trainer.callbacks", SAVE_LAST])
    main(["fit", "--config", str(ROOT / "configs/ebm/toy.yaml"), "--trainer.logger.init_args.save_dir", str(w / "runs"),
          "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
          "--data.init_args.num_samples", "300", "--model.init_args.sampler.init_args.num_steps", "2",
          "--model.init_args.buffer_size", "300", "--trainer.callbacks", SAVE_LAST])
    ckpt = w / "runs/ddpm_toy/version_0/checkpoints/last.ckpt"
    (w / "broken.yaml").write_text("trainer:\n  max_steps: [1\n")
    (w / "truncated.ckpt").write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    (w / "garbage.ckpt").write_bytes(os.urandom(2048))
    torch.save({"state_dict": {}, "payload": __import__("argparse").Namespace(a=1)}, w / "pickled.ckpt")
    torch.save({"state_dict": {}, "hyper_parameters": {"_class_path": "this.Model"}}, w / "unsafe.ckpt")
    torch.save({"state_dict": {}, "hyper_parameters": {"_class_path": "lit_score.models.DDPM",
                                                       "optimizer": "this.Nope"}}, w / "unsafe_string.ckpt")
    torch.save({"state_dict": {"w": torch.ones(2)}}, w / "foreign.ckpt")
    diverged = torch.load(ckpt, weights_only=True)
    name = next(k for k, v in diverged["state_dict"].items() if v.is_floating_point() and "weight" in k)
    diverged["state_dict"][name] = torch.full_like(diverged["state_dict"][name], float("nan"))
    torch.save(diverged, w / "diverged.ckpt")
    (w / "a_file").write_text("not a folder")
    (w / "taken.png").write_bytes(b"")
    return w


def cases(w: Path) -> list[tuple[str, list, str, int]]:
    """(name, argv, what the one line must say, exit code)."""
    ddpm = w / "runs/ddpm_toy/version_0/checkpoints/last.ckpt"
    ebm = w / "runs/ebm_toy/version_0/checkpoints/last.ckpt"
    logs = ["--trainer.logger.init_args.save_dir", str(w / "new_runs")]
    fit = ["fit", "--config", TOY, *logs, *SHORT]
    sample = ["sample", "--ckpt_path"]
    return [
        ("unknown subcommand", ["fitt"], "unknown subcommand 'fitt': did you mean fit? choose from fit, validate,"
                                         " test, predict, sample, evaluate, compare, encode, sweep, pairs, grid"
                                         " (see `lit-score --help`)", 2),
        ("YAML syntax error", ["fit", "--config", w / "broken.yaml"], "broken.yaml, line 3, column 1", 1),
        ("missing config file", ["fit", "--config", w / "nothere.yaml"], "nothere.yaml does not exist", 1),
        ("unknown trainer key", [*fit, "--trainer.max_stepz", "3"], "did you mean --trainer.max_steps", 2),
        ("unknown model key", [*fit, "--model.init_args.learning_rate", "1"], "learning_rate", 2),
        ("wrong type", [*fit, "--trainer.max_steps", "many"], "max_steps", 2),
        ("beta outside (0, 1)", [*fit, "--model.init_args.process.init_args.beta_end", "1.5"],
         "0 < beta_start <= beta_end < 1", 1),
        ("VP beta range", ["fit", "--config", ROOT / "configs/sde/vp_toy.yaml", *logs, *SHORT[:6],
                           "--model.init_args.process.init_args.beta_min", "-1"], "0 <= beta_min < beta_max", 1),
        ("negative batch size", [*fit, "--data.init_args.batch_size", "-1"], "batch_size >= 1", 1),
        ("probability above 1", ["fit", "--config", ROOT / "configs/ebm/toy.yaml", *logs, *SHORT[:6],
                                 "--model.init_args.reuse_prob", "1.5"],
         "reuse_prob must be a finite number >= 0 and <= 1, got 1.5", 1),
        ("negative step size", [*sample, ebm, "--sampler.class_path", "lit_score.samplers.Langevin",
                                "--sampler.init_args.step_size", "-1"], "step_size must be a finite number > 0", 1),
        ("NaN step size", [*sample, ebm, "--sampler.class_path", "lit_score.samplers.Langevin",
                           "--sampler.init_args.step_size", "nan"],
         "--sampler.init_args.step_size nan: every number must be finite", 1),
        ("sampler with zero steps", [*sample, ddpm, "--sampler.class_path", "lit_score.samplers.DDIM",
                                     "--sampler.init_args.num_steps", "0"], "num_steps must be an integer >= 1", 1),
        ("negative workers", [*fit, "--data.init_args.num_workers", "-2"], "num_workers >= 0", 1),
        ("zero timesteps", [*fit, "--model.init_args.process.init_args.num_timesteps", "0"], "num_timesteps", 1),
        ("data of the wrong shape", [*fit, "--model.init_args.network.init_args.data_dim", "3"],
         "sample shape (2,)", 1),
        ("missing image root", ["fit", "--config", ROOT / "configs/ddpm/cifar10.yaml", *logs,
                                "--data.init_args.root", w / "nowhere"], "nowhere", 1),
        ("checkpoint of another family",
         ["fit", "--config", ROOT / "configs/ncsn/toy.yaml", *logs, "--ckpt_path", ddpm],
         "DDPM model but the config builds a NCSN", 1),
        ("missing checkpoint to resume", [*fit, "--ckpt_path", w / "none.ckpt"], "does not exist", 1),
        ("resume last with no run", [*fit, "--ckpt_path", "last"], "no last.ckpt under", 1),
        ("resume with another target", [*fit, "--ckpt_path", ddpm, "--model.init_args.target", "x0"],
         "target: None → 'x0'", 1),
        ("resume with another network",
         [*fit, "--ckpt_path", ddpm, "--model.init_args.network.init_args.hidden", "64"],
         "network.init_args.hidden: 128 → 64", 1),
        ("fit into an existing run folder",
         ["fit", "--config", TOY, "--trainer.logger.init_args.save_dir", w / "runs",
          "--trainer.logger.init_args.version", "0", *SHORT], "already holds a run", 1),
        ("truncated checkpoint", [*sample, w / "truncated.ckpt"], "truncated or not a checkpoint", 1),
        ("random bytes as a checkpoint", [*sample, w / "garbage.ckpt"], "truncated or not a checkpoint", 1),
        ("pickle payload", [*sample, w / "pickled.ckpt"], "pickled objects", 1),
        ("checkpoint naming another module", [*sample, w / "unsafe.ckpt"], "outside the allowed packages", 1),
        ("callable naming another module", [*sample, w / "unsafe_string.ckpt"], "outside the allowed packages", 1),
        ("checkpoint of something else", [*sample, w / "foreign.ckpt"], "records no model class", 1),
        ("diverged checkpoint", [*sample, w / "diverged.ckpt"], "non-finite weights", 1),
        ("sample a missing checkpoint", [*sample, w / "none.ckpt"], "does not exist", 1),
        ("sample without a checkpoint", ["sample"], "ckpt_path", 2),
        ("zero samples", [*sample, ddpm, "--num_samples", "0"], "need --num_samples >= 1 and --batch_size >= 1", 1),
        ("zero batch size", [*sample, ddpm, "--batch_size", "0"], "need --num_samples >= 1 and --batch_size >= 1", 1),
        ("output exists", [*sample, ddpm, "--output", w / "taken"], "exists: pass --output elsewhere", 1),
        ("output under a file", [*sample, ddpm, "--output", w / "a_file" / "out"], "cannot write to", 1),
        ("unknown sampler", [*sample, ddpm, "--sampler.class_path", "lit_score.samplers.NoSuchSampler"],
         "NoSuchSampler", 2),
        ("sampler that cannot serve the model", [*sample, ebm, "--sampler.class_path", "lit_score.samplers.DDIM"],
         "DDIM cannot sample a EBM: it needs a noise process", 1),
        ("evaluate a missing checkpoint", ["evaluate", "--ckpt_path", w / "none.ckpt"], "does not exist", 1),
        ("evaluate an unsafe checkpoint", ["evaluate", "--ckpt_path", w / "unsafe.ckpt"], "outside the allowed", 1),
        ("evaluate an unknown metric", ["evaluate", "--ckpt_path", ddpm, "--metrics", "fidd"], "fidd", 1),
        ("evaluate with a sampler that cannot serve", ["evaluate", "--ckpt_path", ebm, "--num_samples", "10",
                                                       "--sampler.class_path", "lit_score.samplers.DDIM"],
         "DDIM cannot sample a EBM", 1),
        ("evaluate missing samples", ["evaluate", "--samples", w / "none.npz", "--data", "lit_score.data.Digits"],
         "none.npz", 1),
        ("compare with a missing config", ["compare", "--config", w / "nothere.yaml"],
         "nothere.yaml does not exist", 1),
        ("compare with a broken config", ["compare", "--config", w / "broken.yaml"], "broken.yaml, line 3", 1),
    ]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_the_table_has_forty_bad_inputs(world):
    assert len(cases(world)) >= 40


@pytest.mark.parametrize("index", range(len(cases(Path(".")))), ids=lambda i: cases(Path("."))[i][0])
def test_bad_input_is_one_line_and_changes_nothing(world, index, capsys):
    name, argv, says, code = cases(world)[index]
    before = snapshot(world)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("lit-score: error:")]
    assert info.value.code == code, (name, captured.err[-1500:])
    assert len(lines) == 1 and "Traceback" not in captured.err, (name, captured.err[-1500:])
    assert says in lines[0], (name, lines[0])
    assert snapshot(world) == before, name  # nothing overwritten, no debris (no empty run folder either)


@pytest.mark.parametrize("command", ["fit", "validate", "test", "predict", "sample", "evaluate", "compare"])
def test_every_subcommand_has_its_own_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert info.value.code in (0, None) and "usage:" in out and "--help" in out
    if command in ("sample", "evaluate", "compare"):
        assert "--ckpt" in out or "--config" in out


def test_top_level_help_lists_every_subcommand(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    for command in ("fit", "validate", "test", "predict", "sample", "evaluate", "compare"):
        assert f"\n  {command} " in out


def test_online_wandb_without_an_api_key_is_one_line_before_any_run_folder(tmp_path, monkeypatch, capsys):
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc; pytest's stdin is not a terminal
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", TOY, "--config", str(ROOT / "configs/logger/wandb.yaml"),
              "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), *SHORT])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("lit-score: error:")]
    assert info.value.code == 1 and len(lines) == 1 and "Traceback" not in err
    assert "no API key" in lines[0] and "wandb login" in lines[0] and "WANDB_MODE=offline" in lines[0]
    assert not (tmp_path / "runs").exists()
