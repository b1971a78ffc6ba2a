"""The ML core (app/ml): data, models, training, the verifier, forgetting, the benchmarks; tiny models on small data."""
