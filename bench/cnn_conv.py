"""The MNIST CNN's convolutions on CPU: XLA's convolution against shifted slices and one matmul.

The CNN of configs/mnist_cnn.yaml (3x3 'SAME' convolutions of 32 and 64 channels, 2x2
pooling, dense 128, 10 classes) at batch 128 on 28x28 images, built twice from one seed:
once with `lax.conv_general_dilated`, once with `shifted_matmul_conv` (what the CNN uses on
CPU). Two programs each: one jitted gradient, and --steps SGD steps under `lax.scan` (how a
fused epoch runs them). Interleaved, median of --repeats after a warm-up,
block_until_ready. The gradients must agree.

    JAX_NUM_CPU_DEVICES=1 python bench/cnn_conv.py [--repeats 3] [--steps 10]
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxtrain.model.kernels import Kernels
from jaxtrain.model.models import CNN


def cnn(xla_conv: bool) -> CNN:
    kernels = Kernels(conv_impl="xla" if xla_conv else "im2col")
    return CNN((28, 28, 1), (32, 64), (3, 3), (128,), 10, rngs=nnx.Rngs(0), kernels=kernels)


def programs(model: CNN, steps: int):
    graphdef, params = nnx.split(model)

    def loss(p, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(nnx.merge(graphdef, p)(x), y).mean()

    def fused(p, x, y):
        def body(p, _):
            return jax.tree.map(lambda a, g: a - 0.01 * g, p, jax.grad(loss)(p, x, y)), None
        return jax.lax.scan(body, p, None, length=steps)[0]

    return params, jax.jit(jax.grad(loss)), jax.jit(fused)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((128, 784), np.float32))
    y = jnp.asarray(rng.integers(0, 10, 128))
    variants = {name: programs(cnn(name == "xla_conv"), args.steps) for name in ("xla_conv", "shifted_matmul")}
    grads = [jax.device_get(grad(p, x, y)) for p, grad, _ in variants.values()]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5), *grads)
    for p, _, fused in variants.values():
        jax.block_until_ready(fused(p, x, y))   # warm-up (compile)
    times = {(name, kind): [] for name in variants for kind in ("grad", "fused")}
    for _ in range(args.repeats):
        for name, (p, grad, fused) in variants.items():
            for kind, f in (("grad", grad), ("fused", fused)):
                t = time.perf_counter()
                jax.block_until_ready(f(p, x, y))
                times[name, kind].append(time.perf_counter() - t)
    per_step = {key: float(np.median(t)) / (args.steps if key[1] == "fused" else 1) for key, t in times.items()}
    for (name, kind), t in per_step.items():
        print(f"{name:15s} {kind:5s}: {t * 1e3:8.1f} ms per step (median of {args.repeats})")
    for kind in ("grad", "fused"):
        print(f"{kind}: xla_conv / shifted_matmul = "
              f"{per_step['xla_conv', kind] / per_step['shifted_matmul', kind]:.2f}x")


if __name__ == "__main__":
    main()
