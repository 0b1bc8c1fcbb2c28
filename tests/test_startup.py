"""What a user pays before the first result: a quiet stderr, and a light command line.

Fresh interpreters, as users start them: the README's API snippet prints nothing to stderr
(the third-party notices torch-sim's, nequip's and Warp's imports print are silenced at the
package's own import sites, and only there); ``torchsim-distill models``, ``--help`` and the
bad-input errors import neither torch nor nequip nor Warp.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import warnings

import pytest

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_python(code: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def test_the_readme_api_snippet_prints_nothing_to_stderr():
    from torchsim_distill.models.registry import load_student

    load_student("default", skin=None)  # compiled once per machine (cached): the snippet then only loads it
    done = run_python("""
        import warnings
        from ase.build import bulk
        from torchsim_distill import DistilledCalculator
        atoms = bulk("Cu", "fcc", a=3.63, cubic=True).repeat((2, 2, 1))
        calc = DistilledCalculator(model="default", device="cpu")
        atoms.calc = calc; atoms.get_potential_energy(); atoms.get_forces(); atoms.get_stress(); atoms.get_potential_energies()
        assert calc.model.evaluate is not None
        # no filter of ours left behind (torch, NumPy and others add their own on import)
        from torchsim_distill.utils.quiet import KNOWN_WARNINGS
        ours = [f for f in warnings.filters if f[1] is not None and getattr(f[1], "pattern", f[1]) in KNOWN_WARNINGS]
        assert not ours, ours
        warnings.warn("a user's own warning after the imports")
    """)
    assert done.returncode == 0, done.stderr
    # the user's own warning, and nothing else
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.rstrip().endswith("UserWarning: a user's own warning after the imports"), done.stderr


def test_the_models_command_help_and_bad_inputs_import_no_torch(tmp_path):
    done = run_python(f"""
        import sys
        from torchsim_distill.cli import main
        heavy = ("torch", "nequip", "warp", "torch_sim", "nvalchemiops")
        assert main(["models"]) == 0
        assert main(["relax", {str(tmp_path / "missing.xyz")!r}, "--out", {str(tmp_path / "out")!r}]) == 1
        assert main(["evaluate", "no-such-student", {str(tmp_path)!r}]) == 1
        assert main(["serve", "no-such-student"]) == 1
        try:
            main(["--help"])
        except SystemExit as stop:
            assert stop.code == 0
        print("LOADED", [m for m in heavy if m in sys.modules])
    """)
    assert done.returncode == 0, done.stderr
    assert "LOADED []" in done.stdout, done.stdout
    assert "cu-au-sevennet0 (default, cu-au-sevennet0-small)" in done.stdout
    errors = done.stderr.splitlines()
    assert errors == [
        f"torchsim-distill relax: error: structure file {str(tmp_path / 'missing.xyz')!r} does not exist",
        f"torchsim-distill evaluate: error: {str(tmp_path)!r} is a folder, not a structure file; give the files in it",
        errors[2],
    ]
    assert errors[2].startswith("torchsim-distill serve: error: model 'no-such-student' is not a known student")


def test_only_the_known_notices_are_silenced_and_only_inside(capfd):
    from torchsim_distill.utils.quiet import (
        KNOWN_LOG_LINES,
        KNOWN_NATIVE_LINES,
        _native_stderr_filtered,
        known_notices_silenced,
    )

    jit = "`torch.jit.script` is deprecated. Please switch to `torch.compile` or `torch.export`."
    logger = logging.getLogger(next(iter(KNOWN_LOG_LINES)))
    filters_before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with known_notices_silenced():
            warnings.warn(jit, FutureWarning)
            warnings.warn("a user's own FutureWarning", FutureWarning)
            assert not logger.filter(logging.LogRecord(logger.name, logging.WARNING, "", 0, "No CUDA runtime is found, "
                                                       "using CUDA_HOME='/usr/local'", None, None))
            assert logger.filter(logging.LogRecord(logger.name, logging.WARNING, "", 0, "something else", None, None))
        warnings.warn(jit, FutureWarning)  # outside: shown again
    assert [str(w.message) for w in seen] == ["a user's own FutureWarning", jit]
    assert warnings.filters == filters_before and not logger.filters

    capfd.readouterr()
    with _native_stderr_filtered(needed=True):
        os.write(2, f"{KNOWN_NATIVE_LINES[0]}. GPU execution will not be available.\n".encode())
        os.write(2, b"a native line of someone else's\n")
    assert capfd.readouterr().err == "a native line of someone else's\n"


@pytest.mark.parametrize("module", ["torchsim_distill.cli", "torchsim_distill.models.registry"])
def test_light_modules_stay_light(module):
    done = run_python(f"import sys, {module}; print([m for m in ('torch', 'numpy', 'ase') if m in sys.modules])")
    assert done.returncode == 0, done.stderr
    assert "torch" not in done.stdout
