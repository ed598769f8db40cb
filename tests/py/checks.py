"""What the export checks share: failing with a message, checking a condition."""

import sys


def checker(name):
    """fail(msg) and check(cond, msg) that print "NAME: FAIL: msg" and exit 1."""

    def fail(msg):
        print(f"{name}: FAIL: {msg}", file=sys.stderr)
        sys.exit(1)

    def check(cond, msg):
        if not cond:
            fail(msg)

    return fail, check
