"""Training: `fit`, the gradient-restricted loss and its gates, the recipe, gradients and metrics."""
