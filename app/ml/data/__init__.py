"""Data: the `Dataset` and its splits, the formats it is read from (one module each), and the data's own ids."""
