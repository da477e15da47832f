"""The labs a course can take: what each is about, its handout and its graded tests.

The code a lab removes is not listed here: it is marked in the reference sources
(``# LAB N BEGIN id: what to do`` ... ``# LAB N END``) and found by scanning them, so the
catalogue and the code cannot drift. Points come from the graded tests' ``lab`` markers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Lab:
    n: int
    title: str
    handout: str  # path from the project root
    tests: str  # the graded tests shipped with the lab (a package under exo/labs/tests)
    summary: str


LABS: tuple[Lab, ...] = (
    Lab(1, "Guests and hypercalls", "docs/labs/lab1.md", "exo/labs/tests/lab1",
        "guests in assembly (wc) and C on raw hypercalls, a guest fixed from its fault reports, and the "
        "env_info hypercall of the ABI table"),
    Lab(2, "Protection", "docs/labs/lab2.md", "exo/labs/tests/lab2",
        "the exokernel's checks on page addresses, permissions, W^X, maximum rights, frame ownership and "
        "user pointers, graded by attack guests next to a witness"),
    Lab(3, "User-level memory", "docs/labs/lab3.md", "exo/labs/tests/lab3",
        "the libOS page-fault upcall handler, a demand-zero heap and copy-on-write fork (libos/memory.py)"),
    Lab(4, "Scheduling", "docs/labs/lab4.md", "exo/labs/tests/lab4",
        "user-level thread creation and switch, preemption on the timer upcall, stride scheduling (libos/sched.py)"),
    Lab(5, "File system", "docs/labs/lab5.md", "exo/labs/tests/lab5",
        "ext2 block maps, block and inode allocation, directory insert and remove; graded by guests and e2fsck"),
    Lab(6, "Network", "docs/labs/lab6.md", "exo/labs/tests/lab6",
        "ARP, IPv4 and UDP in the libOS network stack over a lossy wire (TCP retransmission for extra credit)"),
)

BY_N: dict[int, Lab] = {lab.n: lab for lab in LABS}
