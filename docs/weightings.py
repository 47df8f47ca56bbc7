"""Plot the denoising-loss weightings on one scale (issue 9; table in ``lit_score/losses/weighting.py``).

    python docs/weightings.py [--output docs/figures/weightings.png] [--process vp|edm] \
        [--time_sampling process|lognormal]

Left: w(λ), the weight on ‖ε̂ − ε‖² as a function of the log-SNR λ = log(α/σ), for every weighting that is a function
of λ alone (SNR cap γ = 5, σ_d = 0.5). Right: W(λ) = p(λ)·w(λ), the weight per unit of log-SNR that training sees
with t drawn from the process (or EDM's log-normal σ̃), normalised to integrate to 1; the likelihood (ELBO) weighting
g²/σ² = −2 dλ/dt is included there (under uniform t its W is flat: the ELBO weights every log-SNR equally). p(λ) is a
histogram of 10⁶ drawn times.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from lit_score.losses.denoising import lognormal_sigma_time  # noqa: E402
from lit_score.losses.weighting import LOG_SNR_WEIGHTINGS, eps_weight  # noqa: E402
from lit_score.processes import EDM, VP  # noqa: E402


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("docs/figures/weightings.png"))
    parser.add_argument("--process", choices=["vp", "edm"], default="vp")
    parser.add_argument("--time_sampling", choices=["process", "lognormal"], default="process")
    args = parser.parse_args(argv)
    process = VP() if args.process == "vp" else EDM()
    gen = torch.Generator().manual_seed(0)
    n = 1_000_000
    if args.time_sampling == "lognormal":
        t = lognormal_sigma_time(process, n, -1.2, 1.2, gen).double()
    else:
        t = process.sample_time(n, generator=gen).double()
    lam_t = process.log_snr(t)
    edges = np.linspace(lam_t.min().item(), lam_t.max().item(), 121)
    centres = torch.from_numpy(0.5 * (edges[1:] + edges[:-1]))
    density, _ = np.histogram(lam_t.numpy(), bins=edges, density=True)
    # g²/σ² at each bin: mean over the drawn times in it (it is a function of t, and t of λ)
    g2_over_s2 = (process.g2(t) / process.sigma(t) ** 2).numpy()
    idx = np.clip(np.digitize(lam_t.numpy(), edges) - 1, 0, len(centres) - 1)
    sums = np.bincount(idx, weights=g2_over_s2, minlength=len(centres))
    counts = np.maximum(np.bincount(idx, minlength=len(centres)), 1)
    likelihood = sums / counts

    lam = torch.linspace(-6, 6, 400, dtype=torch.float64)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name in LOG_SNR_WEIGHTINGS:
        left.plot(lam, eps_weight(name, lam), label=name)
        w = eps_weight(name, centres).numpy() * density
        right.plot(centres, w / np.trapezoid(w, centres), label=name)
    w = likelihood * density
    right.plot(centres, w / np.trapezoid(w, centres), label="likelihood (ELBO)", color="k", linestyle="--")
    left.set(yscale="log", xlabel="log-SNR λ = log(α/σ)", ylabel="w(λ) on ε-MSE", title="weight on ε-MSE")
    right.set(xlabel="log-SNR λ", ylabel="p(λ)·w(λ), normalised",
              title=f"per unit log-SNR, {args.process.upper()} times ({args.time_sampling})")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=120)
    print(f"wrote {args.output}")
    return args.output


if __name__ == "__main__":
    main()
