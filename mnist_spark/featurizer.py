"""DeepImageFeaturizer: pretrained Keras networks as a pure-Python Spark ML Transformer.

sparkdl's ``DeepImageFeaturizer`` on today's stack: the same params
(``inputCol``, ``outputCol``, ``modelName``, ``scaleHint``), and it fits in a
``pyspark.ml.Pipeline`` the same way, but it needs no JVM jar, no TensorFlow 1
and no Spark 2.4. It adds ``pooling``, ``imageSize``, ``batchSize`` and
``weights``.

How a DataFrame is featurized:

1. On the driver, before any task runs, :meth:`DeepImageFeaturizer.transformSchema`
   checks the columns and params, and the weights are found
   (:func:`mnist_spark.weights.resolve_weights`) and checked against the
   network (:func:`check_weights`): a missing ImageNet file, a truncated file
   or the weights of another network is one clear error here, never a
   traceback from an executor.
2. The weight file's bytes are broadcast once
   (:func:`mnist_spark.weights.broadcast_weights`). Each Python worker builds the
   network once, loads the weights and keeps the model for its later batches
   and tasks (:func:`mnist_spark.evaluation.worker_model`, keyed by model
   name, image size, pooling and the weights' SHA-256).
3. ``mapInArrow`` decodes the image structs of each Arrow batch
   (:func:`mnist_spark.images.struct_array_to_numpy`), converts grayscale to
   three channels and Spark's BGR to RGB, resizes to ``imageSize`` with the
   ``scaleHint`` filter, applies the network's own ``preprocess_input``
   (:func:`preprocess_images`) and runs it on ``batchSize`` images at a time.
   The output column is a dense ``VectorUDT``.

With ``modelFile`` (and ``outputLayer``) the network is your own ``.keras``
file instead (:func:`user_network`): loaded in safe mode and checked on the
driver, shipped like the weights, cut at the feature layer in the workers.

TensorFlow is imported only inside the functions that run the network, so
importing this module (or ``from mnist_spark import DeepImageFeaturizer``) is
cheap.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import tempfile
import time
import warnings
from dataclasses import dataclass, replace

import numpy as np
from pyspark import keyword_only
from pyspark.ml import Transformer
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasInputCol, HasOutputCol

from mnist_spark.persistence import SavesModelFile
from mnist_spark.weights import (
    IMAGENET_WEIGHTS,
    WEIGHTS_IMAGENET,
    WEIGHTS_NONE,
    ZIP_SIGNATURE,
    WeightsFile,
    broadcast_weights,
    resolve_weights,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Architecture:
    """What the featurizer needs to know about one ``keras.applications`` network."""

    name: str  #: the modelName, e.g. ``InceptionV3``
    module: str  #: its ``keras.applications`` submodule, e.g. ``inception_v3``
    native_size: int  #: the input size it was trained at
    min_size: int  #: the smallest input size Keras accepts without the top
    channels: int  #: values per position of its last block (the pooled feature size)


#: The networks by modelName (sparkdl's five), in sparkdl's order; their ImageNet weight files are
#: :data:`mnist_spark.weights.IMAGENET_WEIGHTS`.
ARCHITECTURES = {
    a.name: a
    for a in (
        Architecture(
            "InceptionV3",
            "inception_v3",
            299,
            75,
            2048,
        ),
        Architecture(
            "Xception",
            "xception",
            299,
            71,
            2048,
        ),
        Architecture(
            "ResNet50",
            "resnet50",
            224,
            32,
            2048,
        ),
        Architecture(
            "VGG16",
            "vgg16",
            224,
            32,
            512,
        ),
        Architecture(
            "VGG19",
            "vgg19",
            224,
            32,
            512,
        ),
    )
}
SUPPORTED_MODELS = tuple(ARCHITECTURES)

#: sparkdl's resize hints (Java's ``Image.SCALE_*``) and the Pillow filter each one uses.
SCALE_HINTS = {
    "SCALE_AREA_AVERAGING": "BOX",
    "SCALE_DEFAULT": "BILINEAR",
    "SCALE_FAST": "NEAREST",
    "SCALE_REPLICATE": "NEAREST",
    "SCALE_SMOOTH": "BICUBIC",
}
#: ``pooling`` choices: ``avg`` and ``max`` give ``channels`` values per image,
#: ``none`` the flat output of the last block (sparkdl's vector).
POOLING_CHOICES = ("avg", "max", "none")
#: The seed of the random weights of ``weights="none"``: every worker builds the same network.
RANDOM_WEIGHTS_SEED = 0

DEFAULT_MODEL = "InceptionV3"
#: ``FeaturizerConfig.model_name`` of a network from ``modelFile``.
MODEL_FILE = "modelFile"
DEFAULT_SCALE_HINT = "SCALE_AREA_AVERAGING"
DEFAULT_POOLING = "avg"
DEFAULT_BATCH_SIZE = 32


# --------------------------------------------------------------------------- param converters


def _choice(param: str, choices):
    """A type converter that accepts one of ``choices`` (strings) and names them otherwise."""

    def convert(value):
        value = TypeConverters.toString(value)
        if value not in choices:
            raise ValueError(f"{value!r} is not a supported {param}; choose one of: {', '.join(choices)}")
        return value

    return convert


def _whole(param: str, minimum: int):
    def convert(value):
        if isinstance(value, bool):
            raise TypeError(f"{param} must be a whole number, found {value!r}")
        value = TypeConverters.toInt(value)
        if value < minimum:
            raise ValueError(f"{param} must be {minimum} or more, found {value}")
        return value

    return convert


def _path_value(value):
    return TypeConverters.toString(os.fspath(value) if isinstance(value, os.PathLike) else value).strip()


def _weights_value(value):
    value = TypeConverters.toString(os.fspath(value) if isinstance(value, os.PathLike) else value)
    if not value.strip():
        raise ValueError("weights must be 'imagenet', 'none' or the path of a weights file, found ''")
    return value


# --------------------------------------------------------------------------- the Transformer


class DeepImageFeaturizer(Transformer, HasInputCol, HasOutputCol, SavesModelFile):
    """Features of images from a pretrained network without its top layers.

    Applies ``modelName`` (a ``keras.applications`` network, its classifier
    removed) to Spark's image struct column ``inputCol`` and writes a dense
    vector per image to ``outputCol``, so that a ``LogisticRegression`` can be
    trained on it in the same ``Pipeline``. Saves and loads with the pipeline
    (:mod:`mnist_spark.persistence`, which keeps a ``modelFile`` inside the saved
    folder); the weights are found again when a loaded
    model first transforms.

    Parameters
    ----------
    inputCol : str
        Column of Spark's image struct (grayscale, BGR or BGRA, 8-bit, any
        size). Default ``image``.
    outputCol : str
        New column of dense vectors. Default ``features``.
    modelName : str
        One of :data:`SUPPORTED_MODELS`. Default ``InceptionV3``.
    scaleHint : str
        sparkdl's resize hint, one of :data:`SCALE_HINTS` (``SCALE_AREA_AVERAGING``
        resizes with Pillow's BOX filter, which is area averaging). Default
        ``SCALE_AREA_AVERAGING``, as in sparkdl.
    pooling : str
        ``avg`` (default; 2048 values for InceptionV3), ``max``, or ``none``:
        sparkdl's flat unpooled output (131,072 values for InceptionV3 at 299 px).
    imageSize : int
        Side of the square the images are resized to. 0 (default) means the
        network's native size (299 for InceptionV3 and Xception, 224 for the
        others); below it is much cheaper (InceptionV3 at 75 px, its minimum,
        needs about 1/19 of the work of 299 px).
    batchSize : int
        Images per call of the network in a task. Default 32.
    weights : str
        ``imagenet`` (default): Keras' ImageNet weights, from ``$MNIST_SPARK_WEIGHTS``
        or Keras' cache ``~/.keras/models``; a path (or URI) of a weights file
        (``.h5`` as Keras publishes them, ``.weights.h5`` from ``save_weights``,
        or a folder holding the file under Keras' name); or ``none``: random
        weights from a fixed seed, for offline smoke tests only.
    modelFile : str
        A ``.keras`` file of your own network (path or URI), used instead of
        ``modelName`` and ``weights``. It is loaded in Keras' safe mode, must
        take one image input ``(batch, height, width, 1 or 3)`` and receives
        the pixels 0-255 resized to its input (grayscale or RGB as it
        expects), with no ``preprocess_input``: the network scales them
        itself, as the models of ``train_cnn`` do. A saved featurizer or
        ``PipelineModel`` keeps a copy of the file inside its folder.
    outputLayer : str
        With ``modelFile``: the layer whose output is the feature vector
        (pooled by ``pooling`` when it is spatial). Default: the last layer
        before the classifier.

    Raises
    ------
    ValueError
        For an unsupported ``modelName``, ``scaleHint`` or ``pooling``, or a
        negative ``imageSize``, when set; from :meth:`transform`, for a bad
        column, an ``imageSize`` below the network's minimum, or weights that
        are missing or do not fit.
    TypeError
        For a param or an input column of the wrong type.

    Examples
    --------
    >>> from pyspark.ml import Pipeline
    >>> from pyspark.ml.classification import LogisticRegression
    >>> featurizer = DeepImageFeaturizer(modelName="InceptionV3", imageSize=75)
    >>> featurizer.getOutputCol(), featurizer.getPooling()
    ('features', 'avg')
    >>> pipeline = Pipeline(stages=[featurizer, LogisticRegression(maxIter=20)])
    >>> model = pipeline.fit(train_df)  # doctest: +SKIP
    """

    modelName: Param = Param(
        Params._dummy(),
        "modelName",
        f"network of keras.applications without its top: {', '.join(SUPPORTED_MODELS)}",
        typeConverter=_choice("modelName", SUPPORTED_MODELS),
    )
    scaleHint: Param = Param(
        Params._dummy(),
        "scaleHint",
        "resize filter, by sparkdl's names: " + ", ".join(f"{k} ({v})" for k, v in SCALE_HINTS.items()),
        typeConverter=_choice("scaleHint", tuple(SCALE_HINTS)),
    )
    pooling: Param = Param(
        Params._dummy(),
        "pooling",
        "avg or max: one value per channel of the last block; none: its flat output (sparkdl's)",
        typeConverter=_choice("pooling", POOLING_CHOICES),
    )
    imageSize: Param = Param(
        Params._dummy(),
        "imageSize",
        "side of the square input in pixels; 0: the network's native size",
        typeConverter=_whole("imageSize", 0),
    )
    batchSize: Param = Param(
        Params._dummy(), "batchSize", "images per call of the network in a task", typeConverter=_whole("batchSize", 1)
    )
    weights: Param = Param(
        Params._dummy(),
        "weights",
        "imagenet (Keras' cache or $MNIST_SPARK_WEIGHTS), a weights file path, or none (random)",
        typeConverter=_weights_value,
    )
    modelFile: Param = Param(
        Params._dummy(),
        "modelFile",
        "a .keras file (path or URI) of your own network, loaded in safe mode; used instead of modelName",
        typeConverter=_path_value,
    )
    outputLayer: Param = Param(
        Params._dummy(),
        "outputLayer",
        "with modelFile: the layer whose output is the feature vector; '': the last layer before the classifier",
        typeConverter=TypeConverters.toString,
    )

    @keyword_only
    def __init__(
        self,
        *,
        inputCol="image",
        outputCol="features",
        modelName=DEFAULT_MODEL,
        scaleHint=DEFAULT_SCALE_HINT,
        pooling=DEFAULT_POOLING,
        imageSize=0,
        batchSize=DEFAULT_BATCH_SIZE,
        weights=WEIGHTS_IMAGENET,
        modelFile="",
        outputLayer="",
    ):
        super().__init__()
        self._setDefault(
            inputCol="image",
            outputCol="features",
            modelName=DEFAULT_MODEL,
            scaleHint=DEFAULT_SCALE_HINT,
            pooling=DEFAULT_POOLING,
            imageSize=0,
            batchSize=DEFAULT_BATCH_SIZE,
            weights=WEIGHTS_IMAGENET,
            modelFile="",
            outputLayer="",
        )
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(
        self,
        *,
        inputCol="image",
        outputCol="features",
        modelName=DEFAULT_MODEL,
        scaleHint=DEFAULT_SCALE_HINT,
        pooling=DEFAULT_POOLING,
        imageSize=0,
        batchSize=DEFAULT_BATCH_SIZE,
        weights=WEIGHTS_IMAGENET,
        modelFile="",
        outputLayer="",
    ):
        """Set any of the params by keyword; returns ``self``."""
        return self._set(**self._input_kwargs)

    def setInputCol(self, value: str) -> DeepImageFeaturizer:
        return self._set(inputCol=value)

    def setOutputCol(self, value: str) -> DeepImageFeaturizer:
        return self._set(outputCol=value)

    def setModelName(self, value: str) -> DeepImageFeaturizer:
        return self._set(modelName=value)

    def getModelName(self) -> str:
        return self.getOrDefault(self.modelName)

    def setScaleHint(self, value: str) -> DeepImageFeaturizer:
        return self._set(scaleHint=value)

    def getScaleHint(self) -> str:
        return self.getOrDefault(self.scaleHint)

    def setPooling(self, value: str) -> DeepImageFeaturizer:
        return self._set(pooling=value)

    def getPooling(self) -> str:
        return self.getOrDefault(self.pooling)

    def setImageSize(self, value: int) -> DeepImageFeaturizer:
        return self._set(imageSize=value)

    def getImageSize(self) -> int:
        return self.getOrDefault(self.imageSize)

    def setBatchSize(self, value: int) -> DeepImageFeaturizer:
        return self._set(batchSize=value)

    def getBatchSize(self) -> int:
        return self.getOrDefault(self.batchSize)

    def setWeights(self, value: str) -> DeepImageFeaturizer:
        return self._set(weights=value)

    def getWeights(self) -> str:
        return self.getOrDefault(self.weights)

    def setModelFile(self, value: str) -> DeepImageFeaturizer:
        return self._set(modelFile=value)

    def getModelFile(self) -> str:
        return self.getOrDefault(self.modelFile)

    def setOutputLayer(self, value: str) -> DeepImageFeaturizer:
        return self._set(outputLayer=value)

    def getOutputLayer(self) -> str:
        return self.getOrDefault(self.outputLayer)

    def effectiveImageSize(self) -> int:
        """The input size used: ``imageSize``, or the network's native size when it is 0.

        With ``modelFile``, the larger side of the model's input.
        """
        return max(self.inputShape()[:2])

    def inputShape(self) -> tuple:
        """``(height, width, channels)`` that the network receives.

        A ``keras.applications`` network takes RGB squares of ``imageSize``
        (or its native size); a ``modelFile`` network takes its own input
        shape, with ``imageSize`` filling in a side the model leaves open.
        """
        if not self.getModelFile():
            size = self.getImageSize() or ARCHITECTURES[self.getModelName()].native_size
            return (size, size, 3)
        network = user_network(self.getModelFile(), self.getOutputLayer())
        return network.input_shape_for(self.getImageSize())

    def _check_input_size(self) -> None:
        if self.getModelFile():
            self.inputShape()  # loads and checks the model file, the layer and imageSize
            return
        architecture = ARCHITECTURES[self.getModelName()]
        size = self.effectiveImageSize()
        if size < architecture.min_size:
            raise ValueError(
                f"imageSize {size} is below the {architecture.name} minimum of {architecture.min_size} "
                f"px; set imageSize to {architecture.min_size} or more (its native size is "
                f"{architecture.native_size}), or 0 for the native size"
            )

    def checkNetwork(self) -> None:
        """Check on the driver, before any data is read, that the network can run as set.

        The checks :meth:`transform` makes of the params and the weights (or
        the ``modelFile``), without a DataFrame; each failure is one
        ``ValueError``.
        """
        self._check_input_size()
        if not self.getModelFile():
            weights = resolve_weights(self.getWeights(), self.getModelName())
            if weights is not None:
                check_weights(weights, self.getModelName())

    def transformSchema(self, schema):
        """Check the input schema and the params on the driver; return the output schema.

        Raises
        ------
        ValueError
            For a missing input column, an existing output column or an
            ``imageSize`` below the network's minimum.
        TypeError
            When the input column is not Spark's image struct.
        """
        from pyspark.ml.linalg import VectorUDT
        from pyspark.sql.types import StructField, StructType

        from mnist_spark.images import image_struct_type

        self._check_input_size()
        input_col, output_col = self.getInputCol(), self.getOutputCol()
        names = schema.fieldNames()
        if input_col not in names:
            raise ValueError(
                f"DeepImageFeaturizer: the DataFrame has no input column {input_col!r} "
                f"(columns: {', '.join(names)}); set inputCol to its column of images"
            )
        found = schema[input_col].dataType
        wanted = image_struct_type()

        def fields(struct):
            return [(f.name, f.dataType) for f in struct.fields]

        if not (isinstance(found, StructType) and fields(found) == fields(wanted)):
            raise TypeError(
                f"DeepImageFeaturizer: column {input_col!r} must be Spark's image struct "
                f"({wanted.simpleString()}), found {found.simpleString()}; read images with "
                "spark.read.format('image'), mnist_spark.pngset.read_png_set or mnist_spark.ingest"
            )
        if output_col in names:
            raise ValueError(
                f"DeepImageFeaturizer: output column {output_col!r} already exists in the DataFrame; "
                "set outputCol to a new name or drop that column first"
            )
        return StructType(schema.fields + [StructField(output_col, VectorUDT(), False)])

    def _transform(self, dataset):
        from pyspark.ml.functions import array_to_vector
        from pyspark.sql import functions as F
        from pyspark.sql.types import ArrayType, FloatType, StructField, StructType

        self.transformSchema(dataset.schema)
        config = FeaturizerConfig(
            model_name=self.getModelName(),
            image_size=self.effectiveImageSize(),
            pooling=self.getPooling(),
            scale_hint=self.getScaleHint(),
            batch_size=self.getBatchSize(),
            input_col=self.getInputCol(),
            output_col=self.getOutputCol(),
            weights_id=WEIGHTS_NONE,
            input_shape=self.inputShape(),
        )
        if self.getModelFile():
            network = user_network(self.getModelFile(), self.getOutputLayer())
            weights = network.file
            config = replace(config, model_name=MODEL_FILE, output_layer=network.output_layer)
            described = f"{network.file.location}, layer {network.output_layer!r}"
        else:
            weights = resolve_weights(self.getWeights(), config.model_name)
            if weights is not None:
                check_weights(weights, config.model_name)
            described = config.model_name
        broadcast = None
        if weights is not None:
            broadcast = broadcast_weights(dataset.sparkSession, weights)
            config = config.with_weights(weights)
        logger.info(
            "DeepImageFeaturizer: %s at %s, pooling %s, batches of %d, weights %s",
            described,
            "x".join(map(str, config.input_shape)),
            config.pooling,
            config.batch_size,
            weights.describe() if weights is not None else "none (random, seed 0)",
        )

        def featurize(batches):
            yield from featurize_batches(batches, config, broadcast)

        schema = StructType(
            dataset.schema.fields + [StructField(config.output_col, ArrayType(FloatType(), False), False)]
        )
        column = F.col("`" + config.output_col.replace("`", "``") + "`")
        return dataset.mapInArrow(featurize, schema).withColumn(config.output_col, array_to_vector(column))


def featurizer_for(base_model: str, **params) -> DeepImageFeaturizer:
    """A featurizer of ``base_model``: a network of :data:`SUPPORTED_MODELS` by name, or your own.

    Parameters
    ----------
    base_model : str
        ``InceptionV3`` (or another of :data:`SUPPORTED_MODELS`), a ``.keras``
        file, or a ``train_cnn`` run folder holding ``model.keras``.
    **params
        Other params of :class:`DeepImageFeaturizer`; ``weights`` only
        applies to a network by name.

    Raises
    ------
    ValueError
        When ``base_model`` is neither a supported name nor an existing path.
    """
    from mnist_spark import evaluation, storage

    if base_model in ARCHITECTURES:
        return DeepImageFeaturizer(modelName=base_model, **params)
    params.pop("weights", None)
    if not storage.exists(base_model):
        raise ValueError(
            f"base model {base_model!r} is neither a network of keras.applications ({', '.join(SUPPORTED_MODELS)}) "
            "nor an existing .keras file or train_cnn run folder; check the name or the path"
        )
    return DeepImageFeaturizer(modelFile=evaluation.model_file(base_model), **params)


# --------------------------------------------------------------------------- what a task needs


@dataclass(frozen=True)
class FeaturizerConfig:
    """Everything a task needs to featurize: plain values, cheap to ship with the closure."""

    model_name: str
    image_size: int
    pooling: str
    scale_hint: str
    batch_size: int
    input_col: str
    output_col: str
    weights_id: str  #: ``none``, or the SHA-256 of the weights file (or of the model file)
    weights_suffix: str = ""
    input_shape: tuple = ()  #: ``(height, width, channels)`` the network receives
    output_layer: str = ""  #: the feature layer of a ``modelFile`` network

    def with_weights(self, weights: WeightsFile) -> FeaturizerConfig:
        return replace(self, weights_id=weights.digest, weights_suffix=weights.suffix)

    @property
    def cache_key(self) -> tuple:
        return ("featurizer", self.model_name, self.input_shape, self.pooling, self.weights_id, self.output_layer)


# --------------------------------------------------------------------------- weights against the network

_CHECKED: set = set()  # (modelName, digest) pairs loaded into their network on this driver


def check_weights(weights: WeightsFile, model_name: str) -> None:
    """Load the weights into ``model_name``'s network on the driver, once per file.

    Raises
    ------
    ValueError
        When the file is damaged or holds the weights of another network.
    """
    from mnist_spark import storage

    key = (model_name, weights.digest)
    if key in _CHECKED:
        return
    architecture = ARCHITECTURES[model_name]
    started = time.perf_counter()
    try:
        _build(model_name, architecture.min_size, DEFAULT_POOLING, storage.read_bytes(weights.location), weights.suffix)
    except Exception as error:  # Keras and h5py raise several types for a file that does not fit
        text = " ".join(str(error).split())
        text = text if len(text) < 300 else text[:300] + "..."
        if isinstance(error, OSError):
            raise ValueError(
                f"weights file {weights.location} is damaged or truncated ({text}); copy or download it again"
            ) from None
        raise ValueError(
            f"weights file {weights.location} does not fit {model_name} without its top layers "
            f"({type(error).__name__}: {text}); give the weights of a {model_name} built with "
            f"include_top=False (e.g. Keras' {IMAGENET_WEIGHTS[model_name].weights_file}), or set modelName to "
            "the network they belong to"
        ) from None
    _CHECKED.add(key)
    logger.info(
        "weights %s fit %s (checked on the driver in %.1f s)",
        weights.location,
        model_name,
        time.perf_counter() - started,
    )


# --------------------------------------------------------------------------- your own network


@dataclass(frozen=True)
class UserNetwork:
    """A ``modelFile`` network, loaded and checked on the driver."""

    file: WeightsFile  #: the ``.keras`` file, read and hashed once; shipped like weights
    output_layer: str  #: the feature layer, named or found (:func:`default_feature_layer`)
    input_shape: tuple  #: ``(height, width, channels)``; ``None`` for a side the model leaves open
    layers: tuple  #: every layer's name, for error messages

    def input_shape_for(self, image_size: int = 0) -> tuple:
        """The input shape with open sides set to ``image_size``; checks that they agree."""
        height, width, channels = self.input_shape
        if image_size and any(side not in (None, image_size) for side in (height, width)):
            raise ValueError(
                f"imageSize {image_size} does not fit model file {self.file.location}, whose input is "
                f"{height}x{width}; leave imageSize at 0 to use the model's size"
            )
        if (height is None or width is None) and not image_size:
            raise ValueError(
                f"model file {self.file.location} takes images of any size ({height}x{width}); "
                "set imageSize to the side the network should see"
            )
        return (height or image_size, width or image_size, channels)


_NETWORKS: dict = {}  # (location, size, mtime, outputLayer) -> UserNetwork


def user_network(location: str, output_layer: str = "") -> UserNetwork:
    """Load a ``.keras`` file in safe mode on the driver and check that it can featurize images.

    Parameters
    ----------
    location : str
        Path or URI of a ``.keras`` file (``model.save``); no Python code in
        it runs (Keras' ``safe_mode``).
    output_layer : str
        The layer whose output is the feature vector; ``""`` picks the last
        layer before the classifier (:func:`default_feature_layer`).

    Raises
    ------
    ValueError
        When the file is missing or is not a ``.keras`` model, when the model
        does not take one batch of images (``(batch, height, width, 1 or 3)``),
        or when it has no layer ``output_layer``.
    """
    from mnist_spark import storage
    from mnist_spark.evaluation import model_from_bytes

    if not storage.exists(location):
        raise ValueError(
            f"model file {location} does not exist; give the path of a .keras file "
            "(a train_cnn run folder's model.keras, or your own model.save output)"
        )
    filesystem, path = storage.resolve(location)
    info = filesystem.get_file_info(path)
    key = (storage.to_uri(location), info.size, info.mtime_ns, output_layer)
    if key in _NETWORKS:
        return _NETWORKS[key]
    payload = storage.read_bytes(location)
    if not payload.startswith(ZIP_SIGNATURE):
        raise ValueError(
            f"model file {location} is not a .keras file (a zip archive written by "
            "model.save); save the network with model.save('name.keras')"
        )
    try:
        model = model_from_bytes(payload, compile=False)
    except Exception as error:  # Keras raises several types for files it cannot rebuild
        text = " ".join(str(error).split())[:300]
        raise ValueError(
            f"model file {location} could not be loaded in safe mode ({type(error).__name__}: "
            f"{text}); save it again with model.save, using only built-in Keras layers"
        ) from None
    layers = tuple(layer.name for layer in model.layers)
    inputs = getattr(model, "inputs", None) or []
    shape = tuple(inputs[0].shape) if len(inputs) == 1 else ()
    if len(shape) != 4 or shape[3] not in (1, 3):
        from mnist_spark.models import shape_text

        found = ", ".join(shape_text(i.shape) for i in inputs) or "none"
        raise ValueError(
            f"model file {location} does not take images: its input is {found}; the featurizer feeds "
            "(batch, height, width, 1 or 3) pixels 0-255, so give a model whose one input is an image"
        )
    name = output_layer or default_feature_layer(model)
    if name not in layers:
        raise ValueError(f"model file {location} has no layer {name!r}; set outputLayer to one of: {', '.join(layers)}")
    file = WeightsFile(
        storage.to_uri(location), len(payload), hashlib.sha256(payload).hexdigest(), ".keras", "modelFile"
    )
    network = UserNetwork(file, name, tuple(shape[1:]), layers)
    _NETWORKS.clear()  # keep one file's record at a time
    _NETWORKS[key] = network
    return network


def default_feature_layer(model) -> str:
    """The last layer before the classifier: the one feeding the last layer, past any Dropout.

    For the models of :mod:`mnist_spark.models` this is the activation of the
    last hidden dense layer (128 values).
    """
    import keras

    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    if len(layers) < 2:
        raise ValueError(f"model {model.name!r} has a single layer and nothing below its classifier; set outputLayer")
    position = len(layers) - 2
    while position > 0 and isinstance(layers[position], keras.layers.Dropout):
        position -= 1
    return layers[position].name


def feature_model(model, output_layer: str, pooling: str = DEFAULT_POOLING):
    """``model`` cut at ``output_layer``; a spatial output is pooled (``avg``, ``max``) or flattened.

    Examples
    --------
    >>> import keras
    >>> net = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, name="conv"),
    ...                         keras.layers.Flatten(), keras.layers.Dense(2)])
    >>> feature_model(net, "conv", "avg").output_shape
    (None, 4)
    >>> feature_model(net, "conv", "none").output_shape
    (None, 144)
    """
    import keras

    output = model.get_layer(output_layer).output
    if len(output.shape) == 4 and pooling != "none":
        pool = keras.layers.GlobalAveragePooling2D if pooling == "avg" else keras.layers.GlobalMaxPooling2D
        output = pool(name="feature_pooling")(output)
    elif len(output.shape) > 2:
        output = keras.layers.Flatten(name="feature_flatten")(output)
    return keras.Model(model.inputs, output, name=f"{model.name}_features")


def _load_network(payload: bytes):
    from mnist_spark.evaluation import model_from_bytes

    return model_from_bytes(payload, compile=False)


# --------------------------------------------------------------------------- the network


def _build(model_name: str, image_size: int, pooling: str, payload: bytes | None, suffix: str = ""):
    """Build the network without its top; load ``payload`` (bytes of a weights file) or seed it."""
    return build_application(
        model_name,
        payload,
        suffix,
        include_top=False,
        input_shape=(image_size, image_size, 3),
        pooling=None if pooling == "none" else pooling,
    )


def build_application(model_name: str, payload: bytes | None, suffix: str = "", **arguments):
    """``keras.applications.<model_name>(weights=None, **arguments)`` with ``payload`` loaded into it.

    ``payload`` holds the bytes of a weights file (``suffix`` says how Keras
    loads it); without it the weights are random from
    :data:`RANDOM_WEIGHTS_SEED`, the same in every worker, and the caller's
    random generators are left as they were.
    """
    import keras

    constructor = getattr(keras.applications, model_name)
    if payload is None:
        python_state, numpy_state = random.getstate(), np.random.get_state()
        keras.utils.set_random_seed(RANDOM_WEIGHTS_SEED)
        try:
            return constructor(weights=None, **arguments)
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)
    model = constructor(weights=None, **arguments)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, f"{model_name}_weights{suffix}")
        with open(path, "wb") as f:
            f.write(payload)
        with warnings.catch_warnings():
            # Keras 3 notes containers without variables (activations, concatenations) it skips.
            warnings.filterwarnings("ignore", message="Skipping nested container")
            model.load_weights(path)
    return model


def build_model(
    model_name: str = DEFAULT_MODEL, image_size: int = 0, pooling: str = DEFAULT_POOLING, weights: str = WEIGHTS_NONE
):
    """The Keras model the featurizer runs, for plain single-process use (tests, benchmarks).

    Parameters
    ----------
    model_name, image_size, pooling, weights
        As the featurizer's params (``image_size`` 0: the native size).

    Returns
    -------
    keras.Model
        Input ``(None, size, size, 3)`` preprocessed RGB; output as the
        featurizer's vectors (flatten it for ``pooling="none"``).

    Examples
    --------
    >>> model = build_model("InceptionV3", 75)  # doctest: +SKIP
    >>> model.output_shape  # doctest: +SKIP
    (None, 2048)
    """
    from mnist_spark import storage

    _choice("modelName", SUPPORTED_MODELS)(model_name)
    _choice("pooling", POOLING_CHOICES)(pooling)
    size = image_size or ARCHITECTURES[model_name].native_size
    found = resolve_weights(weights, model_name)
    if found is None:
        return _build(model_name, size, pooling, None)
    return _build(model_name, size, pooling, storage.read_bytes(found.location), found.suffix)


# --------------------------------------------------------------------------- images -> features


def preprocess_images(
    images: np.ndarray, model_name: str = DEFAULT_MODEL, image_size: int = 0, scale_hint: str = DEFAULT_SCALE_HINT
) -> np.ndarray:
    """Spark-order uint8 images as the network's input: RGB, resized, its ``preprocess_input``.

    Parameters
    ----------
    images : numpy.ndarray
        uint8 ``(n, height, width, channels)`` with 1 (gray), 3 (BGR) or 4
        (BGRA) channels, as :func:`mnist_spark.images.struct_array_to_numpy`
        gives them.
    model_name : str
        Whose ``keras.applications.<module>.preprocess_input`` to apply.
    image_size : int
        Side of the square output; 0: the network's native size.
    scale_hint : str
        One of :data:`SCALE_HINTS`; the Pillow filter of the resize.

    Returns
    -------
    numpy.ndarray
        float32 ``(n, image_size, image_size, 3)``.

    Raises
    ------
    ValueError
        For a channel count other than 1, 3 or 4.

    Examples
    --------
    >>> x = preprocess_images(np.zeros((2, 28, 28, 1), np.uint8), "InceptionV3", 75)  # doctest: +SKIP
    >>> x.shape, float(x.min())  # doctest: +SKIP
    ((2, 75, 75, 3), -1.0)
    """
    import importlib

    architecture = ARCHITECTURES[model_name]
    size = image_size or architecture.native_size
    pixels = resize_images(images, (size, size, 3), scale_hint).astype(np.float32)
    module = importlib.import_module(f"keras.applications.{architecture.module}")
    return np.asarray(module.preprocess_input(pixels), dtype=np.float32)


def resize_images(images: np.ndarray, shape, scale_hint: str = DEFAULT_SCALE_HINT) -> np.ndarray:
    """Spark-order uint8 images as a network's ``(height, width, channels)`` input, still uint8.

    Grayscale becomes RGB by repeating the plane, Spark's BGR(A) becomes RGB
    (alpha dropped) or, for a one-channel network, luma as Pillow's ``L``
    mode computes it; each image is resized with the Pillow filter of
    ``scale_hint``.

    Parameters
    ----------
    images : numpy.ndarray
        uint8 ``(n, height, width, channels)`` with 1 (gray), 3 (BGR) or 4
        (BGRA) channels.
    shape : tuple
        ``(height, width, channels)`` of the output; channels 1 or 3.
    scale_hint : str
        One of :data:`SCALE_HINTS`.

    Returns
    -------
    numpy.ndarray
        uint8 ``(n, *shape)``.

    Examples
    --------
    >>> bgr = np.zeros((1, 2, 2, 3), np.uint8); bgr[..., 2] = 255  # pure red in Spark's BGR
    >>> resize_images(bgr, (4, 4, 3))[0, 0, 0].tolist()
    [255, 0, 0]
    >>> resize_images(bgr, (2, 2, 1))[0, 0, 0].tolist()
    [76]
    """
    from PIL import Image

    height, width, wanted = (int(v) for v in shape)
    count, _, _, channels = images.shape
    if channels not in (1, 3, 4):
        raise ValueError(
            f"images must have 1 (gray), 3 (BGR) or 4 (BGRA) channels, found {channels}; "
            "convert them to one of Spark's 8-bit image modes first"
        )
    if channels == 1:
        plane = images[..., 0]
    else:
        plane = images[..., 2::-1]  # Spark's BGR(A) -> RGB, alpha dropped
        if wanted == 1:  # Pillow's RGB -> L: ITU-R 601-2 luma, in 16-bit fixed point
            weights = np.array([19595, 38470, 7471], np.uint32)
            plane = ((plane.astype(np.uint32) @ weights + 0x8000) >> 16).astype(np.uint8)
    if plane.shape[1:3] == (height, width):
        resized = np.ascontiguousarray(plane)
    else:
        resample = getattr(Image.Resampling, SCALE_HINTS[scale_hint])
        resized = np.empty((count, height, width) + plane.shape[3:], np.uint8)
        for i in range(count):
            image = Image.fromarray(np.ascontiguousarray(plane[i]))
            resized[i] = np.asarray(image.resize((width, height), resample))
    if resized.ndim == 3:
        resized = resized[..., None]
    if resized.shape[3] != wanted:
        resized = np.repeat(resized, wanted, axis=3)
    return resized


def _decode_groups(column, where: str):
    """``(row positions, uint8 images)`` per image size in a batch of image structs.

    Images of one size (MNIST) decode in one piece; a batch of mixed sizes is
    decoded one size at a time, each group with the same decoder.
    """
    import pyarrow as pa

    from mnist_spark.images import struct_array_to_numpy

    if column.null_count:
        position = int(np.argmax(column.is_null().to_numpy(zero_copy_only=False)))
        raise ValueError(f"{where}: row {position} of a batch has no image (null); drop rows without an image first")
    shapes = np.stack(
        [column.field(name).to_numpy(zero_copy_only=False) for name in ("height", "width", "nChannels")], axis=1
    )
    if (shapes[:, :2] <= 0).any():
        position = int(np.argmax((shapes[:, :2] <= 0).any(axis=1)))
        raise ValueError(
            f"{where}: image {column.field('origin')[position].as_py()} was not decoded "
            f"(height {shapes[position, 0]}); drop undecodable images first (read_png_set reports them)"
        )
    if (shapes == shapes[0]).all():
        return [(np.arange(len(column)), struct_array_to_numpy(column, where))]
    groups = []
    unique = np.unique(shapes, axis=0)
    for shape in unique:
        positions = np.flatnonzero((shapes == shape).all(axis=1))
        groups.append((positions, struct_array_to_numpy(column.take(pa.array(positions)), where)))
    return groups


def featurize_batches(batches, config: FeaturizerConfig, broadcast=None):
    """Arrow batches in, the same batches with the feature column added; runs in a Python worker.

    The network comes from the worker's cache (built once per worker and
    key); each input batch is cut into ``config.batch_size`` images per call,
    and each piece is yielded as soon as it is done, so output batches stay
    small even for sparkdl's unpooled vectors.
    """
    from mnist_spark.evaluation import worker_model

    def build():
        payload = None if broadcast is None else broadcast.value
        if config.model_name == MODEL_FILE:
            return feature_model(_load_network(payload), config.output_layer, config.pooling)
        return _build(config.model_name, config.image_size, config.pooling, payload, config.weights_suffix)

    from mnist_spark.session import device_scope

    model = worker_model(config.cache_key, build)
    with device_scope():
        yield from _featurize(model, batches, config)


def _featurize(model, batches, config):
    """Feature vectors of Arrow batches (the body of :func:`featurize_batches`, on the task's device)."""
    import pyarrow as pa

    where = f"DeepImageFeaturizer column {config.input_col!r}"
    element = pa.field("element", pa.float32(), False)
    for batch in batches:
        column_at = batch.schema.get_field_index(config.input_col)
        for start in range(0, batch.num_rows, config.batch_size):
            part = batch.slice(start, config.batch_size)
            count = part.num_rows
            images = part.column(column_at)
            inputs = np.empty((count, *config.input_shape), np.float32)
            for positions, pixels in _decode_groups(images, where):
                if config.model_name == MODEL_FILE:
                    # A model of ours (and most user models) scales its raw pixels itself.
                    inputs[positions] = resize_images(pixels, config.input_shape, config.scale_hint)
                else:
                    inputs[positions] = preprocess_images(
                        pixels, config.model_name, config.image_size, config.scale_hint
                    )
            features = np.asarray(model.predict_on_batch(inputs), np.float32).reshape(count, -1)
            width = features.shape[1]
            offsets = pa.array(np.arange(0, (count + 1) * width, width, dtype=np.int32))
            values = pa.ListArray.from_arrays(offsets, pa.array(features.reshape(-1)), type=pa.list_(element))
            yield pa.RecordBatch.from_arrays(
                part.columns + [values],
                schema=pa.schema(list(part.schema) + [pa.field(config.output_col, pa.list_(element), False)]),
            )
