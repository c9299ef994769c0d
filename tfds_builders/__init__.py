"""TFDS builders of ECG-report corpora; they build and read without TensorFlow."""

from tfds_builders import shard_writer, tf_free

shard_writer.install()
tf_free.install()
