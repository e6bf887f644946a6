"""memfit as an axolotl plugin: one line in the axolotl config,

    plugins:
      - memfit.engine.integrations.axolotl_plugin.MemfitPlugin
    memfit_policy: raise        # optional: warn (default) | raise

axolotl imports each listed class (axolotl/integrations/base.py: PluginManager.register), merges the
pydantic model named by get_input_args into its config schema (so the memfit_* keys validate), and adds
the callbacks add_callbacks_pre_trainer returns to the Trainer. The plugin hands it a MemfitCallback with
axolotl's sequence_len (the packed length under sample_packing) as the run's sequence length.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Mapping, Optional

from pydantic import BaseModel

try:  # subclass axolotl's BasePlugin where axolotl is installed: it supplies every other hook
    from axolotl.integrations.base import BasePlugin as _PluginBase
except ImportError:  # axolotl absent: the class still imports, with the hooks memfit uses
    _PluginBase = object

if TYPE_CHECKING:
    from .transformers import MemfitCallback


class MemfitArgs(BaseModel):
    """The config keys the plugin adds to axolotl's schema."""

    memfit_policy: Optional[Literal["warn", "raise"]] = None
    memfit_store: Optional[str] = None
    memfit_hardware: Optional[dict[str, Any]] = None


# axolotl is untyped (and absent here), so its BasePlugin reads as Any.
class MemfitPlugin(_PluginBase):  # type: ignore[misc]
    """Registers MemfitCallback on the axolotl run (preflight at start, a measurement record at the end)."""

    def get_input_args(self) -> str:
        return "memfit.engine.integrations.axolotl_plugin.MemfitArgs"

    def add_callbacks_pre_trainer(self, cfg: Mapping[str, Any], model: Any) -> list[MemfitCallback]:
        """The callbacks for axolotl's Trainer.

        Args:
            cfg: axolotl's config (a dict: sequence_len, memfit_policy, memfit_store, memfit_hardware).
            model: the loaded model (unused: the callback reads the model the Trainer trains).
        Returns:
            [MemfitCallback].
        """
        from .transformers import MemfitCallback

        return [MemfitCallback(cfg.get("memfit_policy") or "warn", seq_len=cfg.get("sequence_len"),
                               store=cfg.get("memfit_store"), hardware=cfg.get("memfit_hardware"))]
