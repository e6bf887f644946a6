"""Typed errors for memfit. The CLI maps every MemfitError to an `ERROR ...` line and an exit code.

Each error carries every problem found, so a person fixes a file in one pass.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


class MemfitError(Exception):
    """Base of all errors a user can act on. `problems` holds one line per problem."""

    exit_code = 2

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class PlanError(MemfitError):
    """The plan file is unreadable or invalid; each problem names the file and key path."""


class ModelNotFoundError(MemfitError):
    """A model id is neither in the bundled catalogue, a local path, nor the local HF cache."""


class RuleError(MemfitError):
    """A rule file is invalid: schema, unknown fact names, duplicate ids, failing examples."""


class LogError(MemfitError):
    """A log file could not be read."""


class ConfigCheckError(MemfitError):
    """A DeepSpeed config handed to `advise check` is unreadable."""


class OutputExistsError(MemfitError):
    """Refusing to overwrite an existing output file without --force."""


class OutputError(MemfitError):
    """An output folder cannot be written (permissions, full disk, a symlinked target, a held lock)."""


class HostfileError(MemfitError):
    """A DeepSpeed hostfile is unreadable or has bad lines; each problem names the file and line."""


class ModelSpecError(MemfitError):
    """A model config cannot be counted: missing keys, unsupported model_type, bad LoRA targets."""


class ProbeError(MemfitError):
    """The architecture could not be traced (unknown model_type, an op fake tensors cannot run)."""


class StoreError(MemfitError):
    """The store of measured runs cannot be opened or written, or a record to add is invalid."""


class PreflightError(MemfitError):
    """A training run does not fit its memory budget (raised by the Trainer callback under policy 'raise')."""


@contextmanager
def about(prefix: str) -> Iterator[None]:
    """Prefix each problem of a MemfitError raised inside with `PREFIX: `.

    Used where a plan key leads to another file (model, rules, measured logs), so a message names
    the plan file and key first, then the referenced file: `plan.yaml: model: cfg.json: ...`.
    """
    try:
        yield
    except MemfitError as exc:
        if not prefix:
            raise
        exc.problems = [p if p.startswith(prefix + ":") else f"{prefix}: {p}" for p in exc.problems]
        exc.args = ("\n".join(exc.problems),)
        raise
