"""Forgetting: the job that forgets one batch, the policy and its calibration, the record it leaves, the
gradient cache, and the methods (one file each, under `methods/`)."""
