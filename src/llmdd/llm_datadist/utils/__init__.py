"""CANN's utils package: the drop-in's argument checks."""
