"""Models: their config, the registered architectures and the specs a team brings, pretrained init and
freeze, checkpoint I/O."""
