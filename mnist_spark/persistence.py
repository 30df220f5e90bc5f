"""Saving Spark ML stages with their ``.keras`` file inside the saved folder.

A stage with a ``modelFile`` param (the featurizer, the ML stages of
:mod:`mnist_spark.ml`) saves its params as ``DefaultParamsWriter`` does and a
copy of the file as ``model.keras`` beside them; loading points ``modelFile``
at that copy, so a saved ``PipelineModel`` needs nothing else on another machine.
"""

from __future__ import annotations

from pyspark.ml.util import DefaultParamsReader, DefaultParamsWriter, MLReadable, MLReader, MLWritable, MLWriter

from mnist_spark import storage

#: The model file's name inside a saved stage's folder.
MODEL_FILE = "model.keras"


#: The TensorFlow SavedModel beside a run's model.keras, for TF Serving.
SAVED_MODEL = "saved_model"


def export_saved_model(model, folder: str) -> str:
    """Write ``model`` as a TensorFlow SavedModel (``model.export``) into ``folder/saved_model``.

    TF Serving loads it as it is; its ``serve`` signature takes a batch of
    float32 images as the Keras model does. On object stores the export is
    written locally first and copied up with ``pyarrow.fs.copy_files``.
    Returns the location.
    """
    import tempfile

    from pyarrow import fs as pafs

    location = storage.join(folder, SAVED_MODEL)
    if not storage.is_uri(location):
        model.export(location, verbose=False)
        return location
    with tempfile.TemporaryDirectory() as local:
        model.export(local, verbose=False)
        filesystem, path = storage.resolve(location)
        pafs.copy_files(local, path, destination_filesystem=filesystem)
    return location


class _Writer(MLWriter):
    """Params as ``DefaultParamsWriter`` writes them, and the model file inside the folder."""

    def __init__(self, instance):
        super().__init__()
        self.instance = instance

    def _handleOverwrite(self, path: str) -> None:
        """``write().overwrite()``: on Spark Connect, through the server, as pyspark's own writers do there."""
        from mnist_spark.session import is_connect

        if is_connect(self.sparkSession):
            from pyspark.ml.connect.readwrite import RemoteMLWriter

            RemoteMLWriter.handleOverwrite(path, True)
        else:
            super()._handleOverwrite(path)

    def saveImpl(self, path: str) -> None:
        payload = self.instance._model_payload()
        extra = dict(self.instance._extra_metadata(), modelFileEmbedded=payload is not None)
        DefaultParamsWriter.saveMetadata(self.instance, path, self.sparkSession, extraMetadata=extra)
        if payload is not None:
            storage.write_bytes(storage.join(path, MODEL_FILE), payload)
        self.instance._write_beside(path)


class _Reader(MLReader):
    def __init__(self, cls):
        super().__init__()
        self.cls = cls

    def load(self, path: str):
        metadata = DefaultParamsReader.loadMetadata(path, self.sparkSession)
        instance = self.cls()
        instance._resetUid(metadata["uid"])
        DefaultParamsReader.getAndSetParams(instance, metadata)
        instance._restore(path, metadata)
        return instance


class SavesModelFile(MLReadable, MLWritable):
    """A stage whose saved folder holds its ``.keras`` file (``model.keras``) beside its params."""

    def write(self) -> MLWriter:
        return _Writer(self)

    @classmethod
    def read(cls) -> MLReader:
        return _Reader(cls)

    def _model_payload(self) -> bytes | None:
        """The model file's bytes to save, or None. Stages with a ``modelFile`` param save that file."""
        from mnist_spark.evaluation import model_file

        location = self.getOrDefault("modelFile")
        return storage.read_bytes(model_file(location)) if location else None

    def _extra_metadata(self) -> dict:
        return {}

    def _write_beside(self, path: str) -> None:
        """Files saved beside the model file; none by default."""

    def _restore(self, path: str, metadata: dict) -> None:
        """After the params are set: point ``modelFile`` at the copy inside the saved folder."""
        if metadata.get("modelFileEmbedded"):
            self._set(modelFile=storage.join(path, MODEL_FILE))
