"""isol8 egress proxy for `filtered` networking: the only thing a filtered sandbox can reach.

It runs in its own container, on the sandbox's internal network and on a network with a way out. A
request passes when its hostname fully matches an allow pattern and no deny pattern (deny wins; no
allow patterns means nothing passes), and when every address the name resolves to is public, unless
an allow pattern names that exact address. Plain HTTP is forwarded; HTTPS goes through CONNECT (the
hostname is checked, the bytes are not inspected). Each request is logged as one JSON line on stdout.

Config (env ISOL8_PROXY_RULES): {"allow": [regex, ...], "deny": [regex, ...]}
"""
import ipaddress
import json
import os
import re
import select
import socket
import socketserver
import sys
import threading
import time
import urllib.parse

RULES = json.loads(os.environ.get("ISOL8_PROXY_RULES", "{}"))
ALLOW = [re.compile(p, re.IGNORECASE) for p in RULES.get("allow", [])]
DENY = [re.compile(p, re.IGNORECASE) for p in RULES.get("deny", [])]
LOG_LOCK = threading.Lock()


def named_address(pattern):
    """The address an allow pattern names exactly (`10.0.0.5`, `^10\\.0\\.0\\.5$`), else None: only
    such a rule opens a private, loopback or link-local address; `.*` does not."""
    literal = pattern.removeprefix("^").removesuffix("$").replace("\\.", ".")
    try:
        return str(ipaddress.ip_address(literal))
    except ValueError:
        return None


NAMED_ADDRESSES = {a for a in (named_address(p) for p in RULES.get("allow", [])) if a}
# Never reachable, whatever the rules: the Docker host's addresses on its bridges (engine-provided).
NEVER = set(RULES.get("never", []))
# ...nor any address of the Docker host, on any interface: engine-provided, whatever the allow rules
# name.
NEVER_NETS = [ipaddress.ip_network(n, strict=False) for n in RULES.get("neverNets", [])]
# Hostnames as DNS has them (ASCII labels) or dotted-quad IPv4: anything else could be read one way by
# the rules and another by the resolver (IDNA folding, numeric IPv4 forms).
HOSTNAME = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")
DOTTED_QUAD = re.compile(r"(25[0-5]|2[0-4][0-9]|1?[0-9]{1,2})(\.(25[0-5]|2[0-4][0-9]|1?[0-9]{1,2})){3}")


# At most this many requests are logged per run: the log is returned whole with the result.
MAX_LOGGED = 1000
LOGGED = [0]


def log(entry):
    with LOG_LOCK:
        if LOGGED[0] >= MAX_LOGGED:
            return
        LOGGED[0] += 1
        sys.stdout.write(json.dumps(entry) + "\n")
        sys.stdout.flush()


def printable(text, limit=256):
    """`text` cut to `limit` characters, with everything but printable ASCII escaped: a hostname
    from the program may hold terminal control sequences meant for whoever reads the log."""
    text = text[:limit]
    return "".join(c if " " <= c <= "~" and c != "\\" else "\\x%02x" % (ord(c) & 0xFF) for c in text)


def host_allowed(host):
    if not (HOSTNAME.fullmatch(host) or DOTTED_QUAD.fullmatch(host)):
        return False, "not a plain hostname or IPv4 address"
    if any(p.fullmatch(host) for p in DENY):
        return False, "denied by rule"
    if not any(p.fullmatch(host) for p in ALLOW):
        return False, "not in the allow list"
    return True, None


def resolve(host, port):
    """The addresses to connect to, or a reason to refuse: every address must be public unless an
    allow pattern names it exactly."""
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)
    except OSError as exc:
        return None, "cannot resolve: %s" % exc
    addresses = sorted({info[4][0] for info in infos})
    for address in addresses:
        ip = ipaddress.ip_address(address)
        if address in NEVER or any(ip in net for net in NEVER_NETS) or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified:
            return None, "%s is never reachable from a sandbox" % address
        if any(p.fullmatch(address) for p in DENY):
            return None, "%s is denied by rule" % address
        if not ip.is_global and address not in NAMED_ADDRESSES:
            return None, "%s is not a public address" % address
    return addresses, None


def connect(addresses, port):
    last = None
    for address in addresses:
        try:
            return socket.create_connection((address, port), timeout=10)
        except OSError as exc:
            last = exc
    raise last or OSError("no address")


def pipe(a, b):
    sockets = [a, b]
    while True:
        readable, _, _ = select.select(sockets, [], [], 300)
        if not readable:
            return
        for s in readable:
            data = s.recv(65536)
            if not data:
                return
            (b if s is a else a).sendall(data)


class Handler(socketserver.StreamRequestHandler):
    # Unbuffered: whatever follows the headers (a body, TLS bytes) must stay in the socket for pipe().
    rbufsize = 0

    def refuse(self, code, reason):
        body = ("isol8 filtered network: %s\n" % reason).encode()
        self.wfile.write(b"HTTP/1.1 %d Forbidden\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                         % (code, len(body), body))

    def handle(self):
        started = time.monotonic()
        line = self.rfile.readline(65537).decode("latin-1").strip()
        parts = line.split()
        if len(parts) != 3:
            return
        method, target, version = parts
        headers = []
        while True:
            header = self.rfile.readline(65537)
            if header in (b"\r\n", b"\n", b""):
                break
            headers.append(header)
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            path = None
        else:
            url = urllib.parse.urlsplit(target)
            host, port, path = url.hostname or "", str(url.port or 80), url.path or "/"
        host = host.lower().removesuffix(".")
        entry = {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "method": printable(method, 16),
                 "host": printable(host), "path": None if path is None else printable(path, 1024)}
        allowed, reason = host_allowed(host)
        addresses = None
        if allowed:
            addresses, reason = resolve(host, int(port or 0))
            allowed = addresses is not None
        # Logged before the answer: a program that ends on it must not end its run before the log
        # line is written (the run's network log is read as soon as the run ends).
        if not allowed:
            entry.update(action="BLOCK", reason=reason, durationMs=int((time.monotonic() - started) * 1000))
            log(entry)
            self.refuse(403, reason)
            return
        try:
            upstream = connect(addresses, int(port))
        except OSError as exc:
            entry.update(action="ALLOW", reason="unreachable", durationMs=int((time.monotonic() - started) * 1000))
            log(entry)
            self.refuse(502, "cannot connect: %s" % exc)
            return
        # Logged when decided, so a long-lived tunnel shows up at once.
        entry.update(action="ALLOW", durationMs=int((time.monotonic() - started) * 1000))
        log(entry)
        with upstream:
            if method == "CONNECT":
                self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                # One request per connection, to the checked host: the Host header is rewritten (a
                # CDN picks the site by it) and the connection closes after the answer.
                hop = (b"proxy-", b"host:", b"connection:", b"keep-alive:")
                kept = b"".join(h for h in headers if not h.lower().startswith(hop))
                request = "%s %s %s\r\nHost: %s\r\nConnection: close\r\n" % (
                    method, (path or "/") + ("?" + url.query if url.query else ""), version,
                    host if port == "80" else "%s:%s" % (host, port))
                upstream.sendall(request.encode("latin-1") + kept + b"\r\n")
            try:
                pipe(self.connection, upstream)
            except OSError:
                pass


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def listen_address():
    """This proxy's address on its run's network (the subnet the engine names): the only place it
    listens, so no other run's sandbox or proxy, which reach it only over Docker's bridge, can use
    it. The kernel's route to the subnet picks the address; no packet is sent."""
    subnet = RULES.get("listenSubnet")
    if not subnet:
        return "0.0.0.0"
    network = ipaddress.ip_network(subnet, strict=False)
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect((str(network.broadcast_address - 1), 9))
        return probe.getsockname()[0]
    finally:
        probe.close()


if __name__ == "__main__":
    server = Server((listen_address(), 3128), Handler)
    log({"ready": True})  # only once it listens: the sandbox may connect right away
    server.serve_forever()
