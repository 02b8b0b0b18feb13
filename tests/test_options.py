"""Method options are typed, validated, frozen dataclasses (inference/options.py and one class per method), and
``Fit.info`` is a FitInfo with named fields that still reads like the dict it was."""

import copy
import dataclasses
import pickle

import numpy as np
import pytest

import numpyro_clustermass as ncm
from numpyro_clustermass.estimators import MDN
from numpyro_clustermass.inference import (
    BBBOptions,
    EnsembleOptions,
    FitInfo,
    IterativeMethod,
    LaplaceOptions,
    MapOptions,
    MapStartOptions,
    MCDropoutOptions,
    MethodOptions,
    NUTSOptions,
    TrainingPlan,
    UnknownOptionError,
    build_method,
    fit,
    get_method,
    make_options,
    options_class,
    register_method,
)

pytestmark = pytest.mark.filterwarnings("ignore::numpyro_clustermass.FitWarning")

NAMES = ("a", "b")
TINY = dict(num_epochs=3, batch_size=128, progress_bar=False)
PLAN = TrainingPlan(num_data=256, batch_size=64, steps_per_epoch=4, num_epochs=2, num_features=2)
CLASSES = {"map": MapOptions, "mc_dropout": MCDropoutOptions, "ensemble": EnsembleOptions, "bbb": BBBOptions,
           "nuts": NUTSOptions, "laplace": LaplaceOptions}


@pytest.fixture(scope="module")
def xy():
    rng = np.random.default_rng(0)
    y = rng.uniform(13.5, 15.0, 400)
    x = np.stack([y + 0.2 * rng.normal(size=400), rng.normal(size=400)], 1)
    return x, y


def _must_not_read(*args, **kwargs):
    raise AssertionError("the data was read before the options were checked")


# ---------------------------------------------------------------------------------------------- the classes
def test_every_registered_method_has_its_options_class():
    for method, cls in CLASSES.items():
        assert options_class(method) is cls and cls.method_name == method
        assert getattr(ncm, cls.__name__) is cls  # exported at the top level too
        cls()  # the defaults are valid


@pytest.mark.parametrize("cls, changes, message", [
    (MapOptions, {"learning_rate": 0.0}, r"method 'map': learning_rate must be a finite number > 0 \(default 1e-3\); "
                                         r"got 0\.0"),
    (MapOptions, {"schedule": "linear"}, r"method 'map': unknown schedule 'linear'; use 'cosine', 'exponential', "
                                         r"'constant', 'plateau' or a callable"),
    (MapOptions, {"plateau_factor": 1.0}, r"method 'map': plateau_factor must be a finite number in \(0, 1\) "
                                          r"\(default 0\.25\); got 1\.0"),
    (BBBOptions, {"plateau_patience": 0}, r"method 'bbb': plateau_patience must be an integer >= 1 \(default 3\); "
                                          r"got 0"),
    (MapOptions, {"b2": 1.0}, r"method 'map': b2 must be a finite number in \[0, 1\) \(default 0\.999\); got 1\.0"),
    (MapOptions, {"optimizer": "adam"}, r"method 'map': optimizer must be an optax\.GradientTransformation"),
    (MCDropoutOptions, {"dropout_rate": 1.0}, r"method 'mc_dropout': dropout_rate must be a finite number in "
                                              r"\[0, 1\); got 1\.0"),
    (MCDropoutOptions, {"num_draws": 0}, r"method 'mc_dropout': num_draws must be an integer >= 1 .*; got 0"),
    (MCDropoutOptions, {"weight_decay": -1.0}, r"method 'mc_dropout': weight_decay must be a finite number >= 0"),
    (EnsembleOptions, {"num_members": 1.5}, r"method 'ensemble': num_members must be an integer >= 1 .*; got 1\.5"),
    (BBBOptions, {"eval_particles": 0}, r"method 'bbb': eval_particles must be an integer >= 1; got 0"),
    (BBBOptions, {"init": "mpa"}, r"method 'bbb': init must be 'net', 'map' or a MAP Fit of the same data; got 'mpa'"),
    (BBBOptions, {"clip_norm": -1.0}, r"method 'bbb': clip_norm must be a finite number > 0 or None; got -1\.0"),
    (BBBOptions, {"map_options": {"patience": -1}}, r"method 'bbb': map_options: patience must be an integer >= 0; "
                                                    r"got -1"),
    (NUTSOptions, {"num_samples": 0}, r"method 'nuts': num_samples must be an integer >= 1; got 0"),
    (NUTSOptions, {"chain_method": "threads"}, r"method 'nuts': chain_method must be 'auto', 'vectorized', "
                                               r"'parallel' or 'sequential'; got 'threads'"),
    (NUTSOptions, {"map_options": {"num_epochs": 0}}, r"method 'nuts': map_options: num_epochs must be an integer "
                                                      r">= 1; got 0"),
    (LaplaceOptions, {"eigenvalue_floor": 1.0}, r"method 'laplace': eigenvalue_floor must be a finite number in "
                                                r"\(0, 1\)"),
    (LaplaceOptions, {"refine_mode": "yes"}, r"method 'laplace': refine_mode must be True or False; got 'yes'"),
    (MapStartOptions, {"min_delta": -1e-3}, r"method 'map': min_delta must be a finite number >= 0; got -0\.001"),
])
def test_a_bad_value_is_a_clear_error(cls, changes, message):
    with pytest.raises(ValueError, match=message):
        cls(**changes)
    with pytest.raises(ValueError, match=message):  # replace() checks as a new instance does
        cls().replace(**changes)


def test_options_are_frozen_keyword_only_and_normalised():
    opts = NUTSOptions(num_chains=4.0, bayesian_layers=["head.locs"], map_options={"num_epochs": 5})
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.num_chains = 2
    with pytest.raises(TypeError):
        MapOptions(1e-3)  # keyword-only
    assert opts.num_chains == 4 and type(opts.num_chains) is int
    assert opts.bayesian_layers == ("head.locs",)
    assert opts.map_options == MapStartOptions(num_epochs=5)
    assert hash(opts) == hash(NUTSOptions(num_chains=4, bayesian_layers=("head.locs",),
                                          map_options=MapStartOptions(num_epochs=5)))
    assert opts.to_dict() == {"bayesian_layers": ("head.locs",), "num_chains": 4, "map_options": {"num_epochs": 5}}
    assert NUTSOptions.from_dict(opts.to_dict()) == opts
    assert set(MapOptions().to_dict(defaults=True)) == set(MapOptions.field_names())
    # the "map" fields of a subclass, for the inner "map" method
    assert EnsembleOptions(num_members=3, learning_rate=1e-2).to_map_options() == MapOptions(learning_rate=1e-2)


# ---------------------------------------------------------------------------------------------- unknown keys
def test_an_unknown_key_names_the_method_the_key_a_suggestion_and_the_accepted_keys():
    with pytest.raises(UnknownOptionError) as exc:
        make_options("bbb", init_scal=0.02)
    text = str(exc.value)
    assert text.startswith("method 'bbb': unknown option 'init_scal' (did you mean 'init_scale'?); the options are ")
    assert all(name in text for name in BBBOptions.field_names())
    assert isinstance(exc.value, ValueError) and isinstance(exc.value, TypeError)  # TypeError as factories had
    with pytest.raises(UnknownOptionError, match=r"unknown options 'zzz', 'learning_rat' \(did you mean "
                                                 r"'learning_rate'\?\); the options are b1, b2"):
        make_options("map", zzz=1, learning_rat=1e-3)
    with pytest.raises(UnknownOptionError, match=r"method 'nuts': map_options: unknown option 'num_epoch' \(did you "
                                                 r"mean 'num_epochs'\?\)"):
        NUTSOptions(map_options={"num_epoch": 5})
    with pytest.raises(UnknownOptionError, match=r"'num_draws' \(an ensemble's draws are its members: set "
                                                 r"num_members\)"):
        build_method("ensemble", MDN(2, (8,), feature_names=NAMES).model, PLAN, num_draws=10)
    with pytest.raises(UnknownOptionError, match=r"unknown option 'num_chain' .*'num_chains'"):
        NUTSOptions().replace(num_chain=2)


def test_fit_checks_the_options_before_reading_the_data(xy, monkeypatch):
    from numpyro_clustermass.inference import fitting

    monkeypatch.setattr(fitting, "_as_xy", _must_not_read)
    with pytest.raises(UnknownOptionError, match=r"method 'map': unknown option 'learning_rat' \(did you mean "
                                                 r"'learning_rate'\?\)"):
        fit(MDN(2, (8,), feature_names=NAMES), xy, learning_rat=1e-3, **TINY)
    with pytest.raises(ValueError, match=r"method 'laplace': max_params must be an integer >= 1; got 0"):
        fit(MDN(2, (8,), feature_names=NAMES), xy, method="laplace", max_params=0, **TINY)


# ---------------------------------------------------------------------------------------------- fit(options=)
def test_fit_with_options_equals_fit_with_keyword_options_bitwise(xy):
    x, _ = xy
    est = MDN(2, (8,), feature_names=NAMES)
    a = fit(est, xy, method="map", learning_rate=3e-3, schedule="constant", **TINY)
    ncm.inference.clear_cache()  # the second fit compiles afresh: no shared compiled method
    b = fit(est, xy, method="map", options=MapOptions(learning_rate=3e-3, schedule="constant"), **TINY)
    c = fit(est, xy, method="map", options={"learning_rate": 3e-3, "schedule": "constant"}, **TINY)
    for other in (b, c):
        assert other.method_options == a.method_options == {"learning_rate": 3e-3, "schedule": "constant"}
        assert other.config == a.config
        pa, po = a.posterior(x[:30]), other.posterior(x[:30])
        assert np.array_equal(np.asarray(pa.log_density), np.asarray(po.log_density))
        assert np.array_equal(pa.aleatoric_variance, po.aleatoric_variance)
        for k in a.history:
            if k != "epoch_time":
                assert np.array_equal(a.history[k], other.history[k], equal_nan=True)
    assert a.options == MapOptions(learning_rate=3e-3, schedule="constant")
    assert c.info.traces["epoch"] == 0  # the same options object: the configuration is compiled once


def test_options_and_keyword_options_together_are_refused(xy):
    est = MDN(2, (8,), feature_names=NAMES)
    with pytest.raises(TypeError, match=r"method 'map': give the options either as a MapOptions \(options=\) or as "
                                        r"keyword arguments, not both \(got options= and \['learning_rate'\]\)"):
        fit(est, xy, options=MapOptions(), learning_rate=1e-3, **TINY)
    with pytest.raises(TypeError, match=r"method 'map' takes MapOptions; got a BBBOptions \(the options of method "
                                        r"'bbb'\)"):
        fit(est, xy, method="map", options=BBBOptions(), **TINY)
    with pytest.raises(TypeError, match=r"method 'map' takes MapOptions; got a EnsembleOptions"):
        build_method("map", est.model, PLAN, EnsembleOptions())  # a subclass is not the method's class


def test_a_factory_takes_its_options_object_or_keyword_arguments():
    model = MDN(2, (8,), feature_names=NAMES).model
    factory = get_method("mc_dropout")
    assert factory(model, PLAN, MCDropoutOptions(num_draws=7)).num_draws == 7
    assert factory(model, PLAN, num_draws=7).num_draws == 7
    assert build_method("mc_dropout", model, PLAN, {"num_draws": 7}).num_draws == 7


# ---------------------------------------------------------------------------------------------- registry
def _toy_factory(model, plan, options=None, **kwargs):
    base = get_method("map")(model, plan)
    return base._replace(name="toy", num_draws=(options.num_draws if options is not None else kwargs["num_draws"]))


@dataclasses.dataclass(frozen=True, kw_only=True)
class _ToyOptions(MethodOptions):
    method_name = "toy_options_test"
    num_draws: int = 3

    def __post_init__(self):
        from numpyro_clustermass.inference.options import check_int

        object.__setattr__(self, "num_draws", check_int(self.method_name, "num_draws", self.num_draws, 1))


def test_register_method_with_and_without_an_options_class(xy):
    model = MDN(2, (8,), feature_names=NAMES).model
    register_method("toy_options_test", _toy_factory, overwrite=True, options=_ToyOptions)
    assert options_class("toy_options_test") is _ToyOptions
    assert build_method("toy_options_test", model, PLAN).num_draws == 3
    assert build_method("toy_options_test", model, PLAN, num_draws=5).num_draws == 5
    with pytest.raises(UnknownOptionError, match=r"method 'toy_options_test': unknown option 'num_draw' \(did you "
                                                 r"mean 'num_draws'\?\); the options are num_draws"):
        build_method("toy_options_test", model, PLAN, num_draw=5)
    # a method registered without an options class gets its keyword options as they are (as before)
    register_method("toy_kwargs_test", _toy_factory, overwrite=True)
    assert options_class("toy_kwargs_test") is None
    method = build_method("toy_kwargs_test", model, PLAN, num_draws=4)
    assert isinstance(method, IterativeMethod) and method.num_draws == 4
    assert make_options("toy_kwargs_test", {"num_draws": 4}) == {"num_draws": 4}
    f = fit(MDN(2, (8,), feature_names=NAMES), xy, method="toy_kwargs_test", num_draws=4, **TINY)
    assert f.method_options == {"num_draws": 4} and f.options == {"num_draws": 4}
    with pytest.raises(TypeError, match=r"must be a MethodOptions dataclass"):
        register_method("toy_bad_test", _toy_factory, options=dict)


# ---------------------------------------------------------------------------------------------- FitInfo
def test_fit_info_has_named_fields_and_reads_like_the_dict_it_was(xy):
    f = fit(MDN(2, (8,), feature_names=NAMES), xy, **TINY)
    info = f.info
    assert isinstance(info, FitInfo) and info.epochs_run == 3 and info["epochs_run"] == 3
    assert info.n_train + info.n_val == info.n_rows == 400 and info.get("n_val") == info.n_val
    assert info.interrupted is False and info.diverged_at_epoch is None and info.extras == {}
    assert "best_val_loss" in info and "num_divergent" not in info and info.get("num_divergent", 7) == 7
    assert list(info) == list(FitInfo.field_names()) and dict(info)["time_s"] == info.time_s
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.epochs_run = 4
    with pytest.raises(TypeError):
        info.extras["x"] = 1  # read-only
    with pytest.raises(KeyError):
        info["no_such_fact"]
    assert repr(f).startswith("Fit('mdn', method='map', epochs=3, best val loss=")


def test_fit_info_keeps_method_facts_in_extras():
    info = FitInfo.from_dict({"n_rows": 10, "num_latent": 54, "converged": True})
    assert info.n_rows == 10 and dict(info.extras) == {"num_latent": 54, "converged": True}
    assert info["converged"] is True and "num_latent" in info and len(info) == len(FitInfo.field_names()) + 2
    with pytest.raises(ValueError, match=r"extras \['n_rows'\] are named fields"):
        FitInfo(extras={"n_rows": 3})
    assert "num_latent=" not in repr(FitInfo(n_rows=1)) and "n_rows=1" in repr(FitInfo(n_rows=1))
    for other in (copy.deepcopy(info), pickle.loads(pickle.dumps(info))):  # as a dict could be
        assert isinstance(other, FitInfo) and dict(other) == dict(info)
