"""Students that ship with the package, and the structures they are built around.

``default`` serves the embedded Cu–Au student (SevenNet-0 distilled into NequIP),
``cu_au`` builds Cu–Au cells with one set of lattice constants, and ``toy`` trains a
quick EMT student for tests and smoke benchmarks.
"""
