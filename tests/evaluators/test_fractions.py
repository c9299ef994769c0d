"""Label-fraction subsets: sizes, rare labels kept, determinism, nesting."""

import numpy as np
import pytest

from ecgclip_jax.evaluators import fractions


def _multilabel(n=2000, seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.random((n, 6)) < [0.5, 0.2, 0.05, 0, 0, 0]
  for task, positives in ((3, 1), (4, 2), (5, 3)):  # rare labels: 1-3 positives in 2000
    labels[rng.choice(n, positives, replace=False), task] = True
  return labels


@pytest.mark.parametrize("fraction,size", [(0.01, 20), (0.1, 200), (0.0004, 1), (0.00001, 1)])
def test_sizes(fraction, size):
  assert len(fractions.sample_fraction(_multilabel(), fraction, seed=0)) == size


def test_full_fraction_is_everything():
  np.testing.assert_array_equal(fractions.sample_fraction(_multilabel(), 1.0, seed=3),
                                np.arange(2000))


def test_rare_labels_keep_a_positive_and_every_task_a_negative():
  labels = _multilabel()
  for seed in range(5):
    subset = fractions.sample_fraction(labels, 0.01, seed)
    assert (labels[subset].any(axis=0)).all()
    assert (~labels[subset]).any(axis=0).all()
    assert np.all(np.diff(subset) > 0)  # sorted, no repeats


def test_a_plain_random_draw_would_miss_them():
  """The check above is not vacuous: 1% at random rarely holds the 1-positive label."""
  labels = _multilabel()
  rng = np.random.default_rng(0)
  hits = sum(labels[rng.choice(2000, 20, replace=False), 3].any() for _ in range(200))
  assert hits < 20


def test_deterministic_seeded_and_nested():
  labels = _multilabel()
  small = fractions.sample_fraction(labels, 0.01, seed=1)
  np.testing.assert_array_equal(small, fractions.sample_fraction(labels, 0.01, seed=1))
  assert not np.array_equal(small, fractions.sample_fraction(labels, 0.01, seed=2))
  medium = fractions.sample_fraction(labels, 0.1, seed=1)
  large = fractions.sample_fraction(labels, 0.5, seed=1)
  assert set(small) <= set(medium) <= set(large)
  tiny = fractions.sample_fraction(labels, 0.001, seed=1)  # 2 slots: the rarest first
  assert set(tiny) <= set(small) and labels[tiny, 3].any()


def test_known_mask_counts_only_known_labels():
  labels = np.zeros((500, 2), bool)
  labels[:3, 0] = True
  known = np.ones_like(labels)
  known[1:3, 0] = False  # the only known positive of task 0 is example 0
  known[:, 1] = False
  known[7, 1] = True  # the only known example of task 1 is a negative
  subset = fractions.sample_fraction(labels, 0.01, seed=0, known=known)
  assert 0 in subset and 7 in subset
  assert 0 not in fractions.sample_fraction(labels, 0.01, seed=0)  # not by chance


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5])
def test_bad_fraction(fraction):
  with pytest.raises(ValueError, match="label fraction"):
    fractions.sample_fraction(_multilabel(), fraction, seed=0)
