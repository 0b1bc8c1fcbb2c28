"""Small helpers every layer may use; they import nothing else from the package.

``timing`` (interleaved timing, torch settings), ``jsonable`` (strict-JSON values),
``files`` (atomic writes, file hashes) and
``scripts`` (launching nequip's command-line tools with this interpreter).
"""
