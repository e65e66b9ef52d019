"""SSH lab hosts. Empty on purpose: `python3 -m lab.hosts.remote` runs on a host without fabric."""
