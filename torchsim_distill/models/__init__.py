"""Students that ship with the package, and the structures they are built around.

``default`` serves the embedded Cu–Au student (SevenNet-0 distilled into NequIP),
``cu_au`` builds Cu–Au cells with one set of lattice constants, ``package`` reads a
student's package (metadata, committee), ``student`` compiles and loads one, and
``registry`` finds students by name. Inference only: nothing here imports
:mod:`torchsim_distill.distill` (the layer test checks it).
"""
