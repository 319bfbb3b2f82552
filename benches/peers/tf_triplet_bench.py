#!/usr/bin/env python3
"""Peer baseline: Keras/TensorFlow ResNet50 triplet-loss trainer throughput (CPU).

Mirrors the seed stack: keras.applications.ResNet50(weights=None, include_top=False,
pooling='avg') -> Dropout(0.5) -> Dense(512) [-> L2 normalize], shared by a siamese
triplet model with a custom train_step: loss = mean(max(d_ap - d_an + 0.5, 0)) with
squared Euclidean distances, Adam(1e-4). By default only layers named 'conv5_*' and
the head are trainable.

Inputs are synthetic random tensors held in memory (no decode / augmentation cost).

Usage (versions pinned in requirements-tf.txt beside this file; see README.md there):
  tf_triplet_bench.py train --size 224 --batch 8 [--all] [--windows 3 --steps 4]
  tf_triplet_bench.py infer --size 224 --batch 64 [--windows 3 --steps 3] [--bf16]
Prints one JSON line with the result; for training both triplets/s and images/s
(3 per triplet), the units of `vitrine bench train`.
"""
import argparse
import json
import os
import resource
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import keras  # noqa: E402


def build_embedder(size, train_all, l2):
    base = keras.applications.ResNet50(
        weights=None, include_top=False, pooling="avg", input_shape=(size, size, 3)
    )
    if not train_all:
        for layer in base.layers:
            layer.trainable = layer.name.startswith("conv5_")
    x = keras.layers.Dropout(0.5)(base.output)
    x = keras.layers.Dense(512)(x)
    if l2:
        x = keras.layers.UnitNormalization()(x)
    return keras.Model(base.input, x, name="embedder")


class TripletModel(keras.Model):
    def __init__(self, embedder, margin=0.5, **kw):
        super().__init__(**kw)
        self.embedder = embedder
        self.margin = margin
        self.loss_tracker = keras.metrics.Mean(name="loss")

    def call(self, inputs, training=False):
        a, p, n = inputs
        ea = self.embedder(a, training=training)
        ep = self.embedder(p, training=training)
        en = self.embedder(n, training=training)
        d_ap = tf.reduce_sum(tf.square(ea - ep), axis=-1)
        d_an = tf.reduce_sum(tf.square(ea - en), axis=-1)
        return d_ap, d_an

    def train_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            d_ap, d_an = self(x, training=True)
            loss = tf.reduce_mean(tf.maximum(d_ap - d_an + self.margin, 0.0))
        tvars = self.embedder.trainable_weights
        grads = tape.gradient(loss, tvars)
        self.optimizer.apply_gradients(zip(grads, tvars))
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}

    @property
    def metrics(self):
        return [self.loss_tracker]


def cpu_s():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def param_counts(model):
    tr = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    nt = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
    return tr, nt


def bench_train(args):
    emb = build_embedder(args.size, args.all, not args.no_l2)
    model = TripletModel(emb)
    model.compile(optimizer=keras.optimizers.Adam(1e-4))
    rng = np.random.default_rng(0)
    shape = (args.batch, args.size, args.size, 3)
    a, p, n = (rng.standard_normal(shape, dtype=np.float32) for _ in range(3))
    # tensors on device once, so only the step is timed
    a, p, n = (tf.constant(t) for t in (a, p, n))
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        model.train_on_batch((a, p, n))
    warm_s = time.perf_counter() - t0
    windows, util = [], []
    for _ in range(args.windows):
        t0, c0 = time.perf_counter(), cpu_s()
        for _ in range(args.steps):
            logs = model.train_on_batch((a, p, n), return_dict=True)
        dt = time.perf_counter() - t0
        util.append(round((cpu_s() - c0) / dt, 2))
        windows.append(args.steps * args.batch / dt)
    tr, nt = param_counts(emb)
    return {
        "mode": "train",
        "size": args.size,
        "batch_triplets": args.batch,
        "trainable": "all" if args.all else "conv5+head",
        "trainable_params": tr,
        "frozen_params": nt,
        "warmup_steps": args.warmup,
        "warmup_s": round(warm_s, 2),
        "steps_per_window": args.steps,
        "triplets_per_s_windows": [round(w, 3) for w in windows],
        "triplets_per_s_best": round(max(windows), 3),
        "images_per_s_best": round(3 * max(windows), 3),
        "cores_used_per_window": util,
        "s_per_step_best": round(args.batch / max(windows), 3),
        "last_loss": float(logs["loss"]),
    }


def bench_infer(args):
    emb = build_embedder(args.size, True, not args.no_l2)
    fwd = tf.function(lambda x: emb(x, training=False))
    rng = np.random.default_rng(0)
    x = tf.constant(
        rng.standard_normal((args.batch, args.size, args.size, 3), dtype=np.float32)
    )
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        fwd(x).numpy()
    warm_s = time.perf_counter() - t0
    windows, util = [], []
    for _ in range(args.windows):
        t0, c0 = time.perf_counter(), cpu_s()
        for _ in range(args.steps):
            fwd(x).numpy()
        dt = time.perf_counter() - t0
        util.append(round((cpu_s() - c0) / dt, 2))
        windows.append(args.steps * args.batch / dt)
    return {
        "mode": "infer",
        "size": args.size,
        "batch": args.batch,
        "warmup_s": round(warm_s, 2),
        "images_per_s_windows": [round(w, 2) for w in windows],
        "images_per_s_best": round(max(windows), 2),
        "cores_used_per_window": util,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["train", "infer"])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--all", action="store_true", help="train all layers")
    ap.add_argument("--no-l2", action="store_true")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--windows", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument(
        "--bf16",
        action="store_true",
        help="Keras mixed_bfloat16 policy (bf16 compute, f32 variables): the peer of "
        "vitrine's model.precision = \"bf16\"",
    )
    args = ap.parse_args()
    if args.bf16:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    t0 = time.perf_counter()
    res = bench_train(args) if args.mode == "train" else bench_infer(args)
    res["total_s"] = round(time.perf_counter() - t0, 1)
    res["tf"] = tf.__version__
    res["keras"] = keras.__version__
    res["intra_op_threads"] = tf.config.threading.get_intra_op_parallelism_threads()
    res["onednn"] = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default(on)")
    res["policy"] = keras.mixed_precision.global_policy().name
    res["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
