"""The guest-visible ABI constants: addresses, errno values, permission bits.

Pure data. The hypercall table (exo/hypercalls.py), the generated docs
(docs/abi.md) and the generated guest include files are all made from here.
"""

from __future__ import annotations

import enum

PAGE_SIZE = 4096

# --- virtual address layout of every environment (lower canonical half) ---
USER_BOTTOM = 0x0001_0000  # below: the machine's descriptor tables' linear window (hw RESERVED_BYTES)
HYPERCALL_PAGE = 0x0010_0000  # read+execute, 32-byte stubs: call HYPERCALL_PAGE + 32*nr
HYPERCALL_STUB_SIZE = 32
# A library-call slot's code (exo/libcall.py): `jmp short $+2` (the slot's entry: it ends
# the translation block) then, at LIBCALL_HOOKED, `jmp qword ptr [rsp-8]` (the exokernel has
# popped the return address by then).
LIBCALL_CODE = b"\xeb\x00\xff\x64\x24\xf8"
LIBCALL_HOOKED = 2  # offset in the slot of the instruction whose hook runs the call
LIBOS_PAGE = 0x0010_1000  # libOS trampoline pages, one per module (library calls, no ring transition)
LIBOS_END = 0x0011_0000  # end of the trampoline pages (15 modules at most)
LIBCALL_SLOT = 16  # bytes per library entry point on a trampoline page
INFO_PAGE = 0x0011_0000  # read-only: argc, argv (see exo/loader.py)
EXO_REGION_END = 0x0012_0000  # [HYPERCALL_PAGE, EXO_REGION_END) is managed by the exokernel
IMAGE_BASE = 0x0040_0000  # where assembled images are linked (the ELF convention)
USER_TOP = 0x0000_7FFF_FFFF_F000  # one page below the end of the lower half
STACK_TOP = 0x0000_7FFF_FFF0_0000  # initial RSP; stack grows down
STACK_PAGES = 16  # 64 KiB initial stack, a guard page below it
UXSTACK_TOP = 0x0000_7FFF_FFF8_0000  # conventional exception (upcall) stack, set up by the libOS

LIBOS_DATA = 0x0000_7000_0000_0000  # libOS modules' own pages: 256 MiB per module index
LIBOS_DATA_STRIDE = 0x1000_0000

# The page tables, mapped read-only at a recursive PML4 slot (JOS's UVPT): a
# library OS reads its own mappings there; only the exokernel writes them.
UVPT_SLOT = 254
UVPT = UVPT_SLOT << 39  # the PTE of va is at UVPT + (va >> 12) * 8
UVPD = UVPT | (UVPT_SLOT << 30)  # the PDE of va is at UVPD + (va >> 21) * 8
UVPDPT = UVPD | (UVPT_SLOT << 21)  # the PDPTE of va is at UVPDPT + (va >> 30) * 8
UVPML4 = UVPDPT | (UVPT_SLOT << 12)  # the PML4E of va is at UVPML4 + (va >> 39) * 8
UVPT_END = UVPT + (1 << 39)

# --- page permissions a guest asks for in page_alloc / page_map / mmu_update ---
PERM_R = 0x1  # present, readable
PERM_W = 0x2  # writable (never together with PERM_X: W^X)
PERM_X = 0x8  # executable (code); without it pages are mapped NX
PERM_AVAIL = 0xE00  # bits 9-11: free for the libOS (e.g. copy-on-write marker)
PERM_COW = 0x800  # the libOS convention for copy-on-write pages (JOS PTE_COW)
PERM_VALID = PERM_R | PERM_W | PERM_X | PERM_AVAIL


class Errno(enum.IntEnum):
    """Linux errno values; a failed hypercall returns the negative value in RAX."""

    EPERM = 1  # resource not owned by the caller, or hypercall not declared
    ENOENT = 2
    ESRCH = 3  # no such environment
    EIO = 5
    EBADF = 9
    ECHILD = 10  # env_reap: no ended child to take
    EAGAIN = 11  # would block (non-blocking call)
    ENOMEM = 12  # out of frames or over quota
    EFAULT = 14  # bad pointer: unmapped, not user, or not writable
    EBUSY = 16
    EEXIST = 17
    ENODEV = 19  # no such device (disk_* without a disk)
    EINVAL = 22  # bad argument value
    ENOSPC = 28
    EROFS = 30  # write to a read-only device
    EPIPE = 32  # console output closed
    ENOSYS = 38  # no such hypercall
    # Network (exo/net.py; socket errors of libos/net): Linux's numbers, as a C program expects.
    EMFILE = 24
    ENOTSOCK = 88
    EDESTADDRREQ = 89
    EMSGSIZE = 90  # a frame shorter than an Ethernet header or longer than NET_FRAME_MAX
    EOPNOTSUPP = 95
    EAFNOSUPPORT = 97
    EADDRINUSE = 98  # a packet filter another environment holds
    EADDRNOTAVAIL = 99  # a frame whose source is not the sender's own address
    ENETDOWN = 100
    ECONNRESET = 104
    EISCONN = 106
    ENOTCONN = 107
    ETIMEDOUT = 110
    ECONNREFUSED = 111
    EHOSTUNREACH = 113
    EALREADY = 114


class EnvStatus(enum.IntEnum):
    FREE = 0
    RUNNABLE = 1
    NOT_RUNNABLE = 2  # e.g. a child before its parent has set it up
    BLOCKED = 3  # waiting for an event (input, IPC)
    DYING = 4
    DEAD = 5


class SchedOp(enum.IntEnum):
    """sched_op sub-operations (after Xen's SCHEDOP_yield/block/shutdown)."""

    YIELD = 0
    BLOCK = 1
    EXIT = 2
    READY = 3  # initialised, about to wait for input: a snapshot point (exo serve, exo/instances.py)


class MmuOp(enum.IntEnum):
    """mmu_update request kinds (a validated cousin of Xen's mmu_update)."""

    MAP = 0  # map frame `frame` at `va` with `perm`
    UNMAP = 1  # clear the mapping at `va`
    PROTECT = 2  # change the permissions of the mapping at `va`


class IpcFlag(enum.IntFlag):
    NONBLOCK = 1  # ipc_recv: -EAGAIN instead of waiting


class DiskOp(enum.IntEnum):
    """disk_io request kinds (exo/disk.py)."""

    READ = 0  # nsectors from sector into buf
    WRITE = 1  # nsectors from buf to sector (the device's write-back cache)
    FLUSH = 2  # the durability barrier: the cache goes to the medium


class DiskGrant(enum.IntEnum):
    """disk_grant modes."""

    READ = 0  # read-only sub-range
    WRITE = 1  # read-write sub-range
    REVOKE = 2  # take the range away from envid (a child, or yourself)


SECTOR_SIZE = 512
# struct disk_req { u32 op; u32 reserved; u64 sector; u64 nsectors; u64 buf; }  (32 bytes)
DISK_REQ_SIZE = 32
# struct disk_info { u64 sectors; u64 sector_size; u64 readonly; u64 ranges; }  written by disk_info
DISK_INFO_SIZE = 32

# struct ipc_info { u64 from; u64 value; u64 perm; }  written by ipc_recv (perm 0: no page)
IPC_INFO_SIZE = 24
# struct env_info { u64 id; u64 parent; u64 status; u64 pages; char name[32]; }  written by env_info
# (parent 0: none; status: EnvStatus; pages: mapped in its address space; name NUL-padded, at most 31 bytes)
ENV_INFO_SIZE = 64

# struct mmu_req { u32 op; u32 envid; u64 va; u64 frame; u64 perm; }  (32 bytes)
MMU_REQ_SIZE = 32

# The frame an upcall pushes on the exception stack (JOS's UTrapframe, in u64s).
UTRAPFRAME_FIELDS = (
    "vector", "error_code", "fault_va",
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
    "rip", "rflags", "rsp",
)  # fmt: skip
UTRAPFRAME_SIZE = 8 * len(UTRAPFRAME_FIELDS)

# env_set_syscall modes (issue 15, docs/posix.md): every `syscall` is a hypercall, or one whose RIP is
# outside [HYPERCALL_PAGE, EXO_REGION_END) goes to the registered libOS entry (a Linux system call).
SYSCALL_HYPERCALL = 0
SYSCALL_REFLECT = 1
# A Linux program's start-up facts, written by the loader in the info page and read by the posix
# libOS (docs/posix.md): struct linux_info { u64 magic; u64 rsp; u64 entry; u64 phdr; u64 phnum;
# u64 bias; u64 brk_start; u64 bootfile_len; u64 execfn (va of the program path); u64 seed; u64 flags; u64 cwd; }
LINUX_INFO = INFO_PAGE + 0xC00
LINUX_INFO_MAGIC = int.from_bytes(b"EXOLNX01", "little")
LINUX_INFO_FIELDS = ("magic", "rsp", "entry", "phdr", "phnum", "bias", "brk_start", "bootfile_len", "execfn", "seed",
                     "flags", "cwd")
LINUX_CWD = LINUX_INFO + 0x100  # the initial working directory, NUL-terminated (linux_info.cwd points here)
LINUX_CWD_MAX = 0x300
LINUX_STRACE = 1  # linux_info.flags: print every system call (exo run --strace)

# event_wait's mask bits (hypercall 34, docs/posix.md): what a waiting environment is woken by.
# Xen's SCHEDOP_poll over event channels, with the sources exo has.
EV_IPC = 1  # its mailbox is not empty
EV_CONSOLE = 2  # console input (or the end of input) is there
EV_CHILD = 4  # a child ended and has not been reaped (env_reap)
EV_NET = 8  # a frame is in its receive ring
EV_NOTIFY = 16  # another environment of its tenant rang its doorbell (env_notify); consumed by event_wait
EV_ALL = EV_IPC | EV_CONSOLE | EV_CHILD | EV_NET | EV_NOTIFY
# env_reap's record: struct reap_info { u64 id; u64 how; s64 status; u64 vector; }
REAP_EXITED = 0  # sched_op(EXIT, status)
REAP_FAULTED = 1  # stopped by a fault report: vector is the CPU exception (Vector), status -1
REAP_DESTROYED = 2  # env_destroy by someone else, or the watchdog
REAP_INFO_SIZE = 32
# console_info's record: struct console_info { u64 flags; u16 rows; u16 cols; u32 pad; }
CONSOLE_TTY = 1  # the console is a terminal
CONSOLE_RAW = 2  # and exo put it in raw mode: the libOS does the line discipline
CONSOLE_INFO_SIZE = 16
# quota_info's record: struct quota_info { u64 frames_used, frame_limit, envs_used, env_limit, fd_limit, cpu_weight; }
QUOTA_INFO_SIZE = 48
# Descriptors per environment when an app sets no fds quota (exo/tenants.py): Linux's default
# RLIMIT_NOFILE soft limit. The libOS uses it too until it has read its app's quota.
DEFAULT_FDS = 1024

# Where the Linux loader maps a read-only copy of the program file (LINUX_INFO's bootfile_len
# bytes): the no-disk root's copy of the program and execve("/proc/self/exe") read it (docs/posix.md).
BOOTFILE = 0x0000_6000_0000_0000
BOOTFILE_MAX = 256 << 20

# env_set_fsbase: which base (arch_prctl's ARCH_SET_FS / ARCH_SET_GS)
FSBASE_FS = 0
FSBASE_GS = 1

# Upcall vectors beyond the CPU's: events the exokernel announces to the libOS.
UPCALL_TIMER = 0x100  # a new time slice starts
UPCALL_NET = 0x101  # frames arrived in the receive ring while the environment was not waiting (exo/net.py)


# ------------------------------------------------------------------ network (exo/net.py, docs/net.md)
NET_MTU = 1500
NET_FRAME_MAX = 14 + NET_MTU  # an Ethernet II header and the MTU (no FCS: the NIC strips it)
NET_FRAME_MIN = 14
# Offloads (hw/net/offload.py): net_send takes a TCP frame of up to NET_GSO_FRAME_MAX bytes with a
# segment size and the NIC cuts it into MTU-sized frames (TSO); received TCP segments of one flow
# may arrive merged into one frame of up to NET_GSO_FRAME_MAX bytes (GRO), its checksums verified.
NET_GSO_FRAME_MAX = 65_535  # (the slot's u16 length)
# The receive ring: nslots slots of NET_SLOT_SIZE bytes in the environment's memory.
# struct net_slot { u16 length; u16 status; u32 filter; u8 frame[]; }  status: NET_SLOT_FREE / NET_SLOT_FULL,
# with NET_SLOT_CSUM_OK when the NIC verified the frame's checksums (a merged frame's TCP checksum
# field is then not valid). A frame longer than NET_SLOT_SIZE - NET_SLOT_HDR continues over the
# following slots, never wrapping round the ring's end: a FULL slot of length 0 before it means
# "continue at slot 0". The libOS frees each slot it took.
NET_SLOT_SIZE = 2048
NET_SLOT_HDR = 8
NET_MAX_SLOTS = 512
NET_SLOT_FREE = 0  # the exokernel may write the slot
NET_SLOT_FULL = 1  # a frame for the libOS; it sets the status back to FREE when done
NET_SLOT_CSUM_OK = 0x100  # (or-ed into FULL) checksums verified by the NIC
# struct net_info { u8 mac[6]; u16 mtu; u32 ip; u32 netmask; u32 gateway; u32 reserved; u64 flags; }
# flags: NET_INFO_OFFLOAD: net_send takes TSO frames and the ring may hold merged ones (above)
# (ip, netmask, gateway as on the wire: network byte order)
NET_INFO_SIZE = 32
# struct net_filter { u16 ethertype; u8 ip_proto; u8 reserved; u16 dst_port; u16 src_port; u32 src_ip; u32 reserved; }
# 0 = any; src_ip in network byte order; the destination (MAC, IP) is implicitly the caller's app's own.
NET_FILTER_SIZE = 16
NET_INFO_OFFLOAD = 1
# struct net_tx { u64 buf; u32 len; u16 gso_size; u16 reserved; }  gso_size 0: one frame of at
# most NET_FRAME_MAX bytes; else an IPv4 TCP frame of at most NET_GSO_FRAME_MAX bytes sent as
# segments of gso_size payload bytes
NET_TX_REQ_SIZE = 16
ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_ARP = 0x0806


class NetFilterOp(enum.IntEnum):
    """net_filter operations."""

    ADD = 0  # arg: a struct net_filter; returns its id
    REMOVE = 1  # arg: a filter id
