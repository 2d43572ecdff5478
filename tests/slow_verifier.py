"""A verifier that misbehaves on request, for the time-limit tests (tests/test_time_limit.py).

It lives in its own module because the time-limited child process imports the verifier's module to rebuild it.
Registering happens on import; the tests remove the name from the registry again.
"""

import os
import re
import time

from workbench.errors import DataError
from workbench.verifiers.verdict import Verdict, Verifier, register_verifier

# The lead-in pattern that hung the math verifier (issue 23): a C-level regex call that backtracks exponentially, the
# kind of stall no Python-level timeout can interrupt.
OLD_LEAD_IN = re.compile(r"(?:[^\W\d_]+[\s:,]*)+")


@register_verifier("test_misbehaving")
class MisbehavingVerifier(Verifier):
    time_limit = 1.0

    def verify(self, prompt, completion, reference):
        if reference == "bad":
            raise DataError("test_misbehaving: reference 'bad' is not allowed")
        if completion == "backtrack":
            OLD_LEAD_IN.fullmatch("a" * 60 + ".")  # about 2^60 steps inside the regex engine
        elif completion == "sleep":
            time.sleep(600)
        elif completion == "die":
            os._exit(3)
        elif completion == "print":  # a library that writes to stdout, from Python and from C
            print("stray output")
            os.write(1, b"stray bytes on descriptor 1\n")
        elif completion == "slow-answer":
            time.sleep(0.3)
        return Verdict(1.0, True, {"extracted": completion, "reason": "correct", "pid": os.getpid()})
