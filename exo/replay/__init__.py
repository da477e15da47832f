"""Record and replay (`exo boot APP --record FILE`, `--replay FILE`): docs/debugging.md.

Under the virtual clock a run is a function of its images, its boot options, the disk's contents and
what it consumes from outside the process while it runs. The last is what a **journal**
(exo/replay/journal.py) holds: each console read's bytes, each poll that found input, a console
whose reader went away, each batch of frames a network backend received, and each idle advance of
the clock spent waiting for peers outside the process; every event stamped with the number of the
device call that consumed it and with (guest instructions retired, virtual idle ns) at that call.
Its header holds the exo version, image hashes, options and the disk's hash, which a replay must
match (`session.check_header`: one line, exit 2, otherwise).

`session.install(system, journal, replay=...)` puts a `devices.Tape` between ONE booted system's
kernel and its devices: ``machine.console`` becomes a `devices.JournaledConsole`, the NIC's backend a
`devices.JournaledBackend` and, with peers outside the process, the clock's ``advance`` a journaled
one. The kernel looks these up on each use, so a kernel that is not recorded runs exactly the code
it ran before (no test on the hypercall path). Recording passes every call through and notes what it
returned; replaying answers each call from the journal and raises `devices.Diverged` ("replay
diverged at instruction N, call K: the kernel polled the console for input, the recording has a
network frame at instruction M, call J") as soon as the run does something the recording did not.

Two options exist for reverse execution (issue 14 item 5), which re-executes a run from a snapshot:

* ``go_live=True``: when the journal runs out the replayer passes through to the real devices and
  records from there on (`Tape.replay_mode` switches; ``Tape.went_live_at`` says at which
  instruction), so a re-executed prefix continues as the live run;
* ``mute_bytes=N``: the first N bytes of console output are not written again (they were shown
  once); the guest still sees every write succeed, so counts do not change.

Without ``go_live`` a replay that needs input past the end of the recording (the recorded run was
interrupted) raises `devices.ReplayEnded`.
"""

from exo.replay.devices import Diverged, ReplayEnded, Tape
from exo.replay.journal import Event, Journal
from exo.replay.session import check_header, install, make_header

__all__ = ["Diverged", "Event", "Journal", "ReplayEnded", "Tape", "check_header", "install", "make_header"]
