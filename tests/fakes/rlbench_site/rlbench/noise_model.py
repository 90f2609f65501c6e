"""Fake of rlbench/noise_model.py (stepjam/RLBench 02720bb)."""

import numpy as np


class NoiseModel(object):
    def apply(self, val):
        raise NotImplementedError()


class Identity(NoiseModel):
    def apply(self, val):
        return val


class GaussianNoise(NoiseModel):
    def __init__(self, variance=0.01):
        self._variance = variance

    def apply(self, val):
        return val + np.random.normal(0.0, self._variance, np.shape(val))
