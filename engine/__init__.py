"""memfit.engine: the library behind `advise`."""
