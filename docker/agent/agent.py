"""isol8 in-container agent: the sandbox's init process, which runs programs on request.

The server talks to this process over the container's attached stdio, one JSON object per line in each
direction, so a run costs no `docker exec`. Everything here runs as the unprivileged sandbox user; the
agent marks itself non-dumpable so programs of the same user can neither ptrace it nor open its memory.

Requests (stdin):
  {"op":"run", "argv":[...], "cwd":..., "env":{...}, "stdin":b64|null, "files":{path: b64},
   "codePath":path|null, "code":b64|null, "outputPaths":[...], "timeoutMs":n, "maxOutput":n,
   "maxFileBytes":n}
  {"op":"reset"}                       kill everything, wipe the writable places, verify, answer
Events (stdout):
  {"ev":"ready"}
  {"ev":"out","s":1|2,"d":b64}
  {"ev":"done","exitCode":n,"status":s,"durationMs":n,"truncated":bool,"files":{path:b64},"error":msg}
  {"ev":"reset","ok":bool,"detail":msg}
"""

import base64
import ctypes
import errno
import json
import os
import selectors
import signal
import stat
import sys
import time

WIPE_DIRS = ("/sandbox", "/tmp", "/dev/shm")
READ_CHUNK = 65536


def emit(obj):
    data = (json.dumps(obj, separators=(",", ":")) + "\n").encode()
    view = memoryview(data)
    while view:
        try:
            n = os.write(1, view)
        except InterruptedError:
            continue
        view = view[n:]


def make_undumpable():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_DUMPABLE = 4
        libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
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


def reap_all():
    """Collect every exited child without blocking; returns {pid: wait_status}."""
    done = {}
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid == 0:
            break
        done[pid] = status
    return done


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
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def read_output_file(path, limit):
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
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


class Run:
    """One program run: its pipes, limits and what it produced so far."""

    def __init__(self, req, sel):
        self.req = req
        self.sel = sel
        self.max_output = int(req.get("maxOutput", 1048576))
        self.timeout_s = int(req.get("timeoutMs", 30000)) / 1000.0
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

    def start(self):
        req = self.req
        cwd = req.get("cwd") or "/sandbox"
        for path, b64 in (req.get("files") or {}).items():
            write_file(safe_path(path, cwd), base64.b64decode(b64))
        os.makedirs(cwd, exist_ok=True)
        if req.get("codePath"):
            write_file(req["codePath"], base64.b64decode(req.get("code") or ""))
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        in_r, in_w = os.pipe()
        env = dict(os.environ)  # the image's environment; the container's own holds no secrets
        env.update(req.get("env") or {})
        argv = req["argv"]
        pid = os.fork()
        if pid == 0:  # child
            try:
                os.setsid()
                os.dup2(in_r, 0)
                os.dup2(out_w, 1)
                os.dup2(err_w, 2)
                for fd in (in_r, in_w, out_r, out_w, err_r, err_w):
                    if fd > 2:
                        os.close(fd)
                signal.set_wakeup_fd(-1)
                for sig in (signal.SIGCHLD, signal.SIGPIPE, signal.SIGINT, signal.SIGTERM):
                    signal.signal(sig, signal.SIG_DFL)
                os.chdir(cwd)
                os.closerange(3, 1024)
                os.execvpe(argv[0], argv, env)
            except BaseException as exc:  # noqa: BLE001 - the child must never return
                try:
                    os.write(2, ("isol8: cannot start %s: %s\n" % (argv[0], exc)).encode())
                finally:
                    os._exit(127)
        self.pid = pid
        os.close(in_r)
        os.close(out_w)
        os.close(err_w)
        for fd, stream in ((out_r, 1), (err_r, 2)):
            os.set_blocking(fd, False)
            self.sel.register(fd, selectors.EVENT_READ, ("pipe", stream))
            self.open_pipes += 1
        stdin = req.get("stdin")
        if stdin:
            self.stdin_buf = base64.b64decode(stdin)
            self.stdin_fd = in_w
            os.set_blocking(in_w, False)
            self.sel.register(in_w, selectors.EVENT_WRITE, ("stdin", 0))
        else:
            os.close(in_w)

    def feed_stdin(self):
        try:
            n = os.write(self.stdin_fd, self.stdin_buf[:READ_CHUNK])
            self.stdin_buf = self.stdin_buf[n:]
        except BlockingIOError:
            return
        except OSError:
            self.stdin_buf = b""
        if not self.stdin_buf:
            self.close_stdin()

    def close_stdin(self):
        if self.stdin_fd is not None:
            self.sel.unregister(self.stdin_fd)
            os.close(self.stdin_fd)
            self.stdin_fd = None

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
        if self.truncated:
            return
        room = self.max_output - self.counts[stream]
        if len(data) > room:
            data = data[:room]
            self.truncated = True
        self.counts[stream] += len(data)
        if data:
            emit({"ev": "out", "s": stream, "d": base64.b64encode(data).decode()})
        if self.truncated:
            self.terminate("output_limit")

    def terminate(self, status):
        if self.status is None:
            self.status = status
        kill_all()

    def on_reaped(self, statuses):
        if self.pid in statuses and self.exit_status is None:
            self.exit_status = statuses[self.pid]
            # The run ends with its main process: what it left behind dies with it, so the pipes close.
            kill_all()

    def finished(self):
        return self.exit_status is not None and self.open_pipes == 0

    def result(self):
        code = os.waitstatus_to_exitcode(self.exit_status)
        exit_code = code if code >= 0 else 128 - code
        status = self.status
        if status is None:
            oom_after = oom_kill_count()
            if code < 0 and self.oom_before is not None and oom_after is not None and oom_after > self.oom_before:
                status = "memory_limit"
            else:
                status = "completed"
        if status == "timeout":
            exit_code = 137
        files = {}
        errors = []
        limit = int(self.req.get("maxFileBytes", 10 * 1048576))
        cwd = self.req.get("cwd") or "/sandbox"
        for path in self.req.get("outputPaths") or []:
            try:
                data, why = read_output_file(safe_path(path, cwd), limit)
            except OSError:
                continue  # a missing output file is simply not returned
            if data is None:
                errors.append("%s: %s" % (path, why))
                continue
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
        }
        if errors:
            done["fileErrors"] = errors
        return done


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
    if other_pids():
        problems.append("processes left: %s" % other_pids())
    return (not problems), "; ".join(problems) or "clean"


def main():
    make_undumpable()
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    sig_r, sig_w = os.pipe()
    os.set_blocking(sig_r, False)
    os.set_blocking(sig_w, False)
    signal.set_wakeup_fd(sig_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda *_: None)
    os.set_blocking(0, False)

    sel = selectors.DefaultSelector()
    sel.register(0, selectors.EVENT_READ, ("cmd", 0))
    sel.register(sig_r, selectors.EVENT_READ, ("sig", 0))
    inbuf = b""
    run = None
    emit({"ev": "ready"})

    while True:
        if run is None:
            timeout = 1.0  # keep reaping orphans even when idle
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
                    if not line.strip():
                        continue
                    run = handle(json.loads(line), run, sel)
            elif kind == "sig":
                try:
                    while os.read(sig_r, 512):
                        pass
                except BlockingIOError:
                    pass
            elif kind == "pipe" and run is not None:
                run.on_pipe(key.fd, stream)
            elif kind == "stdin" and run is not None:
                run.feed_stdin()
        statuses = reap_all()
        if run is not None:
            run.on_reaped(statuses)
            if run.exit_status is None and run.status is None and time.monotonic() >= run.deadline:
                run.terminate("timeout")
            elif not run.finished() and (run.exit_status is not None or run.status is not None):
                kill_all()  # a process forked during the last kill: keep killing until the pipes close
            if run.finished():
                run.close_stdin()
                emit(run.result())
                run = None


def handle(msg, run, sel):
    op = msg.get("op")
    if op == "run":
        if run is not None:
            emit({"ev": "done", "exitCode": 1, "status": "error", "durationMs": 0, "truncated": False,
                  "files": {}, "error": "a program is already running in this sandbox"})
            return run
        new = Run(msg, sel)
        try:
            new.start()
        except Exception as exc:  # noqa: BLE001 - a bad file path or similar: report, don't die
            emit({"ev": "done", "exitCode": 1, "status": "error", "durationMs": 0, "truncated": False,
                  "files": {}, "error": "could not start the program: %s" % exc})
            return None
        return new
    if op == "reset":
        if run is not None:
            run.terminate("killed")
            kill_and_reap()
            for fd in list(sel.get_map()):
                if sel.get_map()[fd].data[0] in ("pipe", "stdin"):
                    sel.unregister(fd)
                    os.close(fd)
            run = None
        ok, detail = reset()
        emit({"ev": "reset", "ok": ok, "detail": detail})
        return None
    emit({"ev": "error", "error": "unknown op %r" % op})
    return run


if __name__ == "__main__":
    main()
