"""A seccomp filter as raw classic BPF, for bubblewrap's `--seccomp FD` (x86-64 only).

Allow by default; deny with EPERM the syscalls a sandboxed trainer never needs and an attacker
wants (namespaces, mounts, tracing, kernel keyrings, module loading, io_uring...). A foreign
architecture or an x32 syscall kills the process: the deny-list is written in x86-64 numbers.
clone() with a namespace flag is denied too (unshare alone would leave that door open), and
clone3() answers ENOSYS because its flags live in memory BPF cannot read; libc then falls back
to clone().
"""

from __future__ import annotations

import errno
import struct

AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000

# x86-64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl).
DENIED_SYSCALLS = {
    "ptrace": 101, "mount": 165, "umount2": 166, "pivot_root": 155, "swapon": 167, "swapoff": 168,
    "reboot": 169, "init_module": 175, "delete_module": 176, "kexec_load": 246, "add_key": 248,
    "request_key": 249, "keyctl": 250, "unshare": 272, "setns": 308, "process_vm_readv": 310,
    "process_vm_writev": 311, "finit_module": 313, "bpf": 321, "kexec_file_load": 320,
    "userfaultfd": 323, "perf_event_open": 298, "io_uring_setup": 425,
    # Also no new mount API, no io_uring through its other entry points.
    "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
    "fspick": 433, "mount_setattr": 442, "io_uring_enter": 426, "io_uring_register": 427,
}
SYS_CLONE = 56
SYS_CLONE3 = 435
# CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET | NEWTIME
CLONE_NAMESPACE_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x80

# Classic BPF opcodes (linux/filter.h) and seccomp return values (linux/seccomp.h).
BPF_LD_W_ABS = 0x20
BPF_JEQ_K = 0x15
BPF_JGE_K = 0x35
BPF_JSET_K = 0x45
BPF_RET_K = 0x06
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000
# Offsets in struct seccomp_data: nr, arch, instruction_pointer, args[6].
OFF_NR, OFF_ARCH, OFF_ARG0_LOW = 0, 4, 16

_RETURNS = {
    "allow": SECCOMP_RET_ALLOW,
    "kill": SECCOMP_RET_KILL_PROCESS,
    "eperm": SECCOMP_RET_ERRNO | errno.EPERM,
    "enosys": SECCOMP_RET_ERRNO | errno.ENOSYS,
}


# One BPF instruction before assembly: (code, jt, jf, k), a jump target a label or an offset.
Instruction = tuple[int, str | int, str | int, int]


def _program() -> list[Instruction]:
    """The filter with symbolic jump targets: (code, jt, jf, k), jt/jf a label or 0."""
    prog: list[Instruction] = [
        (BPF_LD_W_ABS, 0, 0, OFF_ARCH),
        (BPF_JEQ_K, 0, "kill", AUDIT_ARCH_X86_64),
        (BPF_LD_W_ABS, 0, 0, OFF_NR),
        (BPF_JGE_K, "kill", 0, X32_SYSCALL_BIT),
        (BPF_JEQ_K, "enosys", 0, SYS_CLONE3),
    ]
    prog += [(BPF_JEQ_K, "eperm", 0, nr) for nr in sorted(DENIED_SYSCALLS.values())]
    prog += [
        (BPF_JEQ_K, 0, "allow", SYS_CLONE),
        (BPF_LD_W_ABS, 0, 0, OFF_ARG0_LOW),
        (BPF_JSET_K, "eperm", "allow", CLONE_NAMESPACE_FLAGS),
    ]
    return prog


def _assemble(prog: list[Instruction]) -> bytes:
    """Append one return per label and turn labels into the relative offsets BPF wants."""
    labels = {name: len(prog) + i for i, name in enumerate(_RETURNS)}
    out = []
    for index, (code, jt, jf, k) in enumerate(prog):
        offsets = [labels[j] - index - 1 if isinstance(j, str) else j for j in (jt, jf)]
        if max(offsets) > 255:
            raise ValueError("seccomp filter too long for 8-bit jumps")
        out.append(struct.pack("<HBBI", code, offsets[0], offsets[1], k))
    out += [struct.pack("<HBBI", BPF_RET_K, 0, 0, value) for value in _RETURNS.values()]
    return b"".join(out)


def filter_bytes() -> bytes:
    """The packed `struct sock_filter[]` bubblewrap loads with `--seccomp`."""
    return _assemble(_program())
