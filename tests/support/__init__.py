"""What the tests share: one free_port, one peer-process driver, one byte-pattern helper, the
registries and the cache helpers. Importable as `support` because pyproject puts tests/ on the
path (pythonpath = ["tests"]); the fixtures live in the conftest.py of the folder that uses them."""
