"""Hydra config files of twolayer_lightning (a package so that Hydra finds them with pkg://)."""
