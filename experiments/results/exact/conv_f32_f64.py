# One 5x5 stride-1 convolution on integer-valued data: float32 (oneDNN) vs float64 (Eigen conv,
# and im2col + matmul), 1 intra-op thread, median of 20.
# Run: .venv/bin/python experiments/results/exact/conv_f32_f64.py
import time

import numpy as np
import tensorflow as tf

tf.config.threading.set_intra_op_parallelism_threads(1)


def bench(f, *a, n=20):
  f(*a)
  ts = []
  for _ in range(n):
    t = time.perf_counter()
    f(*a).numpy()
    ts.append(time.perf_counter() - t)
  return np.median(ts) * 1e3


for h, w, cin, cout, k in [(32, 48, 60, 32, 5), (32, 48, 32, 32, 5), (128, 192, 480, 224, 5)][:3]:
  x = np.round(np.random.randn(1, h, w, cin) * 1000)
  kk = np.round(np.random.randn(k, k, cin, cout) * 1000)
  x32, k32 = tf.constant(x, tf.float32), tf.constant(kk, tf.float32)
  x64, k64 = tf.constant(x, tf.float64), tf.constant(kk, tf.float64)
  c32 = tf.function(lambda x, k: tf.nn.conv2d(x, k, 1, "SAME"))
  c64 = tf.function(lambda x, k: tf.nn.conv2d(x, k, 1, "SAME"))

  def im2col(x, k):
    p = tf.image.extract_patches(
      x, [1, k.shape[0], k.shape[1], 1], [1, 1, 1, 1], [1, 1, 1, 1], "SAME"
    )
    return tf.reshape(
      tf.matmul(tf.reshape(p, [-1, p.shape[-1]]), tf.reshape(k, [-1, k.shape[-1]])),
      [1, x.shape[1], x.shape[2], -1],
    )

  i64 = tf.function(im2col)
  print(
    (h, w, cin, cout),
    "f32 %.2f ms f64 conv %.2f ms f64 im2col %.2f ms"
    % (bench(c32, x32, k32), bench(c64, x64, k64), bench(i64, x64, k64)),
    flush=True,
  )
