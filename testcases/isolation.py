"""isolation: nobody else can read a secret page, root included; O_DIRECT into it fails."""

import ctypes
import mmap
import os

import labguest as lg

TESTCASE = {
    "name": "isolation",
    "purpose": "another process (root or the same user) cannot read the secret through "
    "/proc/PID/mem, process_vm_readv or PTRACE_PEEKDATA; an O_DIRECT read into "
    "the buffer fails; the same reads of a memfd_create page succeed (control)",
    "arches": ["*"],
    "families": ["secretmem"],  # the secretmem series: meaningless on other families
    "timeout": 90,
    "expect": ["* -> pass"],
}

SECRET = b"lab-secret-0123456789abcdef"
PTRACE_PEEKDATA, PTRACE_ATTACH, PTRACE_DETACH = 2, 16, 17
PR_SET_DUMPABLE = 4


class IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.process_vm_readv.restype = ctypes.c_ssize_t
_libc.ptrace.restype = ctypes.c_long
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]


def _proc_mem(pid: int, addr: int) -> str:
    try:
        with open(f"/proc/{pid}/mem", "rb", buffering=0) as f:
            f.seek(addr)
            data = f.read(len(SECRET))
    except OSError as exc:
        return lg.errno_name(exc.errno)
    return "read " + ("the secret" if data == SECRET else repr(data[:8]))


def _vm_readv(pid: int, addr: int) -> str:
    buf = ctypes.create_string_buffer(len(SECRET))
    local = IoVec(ctypes.cast(buf, ctypes.c_void_p), len(SECRET))
    remote = IoVec(addr, len(SECRET))
    n = _libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    if n < 0:
        return lg.errno_name(ctypes.get_errno())
    return "read " + ("the secret" if buf.raw[:n] == SECRET else repr(buf.raw[:8]))


def _peek(pid: int, addr: int) -> str:
    if _libc.ptrace(PTRACE_ATTACH, pid, None, None) != 0:
        return "attach " + lg.errno_name(ctypes.get_errno())
    os.waitpid(pid, 0)
    ctypes.set_errno(0)
    word = _libc.ptrace(PTRACE_PEEKDATA, pid, ctypes.c_void_p(addr), None)
    err = ctypes.get_errno()
    _libc.ptrace(PTRACE_DETACH, pid, None, None)
    if err:
        return lg.errno_name(err)
    raw = ctypes.c_long(word).value.to_bytes(8, "little", signed=True)
    return "read " + ("the secret" if raw == SECRET[:8] else repr(raw))


def _readers(pid: int, addr: int) -> dict[str, str]:
    return {
        "proc_mem": _proc_mem(pid, addr),
        "process_vm_readv": _vm_readv(pid, addr),
        "ptrace_peekdata": _peek(pid, addr),
    }


def _holder(kind: str, ready_w: int, go_r: int) -> None:
    """Holds a mapping with the secret; tells the parent its address; waits."""
    if kind == "secret":
        fd = lg.memfd_secret()
    else:
        fd = os.memfd_create("control")
    os.ftruncate(fd, lg.PAGE)
    m = mmap.mmap(fd, lg.PAGE, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    m[: len(SECRET)] = SECRET
    addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
    os.write(ready_w, f"{addr}\n".encode())
    os.read(go_r, 1)


def _o_direct_into(kind: str) -> str:
    """read(O_DIRECT) from /dev/ram0 into the mapping: GUP-fast must refuse secretmem."""
    fd = lg.memfd_secret() if kind == "secret" else os.memfd_create("control")
    os.ftruncate(fd, lg.PAGE)
    m = mmap.mmap(fd, lg.PAGE, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    m[0] = 1
    dev = os.open("/dev/ram0", os.O_RDONLY | os.O_DIRECT)
    try:
        n = os.preadv(dev, [memoryview(m)], 0)
    except OSError as exc:
        return lg.errno_name(exc.errno)
    finally:
        os.close(dev)
    return f"read {n} bytes"


def _probe(
    t: lg.Context, kind: str, reader_user: int | None, holder_user: int | None
) -> dict[str, str]:
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(ready_r)
            os.close(go_w)
            lg.set_oom_score_adj(lg.WORKLOAD_OOM_SCORE_ADJ)  # not the harness's -1000
            if holder_user is not None:
                os.setgroups([])
                os.setgid(holder_user)
                os.setuid(holder_user)
                # A uid change clears "dumpable", which alone would refuse ptrace and
                # /proc/PID/mem; restore it so only secretmem can say no.
                _libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
            _holder(kind, ready_w, go_r)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(ready_w)
    os.close(go_r)
    holder = t.adopt(f"holder-{kind}", pid, role="holder")
    line = os.read(ready_r, 64).decode().strip()
    try:
        addr = int(line)
        who = "root" if reader_user is None else f"uid {reader_user}"
        res = t.task(
            f"reader-{kind}-{who.replace(' ', '')}",
            _readers,
            pid,
            addr,
            role="reader",
            user=reader_user,
            timeout=30,
        )
    finally:
        os.write(go_w, b"x")
        holder.wait(30)
    t.check(res.ok, f"reader task failed: {res.error or res.status}")
    return dict(res.value)


def run(t: lg.Context) -> None:
    secret_root = _probe(t, "secret", None, lg.UNPRIVILEGED)
    t.event("root reading a uid 1000 secret", **secret_root)
    t.check(
        secret_root == {"proc_mem": "EIO", "process_vm_readv": "EFAULT", "ptrace_peekdata": "EIO"},
        f"root must not read the secret: {secret_root}",
    )
    secret_same = _probe(t, "secret", lg.UNPRIVILEGED, lg.UNPRIVILEGED)
    t.event("uid 1000 reading its own other process's secret", **secret_same)
    t.check(
        set(secret_same.values()) <= {"EIO", "EFAULT"},
        f"the same user must not read the secret: {secret_same}",
    )
    control = _probe(t, "control", None, lg.UNPRIVILEGED)
    t.event("root reading a memfd_create page (control)", **control)
    t.check(
        all(v == "read the secret" for v in control.values()),
        f"the control reads must succeed: {control}",
    )
    direct = _o_direct_into("secret")
    direct_control = _o_direct_into("control")
    t.event("O_DIRECT read into the buffer", secret=direct, control=direct_control)
    t.check(direct == "EFAULT", f"O_DIRECT into secretmem must fail with EFAULT, got {direct}")
    t.check(direct_control.startswith("read"), f"O_DIRECT control failed: {direct_control}")
    t.observe("pass")
