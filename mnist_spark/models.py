"""Keras 3 architectures by name.

Every model takes ``(height, width, channels)`` images with raw pixel values
0-255 (a ``Rescaling`` layer divides by 255 inside the model), ends in a
softmax over the classes, and is compiled with Adam and sparse categorical
cross-entropy. So a saved model scores raw pixels from Spark's image struct
with no preprocessing outside it.

========== ======================================================= ==========
name       layers                                                  from
========== ======================================================= ==========
mlp        784 - 784 - 10                                          tutorial baseline
simple_cnn conv 32 5x5, pool, dropout 0.2, dense 128                tutorial
larger_cnn conv 30 5x5, pool, 15 3x3, pool, dropout, 128, 50        tutorial
convnet    conv 64 3x3, pool, 128 3x3, pool, dense 128              keras-io
bn_cnn     conv 32 5x5, BN, pool; 2x conv 64 3x3 + BN, pool;        default
           dropout, dense 128 + BN, dropout
========== ======================================================= ==========
"""

from __future__ import annotations

import contextlib
import weakref

import numpy as np

DEFAULT_MODEL = "bn_cnn"


def _mlp(keras, inputs, num_classes):
    pixels = int(inputs.shape[1] * inputs.shape[2] * inputs.shape[3])
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(pixels, activation="relu", kernel_initializer="he_normal")(x)
    return keras.layers.Dense(num_classes, activation="softmax")(x)


def _simple_cnn(keras, inputs, num_classes):
    x = keras.layers.Conv2D(32, 5, activation="relu")(inputs)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Dropout(0.2)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(128, activation="relu")(x)
    return keras.layers.Dense(num_classes, activation="softmax")(x)


def _larger_cnn(keras, inputs, num_classes):
    x = keras.layers.Conv2D(30, 5, activation="relu")(inputs)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(15, 3, activation="relu")(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Dropout(0.2)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(128, activation="relu")(x)
    x = keras.layers.Dense(50, activation="relu")(x)
    return keras.layers.Dense(num_classes, activation="softmax")(x)


def _convnet(keras, inputs, num_classes):
    x = keras.layers.Conv2D(64, 3, activation="relu")(inputs)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(128, 3, activation="relu")(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(128, activation="relu")(x)
    return keras.layers.Dense(num_classes, activation="softmax")(x)


def _conv_bn(keras, x, filters, size):
    x = keras.layers.Conv2D(filters, size, use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)
    return keras.layers.Activation("relu")(x)


def _bn_cnn(keras, inputs, num_classes):
    x = _conv_bn(keras, inputs, 32, 5)
    x = keras.layers.MaxPooling2D(2)(x)
    x = _conv_bn(keras, x, 64, 3)
    x = _conv_bn(keras, x, 64, 3)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dropout(0.3)(x)
    x = keras.layers.Dense(128, use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Activation("relu")(x)
    x = keras.layers.Dropout(0.3)(x)
    return keras.layers.Dense(num_classes, activation="softmax")(x)


ARCHITECTURES = {
    "mlp": _mlp,
    "simple_cnn": _simple_cnn,
    "larger_cnn": _larger_cnn,
    "convnet": _convnet,
    "bn_cnn": _bn_cnn,
}


def check_model_name(name: str) -> str:
    """Return ``name`` if it is a known architecture, else raise a ValueError listing them."""
    if name not in ARCHITECTURES:
        raise ValueError(f"{name!r} is not a known model; choose one of: {', '.join(ARCHITECTURES)}")
    return name


def start_keras_import():
    """Import TensorFlow and Keras in a daemon thread, and return it.

    A driver that builds a model only after its Spark work (a training run:
    the validation images, the shards) spends the import's seconds of one
    core there meanwhile, while that work mostly waits on the executors. A
    later ``import keras`` in another thread waits for this one to finish
    (Python's import lock), so callers need not join it. A failed import is
    left to that later import to raise.
    """
    import threading

    def load():
        from mnist_spark.session import import_keras

        with contextlib.suppress(Exception):
            import_keras()

    thread = threading.Thread(target=load, name="import-keras", daemon=True)
    thread.start()
    return thread


def build_model(
    name: str = DEFAULT_MODEL,
    *,
    input_shape=(28, 28, 1),
    num_classes: int = 10,
    learning_rate: float = 1e-3,
    seed: int | None = None,
):
    """Build and compile a model by name.

    Parameters
    ----------
    name : str
        One of :data:`ARCHITECTURES`.
    input_shape : tuple
        ``(height, width, channels)`` of the images.
    num_classes : int
        Width of the softmax.
    learning_rate : float
        Adam's initial learning rate.
    seed : int, optional
        Seeds Python, numpy and TensorFlow first, so the initial weights are
        reproducible.

    Returns
    -------
    keras.Model

    Examples
    --------
    >>> model = build_model("simple_cnn", seed=0)  # doctest: +SKIP
    >>> model.output_shape  # doctest: +SKIP
    (None, 10)
    """
    from mnist_spark.session import import_keras

    import_keras()
    import keras

    check_model_name(name)
    if seed is not None:
        keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    scaled = keras.layers.Rescaling(1.0 / 255, name="scale")(inputs)
    outputs = ARCHITECTURES[name](keras, scaled, num_classes)
    model = keras.Model(inputs, outputs, name=name)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def shape_text(shape) -> str:
    """A Keras shape as text, ``(batch, 28, 28, 1)``; several shapes as a list of them.

    Examples
    --------
    >>> shape_text((None, 10))
    '(batch, 10)'
    >>> shape_text([(None, 4), (None, 2)])
    '[(batch, 4), (batch, 2)]'
    """
    if isinstance(shape, (list, tuple)) and shape and all(isinstance(s, (list, tuple)) for s in shape):
        return "[" + ", ".join(shape_text(s) for s in shape) + "]"
    return "(" + ", ".join("batch" if side is None else str(side) for side in shape) + ")"


def summary_text(model) -> str:
    """``model.summary()`` as text."""
    lines = []
    model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line))
    return "\n".join(lines)


def batchnorm_layers(model) -> list:
    """The model's BatchNormalization layers, outermost model first, in graph order."""
    import keras

    return [
        layer
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]


#: Each model's compiled scoring step (:func:`score`).
_SCORERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def score(model, images, labels, *, batch_size: int = 1000) -> tuple[float, float]:
    """``model``'s mean loss (its compiled loss) and accuracy on ``images``, in inference mode.

    What ``model.evaluate`` returns for a model compiled with a sparse loss
    and ``"accuracy"``, from one compiled step per batch made once per
    model: on 2 cores ``evaluate`` scores 10,000 MNIST images in 0.75 s or
    1.3 s from one call to the next (its input pipeline's threads), this in
    a steady 0.7 s. Images go in as they are (the model casts them).
    """
    if model not in _SCORERS:
        import keras
        import tensorflow as tf

        loss = keras.losses.get(model.loss)

        @tf.function(reduce_retracing=True)
        def step(x, y):
            probabilities = model(x, training=False)
            predicted = tf.argmax(probabilities, axis=-1, output_type=y.dtype)
            return tf.reduce_sum(loss(y, probabilities)), tf.reduce_sum(tf.cast(predicted == y, tf.float32))

        _SCORERS[model] = step
    step = _SCORERS[model]
    labels = np.asarray(labels).astype(np.int32)
    total_loss = total_right = 0.0
    for start in range(0, len(labels), batch_size):
        batch_loss, right = step(images[start : start + batch_size], labels[start : start + batch_size])
        total_loss, total_right = total_loss + float(batch_loss), total_right + float(right)
    return total_loss / len(labels), total_right / len(labels)


#: Each model's compiled BatchNorm probes (:func:`reestimate_batchnorm`).
_PROBES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _batchnorm_probes(model) -> list:
    """``model``'s BatchNorm layers, each with a compiled function: a batch's moments at the layer's input.

    Made once per model: the function runs the model in inference mode up to
    the layer's input and returns that input's mean and variance per
    channel. Compiled, it costs about half the eager calls' time.
    """
    if model not in _PROBES:
        import keras
        import tensorflow as tf

        probes = []
        for layer in batchnorm_layers(model):
            probe = keras.Model(model.inputs, layer.input)

            @tf.function(reduce_retracing=True)
            def moments(images, probe=probe, layer=layer):
                x = probe([images], training=False)
                channel = layer.axis if layer.axis >= 0 else len(x.shape) + layer.axis
                axes = [a for a in range(len(x.shape)) if a != channel]
                return keras.ops.mean(x, axis=axes), keras.ops.var(x, axis=axes), tf.size(x) // tf.shape(x)[channel]

            probes.append((layer, moments))
        _PROBES[model] = probes
    return _PROBES[model]


def reestimate_batchnorm(model, images, *, batch_size: int = 512) -> int:
    """Set every BatchNorm layer's moving mean and variance to their values on ``images``.

    Averaged replicas, and models trained for few steps, carry moving
    statistics that do not belong to their weights: Keras' moving averages
    (momentum 0.99) still hold much of their initial mean 0 and variance 1
    after a few hundred steps, and an average of replicas' statistics is not
    the statistics of the averaged weights. Inference with them can score at
    chance. Layer by layer, in graph order, this runs the images through the
    model in inference mode up to the layer's input (so it sees the layers
    before it with their new statistics) and stores that input's exact mean
    and variance per channel. Returns the number of layers set.

    Parameters
    ----------
    model : keras.Model
        A functional or sequential model.
    images : numpy.ndarray
        A sample of training images, as the model takes them.
    batch_size : int
        Images per forward pass.
    """
    probes = _batchnorm_probes(model)
    for layer, moments in probes:
        counts, means, variances = [], [], []
        for start in range(0, len(images), batch_size):
            mean, variance, count = moments(images[start : start + batch_size])
            counts.append(int(count))
            means.append(np.asarray(mean, np.float64))
            variances.append(np.asarray(variance, np.float64))
        # The batches' moments combined exactly (Chan et al.): mean of variances plus variance of means.
        shares = np.array(counts, np.float64)[:, None] / sum(counts)
        mean = (shares * np.array(means)).sum(axis=0)
        variance = (shares * (np.array(variances) + np.square(np.array(means) - mean))).sum(axis=0)
        layer.moving_mean.assign(mean.astype(np.float32))
        layer.moving_variance.assign(variance.astype(np.float32))
    return len(probes)
