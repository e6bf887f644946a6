"""`python -m memfit.cli` runs the `advise` command."""
from .main import entry

entry()
