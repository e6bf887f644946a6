"""Generate schemas/plan.schema.json and schemas/advice.schema.json from the pydantic models.

Run `python -m memfit.engine.advice.schema_export schemas/` after changing engine/plan/schema.py or
engine/advice/results.py; tests/test_schemas.py fails while the committed files differ from the models.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import BaseModel

from ..plan.schema import Plan
from .results import Advice, EstimateResult

_SCHEMAS: dict[str, tuple[type[BaseModel], str]] = {"plan.schema.json": (Plan, "memfit plan file (v1)"),
            "advice.schema.json": (Advice, "memfit advice (advise plan.yaml --json)"),
            "estimate.schema.json": (EstimateResult, "memfit estimate (advise estimate plan.yaml --json)")}


def schema_texts() -> dict[str, str]:
    """File name -> JSON Schema text, as the models define them today."""
    out = {}
    for name, (model, title) in _SCHEMAS.items():
        schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": f"https://memfit.dev/schemas/{name}",
                  **model.model_json_schema(mode="validation" if model is Plan else "serialization")}
        schema["title"] = title
        out[name] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def main(argv: list[str]) -> int:
    target = Path(argv[0] if argv else "schemas")
    for name, text in schema_texts().items():
        (target / name).write_text(text, encoding="utf-8")
        print(f"wrote {target / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
