"""Build one compiled artifact per preset in ``compile/presets.yaml`` and check each.

    python compile/build.py best.ckpt artifacts/ --presets cpu-batch cpu-ase
    python compile/build.py best.ckpt artifacts/            # every preset this machine can run

CUDA presets are skipped (and say so) where torch sees no GPU, and a preset whose
GPU generation differs from the one present is skipped too, since AOTInductor kernels
are built for the GPU they are compiled on. Writes ``OUTDIR/summary.json`` with each
artifact's max |dE| and |dF| against the eager model.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import torch
import yaml

PRESETS_FILE = Path(__file__).with_name("presets.yaml")
_COMPILE_KEYS = ("device", "target", "tf32", "constant_fold", "inductor_configs")

def load_presets(path: Path = PRESETS_FILE) -> dict[str, dict]:
    """Presets by name, as written in ``presets.yaml``."""
    return yaml.safe_load(path.read_text())

def why_not_here(preset: dict) -> str | None:
    """Why this machine cannot build ``preset``, or None if it can."""
    if preset["device"] != "cuda":
        return None
    if not torch.cuda.is_available():
        return "no CUDA device visible to torch"
    want = preset.get("gpu")
    major, minor = torch.cuda.get_device_capability()
    if want and want != f"sm_{major}{minor}":
        return f"preset is for {want}, this GPU is sm_{major}{minor}"
    return None

def build(source: Path, out_dir: Path, names: list[str] | None = None, *, use_cache: bool = True) -> dict[str, dict]:
    """Compile ``source`` for each preset; return ``{name: report or skip reason}``."""
    from torchsim_distill.compile import CompileOptions, cached_compile, compile_model, stored_check_report

    presets = load_presets()
    unknown = sorted(set(names or []) - set(presets))
    if unknown:
        raise SystemExit(f"unknown preset(s) {unknown}; known: {sorted(presets)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, dict] = {}
    for name in names or list(presets):
        preset = presets[name]
        reason = why_not_here(preset)
        if reason:
            print(f"[skip] {name}: {reason}")
            summary[name] = {"skipped": reason}
            continue
        where = {k: preset[k] for k in ("device", "target") if k in preset}
        options = CompileOptions.of(**{k: preset[k] for k in _COMPILE_KEYS[2:] if k in preset})
        out = out_dir / f"{source.name.split('.')[0]}-{name}.nequip.pt2"
        if use_cache:
            shutil.copyfile(cached_compile(source, options=options, **where), out)

            summary[name] = {"output": str(out), **stored_check_report(out)}
        else:
            summary[name] = asdict(compile_model(source, out, options=options, **where))
        print(f"[ok]   {name}: {out} |dE|={summary[name]['max_abs_energy_error']:.2e} eV |dF|={summary[name]['max_abs_force_error']:.2e} eV/A")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="nequip checkpoint or package file")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--presets", nargs="*", default=None, help="names from presets.yaml (default: all)")
    parser.add_argument("--no-cache", action="store_true", help="recompile even if a cached artifact exists")
    args = parser.parse_args(argv)
    build(args.source, args.out_dir, args.presets, use_cache=not args.no_cache)
    return 0

if __name__ == "__main__":
    sys.exit(main())
