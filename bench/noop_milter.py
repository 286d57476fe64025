"""A no-op milter for bench/relay.sh --milter: Debian's python3-milter
(libmilter underneath) with no callback of its own, so negotiation leaves
out every step but end of message, which it accepts. Run by
/usr/bin/python3: `noop_milter.py inet:PORT@127.0.0.1`."""

import sys

import Milter


class Noop(Milter.Base):
    """Accepts every message at end of message, changes nothing."""

    def eom(self):
        return Milter.ACCEPT


if __name__ == "__main__":
    Milter.factory = Noop
    Milter.set_flags(0)
    Milter.runmilter("noop", sys.argv[1], timeout=600)
