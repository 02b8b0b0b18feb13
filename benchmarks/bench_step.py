"""Benchmark: one training step of BBB and MC dropout against MAP's, the package's own ``method.step``.

Where ``bench_bbb_throughput.py`` and the suite's ``train_bayes`` entry time whole epochs of ``fit`` (each with
its held-out evaluation), this times the step alone: ``--steps`` calls of ``impl.step`` inside one compiled
``lax.scan`` over the same batch, for the lecture MDN (16 components, 128-128-64: 29.8k weights) at batch 512
by default. The methods are built the way ``fit`` builds them (``epochs.compiled_method``, default options; MC
dropout at the estimator's ``dropout_rate``, default 0.1 here), their states from ``impl.init``. Rounds alternate
between the methods (the machines are shared and noisy); each method's best round is compared with MAP's.

It also times each method's ``impl.evaluate``, the held-out loss that ends every epoch, on ``--eval-rows``
validation rows (600: the 10% validation of ``bench_bbb_throughput.py``'s default mock); BBB's is an ELBO of
``eval_particles`` (8) weight draws, one forward pass each.

``bbb_noise_floor.py`` gives the floor for BBB: the same step written by hand, without package code.

Run:  python3 benchmarks/bench_step.py  [--hidden 128,128,64] [--components 16] [--batch 512] [--steps 200]
      [--rounds 5] [--methods map,bbb,mc_dropout] [--eval-rows 600]
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from numpyro_clustermass.estimators import MDN
from numpyro_clustermass.inference import TrainingPlan, make_options
from numpyro_clustermass.inference.epochs import compiled_method

NUM_DATA = 60_000  # the minibatch likelihood's scale (num_data / batch) and BBB's KL weight; not the step's cost


def step_loop(impl, steps: int):
    """A compiled ``lax.scan`` of ``steps`` calls of ``impl.step`` on one batch: ``run(state, x, y)``."""

    @jax.jit
    def run(state, x, y):
        def one(s, _):
            s, loss = impl.step(s, x, y)
            return s, loss

        return jax.lax.scan(one, state, None, length=steps)

    return run


def measure(hidden=(128, 128, 64), components: int = 16, batch: int = 512, steps: int = 200, rounds: int = 5,
            methods=("map", "bbb", "mc_dropout"), dropout_rate: float = 0.1, seed: int = 0,
            eval_rows: int = 600) -> dict:
    """Time ``steps`` training steps per method in alternating rounds, and one evaluation on ``eval_rows`` rows.

    Returns a dict: ``ms_per_step`` (method -> best milliseconds per step), ``rounds`` (method -> per-round
    list), ``ratio`` (method -> MAP's time per step / this method's: the throughput against MAP),
    ``ms_per_eval`` (method -> best milliseconds of ``impl.evaluate``, one per round), the sizes and
    ``num_weights``.
    """
    for name, value in (("steps", steps), ("rounds", rounds), ("eval_rows", eval_rows)):
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1; got {value}")
    if methods[0] != "map":
        raise ValueError(f"the first method is the reference and must be 'map'; got {methods}")
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(batch, 14)).astype(np.float32))
    y = jnp.asarray(rng.normal(size=batch).astype(np.float32))
    x_val = jnp.asarray(rng.normal(size=(int(eval_rows), 14)).astype(np.float32))
    y_val = jnp.asarray(rng.normal(size=int(eval_rows)).astype(np.float32))
    plan = TrainingPlan(num_data=NUM_DATA, batch_size=batch, steps_per_epoch=NUM_DATA // batch, num_epochs=10,
                        num_features=14)
    runs = {}
    num_weights = None
    for i, name in enumerate(methods):
        est = MDN(num_components=components, hidden=tuple(hidden),
                  dropout_rate=dropout_rate if name == "mc_dropout" else 0.0)
        impl = compiled_method(est, name, make_options(name), plan).impl
        state = impl.init(jax.random.key(seed + i), x, y)
        run, evaluate = step_loop(impl, steps), jax.jit(impl.evaluate)
        jax.block_until_ready((run(state, x, y), evaluate(state, x_val, y_val)))  # compile
        runs[name] = (run, evaluate, state)
        if name == "map":
            num_weights = sum(int(np.size(v)) for v in jax.tree.leaves(impl.get_params(state)))
    per_round = {name: [] for name in methods}
    evals = {name: [] for name in methods}
    for _ in range(rounds):
        for name in methods:
            run, evaluate, state = runs[name]
            t0 = time.perf_counter()
            jax.block_until_ready(run(state, x, y))
            t1 = time.perf_counter()
            jax.block_until_ready(evaluate(state, x_val, y_val))
            evals[name].append(1e3 * (time.perf_counter() - t1))
            per_round[name].append(1e3 * (t1 - t0) / steps)
    best = {name: min(v) for name, v in per_round.items()}
    ratio = {name: best["map"] / best[name] for name in methods}
    return dict(ms_per_step=best, rounds=per_round, ratio=ratio, ms_per_eval={k: min(v) for k, v in evals.items()},
                hidden=list(hidden), components=components, batch=batch, steps=steps, eval_rows=int(eval_rows),
                num_weights=num_weights)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", default="128,128,64")
    ap.add_argument("--components", type=int, default=16)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--methods", default="map,bbb,mc_dropout", help="comma-separated; the first must be map")
    ap.add_argument("--dropout-rate", type=float, default=0.1, help="MC dropout's rate")
    ap.add_argument("--eval-rows", type=int, default=600, help="validation rows of the timed evaluation")
    args = ap.parse_args(argv)
    hidden = tuple(int(h) for h in args.hidden.split(","))
    m = measure(hidden, args.components, args.batch, args.steps, args.rounds, tuple(args.methods.split(",")),
                args.dropout_rate, eval_rows=args.eval_rows)
    d = jax.devices()[0]
    print(f"{d.platform} ({d.device_kind}), jax {jax.__version__}; MDN({m['components']}, {tuple(m['hidden'])}): "
          f"{m['num_weights']} weights, batch {m['batch']}; best of {args.rounds} alternating rounds of "
          f"{m['steps']} steps")
    for name, ms in m["ms_per_step"].items():
        spread = ", ".join(f"{v:.3f}" for v in m["rounds"][name])
        print(f"  {name:<11} {ms:7.3f} ms/step   map/this {m['ratio'][name]:5.3f}   (rounds: {spread});  "
              f"evaluate on {m['eval_rows']} rows {m['ms_per_eval'][name]:6.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
