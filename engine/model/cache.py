"""Meta-device counts kept on disk, so torch is imported once per new config, not once per run.

Two stores, both keyed by a hash of the canonical config (its non-underscore fields as sorted,
compact JSON):
- the bundled counts (engine/model/catalogue/counts.json, package data): meta-device counts of the
  catalogue models without a closed form, made by `refresh_bundled` and checked against a live meta
  build by tests/test_model_meta.py; they keep `advise plan.yaml` on a catalogue model free of torch;
- the user cache: `$MEMFIT_CACHE_DIR/models/<hash>.json`, else `$XDG_CACHE_HOME/memfit/models/`, else
  `~/.cache/memfit/models/`. Its key also hashes the installed transformers version (read from the
  package metadata, which does not import it), since a new release may build a different module tree.
  Files are written to a temporary name and renamed (atomic on POSIX), so a crash never leaves half a
  file; a file that does not parse or lacks a key is a miss, recounted and rewritten.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from functools import lru_cache
from importlib import metadata, resources
from pathlib import Path
from typing import Any, Mapping

# Bumped when the stored mapping changes shape; older files are then misses.
FORMAT = 1
REQUIRED = ("format", "model_type", "num_layers", "hidden_size", "intermediate_size", "num_attention_heads",
            "num_kv_heads", "head_dim", "vocab_size", "total_params", "active_params", "largest_layer_params",
            "embedding_params", "lm_head_params", "frozen_extra_params", "tie_word_embeddings", "linear_layers")


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 of the config's non-underscore fields as sorted, compact JSON (hex)."""
    fields = {k: v for k, v in config.items() if not str(k).startswith("_")}
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def transformers_version() -> str:
    """The installed transformers version from its package metadata ("none" when not installed)."""
    try:
        return metadata.version("transformers")
    except metadata.PackageNotFoundError:
        return "none"


def cache_dir() -> Path:
    """Folder of the user cache of meta-device counts."""
    env = os.environ
    if env.get("MEMFIT_CACHE_DIR"):
        return Path(env["MEMFIT_CACHE_DIR"]).expanduser() / "models"
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "memfit" / "models"


def cache_path(config: Mapping[str, Any]) -> Path:
    """Where the count of `config` under the installed transformers is stored."""
    key = hashlib.sha256(f"{config_hash(config)}\ntransformers {transformers_version()}".encode()).hexdigest()
    return cache_dir() / f"{key[:32]}.json"


def _valid(data: Any) -> bool:
    return isinstance(data, dict) and data.get("format") == FORMAT and all(k in data for k in REQUIRED)


def read_cached(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The stored count of `config`: bundled first, then the user cache; None on a miss.

    A user cache file that cannot be read, does not parse, or lacks a key counts as a miss.
    """
    bundled = _bundled().get(config_hash(config))
    if isinstance(bundled, dict) and _valid(bundled):
        return dict(bundled)
    try:
        data = json.loads(cache_path(config).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if _valid(data) else None


def write_cached(config: Mapping[str, Any], counts: Mapping[str, Any]) -> Path | None:
    """Store `counts` for `config` in the user cache, atomically.

    Returns:
        The file written, or None when the cache folder cannot be written (the count is still used).
    """
    path = cache_path(config)
    data = {**counts, "format": FORMAT, "transformers_version": transformers_version()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.stem, suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        return None
    return path


@lru_cache(maxsize=1)
def _bundled() -> dict[str, Any]:
    text = resources.files("memfit.engine.model.catalogue").joinpath("counts.json").read_text(encoding="utf-8")
    counts: dict[str, Any] = json.loads(text)["counts"]
    return counts


def bundled_entry(config: Mapping[str, Any], counts: Mapping[str, Any], model_id: str) -> tuple[str, dict[str, Any]]:
    """(key, entry) of counts.json for one catalogue model: what `refresh_bundled` writes."""
    return config_hash(config), {**counts, "format": FORMAT, "_model": model_id,
                                 "transformers_version": transformers_version()}
