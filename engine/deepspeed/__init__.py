"""DeepSpeed: the config writer, the config checker, DeepSpeed's own estimators, launch lines, verify runs."""
