"""isol8 in-container agent: the sandbox's init process, which runs programs on request.

The server talks to this process over the container's attached stdio, one JSON object per line in each
direction, so a run costs no `docker exec`. Everything here runs as the unprivileged sandbox user; the
agent marks itself non-dumpable so programs of the same user can neither ptrace it nor open its memory.

Requests (stdin):
  {"op":"run", "argv":[...], "cwd":..., "env":{...}, "stdin":b64|null, "files":{path: b64},
   "codePath":path|null, "code":b64|null, "outputPaths":[...], "timeoutMs":n, "maxOutput":n,
   "maxFileBytes":n, "maxFilesTotal":n, "display":bool}   (display: a python program gets isol8's matplotlib backend
                                       and a display channel on fd 3, see DISPLAY_DIR)
  {"op":"cell", "runtime":r, "code":b64, "stdin":b64|null, "env":{...}, "cwd":path|null, "files":{...},
   "outputPaths":[...], "timeoutMs":n, "maxOutput":n, "maxFileBytes":n}
                                       run code in the session's long-lived interpreter (state persists)
  {"op":"stdin", "data":b64}           more stdin for the running program (a run with "liveStdin":true)
  {"op":"stdin", "eof":true}           ... and its end
  {"op":"signal", "signal":"SIGINT"}   a signal to the running program's process group
  {"op":"reset", "prestart":template|null}
                                       kill everything, wipe the writable places, verify, then
                                       pre-start the next run's interpreter (see Waiting), answer
  {"op":"prestart", "runtime":r, "argv":[...], "cwd":..., "env":{...}, "display":bool}
                                       pre-start the next run's interpreter now (a new container)
  {"op":"ping"}                        answer ready (after re-attaching to a running sandbox)
  {"op":"write", "path":p, "data":b64} write a file inside /sandbox (parents created)
  {"op":"read", "path":p, "maxBytes":n} read a regular file inside /sandbox
Events (stdout):
  {"ev":"ready"}
  {"ev":"out","s":1|2,"d":b64}
  {"ev":"display","data":{mime: data}} a code-interpreter result (last expression, display(), a
                                       figure), in order with the output around it
  {"ev":"done","exitCode":n,"status":s,"durationMs":n,"truncated":bool,"files":{path:b64},"error":msg,
   "restarted":bool,                   (cells: the interpreter died, so the session's state is gone)
   "prestarted":bool,                  (the program ran in a pre-started interpreter)
   "usage":{"cpuNs":n,"peakRss":n,"memory":n,"netIn":n,"netOut":n}}
  {"ev":"reset","ok":bool,"detail":msg}
  {"ev":"file","data":b64}             answer to write (empty) and read
  {"ev":"error","error":msg}
"""

import base64
import ctypes
import errno
import fcntl
import json
import os
import select
import selectors
import signal
import stat
import sys
import time

WIPE_DIRS = ("/sandbox", "/tmp", "/dev/shm")
SANDBOX_ONLY = ("/sandbox",)  # what the file routes may reach
KERNEL_DIR = "/opt/isol8/agent/kernels"  # the agent volume (docker/src/agent_volume.rs)
KERNELS = {
    "python": ["python3", "-u", KERNEL_DIR + "/python.py"],
    "node": ["node", "--disable-warning=ExperimentalWarning", KERNEL_DIR + "/js.mjs"],
    "bun": ["bun", KERNEL_DIR + "/js.mjs"],
    "deno": ["deno", "run", "-A", KERNEL_DIR + "/js.mjs"],
    "bash": ["bash", "--noprofile", "--norc", KERNEL_DIR + "/bash.sh"],
}
CELL_DIR = "/tmp/.isol8-cell"
# isol8_display.py and the matplotlib backend isol8_mpl.py. A one-shot program asked to display gets
# them through PYTHONPATH and MPLBACKEND, and fd 3 as its display channel: one JSON line
# {"display": bundle} per result (figures at plt.show() and those still open at exit). Session
# kernels write the same lines to their control pipe.
DISPLAY_DIR = "/opt/isol8/agent/display"
READ_CHUNK = 65536
# Pre-started interpreters (see Waiting): where the loader of each runtime reads its run, and the
# variables that make the interpreter load it. The loader takes them away again with the rest of
# the start environment.
HANDOFF_FD = 99  # above what an interpreter opens at start, so its own descriptors number as usual
LIFT_FD = 128  # spawn() moves descriptors here while it places them
MAX_FD = 1024  # the sandbox's open-file limit: every descriptor is below it
PRESTART_DIR = "/opt/isol8/prestart"
PRESTART_VARS = {
    # site runs 00-isol8-prestart.pth (the python image puts it in site-packages) at start.
    "python": {"ISOL8_PRESTART_FD": str(HANDOFF_FD)},
    "node": {"ISOL8_PRESTART_FD": str(HANDOFF_FD), "NODE_OPTIONS": "--require %s/node.cjs" % PRESTART_DIR},
}
PRESTART_WRITE_S = 2.0  # how long a handoff may take before the run starts the normal way
# A run whose command line and environment are larger starts the normal way, so execve decides
# what it decides for any program ("Argument list too long" past its limits, far above this).
PRESTART_MAX_ARGS = 65536
# Variables an interpreter (or the C library under it) reads while it starts, before its loader
# gets the run's environment: a run whose value differs from the waiting interpreter's starts the
# normal way. Prefixes end with "_" or are whole names' starts; anything doubtful is listed.
LIBC_START = ("LD_", "MALLOC_", "GLIBC_TUNABLES", "LC_", "LANG", "LANGUAGE", "LOCPATH", "GCONV_PATH",
              "TZ", "TZDIR", "PATH", "HOME", "TERM")
START_SENSITIVE = {
    "python": LIBC_START + ("PYTHON", "__PYVENV_LAUNCHER__"),
    "node": LIBC_START + ("NODE_", "UV_", "OPENSSL_", "SSL_", "ICU_", "FORCE_COLOR", "NO_COLOR", "COLORTERM"),
}


def emit(obj):
    data = (json.dumps(obj, separators=(",", ":")) + "\n").encode()
    view = memoryview(data)
    while view:
        try:
            n = os.write(1, view)
        except InterruptedError:
            continue
        view = view[n:]


LIBC = ctypes.CDLL(None, use_errno=True)


def set_dumpable(flag):
    """Undumpable, the agent's /proc files (its environment, its memory) are root's, out of the
    programs' reach; a child about to exec a program turns it back on to adjust itself."""
    try:
        PR_SET_DUMPABLE = 4
        LIBC.prctl(PR_SET_DUMPABLE, flag, 0, 0, 0)
    except Exception as exc:  # noqa: BLE001 - report and go on; the server decides
        sys.stderr.write("isol8-agent: prctl failed: %s\n" % exc)


def oom_kill_count():
    """The cgroup's OOM-kill counter (v2 memory.events, v1 memory.oom_control), or None."""
    for path, key in (
        ("/sys/fs/cgroup/memory.events", "oom_kill"),
        ("/sys/fs/cgroup/memory/memory.oom_control", "oom_kill"),
    ):
        try:
            with open(path) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) == 2 and parts[0] == key:
                        return int(parts[1])
        except OSError:
            continue
    return None


def kill_all():
    """SIGKILL every process but this one. As PID 1, kill(-1) reaches the whole namespace."""
    try:
        os.kill(-1, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            raise


def other_pids():
    me = os.getpid()
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != me:
            pids.append(int(name))
    return pids


# The largest resident set (bytes) of any process reaped since the current run began.
REAPED_PEAK_RSS = [0]


def reap_all():
    """Collect every exited child without blocking; returns {pid: wait_status}."""
    done = {}
    while True:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid == 0:
            break
        REAPED_PEAK_RSS[0] = max(REAPED_PEAK_RSS[0], usage.ru_maxrss * 1024)
        done[pid] = status
    return done


def read_first(paths, parse):
    for path in paths:
        try:
            with open(path) as f:
                return parse(f.read())
        except (OSError, ValueError):
            continue
    return None


def cgroup_cpu_ns():
    """CPU time of every process in the container so far (cgroup v1 cpuacct, or v2 cpu.stat)."""
    def v2(text):
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) * 1000
        raise ValueError("no usage_usec")
    return read_first(["/sys/fs/cgroup/cpuacct/cpuacct.usage", "/sys/fs/cgroup/cpu,cpuacct/cpuacct.usage"],
                      lambda t: int(t.strip())) or read_first(["/sys/fs/cgroup/cpu.stat"], v2)


def cgroup_memory():
    return read_first(["/sys/fs/cgroup/memory/memory.usage_in_bytes", "/sys/fs/cgroup/memory.current"],
                      lambda t: int(t.strip()))


def own_cpu_ns():
    times = os.times()
    return int((times.user + times.system) * 1e9)


def net_bytes():
    """(received, sent) on every interface but loopback: the container's own network namespace."""
    rx = tx = 0
    try:
        with open("/proc/net/dev") as f:
            for line in f.readlines()[2:]:
                name, _, fields = line.partition(":")
                values = fields.split()
                if name.strip() != "lo" and len(values) >= 9:
                    rx += int(values[0])
                    tx += int(values[8])
    except (OSError, ValueError):
        pass
    return rx, tx


def rss_of(pid):
    """A live process's resident set in bytes (0 when unknown)."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def kill_and_reap(deadline_s=5.0):
    end = time.monotonic() + deadline_s
    while True:
        kill_all()
        reap_all()
        if not other_pids():
            return True
        if time.monotonic() > end:
            return False
        time.sleep(0.002)


def safe_path(path, cwd):
    return path if os.path.isabs(path) else os.path.join(cwd, path)


def write_file(path, data):
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    # Non-blocking open: a FIFO a program left at the path must not stall the agent (a FIFO with
    # no reader fails at once, one with a reader is refused below); only regular files are written.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "%s is not a regular file" % path)
        os.set_blocking(fd, True)
        os.ftruncate(fd, 0)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def read_output_file(path, limit, roots):
    """The bytes of the regular file at `path` (resolved already), or (None, why). `roots` is checked
    again on the opened file: a program still running (in a session) could swap a directory for a
    symlink between the resolving and the opening."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if resolved_within(os.readlink("/proc/self/fd/%d" % fd), roots) is None:
            return None, "resolves outside %s" % ", ".join(roots)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, "not a regular file"
        if st.st_size > limit:
            return None, "larger than %d bytes" % limit
        chunks = []
        total = 0
        while True:
            chunk = os.read(fd, READ_CHUNK)
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                return None, "larger than %d bytes" % limit
            chunks.append(chunk)
        return b"".join(chunks), None
    finally:
        os.close(fd)


def spawn(argv, env, cwd, extra=(), handoff=None):
    """Fork `argv` in its own session with piped stdin/stdout/stderr; `extra` fds become 3, 4, ...
    and `handoff` (a pre-started interpreter's pipe, see Waiting) becomes HANDOFF_FD; every other
    descriptor is closed. Returns (pid, stdin writer, stdout reader, stderr reader, whether the exec
    succeeded); when it failed, the child said why on its stderr and exits 127."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    in_r, in_w = os.pipe()
    # Close-on-exec: a successful exec closes it unwritten; a failed one writes a byte first.
    exec_r, exec_w = os.pipe()
    given = tuple(extra) + ((handoff,) if handoff is not None else ())
    try:
        pid = os.fork()
    except OSError:  # at the pids limit: a program's fork bomb may outlive its run in a session
        for fd in (out_r, out_w, err_r, err_w, in_r, in_w, exec_r, exec_w) + given:
            os.close(fd)
        raise
    if pid == 0:  # child
        try:
            os.setsid()
            targets = [in_r, out_w, err_w] + list(extra)
            placed = dict(enumerate(targets))
            if handoff is not None:
                placed[HANDOFF_FD] = handoff
            # Lift every source above the target range first, so no dup2 clobbers one still needed.
            moved = {target: fcntl.fcntl(fd, fcntl.F_DUPFD, LIFT_FD) for target, fd in placed.items()}
            for target, fd in moved.items():
                os.dup2(fd, target)
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGCHLD, signal.SIGPIPE, signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_DFL)
            os.chdir(cwd)
            prefer_as_oom_victim()
            keep = sorted(set(placed) | {exec_w})
            for low, high in zip([-1] + keep, keep + [MAX_FD]):
                if high > low + 1:  # an empty range is not always nothing to CPython
                    os.closerange(low + 1, high)
            os.execvpe(argv[0], argv, env)
        except BaseException as exc:  # noqa: BLE001 - the child must never return
            try:
                os.write(exec_w, b"!")
                os.write(2, ("isol8: cannot start %s: %s\n" % (argv[0], exc)).encode())
            finally:
                os._exit(127)
    for fd in (in_r, out_w, err_w, exec_w) + given:
        os.close(fd)
    try:
        # Exec takes microseconds; the bound keeps the agent answering even if something stops
        # the child before it gets there (then the run is taken as started).
        ready, _, _ = select.select([exec_r], [], [], 5.0)
        exec_failed = bool(ready) and os.read(exec_r, 1) != b""
    finally:
        os.close(exec_r)
    return pid, in_w, out_r, err_r, not exec_failed


def prefer_as_oom_victim():
    """Files in the tmpfs dirs count toward the memory limit too; when it is reached the kernel must
    kill the program, never the agent that reports and cleans up. Best effort: a runtime that refuses
    it (some OCI runtimes) still runs the program."""
    try:
        set_dumpable(1)  # an undumpable process's /proc files are root's, even to itself
        with open("/proc/self/oom_score_adj", "w") as adj:
            adj.write("1000")
    except OSError:
        pass


def program_env(extra, display):
    """A program's environment: the image's (the agent's own holds no secrets), the display
    channel's variables for a python program that has one, then `extra` (the run's, or a
    pre-started interpreter's)."""
    env = dict(os.environ)
    if display:
        env["ISOL8_DISPLAY_FD"] = "3"
        env["ISOL8_DISPLAY_ACK_FD"] = "4"
        env["MPLBACKEND"] = "module://isol8_mpl"
        env["PYTHONPATH"] = ":".join(p for p in (env.get("PYTHONPATH"), DISPLAY_DIR) if p)
    env.update(extra)
    return env


class Waiting:
    """A pre-started interpreter: started with the command line, working directory and start
    environment of a default run of its runtime (`template`, from the server), before that run
    exists, so a run costs no interpreter start. It waits in its loader (PRESTART_DIR) for the run's
    working directory and environment on the handoff pipe, applies them and then runs the
    program file of its command line as the runtime's own start does: the program is __main__
    (python) or the main module (node), with tracebacks, exit codes and signals as usual.

    It is started only at container start and after a reset found the sandbox clean, holds no
    descriptor but its stdio, display and handoff pipes, and serves one run: that run, or any
    other request, takes it or kills it."""

    def __init__(self, template):
        self.template = template
        self.runtime = template["runtime"]
        self.display = bool(template.get("display"))
        self.cwd = template["cwd"]
        self.start_env = program_env(dict(template.get("env") or {}, **PRESTART_VARS[self.runtime]),
                                     self.display)
        self.taken = False
        self.display_r = self.display_ack = None
        extra = ()
        if self.display:
            self.display_r, display_w = os.pipe()
            ack_r, self.display_ack = os.pipe()
            extra = (display_w, ack_r)
        handoff_r, self.handoff = os.pipe()
        try:
            self.pid, self.in_w, self.out_r, self.err_r, ok = spawn(
                template["argv"], self.start_env, self.cwd, extra, handoff=handoff_r)
        except OSError:
            self.pid = None
            self.close()
            raise
        if not ok:
            self.kill()
            raise OSError(errno.ENOEXEC, "cannot start %s" % template["argv"][0])

    def fits(self, argv, cwd, env, display):
        """Whether a run of `argv` in `cwd` with `env` would start its interpreter exactly as this
        one started: the same command line, working directory and display channel, and the same
        value of every variable read at start (the loader sets the others)."""
        if argv != self.template["argv"] or cwd != self.cwd or display != self.display:
            return False
        hook_vars = PRESTART_VARS[self.runtime]
        if any(name in env for name in hook_vars):
            return False
        size = sum(len(os.fsencode(a)) + 1 for a in argv)
        size += sum(len(os.fsencode(k)) + len(os.fsencode(v)) + 2 for k, v in env.items())
        if size > PRESTART_MAX_ARGS:
            return False
        prefixes = START_SENSITIVE[self.runtime]
        for name in set(env) | set(self.start_env):
            if name not in hook_vars and name.startswith(prefixes) and env.get(name) != self.start_env.get(name):
                return False
        # Python's user site (HOME/.local) is looked for at start, before the loader: files of the
        # run that make one need a normal start.
        if self.runtime == "python" and os.path.lexists(os.path.join(env.get("HOME") or "/", ".local")):
            return False
        try:
            return os.waitpid(self.pid, os.WNOHANG) == (0, 0)
        except ChildProcessError:
            return False

    def hand_over(self, cwd, env):
        """Sends the run to the interpreter; returns its (pid, stdin writer, stdout reader, stderr
        reader, display reader, display ack writer), now the run's, or None when it would not take
        the run in time (it is then killed, having run nothing)."""
        data = b"\0".join([os.fsencode(cwd)] + [os.fsencode("%s=%s" % item) for item in env.items()])
        view = memoryview(data)
        deadline = time.monotonic() + PRESTART_WRITE_S
        os.set_blocking(self.handoff, False)
        try:
            while view:
                try:
                    view = view[os.write(self.handoff, view):]
                except BlockingIOError:
                    left = deadline - time.monotonic()
                    if left <= 0 or not select.select([], [self.handoff], [], left)[1]:
                        return None
        except OSError:
            return None
        os.close(self.handoff)
        self.handoff = None
        self.taken = True
        return self.pid, self.in_w, self.out_r, self.err_r, self.display_r, self.display_ack

    def kill(self):
        """Kills the interpreter (it ran nothing but its loader) and closes its pipes."""
        if self.pid is not None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except OSError:
                pass
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass  # reaped already
            self.pid = None
        self.close()

    def close(self):
        for name in ("in_w", "out_r", "err_r", "display_r", "display_ack", "handoff"):
            fd = getattr(self, name, None)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)


class Run:
    """One program run: its pipes, limits and what it produced so far."""

    def __init__(self, req, sel):
        self.req = req
        self.sel = sel
        # Limits come with every request: their defaults are the engine's (`Limits`), never here.
        self.max_output = int(req["maxOutput"])
        self.timeout_s = int(req["timeoutMs"]) / 1000.0
        self.counts = {1: 0, 2: 0}
        self.truncated = False
        self.status = None
        self.pid = None
        self.exit_status = None
        self.open_pipes = 0
        self.started = time.monotonic()
        self.deadline = self.started + self.timeout_s
        self.oom_before = oom_kill_count()
        self.stdin_fd = None
        self.stdin_buf = b""
        # Live stdin (a WebSocket client typing): the pipe stays open until the client says eof.
        self.stdin_eof = not req.get("liveStdin")
        self.stdin_watched = False
        self.scoped = False
        self.exec_ok = True
        REAPED_PEAK_RSS[0] = 0
        self.cpu_before = cgroup_cpu_ns()
        self.own_cpu_before = own_cpu_ns()
        self.net_before = net_bytes()
        self.display_ack = None  # one-shot display channel: where the agent acknowledges results
        self.prestarted = False  # the program runs in a pre-started interpreter (see Waiting)

    def start(self, waiting=None):
        """Writes the run's files and starts its program: in `waiting`, the pre-started interpreter
        made for a run like this one, when this run is one (see Waiting.fits); else a new process.
        `waiting` is used or killed here, never left for a later run."""
        req = self.req
        cwd = req.get("cwd") or "/sandbox"
        try:
            for path, b64 in (req.get("files") or {}).items():
                write_file(safe_path(path, cwd), base64.b64decode(b64))
            os.makedirs(cwd, exist_ok=True)
            if req.get("codePath"):
                write_file(req["codePath"], base64.b64decode(req.get("code") or ""))
            display = bool(req.get("display"))
            env = program_env(req.get("env") or {}, display)  # the caller's MPLBACKEND or PYTHONPATH wins
            started = None
            if waiting is not None and waiting.fits(req["argv"], cwd, env, display):
                started = waiting.hand_over(cwd, env)
        finally:
            if waiting is not None and not waiting.taken:
                waiting.kill()
        if started is not None:
            self.prestarted = True
            pid, in_w, out_r, err_r, display_r, self.display_ack = started
        else:
            display_r = None
            extra = ()
            if display:
                display_r, display_w = os.pipe()
                ack_r, self.display_ack = os.pipe()
                extra = (display_w, ack_r)
            try:
                pid, in_w, out_r, err_r, self.exec_ok = spawn(req["argv"], env, cwd, extra)
            except OSError:
                if extra:
                    os.close(display_r)
                    self.close_display_ack()
                raise
        self.pid = pid
        if display_r is not None:
            # Counted as an output pipe: the run ends once the program's last figure is read.
            os.set_blocking(display_r, False)
            self.sel.register(display_r, selectors.EVENT_READ, ("display", 0))
            self.open_pipes += 1
            self.display_buf = b""
        for fd, stream in ((out_r, 1), (err_r, 2)):
            os.set_blocking(fd, False)
            self.sel.register(fd, selectors.EVENT_READ, ("pipe", stream))
            self.open_pipes += 1
        stdin = req.get("stdin")
        if stdin or not self.stdin_eof:
            self.stdin_buf = base64.b64decode(stdin or "")
            self.stdin_fd = in_w
            os.set_blocking(in_w, False)
            self.watch_stdin()
        else:
            os.close(in_w)

    def watch_stdin(self):
        """Waits for the pipe to take bytes while there are some to write (or the end to send)."""
        if self.stdin_fd is None:
            return
        if (self.stdin_buf or self.stdin_eof) and not self.stdin_watched:
            self.sel.register(self.stdin_fd, selectors.EVENT_WRITE, ("stdin", 0))
            self.stdin_watched = True

    def more_stdin(self, data, eof):
        """Live stdin from the client; ignored once stdin is closed (the program is not reading)."""
        if self.stdin_fd is None or self.stdin_eof:
            return
        self.stdin_buf += data
        self.stdin_eof = eof
        self.watch_stdin()

    def feed_stdin(self):
        try:
            n = os.write(self.stdin_fd, self.stdin_buf[:READ_CHUNK])
            self.stdin_buf = self.stdin_buf[n:]
        except BlockingIOError:
            return
        except OSError:
            self.stdin_buf = b""
            self.stdin_eof = True
        if not self.stdin_buf:
            if self.stdin_eof:
                self.close_stdin()
            elif self.stdin_watched:
                self.sel.unregister(self.stdin_fd)
                self.stdin_watched = False

    def close_stdin(self):
        if self.stdin_fd is not None:
            if self.stdin_watched:
                self.sel.unregister(self.stdin_fd)
                self.stdin_watched = False
            os.close(self.stdin_fd)
            self.stdin_fd = None

    def signal(self, sig):
        """`sig` to the program's process group (a cell's: the session's interpreter)."""
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError, TypeError):
            pass

    def on_pipe(self, fd, stream):
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.sel.unregister(fd)
            os.close(fd)
            self.open_pipes -= 1
            return
        self.forward(stream, data)

    def on_display_pipe(self, fd):
        """Reads a one-shot program's display channel: complete lines are results."""
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.sel.unregister(fd)
            os.close(fd)
            self.open_pipes -= 1
            self.close_display_ack()
            return
        self.display_buf += data
        while b"\n" in self.display_buf:
            line, self.display_buf = self.display_buf.split(b"\n", 1)
            try:
                message = json.loads(line)
            except ValueError:
                continue  # the program wrote something else to fd 3
            if isinstance(message, dict):
                drain_pipes(self)
                self.display(message.get("display"), len(line))
            self.ack_display()

    def ack_display(self):
        """Lets the program go on past its result (it waits, so its later output cannot pass it)."""
        try:
            os.write(self.display_ack, b"\n")
        except OSError:
            pass  # the program is gone

    def close_display_ack(self):
        if self.display_ack is not None:
            os.close(self.display_ack)
            self.display_ack = None

    def display(self, bundle, size):
        """Emit one result, counted toward stdout's cap (a flood of figures is output too)."""
        if self.truncated or not isinstance(bundle, dict) or not bundle:
            return
        if not all(isinstance(k, str) for k in bundle):
            return
        if size > self.max_output - self.counts[1]:
            self.truncated = True
            self.terminate("output_limit")
            return
        self.counts[1] += size
        emit({"ev": "display", "data": bundle})

    def forward(self, stream, data):
        """Emit output up to the cap of its stream; past it, output is read and discarded, and the
        program runs on to its own end (its exit code is reported, the same every run)."""
        room = self.max_output - self.counts[stream]
        if len(data) > room:
            data = data[:max(room, 0)]
            self.truncated = True
        self.counts[stream] += len(data)
        if data:
            emit({"ev": "out", "s": stream, "d": base64.b64encode(data).decode()})

    def terminate(self, status):
        if self.status is None:
            self.status = status
        self.kill()

    def kill(self):
        """Everything but the agent; in a session (`scoped`), only this run's process group, so the
        session's interpreter survives a `cmd` or setup script."""
        if not self.scoped:
            kill_all()
            return
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, TypeError):
            pass

    def on_reaped(self, statuses):
        if self.pid in statuses and self.exit_status is None:
            self.exit_status = statuses[self.pid]
            # The run ends with its main process: what it left behind dies with it, so the pipes close.
            self.kill()

    def finished(self):
        return self.exit_status is not None and self.open_pipes == 0

    def result(self):
        code = os.waitstatus_to_exitcode(self.exit_status)
        exit_code = code if code >= 0 else 128 - code
        status = self.status
        if not self.exec_ok:
            status = "error"  # the program never started; its stderr says why
        if status is None:
            oom_after = oom_kill_count()
            if code < 0 and self.oom_before is not None and oom_after is not None and oom_after > self.oom_before:
                status = "memory_limit"
            elif self.truncated:
                status = "output_limit"
            else:
                status = "completed"
        if status == "timeout":
            exit_code = 137
        files = {}
        errors = []
        limit = int(self.req["maxFileBytes"])
        # All output files together are capped too: they come back in one answer.
        room = int(self.req["maxFilesTotal"])
        cwd = self.req.get("cwd") or "/sandbox"
        for path in self.req.get("outputPaths") or []:
            # Output files are what the run made (in the dirs it can write), not a way to read the
            # image or /proc through a symlink.
            real = resolved_within(safe_path(path, cwd), WIPE_DIRS)
            if real is None:
                errors.append("%s: resolves outside %s" % (path, ", ".join(WIPE_DIRS)))
                continue
            try:
                data, why = read_output_file(real, min(limit, room), WIPE_DIRS)
            except OSError:
                continue  # a missing output file is simply not returned
            if data is None:
                if room < limit:
                    why = "left out: the output files together may hold %d bytes (maxFilesTotal)" % (
                        int(self.req["maxFilesTotal"]))
                errors.append("%s: %s" % (path, why))
                continue
            room -= len(data)
            files[path] = base64.b64encode(data).decode()
        code_path = self.req.get("codePath")
        if code_path:
            try:
                os.unlink(code_path)
            except OSError:
                pass
        done = {
            "ev": "done",
            "exitCode": exit_code,
            "status": status,
            "durationMs": int((time.monotonic() - self.started) * 1000),
            "truncated": self.truncated,
            "files": files,
            "usage": self.usage(),
        }
        if errors:
            done["fileErrors"] = errors
        if self.prestarted:
            done["prestarted"] = True
        return done

    def usage(self):
        """What this run used: the container's CPU since the run began minus the agent's own, the
        largest resident set of its processes, the container's memory now, network bytes."""
        cpu_after = cgroup_cpu_ns()
        own = own_cpu_ns() - self.own_cpu_before
        if cpu_after is not None and self.cpu_before is not None:
            cpu = max(0, cpu_after - self.cpu_before - own)
        else:
            children = os.times()
            cpu = int((children.children_user + children.children_system) * 1e9)
        rx, tx = net_bytes()
        return {"cpuNs": cpu, "peakRss": max(REAPED_PEAK_RSS[0], self.live_rss()),
                "memory": cgroup_memory() or 0,
                "netIn": max(0, rx - self.net_before[0]), "netOut": max(0, tx - self.net_before[1])}

    def live_rss(self):
        return 0


class Kernel:
    """A session's long-lived interpreter. Its pipes stay registered between cells; output that arrives
    while no cell runs (a background job) is dropped."""

    def __init__(self, runtime, sel):
        self.runtime = runtime
        self.sel = sel
        ctl_in_r, ctl_in_w = os.pipe()
        ctl_out_r, ctl_out_w = os.pipe()
        try:
            pid, stdin_w, out_r, err_r, _ = spawn(KERNELS[runtime], dict(os.environ), "/sandbox",
                                               extra=(ctl_in_r, ctl_out_w))
        except OSError:
            for fd in (ctl_in_r, ctl_in_w, ctl_out_r, ctl_out_w):
                os.close(fd)
            raise
        os.close(stdin_w)  # cells get their stdin from the cell message
        self.pid = pid
        self.control = ctl_in_w
        self.fds = []
        for fd, data in ((out_r, ("kpipe", 1)), (err_r, ("kpipe", 2)), (ctl_out_r, ("kctl", 0))):
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ, data)
            self.fds.append(fd)
        self.ctl_buf = b""

    def output_fds(self):
        """The interpreter's stdout and stderr pipes still open, as (fd, stream)."""
        return [(fd, self.sel.get_key(fd).data[1]) for fd in self.fds if self.sel.get_key(fd).data[0] == "kpipe"]

    def read_output(self, fd, stream, cell):
        """Reads once from an output pipe and hands the bytes to `cell` (dropped when no cell runs).
        Returns whether anything was read; closes the pipe at EOF."""
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:
            self.sel.unregister(fd)
            os.close(fd)
            self.fds.remove(fd)
            return False
        if cell is not None:
            cell.forward(stream, data)
        return True

    def ack_display(self):
        """The publisher waits for this after each result (see isol8_display.publish)."""
        try:
            self.write_line("")
        except OSError:
            pass  # the interpreter is gone

    def write_line(self, line):
        data = memoryview((line + "\n").encode())
        while data:
            data = data[os.write(self.control, data):]

    def read_control(self, fd):
        """Complete JSON lines from the interpreter's control pipe ([] at EOF or nothing new)."""
        try:
            chunk = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return []
        except OSError:
            chunk = b""
        if not chunk:  # the interpreter is gone; stop watching its control pipe
            self.sel.unregister(fd)
            os.close(fd)
            self.fds.remove(fd)
            return []
        self.ctl_buf += chunk
        lines = []
        while b"\n" in self.ctl_buf:
            line, self.ctl_buf = self.ctl_buf.split(b"\n", 1)
            if line.strip():
                try:
                    lines.append(json.loads(line))
                except ValueError:
                    continue  # a cell's code wrote to the control pipe; not the kernel's line
        return lines

    def close(self):
        for fd in self.fds:
            self.sel.unregister(fd)
            os.close(fd)
        self.fds = []
        os.close(self.control)


class Cell(Run):
    """One call in a session: code run by the session's interpreter, with the run's limits. The call
    ends when the interpreter reports the cell done, or when the interpreter dies (then the session's
    state is gone and the result says `restarted`)."""

    def __init__(self, req, sel, kernel):
        super().__init__(req, sel)
        self.kernel = kernel
        self.kernel_died = False  # during this cell
        self.restarted = False  # reported: the session's earlier state is gone

    def start(self):
        req = self.req
        cwd = req.get("cwd")
        for path, b64 in (req.get("files") or {}).items():
            write_file(safe_path(path, cwd or "/sandbox"), base64.b64decode(b64))
        if cwd:
            os.makedirs(cwd, exist_ok=True)
        code = base64.b64decode(req.get("code") or "").decode("utf-8", "replace")
        stdin = base64.b64decode(req.get("stdin") or "").decode("utf-8", "replace")
        env = req.get("env") or {}
        if self.kernel.runtime == "bash":
            # bash reads no JSON: the cell and its stdin go to files, the line to run sources them.
            os.makedirs(CELL_DIR, exist_ok=True)
            write_file(CELL_DIR + "/cell.sh", code.encode())
            write_file(CELL_DIR + "/stdin", stdin.encode())
            exports = "".join("export %s=%s; " % (k, shell_quote(v)) for k, v in env.items())
            chdir = "cd %s && " % shell_quote(cwd) if cwd else ""
            self.kernel.write_line("%s%ssource %s/cell.sh < %s/stdin" % (exports, chdir, CELL_DIR, CELL_DIR))
        else:
            self.kernel.write_line(json.dumps({"code": code, "stdin": stdin, "env": env, "cwd": cwd}))
        self.pid = self.kernel.pid

    def on_control(self, messages):
        for message in messages:
            if not isinstance(message, dict):
                continue
            if "display" in message:
                if self.exit_status is None:
                    # Output written before the result comes first: the kernel flushed it already.
                    drain(self.kernel, self)
                    self.display(message["display"], len(json.dumps(message["display"])))
                self.kernel.ack_display()
            elif self.exit_status is None and "exit" in message:
                code = int(message["exit"])
                # Encoded like a wait status so the shared result code reads it.
                self.exit_status = (code & 0xFF) << 8
                drain(self.kernel, self)

    def on_reaped(self, statuses):
        if self.kernel.pid in statuses:
            # The interpreter died (exit(), a crash, a kill): its state is gone, and so is whatever
            # it started, so the next call begins from a clean interpreter.
            self.kernel_died = True
            self.restarted = True
            if self.exit_status is None:
                self.exit_status = statuses[self.kernel.pid]
            kill_all()

    def finished(self):
        if self.exit_status is None:
            return False
        return not self.kernel_died or not self.kernel.output_fds()

    def result(self):
        done = super().result()
        if self.restarted:
            done["restarted"] = True
        return done

    def live_rss(self):
        """The session's interpreter outlives the cell: its resident set at the cell's end."""
        return 0 if self.kernel_died else rss_of(self.kernel.pid)


def drain(kernel, cell):
    """Read what the interpreter wrote before it reported the cell done (it flushed first)."""
    for fd, stream in kernel.output_fds():
        while kernel.read_output(fd, stream, cell):
            pass


def drain_pipes(run):
    """Read what a one-shot program wrote to stdout and stderr before its latest result."""
    for key in list(run.sel.get_map().values()):
        if key.data[0] == "pipe":
            before = None
            while key.fd in run.sel.get_map() and before != run.counts[key.data[1]]:
                before = run.counts[key.data[1]]
                run.on_pipe(key.fd, key.data[1])


def resolved_within(path, roots):
    """`path` with every existing symlink resolved, or None when that leaves `roots`. This is API
    confinement, not a security boundary: programs run as the same user and can reach whatever it can."""
    real = os.path.realpath(path)
    return real if any(real == root or real.startswith(root + "/") for root in roots) else None


def file_op(msg):
    path = msg.get("path") or ""
    if msg["op"] == "write":
        parent = resolved_within(os.path.dirname(path), SANDBOX_ONLY)
        if parent is None or os.path.basename(path) in ("", ".", ".."):
            return {"ev": "error", "error": "%s is not a file path inside /sandbox" % path}
        target = os.path.join(parent, os.path.basename(path))
        if os.path.islink(target):
            return {"ev": "error", "error": "%s is a symlink" % path}
        write_file(target, base64.b64decode(msg.get("data") or ""))
        return {"ev": "file", "data": ""}
    real = resolved_within(path, SANDBOX_ONLY)
    if real is None:
        return {"ev": "error", "error": "%s resolves outside /sandbox" % path}
    data, why = read_output_file(real, int(msg["maxBytes"]), SANDBOX_ONLY)
    if data is None:
        return {"ev": "error", "error": "%s: %s" % (path, why)}
    return {"ev": "file", "data": base64.b64encode(data).decode()}


def shell_quote(value):
    return "'" + str(value).replace("'", "'\\''") + "'"


def wipe(path):
    """Remove everything inside `path`, making directories writable first (the sandbox user owns them)."""
    for root, dirs, files in os.walk(path, topdown=True, followlinks=False):
        for d in dirs:
            try:
                full = os.path.join(root, d)
                if not os.path.islink(full):
                    os.chmod(full, 0o700)
            except OSError:
                pass
    for name in os.listdir(path):
        full = os.path.join(path, name)
        remove_tree(full)


def remove_tree(full):
    try:
        st = os.lstat(full)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        for name in os.listdir(full):
            remove_tree(os.path.join(full, name))
        os.rmdir(full)
    else:
        os.unlink(full)


def reset():
    if not kill_and_reap():
        return False, "processes survived SIGKILL: %s" % other_pids()
    problems = []
    for d in WIPE_DIRS:
        try:
            wipe(d)
        except OSError as exc:
            problems.append("%s: %s" % (d, exc))
    for d in WIPE_DIRS:
        try:
            left = os.listdir(d)
        except OSError as exc:
            problems.append("%s: %s" % (d, exc))
            continue
        if left:
            problems.append("%s not empty: %s" % (d, left[:5]))
    problems.extend(wipe_ipc())
    if other_pids():
        problems.append("processes left: %s" % other_pids())
    return (not problems), "; ".join(problems) or "clean"


IPC_RMID = 0
SYSV_IPC = {  # /proc/sysvipc table → how to remove one of its objects by id
    "shm": lambda ident: LIBC.shmctl(ident, IPC_RMID, None),
    "sem": lambda ident: LIBC.semctl(ident, 0, IPC_RMID),
    "msg": lambda ident: LIBC.msgctl(ident, IPC_RMID, None),
}
MQUEUE_DIR = "/dev/mqueue"


def sysv_ids(table):
    """The ids of the SysV IPC objects in `table` (shm, sem, msg) of this IPC namespace."""
    try:
        with open("/proc/sysvipc/" + table) as f:
            rows = f.read().splitlines()[1:]
    except OSError:
        return []
    return [int(row.split()[1]) for row in rows if len(row.split()) > 1]


def wipe_ipc():
    """Removes the SysV shared memory, semaphores and message queues and the POSIX message queues a
    run left (the container's IPC namespace outlives runs), then checks none is left."""
    for table, remove in SYSV_IPC.items():
        for ident in sysv_ids(table):
            remove(ident)
    try:
        for name in os.listdir(MQUEUE_DIR):
            try:
                os.unlink(os.path.join(MQUEUE_DIR, name))
            except OSError:
                pass
        queues = os.listdir(MQUEUE_DIR)
    except OSError:
        queues = []
    left = ["%s %s" % (t, sysv_ids(t)) for t in SYSV_IPC if sysv_ids(t)]
    if queues:
        left.append("mqueue %s" % queues[:5])
    return ["IPC objects left: %s" % ", ".join(left)] if left else []


def descendants(pids):
    """Every live process whose parent chain reaches one of `pids`."""
    parents = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            parents[int(name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    found = set()
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if pid not in found and (parent in pids or parent in found):
                found.add(pid)
                grew = True
    return found


class State:
    """What the agent is doing: the current run or cell, and a session's interpreter."""

    def __init__(self, sel):
        self.sel = sel
        self.run = None
        self.kernel = None
        self.kernel_lost = False  # the interpreter died between calls; the next call says so
        # Processes a session call left running (a background job, a server it started): each
        # set dies at its call's deadline, so nothing runs past a timeout the call was held to.
        self.lingering = []  # [(deadline, {pid, ...})]
        self.pids_before = set()  # alive when the current session call began
        self.waiting = None  # the next run's pre-started interpreter (see Waiting), if any

    def start_waiting(self, template):
        """Pre-starts the next run's interpreter, when nothing runs. Best effort: a run without
        one starts its interpreter the normal way."""
        if self.run is not None or self.kernel is not None or self.waiting is not None:
            return
        try:
            self.waiting = Waiting(template)
        except (OSError, KeyError, TypeError) as exc:
            sys.stderr.write("isol8-agent: no pre-started interpreter: %s\n" % exc)

    def take_waiting(self):
        """The pre-started interpreter, for the run about to start (which uses or kills it)."""
        waiting, self.waiting = self.waiting, None
        return waiting

    def drop_waiting(self):
        if self.waiting is not None:
            self.take_waiting().kill()

    def call_started(self):
        self.pids_before = set(other_pids())

    def call_ended(self, run):
        if self.kernel is None:
            return
        left = set(other_pids()) - self.pids_before - {self.kernel.pid}
        if left:
            self.lingering.append((run.deadline, left))

    def next_deadline(self):
        return min((d for d, _ in self.lingering), default=None)

    def kill_lingering(self):
        """SIGKILLs the processes whose call's deadline passed, and what they started since."""
        now = time.monotonic()
        due = [pids for deadline, pids in self.lingering if deadline <= now]
        if not due:
            return
        self.lingering = [(d, p) for d, p in self.lingering if d > now]
        doomed = set().union(*due)
        doomed |= descendants(doomed)
        doomed.discard(getattr(self.kernel, "pid", None))
        for pid in doomed:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def drop_kernel(self):
        if self.kernel is not None:
            self.kernel.close()
            self.kernel = None


def main():
    set_dumpable(0)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    sig_r, sig_w = os.pipe()
    os.set_blocking(sig_r, False)
    os.set_blocking(sig_w, False)
    signal.set_wakeup_fd(sig_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    # A program may signal PID 1: SIGTERM and SIGINT (Python's default raises KeyboardInterrupt)
    # do nothing to the agent; the kernel ignores the rest for a namespace's init.
    signal.signal(signal.SIGTERM, lambda *_: None)
    signal.signal(signal.SIGINT, lambda *_: None)
    os.set_blocking(0, False)

    sel = selectors.DefaultSelector()
    sel.register(0, selectors.EVENT_READ, ("cmd", 0))
    sel.register(sig_r, selectors.EVENT_READ, ("sig", 0))
    inbuf = b""
    state = State(sel)
    emit({"ev": "ready"})

    while True:
        run = state.run
        lingering = state.next_deadline()
        if run is None:
            timeout = 1.0  # keep reaping orphans even when idle
            if lingering is not None:
                timeout = max(0.0, min(timeout, lingering - time.monotonic()))
        elif run.exit_status is not None or run.status is not None:
            timeout = 0.05  # killing: poll until every pipe writer is gone
        else:
            timeout = max(0.0, run.deadline - time.monotonic())
        for key, _ in sel.select(timeout):
            kind, stream = key.data
            if kind == "cmd":
                try:
                    chunk = os.read(0, READ_CHUNK)
                except BlockingIOError:
                    continue
                if not chunk:
                    kill_all()
                    return
                inbuf += chunk
                while b"\n" in inbuf:
                    line, inbuf = inbuf.split(b"\n", 1)
                    if line.strip():
                        handle(json.loads(line), state)
            elif kind == "sig":
                try:
                    while os.read(sig_r, 512):
                        pass
                except BlockingIOError:
                    pass
            elif kind == "pipe" and state.run is not None:
                state.run.on_pipe(key.fd, stream)
            elif kind == "display" and state.run is not None:
                state.run.on_display_pipe(key.fd)
            elif kind == "stdin" and state.run is not None:
                state.run.feed_stdin()
            elif kind == "kpipe" and state.kernel is not None:
                state.kernel.read_output(key.fd, stream, state.run)
            elif kind == "kctl" and state.kernel is not None:
                messages = state.kernel.read_control(key.fd)
                if isinstance(state.run, Cell):
                    state.run.on_control(messages)
                else:  # a result published between cells is dropped, but still acknowledged
                    for message in messages:
                        if isinstance(message, dict) and "display" in message:
                            state.kernel.ack_display()
        statuses = reap_all()
        state.kill_lingering()
        if state.waiting is not None and state.waiting.pid in statuses:
            state.waiting.pid = None  # it died waiting (it ran nothing): the next run starts anew
            state.drop_waiting()
        run = state.run
        # The interpreter died outside a cell (a `cmd` run killed it, or it crashed): the next cell
        # starts a new one and says the state is gone.
        if state.kernel is not None and state.kernel.pid in statuses and not isinstance(run, Cell):
            state.drop_kernel()
            state.kernel_lost = True
        if run is not None:
            run.on_reaped(statuses)
            if run.exit_status is None and run.status is None and time.monotonic() >= run.deadline:
                run.terminate("timeout")
            elif not run.finished() and (run.exit_status is not None or run.status is not None):
                if isinstance(run, Cell):
                    if run.status is not None or run.kernel_died:
                        kill_all()
                else:
                    run.kill()  # a process forked during the last kill: keep killing until the pipes close
            if run.finished():
                run.close_stdin()
                run.close_display_ack()
                emit(run.result())
                state.run = None
                state.call_ended(run)
                if isinstance(run, Cell) and run.kernel_died:
                    state.drop_kernel()


def handle(msg, state):
    op = msg.get("op")
    if op in ("run", "cell"):
        if state.run is not None:
            emit({"ev": "done", "exitCode": 1, "status": "error", "durationMs": 0, "truncated": False,
                  "files": {}, "error": "a program is already running in this sandbox"})
            return
        if op == "cell" or state.kernel is not None:
            state.call_started()
        waiting = state.take_waiting()
        if waiting is not None and (op == "cell" or state.kernel is not None):
            waiting.kill()
            waiting = None
        try:
            if op == "run":
                new = Run(msg, state.sel)
                new.scoped = state.kernel is not None
                new.start(waiting)
            else:
                runtime = msg.get("runtime")
                if runtime not in KERNELS:
                    raise ValueError("no session interpreter for runtime %r" % runtime)
                if state.kernel is None:
                    state.kernel = Kernel(runtime, state.sel)
                new = Cell(msg, state.sel, state.kernel)
                new.restarted = state.kernel_lost
                state.kernel_lost = False
                new.start()
        except Exception as exc:  # noqa: BLE001 - a bad file path or similar: report, don't die
            if waiting is not None and not waiting.taken:
                waiting.kill()
            emit({"ev": "done", "exitCode": 1, "status": "error", "durationMs": 0, "truncated": False,
                  "files": {}, "error": "could not start the program: %s" % exc})
            return
        state.run = new
        return
    if op == "reset":
        if state.run is not None:
            state.run.terminate("killed")
            state.run.close_stdin()
            state.run.close_display_ack()
        kill_and_reap()
        for fd in list(state.sel.get_map()):
            if state.sel.get_map()[fd].data[0] in ("pipe", "stdin", "display"):
                state.sel.unregister(fd)
                os.close(fd)
        state.run = None
        state.drop_kernel()
        state.drop_waiting()
        state.lingering = []
        ok, detail = reset()
        emit({"ev": "reset", "ok": ok, "detail": detail})
        # The next run's interpreter starts only in the sandbox just found clean, before this agent
        # reads its next request (the answer goes first: the server can hand the container out
        # while the fork and exec happen).
        if ok and msg.get("prestart"):
            state.start_waiting(msg["prestart"])
        return
    if op == "prestart":  # a new container, clean by construction
        state.start_waiting(msg)
        return
    if op == "ping":
        emit({"ev": "ready"})
        return
    if op == "stdin":
        if state.run is not None:
            state.run.more_stdin(base64.b64decode(msg.get("data") or ""), bool(msg.get("eof")))
        return
    if op == "signal":
        sig = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}.get(msg.get("signal"))
        if state.run is not None and sig is not None:
            state.run.signal(sig)
        return
    if op in ("write", "read"):
        try:
            emit(file_op(msg))
        except FileNotFoundError:
            emit({"ev": "error", "error": "%s does not exist" % msg.get("path"), "notFound": True})
        except OSError as exc:
            emit({"ev": "error", "error": "%s: %s" % (msg.get("path"), exc.strerror or exc)})
        return
    emit({"ev": "error", "error": "unknown op %r" % op})


if __name__ == "__main__":
    main()
