"""Hydra's launcher ``hydra/launcher=stacked``: a sweep's jobs that differ only in lr and seed as one fit."""
