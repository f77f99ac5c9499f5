"""Tries each escape in a child process of its own and prints `name<TAB>outcome`: ALLOWED when the
call succeeded, else the errno name (or `killed`). x86_64 syscall numbers. Run by tests/tests/hostile.rs
in a sandbox and in a container hardened the same way but without isol8's seccomp profile."""
import ctypes, errno, os, socket, subprocess, sys

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
SECRET = sys.argv[1].encode() if len(sys.argv) > 1 else b"ISOL8_API_KEY"


def ok(rc):
    if rc < 0:
        raise OSError(ctypes.get_errno(), "refused")


def syscall(nr, *args):
    # Whole registers: a plain int would be passed as 32 bits with garbage above them.
    ok(libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) if isinstance(a, int) else a for a in args]))


def buffer(data):
    return ctypes.create_string_buffer(bytes(data), len(data))


def perf_attr():  # PERF_TYPE_SOFTWARE, cpu-clock, user space only
    return buffer((1).to_bytes(4, "little") + (128).to_bytes(4, "little") + bytes(32)
                  + (0b1100000).to_bytes(8, "little") + bytes(80))


def bpf_array_map():  # BPF_MAP_CREATE of a one-entry array
    return buffer(b"".join(v.to_bytes(4, "little") for v in (2, 4, 4, 1)) + bytes(56))


class Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def read_own_memory():
    byte = ctypes.create_string_buffer(1)
    iov = Iovec(ctypes.cast(byte, ctypes.c_void_p), 1)
    syscall(310, os.getpid(), ctypes.byref(iov), 1, ctypes.byref(iov), 1, 0)


def attach_to_pid_1():
    ok(libc.ptrace(16, 1, None, None))
    # Wait for the attach's stop, then detach, or pid 1 stays stopped.
    os.waitpid(1, 0x40000000)  # __WALL
    libc.ptrace(17, 1, None, None)


def must(condition):
    if not condition:
        raise PermissionError(errno.EPERM, "refused")


def secret_in_reach():
    for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
        try:
            environ = open("/proc/%s/environ" % pid, "rb").read()
        except OSError:
            continue  # gone, or not ours to read
        must(SECRET not in environ)
    must(all(SECRET not in v.encode() for v in os.environ.values()))
    raise PermissionError(errno.EPERM, "not in reach")


def write(path):
    with open(path, "w") as f:
        f.write("x")


ATTEMPTS = {
    "mount": lambda: ok(libc.mount(b"tmpfs", b"/tmp", b"tmpfs", 0, None)),
    "unshare(CLONE_NEWUSER)": lambda: ok(libc.unshare(0x10000000)),
    "unshare(CLONE_NEWNS)": lambda: ok(libc.unshare(0x00020000)),
    "ptrace(TRACEME)": lambda: ok(libc.ptrace(0, 0, None, None)),
    "ptrace(ATTACH, pid 1)": attach_to_pid_1,
    "process_vm_readv": read_own_memory,
    "kcmp": lambda: syscall(312, os.getpid(), os.getpid(), 0, 0, 0),
    "prlimit64(pid 1)": lambda: syscall(302, 1, 7, None, buffer(bytes(16))),
    "keyctl": lambda: syscall(250, 0, -3, 1),
    "bpf": lambda: syscall(321, 0, bpf_array_map(), 72),
    "perf_event_open": lambda: syscall(298, perf_attr(), 0, -1, -1, 0),
    "init_module": lambda: syscall(175, None, 0, b""),
    "io_uring_setup": lambda: syscall(425, 8, buffer(bytes(120))),
    "userfaultfd": lambda: syscall(323, 1),
    "modify_ldt": lambda: syscall(154, 0, buffer(bytes(16)), 16),
    "personality(ADDR_NO_RANDOMIZE)": lambda: ok(libc.personality(0x0040000)),
    "chroot": lambda: ok(libc.chroot(b"/tmp")),
    "setuid(0)": lambda: ok(libc.setuid(0)),
    "raw socket": lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP),
    "packet socket": lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW),
    "write /usr/bin": lambda: write("/usr/bin/evil"),
    "write /proc/sys": lambda: write("/proc/sys/kernel/hostname"),
    "write /sys": lambda: write("/sys/kernel/uevent_helper"),
    "su to root": lambda: must(subprocess.run(["su", "-c", "id -u", "root"], capture_output=True,
                                              timeout=5, input=b"").stdout.strip() == b"0"),
    "read the server's key": secret_in_reach,
}

for name, attempt in ATTEMPTS.items():
    pid = os.fork()
    if pid == 0:
        try:
            attempt()
            os._exit(0)
        except OSError as exc:
            os._exit(exc.errno or 255)
        except BaseException:
            os._exit(255)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    outcome = "ALLOWED" if code == 0 else "killed" if code < 0 else errno.errorcode.get(code, str(code))
    print("%s\t%s" % (name, outcome), flush=True)
