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


def test_convergence_problems_name_each_problem_with_its_numbers():
    from numpyro_clustermass.diagnostics import ConvergenceError, ConvergenceWarning, convergence_problems

    assert issubclass(ConvergenceWarning, UserWarning)
    assert convergence_problems(1.01, 1.05, 0, 600, 450.0, 200) == []
    assert convergence_problems(None, 1.05, 0, 300, None, 100) == []  # one chain: R-hat and ESS not computed
    p = convergence_problems(1.234, 1.05, 3, 600, 87.4, 200)
    assert p == ["function-space R-hat 1.234 is above the threshold 1.05 (the chains disagree)",
                 "3 divergent transitions of 600 draws (0.5%)",
                 "minimum bulk ESS 87 is below 200"]
    # R-hat exactly at the threshold is not below it; NaN (chains that never moved) is a problem too
    assert len(convergence_problems(1.05, 1.05, 0, 10, 500.0, 200)) == 1
    (nan_rhat, nan_ess) = convergence_problems(float("nan"), 1.05, 0, 10, float("nan"), 200)
    assert "R-hat nan" in nan_rhat and "never moved" in nan_rhat and "ESS nan" in nan_ess
    err = ConvergenceError("msg", p, state="s", info={"converged": False})
    assert err.problems == p and err.state == "s" and err.info == {"converged": False} and err.fit is None
