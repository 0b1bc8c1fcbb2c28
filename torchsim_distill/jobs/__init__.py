"""The jobs users run on a student: batched relaxation (``relax``) and the demo (``demo``).

Each is a function a notebook can call; the CLI is a thin layer over them.

The job modules that load torch-sim, nequip or Warp import :mod:`torchsim_distill.runtime`
first, which silences their known start-up notices (see :mod:`torchsim_distill.utils.quiet`);
the package itself imports nothing, so that ``relax_options`` (the ``relax`` command's
flags) loads without torch.
"""
