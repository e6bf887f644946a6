"""Limits on rule bases: what the loader refuses, and what the durable-rules adapter hands to the
plain-Python evaluator instead. docs/reference/limits.md ("Rule bases") lists them with their sources.
"""
from __future__ import annotations

# Refused at load (RuleError naming file and key). Each is far above what a hand-written rule base
# needs (the built-in base: 41 rules, 28 KB over 9 files, `in:` lists of <= 4 literals, all/any 2 deep)
# and low enough that loading and evaluating stays well under a second.
MAX_RULE_FILE_BYTES = 1 << 20      # 1 MiB per rule file
MAX_RULES = 2000                   # rules in one rule base (all files together)
MAX_LITERALS = 1000                # literals in one `in:` / `not_in:` list
MAX_DEPTH = 16                     # nesting of all/any/not
MAX_TEMPLATE_CHARS = 1000          # characters of one `because:` template
MAX_TEMPLATE_FIELDS = 32           # replacement fields in one template
MAX_PRECISION = 6                  # `.6f` at most in a format spec
MAX_WIDTH = 80                     # `>80` at most in a format spec
MAX_CACHE_ENTRIES = 16             # checked rule bases kept in the cache directory

# Measured with bench/durable_limits.py on durable-rules 2.0.28 (x86-64, CPython 3.11):
# - 511 rules in one ruleset compile in 14 ms; 512 or more spin at 100% CPU in create_ruleset
#   (SIGINT ignored). The adapter adds one rule of its own.
# - an `$or` of 511 branches compiles; 512 fails with error code 303 at assert; 513 or more spin.
#   (memfit compiles `in:` and `not` of `not_in:` / `all:` to `$or`, `any:` too.)
# - at most 64 rules can fire on one fact; 65 or more fail with error code 303 at assert time (the
#   adapter then evaluates with the plain-Python evaluator; it cannot be known before the facts).
# - a number in exponent form without a fraction ("1e-05", "1e+17") is error code 204, in a rule
#   (create_ruleset) or in a fact (assert); "1.5e-05" parses.
# Thresholds below keep a margin under the measured boundary (a different build may differ by a few).
DURABLE_MAX_RULES = 480
DURABLE_MAX_BRANCHES = 480
DURABLE_MAX_FIRING = 64
