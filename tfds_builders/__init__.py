"""TFDS builders of ECG-report corpora; they build and read without TensorFlow."""

from tfds_builders import tf_free

tf_free.install()
