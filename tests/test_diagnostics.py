import numpy as np
import pytest

from numpyro_clustermass.diagnostics import (
    arviz_major_version,
    function_space_convergence,
    sanitize_name,
    to_arviz,
)


def test_function_space_rhat_detects_unmixed_chains():
    rng = np.random.default_rng(0)
    good = rng.normal(size=(4, 400, 6))
    d = function_space_convergence(good)
    assert d["max_rhat"] < 1.02 and d["min_ess_bulk"] > 800
    bad = good.copy()
    bad[1] += 2.0  # chain 1 stuck in another mode (1 of 4 chains: R-hat about 1.3)
    assert function_space_convergence(bad)["rhat"].min() > 1.1
    with pytest.raises(ValueError, match="2 chains"):
        function_space_convergence(good[:1])
    with pytest.raises(ValueError, match="chains, draws, n_clusters"):
        function_space_convergence(good[0])


def test_to_arviz_renames_flax_paths_for_both_arviz_generations():
    assert sanitize_name("nn$params/trunk/Dense_0.kernel") == "nn_params.trunk.Dense_0.kernel"
    obj = to_arviz(
        {"nn$params/Dense_0.kernel": np.zeros((2, 10, 3, 4)), "sigma": np.ones((2, 10))},
        posterior_predictive={"obs": np.zeros((2, 10, 7))},
        log_likelihood={"obs": np.zeros((2, 10, 7))},
        dims={"obs": ["cluster"]},
    )
    post = obj["posterior"] if arviz_major_version() >= 1 else obj.posterior
    assert "nn_params.Dense_0.kernel" in post.data_vars
    ll = obj["log_likelihood"] if arviz_major_version() >= 1 else obj.log_likelihood
    assert ll["obs"].dims == ("chain", "draw", "cluster")
