"""Stands in for ``rfc3987_syntax`` inside the test's Ray processes only (see tests/test_distributed.py).

jsonschema imports it when installed (jupyterlab brings it) and it builds an Earley parser
at import: ~10 s of CPU in each of Ray's Python processes, which on a loaded 2-core machine
runs out Ray's 30 s start-up window. Ray never checks IRI formats, so they go without.
"""

raise ImportError("rfc3987_syntax is left out of the test's Ray processes")
