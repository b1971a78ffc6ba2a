"""SISA (Bourtoule et al., IEEE S&P 2021): K constituent models on disjoint shards, each trained slice by slice
with a checkpoint after each slice; the aggregate answers, and a deletion retrains only the shards that held
the samples, from the checkpoint before the first slice that held them."""
