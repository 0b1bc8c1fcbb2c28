"""The jobs users run on a student: batched relaxation (``relax``) and the demo (``demo``).

Each is a function a notebook can call; the CLI is a thin layer over them.
"""

# torch-sim's, nequip's and Warp's first imports, with their known notices silenced (see
# torchsim_distill.utils.quiet): every job imports them, and the runtime does it quietly
import torchsim_distill.runtime  # noqa: F401, E402
