"""lab: a QEMU test lab for Linux kernel patch variants."""

__version__ = "0.1.0"
