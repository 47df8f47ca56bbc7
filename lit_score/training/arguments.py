"""Command lines checked before LightningCLI or jsonargparse sees them, and their errors in one line.

========================  =========================================================================================
name                      what it does
========================  =========================================================================================
:func:`check_config_files`  every ``--config FILE`` exists and is valid YAML (file, line and reason otherwise)
:func:`one_line`          one line from a jsonargparse error: the key path and the innermost cause
:func:`did_you_mean`      " — did you mean --x?" for an unrecognized ``--key`` close to a known one
========================  =========================================================================================
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import yaml

from lit_score.validation import InvalidInput, check_config_data

_NOISE = ("Does not validate", "Subtypes:", "Errors:", "Given value", "Expected a <class 'NoneType'>",
          "Problem with given class_path", "Not a valid subclass")


def one_line(err: BaseException) -> str:
    """One line from an error message: the key path and the innermost cause (jsonargparse nests them)."""
    text = str(err)
    keys = re.findall(r'Parser key "([^"]+)"', text)
    causes = []
    for line in text.splitlines():
        line = re.sub(r'^Parser key "[^"]+":', "", line.strip()).strip()
        line = re.sub(r"^-+\s+", "", line).strip()  # a bullet, not an option such as --output
        if line and not line.startswith(_NOISE):
            causes.append(line)
    # a constructor's own range check ("decay must be …", lit_score.checks) is the real reason among a Union's errors
    checked = [c for c in causes if re.search(r"\w must be ", c)]
    cause = checked[0] if checked else causes[-1] if causes else type(err).__name__
    return f"{'.'.join(keys)}: {cause}" if keys else cause


def check_config_files(argv: list[str]) -> None:
    """Every ``--config FILE`` exists and is valid YAML, or one line naming the file, the line and the reason."""
    files = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]
    files += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    for name in files:
        path = Path(name)
        if not path.is_file():
            inline = ":" in name or name.lstrip().startswith(("{", "["))
            if inline and path.suffix not in (".yaml", ".yml", ".json"):
                continue  # an inline config string, which jsonargparse parses itself
            raise InvalidInput(f"config file {name} does not exist: pass the path of a YAML file"
                               " (e.g. configs/ddpm/toy.yaml)")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            reason = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise InvalidInput(f"config file {name}{where}: {reason} — fix the YAML there") from err
        check_config_data(name, data)


def did_you_mean(parser, argv: list[str], message: str) -> str:
    """" — did you mean --x?" for an unrecognized ``--key`` close to one the subcommand's parser knows."""
    match = re.search(r"unrecognized arguments: --([\w.]+)", message)
    if not match:
        return ""
    subparsers = getattr(getattr(parser, "_subcommands_action", None), "_name_parser_map", {})
    sub = subparsers.get(argv[0]) if argv else None
    keys = [a.dest for a in (sub or parser)._actions if a.dest and a.dest != "help"]
    close = difflib.get_close_matches(match.group(1), keys, n=1, cutoff=0.75)
    return f" — did you mean --{close[0]}?" if close else ""
