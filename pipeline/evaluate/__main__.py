"""``python -m pipeline.evaluate subject|table ...``: the CLIs of :mod:`pipeline.evaluate.subject` (rule
``evaluate``) and :mod:`pipeline.evaluate.table` (rule ``benchmark_table``) under one name."""

import sys

from pipeline.evaluate import subject, table

COMMANDS = {"subject": subject.main, "table": table.main}

if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
    sys.exit(f"usage: python -m pipeline.evaluate {{{','.join(COMMANDS)}}} ... (-h after the command for its options)")
COMMANDS[sys.argv[1]](sys.argv[2:])
