"""Cells as jobs for other engines (LAVA), and their results back into a lab run.

lab.export.lava renders jobs and device dictionaries (pure), lab.export.lavalog reads a
LAVA job log (pure); lab.export.bundle writes an export and lab.export.ingest imports
finished jobs' logs (the edges).
"""
