"""The offline GAN figures against their definitions: Fréchet distance and the Inception-style score."""

from __future__ import annotations

import numpy as np
import pytest

from zoo.evaluate import frechet_distance, inception_score


def test_frechet_distance_of_a_set_with_itself_is_zero():
    f = np.random.default_rng(0).standard_normal((500, 8))
    assert frechet_distance(f, f) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_of_gaussians_in_closed_form():
    """Same covariance, means apart by d: the distance is ||d||^2. Covariances s1 I and s2 I (means equal):
    k (sqrt(s1) - sqrt(s2))^2."""
    rng = np.random.default_rng(1)
    f = rng.standard_normal((4000, 4))
    shift = np.array([1.0, -2.0, 0.5, 0.0])
    assert frechet_distance(f, f + shift) == pytest.approx(float((shift**2).sum()), rel=1e-9)
    f = f - f.mean(0)
    assert frechet_distance(f, 3 * f) == pytest.approx(np.trace(np.cov(f, rowvar=False)) * (1 - 3) ** 2, rel=1e-6)


def test_inception_score_bounds():
    classes = 10
    confident_and_diverse = np.eye(classes)[np.arange(1000) % classes] * 50.0  # logits
    assert inception_score(confident_and_diverse) == pytest.approx(classes, rel=1e-6)
    one_class = np.tile(np.eye(classes)[3] * 50.0, (1000, 1))
    assert inception_score(one_class) == pytest.approx(1.0, abs=1e-6)
    uniform = np.zeros((1000, classes))
    assert inception_score(uniform) == pytest.approx(1.0, abs=1e-9)
