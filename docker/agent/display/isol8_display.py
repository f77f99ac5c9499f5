"""isol8's display channel for python: MIME bundles of objects, sent to the agent as they are made.

A bundle maps MIME types to data in the Jupyter display-data convention: text types as text, binary
ones as base64, application/json as JSON. Each goes to the agent as one line {"display": bundle} on
the file descriptor named by ISOL8_DISPLAY_FD (fd 3 of a one-shot program, the control pipe of a
session's kernel), after stdout and stderr are flushed; then the program waits for the agent's
"\n" on ISOL8_DISPLAY_ACK_FD, which it sends once it has forwarded all output written before the
result. So output after a result can never overtake it.
"""
import base64
import inspect
import json
import os
import pprint
import sys

# The rich representations IPython's formatters look for, in its order.
REPR_METHODS = (
    ("_repr_html_", "text/html"),
    ("_repr_markdown_", "text/markdown"),
    ("_repr_svg_", "image/svg+xml"),
    ("_repr_png_", "image/png"),
    ("_repr_jpeg_", "image/jpeg"),
    ("_repr_latex_", "text/latex"),
    ("_repr_json_", "application/json"),
)
BINARY = ("image/png", "image/jpeg")


def publish(bundle):
    """Send one bundle to the agent; silently nothing when there is no display channel."""
    fd = os.environ.get("ISOL8_DISPLAY_FD")
    if not fd or not bundle:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed stream has nothing to put first
            pass
    data = memoryview((json.dumps({"display": bundle}, separators=(",", ":")) + "\n").encode())
    try:
        while data:
            data = data[os.write(int(fd), data):]
        ack = os.environ.get("ISOL8_DISPLAY_ACK_FD")
        if ack:
            os.read(int(ack), 1)
    except (OSError, ValueError):
        pass  # the channel is gone (the agent stopped reading): results are dropped, not fatal


def _is_figure(obj):
    cls = type(obj)
    return cls.__name__ == "Figure" and cls.__module__.startswith("matplotlib")


def figure_bundle(fig):
    """A matplotlib figure as PNG, like Jupyter's inline backend."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return {
        "text/plain": repr(fig),
        "image/png": base64.b64encode(buffer.getvalue()).decode(),
    }


def bundle_of(obj):
    """The MIME bundle of `obj`: its rich representations (where it offers them) and text/plain."""
    if _is_figure(obj):
        return figure_bundle(obj)
    data = {}
    if not inspect.isclass(obj):  # a class's _repr_*_ are unbound functions, not its display
        method = getattr(obj, "_repr_mimebundle_", None)
        if callable(method):
            try:
                got = method()
                if isinstance(got, tuple):
                    got = got[0]
                if isinstance(got, dict):
                    data.update({k: v for k, v in got.items() if isinstance(k, str)})
            except Exception as exc:  # noqa: BLE001 - a broken repr is the object's problem
                print("display: %s._repr_mimebundle_ failed: %s" % (type(obj).__name__, exc), file=sys.stderr)
        for name, mime in REPR_METHODS:
            method = getattr(obj, name, None)
            if mime in data or not callable(method):
                continue
            try:
                value = method()
            except Exception as exc:  # noqa: BLE001
                print("display: %s.%s failed: %s" % (type(obj).__name__, name, exc), file=sys.stderr)
                continue
            if isinstance(value, tuple):
                value = value[0]
            if value is None:
                continue
            if mime in BINARY and isinstance(value, (bytes, bytearray)):
                value = base64.b64encode(bytes(value)).decode()
            elif isinstance(value, (bytes, bytearray)):
                value = bytes(value).decode("utf-8", "replace")
            data[mime] = value
    if "text/plain" not in data:
        if isinstance(obj, (dict, list, tuple, set, frozenset)):
            data["text/plain"] = pprint.pformat(obj)
        else:
            data["text/plain"] = repr(obj)
    return data


def display(*objs, raw=False):
    """Show each object as a result (IPython's display): its richest representations, in order.
    With raw=True each object is already a bundle (a dict of MIME type to data)."""
    for obj in objs:
        publish(dict(obj) if raw else bundle_of(obj))


def show_open_figures():
    """Send every open matplotlib figure and close them (Jupyter's inline backend does the same)."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is None:
        return
    for number in pyplot.get_fignums():
        try:
            publish(figure_bundle(pyplot.figure(number)))
        except Exception as exc:  # noqa: BLE001 - one broken figure must not hide the rest
            print("display: figure %s could not be rendered: %s" % (number, exc), file=sys.stderr)
    pyplot.close("all")
