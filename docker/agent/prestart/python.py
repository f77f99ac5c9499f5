"""isol8 pre-started python: the loader of an interpreter the agent started before its run.

site executes it from 00-isol8-prestart.pth (first of the site-packages .pth files) while the
interpreter starts, when ISOL8_PRESTART_FD names the handoff pipe (compiled when the python image is
built: python.<cache tag>.code, loaded with marshal, which every start has loaded already). It waits there for the run: the
working directory and the environment, NUL-separated (`cwd\\0KEY=value\\0...`), until the agent
closes the pipe. It applies them and returns; the interpreter then finishes starting and runs the
program file of its command line as `python3 file.py` always does (the agent wrote the program
there before the handoff). So the program is __main__ with its own sys.argv, __file__,
sys.path[0], tracebacks, exit codes and signals, and this file leaves nothing behind: it imports
nothing (os is loaded at this point of every start) and its names live in a dict of its own.

A missing pipe (the variable set by a program for its own python) changes nothing.
"""
chunks = []
try:
    fd = int(os.environ["ISOL8_PRESTART_FD"])  # noqa: F821 - `os` is given by the .pth line
    while True:
        try:
            chunk = os.read(fd, 65536)  # noqa: F821
        except InterruptedError:
            continue
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)  # noqa: F821
except (OSError, ValueError):
    chunks = None
if chunks:
    fields = b"".join(chunks).split(b"\0")
    os.chdir(fields[0])  # noqa: F821
    os.environ.clear()  # noqa: F821
    for item in fields[1:]:
        key, _, value = item.partition(b"=")
        os.environ[os.fsdecode(key)] = os.fsdecode(value)  # noqa: F821
