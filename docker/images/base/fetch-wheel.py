"""Fetch one pinned wheel from PyPI (simple JSON API), verify its sha256, extract one folder of it.

Used at image build time, inside the build container, so only the image's CA bundle is trusted.
usage: fetch-wheel.py NAME VERSION MEMBER_PREFIX DEST [EXECUTABLE ...]
"""
import hashlib
import io
import json
import os
import platform
import sys
import urllib.request
import zipfile

INDEX = os.environ.get("ISOL8_PYPI_SIMPLE", "https://pypi.org/simple")


def pick(files, name, version):
    arch = platform.machine()
    prefix = "%s-%s-" % (name.replace("-", "_"), version)
    for f in files:
        fn = f["filename"]
        if not (fn.startswith(prefix) and fn.endswith(".whl")):
            continue
        if ("manylinux" in fn and arch in fn) or fn.endswith("-none-any.whl"):
            return f
    raise SystemExit("no manylinux %s or pure-Python wheel for %s %s" % (arch, name, version))


def main():
    name, version, member_prefix, dest = sys.argv[1:5]
    executables = sys.argv[5:]
    req = urllib.request.Request(
        "%s/%s/" % (INDEX, name), headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        files = json.load(resp)["files"]
    wheel = pick(files, name, version)
    print("fetching %s" % wheel["filename"], flush=True)
    with urllib.request.urlopen(wheel["url"], timeout=300) as resp:
        blob = resp.read()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != wheel["hashes"]["sha256"]:
        raise SystemExit("sha256 mismatch for %s" % wheel["filename"])
    count = 0
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        for info in zf.infolist():
            if info.is_dir() or not info.filename.startswith(member_prefix):
                continue
            rel = info.filename[len(member_prefix):]
            target = os.path.join(dest, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                out.write(src.read())
            mode = (info.external_attr >> 16) & 0o777
            os.chmod(target, mode or 0o644)
            count += 1
    for exe in executables:
        os.chmod(os.path.join(dest, exe), 0o755)
    print("extracted %d files to %s" % (count, dest), flush=True)


if __name__ == "__main__":
    main()
