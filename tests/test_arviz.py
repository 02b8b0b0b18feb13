"""Every fit an ArviZ object: diagnostics.fit_to_arviz for every method, checked with ArviZ's own tools and against
Fit.posterior's numbers."""

import arviz as az
import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import numpyro_clustermass as ncm  # noqa: E402
from numpyro_clustermass.catalog import CatalogError  # noqa: E402
from numpyro_clustermass.diagnostics import (  # noqa: E402
    POINT_FIT_DRAWS,
    arviz_groups,
    arviz_major_version,
    fit_to_arviz,
)
from numpyro_clustermass.estimators import MDN, MSE  # noqa: E402
from numpyro_clustermass.inference import fit  # noqa: E402

pytestmark = [
    # the tiny fits learn little in 3 epochs, and their posteriors may touch the grid's edge: not under test here
    pytest.mark.filterwarnings("ignore::numpyro_clustermass.FitWarning"),
    pytest.mark.filterwarnings("ignore::numpyro_clustermass.diagnostics.ConvergenceWarning"),
    # ArviZ's own warnings on few draws (Pareto k, R-hat of one chain, KDE of one draw) are expected
    pytest.mark.filterwarnings("ignore:Estimated shape parameter of Pareto distribution:UserWarning"),
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:Degrees of freedom <= 0:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:Your data appears to have a single value:UserWarning"),
    pytest.mark.filterwarnings("ignore:More chains:UserWarning"),
]

#: ArviZ 1.x's PSIS needs at least 5 draws in the tail (a fifth of the draws): 25 draws or more for az.loo.
LOO_MIN_DRAWS_V1 = 25
TINY = dict(num_epochs=3, batch_size=128, progress_bar=False, seed=1)
NAMES = ("a", "b")
N_TEST = 40

CASES = {
    "map-mdn": (lambda: MDN(2, (8,), feature_names=NAMES), "map", {}),
    "map-mse": (lambda: MSE((8,), feature_names=NAMES), "map", {"learning_rate": 3e-3}),
    # 32 hidden units: with 8 (and the equal-mixture start), dropout's masks gave only 9-13 distinct draws of 32
    # per cluster, and ArviZ 1.x's PSIS refuses a tail of equal values; with 32 units, 28-31 are distinct
    "mc_dropout": (lambda: MDN(2, (32,), feature_names=NAMES), "mc_dropout", {"num_draws": 32}),
    # last layer Bayesian: the head's weights are sampled, the trunk's are held fixed
    "bbb": (lambda: MDN(2, (8,), feature_names=NAMES), "bbb", {"num_draws": 32, "bayesian_layers": "last"}),
    "ensemble": (lambda: MDN(2, (8,), feature_names=NAMES), "ensemble", {"num_members": 3}),
    "laplace": (lambda: MDN(2, (8,), feature_names=NAMES), "laplace", {"num_draws": 32}),  # init: the map-mdn fit
    "nuts": None,  # MassObservableRelation on a small flat mock
}
NUTS = dict(num_warmup=40, num_samples=40, num_chains=2, mass_matrix="adapt")  # adapt: no Hessian to compile
SLOW = {"laplace"}  # its Hessian and Newton steps compile for half a minute on two busy cores


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    n = 600 + N_TEST
    y = rng.uniform(13.5, 15.0, n)
    x = np.stack([y + 0.2 * rng.normal(size=n), rng.normal(size=n)], 1)
    return (x[:600], y[:600]), (x[600:], y[600:])


@pytest.fixture(scope="module")
def mock():
    cat = ncm.simulate.mock_catalog(volume=1.0, mass_sampling="flat", n_halos=100, seed=0)
    rows = np.arange(len(cat))
    return cat.select(rows >= N_TEST), cat.select(rows < N_TEST)


@pytest.fixture(scope="module")
def fitted(data, mock):
    """``fitted(case) -> (fit, test data)``; each fit is made once for the module."""
    cache = {}

    def get(case):
        if case not in cache:
            if case == "nuts":
                train, test = mock
                cache[case] = fit(ncm.MassObservableRelation(), train, method="nuts", **TINY, **NUTS), test
            else:
                make, method, options = CASES[case]
                if case == "laplace":  # start from the MAP fit of the same data (saves compiling another)
                    options = {**options, "init": get("map-mdn")[0]}
                cache[case] = fit(make(), data[0], method=method, **TINY, **options), data[1]
        return cache[case]

    return get


def _true_log_mass(test):
    return test.log_mass if isinstance(test, ncm.Catalog) else test[1]


def _features(test, f):
    return test.features(f.feature_names) if isinstance(test, ncm.Catalog) else test[0]


def _cases(names):
    return [pytest.param(c, marks=pytest.mark.slow) if c in SLOW else c for c in names]


@pytest.mark.parametrize("case", _cases(CASES))
def test_arviz_tools_run_on_every_method(fitted, case):
    f, test = fitted(case)
    idata = fit_to_arviz(f, test)
    y = _true_log_mass(test)
    expected = {"posterior", "posterior_predictive", "log_likelihood", "observed_data", "constant_data"}
    assert expected <= set(arviz_groups(idata))
    assert ("sample_stats" in arviz_groups(idata)) == (case != "laplace")  # laplace keeps no loss trace
    chains, draws = idata.log_likelihood.sizes["chain"], idata.log_likelihood.sizes["draw"]
    expected_shape = {"nuts": (2, 40), "ensemble": (1, 3), "bbb": (1, 32), "laplace": (1, 32),
                      "mc_dropout": (1, 32)}.get(case, (1, POINT_FIT_DRAWS))
    assert (chains, draws) == expected_shape
    for group in ("log_likelihood", "posterior_predictive"):
        da = getattr(idata, group)["log_mass"]
        assert da.dims == ("chain", "draw", "cluster") and da.shape == expected_shape + (len(y),)
        assert np.isfinite(da.values).all()
    assert np.array_equal(idata.observed_data["log_mass"].values, y)
    assert np.array_equal(idata.constant_data["features"].values, _features(test, f))
    assert list(idata.constant_data["feature"].values) == list(f.feature_names)
    for group in arviz_groups(idata):  # names ArviZ 1.x accepts: no "/" (nor "$")
        assert not [v for v in getattr(idata, group).data_vars if "/" in v or "$" in v]
    # the predictive samples lie in the grid's cells
    pp = idata.posterior_predictive["log_mass"].values
    dx = f.grid[1] - f.grid[0]
    assert pp.min() >= f.grid[0] - dx / 2 - 1e-4 and pp.max() <= f.grid[-1] + dx / 2 + 1e-4

    summary = az.summary(idata)
    assert len(summary) == sum(int(np.prod(v.shape[2:], dtype=int)) for v in idata.posterior.data_vars.values())
    point_fit = case in ("map-mdn", "map-mse")
    v1 = arviz_major_version() >= 1
    if v1 and point_fit:
        # a point fit has the same log-likelihood in every draw: ArviZ 1.x's PSIS refuses it (0.x warns)
        with pytest.raises(ValueError, match="tail values are the same"):
            az.loo(idata, pointwise=True)
    elif v1 and chains * draws < LOO_MIN_DRAWS_V1:
        pass  # three ensemble members: too few draws for ArviZ 1.x's PSIS (0.x computes it with a warning)
    else:
        loo = az.loo(idata, pointwise=True)
        elpd = loo.elpd_loo if arviz_major_version() < 1 else loo.elpd  # the field's name in each ArviZ line
        assert np.isfinite(elpd) and loo.n_data_points == len(y)
        if point_fit:  # LOO of the same log-likelihood in every draw is the in-sample log score
            ll = idata.log_likelihood["log_mass"].values
            assert elpd == pytest.approx(ll[0, 0].astype(np.float64).sum(), rel=1e-5)
    # the two smallest variables are enough to exercise the plots (and fast: ArviZ 1.x refuses over 40 subplots)
    some = sorted(idata.posterior.data_vars, key=lambda v: idata.posterior[v].size)[:2]
    az.plot_trace(idata, var_names=some)
    az.plot_forest(idata, var_names=some)
    if v1:  # ArviZ 1.x renamed plot_ppc
        az.plot_ppc_dist(idata, num_samples=min(draws * chains, 20))
    else:
        az.plot_ppc(idata, num_pp_samples=min(draws * chains, 20))
    plt.close("all")


@pytest.mark.parametrize("case", ["map-mdn", "map-mse"])
def test_point_fit_log_likelihood_is_the_posterior_density_at_the_truth(fitted, case):
    f, (x, y) = fitted(case)
    idata = fit_to_arviz(f, (x, y))
    ll = idata.log_likelihood["log_mass"].values
    assert ll.shape == (1, POINT_FIT_DRAWS, len(y))
    np.testing.assert_array_equal(f.to_arviz((x, y)).log_likelihood["log_mass"].values, ll)  # the Fit method
    assert idata.posterior.sizes["draw"] == 1  # one chain, one draw of the parameters
    post = f.posterior((x, y))
    expected = post.log_prob(y)
    np.testing.assert_allclose(np.log(np.exp(ll.astype(np.float64)).mean((0, 1))), expected, rtol=0, atol=1e-6)
    assert (ll == ll[:, :1]).all()
    # the parameters are the fit's
    kernel = f.params["nn$params"]["trunk"]["Dense_0"]["kernel"]
    np.testing.assert_array_equal(idata.posterior["nn.trunk.Dense_0.kernel"].values[0, 0], kernel)
    # the predictive samples follow the predictive density: their mean is the posterior mean (4.5 sigma)
    pp = idata.posterior_predictive["log_mass"].values[0]
    assert (np.abs(pp.mean(0) - post.mean()) < 4.5 * post.std() / np.sqrt(POINT_FIT_DRAWS)).all()
    assert (pp.std(0) > 0).all()


@pytest.mark.parametrize("case", _cases(["bbb", "laplace", "mc_dropout", "ensemble"]))
def test_draws_are_those_of_fit_posterior(fitted, case):
    """Per draw, the log-likelihood is Fit.posterior's per-draw density (same seed, same draws) at the truth."""
    f, (x, _) = fitted(case)
    seed = 7
    num = f._method.num_draws
    post = f.posterior(x, num_draws=num, seed=seed, keep_draws=True)
    per_draw = np.asarray(post.draws_log_density)  # (S, n, G)
    j = np.random.default_rng(1).integers(40, f.grid.size - 40, size=len(x))
    y_grid = f.grid[j]  # masses on grid points: no interpolation between the two
    idata = fit_to_arviz(f, (x, y_grid), seed=seed)
    ll = idata.log_likelihood["log_mass"].values[0]
    assert ll.shape == per_draw.shape[:2]
    # float32: a grid point read back from its float32 value can sit 1e-6 of a cell off it
    np.testing.assert_allclose(ll, per_draw[:, np.arange(len(x)), j], rtol=1e-5, atol=2e-5)
    if case in ("bbb", "laplace"):  # the posterior group holds the same parameter draws
        key = jax.random.split(jax.random.key(seed))[0]
        draws = f._method.sample(key, f.state, num)
        np.testing.assert_array_equal(idata.posterior["nn.head.locs.kernel"].values[0],
                                      np.asarray(draws["nn/head.locs.kernel"]))
    if case != "ensemble":  # an ensemble's draws are its members, whatever the seed
        other = fit_to_arviz(f, (x, y_grid), seed=seed + 1).log_likelihood["log_mass"].values[0]
        assert not np.array_equal(other, ll)


def test_which_parameters_are_posterior_and_which_fixed(fitted):
    bbb, x = fitted("bbb")
    ens, _ = fitted("ensemble")
    mcd, _ = fitted("mc_dropout")
    # last-layer BBB: the head is sampled (posterior), the trunk held at its point value (constant_data)
    i_bbb = fit_to_arviz(bbb, x)
    head = {f"nn.head.{h}.{p}" for h in ("locs", "logits", "scales") for p in ("bias", "kernel")}
    assert set(i_bbb.posterior.data_vars) == head
    assert float(i_bbb.posterior["nn.head.locs.kernel"].std("draw").min()) > 0
    np.testing.assert_array_equal(i_bbb.constant_data["nn.trunk.Dense_0.kernel"].values,
                                  bbb.params["nn$params"]["trunk"]["Dense_0"]["kernel"])
    # ensemble: the members are the draws of one chain
    i_ens = fit_to_arviz(ens, x)
    np.testing.assert_array_equal(i_ens.posterior["nn.trunk.Dense_0.bias"].values[0],
                                  ens.params["nn$params"]["trunk"]["Dense_0"]["bias"])
    assert i_ens.posterior.sizes["chain"] == 1 and i_ens.posterior.sizes["draw"] == 3
    # MC dropout: one set of weights; its draws differ by their dropout masks
    i_mcd = fit_to_arviz(mcd, x)
    assert i_mcd.posterior.sizes["draw"] == 1 and i_mcd.log_likelihood.sizes["draw"] == 32
    assert float(i_mcd.log_likelihood["log_mass"].std("draw").min()) > 0
    # the same weight has the same name whatever the method: fits go side by side
    assert set(i_ens.posterior.data_vars) == set(i_mcd.posterior.data_vars) > head


def test_nuts_chains_draws_and_sample_stats(fitted):
    f, test = fitted("nuts")
    idata = fit_to_arviz(f, test)
    assert set(idata.posterior.data_vars) == {"intercept", "scatter", "slope"}
    for name in ("intercept", "scatter", "slope"):
        np.testing.assert_array_equal(idata.posterior[name].values, np.asarray(f.state.samples[name]))
    ss = idata.sample_stats
    assert {"diverging", "tree_depth", "n_steps", "energy", "step_size", "acceptance_rate", "lp"} <= set(ss.data_vars)
    assert ss["diverging"].dims == ("chain", "draw") and ss["diverging"].dtype == bool
    assert int(ss["diverging"].sum()) == f.info["num_divergent"]
    n_steps = np.asarray(f.history["num_steps"]).reshape(2, 40)
    np.testing.assert_array_equal(ss["n_steps"].values, n_steps)
    assert ((2 ** (ss["tree_depth"].values - 1) <= n_steps) & (n_steps < 2 ** ss["tree_depth"].values)).all()
    assert (ss["step_size"].values > 0).all() and np.isfinite(ss["energy"].values).all()
    assert ((ss["acceptance_rate"].values >= 0) & (ss["acceptance_rate"].values <= 1)).all()
    assert np.isfinite(az.summary(idata)["r_hat"].values).all()
    assert {"halo_id", "features"} <= set(idata.constant_data.data_vars)

    # each (chain, draw) log-likelihood is that draw's inverted relation, y | x ~ Normal((x - a) / b, s / |b|) in
    # standardised units, per dex of log10 M, normalised on the grid
    ym, ys = float(np.ravel(f.y_scaler.mean)[0]), float(np.ravel(f.y_scaler.scale)[0])
    z = f.x_scaler.transform(test.features(f.feature_names))[:, 0]
    a, b, s = (np.asarray(f.state.samples[k], np.float64)[..., 0][..., None] for k in ("intercept", "slope", "scatter"))
    loc, scale = ym + ys * (z - a) / b, ys * s / np.abs(b)  # (chain, draw, cluster), dex

    def log_normal(v):
        return -0.5 * ((v - loc) / scale) ** 2 - np.log(scale) - 0.5 * np.log(2 * np.pi)

    dx = f.grid[1] - f.grid[0]
    log_norm = np.log(sum(np.exp(log_normal(g)) for g in f.grid) * dx)
    analytic = log_normal(test.log_mass) - log_norm
    ll = idata.log_likelihood["log_mass"].values
    np.testing.assert_allclose(ll, analytic, rtol=0, atol=1e-3)

    # fewer draws: every chain thinned evenly, the groups stay aligned, the draws keep their places
    thin = fit_to_arviz(f, test, num_draws=10)
    assert thin.posterior["slope"].shape == (2, 5, 1) and thin.sample_stats["diverging"].shape == (2, 5)
    assert thin.log_likelihood["log_mass"].shape == (2, 5, N_TEST)
    kept = thin.posterior["draw"].values
    np.testing.assert_array_equal(kept, [0, 10, 20, 29, 39])
    np.testing.assert_array_equal(thin.posterior["slope"].values, np.asarray(f.state.samples["slope"])[:, kept])
    np.testing.assert_allclose(thin.log_likelihood["log_mass"].values, ll[:, kept], rtol=0, atol=1e-5)


def test_loss_trace_in_sample_stats(fitted):
    f, test = fitted("bbb")
    ss = fit_to_arviz(f, test).sample_stats
    assert ss["train_loss"].dims == ("epoch",)
    np.testing.assert_allclose(ss["train_loss"].values, f.history["train_loss"])
    np.testing.assert_allclose(ss["val_loss"].values, f.history["val_loss"])


def test_catalogue_without_masses_and_bad_input(fitted):
    f, (x, y) = fitted("map-mdn")
    idata = fit_to_arviz(f, x)
    assert "log_likelihood" not in arviz_groups(idata) and "observed_data" not in arviz_groups(idata)
    assert idata.posterior_predictive["log_mass"].shape == (1, POINT_FIT_DRAWS, len(x))
    with pytest.raises(ValueError, match=r"num_draws must be an integer >= 1"):
        fit_to_arviz(f, (x, y), num_draws=0)
    bad = y.copy()
    bad[[3, 5]] = np.nan
    with pytest.raises(ValueError, match=r"2 of 40 log-masses are NaN .*first rows: \[3, 5\]"):
        fit_to_arviz(f, (x, bad))
    with pytest.raises(CatalogError, match=r"expected 2 features"):
        fit_to_arviz(f, (np.ones((4, 3)), np.ones(4)))


def test_same_seed_same_object_and_chunks_do_not_change_densities(fitted):
    f, (x, y) = fitted("bbb")
    a = fit_to_arviz(f, (x, y), seed=3)
    b = fit_to_arviz(f, (x, y), seed=3)
    np.testing.assert_array_equal(a.posterior_predictive["log_mass"].values, b.posterior_predictive["log_mass"].values)
    np.testing.assert_array_equal(a.log_likelihood["log_mass"].values, b.log_likelihood["log_mass"].values)
    c = fit_to_arviz(f, (x, y), seed=3, chunk_size=7)  # a weight-space method: chunks do not change a density
    np.testing.assert_allclose(c.log_likelihood["log_mass"].values, a.log_likelihood["log_mass"].values,
                               rtol=0, atol=1e-5)
