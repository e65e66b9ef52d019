"""vm: see docs/architecture.md."""
