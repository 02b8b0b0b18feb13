"""How fast can Bayes by Backprop train at all, next to MAP, on this device? A floor for the BBB/MAP ratio.

The suite compares ``fit(method="bbb")`` with ``fit(method="map")`` on the lecture's MDN (issue 15's target:
0.8x on CPU). This script times hand-written training steps of the same net (trunk 128-128-64, 16 Gaussians,
29.8k weights, batch 512, Adam), all as one jit-compiled ``lax.scan`` of 200 steps, so that no package code is
involved:

- ``map``: the mixture's negative log-likelihood, gradients, Adam.
- ``bbb``: the weights as one flat vector, ``w = loc + softplus(rho) * eps`` with ``eps`` a fresh
  ``jax.random.normal`` draw every step (threefry, JAX's default), plus the analytic KL against a unit Normal
  prior; gradients and Adam over ``loc`` and ``rho`` (twice the parameters).
- ``bbb, fixed eps``: the same with one ``eps`` drawn before the loop (what the step costs without its noise).
- ``bbb, no KL``: fresh noise, no KL term.
- ``bbb, package noise``: fresh noise from ``numpyro_clustermass._random.normal`` (the same numbers as
  ``jax.random.normal``, its Threefry hash written out and drawn in two halves), which the ``"bbb"`` guide uses.

The ratio MAP time / BBB time of the hand-written steps is what any implementation of this BBB can reach here;
the package's ratio is printed by ``python -m benchmarks --only train_bayes``.

    python3 benchmarks/bbb_noise_floor.py        # about 30 s
"""

from __future__ import annotations

import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from numpyro_clustermass._random import normal

HIDDEN, COMPONENTS, BATCH, FEATURES, STEPS = (128, 128, 64), 16, 512, 14, 200


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        for h in HIDDEN:
            x = nn.relu(nn.Dense(h)(x))
        return nn.Dense(3 * COMPONENTS)(x)


def main() -> int:
    net = _Net()
    kx, ky = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (BATCH, FEATURES))
    y = jax.random.normal(ky, (BATCH,))
    p0 = net.init(jax.random.key(1), x)
    flat0, unravel = ravel_pytree(p0)
    n = int(flat0.size)
    opt = optax.adam(1e-3)

    def nll(params):
        o = net.apply(params, x)
        logits, mu, log_sd = o[:, :COMPONENTS], o[:, COMPONENTS:2 * COMPONENTS], o[:, 2 * COMPONENTS:]
        lp = jax.nn.log_softmax(logits) - 0.5 * ((y[:, None] - mu) / jnp.exp(log_sd)) ** 2 - log_sd
        return -jax.nn.logsumexp(lp, -1).mean()

    def kl(loc, sd):
        return jnp.sum(-jnp.log(sd) + 0.5 * (sd**2 + loc**2) - 0.5)

    fixed_eps = jax.random.normal(jax.random.key(2), (n,))

    def bbb_loss(q, key, fresh, with_kl, draw=jax.random.normal):
        loc, rho = q
        sd = jax.nn.softplus(rho)
        eps = draw(key, (n,)) if fresh else fixed_eps
        loss = nll(unravel(loc + sd * eps))
        return loss + kl(loc, sd) / 60_000 if with_kl else loss

    def adam_step(loss_fn):
        def step(carry, key):
            params, state = carry
            loss, grad = jax.value_and_grad(loss_fn)(params, key)
            updates, state = opt.update(grad, state, params)
            return (optax.apply_updates(params, updates), state), loss
        return step

    def per_step_ms(step, params):
        run = jax.jit(lambda c, ks: jax.lax.scan(step, c, ks))
        keys = jax.random.split(jax.random.key(3), STEPS)
        carry = (params, opt.init(params))
        jax.block_until_ready(run(carry, keys))  # compile
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            jax.block_until_ready(run(carry, keys))
            best = min(best, time.perf_counter() - t0)
        return 1e3 * best / STEPS

    q0 = (flat0, jnp.full(n, -4.6))  # softplus(-4.6) = 0.01, the package's initial scale
    rows = [("map", per_step_ms(adam_step(lambda p, k: nll(p)), p0))]
    for label, fresh, with_kl in (("bbb", True, True), ("bbb, fixed eps", False, True), ("bbb, no KL", True, False)):
        rows.append((label, per_step_ms(adam_step(lambda q, k, f=fresh, w=with_kl: bbb_loss(q, k, f, w)), q0)))
    rows.append(("bbb, package noise", per_step_ms(adam_step(lambda q, k: bbb_loss(q, k, True, True, normal)), q0)))
    d = jax.devices()[0]
    print(f"{d.platform} ({d.device_kind}), jax {jax.__version__}; {n} weights, batch {BATCH}, best of 5 x {STEPS} steps")
    t_map = rows[0][1]
    for label, ms in rows:
        print(f"  {label:<20} {ms:7.3f} ms/step   map/this {t_map / ms:5.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
