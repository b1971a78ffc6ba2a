"""What every part of the ML core uses and none owns: the name registry, devices, atomic files, provenance, hashes."""
