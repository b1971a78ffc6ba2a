"""The HTTP layer: its contract, inputs, key cache and the operator page."""
