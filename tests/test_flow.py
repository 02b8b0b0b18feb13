"""Tests for the conditional spline-flow head: numpyro_clustermass.flows, nets.FlowNet, models.flow_model, Flow."""

import sys

import numpy as np
import pytest

import numpyro_clustermass as ncm
from numpyro_clustermass import bnn, flows, metrics, priors
from numpyro_clustermass.estimators import FlowBoundsError

LO, HI = 13.5, 15.3
SMALL = dict(num_epochs=3, batch_size=128, progress_bar=False)
NAMES = ("a", "b", "c")
#: Least gain of the flow's mean log score over the MDN's for truths 0.01 dex inside an edge: half the smaller gain
#: measured (0.14 nats at 13.5, 0.24 at 15.3, seed 0, jax 0.10)
EDGE_GAIN = 0.07


def _uniform(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.uniform(LO, HI, n)
    y[:2] = LO, HI  # the training range's edges themselves
    x = np.c_[y + 0.15 * rng.normal(size=n), rng.normal(size=(n, 2))]
    return x, y


def _flow(**kw):
    return ncm.Flow(num_bins=8, hidden=(16, 16), feature_names=NAMES, **kw)


@pytest.fixture(scope="module")
def xy():
    return _uniform(400, 0)


@pytest.fixture(scope="module")
def flow_fit(xy):
    return ncm.fit(_flow(), xy, num_epochs=40, batch_size=64, learning_rate=3e-3, progress_bar=False, seed=0)


def test_fit_binds_the_interval_and_the_density_integrates_to_one_inside_it(flow_fit, xy):
    est = flow_fit.estimator
    assert est.bounds == (LO, HI)  # the training range (its edges are in the data)
    interval = np.array(est.bounds) + np.array([-est.margin, est.margin])
    assert np.allclose(flow_fit.y_scaler.transform(interval), est.z_bounds)
    post = flow_fit.posterior((xy[0][:60], xy[1][:60]))
    g, dx = post.grid, post.grid[1] - post.grid[0]
    p = np.exp(np.asarray(post.log_density, dtype=np.float64))
    np.testing.assert_allclose(p.sum(1) * dx, 1.0, atol=1e-5)
    outside = (g < interval[0] - dx) | (g > interval[1] + dx)
    assert outside.any() and p[:, outside].max() == 0.0
    # mean and variance come from the grid (the flow has no closed form): finite and inside the interval
    mean = np.sum(p * g, 1) * dx
    assert np.isfinite(post.aleatoric_variance).all() and (post.aleatoric_variance > 0).all()
    assert ((mean > LO) & (mean < HI)).all()
    assert np.array_equal(post.epistemic_variance, np.zeros(60))


def test_hard_edges_score_finitely_and_better_than_the_mdn(flow_fit, xy):
    mdn = ncm.fit(ncm.MDN(4, (16, 16), feature_names=NAMES), xy, num_epochs=40, batch_size=64,
                  learning_rate=3e-3, progress_bar=False, seed=0)
    x, _ = _uniform(300, 1)
    for edge, inside in ((LO, LO + 0.01), (HI, HI - 0.01)):
        xe = np.c_[np.full(300, edge) + 0.15 * np.random.default_rng(2).normal(size=300), x[:, 1:]]
        ye = np.full(300, inside)
        ls_flow = metrics.log_score(flow_fit.posterior((xe, ye)), ye)
        ls_mdn = metrics.log_score(mdn.posterior((xe, ye)), ye)
        assert np.isfinite(ls_flow).all()
        # the flow keeps its density up to the edge; the mixture rolls it off
        assert ls_flow.mean() > ls_mdn.mean() + EDGE_GAIN, (edge, ls_flow.mean(), ls_mdn.mean())


def test_reweighting_to_a_flat_prior_scores_every_truth_inside_its_support(flow_fit, xy):
    x, y = _uniform(200, 3)
    y = np.clip(y, LO + 1e-3, HI - 1e-3)
    post = flow_fit.posterior((x, y)).reweight(priors.Flat(LO, HI))
    ls = metrics.log_score(post, y)
    assert np.isfinite(ls).all()
    assert ((post.mode() >= LO) & (post.mode() <= HI)).all()


def test_save_load_gives_a_bitwise_equal_posterior(flow_fit, xy, tmp_path):
    path = flow_fit.save(tmp_path / "flow.ncm")
    back = ncm.load(path)
    assert back.estimator == flow_fit.estimator
    a, b = flow_fit.posterior((xy[0][:20], xy[1][:20])), back.posterior((xy[0][:20], xy[1][:20]))
    assert np.array_equal(np.asarray(a.log_density), np.asarray(b.log_density))
    assert np.array_equal(a.aleatoric_variance, b.aleatoric_variance)


@pytest.mark.parametrize("method,kw", [("bbb", {}), ("mc_dropout", {"dropout_rate": 0.1}),
                                       ("ensemble", {"num_members": 2})])
def test_bayesian_methods_run_on_the_flow(xy, method, kw):
    f = ncm.fit(ncm.Flow(num_bins=4, hidden=(8,), feature_names=NAMES), xy, method=method, **kw, **SMALL)
    post = f.posterior((xy[0][:10], xy[1][:10]), num_draws=4)
    p = np.exp(np.asarray(post.log_density, dtype=np.float64))
    np.testing.assert_allclose(p.sum(1) * (post.grid[1] - post.grid[0]), 1.0, atol=1e-5)
    assert (post.epistemic_variance > 0).mean() > 0.5


def test_last_layer_twin_of_the_flow_keeps_the_trunk_fixed(xy):
    # head_only_twin knows the flow head, so NUTS/Laplace on a last-layer flow compute the trunk's features once
    est = ncm.Flow(num_bins=4, hidden=(8,), feature_names=NAMES)
    twin = bnn.bayesian_twin(est.bind(ncm.catalog.StandardScaler.fit(xy[1]), xy[1]).model, bayesian_layers="last")
    trunk_fn, head_twin = bnn.head_only_twin(twin, 3)
    assert isinstance(head_twin.keywords["net"].head, ncm.nets.FlowHead)
    assert head_twin.keywords["low"] == twin.keywords["low"]


def test_training_masses_outside_explicit_bounds_are_an_error(xy):
    with pytest.raises(FlowBoundsError, match="training masses lie outside"):
        ncm.fit(_flow(bounds=(13.6, 15.3)), xy, **SMALL)
    assert _flow(bounds=(LO, HI)).bind(ncm.catalog.StandardScaler.fit(xy[1]), xy[1]).bounds == (LO, HI)
    with pytest.raises(ValueError, match="high > low"):
        ncm.Flow(bounds=(15.0, 14.0))


def test_unbound_flow_model_names_the_fix():
    import jax.numpy as jnp
    from numpyro import handlers

    with pytest.raises(ValueError, match="needs its interval"):
        handlers.seed(ncm.Flow(hidden=(4,)).model, 0)(jnp.ones((3, 14)))


def test_missing_tfp_is_a_clear_error(monkeypatch, xy):
    monkeypatch.setitem(sys.modules, "tensorflow_probability.substrates.jax", None)  # import now fails
    with pytest.raises(flows.TFPImportError, match="tfp-nightly==") as err:
        flows.import_tfp()
    assert "tensorflow-probability" in str(err.value)
    with pytest.raises(flows.TFPImportError):
        ncm.fit(ncm.Flow(num_bins=4, hidden=(4,), feature_names=NAMES), xy, **SMALL)


def test_cli_builds_the_flow():
    from numpyro_clustermass.cli import build_estimator

    est = build_estimator("flow", components=8, hidden=(16,), dropout=0.1)
    assert isinstance(est, ncm.Flow) and (est.num_bins, est.hidden, est.dropout_rate) == (8, (16,), 0.1)


def test_tfp_distributions_are_mass_priors(flow_fit, xy):
    import numpyro.distributions as dist

    tfd = flows.import_tfp().distributions
    grid = np.linspace(13.0, 15.8, 57)
    ours, theirs = priors.FromDistribution(tfd.Uniform(LO, HI)), priors.FromDistribution(dist.Uniform(LO, HI))
    assert ours.support == pytest.approx(theirs.support)
    np.testing.assert_allclose(np.asarray(ours.log_prob(grid)), np.asarray(theirs.log_prob(grid)), rtol=1e-6)
    post = flow_fit.posterior((xy[0][:20], xy[1][:20]))
    a = post.reweight(priors.FromDistribution(tfd.Normal(14.2, 0.3)))
    b = post.reweight(priors.FromDistribution(dist.Normal(14.2, 0.3)))
    np.testing.assert_allclose(a.mode(), b.mode(), atol=1e-4)  # float32 rounding: 4e-6 measured
    with pytest.raises(TypeError, match="numpyro or TFP distribution"):
        priors.FromDistribution("uniform")


def test_tfp_distributions_are_weight_priors(xy):
    from numpyro_clustermass.weight_priors import resolve_weight_prior

    tfd = flows.import_tfp().distributions
    pri = resolve_weight_prior({"head.k": (3, 2), "trunk.k": (2, 3)}, {"*": tfd.Normal(0.0, 1.0),
                                                                       "head": tfd.Laplace(0.0, 0.1)})
    assert {k: type(v.tfp_dist).__name__ for k, v in pri.items()} == {"head.k": "Laplace", "trunk.k": "Normal"}
    f = ncm.fit(ncm.MDN(2, (8,), feature_names=NAMES), xy, method="bbb", weight_prior=tfd.Normal(0.0, 1.0),
                bayesian_layers="last", **SMALL)
    post = f.posterior((xy[0][:5], xy[1][:5]), num_draws=4)
    assert np.isfinite(post.mode()).all() and (post.epistemic_variance > 0).all()


def test_grid_cells_straddling_the_interval_edges_get_the_flow_mass_in_them():
    import jax
    import jax.numpy as jnp
    import numpyro.distributions as dist

    from numpyro_clustermass.inference.fitting import support_edge_cells

    c, dz = 2, 0.1
    # centres -1.03 and 1.07 lie outside [-1, 1.05], within half a cell of its edges
    z = jnp.asarray(-1.03 + dz * np.arange(-5, 27), jnp.float32)

    @jax.jit  # one compiled program: TFP's ops run eagerly one small program each otherwise
    def cells(z):
        d = flows.spline_flow(jnp.array([-0.8, 0.9]), jnp.array([0.3, 0.2]), jnp.zeros((c, 1, 4)),
                              jnp.zeros((c, 1, 4)), jnp.zeros((c, 1, 3)), low=-1.0, high=1.05)
        ld = jax.vmap(d.log_prob)(jnp.broadcast_to(z[:, None], (z.shape[0], c))).T
        return ld, support_edge_cells(d, ld, z, dz), d.cdf(jnp.full(c, -0.98)), 1.0 - d.cdf(jnp.full(c, 1.02))

    ld, out, mass_lo, mass_hi = (np.asarray(a) for a in cells(z))
    i_lo, i_hi = 5, 26
    assert np.isneginf(ld[:, [i_lo, i_hi]]).all()  # the centres' density is zero
    np.testing.assert_allclose(np.exp(out[:, i_lo]) * dz, mass_lo, rtol=1e-5)
    np.testing.assert_allclose(np.exp(out[:, i_hi]) * dz, mass_hi, rtol=1e-4)
    assert mass_lo[0] > 1e-2 and mass_hi[1] > 1e-2  # the first sits near the lower edge, the second near the upper
    others = np.setdiff1d(np.arange(z.shape[0]), [i_lo, i_hi])
    assert np.array_equal(out[:, others], ld[:, others])
    # a distribution on the real line is returned as it was
    normal = dist.Normal(jnp.zeros(c), 1.0)
    ld_n = jax.vmap(normal.log_prob)(jnp.broadcast_to(z[:, None], (z.shape[0], c))).T
    assert support_edge_cells(normal, ld_n, z, dz) is ld_n


def test_the_flow_trunk_starts_as_pytorch_does_and_an_older_file_loads_as_flax():
    """Flow's default weight_init ("equal_mixture", as MDN's) draws the trunk as PyTorch does; the spline head
    starts as its base alone either way. A Flow config saved before the option existed loads as "flax"."""
    import jax

    from numpyro_clustermass.inference.fitfile import estimator_from_config
    from numpyro_clustermass.nets import FlowNet

    assert ncm.Flow().weight_init == "equal_mixture" and FlowNet().weight_init == "flax"
    x = jax.random.normal(jax.random.key(1), (64, 14))
    trunks = {}
    for init in ("equal_mixture", "flax"):
        net = FlowNet(num_bins=4, hidden=(32, 16), weight_init=init)
        v = net.init(jax.random.key(0), x[:1])
        trunks[init] = v["params"]["trunk"]["Dense_0"]
        _, scale, widths, heights, _ = net.apply(v, x)
        assert float(np.abs(np.asarray(widths)).max()) < 1e-2 and float(np.abs(np.asarray(heights)).max()) < 1e-2
    assert float(np.abs(trunks["equal_mixture"]["kernel"]).max()) <= 1 / np.sqrt(14) + 1e-6
    assert float(np.abs(trunks["equal_mixture"]["bias"]).max()) > 0  # drawn, as PyTorch's
    assert float(np.abs(trunks["flax"]["bias"]).max()) == 0.0
    with pytest.raises(ValueError, match="unknown weight_init 'torch'"):
        ncm.Flow(weight_init="torch")
    cfg = _flow().config()
    del cfg["weight_init"]
    assert estimator_from_config(cfg).weight_init == "flax"
