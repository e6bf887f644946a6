"""Regenerate engine/model/catalogue/counts.json: meta-device counts of the catalogue models that have
no closed form (engine/model/counting.refresh_bundled), so `advise plan.yaml` on them never imports torch.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/model_counts.py [--check]

--check exits 1 when the file on disk differs from a fresh count (tests/test_model_meta.py runs the same
comparison, slow-marked). Imports torch and transformers; builds nothing but meta tensors (~5 s).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "engine" / "model" / "catalogue" / "counts.json"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the file instead of writing it")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from memfit.engine.model.counting import refresh_bundled

    models = json.loads((ROOT / "engine" / "model" / "catalogue" / "models.json").read_text(encoding="utf-8"))["models"]
    text = json.dumps(refresh_bundled(models), indent=1, sort_keys=True) + "\n"
    if args.check:
        same = TARGET.read_text(encoding="utf-8") == text
        print("counts.json is current" if same else "counts.json differs from a fresh meta-device count")
        return 0 if same else 1
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET.relative_to(ROOT)}: {len(json.loads(text)['counts'])} models")
    return 0


if __name__ == "__main__":
    sys.exit(main())
