"""Control: inverse problems, SDEdit and probability-flow encoding, as transforms around unchanged samplers
(DESIGN.md 3c). Samplers keep consuming ``score_fn(x, t)``; these functions choose where they start and stop
(``NoiseProcess.window``) and what happens between their steps."""

from lit_score.control.edit import Edit, load_array
from lit_score.control.encode import decode, encode, interpolate, ode_sampler, slerp
from lit_score.control.inpaint import inpaint, repaint_schedule
from lit_score.control.sdedit import sdedit, sdedit_time

__all__ = ["Edit", "decode", "encode", "inpaint", "interpolate", "load_array", "ode_sampler", "repaint_schedule",
           "sdedit", "sdedit_time", "slerp"]
