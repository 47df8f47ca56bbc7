"""Training from configs: the LightningCLI application behind ``lit-score fit`` / ``validate`` / ``test`` /
``predict``, usable from Python by the commands and by the orchestrators above it (``compare`` trains its runs, a
sweep resolves its runs' configs), so that nothing imports the command layer.

=======================================  ===========================================================================
module                                   what it holds
=======================================  ===========================================================================
:mod:`lit_score.training.lightning_cli`  :class:`LitScoreCLI` and :class:`LitScoreSaveConfig`
:mod:`lit_score.training.resume`         the checks of ``fit --ckpt_path`` and where a resumed run continues
:mod:`lit_score.training.wandb_login`    a W&B login found before a run starts; the W&B run finished after it
:mod:`lit_score.training.arguments`      config files checked, jsonargparse errors in one line, did-you-mean hints
:mod:`lit_score.training.run`            :func:`fit` and :func:`run_lightning`: the subcommands run from Python
=======================================  ===========================================================================
"""

from lit_score.training.arguments import check_config_files, did_you_mean, one_line
from lit_score.training.lightning_cli import LitScoreCLI, LitScoreSaveConfig
from lit_score.training.resume import resume_differences
from lit_score.training.run import fit, run_lightning
from lit_score.training.wandb_login import check_wandb_login, wandb_credentials

__all__ = [
    "LitScoreCLI",
    "LitScoreSaveConfig",
    "check_config_files",
    "check_wandb_login",
    "did_you_mean",
    "fit",
    "one_line",
    "resume_differences",
    "run_lightning",
    "wandb_credentials",
]
