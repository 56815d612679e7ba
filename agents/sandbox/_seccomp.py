"""A seccomp deny-list for what namespaces leave open.

Namespaces and dropped capabilities decide what the sandbox can *reach*; they leave
the kernel's own attack surface as it is. This filter refuses the system calls that a
test suite has no use for and that kernel exploits favour: io_uring (its own large
surface), userfaultfd (widens race windows), bpf, perf_event_open, the key
management calls (keyrings are not fully namespaced), new namespaces of any kind
(nested user namespaces hand out capabilities over fresh network and mount
namespaces), the mount API, module and kexec loading, ``TIOCSTI``/``TIOCLINUX``
terminal injection, and the x32 ABI. ``clone3`` fails with ENOSYS so that libc falls
back to ``clone``, whose flags a filter can read. Everything else is allowed.

It is written as classic BPF here (about forty instructions) because the maintained
generators need libseccomp through bindings for the system Python only; the program
is small enough to read. x86_64 and aarch64 are covered; elsewhere ``program()``
returns None and the isolation's description says there is no seccomp filter.
"""

from __future__ import annotations

import errno
import platform
import struct

__all__ = ["program"]

# struct seccomp_data: nr at 0, arch at 4, instruction pointer at 8, args at 16 + 8*i.
_NR, _ARCH, _ARG0, _ARG1 = 0, 4, 16, 24
_LD_W_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_ALLOW, _KILL_PROCESS = 0x7FFF0000, 0x80000000
_ERRNO = 0x00050000

_CLONE_NEW = 0x7E020000  # NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET (and NEWTIME)
_CLONE_NEWTIME = 0x00000080
_TIOCSTI, _TIOCLINUX = 0x5412, 0x541C

# name -> (x86_64, aarch64)
_DENIED: dict[str, tuple[int, int]] = {
    "io_uring_setup": (425, 425), "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427), "userfaultfd": (323, 282), "bpf": (321, 280),
    "perf_event_open": (298, 241), "keyctl": (250, 219), "add_key": (248, 217),
    "request_key": (249, 218), "unshare": (272, 97), "setns": (308, 268),
    "mount": (165, 40), "umount2": (166, 39), "pivot_root": (155, 41),
    "open_tree": (428, 428), "move_mount": (429, 429), "fsopen": (430, 430),
    "fsconfig": (431, 431), "fsmount": (432, 432), "fspick": (433, 433),
    "mount_setattr": (442, 442), "init_module": (175, 105), "finit_module": (313, 273),
    "delete_module": (176, 106), "kexec_load": (246, 104), "kexec_file_load": (320, 294),
    "open_by_handle_at": (304, 265), "name_to_handle_at": (303, 264),
    "swapon": (167, 224), "swapoff": (168, 225), "reboot": (169, 142), "acct": (163, 89),
    "syslog": (103, 116), "quotactl": (179, 60),
}  # fmt: skip
_CLONE3 = 435
_CLONE = (56, 220)
_IOCTL = (16, 29)
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def program(machine: str | None = None) -> bytes | None:
    """The filter as ``struct sock_filter`` instructions (for ``PR_SET_SECCOMP``), or
    None on an architecture it does not know."""
    machine = machine or platform.machine()
    if machine not in _AUDIT_ARCH:
        return None
    col = 0 if machine == "x86_64" else 1
    eperm, enosys = _ERRNO | errno.EPERM, _ERRNO | errno.ENOSYS
    out = [
        _insn(_LD_W_ABS, _ARCH),
        _insn(_JEQ, _AUDIT_ARCH[machine], jt=1),
        _insn(_RET, _KILL_PROCESS),  # another ABI (i386 on x86_64): numbers differ, refuse
        _insn(_LD_W_ABS, _NR),
    ]
    if col == 0:  # x32 system calls carry bit 30 and the same arch: refuse them all
        out += [_insn(_JGE, 0x40000000, jf=1), _insn(_RET, eperm)]
    for numbers in _DENIED.values():
        out += [_insn(_JEQ, numbers[col], jf=1), _insn(_RET, eperm)]
    out += [_insn(_JEQ, _CLONE3, jf=1), _insn(_RET, enosys)]
    # ioctl(fd, TIOCSTI or TIOCLINUX): the command is 32 bits wide in the kernel.
    out += [
        _insn(_JEQ, _IOCTL[col], jf=4),
        _insn(_LD_W_ABS, _ARG1),
        _insn(_JEQ, _TIOCSTI, jt=1),
        _insn(_JEQ, _TIOCLINUX, jf=1),
        _insn(_RET, eperm),
        _insn(_LD_W_ABS, _NR),
    ]
    # clone(flags, ...) asking for any new namespace.
    out += [
        _insn(_JEQ, _CLONE[col], jf=3),
        _insn(_LD_W_ABS, _ARG0),
        _insn(_JSET, _CLONE_NEW | _CLONE_NEWTIME, jf=1),
        _insn(_RET, eperm),
        _insn(_RET, _ALLOW),
    ]
    return b"".join(out)
