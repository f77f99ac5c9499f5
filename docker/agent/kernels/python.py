"""isol8 session kernel for python: runs cells in one namespace so state persists between calls.

Cells arrive on fd 3 as JSON lines {"code", "stdin", "env", "cwd"}; after each, {"exit": n} goes to fd 4.
"""
import importlib
import io
import json
import os
import site
import sys
import traceback

namespace = {"__name__": "__main__", "__builtins__": __builtins__}
control_in = os.fdopen(3, "r")
control_out = os.fdopen(4, "w")
# Programs a cell starts (os.system, a fork) must not inherit the control pipes and answer for a
# later cell.
os.set_inheritable(3, False)
os.set_inheritable(4, False)


def see_new_packages():
    """Packages `pip install`ed by an earlier cell land in the user site, which did not exist when
    this interpreter started: add it, so the next import finds them without a restart."""
    user_site = site.getusersitepackages()
    if os.path.isdir(user_site) and user_site not in sys.path:
        site.addsitedir(user_site)
    importlib.invalidate_caches()


for line in control_in:
    cell = json.loads(line)
    see_new_packages()
    os.environ.update(cell.get("env") or {})
    if cell.get("cwd"):
        os.chdir(cell["cwd"])
    sys.stdin = io.TextIOWrapper(io.BytesIO((cell.get("stdin") or "").encode()))
    exit_code = 0
    try:
        exec(compile(cell["code"], "<cell>", "exec"), namespace)
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            exit_code = stop.code or 0
        else:
            print(stop.code, file=sys.stderr)
            exit_code = 1
    except BaseException as exc:  # noqa: BLE001 - the cell's error is the user's output
        # Leave out this file's frame: the traceback starts in the cell.
        traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)
        exit_code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    control_out.write(json.dumps({"exit": exit_code}) + "\n")
    control_out.flush()
