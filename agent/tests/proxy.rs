//! The filtered-mode proxy (`isol8-agent proxy`) as a real process on real sockets: what it
//! refuses and logs, and what it forwards to a server of the test's own.
//!
//! The proxy never connects to loopback, so each test gives this host an address of its own: one
//! end of a veth pair with a /29 from a documentation range (203.0.113.0/24; the end-to-end suite
//! uses 198.51.100.0/24), deleted when the test ends. The proxy listens there (its
//! `listenSubnet`), and the test's server too. Traffic goes nowhere else. Needs root.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(30);

/// This host's address for one test: a veth pair (and a lock, so the same test run by another
/// checkout at the same time waits instead of sharing the address), removed on drop.
struct Lab {
    link: String,
    address: Ipv4Addr,
    subnet: String,
    _lock: File,
}

impl Lab {
    /// Lab `n` (1 to 30) has 203.0.113.8n/29; each test takes its own.
    fn new(n: u8) -> Lab {
        assert!((1..=30).contains(&n));
        let lock = File::create(format!("/tmp/isol8-agent-proxy-test-{n}.lock")).unwrap();
        lock.lock().unwrap();
        let link = format!("isol8px{n}");
        let address = Ipv4Addr::new(203, 0, 113, 8 * n + 1);
        // A link left by a test of this number that crashed: ours, since we hold its lock.
        let _ = Command::new("ip").args(["link", "del", &link]).output();
        let peer = format!("{link}p");
        let cidr = format!("{address}/29");
        for args in [
            vec!["link", "add", &link, "type", "veth", "peer", "name", &peer],
            vec!["addr", "add", &cidr, "dev", &link],
            vec!["link", "set", &link, "up"],
            vec!["link", "set", &peer, "up"],
        ] {
            let out = Command::new("ip").args(&args).output().unwrap();
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Lab {
            link,
            address,
            subnet: format!("203.0.113.{}/29", 8 * n),
            _lock: lock,
        }
    }
}

impl Lab {
    /// Rules that allow exactly the lab's own address (a named address opens a non-public one).
    fn allow_only_itself(&self) -> Value {
        json!({"allow": [self.address.to_string().replace('.', "\\.")]})
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.link])
            .output();
    }
}

/// A running proxy with its stdout (the request log) read line by line.
struct Proxy {
    child: Child,
    address: SocketAddr,
    lines: mpsc::Receiver<String>,
}

impl Proxy {
    /// Starts the proxy with `rules` (plus the lab's `listenSubnet`) and waits for its ready line.
    fn start(lab: &Lab, mut rules: Value) -> Proxy {
        rules["listenSubnet"] = json!(lab.subnet);
        let mut child = Command::new(env!("CARGO_BIN_EXE_isol8-agent"))
            .arg("proxy")
            .env("ISOL8_PROXY_RULES", rules.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let ready = lines
            .recv_timeout(TIMEOUT)
            .expect("the proxy printed nothing");
        assert_eq!(
            serde_json::from_str::<Value>(&ready).unwrap(),
            json!({"ready": true})
        );
        Proxy {
            child,
            address: SocketAddr::from((lab.address, 3128)),
            lines,
        }
    }

    /// Sends `request` as one write, reads the answer until the proxy ends the connection.
    fn exchange(&self, request: &[u8]) -> Vec<u8> {
        let mut stream = self.connect();
        stream.write_all(request).unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).unwrap();
        answer
    }

    fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect_timeout(&self.address, TIMEOUT).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(TIMEOUT)).unwrap();
        stream
    }

    /// Kills the proxy at once and returns every request line it had written: what it logged
    /// before this moment, and nothing it might have logged later.
    fn kill_and_read_log(mut self) -> Vec<Value> {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let mut entries = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(TIMEOUT) {
            entries.push(serde_json::from_str(&line).unwrap());
        }
        entries
    }

    /// The next log line, waiting for it.
    fn next_entry(&self) -> Value {
        let line = self.lines.recv_timeout(TIMEOUT).expect("no log line");
        serde_json::from_str(&line).unwrap()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP server of the test's own on the lab's address. Each connection: it reads one request
/// (its head and the body its headers declare), answers `body` and ends its sending side, then
/// reads on until the proxy closes. What it received on each connection, whole, is sent back.
struct Upstream {
    port: u16,
    received: mpsc::Receiver<Vec<u8>>,
}

impl Upstream {
    fn start(lab: &Lab, body: Vec<u8>) -> Upstream {
        let listener = TcpListener::bind((lab.address, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, received) = mpsc::channel();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                stream.set_read_timeout(Some(TIMEOUT)).unwrap();
                let mut got = Vec::new();
                if read_request(&mut stream, &mut got).is_ok() {
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(head.as_bytes());
                    let _ = stream.write_all(&body);
                    let _ = stream.shutdown(Shutdown::Write);
                    let _ = stream.read_to_end(&mut got);
                }
                if tx.send(got).is_err() {
                    return;
                }
            }
        });
        Upstream { port, received }
    }

    /// What the server received on its next connection.
    fn received(&self) -> Vec<u8> {
        self.received
            .recv_timeout(TIMEOUT)
            .expect("the server got no connection")
    }
}

/// Reads one request into `got`: the head, then a Content-Length or chunked body.
fn read_request(stream: &mut TcpStream, got: &mut Vec<u8>) -> std::io::Result<()> {
    let mut byte = [0u8; 1];
    let mut read_byte = |got: &mut Vec<u8>| -> std::io::Result<u8> {
        stream.read_exact(&mut byte)?;
        got.push(byte[0]);
        Ok(byte[0])
    };
    while !got.ends_with(b"\r\n\r\n") {
        read_byte(got)?;
    }
    let head = String::from_utf8_lossy(got).to_ascii_lowercase();
    if let Some(line) = head.lines().find(|l| l.starts_with("content-length:")) {
        let length: usize = line["content-length:".len()..].trim().parse().unwrap();
        for _ in 0..length {
            read_byte(got)?;
        }
    } else if head.contains("transfer-encoding: chunked") {
        loop {
            let start = got.len();
            while got.len() < start + 2 || !got.ends_with(b"\r\n") {
                read_byte(got)?;
            }
            let line = String::from_utf8_lossy(&got[start..got.len() - 2]).to_string();
            let size = usize::from_str_radix(line.split(';').next().unwrap(), 16).unwrap();
            if size == 0 {
                break;
            }
            for _ in 0..size + 2 {
                read_byte(got)?;
            }
        }
        // Trailers, to the blank line.
        loop {
            let start = got.len();
            while got.len() < start + 2 || !got.ends_with(b"\r\n") {
                read_byte(got)?;
            }
            if got.len() - start == 2 {
                break;
            }
        }
    }
    Ok(())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts a refusal's answer: `code`, and proxy.py's one-line body naming `reason`.
fn assert_refused(answer: &[u8], code: u16, reason: &str) {
    let answer = text(answer);
    assert!(answer.starts_with(&format!("HTTP/1.1 {code} ")), "{answer}");
    assert!(answer.contains("\r\nConnection: close\r\n"), "{answer}");
    assert!(
        answer.ends_with(&format!("\r\n\r\nisol8 filtered network: {reason}\n")),
        "{answer}"
    );
}

#[test]
fn refusals_are_logged_before_the_answer_with_the_reason() {
    let lab = Lab::new(1);
    let me = lab.address.to_string();
    let me_exact = me.replace('.', "\\.");
    let in_lab = format!("{}/29", lab.address);
    // (rules, request, code, reason, logged method, host, path)
    let mut cases: Vec<(Value, String, u16, String, &str, String, Value)> = vec![
        (
            json!({"allow": ["example\\.com"]}),
            "CONNECT other.example:443 HTTP/1.1\r\n\r\n".into(),
            403,
            "not in the allow list".into(),
            "CONNECT",
            "other.example".into(),
            Value::Null,
        ),
        (
            json!({}),
            "GET http://example.com/ HTTP/1.1\r\n\r\n".into(),
            403,
            "not in the allow list".into(),
            "GET",
            "example.com".into(),
            json!("/"),
        ),
        (
            json!({"allow": [".*"], "deny": ["bad\\.example"]}),
            "GET http://BAD.example./x/y?q=1 HTTP/1.1\r\nHost: good.example\r\n\r\n".into(),
            403,
            "denied by rule".into(),
            "GET",
            "bad.example".into(),
            json!("/x/y"),
        ),
        (
            json!({"allow": [".*"]}),
            "CONNECT evil.com@x:443 HTTP/1.1\r\n\r\n".into(),
            403,
            "not a plain hostname or IPv4 address".into(),
            "CONNECT",
            "evil.com@x".into(),
            Value::Null,
        ),
        (
            json!({"allow": [".*"]}),
            // Lower-cased as proxy.py did, as latin-1 (0xc3 is a capital there), then escaped.
            "CONNECT ex\u{e4}mple.com:443 HTTP/1.1\r\n\r\n".into(),
            403,
            "not a plain hostname or IPv4 address".into(),
            "CONNECT",
            "ex\\xe3\\xa4mple.com".into(),
            Value::Null,
        ),
        (
            json!({"allow": [".*"]}),
            "GET http://2130706433/ HTTP/1.1\r\n\r\n".into(),
            403,
            "not a plain hostname or IPv4 address".into(),
            "GET",
            "2130706433".into(),
            json!("/"),
        ),
        (
            json!({"allow": [".*"]}),
            "CONNECT 0x7f.0.0.1:443 HTTP/1.1\r\n\r\n".into(),
            403,
            "not a plain hostname or IPv4 address".into(),
            "CONNECT",
            "0x7f.0.0.1".into(),
            Value::Null,
        ),
        (
            json!({"allow": [".*"]}),
            "CONNECT 127.0.0.1:22 HTTP/1.1\r\n\r\n".into(),
            403,
            "127.0.0.1 is never reachable from a sandbox".into(),
            "CONNECT",
            "127.0.0.1".into(),
            Value::Null,
        ),
        (
            json!({"allow": ["127\\.0\\.0\\.1"]}),
            "GET http://127.0.0.1:8080/ HTTP/1.1\r\n\r\n".into(),
            403,
            "127.0.0.1 is never reachable from a sandbox".into(),
            "GET",
            "127.0.0.1".into(),
            json!("/"),
        ),
        (
            // A name: resolved in-process (localhost never leaves the resolver).
            json!({"allow": [".*"]}),
            "GET http://localhost/ HTTP/1.1\r\n\r\n".into(),
            403,
            "127.0.0.1 is never reachable from a sandbox".into(),
            "GET",
            "localhost".into(),
            json!("/"),
        ),
        (
            json!({"allow": [".*", "169\\.254\\.169\\.254"]}),
            "GET http://169.254.169.254/latest/meta-data/ HTTP/1.1\r\n\r\n".into(),
            403,
            "169.254.169.254 is never reachable from a sandbox".into(),
            "GET",
            "169.254.169.254".into(),
            json!("/latest/meta-data/"),
        ),
        (
            json!({"allow": [me_exact], "never": [me]}),
            format!("CONNECT {me}:443 HTTP/1.1\r\n\r\n"),
            403,
            format!("{me} is never reachable from a sandbox"),
            "CONNECT",
            me.clone(),
            Value::Null,
        ),
        (
            json!({"allow": [me_exact], "neverNets": [in_lab]}),
            format!("CONNECT {me}:443 HTTP/1.1\r\n\r\n"),
            403,
            format!("{me} is never reachable from a sandbox"),
            "CONNECT",
            me.clone(),
            Value::Null,
        ),
        (
            // `.*` does not open a private address; only naming it does.
            json!({"allow": [".*"]}),
            format!("CONNECT {me}:443 HTTP/1.1\r\n\r\n"),
            403,
            format!("{me} is not a public address"),
            "CONNECT",
            me.clone(),
            Value::Null,
        ),
        (
            json!({"allow": [me_exact]}),
            format!(
                "POST http://{me}/ HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
            ),
            400,
            "malformed request: both Content-Length and Transfer-Encoding".into(),
            "POST",
            me.clone(),
            json!("/"),
        ),
        (
            json!({"allow": [me_exact]}),
            format!("GET http://{me}:99999/ HTTP/1.1\r\n\r\n"),
            400,
            "malformed request: the port \"99999\" is not a number from 0 to 65535".into(),
            "GET",
            me.clone(),
            json!("/"),
        ),
    ];
    // A name under .invalid is answered by the resolver itself (RFC 6761), without a query, unless
    // a search domain would make it ask a server for `nothing.invalid.<domain>` too.
    let resolv_conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    if resolv_conf
        .lines()
        .any(|l| l.starts_with("search") || l.starts_with("domain"))
    {
        eprintln!("skipping the unresolvable-name case: /etc/resolv.conf has search domains");
    } else {
        cases.push((
            json!({"allow": [".*"]}),
            "GET http://nothing.invalid/ HTTP/1.1\r\n\r\n".into(),
            403,
            "cannot resolve: no such name".into(),
            "GET",
            "nothing.invalid".into(),
            json!("/"),
        ));
    }
    for (rules, request, code, reason, method, host, path) in cases {
        let proxy = Proxy::start(&lab, rules.clone());
        let answer = proxy.exchange(request.as_bytes());
        assert_refused(&answer, code, &reason);
        let log = proxy.kill_and_read_log();
        assert_eq!(log.len(), 1, "{rules} {request:?}: {log:?}");
        let entry = &log[0];
        assert_eq!(entry["action"], "BLOCK", "{entry}");
        assert_eq!(entry["reason"], reason.as_str(), "{entry}");
        assert_eq!(entry["method"], method, "{entry}");
        assert_eq!(entry["host"], host.as_str(), "{entry}");
        assert_eq!(entry["path"], path, "{entry}");
        assert!(entry["durationMs"].is_u64(), "{entry}");
        let stamp = entry["timestamp"].as_str().unwrap();
        assert!(stamp.len() == 20 && stamp.ends_with('Z'), "{stamp}");
    }
}

#[test]
fn an_unreachable_allowed_server_is_a_502_logged_as_allowed() {
    let lab = Lab::new(2);
    // A port nothing listens on: bound, then closed.
    let port = TcpListener::bind((lab.address, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let me = lab.address.to_string();
    let proxy = Proxy::start(&lab, lab.allow_only_itself());
    let answer = proxy.exchange(format!("CONNECT {me}:{port} HTTP/1.1\r\n\r\n").as_bytes());
    let answer = text(&answer);
    assert!(answer.starts_with("HTTP/1.1 502 "), "{answer}");
    assert!(
        answer.contains("isol8 filtered network: cannot connect: "),
        "{answer}"
    );
    let log = proxy.kill_and_read_log();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["action"], "ALLOW");
    assert_eq!(log[0]["reason"], "unreachable");
}

#[test]
fn malformed_and_oversized_heads_are_refused_unlogged() {
    let lab = Lab::new(3);
    let proxy = Proxy::start(&lab, json!({"allow": [".*"]}));
    for request in [
        &b"hello\r\n\r\n"[..],
        b"GET http://x/\r\n\r\n",
        b"GET http://x/ HTTP/1.1\r\nBad header\r\n\r\n",
        b"GET http://x/ HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
    ] {
        let answer = text(&proxy.exchange(request));
        assert!(answer.starts_with("HTTP/1.1 400 "), "{request:?}: {answer}");
        assert!(answer.contains("malformed request: "), "{answer}");
    }
    // A head that never ends: answered once it passes 64 KiB, while the client still sends.
    let mut stream = proxy.connect();
    let started = Instant::now();
    stream
        .write_all(b"GET http://x/ HTTP/1.1\r\nX-Big: ")
        .unwrap();
    let filler = vec![b'a'; 80 * 1024];
    let _ = stream.write_all(&filler);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = text(&answer);
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    assert!(answer.contains("larger than 65536 bytes"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let log = proxy.kill_and_read_log();
    assert!(log.is_empty(), "{log:?}");
}

#[test]
fn a_plain_get_goes_to_the_checked_host_without_hop_by_hop_headers() {
    let lab = Lab::new(4);
    let me = lab.address.to_string();
    let upstream = Upstream::start(&lab, b"hello from upstream".to_vec());
    let proxy = Proxy::start(&lab, lab.allow_only_itself());
    let request = format!(
        "GET http://user:pw@{me}:{}/some/path?q=1#frag HTTP/1.1\r\nHost: other.example\r\n\
         Proxy-Authorization: Basic Zm9vOmJhcg==\r\nProxy-Connection: keep-alive\r\n\
         Connection: keep-alive\r\nKeep-Alive: 300\r\nAccept: */*\r\nX-Custom: yes\r\n\r\n",
        upstream.port
    );
    let answer = text(&proxy.exchange(request.as_bytes()));
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nhello from upstream"), "{answer}");
    assert_eq!(
        text(&upstream.received()),
        format!(
            "GET /some/path?q=1 HTTP/1.1\r\nHost: {me}:{}\r\nConnection: close\r\n\
             Accept: */*\r\nX-Custom: yes\r\n\r\n",
            upstream.port
        )
    );
    let entry = proxy.next_entry();
    assert_eq!(entry["action"], "ALLOW");
    assert_eq!(entry["method"], "GET");
    assert_eq!(entry["host"], me.as_str());
    assert_eq!(entry["path"], "/some/path");
    assert!(entry.get("reason").is_none(), "{entry}");
}

#[test]
fn a_pipelined_second_request_never_reaches_the_server() {
    let lab = Lab::new(5);
    let me = lab.address.to_string();
    let upstream = Upstream::start(&lab, b"first answer".to_vec());
    let proxy = Proxy::start(&lab, lab.allow_only_itself());
    let port = upstream.port;
    let first = format!("GET http://{me}:{port}/first HTTP/1.1\r\nHost: {me}\r\n\r\n");
    // Both in one write: the second (another Host, origin-form as a keep-alive client sends it)
    // is already in the proxy's buffer when the first is forwarded.
    let second = "GET /second HTTP/1.1\r\nHost: other.example\r\n\r\n";
    let answer = text(&proxy.exchange(format!("{first}{second}").as_bytes()));
    assert!(answer.ends_with("\r\n\r\nfirst answer"), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    let received = text(&upstream.received());
    assert_eq!(
        received,
        format!("GET /first HTTP/1.1\r\nHost: {me}:{port}\r\nConnection: close\r\n\r\n")
    );
    // The same after a body: the body goes, the request after it does not.
    let post = format!(
        "POST http://{me}:{port}/form HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: 14\r\n\r\nname=value&x=1{second}"
    );
    let answer = text(&proxy.exchange(post.as_bytes()));
    assert!(answer.ends_with("\r\n\r\nfirst answer"), "{answer}");
    assert_eq!(
        text(&upstream.received()),
        format!(
            "POST /form HTTP/1.1\r\nHost: {me}:{port}\r\nConnection: close\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 14\r\n\r\nname=value&x=1"
        )
    );
    // Two requests, two lines: the dropped one was never taken as a request.
    assert_eq!(proxy.next_entry()["path"], "/first");
    assert_eq!(proxy.next_entry()["path"], "/form");
    let log = proxy.kill_and_read_log();
    assert!(log.is_empty(), "{log:?}");
}

#[test]
fn a_chunked_body_is_forwarded_to_its_last_chunk_and_trailers_and_no_further() {
    let lab = Lab::new(6);
    let me = lab.address.to_string();
    let upstream = Upstream::start(&lab, b"got it".to_vec());
    let proxy = Proxy::start(&lab, lab.allow_only_itself());
    let port = upstream.port;
    let body =
        "4\r\nWiki\r\n5;ext=1\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-Trailer: t\r\n\r\n";
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: other.example\r\n\r\n";
    let request = format!(
        "POST http://{me}:{port}/upload HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{body}{smuggled}"
    );
    let mut stream = proxy.connect();
    // The head and the first chunk, then the rest a moment later: the body is streamed.
    let split = request.find("5;ext").unwrap();
    stream.write_all(&request.as_bytes()[..split]).unwrap();
    thread::sleep(Duration::from_millis(200));
    stream.write_all(&request.as_bytes()[split..]).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    assert!(
        text(&answer).ends_with("\r\n\r\ngot it"),
        "{}",
        text(&answer)
    );
    drop(stream);
    assert_eq!(
        text(&upstream.received()),
        format!(
            "POST /upload HTTP/1.1\r\nHost: {me}:{port}\r\nConnection: close\r\n\
             Transfer-Encoding: chunked\r\n\r\n{body}"
        )
    );
    assert_eq!(proxy.next_entry()["method"], "POST");
}

#[test]
fn a_connect_tunnel_carries_bytes_both_ways() {
    let lab = Lab::new(7);
    let me = lab.address.to_string();
    let listener = TcpListener::bind((lab.address, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    // An echo server that first says what it got before the client's first read.
    let server = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut early = [0u8; 5];
        stream.read_exact(&mut early).unwrap();
        stream.write_all(&early.to_ascii_uppercase()).unwrap();
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).unwrap();
        stream.write_all(&rest).unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        rest.len()
    });
    let proxy = Proxy::start(&lab, lab.allow_only_itself());
    let mut stream = proxy.connect();
    // Bytes sent along with the head go through too.
    stream
        .write_all(
            format!("CONNECT {me}:{port} HTTP/1.1\r\nHost: {me}:{port}\r\n\r\nearly").as_bytes(),
        )
        .unwrap();
    let established = b"HTTP/1.1 200 Connection established\r\n\r\n";
    let mut got = vec![0u8; established.len() + 5];
    stream.read_exact(&mut got).unwrap();
    assert_eq!(&got[..established.len()], established);
    assert_eq!(&got[established.len()..], b"EARLY");
    let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    stream.write_all(&payload).unwrap();
    // Our side ends; the server sees the end, echoes, ends its side.
    stream.shutdown(Shutdown::Write).unwrap();
    let mut echoed = Vec::new();
    stream.read_to_end(&mut echoed).unwrap();
    assert_eq!(echoed.len(), payload.len());
    assert!(echoed == payload);
    assert_eq!(server.join().unwrap(), payload.len());
    let entry = proxy.next_entry();
    assert_eq!(entry["method"], "CONNECT");
    assert_eq!(entry["action"], "ALLOW");
    assert_eq!(entry["path"], Value::Null);
}

#[test]
fn a_large_download_arrives_intact() {
    const SIZE: usize = 50 * 1024 * 1024;
    let lab = Lab::new(8);
    let me = lab.address.to_string();
    let body: Vec<u8> = (0..SIZE)
        .map(|i| (i % 253) as u8 ^ (i >> 16) as u8)
        .collect();
    let upstream = Upstream::start(&lab, body.clone());
    let proxy = Proxy::start(&lab, lab.allow_only_itself());
    let mut stream = proxy.connect();
    stream
        .write_all(format!("GET http://{me}:{}/big HTTP/1.1\r\n\r\n", upstream.port).as_bytes())
        .unwrap();
    let mut answer = Vec::with_capacity(SIZE + 1024);
    stream.read_to_end(&mut answer).unwrap();
    drop(stream);
    let start = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an answer head")
        + 4;
    assert!(text(&answer[..start]).contains(&format!("Content-Length: {SIZE}")));
    assert_eq!(answer.len() - start, SIZE);
    assert!(answer[start..] == body[..], "the body differs");
    upstream.received();
}
