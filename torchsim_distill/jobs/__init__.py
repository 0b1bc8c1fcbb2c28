"""The jobs users run on a student: batched relaxation (``relax``) and the demo (``demo``).

Each is a function a notebook can call; the CLI is a thin layer over them.
"""
