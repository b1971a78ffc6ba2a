"""The method registry: each method's file registers it here by name."""

from __future__ import annotations

from app.ml.common.registry import Registry
from app.ml.forgetting.methods.base import Method

METHODS: Registry[Method] = Registry("method")
