"""The distill-your-own notebook runs top to bottom (small sizes) and produces what it promises."""

from __future__ import annotations

import pytest
from notebook_runner import run_notebook, text_output


@pytest.mark.slow
def test_distill_your_own_notebook(tmp_path):
    nb = run_notebook("distill_your_own", tmp_path)
    run = tmp_path / "distill_your_own_run"
    assert (run / "student.nequip.zip").exists()
    assert (run / "report" / "model_card.json").exists()
    text = text_output(nb)
    assert "ASE MD, energy:" in text
    # the silicon section reads the committed budgeted run's card: plan, errors and gates passed
    assert "silicon from SevenNet-0, budget 60 min: plan {" in text and "property gates passed:" in text
