"""isol8 session kernel for python: runs cells in one namespace so state persists between calls.

Cells arrive on fd 3 as JSON lines {"code", "stdin", "env", "cwd"}; after each, {"exit": n} goes to fd 4.
Results go to fd 4 too, as {"display": bundle} lines (see /opt/isol8/agent/display/isol8_display.py): the
value of a cell's last expression (unless the cell ends in `;`), `display(obj)`, and matplotlib
figures (`plt.show()`, or still open when the cell ends).
"""
import ast
import importlib
import io
import json
import os
import site
import sys
import traceback

control_in = os.fdopen(3, "r")
control_out = os.fdopen(4, "w")
# Programs a cell starts (os.system, a fork) must not inherit the control pipes and answer for a
# later cell.
os.set_inheritable(3, False)
os.set_inheritable(4, False)
os.environ["ISOL8_DISPLAY_FD"] = "4"
os.environ["ISOL8_DISPLAY_ACK_FD"] = "3"  # between cells, the agent writes only acks here
os.environ.setdefault("MPLBACKEND", "module://isol8_mpl")
sys.path.append(os.environ.get("ISOL8_DISPLAY_DIR", "/opt/isol8/agent/display"))
import isol8_display  # noqa: E402 - needs the path above

namespace = {"__name__": "__main__", "__builtins__": __builtins__, "display": isol8_display.display}


def run_cell(source):
    """Runs the cell; when its last statement is an expression, returns (True, its value)."""
    tree = ast.parse(source, "<cell>", "exec")
    last = tree.body[-1] if tree.body else None
    if not isinstance(last, ast.Expr):
        exec(compile(tree, "<cell>", "exec"), namespace)
        return False, None
    tree.body.pop()
    exec(compile(tree, "<cell>", "exec"), namespace)
    value = eval(compile(ast.Expression(last.value), "<cell>", "eval"), namespace)
    # A trailing `;` hides the value, as in Jupyter.
    return not source.rstrip().endswith(";"), value


def see_new_packages():
    """Packages `pip install`ed by an earlier cell land in the user site, which did not exist when
    this interpreter started: add it, so the next import finds them without a restart."""
    user_site = site.getusersitepackages()
    if os.path.isdir(user_site) and user_site not in sys.path:
        site.addsitedir(user_site)
    importlib.invalidate_caches()


for line in control_in:
    if not line.strip():
        continue  # an ack for a result a cell's own code wrote to fd 4 (see isol8_display)
    cell = json.loads(line)
    see_new_packages()
    os.environ.update(cell.get("env") or {})
    if cell.get("cwd"):
        os.chdir(cell["cwd"])
    sys.stdin = io.TextIOWrapper(io.BytesIO((cell.get("stdin") or "").encode()))
    exit_code = 0
    try:
        shown, value = run_cell(cell["code"])
        if shown and value is not None:
            namespace["_"] = value
            isol8_display.display(value)
        isol8_display.show_open_figures()
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            exit_code = stop.code or 0
        else:
            print(stop.code, file=sys.stderr)
            exit_code = 1
    except BaseException as exc:  # noqa: BLE001 - the cell's error is the user's output
        # Leave out this file's frames: the traceback starts in the cell (none for a syntax error).
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != "<cell>":
            tb = tb.tb_next
        traceback.print_exception(type(exc), exc, tb)
        exit_code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    control_out.write(json.dumps({"exit": exit_code}) + "\n")
    control_out.flush()
