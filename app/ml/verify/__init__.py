"""Membership verifiers: per-sample tests of "was x in the training set?", registered by name.

A verifier is built once per published model (reference models, calibration split) and then
scores any model that shares that model's dataset and splits: the model itself, an unlearned
descendant, or a model retrained without some samples. See base.Verifier for the test.
"""
