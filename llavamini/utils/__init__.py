"""Helpers with no model code: crash-safe writes (training, evaluation) and the glibc malloc
settings every command's process starts with."""
