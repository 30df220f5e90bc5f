"""Spark ML stages for deep learning on images: train, score and query Keras models.

sparkdl's deep-learning stages (``KerasImageFileEstimator``,
``KerasImageFileTransformer``, ``DeepImagePredictor``,
``registerKerasImageUDF``) on pyspark 4 and Keras 3, in pure Python:

- :class:`KerasImageClassifier` is an ``Estimator``: ``fit`` trains a built-in
  architecture (:data:`mnist_spark.models.ARCHITECTURES`) or a saved
  ``.keras`` model with the data-parallel trainer of ``jobs/train_cnn.py``
  (:func:`mnist_spark.training.train`) and returns a
  :class:`KerasImageClassificationModel`, whose ``transform`` adds
  ``prediction`` (double) and ``probability`` (a vector), so
  ``MulticlassClassificationEvaluator`` scores it as it is. It works in a
  ``Pipeline``, ``CrossValidator`` and ``TrainValidationSplit``;
  :meth:`KerasImageClassifier.fitMultiple` decodes the training images once
  for every point of a parameter grid.
- :class:`KerasImageTransformer` scores any saved ``.keras`` model on an image
  column and writes its output as a vector.
- :class:`DeepImagePredictor` runs a ``keras.applications`` network with its
  ImageNet classifier (sparkdl's API), optionally decoded to the ``topK``
  class names.
- :func:`register_keras_udf` makes a saved model a SQL function:
  ``SELECT digit(image) FROM images``.

Every stage saves and loads with ``Pipeline``/``PipelineModel``; the ``.keras``
file is copied into the saved folder, so a loaded pipeline needs nothing else.
Scoring is :func:`mnist_spark.evaluation.predict` (the model broadcast once,
loaded once per Python worker, run on Arrow batches of explicit size), and
images that are not the model's input size or channels are made so by
:func:`mnist_spark.featurizer.resize_images`, the one resize routine. Params are
checked on the driver before any task runs. TensorFlow is imported only
inside the functions that run a model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import time
import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np
from pyspark import keyword_only
from pyspark.ml import Estimator, Model, Transformer
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasInputCol, HasLabelCol, HasOutputCol, HasPredictionCol, HasProbabilityCol, HasSeed
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable

from mnist_spark import evaluation, featurizer, images, models, persistence, storage, training
from mnist_spark import labels as label_subset
from mnist_spark import weights as weight_files

logger = logging.getLogger(__name__)

#: The name of the model file inside a saved stage's folder.
MODEL_FILE = persistence.MODEL_FILE
#: Keras' ImageNet class index, read by :class:`DeepImagePredictor` (never downloaded).
CLASS_INDEX_FILE = "imagenet_class_index.json"
CLASS_INDEX_URL = "https://storage.googleapis.com/download.tensorflow.org/data/" + CLASS_INDEX_FILE
#: ``channelOrder`` choices: Spark's own (what models trained on Spark image structs see) or RGB.
CHANNEL_ORDERS = ("BGR", "RGB")
#: What a SQL function from :func:`register_keras_udf` returns.
UDF_OUTPUTS = ("prediction", "probabilities")

# --------------------------------------------------------------------------- param converters

_choice, _whole = featurizer._choice, featurizer._whole


def _number(param: str, minimum: float, *, above: bool = False, maximum: float | None = None):
    """A converter to a finite float ``>= minimum`` (``> minimum`` when ``above``), ``<= maximum``."""

    def convert(value):
        if isinstance(value, bool):
            raise TypeError(f"{param} must be a number, found {value!r}")
        value = TypeConverters.toFloat(value)
        low_ok = value > minimum if above else value >= minimum
        if not (math.isfinite(value) and low_ok and (maximum is None or value <= maximum)):
            bounds = f"{'above' if above else 'at least'} {minimum:g}"
            bounds += f" and at most {maximum:g}" if maximum is not None else ""
            raise ValueError(f"{param} must be {bounds}, found {value}")
        return value

    return convert


def _flag(param: str):
    def convert(value):
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{param} must be True or False, found {value!r}")
        return bool(value)

    return convert


def _label_list(value):
    """Distinct class labels of 0 or more, as a list (the classes of a model trained on a subset)."""
    values = TypeConverters.toListInt(list(value))
    return list(label_subset.parse_labels(",".join(map(str, values)))) if values else []


def _path(value):
    return TypeConverters.toString(os.fspath(value) if isinstance(value, os.PathLike) else value)


def _param(name: str, doc: str, converter) -> Param:
    return Param(Params._dummy(), name, doc, typeConverter=converter)


def _image_size(value):
    """imageSize: 0 (the images' own), a side (square) or ``[height, width]``."""
    if isinstance(value, (list, tuple)):
        sides = [_whole("imageSize", 1)(side) for side in value]
        if len(sides) != 2:
            raise ValueError(f"imageSize is a side or [height, width], found {list(value)}")
        return sides
    return _whole("imageSize", 0)(value)


def _channels(value):
    value = _whole("channels", 0)(value)
    if value not in (0, 1, 3):
        raise ValueError(f"channels must be 1 (grey), 3 (colour) or 0 (the images' own), found {value}")
    return value


# --------------------------------------------------------------------------- shared checks


def _image_column(schema, column: str, stage: str) -> None:
    """``column`` must exist and be Spark's image struct (checked on the driver)."""
    from pyspark.sql.types import StructType

    names = schema.fieldNames()
    if column not in names:
        raise ValueError(
            f"{stage}: the DataFrame has no input column {column!r} (columns: "
            f"{', '.join(names)}); set inputCol to its column of images"
        )
    found, wanted = schema[column].dataType, images.image_struct_type()
    if not (
        isinstance(found, StructType)
        and [(f.name, f.dataType) for f in found.fields] == [(f.name, f.dataType) for f in wanted.fields]
    ):
        raise TypeError(
            f"{stage}: column {column!r} must be Spark's image struct ({wanted.simpleString()}), found "
            f"{found.simpleString()}; read images with spark.read.format('image'), "
            "mnist_spark.pngset.read_png_set or mnist_spark.ingest"
        )


def _new_column(schema, column: str, stage: str, param: str) -> None:
    if column in schema.fieldNames():
        raise ValueError(
            f"{stage}: output column {column!r} already exists in the DataFrame; set {param} "
            "to a new name or drop that column first"
        )


@dataclass(frozen=True)
class KerasFile:
    """A ``.keras`` model read and checked on the driver."""

    location: str  #: where it was read
    payload: bytes  #: the file's bytes, broadcast to executors
    input_shape: tuple  #: ``(height, width, channels)`` of one image
    outputs: int  #: values per image of its single output ``(batch, outputs)``

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.payload).hexdigest()


_SHAPES: dict = {}  # sha256 -> (input shape, output shape): each model is loaded once on the driver


def read_keras_file(location: str, stage: str, *, payload: bytes | None = None) -> KerasFile:
    """Read a ``.keras`` model (path or URI; a folder holding ``model.keras`` works too) and check its shape.

    The model must take one batch of images ``(batch, height, width, channels)``
    with 1 or 3 channels and give one row of values per image
    ``(batch, n)``. Loaded in Keras' safe mode (no code in the file runs),
    once per content on this driver.

    Raises
    ------
    ValueError
        For a missing or damaged file, or a model of another shape.
    """
    if payload is None:
        if not location:
            raise ValueError(f"{stage}: set modelFile to a saved .keras model")
        inside = storage.join(location, MODEL_FILE)
        if storage.exists(inside):
            location = inside
        try:
            payload = storage.read_bytes(location)
        except OSError:
            raise ValueError(
                f"{stage}: model file {location} does not exist; give a saved .keras model "
                "(e.g. the model.keras of a train_cnn run)"
            ) from None
    digest = hashlib.sha256(payload).hexdigest()
    if digest not in _SHAPES:
        try:
            net = evaluation.model_from_bytes(payload, compile=False)
        except Exception as error:  # Keras raises several types for a damaged file
            text = " ".join(str(error).split())[:300]
            raise ValueError(
                f"{stage}: model file {location} could not be loaded ({type(error).__name__}: "
                f"{text}); it is not a complete .keras file saved by Keras 3"
            ) from None
        _SHAPES[digest] = (net.input_shape, net.output_shape)
    inputs, outputs = _SHAPES[digest]
    if isinstance(inputs, list) or len(inputs) != 4 or inputs[3] not in (1, 3) or any(s is None for s in inputs[1:]):
        raise ValueError(
            f"{stage}: model file {location} takes input {models.shape_text(inputs)}; expected one "
            "batch of images (batch, height, width, channels) of a fixed size with 1 or 3 "
            "channels"
        )
    several = isinstance(outputs, list) or (bool(outputs) and isinstance(outputs[0], (list, tuple)))
    if several or len(outputs) != 2 or outputs[1] is None:
        raise ValueError(
            f"{stage}: model file {location} outputs shape {models.shape_text(outputs)}; expected "
            "(batch, n), one row of values per image; end the model in a Dense layer (add "
            "Flatten or pooling before it)"
        )
    return KerasFile(location, payload, tuple(int(s) for s in inputs[1:]), int(outputs[1]))


def fit_pixels(
    pixels: np.ndarray, shape, *, scale_hint: str = featurizer.DEFAULT_SCALE_HINT, rgb: bool = False
) -> np.ndarray:
    """Spark-order uint8 images made ``shape`` ``(height, width, 1 or 3)``; unchanged when they fit.

    :func:`mnist_spark.featurizer.resize_images` (Pillow, the filter of
    ``scale_hint``) is the one resize routine of the stages. Colour comes
    out in Spark's BGR order, or RGB with ``rgb``.
    """
    shape = tuple(int(s) for s in shape)
    if pixels.shape[1:] == shape and (shape[2] == 1 or not rgb):
        return pixels
    fitted = featurizer.resize_images(pixels, shape, scale_hint)  # colour as RGB
    return fitted if shape[2] == 1 or rgb else np.ascontiguousarray(fitted[..., ::-1])


def image_decoder(
    shape, *, scale_hint: str = featurizer.DEFAULT_SCALE_HINT, rgb: bool = False, where: str = "image column"
):
    """A function from an Arrow array of image structs to a ``shape`` batch of uint8 images.

    Mixed sizes and channel counts are allowed: each group is made ``shape``
    by :func:`fit_pixels`.
    """
    shape = tuple(int(s) for s in shape)

    def decode(column):
        groups = featurizer._decode_groups(column, where)
        if len(groups) == 1:
            return fit_pixels(groups[0][1], shape, scale_hint=scale_hint, rgb=rgb)
        out = np.empty((len(column), *shape), np.uint8)
        for positions, pixels in groups:
            out[positions] = fit_pixels(pixels, shape, scale_hint=scale_hint, rgb=rgb)
        return out

    return decode


# --------------------------------------------------------------------------- persistence


# --------------------------------------------------------------------------- the classifier


#: A job's options that shape the classifier's data: the label subset, the image size and channels.
IMAGE_OPTIONS = ("labels", "image_size", "channels")


def image_params(options: dict, num_classes: int = 0) -> dict:
    """:class:`KerasImageClassifier` params from a job's options (:data:`IMAGE_OPTIONS`).

    ``numClasses`` is the dataset's ``num_classes``, or with ``labels`` as many as those.
    """
    labels = list(options.get("labels") or [])
    size = options.get("image_size") or 0
    return {
        "labels": labels,
        "numClasses": 0 if labels else num_classes,
        "imageSize": list(size) if isinstance(size, (tuple, list)) else size,
        "channels": options.get("channels") or 0,
    }


class _KerasImageClassifierParams(HasInputCol, HasLabelCol, HasPredictionCol, HasProbabilityCol, HasSeed):
    """Params of :class:`KerasImageClassifier` and of the model it fits."""

    modelName: Param = _param(
        "modelName",
        f"built-in architecture: {', '.join(models.ARCHITECTURES)}",
        _choice("modelName", tuple(models.ARCHITECTURES)),
    )
    modelFile: Param = _param(
        "modelFile", "a saved .keras model trained instead of modelName, from its weights ('' for none)", _path
    )
    epochs: Param = _param("epochs", "passes over the training data", _whole("epochs", 1))
    batchSize: Param = _param(
        "batchSize",
        "per-replica training batch size (0: 128 up to 2 replicas, 64 beyond)",
        _whole("batchSize", 0),
    )
    learningRate: Param = _param(
        "learningRate",
        "Adam's learning rate in the first epoch, before scaling",
        _number("learningRate", 0, above=True),
    )
    lrDecay: Param = _param("lrDecay", "learning rate factor per epoch", _number("lrDecay", 0, above=True, maximum=1))
    lrScaling: Param = _param(
        "lrScaling",
        "peak learning rate against the averaged batch (partitions x batch / 64): linear, sqrt or none",
        _choice("lrScaling", tuple(training.LR_SCALING)),
    )
    warmupEpochs: Param = _param(
        "warmupEpochs", "epochs of linear warm-up to the scaled peak", _number("warmupEpochs", 0)
    )
    partitions: Param = _param("partitions", "replicas (shards); 0: the cluster's task slots", _whole("partitions", 0))
    stepsPerRound: Param = _param(
        "stepsPerRound",
        "steps between averagings; 0: a short first round, then one local epoch up to 8 replicas, shorter beyond",
        _whole("stepsPerRound", 0),
    )
    firstRoundSteps: Param = _param(
        "firstRoundSteps",
        "steps of the first round; 0: a quarter of a local epoch, at least 32 steps",
        _whole("firstRoundSteps", 0),
    )
    batchnormSample: Param = _param(
        "batchnormSample",
        "training images on which BatchNorm statistics are re-estimated after averaging (0: off)",
        _whole("batchnormSample", 0),
    )
    barrier: Param = _param("barrier", "schedule all replicas of a round together", _flag("barrier"))
    imageSize: Param = _param(
        "imageSize",
        "size the images are resized to: a side (square) or [height, width]; 0: their own size (or modelFile's input)",
        _image_size,
    )
    channels: Param = _param(
        "channels", "channels the network sees: 1 (grey) or 3 (colour); 0: the images' own", _channels
    )
    numClasses: Param = _param(
        "numClasses", "classes of the softmax; 0: the largest label + 1", _whole("numClasses", 0)
    )
    labels: Param = _param(
        "labels", "train on these labels only; class k of the model is labels[k] ([]: every label)", _label_list
    )
    scaleHint: Param = _param(
        "scaleHint",
        "resize filter, by sparkdl's names: " + ", ".join(featurizer.SCALE_HINTS),
        _choice("scaleHint", tuple(featurizer.SCALE_HINTS)),
    )
    predictionBatchSize: Param = _param(
        "predictionBatchSize", "images per call of the model when scoring", _whole("predictionBatchSize", 1)
    )

    _DEFAULTS = dict(
        inputCol="image",
        labelCol="label",
        predictionCol="prediction",
        probabilityCol="probability",
        seed=0,
        modelName=models.DEFAULT_MODEL,
        modelFile="",
        epochs=training.TrainConfig.epochs,
        batchSize=0,
        learningRate=training.TrainConfig.learning_rate,
        lrDecay=training.TrainConfig.lr_decay,
        lrScaling=training.TrainConfig.lr_scaling,
        warmupEpochs=training.TrainConfig.warmup_epochs,
        partitions=0,
        stepsPerRound=0,
        firstRoundSteps=0,
        batchnormSample=training.TrainConfig.batchnorm_sample,
        barrier=False,
        imageSize=0,
        channels=0,
        numClasses=0,
        labels=[],
        scaleHint=featurizer.DEFAULT_SCALE_HINT,
        predictionBatchSize=512,
    )

    def __init__(self, *args):
        super().__init__(*args)
        self._setDefault(**self._DEFAULTS)  # fixed values: a seed from hash(class name) would vary by process

    def getModelName(self) -> str:
        return self.getOrDefault(self.modelName)

    def getModelFile(self) -> str:
        return self.getOrDefault(self.modelFile)

    def getEpochs(self) -> int:
        return self.getOrDefault(self.epochs)

    def getBatchSize(self) -> int:
        return self.getOrDefault(self.batchSize)

    def getLearningRate(self) -> float:
        return self.getOrDefault(self.learningRate)

    def getLrDecay(self) -> float:
        return self.getOrDefault(self.lrDecay)

    def getLrScaling(self) -> str:
        return self.getOrDefault(self.lrScaling)

    def getWarmupEpochs(self) -> float:
        return self.getOrDefault(self.warmupEpochs)

    def getPartitions(self) -> int:
        return self.getOrDefault(self.partitions)

    def getStepsPerRound(self) -> int:
        return self.getOrDefault(self.stepsPerRound)

    def getFirstRoundSteps(self) -> int:
        return self.getOrDefault(self.firstRoundSteps)

    def getBatchnormSample(self) -> int:
        return self.getOrDefault(self.batchnormSample)

    def getBarrier(self) -> bool:
        return self.getOrDefault(self.barrier)

    def getImageSize(self):
        return self.getOrDefault(self.imageSize)

    def getChannels(self) -> int:
        return self.getOrDefault(self.channels)

    def getNumClasses(self) -> int:
        return self.getOrDefault(self.numClasses)

    def getLabels(self) -> list:
        return list(self.getOrDefault(self.labels))

    def getScaleHint(self) -> str:
        return self.getOrDefault(self.scaleHint)

    def getPredictionBatchSize(self) -> int:
        return self.getOrDefault(self.predictionBatchSize)


@dataclass
class _Prepared:
    """The training data of one fit, made once: its shards and what they imply."""

    frame: object  #: DataFrame[index, label, image]
    shards: object  #: the cached shards (:func:`mnist_spark.training.make_shards`)
    sizes: list
    partitions: int
    input_shape: tuple
    num_classes: int
    decode: object  #: Arrow image structs -> the model's input size
    warm_up: training.WarmUp | None = None  #: the workers' warm-up, started before the shards

    def release(self) -> None:
        if self.warm_up is not None:  # no Spark job of the fit outlives it
            self.warm_up.wait(raise_error=False)
        self.shards.unpersist()


class KerasImageClassifier(Estimator, _KerasImageClassifierParams, persistence.SavesModelFile):
    """Train a Keras image classifier data-parallel on Spark: a Spark ML ``Estimator``.

    ``fit`` runs :func:`mnist_spark.training.train`, the trainer of
    ``jobs/train_cnn.py``: the images are split into ``partitions`` shards
    decoded once, every round each partition trains a replica on its shard,
    and the replicas (weights and Adam's state) are averaged in the
    executors. It returns a :class:`KerasImageClassificationModel`.

    Parameters
    ----------
    modelName : str
        A built-in architecture (:data:`mnist_spark.models.ARCHITECTURES`),
        default ``bn_cnn``.
    modelFile : str
        Or a saved ``.keras`` model (path or URI), trained from its weights;
        loaded in safe mode, compiled with Adam and sparse categorical
        cross-entropy, so it must end in a softmax. Its input size decides
        the images' size. Default ``''`` (use ``modelName``).
    epochs, batchSize, learningRate, lrDecay, lrScaling, warmupEpochs, stepsPerRound, firstRoundSteps,
    batchnormSample, barrier
        As ``jobs/train_cnn.py``'s flags (:class:`mnist_spark.training.TrainConfig`);
        0 for ``stepsPerRound`` and ``firstRoundSteps`` means the default schedule.
    partitions : int
        Replicas; 0 (default): the cluster's task slots.
    imageSize : int or [int, int]
        Resize the images to this square side or ``[height, width]`` (Pillow,
        filter ``scaleHint``); 0 (default): train at the images' own size,
        which must be one size.
    channels : int
        1 (grey, Pillow's luma) or 3 (colour) for the network; 0 (default):
        the images' own.
    numClasses : int
        Width of the softmax; 0 (default): the largest label + 1.
    labels : list of int
        Train on the rows of these labels only; class ``k`` of the model is
        ``labels[k]``, the fitted model's ``prediction`` is the label itself,
        and its saved folder holds ``labels.json`` as ``train_cnn --labels``
        writes it. Default ``[]``: every label, class ``k`` is label ``k``.
    seed : int
        Initial weights and every random choice of the replicas. Default 0.
    inputCol, labelCol, predictionCol, probabilityCol : str
        ``image`` (Spark's image struct), ``label`` (whole numbers 0 .. classes - 1,
        integer or double), and the model's output columns ``prediction`` and
        ``probability``.
    predictionBatchSize : int
        Images per call of the model when the fitted model scores. Default 512.

    Notes
    -----
    Rows are sharded by an ``index`` column when the DataFrame has an integer
    one (ingested and PNG-set frames do); otherwise by a hash of the image and
    label. In a ``CrossValidator`` or ``TrainValidationSplit``,
    :meth:`fitMultiple` decodes the training images once for all the grid
    points that share ``inputCol``, ``labelCol``, ``partitions``,
    ``imageSize``, ``scaleHint``, ``modelFile``, ``numClasses`` and ``labels``.

    Examples
    --------
    >>> from pyspark.ml.tuning import ParamGridBuilder, TrainValidationSplit
    >>> from pyspark.ml.evaluation import MulticlassClassificationEvaluator
    >>> classifier = KerasImageClassifier(modelName="simple_cnn", epochs=2)
    >>> grid = ParamGridBuilder().addGrid(classifier.learningRate, [1e-3, 3e-3]).build()
    >>> tvs = TrainValidationSplit(estimator=classifier, estimatorParamMaps=grid,
    ...                            evaluator=MulticlassClassificationEvaluator())
    >>> best = tvs.fit(train_df).bestModel  # doctest: +SKIP
    """

    @keyword_only
    def __init__(
        self,
        *,
        modelName=models.DEFAULT_MODEL,
        modelFile="",
        epochs=training.TrainConfig.epochs,
        batchSize=0,
        learningRate=training.TrainConfig.learning_rate,
        lrDecay=training.TrainConfig.lr_decay,
        lrScaling=training.TrainConfig.lr_scaling,
        warmupEpochs=training.TrainConfig.warmup_epochs,
        partitions=0,
        stepsPerRound=0,
        firstRoundSteps=0,
        batchnormSample=training.TrainConfig.batchnorm_sample,
        barrier=False,
        imageSize=0,
        channels=0,
        numClasses=0,
        labels=(),
        scaleHint=featurizer.DEFAULT_SCALE_HINT,
        seed=0,
        inputCol="image",
        labelCol="label",
        predictionCol="prediction",
        probabilityCol="probability",
        predictionBatchSize=512,
    ):
        super().__init__()
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(
        self,
        *,
        modelName=models.DEFAULT_MODEL,
        modelFile="",
        epochs=training.TrainConfig.epochs,
        batchSize=0,
        learningRate=training.TrainConfig.learning_rate,
        lrDecay=training.TrainConfig.lr_decay,
        lrScaling=training.TrainConfig.lr_scaling,
        warmupEpochs=training.TrainConfig.warmup_epochs,
        partitions=0,
        stepsPerRound=0,
        firstRoundSteps=0,
        batchnormSample=training.TrainConfig.batchnorm_sample,
        barrier=False,
        imageSize=0,
        channels=0,
        numClasses=0,
        labels=(),
        scaleHint=featurizer.DEFAULT_SCALE_HINT,
        seed=0,
        inputCol="image",
        labelCol="label",
        predictionCol="prediction",
        probabilityCol="probability",
        predictionBatchSize=512,
    ):
        """Set any of the params by keyword; returns ``self``."""
        return self._set(**self._input_kwargs)

    def setModelName(self, value) -> KerasImageClassifier:
        return self._set(modelName=value)

    def setModelFile(self, value) -> KerasImageClassifier:
        return self._set(modelFile=value)

    def setEpochs(self, value) -> KerasImageClassifier:
        return self._set(epochs=value)

    def setBatchSize(self, value) -> KerasImageClassifier:
        return self._set(batchSize=value)

    def setLearningRate(self, value) -> KerasImageClassifier:
        return self._set(learningRate=value)

    def setLrDecay(self, value) -> KerasImageClassifier:
        return self._set(lrDecay=value)

    def setLrScaling(self, value) -> KerasImageClassifier:
        return self._set(lrScaling=value)

    def setWarmupEpochs(self, value) -> KerasImageClassifier:
        return self._set(warmupEpochs=value)

    def setPartitions(self, value) -> KerasImageClassifier:
        return self._set(partitions=value)

    def setStepsPerRound(self, value) -> KerasImageClassifier:
        return self._set(stepsPerRound=value)

    def setFirstRoundSteps(self, value) -> KerasImageClassifier:
        return self._set(firstRoundSteps=value)

    def setBatchnormSample(self, value) -> KerasImageClassifier:
        return self._set(batchnormSample=value)

    def setBarrier(self, value) -> KerasImageClassifier:
        return self._set(barrier=value)

    def setImageSize(self, value) -> KerasImageClassifier:
        return self._set(imageSize=value)

    def setChannels(self, value) -> KerasImageClassifier:
        return self._set(channels=value)

    def setNumClasses(self, value) -> KerasImageClassifier:
        return self._set(numClasses=value)

    def setLabels(self, value) -> KerasImageClassifier:
        return self._set(labels=value)

    def setScaleHint(self, value) -> KerasImageClassifier:
        return self._set(scaleHint=value)

    def setSeed(self, value) -> KerasImageClassifier:
        return self._set(seed=value)

    def setInputCol(self, value) -> KerasImageClassifier:
        return self._set(inputCol=value)

    def setLabelCol(self, value) -> KerasImageClassifier:
        return self._set(labelCol=value)

    def setPredictionCol(self, value) -> KerasImageClassifier:
        return self._set(predictionCol=value)

    def setProbabilityCol(self, value) -> KerasImageClassifier:
        return self._set(probabilityCol=value)

    def setPredictionBatchSize(self, value) -> KerasImageClassifier:
        return self._set(predictionBatchSize=value)

    # ----------------------------------------------------------------- fitting

    def _data_key(self) -> tuple:
        """The params that decide the prepared data: fits that share them share the shards."""
        return tuple(
            self.getOrDefault(name)
            for name in ("inputCol", "labelCol", "partitions", "scaleHint", "modelFile", "numClasses", "channels")
        ) + (tuple(self.getLabels()), str(self.getImageSize()))

    def _prepare(self, dataset) -> _Prepared:
        """Check the data and params on the driver, and decode the images into cached shards once."""
        from mnist_spark.session import phase

        with phase(dataset.sparkSession, "shards"):
            return self._decode_shards(dataset)

    def _decode_shards(self, dataset) -> _Prepared:
        from pyspark.sql import functions as F
        from pyspark.sql.types import IntegralType, NumericType

        from mnist_spark.session import task_slots

        stage = "KerasImageClassifier"
        input_col, label_col = self.getInputCol(), self.getLabelCol()
        _image_column(dataset.schema, input_col, stage)
        if label_col not in dataset.columns:
            raise ValueError(
                f"{stage}: the DataFrame has no label column {label_col!r} (columns: "
                f"{', '.join(dataset.columns)}); set labelCol"
            )
        if not isinstance(dataset.schema[label_col].dataType, NumericType):
            raise TypeError(
                f"{stage}: label column {label_col!r} must be numeric (class numbers 0, 1, ...), "
                f"found {dataset.schema[label_col].dataType.simpleString()}; index string labels "
                "with pyspark.ml.feature.StringIndexer first"
            )
        if self.isSet(self.modelName) and self.getModelFile():
            raise ValueError(f"{stage}: set modelName or modelFile, not both")
        source = read_keras_file(self.getModelFile(), stage) if self.getModelFile() else None
        label, chosen = dataset[label_col], self.getLabels()
        has_index = "index" in dataset.columns and isinstance(dataset.schema["index"].dataType, IntegralType)
        index = (
            dataset["index"].cast("long")
            if has_index
            else F.xxhash64(dataset[input_col], label).bitwiseAND(F.lit(2**63 - 1))
        )
        stats = dataset.agg(
            F.count(F.lit(1)).alias("rows"),
            F.count(label).alias("labelled"),
            F.min(label).alias("low"),
            F.max(label).alias("high"),
            F.sum(F.when(label != F.floor(label), 1).otherwise(0)).alias("fractional"),
            F.sum(F.when(dataset[input_col].isNull(), 1).otherwise(0)).alias("missing"),
            F.first(dataset[input_col + ".height"], ignorenulls=True).alias("height"),
            F.first(dataset[input_col + ".width"], ignorenulls=True).alias("width"),
            F.first(dataset[input_col + ".nChannels"], ignorenulls=True).alias("channels"),
            F.sum(F.when(label.isin(chosen), 1).otherwise(0) if chosen else F.lit(1)).alias("kept"),
        ).first()
        partitions = self.getPartitions() or task_slots(dataset.sparkSession)
        if stats["rows"] == 0:
            raise ValueError(f"{stage}: the training DataFrame has no rows")
        if stats["labelled"] < stats["rows"] or stats["missing"]:
            raise ValueError(
                f"{stage}: {stats['rows'] - stats['labelled']} rows have no label and "
                f"{stats['missing']} no image; drop them first"
            )
        if stats["fractional"] or stats["low"] < 0:
            raise ValueError(
                f"{stage}: labels must be whole numbers 0, 1, ... (class numbers), found "
                f"labels from {stats['low']} to {stats['high']}"
                + (f", {stats['fractional']} of them not whole" if stats["fractional"] else "")
            )
        if chosen:
            num_classes = len(chosen)
            if self.getNumClasses() not in (0, num_classes) or num_classes < 2:
                raise ValueError(
                    f"{stage}: labels {','.join(map(str, chosen))} make {num_classes} classes; "
                    f"give at least 2 labels, and numClasses 0 or {num_classes}"
                )
        else:
            num_classes = self.getNumClasses() or int(stats["high"]) + 1
            if stats["high"] >= num_classes or num_classes < 2:
                raise ValueError(
                    f"{stage}: numClasses {num_classes} does not cover the labels 0 .. "
                    f"{int(stats['high'])}; set numClasses to at least "
                    f"{max(2, int(stats['high']) + 1)}"
                )
        if partitions > stats["kept"]:
            of = f" of labels {','.join(map(str, chosen))}" if chosen else ""
            raise ValueError(
                f"{stage}: partitions {partitions} needs at least {partitions} training images"
                f"{of}, found {stats['kept']}; set fewer partitions"
            )
        if source is not None:
            shape = source.input_shape
            if source.outputs != num_classes:
                raise ValueError(
                    f"{stage}: model file {source.location} outputs {source.outputs} values per "
                    f"image but the labels need {num_classes} classes; give a model with a "
                    f"softmax of {num_classes} (or set numClasses)"
                )
        else:
            size = self.getImageSize()
            sides = (size, size) if isinstance(size, int) else tuple(size)
            found = (int(stats["height"]), int(stats["width"]))
            shape = (*(sides if size else found), self.getChannels() or int(stats["channels"]))
        decode = (
            image_decoder(shape, scale_hint=self.getScaleHint(), where=f"{stage} column {input_col!r}")
            if source is not None or self.getImageSize() or self.getChannels()
            else None
        )
        frame = dataset.select(
            index.alias("index"), label.cast("int").alias("label"), dataset[input_col].alias("image")
        )
        if chosen:  # the rows of those labels, each label replaced by its class (its position)
            frame = label_subset.select_labels(frame, chosen, index=True)
        # The workers import TensorFlow and build the replica while the shards are made (a model
        # file's replicas warm up in the run, which ships the file).
        warm_up = (
            None
            if source is not None
            else training.WarmUp(dataset.sparkSession, self.trainConfig(partitions, shape, num_classes))
        )
        started = time.perf_counter()
        try:
            shards, sizes = training.make_shards(frame, partitions, decode=decode)
        except BaseException:
            if warm_up is not None:
                warm_up.wait(raise_error=False)
            raise
        logger.info(
            "%s: %d training images of %s in %d shards (%s), %d classes, decoded in %.1f s",
            stage,
            sum(sizes),
            "x".join(map(str, shape)),
            partitions,
            ", ".join(map(str, sizes)),
            num_classes,
            time.perf_counter() - started,
        )
        return _Prepared(frame, shards, sizes, partitions, tuple(shape), num_classes, decode, warm_up)

    def trainConfig(self, partitions: int, input_shape, num_classes: int, augment=None) -> training.TrainConfig:
        """The :class:`~mnist_spark.training.TrainConfig` of a fit with these params."""
        return training.TrainConfig(
            model=self.getModelName(),
            model_file=self.getModelFile() or None,
            epochs=self.getEpochs(),
            batch_size=self.getBatchSize() or None,
            partitions=partitions,
            seed=self.getSeed(),
            steps_per_round=self.getStepsPerRound() or None,
            learning_rate=self.getLearningRate(),
            lr_decay=self.getLrDecay(),
            first_round_steps=self.getFirstRoundSteps() or None,
            lr_scaling=self.getLrScaling(),
            warmup_epochs=self.getWarmupEpochs(),
            batchnorm_sample=self.getBatchnormSample(),
            barrier=self.getBarrier(),
            input_shape=tuple(input_shape),
            num_classes=num_classes,
            augment=augment,
        )

    @classmethod
    def fromTrainConfig(cls, config: training.TrainConfig, **params) -> KerasImageClassifier:
        """The estimator whose fit repeats ``config`` (a saved run's), with ``params`` besides."""
        model = {"modelFile": config.model_file} if config.model_file else {"modelName": config.model}
        return cls(
            **model,
            epochs=config.epochs,
            batchSize=config.batch_size,
            partitions=config.partitions,
            seed=config.seed,
            stepsPerRound=config.steps_per_round or 0,
            learningRate=config.learning_rate,
            lrDecay=config.lr_decay,
            firstRoundSteps=config.first_round_steps or 0,
            lrScaling=config.lr_scaling,
            warmupEpochs=config.warmup_epochs,
            batchnormSample=config.batchnorm_sample,
            barrier=config.barrier,
            **params,
        )

    def fitRun(self, dataset, *, validation=None, state=None, on_round=None, augment=None):
        """``fit`` with what a training run adds; returns ``(model, TrainState, TrainConfig)``.

        Parameters
        ----------
        validation : (images, labels), or a callable that returns them, optional
            Scored by the driver after the first round, each epoch and the last (the history's ``val_accuracy``).
            A callable is called once the training images are prepared and the workers warm up, so that
            collecting the images overlaps their warm-up.
        state : TrainState, optional
            A checkpoint to continue from.
        on_round : callable, optional
            ``on_round(state, schedule, config)`` after each round, e.g. to save a checkpoint.
        augment : dict, optional
            On-the-fly augmentation (:class:`mnist_spark.augment.AugmentParams` as a dict).
        """
        prepared = self._prepare(dataset)
        try:
            return self._train(
                dataset,
                prepared,
                validation=validation() if callable(validation) else validation,
                state=state,
                on_round=on_round,
                augment=augment,
            )
        finally:
            prepared.release()

    def _train(self, dataset, prepared: _Prepared, *, validation=None, state=None, on_round=None, augment=None):
        """One fit on prepared shards, with this estimator's params: ``(model, TrainState, TrainConfig)``."""
        config = self.trainConfig(prepared.partitions, prepared.input_shape, prepared.num_classes, augment)
        if validation is not None and prepared.decode is not None:  # scored as the network sees the images
            images, labels = validation
            validation = (fit_pixels(images, prepared.input_shape, scale_hint=self.getScaleHint()), labels)
        trained, final = training.train(
            dataset.sparkSession,
            prepared.frame,
            config,
            shards=(prepared.shards, prepared.sizes),
            decode=prepared.decode,
            validation=validation,
            state=state,
            on_round=None if on_round is None else (lambda done, schedule: on_round(done, schedule, config)),
            warm_up=prepared.warm_up,
        )
        trained.compile(optimizer=trained.optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        model = KerasImageClassificationModel._of(evaluation.model_bytes(trained), prepared.input_shape, final.history)
        self._copyValues(model)
        model._set(numClasses=prepared.num_classes, modelFile="")
        return model, final, config

    def _fit(self, dataset) -> KerasImageClassificationModel:
        prepared = self._prepare(dataset)
        try:
            return self._train(dataset, prepared)[0]
        finally:
            prepared.release()

    def fitMultiple(self, dataset, paramMaps):
        """Fit a model per param map, decoding the training images once for all of them.

        Returns a thread-safe iterator of ``(index, model)``, as
        ``CrossValidator`` and ``TrainValidationSplit`` expect. Param maps that
        share the data params (see the class notes) share one set of cached
        shards, unpersisted when the last of them has been fitted.
        """
        return _SharedDataFits(self.copy(), dataset, paramMaps)


class _SharedDataFits:
    """``(index, model)`` for each param map; fits with the same data params share one preparation."""

    def __init__(self, estimator: KerasImageClassifier, dataset, param_maps):
        self.dataset = dataset
        self.estimators = [estimator.copy(m) for m in param_maps]
        self.data_keys = [e._data_key() for e in self.estimators]
        self.remaining = Counter(self.data_keys)
        self.prepared: dict = {}
        self.lock = threading.Lock()
        self.key_locks = {key: threading.Lock() for key in self.remaining}
        self.position = 0

    def __iter__(self):
        return self

    def __next__(self):
        with self.lock:
            index = self.position
            if index >= len(self.estimators):
                raise StopIteration
            self.position += 1
        estimator, key = self.estimators[index], self.data_keys[index]
        with self.key_locks[key]:
            if key not in self.prepared:
                self.prepared[key] = estimator._prepare(self.dataset)
            prepared = self.prepared[key]
        try:
            model = estimator._train(self.dataset, prepared)[0]
        finally:
            with self.lock:
                self.remaining[key] -= 1
                last = self.remaining[key] == 0
            if last:
                self.prepared.pop(key).release()
        return index, model


class KerasImageClassificationModel(Model, _KerasImageClassifierParams, persistence.SavesModelFile):
    """A fitted :class:`KerasImageClassifier`: scores images with the trained Keras model.

    ``transform`` adds ``predictionCol`` (double, the most probable class) and
    ``probabilityCol`` (a dense vector of the class probabilities); set either
    to ``''`` to leave it out. Images that are not the model's input size are
    resized (``scaleHint``) as in training. Saved with its ``model.keras``
    inside the folder.
    """

    def __init__(self):
        super().__init__()
        self._payload: bytes | None = None
        self._input_shape: tuple | None = None
        self._history: list = []

    @classmethod
    def _of(cls, payload: bytes, input_shape, history) -> KerasImageClassificationModel:
        model = cls()
        model._payload, model._input_shape, model._history = payload, tuple(input_shape), list(history)
        return model

    def setInputCol(self, value) -> KerasImageClassificationModel:
        return self._set(inputCol=value)

    def setPredictionCol(self, value) -> KerasImageClassificationModel:
        return self._set(predictionCol=value)

    def setProbabilityCol(self, value) -> KerasImageClassificationModel:
        return self._set(probabilityCol=value)

    def setScaleHint(self, value) -> KerasImageClassificationModel:
        return self._set(scaleHint=value)

    def setPredictionBatchSize(self, value) -> KerasImageClassificationModel:
        return self._set(predictionBatchSize=value)

    @property
    def inputShape(self) -> tuple:
        """``(height, width, channels)`` the model takes."""
        return self._input_shape

    @property
    def history(self) -> list:
        """One record per training round (loss, accuracy, images, seconds, ...), as in train_cnn's metrics."""
        return list(self._history)

    def modelBytes(self) -> bytes:
        """The trained model as the bytes of a ``.keras`` file."""
        return self._payload

    def kerasModel(self):
        """The trained model as a ``keras.Model`` (loaded in safe mode)."""
        return evaluation.model_from_bytes(self._payload, compile=True)

    def imageDecoder(self):
        """The function that makes image structs this model's input: resized and converted as in training."""
        where = f"KerasImageClassificationModel column {self.getInputCol()!r}"
        return image_decoder(self._input_shape, scale_hint=self.getScaleHint(), where=where)

    def evaluate(self, dataset) -> dict:
        """:func:`mnist_spark.evaluation.evaluate` of this model on labelled images (class numbers)."""
        return evaluation.evaluate(
            dataset, self.kerasModel(), num_classes=self.getNumClasses(), decode=self.imageDecoder()
        )

    def writeRunFiles(self, folder: str, classes=None) -> None:
        """Write a run folder's model files: ``model.keras``, ``saved_model/``, ``model_summary.txt``, ``labels.json``.

        ``saved_model/`` is the model as a TensorFlow SavedModel for TF Serving
        (:func:`mnist_spark.persistence.export_saved_model`).
        ``labels.json`` holds the labels param, else ``classes`` (the original
        label of each class, e.g. the names that string labels were indexed
        from); neither writes none. The summary is printed too, as Keras prints it.
        """
        if self._payload is None:
            raise ValueError("KerasImageClassificationModel has no trained model to write")
        storage.write_bytes(storage.join(folder, MODEL_FILE), self._payload)
        if self.getLabels() or classes:
            label_subset.write_labels(folder, self.getLabels() or classes)
        network = self.kerasModel()
        persistence.export_saved_model(network, folder)
        summary = models.summary_text(network)
        print(summary)
        storage.write_bytes(storage.join(folder, "model_summary.txt"), (summary + "\n").encode())

    def transformSchema(self, schema):
        from pyspark.ml.linalg import VectorUDT
        from pyspark.sql.types import DoubleType, StructField, StructType

        stage = "KerasImageClassificationModel"
        if self._payload is None:
            raise ValueError(f"{stage} has no trained model; fit a KerasImageClassifier or load a saved model")
        _image_column(schema, self.getInputCol(), stage)
        fields = list(schema.fields)
        for param, kind in (("probabilityCol", VectorUDT()), ("predictionCol", DoubleType())):
            column = self.getOrDefault(param)
            if column:
                _new_column(schema, column, stage, param)
                fields.append(StructField(column, kind, False))
        return StructType(fields)

    def _transform(self, dataset):
        from pyspark.ml.functions import array_to_vector
        from pyspark.sql import functions as F

        self.transformSchema(dataset.schema)
        probability, prediction = self.getProbabilityCol(), self.getPredictionCol()
        scores = probability or "__probability"
        decode = self.imageDecoder()
        scored = evaluation.predict(
            dataset,
            self._payload,
            batch_size=self.getPredictionBatchSize(),
            input_col=self.getInputCol(),
            output_col=scores,
            prediction_col=prediction or None,
            decode=decode,
        )
        if prediction:
            column = F.col(prediction)
            if self.getLabels():  # class k stands for the dataset label labels[k]
                column = F.element_at(F.array(*[F.lit(float(v)) for v in self.getLabels()]), column + 1)
            scored = scored.withColumn(prediction, column.cast("double"))
        if probability:
            return scored.withColumn(probability, array_to_vector(F.col(probability)))
        return scored.drop(scores)

    def _model_payload(self) -> bytes:
        if self._payload is None:
            raise ValueError(
                "KerasImageClassificationModel has no trained model to save; fit a KerasImageClassifier first"
            )
        return self._payload

    def _extra_metadata(self) -> dict:
        return {"inputShape": list(self._input_shape), "history": self._history}

    def _write_beside(self, path: str) -> None:
        if self.getLabels():  # as train_cnn --labels records it beside its model.keras
            label_subset.write_labels(path, self.getLabels())

    def _restore(self, path: str, metadata: dict) -> None:
        self._payload = storage.read_bytes(storage.join(path, MODEL_FILE))
        self._input_shape = tuple(metadata["inputShape"])
        self._history = metadata.get("history", [])


# --------------------------------------------------------------------------- any saved model


class KerasImageTransformer(Transformer, HasInputCol, HasOutputCol, persistence.SavesModelFile):
    """Score a saved ``.keras`` model on an image column; the output is a vector column.

    sparkdl's ``KerasImageFileTransformer`` on Spark's image structs: the model
    (one image input, one ``(batch, n)`` output) is broadcast once and loaded
    once per Python worker; each image is converted to the model's input
    channels and resized to its input size when it differs (Pillow, filter
    ``scaleHint``), then scored ``batchSize`` at a time. The saved stage holds
    its own copy of the model file.

    Parameters
    ----------
    modelFile : str
        A saved ``.keras`` model (path, URI, or a run folder holding ``model.keras``).
    inputCol : str
        Spark's image struct column. Default ``image``.
    outputCol : str
        New column of dense vectors (``VectorUDT``), the model's output. Default ``output``.
    batchSize : int
        Images per call of the model. Default 512.
    scaleHint : str
        The resize filter, by sparkdl's names (:data:`mnist_spark.featurizer.SCALE_HINTS`).
    channelOrder : str
        ``BGR`` (default): Spark's order, which models trained on Spark image
        structs (``KerasImageClassifier``, ``train_cnn``) expect; ``RGB`` for
        models trained on RGB images. Gray images need neither.

    Examples
    --------
    >>> scorer = KerasImageTransformer(modelFile="runs/cnn/model.keras", outputCol="scores")
    >>> scorer.getBatchSize(), scorer.getChannelOrder()
    (512, 'BGR')
    """

    modelFile: Param = _param("modelFile", "a saved .keras model (path or URI)", _path)
    batchSize: Param = _param("batchSize", "images per call of the model", _whole("batchSize", 1))
    scaleHint: Param = _param(
        "scaleHint",
        "resize filter, by sparkdl's names: " + ", ".join(featurizer.SCALE_HINTS),
        _choice("scaleHint", tuple(featurizer.SCALE_HINTS)),
    )
    channelOrder: Param = _param(
        "channelOrder", "colour order the model takes: BGR (Spark's) or RGB", _choice("channelOrder", CHANNEL_ORDERS)
    )

    @keyword_only
    def __init__(
        self,
        *,
        modelFile="",
        inputCol="image",
        outputCol="output",
        batchSize=512,
        scaleHint=featurizer.DEFAULT_SCALE_HINT,
        channelOrder="BGR",
    ):
        super().__init__()
        self._setDefault(
            modelFile="",
            inputCol="image",
            outputCol="output",
            batchSize=512,
            scaleHint=featurizer.DEFAULT_SCALE_HINT,
            channelOrder="BGR",
        )
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(
        self,
        *,
        modelFile="",
        inputCol="image",
        outputCol="output",
        batchSize=512,
        scaleHint=featurizer.DEFAULT_SCALE_HINT,
        channelOrder="BGR",
    ):
        """Set any of the params by keyword; returns ``self``."""
        return self._set(**self._input_kwargs)

    def setModelFile(self, value) -> KerasImageTransformer:
        return self._set(modelFile=value)

    def setInputCol(self, value) -> KerasImageTransformer:
        return self._set(inputCol=value)

    def setOutputCol(self, value) -> KerasImageTransformer:
        return self._set(outputCol=value)

    def setBatchSize(self, value) -> KerasImageTransformer:
        return self._set(batchSize=value)

    def setScaleHint(self, value) -> KerasImageTransformer:
        return self._set(scaleHint=value)

    def setChannelOrder(self, value) -> KerasImageTransformer:
        return self._set(channelOrder=value)

    def getModelFile(self) -> str:
        return self.getOrDefault(self.modelFile)

    def getBatchSize(self) -> int:
        return self.getOrDefault(self.batchSize)

    def getScaleHint(self) -> str:
        return self.getOrDefault(self.scaleHint)

    def getChannelOrder(self) -> str:
        return self.getOrDefault(self.channelOrder)

    def transformSchema(self, schema):
        from pyspark.ml.linalg import VectorUDT
        from pyspark.sql.types import StructField, StructType

        _image_column(schema, self.getInputCol(), "KerasImageTransformer")
        _new_column(schema, self.getOutputCol(), "KerasImageTransformer", "outputCol")
        return StructType(schema.fields + [StructField(self.getOutputCol(), VectorUDT(), False)])

    def _transform(self, dataset):
        from pyspark.ml.functions import array_to_vector
        from pyspark.sql import functions as F

        self.transformSchema(dataset.schema)
        model = read_keras_file(self.getModelFile(), "KerasImageTransformer")
        output = self.getOutputCol()
        decode = image_decoder(
            model.input_shape,
            scale_hint=self.getScaleHint(),
            rgb=self.getChannelOrder() == "RGB",
            where=f"KerasImageTransformer column {self.getInputCol()!r}",
        )
        scored = evaluation.predict(
            dataset,
            model.payload,
            batch_size=self.getBatchSize(),
            input_col=self.getInputCol(),
            output_col=output,
            prediction_col=None,
            decode=decode,
        )
        return scored.withColumn(output, array_to_vector(F.col(output)))


# --------------------------------------------------------------------------- ImageNet classifiers


#: MD5 of Keras' ImageNet weight files with the top (the classifier), as Keras publishes them.
TOP_WEIGHTS_MD5 = {
    "InceptionV3": "9a0d58056eeedaa3f26cb7ebd46da564",
    "Xception": "0a58e3b7378bc2990ea3b43d5981f1f6",
    "ResNet50": "2cb95161c43110f7111970584f804107",
    "VGG16": "64373286793e3c8b2b4e3219cbf3544b",
    "VGG19": "cbe5617147190e668d6c5d5026f83318",
}
#: Networks whose classifier flattens a fixed grid, so they run at their native size only.
FIXED_SIZE_MODELS = ("VGG16", "VGG19")
IMAGENET_CLASSES = 1000


def top_imagenet_weights(model_name: str) -> weight_files.ImagenetWeights:
    """Keras' published ImageNet weights of ``model_name`` with its top: file name and MD5."""
    from dataclasses import replace

    base = weight_files.IMAGENET_WEIGHTS[model_name]
    return replace(base, weights_file=base.weights_file.replace("_notop", ""), weights_md5=TOP_WEIGHTS_MD5[model_name])


def resolve_top_weights(weights: str, model_name: str):
    """Find the weights of ``model_name`` with its classifier on the driver; ``None`` for ``none``.

    As :func:`mnist_spark.weights.resolve_weights`, for Keras' file with the
    top (``resnet50_weights_tf_dim_ordering_tf_kernels.h5``...): ``imagenet``
    looks in ``$MNIST_SPARK_WEIGHTS``, then Keras' cache, and never downloads;
    anything else is the path or URI of a weights file.
    """
    published = top_imagenet_weights(model_name)
    if weights == weight_files.WEIGHTS_NONE:
        return None
    if weights == weight_files.WEIGHTS_IMAGENET:
        location, source = _find_keras_file(published.weights_file)
        if location is None:
            raise ValueError(
                f"the ImageNet weights of {model_name} with its classifier are not on this machine: it needs "
                f"{published.weights_file}, looked for in {source}, and does not download them. Get the "
                f'file where there is internet access, with python -c "import keras; '
                f'keras.applications.{model_name}()" (it lands in ~/.keras/models) or from '
                f"{published.weights_url}; then copy it into Keras' cache folder or into a folder named by "
                f"${weight_files.ENV_WEIGHTS}, or pass its path as weights. weights='none' gives random weights "
                "for an offline smoke run"
            )
        return weight_files.read_weights(location, source, published)
    if not storage.exists(weights):
        raise ValueError(
            f"weights file {weights} does not exist; give the path of a {model_name} weights file "
            f"with its classifier (e.g. Keras' {published.weights_file}), 'imagenet' or 'none'"
        )
    return weight_files.read_weights(weights, "path", published)


def _find_keras_file(name: str):
    """``(location, source)`` of a Keras download in ``$MNIST_SPARK_WEIGHTS`` or Keras' cache, else
    ``(None, where it was looked for)``."""
    folder = os.environ.get(weight_files.ENV_WEIGHTS)
    candidates = [(storage.join(folder, name), f"${weight_files.ENV_WEIGHTS}")] if folder else []
    candidates += [(os.path.join(d, name), "keras cache") for d in weight_files.keras_cache_dirs()]
    for location, source in candidates:
        if storage.exists(location):
            return location, source
    places = f"${weight_files.ENV_WEIGHTS} ({folder})" if folder else f"${weight_files.ENV_WEIGHTS} (not set)"
    return None, f"{places} and Keras' cache {weight_files.keras_cache_dirs()[0]}"


_CLASS_NAMES: dict = {}  # (location, size, mtime) -> [(wnid, name), ...]


def imagenet_class_names() -> list:
    """``[(class id, description), ...]`` of the 1000 ImageNet classes, from Keras' class index file.

    ``imagenet_class_index.json`` (``{"0": ["n01440764", "tench"], ...}``) is
    looked for like the weights: in ``$MNIST_SPARK_WEIGHTS``, then Keras'
    cache (``~/.keras/models``, where ``keras.applications.imagenet_utils.decode_predictions``
    puts it). It is never downloaded.

    Raises
    ------
    ValueError
        When the file is missing or is not a class index.
    """
    location, source = _find_keras_file(CLASS_INDEX_FILE)
    if location is None:
        raise ValueError(
            f"the ImageNet class index {CLASS_INDEX_FILE} is not on this machine: looked for in {source}, and "
            "it is not downloaded. Get it where there is internet access, with python -c "
            '"import keras, numpy; keras.applications.imagenet_utils.decode_predictions('
            'numpy.zeros((1, 1000)))" (it lands in ~/.keras/models) or '
            f"from {CLASS_INDEX_URL}; then copy it into Keras' cache folder or into the "
            f"folder named by ${weight_files.ENV_WEIGHTS}, or set decodePredictions=False"
        )
    filesystem, path = storage.resolve(location)
    info = filesystem.get_file_info(path)
    key = (storage.to_uri(location), info.size, info.mtime_ns)
    if key not in _CLASS_NAMES:
        try:
            index = json.loads(storage.read_bytes(location))
            names = [tuple(index[str(i)]) for i in range(len(index))]
            if not names or any(len(n) != 2 or not all(isinstance(s, str) for s in n) for n in names):
                raise ValueError("entries are not [class id, description] pairs")
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(
                f"{location} is not an ImageNet class index ({type(error).__name__}: {error}); "
                f'it must map "0", "1", ... to [class id, description], as Keras\' '
                f"{CLASS_INDEX_FILE}; copy it again"
            ) from None
        _CLASS_NAMES.clear()
        _CLASS_NAMES[key] = names
    return _CLASS_NAMES[key]


def _build_top(model_name: str, image_size: int, payload: bytes | None, suffix: str = ""):
    """The network with its ImageNet classifier (softmax over 1000 classes); ``payload``: weights file bytes."""
    return featurizer.build_application(
        model_name,
        payload,
        suffix,
        include_top=True,
        input_shape=(image_size, image_size, 3),
        classes=IMAGENET_CLASSES,
        classifier_activation="softmax",
    )


_TOP_CHECKED: set = set()  # (modelName, size, digest) loaded into their network on this driver


def _check_top_weights(weights, model_name: str, image_size: int) -> None:
    key = (model_name, image_size, weights.digest)
    if key in _TOP_CHECKED:
        return
    try:
        _build_top(model_name, image_size, storage.read_bytes(weights.location), weights.suffix)
    except Exception as error:  # Keras and h5py raise several types for a file that does not fit
        text = " ".join(str(error).split())[:300]
        raise ValueError(
            f"weights file {weights.location} does not fit {model_name} with its classifier "
            f"({type(error).__name__}: {text}); give the weights of a {model_name} built with include_top=True "
            f"(e.g. Keras' {top_imagenet_weights(model_name).weights_file}), or set modelName to their network"
        ) from None
    _TOP_CHECKED.add(key)


class DeepImagePredictor(Transformer, HasInputCol, HasOutputCol, DefaultParamsReadable, DefaultParamsWritable):
    """ImageNet predictions of a pretrained network: sparkdl's ``DeepImagePredictor``.

    Runs ``modelName`` (``keras.applications``, with its classifier) on the
    image column, with the featurizer's machinery (:mod:`mnist_spark.featurizer`,
    :mod:`mnist_spark.weights`): weights found on the driver and
    broadcast once, the network built once per Python worker, images made RGB,
    resized (``scaleHint``) and given the network's ``preprocess_input``.

    Parameters
    ----------
    inputCol : str
        Spark's image struct column. Default ``image``.
    outputCol : str
        New column. Default ``predictions``: a dense vector of the 1000 class
        probabilities, or with ``decodePredictions`` the ``topK`` most probable
        classes as ``array<struct<class: string, description: string,
        probability: float>>`` (sparkdl's), most probable first.
    modelName : str
        ``InceptionV3`` (default), ``Xception``, ``ResNet50``, ``VGG16``, ``VGG19``.
    decodePredictions : bool
        Output class ids and names, from Keras' ``imagenet_class_index.json``
        (:func:`imagenet_class_names`). Default False.
    topK : int
        Classes kept with ``decodePredictions``. Default 5.
    imageSize : int
        Input side; 0 (default): native (299 or 224). InceptionV3, Xception and
        ResNet50 pool before their classifier and run smaller (at some cost in
        accuracy); VGG16 and VGG19 only at 224.
    scaleHint, batchSize, weights
        As :class:`mnist_spark.DeepImageFeaturizer`; ``imagenet`` means Keras'
        file with the top, e.g. ``resnet50_weights_tf_dim_ordering_tf_kernels.h5``.

    Examples
    --------
    >>> predictor = DeepImagePredictor(modelName="ResNet50", decodePredictions=True, topK=3)
    >>> predictor.getOutputCol(), predictor.getTopK()
    ('predictions', 3)
    """

    modelName: Param = _param(
        "modelName",
        "network of keras.applications with its ImageNet classifier: " + ", ".join(featurizer.SUPPORTED_MODELS),
        _choice("modelName", featurizer.SUPPORTED_MODELS),
    )
    decodePredictions: Param = _param(
        "decodePredictions", "output the topK (class, description, probability)", _flag("decodePredictions")
    )
    topK: Param = _param("topK", "classes kept when decodePredictions is true", _whole("topK", 1))
    imageSize: Param = _param(
        "imageSize", "side of the square input; 0: the network's native size", _whole("imageSize", 0)
    )
    scaleHint: Param = _param(
        "scaleHint",
        "resize filter, by sparkdl's names: " + ", ".join(featurizer.SCALE_HINTS),
        _choice("scaleHint", tuple(featurizer.SCALE_HINTS)),
    )
    batchSize: Param = _param("batchSize", "images per call of the network in a task", _whole("batchSize", 1))
    weights: Param = _param(
        "weights",
        "imagenet (Keras' cache or $MNIST_SPARK_WEIGHTS), a weights file path, or none (random)",
        featurizer._weights_value,
    )

    _DEFAULTS = dict(
        inputCol="image",
        outputCol="predictions",
        modelName=featurizer.DEFAULT_MODEL,
        decodePredictions=False,
        topK=5,
        imageSize=0,
        scaleHint=featurizer.DEFAULT_SCALE_HINT,
        batchSize=featurizer.DEFAULT_BATCH_SIZE,
        weights=weight_files.WEIGHTS_IMAGENET,
    )

    @keyword_only
    def __init__(
        self,
        *,
        inputCol="image",
        outputCol="predictions",
        modelName=featurizer.DEFAULT_MODEL,
        decodePredictions=False,
        topK=5,
        imageSize=0,
        scaleHint=featurizer.DEFAULT_SCALE_HINT,
        batchSize=featurizer.DEFAULT_BATCH_SIZE,
        weights=weight_files.WEIGHTS_IMAGENET,
    ):
        super().__init__()
        self._setDefault(**self._DEFAULTS)
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(
        self,
        *,
        inputCol="image",
        outputCol="predictions",
        modelName=featurizer.DEFAULT_MODEL,
        decodePredictions=False,
        topK=5,
        imageSize=0,
        scaleHint=featurizer.DEFAULT_SCALE_HINT,
        batchSize=featurizer.DEFAULT_BATCH_SIZE,
        weights=weight_files.WEIGHTS_IMAGENET,
    ):
        """Set any of the params by keyword; returns ``self``."""
        return self._set(**self._input_kwargs)

    def setInputCol(self, value) -> DeepImagePredictor:
        return self._set(inputCol=value)

    def setOutputCol(self, value) -> DeepImagePredictor:
        return self._set(outputCol=value)

    def setModelName(self, value) -> DeepImagePredictor:
        return self._set(modelName=value)

    def setDecodePredictions(self, value) -> DeepImagePredictor:
        return self._set(decodePredictions=value)

    def setTopK(self, value) -> DeepImagePredictor:
        return self._set(topK=value)

    def setImageSize(self, value) -> DeepImagePredictor:
        return self._set(imageSize=value)

    def setScaleHint(self, value) -> DeepImagePredictor:
        return self._set(scaleHint=value)

    def setBatchSize(self, value) -> DeepImagePredictor:
        return self._set(batchSize=value)

    def setWeights(self, value) -> DeepImagePredictor:
        return self._set(weights=value)

    def getModelName(self) -> str:
        return self.getOrDefault(self.modelName)

    def getDecodePredictions(self) -> bool:
        return self.getOrDefault(self.decodePredictions)

    def getTopK(self) -> int:
        return self.getOrDefault(self.topK)

    def getImageSize(self) -> int:
        return self.getOrDefault(self.imageSize)

    def getScaleHint(self) -> str:
        return self.getOrDefault(self.scaleHint)

    def getBatchSize(self) -> int:
        return self.getOrDefault(self.batchSize)

    def getWeights(self) -> str:
        return self.getOrDefault(self.weights)

    def effectiveImageSize(self) -> int:
        return self.getImageSize() or featurizer.ARCHITECTURES[self.getModelName()].native_size

    @staticmethod
    def _decoded_type():
        from pyspark.sql.types import ArrayType, FloatType, StringType, StructField, StructType

        return ArrayType(
            StructType(
                [
                    StructField("class", StringType(), False),
                    StructField("description", StringType(), False),
                    StructField("probability", FloatType(), False),
                ]
            ),
            False,
        )

    def transformSchema(self, schema):
        from pyspark.ml.linalg import VectorUDT
        from pyspark.sql.types import StructField, StructType

        stage = "DeepImagePredictor"
        name, size = self.getModelName(), self.effectiveImageSize()
        architecture = featurizer.ARCHITECTURES[name]
        if name in FIXED_SIZE_MODELS and size != architecture.native_size:
            raise ValueError(
                f"{stage}: {name}'s classifier takes {architecture.native_size} px images only, "
                f"found imageSize {size}; set imageSize to 0"
            )
        if size < architecture.min_size:
            raise ValueError(
                f"{stage}: imageSize {size} is below the {name} minimum of "
                f"{architecture.min_size} px; set imageSize to {architecture.min_size} or more, "
                f"or 0 for the native {architecture.native_size}"
            )
        if self.getDecodePredictions() and self.getTopK() > IMAGENET_CLASSES:
            raise ValueError(f"{stage}: topK {self.getTopK()} is more than the {IMAGENET_CLASSES} classes")
        _image_column(schema, self.getInputCol(), stage)
        _new_column(schema, self.getOutputCol(), stage, "outputCol")
        kind = self._decoded_type() if self.getDecodePredictions() else VectorUDT()
        return StructType(schema.fields + [StructField(self.getOutputCol(), kind, False)])

    def _transform(self, dataset):
        from pyspark.ml.functions import array_to_vector
        from pyspark.sql import functions as F
        from pyspark.sql.types import ArrayType, FloatType, StructField, StructType

        self.transformSchema(dataset.schema)
        name, size = self.getModelName(), self.effectiveImageSize()
        names = None
        if self.getDecodePredictions():
            names = imagenet_class_names()
            if len(names) != IMAGENET_CLASSES:
                location = _find_keras_file(CLASS_INDEX_FILE)[0]
                raise ValueError(
                    f"DeepImagePredictor: the class index {location} names {len(names)} classes "
                    f"but {name} outputs {IMAGENET_CLASSES}; give Keras' {CLASS_INDEX_FILE}"
                )
        weights = resolve_top_weights(self.getWeights(), name)
        broadcast = None
        if weights is not None:
            _check_top_weights(weights, name, size)
            broadcast = weight_files.broadcast_weights(dataset.sparkSession, weights)
        config = _PredictorConfig(
            name,
            size,
            self.getScaleHint(),
            self.getBatchSize(),
            self.getInputCol(),
            self.getOutputCol(),
            weights.digest if weights else "none",
            weights.suffix if weights else "",
            self.getTopK(),
            names,
        )
        logger.info(
            "DeepImagePredictor: %s at %d px, batches of %d, weights %s%s",
            name,
            size,
            config.batch_size,
            weights.describe() if weights else "none (random, seed 0)",
            f", top {config.top_k} decoded" if names else "",
        )

        def predict_batches(batches):
            from mnist_spark.session import device_scope

            def build():
                return _build_top(name, size, broadcast.value if broadcast is not None else None, config.weights_suffix)

            model = evaluation.worker_model(("predictor", name, size, config.weights_id), build)
            with device_scope():
                yield from _predict_imagenet(model, batches, config)

        kind = self._decoded_type() if names else ArrayType(FloatType(), False)
        schema = StructType(dataset.schema.fields + [StructField(config.output_col, kind, False)])
        scored = dataset.mapInArrow(predict_batches, schema)
        if names:
            return scored
        return scored.withColumn(config.output_col, array_to_vector(F.col(config.output_col)))


@dataclass(frozen=True)
class _PredictorConfig:
    model_name: str
    image_size: int
    scale_hint: str
    batch_size: int
    input_col: str
    output_col: str
    weights_id: str
    weights_suffix: str
    top_k: int
    names: list | None  #: (class id, description) per class when decoding


def _predict_imagenet(model, batches, config: _PredictorConfig):
    """Class probabilities (or the decoded top k) of Arrow batches of image structs."""
    import pyarrow as pa

    where = f"DeepImagePredictor column {config.input_col!r}"
    if config.names is not None:
        ids = np.array([n[0] for n in config.names], dtype=object)
        descriptions = np.array([n[1] for n in config.names], dtype=object)
        entry = pa.struct(
            [
                pa.field("class", pa.string(), False),
                pa.field("description", pa.string(), False),
                pa.field("probability", pa.float32(), False),
            ]
        )
        kind = pa.list_(pa.field("element", entry, False))
    else:
        kind = pa.list_(pa.field("element", pa.float32(), False))
    for batch in batches:
        column_at = batch.schema.get_field_index(config.input_col)
        for start in range(0, batch.num_rows, config.batch_size):
            part = batch.slice(start, config.batch_size)
            count = part.num_rows
            inputs = np.empty((count, config.image_size, config.image_size, 3), np.float32)
            for positions, pixels in featurizer._decode_groups(part.column(column_at), where):
                inputs[positions] = featurizer.preprocess_images(
                    pixels, config.model_name, config.image_size, config.scale_hint
                )
            probabilities = np.asarray(model.predict_on_batch(inputs), np.float32).reshape(count, -1)
            if config.names is None:
                width = probabilities.shape[1]
                values = pa.array(probabilities.reshape(-1))
            else:
                width = config.top_k
                top = np.argsort(-probabilities, axis=1, kind="stable")[:, :width]
                chosen = top.reshape(-1)
                values = pa.StructArray.from_arrays(
                    [
                        pa.array(ids[chosen], pa.string()),
                        pa.array(descriptions[chosen], pa.string()),
                        pa.array(np.take_along_axis(probabilities, top, axis=1).reshape(-1)),
                    ],
                    fields=list(entry),
                )
            offsets = pa.array(np.arange(0, (count + 1) * width, width, dtype=np.int32))
            column = pa.ListArray.from_arrays(offsets, values, type=kind)
            yield pa.RecordBatch.from_arrays(
                part.columns + [column],
                schema=pa.schema(list(part.schema) + [pa.field(config.output_col, kind, False)]),
            )


# --------------------------------------------------------------------------- SQL


def register_keras_udf(
    spark,
    name: str,
    model,
    *,
    output: str = "prediction",
    batch_size: int = 512,
    scale_hint: str = featurizer.DEFAULT_SCALE_HINT,
    channel_order: str = "BGR",
):
    """Register a saved Keras classifier as the SQL function ``name(image)``.

    sparkdl's ``registerKerasImageUDF``: after ``register_keras_udf(spark,
    "digit", "runs/cnn/model.keras")``, ``SELECT digit(image) FROM images``
    gives each image's most probable class (``int``), or with
    ``output="probabilities"`` the model's output (``array<float>``). Images
    are resized and their channels converted to the model's input as in
    :class:`KerasImageTransformer`.

    It is a scalar Arrow UDF on the worker-cached model path: the model file
    is broadcast once, each Python worker loads it once
    (:func:`mnist_spark.evaluation.load_model_bytes`, the cache the other
    stages share) and decodes the Arrow image structs directly.
    ``benchmarks/ml_scoring.py`` measured it against the same function on
    ``pyspark.ml.functions.predict_batch_udf`` (which hands the structs to
    Python as pandas objects), on 2 cores with a ``bn_cnn``: at a steady
    state on the 70,000 MNIST images it scored 18,260 images/s against
    17,880 (2% faster, within the machine's noise); as a whole job on the
    10,000 test images the two were within 2% the other way (8,857 against
    9,058). Both give ``jobs/predict.py``'s predictions on all 10,000.

    Parameters
    ----------
    spark : SparkSession
    name : str
        The SQL function's name.
    model : str
        A saved ``.keras`` model (path, URI, or a run folder holding ``model.keras``).
    output : str
        ``prediction`` (default) or ``probabilities``.
    batch_size : int
        Images per call of the model.
    scale_hint, channel_order
        As :class:`KerasImageTransformer`'s ``scaleHint`` and ``channelOrder``.

    Returns
    -------
    The registered UDF, usable in the DataFrame API too: ``df.select(udf("image"))``.

    Raises
    ------
    ValueError
        For a missing or damaged model file, a model that does not take images
        or give one row of values per image, or a bad option, before anything runs.
    """
    build = _worker_cached_udf
    udf = build(
        spark,
        _udf_model(model, output, batch_size, scale_hint, channel_order),
        output,
        batch_size,
        scale_hint,
        channel_order,
    )
    spark.udf.register(name, udf)
    logger.info("registered SQL function %s(image) -> %s of %s", name, output, model)
    return udf


def _udf_model(model, output, batch_size, scale_hint, channel_order) -> KerasFile:
    _choice("output", UDF_OUTPUTS)(output)
    _whole("batch_size", 1)(batch_size)
    _choice("scale_hint", tuple(featurizer.SCALE_HINTS))(scale_hint)
    _choice("channel_order", CHANNEL_ORDERS)(channel_order)
    return read_keras_file(_path(model), "register_keras_udf")


def _udf_type(output: str):
    from pyspark.sql.types import ArrayType, FloatType, IntegerType

    return IntegerType() if output == "prediction" else ArrayType(FloatType(), False)


def _worker_cached_udf(spark, model: KerasFile, output, batch_size, scale_hint, channel_order):
    """A scalar-iterator Arrow UDF: the broadcast model, loaded once per Python worker."""
    from pyspark.sql.functions import ArrowUDFType, arrow_udf

    from mnist_spark.payloads import ship

    shipped = ship(spark, model.payload, "model")  # a broadcast, or on Spark Connect the closure
    decode = image_decoder(
        model.input_shape, scale_hint=scale_hint, rgb=channel_order == "RGB", where="SQL function argument"
    )
    width = model.outputs

    def score(arrays):
        import pyarrow as pa

        from mnist_spark.session import device_scope

        net = evaluation.load_model_bytes(shipped.value)
        with device_scope():
            for array in arrays:
                parts = []
                for start in range(0, len(array), batch_size):
                    part = array.slice(start, batch_size)
                    values = np.asarray(net.predict_on_batch(decode(part).astype(np.float32)), np.float32)
                    parts.append(values.reshape(len(part), -1))
                values = np.concatenate(parts) if parts else np.zeros((0, width), np.float32)
                if output == "prediction":
                    yield pa.array(values.argmax(axis=1).astype(np.int32))
                else:
                    offsets = pa.array(np.arange(0, (len(values) + 1) * width, width, dtype=np.int32))
                    yield pa.ListArray.from_arrays(
                        offsets, pa.array(values.reshape(-1)), type=pa.list_(pa.field("element", pa.float32(), False))
                    )

    with warnings.catch_warnings():  # the type is given, not hinted: the hints' pyarrow is imported late
        warnings.filterwarnings("ignore", message="It is preferred to specify type hints")
        return arrow_udf(score, _udf_type(output), ArrowUDFType.SCALAR_ITER)


def _predict_batch_udf(spark, model: KerasFile, output, batch_size, scale_hint, channel_order):
    """The same function on ``pyspark.ml.functions.predict_batch_udf`` (measured against the other)."""
    from pyspark.ml.functions import predict_batch_udf

    from mnist_spark.payloads import ship

    shipped = ship(spark, model.payload, "model")  # a broadcast, or on Spark Connect the closure
    shape, rgb = model.input_shape, channel_order == "RGB"

    def make_predict_fn():
        from mnist_spark.session import configure_tensorflow_threads

        configure_tensorflow_threads()
        net = evaluation.model_from_bytes(shipped.value, compile=False)

        def predict(rows):  # predict_batch_udf gives a struct as an object array: one row per image
            sizes = rows[:, 1:4].astype(np.int64)
            if (sizes == sizes[0]).all():
                pixels = np.frombuffer(b"".join(rows[:, 5]), np.uint8).reshape(len(rows), *sizes[0])
                pixels = fit_pixels(pixels, shape, scale_hint=scale_hint, rgb=rgb)
            else:
                pixels = np.concatenate(
                    [
                        fit_pixels(
                            np.frombuffer(row[5], np.uint8).reshape(1, *size), shape, scale_hint=scale_hint, rgb=rgb
                        )
                        for row, size in zip(rows, sizes, strict=True)
                    ]
                )
            values = np.asarray(net.predict_on_batch(pixels.astype(np.float32)), np.float32)
            values = values.reshape(len(rows), -1)
            return values.argmax(axis=1).astype(np.int32) if output == "prediction" else values

        return predict

    return predict_batch_udf(make_predict_fn, return_type=_udf_type(output), batch_size=batch_size)
