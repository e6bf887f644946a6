"""`advise review`: property tests of a rule base over generated plans."""
