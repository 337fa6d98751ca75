"""2x2 max pooling in the MNIST CNN's step: reduce_window against reshape-and-max.

The jitted gradient of two conv(3x3, SAME) + ReLU + pool blocks (1->16->32 channels) at
batch 128 on 28x28 images, both variants timed interleaved, median of --repeats after a
warm-up, block_until_ready. The gradients must agree (they are the same function).

    JAX_NUM_CPU_DEVICES=1 python bench/cnn_pooling.py [--repeats 5]
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxtrain.model.kernels import max_pool_2x2


def reduce_window_pool(h):
    return jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def conv(x, k):
    return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def grad_step(pool):
    def loss(params, x):
        h = pool(jax.nn.relu(conv(x, params[0])))
        return jnp.sum(pool(jax.nn.relu(conv(h, params[1]))) ** 2)
    return jax.jit(jax.grad(loss))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((128, 28, 28, 1), np.float32))
    params = (jnp.asarray(rng.normal(size=(3, 3, 1, 16)).astype(np.float32) * 0.1),
              jnp.asarray(rng.normal(size=(3, 3, 16, 32)).astype(np.float32) * 0.1))
    steps = {"reduce_window": grad_step(reduce_window_pool), "reshape_max": grad_step(max_pool_2x2)}
    grads = {name: f(params, x) for name, f in steps.items()}   # warm-up (compile)
    for a, b in zip(*grads.values()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    times = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, f in steps.items():
            t = time.perf_counter()
            jax.block_until_ready(f(params, x))
            times[name].append(time.perf_counter() - t)
    med = {name: float(np.median(t)) for name, t in times.items()}
    for name, t in med.items():
        print(f"{name}: {t * 1e3:.1f} ms per step (median of {args.repeats})")
    print(f"reduce_window / reshape_max: {med['reduce_window'] / med['reshape_max']:.2f}x")


if __name__ == "__main__":
    main()
