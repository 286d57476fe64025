"""Pseudo-terminal pairs (socat) standing in for a serial line."""

import os
import subprocess
import time


class PtyPair:
    """socat joining two pseudo-terminals, reachable as links `a` and `b`."""

    def __init__(self, a, b):
        self.a, self.b = a, b
        self.proc = subprocess.Popen(
            ["socat", "-d", "-d", "pty,raw,echo=0,link=%s" % a, "pty,raw,echo=0,link=%s" % b],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True)
        deadline = time.monotonic() + 10
        while not (os.path.exists(a) and os.path.exists(b)):
            if self.proc.poll() is not None:
                raise AssertionError("socat exited: %s" % self.proc.stderr.read().decode(errors="replace"))
            assert time.monotonic() < deadline, "socat made no pty pair"
            time.sleep(0.02)

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
