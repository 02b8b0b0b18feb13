"""How biased is the maximum-likelihood mass itself, at fixed true mass, when the likelihood is exact?

The reweighted mode of a perfect network is the maximum-likelihood mass, which is not median-unbiased at
fixed true mass in general. This toy uses the mock's own physics (numpyro_clustermass.simulate.physics)
for a reduced data set whose likelihood can be written down: the galaxy count N (satellites, Poisson
around lambda(M) with the mock's log-normal richness scatter, plus Poisson background interlopers in the
cylinder) and the sample variance of the satellites' line-of-sight velocities (Gaussian, dispersion
sigma(M) = b_v * sigma_Evrard(M) with the mock's log-normal scatters). Interlopers' velocities, the
velocity cut and the other 12 features are left out, so this bounds what counts and a dispersion alone
contribute to the estimator's bias, not the full network's. Scatters are integrated with Gauss-Hermite
nodes; the MLE and the flat-prior posterior median are read off a 0.002-dex grid (4000 halos per mass).

    python3 benchmarks/mle_bias_toy.py            # about 5 min on 2 idle CPU cores
"""

from __future__ import annotations

import numpy as np
from scipy import special, stats

from numpyro_clustermass.simulate import physics as P

_PIVOT = 13.5  # the mock's richness pivot (simulate/mock.py)


def _log_lik(n_tot, n_sat, s2, lam_g, sig_g, n_bg, s_ln_lam, s_ln_sig, nodes, weights):
    """log p(n_tot, s2 | M) on the grid, the log-normal scatters integrated over Gauss-Hermite nodes."""
    lw = np.log(weights)
    lam_z = lam_g[None, :, None] * np.exp(s_ln_lam * nodes)[None, None, :] + n_bg
    ll_n = special.logsumexp(stats.poisson.logpmf(n_tot[:, None, None], lam_z) + lw, axis=-1)
    k = (n_sat - 1)[:, None, None]
    sg = sig_g[None, :, None] * np.exp(s_ln_sig * nodes)[None, None, :]
    # k s2 / sigma^2 ~ chi2_k; the density of s2 carries the Jacobian k / sigma^2
    ll_s = special.logsumexp(stats.chi2.logpdf(k * s2[:, None, None] / sg**2, k) - 2 * np.log(sg) + lw, axis=-1)
    return ll_n + ll_s


def main() -> int:
    ph = P.MockPhysics()
    e_z = P.hubble_E(ph)
    depth = 2.0 * ph.v_cut / (100.0 * e_z)
    n_bg = ph.n_background * np.pi * ph.aperture**2 * depth
    s_ln_lam = ph.richness_scatter_dex * np.log(10)
    s_ln_sig = np.hypot(ph.sigma_ln_scatter, ph.velocity_bias_std / ph.velocity_bias_mean)
    nodes, weights = special.roots_hermitenorm(7)
    weights = weights / weights.sum()
    grid = np.linspace(13.3, 15.6, 1151)
    lam_g = ph.lambda0 * 10 ** (ph.alpha_sat * (grid - _PIVOT))
    sig_g = ph.velocity_bias_mean * P.sigma_dm_evrard(grid, e_z)
    rng = np.random.default_rng(0)
    print(f"background interlopers per cylinder {n_bg:.1f}; richness scatter {ph.richness_scatter_dex} dex; "
          f"ln sigma scatter {s_ln_sig:.3f}")
    print("| true log M | mean satellites | median(MLE - true) | median(flat-prior posterior median - true) |")
    print("|---|---|---|---|")
    for lm in np.round(np.arange(14.0, 14.95, 0.1), 1):
        n = 4000
        lam = ph.lambda0 * 10 ** (ph.alpha_sat * (lm - _PIVOT)) * np.exp(s_ln_lam * rng.standard_normal(n))
        n_sat = rng.poisson(lam)
        n_tot = n_sat + rng.poisson(n_bg, n)
        keep = n_sat >= 3
        n_sat, n_tot = n_sat[keep], n_tot[keep]
        sig = ph.velocity_bias_mean * P.sigma_dm_evrard(lm, e_z) * np.exp(s_ln_sig * rng.standard_normal(n_sat.size))
        s2 = sig**2 * rng.chisquare(n_sat - 1) / (n_sat - 1)
        ll = np.concatenate([_log_lik(n_tot[i:i + 250], n_sat[i:i + 250], s2[i:i + 250], lam_g, sig_g, n_bg,
                                      s_ln_lam, s_ln_sig, nodes, weights) for i in range(0, n_sat.size, 250)])
        mle = grid[np.argmax(ll, 1)]
        p = np.exp(ll - ll.max(1, keepdims=True))
        cdf = np.cumsum(p, 1) / p.sum(1, keepdims=True)
        med = grid[np.argmax(cdf >= 0.5, 1)]
        print(f"| {lm:.1f} | {np.mean(n_sat):.0f} | {np.median(mle - lm):+.3f} | {np.median(med - lm):+.3f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
