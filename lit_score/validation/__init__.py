"""The one validation layer of the commands: every option, input file and output place is checked here, before any
checkpoint is sampled or any data is generated, with one line that names the problem and the fix.

| module | what it checks |
|---|---|
| :mod:`~lit_score.validation.options` | every option of every command against its :class:`Rule`; NaN / inf anywhere |
| :mod:`~lit_score.validation.files` | arrays read from ``.npz`` / ``.npy`` files, input paths, output places |
| :mod:`~lit_score.validation.runtime` | the device asked for, and a sampler's steps against a discrete model's |
| :mod:`~lit_score.validation.errors` | :class:`InvalidInput` and the one line of a failed file operation |

- **Options**: every option of a command has a rule — a count, a finite number in a range, a list of integers, a
  choice, a file to read, a place to write — or says which check handles it (a sampler's and a data module's own
  constructors, the checkpoint loader). A test asserts that no option of any parser is without one, so a new option
  cannot escape validation.
- **Numbers on the command line and in configs** (:func:`check_finite_argv`, :func:`check_config_data`): NaN and
  infinities are refused wherever they appear, for every subcommand, before jsonargparse turns them into a confusing
  type error (``lr nan`` → "Expected a dot import path string").
- **Arrays read from files** (:func:`read_array`, :func:`check_array`, :func:`check_mask`): an ``.npz`` or ``.npy``
  of real, finite numbers with enough rows (and a mask of 0 and 1 only).
- **Outputs** (:func:`check_output_stem`, :func:`check_output_folder`, :func:`writable_folder`): not a folder where a
  file stem is meant, nothing overwritten unless asked, the folder writable — checked before the work, not after.
- **Devices** (:func:`resolve_device`): ``auto``, ``cpu``, ``gpu`` / ``cuda`` / ``cuda:N`` (refused where there is
  no CUDA device), ``mps``.
"""

from lit_score.validation.errors import InvalidInput, describe_os_error
from lit_score.validation.files import (
    check_array,
    check_input_path,
    check_mask,
    check_output_folder,
    check_output_stem,
    read_array,
    writable_folder,
)
from lit_score.validation.options import (
    COMPARE_RULES,
    ENCODE_RULES,
    EVALUATE_RULES,
    SAMPLE_RULES,
    SWEEP_RULES,
    Rule,
    check_config_data,
    check_finite_argv,
    check_options,
    parse_numbers,
    parser_options,
)
from lit_score.validation.runtime import check_sampler_steps, resolve_device

__all__ = ["COMPARE_RULES", "ENCODE_RULES", "EVALUATE_RULES", "InvalidInput", "Rule", "SAMPLE_RULES", "SWEEP_RULES",
           "check_array", "check_config_data", "check_finite_argv", "check_input_path", "check_mask", "check_options",
           "check_output_folder", "check_output_stem", "check_sampler_steps", "describe_os_error", "parse_numbers",
           "parser_options", "read_array", "resolve_device", "writable_folder"]
