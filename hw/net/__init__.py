"""Network backends for the machine's NIC (hw/nic.py): what is on the other end of the wire.

* ``switch``: a hub inside the process (every frame sent comes back);
* ``tap``: a Linux TAP interface (frames to and from the host kernel);
* ``user``: an unprivileged QEMU-like gateway with host port forwarding.

Plus fault injection (faults.py) and a pcap writer/reader (pcap.py).
Like the rest of ``hw``, nothing here imports the OS.
"""
