"""vm: one QEMU guest (argv, accelerator, console state machine, channel, boot)."""
