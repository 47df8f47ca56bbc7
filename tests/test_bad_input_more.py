"""Issue 22, sections 2 and 3: the held-out bad inputs' examples, a bounded fuzz of every option of every command,
disk-full faults on a real small file system and stop signals.

Each bad input ends in one `lit-score: error:` line naming the problem and the fix, a non-zero exit, no traceback,
nothing existing changed and nothing left behind (the checks of lit_score.validation, before any long work; the
writes of lit_score.atomic)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_bad_input import ROOT, SAVE_LAST, SHORT, TOY  # the same short toy runs as the first table

from lit_score.cli import encode_parser, main, sample_parser
from lit_score.cli.compare import compare_parser
from lit_score.cli.evaluate import evaluate_parser
from lit_score.cli.sweep import sweep_parser
from lit_score.validation import (
    COMPARE_RULES,
    ENCODE_RULES,
    EVALUATE_RULES,
    SAMPLE_RULES,
    SWEEP_RULES,
    parser_options,
)


def mount_tmpfs(path: Path, options: str) -> bool:
    """A real small file system at ``path`` (root only); False where it cannot be mounted."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


def unmount(path: Path) -> None:
    subprocess.run(["umount", str(path)], capture_output=True)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A DDPM toy run and the files bad inputs are made of; a read-only mount where one can be made."""
    w = tmp_path_factory.mktemp("bad_more")
    main(["fit", "--config", TOY, "--trainer.logger.init_args.save_dir", str(w / "runs"), *SHORT,
          "--trainer.callbacks", SAVE_LAST])
    np.save(w / "plain.npy", np.random.default_rng(0).normal(size=(20, 2)).astype(np.float32))
    np.savez(w / "nan.npz", samples=np.full((10, 2), np.nan, np.float32))
    np.savez(w / "inf.npz", samples=np.full((10, 2), np.inf, np.float32))
    np.savez(w / "complex.npz", samples=np.ones((10, 2), np.complex64))
    np.savez(w / "empty.npz")
    np.savez(w / "no_rows.npz", samples=np.zeros((0, 2), np.float32))
    np.savez(w / "one.npz", samples=np.zeros((1, 2), np.float32))
    np.savez(w / "good.npz", samples=np.random.default_rng(0).normal(size=(20, 2)).astype(np.float32))
    np.savez(w / "mask_half.npz", samples=np.full((1, 2), 0.5, np.float32))
    np.savez(w / "mask_nan.npz", samples=np.array([[1.0, np.nan]], np.float32))
    (w / "list.yaml").write_text("- 1\n- 2\n- 3\n")
    (w / "empty.yaml").write_text("")
    (w / "a_file").write_text("not a folder")
    (w / "folder").mkdir()
    (w / "sweep_out").mkdir()
    (w / "sweep_out" / "sweep.json").write_text("{broken")
    sweep = {"name": "tiny", "method": "grid", "metric": {"name": "val/loss", "goal": "minimize"},
             "parameters": {"model.init_args.optimizer.init_args.lr": {"values": [0.001]}},
             "command": ["lit-score", "fit", "--config", TOY, "${args}"]}
    (w / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    compare = {"runs": [{"name": "ddpm", "config": TOY}],
               "samplers": [{"sampler": {"class_path": "lit_score.samplers.DDIM"}, "num_steps": [0]}],
               "output": str(w / "compare_out")}
    (w / "compare.yaml").write_text(yaml.safe_dump(compare))
    readonly = w / "readonly"
    if not mount_tmpfs(readonly, "size=1m,ro"):
        readonly.chmod(0o500)  # a non-root user cannot write there either
    yield w
    unmount(readonly)


def ddpm(w: Path) -> Path:
    return w / "runs/ddpm_toy/version_0/checkpoints/last.ckpt"


def cases(w: Path) -> list[tuple[str, list, str, int]]:
    """(name, argv, what the one line must say, exit code): every example of issue 22 section 2."""
    c = ddpm(w)
    sample = ["sample", "--ckpt_path", c]
    evaluate = ["evaluate", "--ckpt_path", c, "--num_samples", "10", "--metrics", "distances"]
    given = ["evaluate", "--data", "lit_score.data.Toy2D", "--output", w / "eval_out", "--samples"]
    fit = ["fit", "--config", TOY, "--trainer.logger.init_args.save_dir", w / "new_runs", *SHORT]
    ddim = ["--sampler.class_path", "lit_score.samplers.DDIM"]
    return [
        # tracebacks before
        ("encode NaN input", ["encode", "--ckpt_path", c, "--input", w / "nan.npz"], "NaN or infinite values", 1),
        ("sample on a gpu that is not there", [*sample, "--accelerator", "gpu"], "no CUDA device is available here:"
                                                                                " pass --accelerator cpu", 1),
        ("evaluate an npz without arrays", [*given, w / "empty.npz"], "holds no array: save one with numpy.savez", 1),
        ("evaluate an npz of no samples", [*given, w / "no_rows.npz"], "holds 0 sample(s)", 1),
        ("bpd of zero held-out samples", [*evaluate, "--metrics", "bpd", "--likelihood_samples", "0"],
         "--likelihood_samples must be an integer >= 1, got 0", 1),
        ("one half-sample for an error bar", [*evaluate, "--half_samples", "1"],
         "--half_samples must be 0 (no error bars) or an integer >= 2, got 1", 1),
        # silently accepted before
        ("a mask of 0.5", [*sample, "--inpaint", w / "good.npz", "--mask", w / "mask_half.npz"],
         "holds 0.5 where only 0 (unknown) and 1 (known) are allowed", 1),
        ("a mask with NaN", [*sample, "--inpaint", w / "good.npz", "--mask", w / "mask_nan.npz"],
         "NaN or infinite values", 1),
        ("output naming a folder", [*sample, "--output", f"{w / 'folder'}/"], "names a folder, not a file stem", 1),
        ("output ending in a slash", [*sample, "--output", f"{w / 'not_yet'}/"], "names a folder, not a file stem", 1),
        ("evaluate NaN samples", [*given, w / "nan.npz"], "10 of 10 samples with NaN or infinite values", 1),
        ("evaluate infinite samples", [*given, w / "inf.npz"], "NaN or infinite values", 1),
        ("evaluate complex samples", [*given, w / "complex.npz"], "complex64 values, not real numbers", 1),
        ("evaluate batch size 0", [*evaluate, "--batch_size", "0"], "--batch_size must be an integer >= 1", 1),
        ("evaluate one sample", [*evaluate, "--num_samples", "1"], "--num_samples must be an integer >= 2, got 1", 1),
        ("evaluate one given sample", [*given, w / "one.npz"], "holds 1 sample(s) (shape (1, 2)): give at least 2", 1),
        ("SDEdit from NaN guides", [*sample, "--init", w / "nan.npz"], "NaN or infinite values", 1),
        ("more DDIM steps than the model has", [*sample, *ddim, "--sampler.init_args.num_steps", "100000"],
         "trained on 20 discrete timesteps, so it would run at most 20: pass --sampler.init_args.num_steps", 1),
        # unclear before
        ("a config that is a YAML list", ["fit", "--config", w / "list.yaml"], "holds a list, not a mapping", 1),
        ("an empty config", ["fit", "--config", w / "empty.yaml"], "is empty: put options in it", 1),
        ("lr nan", [*fit, "--model.init_args.optimizer.init_args.lr", "nan"],
         "--model.init_args.optimizer.init_args.lr nan: every number must be finite", 1),
        ("gradient_clip_val nan", [*fit, "--trainer.gradient_clip_val", "nan"],
         "--trainer.gradient_clip_val nan: every number must be finite", 1),
        ("gradient_clip_val=inf", [*fit, "--trainer.gradient_clip_val=inf"], "every number must be finite", 1),
        ("seeds that are not numbers", [*evaluate, "--seeds", "a,b"],
         "--seeds must be a comma list of integers such as 0,1,2, got 'a,b'", 1),
        ("an unwritable save_dir", ["fit", "--config", TOY, "--trainer.logger.init_args.save_dir",
                                    w / "readonly" / "runs", *SHORT], "readonly/runs", 1),
        ("a callback argument out of range",
         [*fit, "--trainer.callbacks", json.dumps([{"class_path": "lit_score.callbacks.EMA",
                                                     "init_args": {"decay": 2}}])],
         "decay must be a finite number >= 0 and <= 1, got 2.0", 1),
        # debris before
        ("a sweep that fails", ["sweep", w / "sweep.yaml", "--output", w / "sweep_out"], "not readable JSON", 1),
        ("compare with a 0-step sampler", ["compare", "--config", w / "compare.yaml"],
         "samplers entry DDIM-0: num_steps must be an integer >= 1", 1),
        ("evaluate into an existing file", [*evaluate, "--output", w / "a_file"], "is a file, not a folder", 1),
        ("evaluate into a read-only place", [*evaluate, "--output", w / "readonly" / "eval"], "cannot write to", 1),
        ("sample into a read-only place", [*sample, "--output", w / "readonly" / "s"], "cannot write to", 1),
    ]


def snapshot(root: Path, folder_times: bool = True) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns if folder_times or p.is_file() else 0)
            for p in root.rglob("*") if "readonly" not in p.parts}


def run_bad(argv: list, capsys) -> tuple[int, list[str], str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    err = capsys.readouterr().err
    return info.value.code, [line for line in err.splitlines() if line.startswith("lit-score: error:")], err


def test_every_example_of_the_issue_is_in_the_table(world):
    assert len(cases(world)) >= 30


@pytest.mark.parametrize("index", range(len(cases(Path(".")))), ids=lambda i: cases(Path("."))[i][0])
def test_held_out_bad_input_is_one_line_and_changes_nothing(world, index, capsys):
    name, argv, says, code = cases(world)[index]
    if name == "sample on a gpu that is not there" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    if "read-only" in name or "unwritable" in name:
        if os.geteuid() == 0 and not os.path.ismount(world / "readonly"):
            pytest.skip("root writes anywhere and no read-only tmpfs could be mounted")
    locks = name == "a sweep that fails"  # its lock file comes and goes: the folder's time changes, nothing else
    before = snapshot(world, folder_times=not locks)
    exit_code, lines, err = run_bad(argv, capsys)
    assert exit_code == code, (name, err[-1500:])
    assert len(lines) == 1 and "Traceback" not in err, (name, err[-1500:])
    assert says in lines[0], (name, lines[0])
    assert snapshot(world, folder_times=not locks) == before, name  # nothing overwritten, no debris


def test_a_plain_npy_of_samples_is_evaluated(world, capsys):
    """Was a TypeError: an .npy holds the samples array itself."""
    out = world / "npy_eval"
    main(["evaluate", "--samples", str(world / "plain.npy"), "--data", "lit_score.data.Toy2D", "--output", str(out),
          "--metrics", "distances", "--distance_samples", "20"])
    assert (out / "metrics.json").is_file()


# --- every option of every command has a rule -------------------------------------------------------------------
COMMANDS = {"sample": (sample_parser, SAMPLE_RULES), "encode": (encode_parser, ENCODE_RULES),
            "evaluate": (evaluate_parser, EVALUATE_RULES), "compare": (compare_parser, COMPARE_RULES),
            "sweep": (sweep_parser, SWEEP_RULES)}


@pytest.mark.parametrize("parser, rules", list(COMMANDS.values()), ids=list(COMMANDS))
def test_every_option_has_a_validation_rule(parser, rules):
    assert set(parser_options(parser())) == set(rules)


# --- fuzz ---------------------------------------------------------------------------------------------------------
def bad_values(rule, w: Path) -> list[str]:
    """Values the rule must refuse."""
    text = ["x", "nan", "inf", "-inf"]
    if rule.kind == "count":
        return [*text, "1.5", str(int(rule.ge) - 1), str(int(rule.ge) - 7)]
    if rule.kind == "number":
        out = [*text, "1e400"]
        out += [str(rule.ge - 1)] if rule.ge is not None else []
        out += [str(rule.le + 1)] if rule.le is not None else []
        return out
    if rule.kind in ("ints", "numbers"):
        return ["a,b", ",", "1,nan", "x", *(["1.5"] if rule.kind == "ints" else ["-1"])]
    if rule.kind == "choice":
        return ["bogus", "nan", ""]
    if rule.kind == "file":
        return [str(w / "missing.npz"), str(w / "missing" / "deeper.ckpt"), ""]
    if rule.kind == "folder":
        return [str(w / "a_file"), str(w / "a_file" / "below")]
    return []


def fuzz_space(w: Path) -> list[tuple[str, str, str]]:
    """(command, option, bad value) for every option with a rule of every command, and the trainer's numbers."""
    space = []
    for command, (_, rules) in COMMANDS.items():
        for option, rule in rules.items():
            space += [(command, option, v) for v in bad_values(rule, w)]
        if rules["output"].kind == "output":
            space.append((command, "output", str(w / "a_file" / "below")))  # under a file
    space += [("sample", "sampler.init_args.num_steps", v) for v in ("0", "-3", "x", "nan")]
    space += [("fit", key, v) for key in ("trainer.max_steps", "trainer.gradient_clip_val",
                                          "model.init_args.optimizer.init_args.lr", "data.init_args.batch_size")
              for v in ("nan", "inf", "-inf")]
    return space


def test_fuzz_every_option_of_every_command(world, capsys):
    """A bounded, derandomized draw over wrong types, NaN / inf, zero / negative counts and bad paths for every
    option: one error line, a non-zero exit, no new files."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    space = fuzz_space(world)
    c = ddpm(world)
    base = {"sample": ["sample", "--ckpt_path", str(c)], "encode": ["encode", "--ckpt_path", str(c)],
            "evaluate": ["evaluate", "--ckpt_path", str(c), "--num_samples", "10", "--metrics", "distances"],
            "compare": ["compare", "--ckpts", str(c), "--output", str(world / "fuzz_compare")],
            "sweep": ["sweep", str(world / "sweep.yaml"), "--output", str(world / "fuzz_sweep")],
            "fit": ["fit", "--config", TOY, "--trainer.logger.init_args.save_dir", str(world / "fuzz_runs")]}
    seen: list[tuple[str, str, str]] = []

    @settings(max_examples=250, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(space))
    def check(case):
        command, option, value = case
        seen.append(case)
        argv = [a for a in base[command] if not (option == "ckpt_path" and a in ("--ckpt_path", str(c)))]
        if option == "sweep_file":  # the positional argument
            argv, given = ["sweep", value, "--output", str(world / "fuzz_sweep")], []
        else:
            given = [f"--{option}", value]
        before = snapshot(world)
        code, lines, err = run_bad([*argv, *given], capsys)
        assert code not in (0, None), (case, err[-800:])
        assert len(lines) == 1 and "Traceback" not in err, (case, err[-1500:])
        assert snapshot(world) == before, case

    check()
    assert len(seen) >= 200 and len(set(seen)) >= 150, (len(seen), len(set(seen)))
    print(f"fuzz: {len(seen)} examples, {len(set(seen))} distinct bad inputs of {len(space)}")


# --- faults: a full disk (a real 4 MiB tmpfs) and stop signals ----------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    if not mount_tmpfs(disk, "size=4m"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield disk
    unmount(disk)


def fill(disk: Path, leave: int = 0) -> None:
    """Fill the file system but ``leave`` bytes."""
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with open(disk / "filler", "wb") as f:
        try:
            f.write(b"\0" * max(free - leave, 0))
        except OSError:
            pass


def test_sample_on_a_full_disk_is_one_line_and_leaves_no_truncated_npz(world, small_disk, capsys):
    fill(small_disk, leave=8192)
    code, lines, err = run_bad(["sample", "--ckpt_path", ddpm(world), "--num_samples", "3000",
                                "--output", small_disk / "out" / "s"], capsys)
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err[-1500:]
    assert "no space left on the disk holding" in lines[0] and "free space there or write elsewhere" in lines[0]
    assert sorted(p.name for p in small_disk.rglob("*")) == ["filler"]  # no .npz, no PNG, no temporary, no folder
    (small_disk / "filler").unlink()
    main(["sample", "--ckpt_path", str(ddpm(world)), "--num_samples", "3000", "--output", str(small_disk / "s")])
    assert np.load(small_disk / "s.npz")["samples"].shape == (3000, 2)  # the rerun is not blocked


def test_fit_on_a_full_disk_keeps_the_old_checkpoint_and_a_fresh_fit_leaves_no_run_folder(small_disk, capsys):
    runs = small_disk / "runs"
    fresh = ["fit", "--config", TOY, "--trainer.logger.init_args.save_dir", runs, *SHORT,
             "--trainer.callbacks", SAVE_LAST]
    fill(small_disk, leave=2048)
    code, lines, err = run_bad(fresh, capsys)
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err[-1500:]
    assert "no space left" in lines[0], lines[0]
    assert not runs.exists() or not any(runs.rglob("*")), sorted(runs.rglob("*"))
    (small_disk / "filler").unlink()
    main([str(a) for a in fresh])
    last = runs / "ddpm_toy/version_0/checkpoints/last.ckpt"
    old = last.read_bytes()
    fill(small_disk, leave=0)
    resume = ["fit", "--config", TOY, "--trainer.logger.init_args.save_dir", runs, *SHORT[2:],
              "--trainer.max_steps", "4", "--trainer.callbacks", SAVE_LAST, "--ckpt_path", last]
    code, lines, err = run_bad(resume, capsys)
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err[-1500:]
    assert "no space left" in lines[0], lines[0]
    assert last.read_bytes() == old  # the old checkpoint survives
    assert not [p for p in last.parent.iterdir() if p.name.startswith(".") or "tmp" in p.name]


def test_a_fresh_fit_on_a_full_disk_ends_in_one_line_with_no_thread_traceback_at_exit(small_disk, tmp_path):
    """In a process of its own: TensorBoard's writer thread also hits the full disk, as the interpreter exits."""
    fill(small_disk, leave=2048)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg", "WANDB_MODE": "disabled"}
    done = subprocess.run([sys.executable, "-c", "from lit_score.cli import main; main()", "fit", "--config", TOY,
                           "--trainer.logger.init_args.save_dir", str(small_disk / "runs"), *SHORT],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.startswith("lit-score:")]
    assert done.returncode == 1 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "no space left on the disk holding" in lines[0]
    assert sorted(p.name for p in small_disk.rglob("*")) == ["filler"]


@pytest.mark.parametrize("command, sig, code", [("sample", signal.SIGINT, 130), ("evaluate", signal.SIGTERM, 143),
                                                ("encode", signal.SIGTERM, 143)])
def test_a_stop_signal_is_one_line_and_leaves_no_partial_output(world, tmp_path, command, sig, code):
    c = str(ddpm(world))
    out = tmp_path / "out"
    argv = {"sample": ["sample", "--ckpt_path", c, "--num_samples", "400000", "--batch_size", "2000",
                       "--output", str(out / "s")],
            "evaluate": ["evaluate", "--ckpt_path", c, "--num_samples", "400000", "--batch_size", "2000",
                         "--metrics", "distances", "--output", str(out)],
            "encode": ["encode", "--ckpt_path", c, "--input", str(tmp_path / "many.npz"), "--interpolate", "0",
                       "--output", str(out / "e")]}[command]
    np.savez(tmp_path / "many.npz", samples=np.random.default_rng(0).normal(size=(400000, 2)).astype(np.float32))
    log = tmp_path / "stderr"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg", "WANDB_MODE": "disabled"}
    with open(log, "w") as handle:
        proc = subprocess.Popen([sys.executable, "-c", "from lit_score.cli import main; main()", *argv],
                                stderr=handle, stdout=subprocess.DEVNULL, env=env, cwd=tmp_path)
    started = time.monotonic()
    marker = {"sample": "batches", "evaluate": "GPU available", "encode": "%|"}[command]  # the long work begins
    while marker not in log.read_text(errors="replace") and time.monotonic() - started < 120:
        assert proc.poll() is None, log.read_text()[-2000:]
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == code, log.read_text()[-2000:]
    err = log.read_text(errors="replace").replace("\r", "\n")
    lines = [line for line in err.splitlines() if line.startswith("lit-score:")]
    assert len(lines) == 1 and "interrupted by SIG" in lines[0] and "Traceback" not in err, err[-2000:]
    assert not out.exists() or not any(out.rglob("*"))  # no partial outputs, no temporaries
