"""memfit command-line interface: parses arguments, calls memfit.engine, renders results."""
