"""Model facts: closed-form parameter counts per architecture, the meta-device count, the catalogue."""
