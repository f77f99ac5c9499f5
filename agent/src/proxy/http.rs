//! HTTP/1 as the proxy reads it: the request head (bounded), the target as proxy.py's `urlsplit`
//! read it, the body's framing, and the strict copy of exactly one request body.

use std::time::Duration;

use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt,
};

use super::relay::Activity;

/// The largest request head read: a client cannot make the proxy buffer more.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// Header lines a head may hold.
const MAX_HEADERS: usize = 256;
/// A chunk-size line or a trailer line longer than this is refused.
const MAX_CHUNK_LINE: usize = 8 * 1024;
/// All trailer lines together.
const MAX_TRAILERS: usize = 64 * 1024;

/// Why no request head could be read.
#[derive(Debug)]
pub(crate) enum HeadError {
    /// The client went away (or sent nothing) before the head ended: no one to answer.
    Closed,
    /// Nothing arrived for the idle time.
    Idle,
    TooLarge,
    Malformed(String),
}

/// One request head, parsed.
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) method: String,
    pub(crate) target: Vec<u8>,
    /// The minor version of HTTP/1.x.
    pub(crate) minor: u8,
    pub(crate) headers: Vec<(String, Vec<u8>)>,
}

/// Reads one request head from `client` into `buf` and parses it. On success `buf` holds the
/// head's bytes (`..len`) and whatever the client sent after it.
pub(crate) async fn read_head<R: AsyncRead + Unpin>(
    client: &mut R,
    buf: &mut Vec<u8>,
    idle: Duration,
) -> Result<(Head, usize), HeadError> {
    let mut chunk = vec![0u8; 16 * 1024];
    // Where to look for the end of the head from: parsing only once a blank line may have come
    // keeps a client that sends a byte at a time from costing a parse per byte.
    let mut scanned = 0;
    loop {
        if let Some(end) = find_head_end(buf, scanned) {
            if end > MAX_HEAD {
                return Err(HeadError::TooLarge);
            }
            return parse_head(&buf[..end]).map(|head| (head, end));
        }
        if buf.len() >= MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
        scanned = buf.len().saturating_sub(3);
        let room = (MAX_HEAD + 1 - buf.len()).min(chunk.len());
        let n = match tokio::time::timeout(idle, client.read(&mut chunk[..room])).await {
            Err(_) => return Err(HeadError::Idle),
            Ok(Err(_)) | Ok(Ok(0)) => return Err(HeadError::Closed),
            Ok(Ok(n)) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The end of the head (after its blank line), looking from `from` on; a bare LF ends a line too.
fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    // Blank lines before the request line are skipped by the parser, not an end.
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    let from = from.max(start);
    let mut i = from;
    while i < buf.len() {
        if buf[i] == b'\n' {
            if buf.get(i + 1) == Some(&b'\n') {
                return Some(i + 2);
            }
            if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

fn parse_head(bytes: &[u8]) -> Result<Head, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(HeadError::Malformed(
                "the request head is incomplete".into(),
            ))
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HeadError::Malformed(format!(
                "more than {MAX_HEADERS} header fields"
            )))
        }
        Err(e) => return Err(HeadError::Malformed(format!("{e}"))),
    }
    Ok(Head {
        method: request.method.unwrap_or_default().to_string(),
        target: request.path.unwrap_or_default().as_bytes().to_vec(),
        minor: request.version.unwrap_or(1),
        headers: request
            .headers
            .iter()
            .map(|h| (h.name.to_string(), h.value.to_vec()))
            .collect(),
    })
}

/// A plain-HTTP target, split as Python's `urllib.parse.urlsplit` splits one.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Target {
    /// The hostname, lower-cased (empty when the target has none, e.g. `/path`).
    pub(crate) host: Vec<u8>,
    /// The port, or why it is not one; 80 when absent or 0 (`url.port or 80`).
    pub(crate) port: Result<u16, String>,
    /// The path, `/` when empty.
    pub(crate) path: Vec<u8>,
    pub(crate) query: Vec<u8>,
}

pub(crate) fn split_target(target: &[u8]) -> Target {
    let mut rest = target;
    // A scheme: a letter, then letters, digits, `+`, `-`, `.`, up to the first colon.
    if let Some(colon) = rest.iter().position(|&b| b == b':') {
        let scheme = &rest[..colon];
        if colon > 0
            && scheme[0].is_ascii_alphabetic()
            && scheme
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        {
            rest = &rest[colon + 1..];
        }
    }
    let mut netloc: &[u8] = b"";
    if let Some(after) = rest.strip_prefix(b"//") {
        let end = after
            .iter()
            .position(|b| b"/?#".contains(b))
            .unwrap_or(after.len());
        netloc = &after[..end];
        rest = &after[end..];
    }
    if let Some(hash) = rest.iter().position(|&b| b == b'#') {
        rest = &rest[..hash];
    }
    let (path, query) = match rest.iter().position(|&b| b == b'?') {
        Some(q) => (&rest[..q], &rest[q + 1..]),
        None => (rest, &b""[..]),
    };
    let hostinfo = match netloc.iter().rposition(|&b| b == b'@') {
        Some(at) => &netloc[at + 1..],
        None => netloc,
    };
    let (hostname, port) = match hostinfo.iter().position(|&b| b == b'[') {
        Some(open) => {
            let bracketed = &hostinfo[open + 1..];
            match bracketed.iter().position(|&b| b == b']') {
                Some(close) => {
                    let after = &bracketed[close + 1..];
                    let port = after
                        .iter()
                        .position(|&b| b == b':')
                        .map_or(&b""[..], |c| &after[c + 1..]);
                    (&bracketed[..close], port)
                }
                None => (bracketed, &b""[..]),
            }
        }
        None => match hostinfo.iter().position(|&b| b == b':') {
            Some(c) => (&hostinfo[..c], &hostinfo[c + 1..]),
            None => (hostinfo, &b""[..]),
        },
    };
    let port = if port.is_empty() {
        Ok(80)
    } else {
        match parse_port(port) {
            Some(0) => Ok(80),
            Some(p) => Ok(p),
            None => Err(format!(
                "the port {:?} is not a number from 0 to 65535",
                String::from_utf8_lossy(port)
            )),
        }
    };
    Target {
        host: lower(hostname),
        port,
        path: if path.is_empty() {
            b"/".to_vec()
        } else {
            path.to_vec()
        },
        query: query.to_vec(),
    }
}

/// A CONNECT target `host:port`, split at its last colon as proxy.py did: (host, port).
pub(crate) fn split_authority(target: &[u8]) -> (Vec<u8>, Result<u16, String>) {
    let (host, port) = match target.iter().rposition(|&b| b == b':') {
        Some(c) => (&target[..c], &target[c + 1..]),
        None => (&b""[..], target),
    };
    let port = parse_port(port).ok_or_else(|| {
        format!(
            "the port {:?} is not a number from 0 to 65535",
            String::from_utf8_lossy(port)
        )
    });
    (lower(host), port)
}

/// ASCII digits only, at most 65535.
fn parse_port(text: &[u8]) -> Option<u16> {
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let digits = std::str::from_utf8(text).ok()?;
    let value = digits.trim_start_matches('0');
    if value.len() > 5 {
        return None;
    }
    if value.is_empty() {
        return Some(0);
    }
    value.parse().ok()
}

/// Lower-cased as Python lower-cases a latin-1 string (ASCII and the latin-1 capitals).
fn lower(text: &[u8]) -> Vec<u8> {
    text.iter()
        .map(|&b| match b {
            b'A'..=b'Z' => b + 32,
            0xC0..=0xDE if b != 0xD7 => b + 32,
            _ => b,
        })
        .collect()
}

/// A host as the rules see it: the trailing dot of a fully qualified name removed.
pub(crate) fn normalize_host(mut host: Vec<u8>) -> Vec<u8> {
    if host.last() == Some(&b'.') {
        host.pop();
    }
    host
}

/// How a request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Body {
    None,
    Length(u64),
    Chunked,
}

/// The body's framing as the request's headers declare it; anything ambiguous is refused, so the
/// proxy and the server cannot disagree on where the body ends.
pub(crate) fn body_framing(head: &Head) -> Result<Body, String> {
    let values = |name: &str| -> Vec<&[u8]> {
        head.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
            .collect()
    };
    let encodings = values("transfer-encoding");
    let lengths = values("content-length");
    if !encodings.is_empty() {
        if !lengths.is_empty() {
            return Err("both Content-Length and Transfer-Encoding".into());
        }
        if head.minor == 0 {
            return Err("Transfer-Encoding in an HTTP/1.0 request".into());
        }
        let joined = encodings.join(&b","[..]);
        let codings: Vec<&[u8]> = joined
            .split(|&b| b == b',')
            .map(<[u8]>::trim_ascii)
            .filter(|c| !c.is_empty())
            .collect();
        if codings.len() != 1 || !codings[0].eq_ignore_ascii_case(b"chunked") {
            return Err(format!(
                "Transfer-Encoding {:?} (only chunked is forwarded)",
                String::from_utf8_lossy(&joined)
            ));
        }
        return Ok(Body::Chunked);
    }
    let Some(first) = lengths.first() else {
        return Ok(Body::None);
    };
    if lengths.iter().any(|l| l != first) {
        return Err("Content-Length given more than once, differently".into());
    }
    let length = std::str::from_utf8(first)
        .ok()
        .filter(|t| !t.is_empty() && t.len() <= 19 && t.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| format!("Content-Length {:?}", String::from_utf8_lossy(first)))?;
    Ok(Body::Length(length))
}

/// Why a body could not be copied: the connection ends either way.
#[derive(Debug)]
pub(crate) enum BodyError {
    Io(std::io::Error),
    /// The client ended before the body did.
    Truncated,
    Malformed(&'static str),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Io(e) => write!(f, "{e}"),
            BodyError::Truncated => f.write_str("the client ended before the body did"),
            BodyError::Malformed(what) => f.write_str(what),
        }
    }
}

impl std::error::Error for BodyError {}

impl From<std::io::Error> for BodyError {
    fn from(e: std::io::Error) -> Self {
        BodyError::Io(e)
    }
}

/// Copies exactly the one body `framing` declares from `client` to `upstream` (a chunked body
/// up to and including its last chunk and trailers, byte for byte) and nothing after it.
pub(crate) async fn copy_body<R, W>(
    client: &mut R,
    upstream: &mut W,
    framing: Body,
    activity: &Activity,
) -> Result<(), BodyError>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    match framing {
        Body::None => Ok(()),
        Body::Length(length) => copy_exact(client, upstream, length, activity).await,
        Body::Chunked => {
            let mut line = Vec::with_capacity(64);
            loop {
                read_line(client, &mut line, MAX_CHUNK_LINE).await?;
                let size = chunk_size(&line)?;
                upstream.write_all(&line).await?;
                if size == 0 {
                    break;
                }
                copy_exact(client, upstream, size, activity).await?;
                let mut end = [0u8; 2];
                client
                    .read_exact(&mut end)
                    .await
                    .map_err(|_| BodyError::Truncated)?;
                if &end != b"\r\n" {
                    return Err(BodyError::Malformed("a chunk does not end with CRLF"));
                }
                upstream.write_all(&end).await?;
            }
            let mut total = 0;
            loop {
                read_line(client, &mut line, MAX_CHUNK_LINE).await?;
                total += line.len();
                if total > MAX_TRAILERS {
                    return Err(BodyError::Malformed("the trailers are too large"));
                }
                let blank = line == b"\r\n";
                if !blank && !is_field_line(&line) {
                    return Err(BodyError::Malformed("a trailer line is not a header field"));
                }
                upstream.write_all(&line).await?;
                if blank {
                    return Ok(());
                }
            }
        }
    }
}

async fn copy_exact<R, W>(
    client: &mut R,
    upstream: &mut W,
    mut left: u64,
    activity: &Activity,
) -> Result<(), BodyError>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    while left > 0 {
        let available = client.fill_buf().await?;
        if available.is_empty() {
            return Err(BodyError::Truncated);
        }
        let n = available
            .len()
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        activity.touch();
        upstream.write_all(&available[..n]).await?;
        client.consume(n);
        left -= n as u64;
    }
    Ok(())
}

/// One line ending in CRLF, at most `max` bytes; a bare LF or CR is refused (servers disagree on
/// them, which is what request smuggling lives on).
async fn read_line<R: AsyncBufRead + Unpin>(
    client: &mut R,
    line: &mut Vec<u8>,
    max: usize,
) -> Result<(), BodyError> {
    line.clear();
    loop {
        let available = client.fill_buf().await?;
        if available.is_empty() {
            return Err(BodyError::Truncated);
        }
        let (take, done) = match available.iter().position(|&b| b == b'\n') {
            Some(lf) => (lf + 1, true),
            None => (available.len(), false),
        };
        if line.len() + take > max {
            return Err(BodyError::Malformed("a chunk line is too long"));
        }
        line.extend_from_slice(&available[..take]);
        client.consume(take);
        if done {
            let body = &line[..line.len() - 1];
            if body.last() != Some(&b'\r') || body[..body.len() - 1].contains(&b'\r') {
                return Err(BodyError::Malformed("a chunk line does not end with CRLF"));
            }
            return Ok(());
        }
    }
}

/// The size a chunk-size line (with its CRLF) declares: hex digits, then optional extensions of
/// visible characters, spaces and tabs.
fn chunk_size(line: &[u8]) -> Result<u64, BodyError> {
    let line = &line[..line.len() - 2];
    let digits = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let (hex, ext) = line.split_at(digits);
    if hex.is_empty() || hex.len() > 15 {
        return Err(BodyError::Malformed(
            "a chunk size is not 1 to 15 hex digits",
        ));
    }
    if !ext.is_empty()
        && (ext[0] != b';'
            || !ext
                .iter()
                .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b)))
    {
        return Err(BodyError::Malformed(
            "a chunk size line has more than a size and extensions",
        ));
    }
    let hex = std::str::from_utf8(hex).expect("hex digits are ASCII");
    Ok(u64::from_str_radix(hex, 16).expect("at most 15 hex digits fit"))
}

/// `name: value` CRLF, the name a token, the value without control characters but tab.
fn is_field_line(line: &[u8]) -> bool {
    let line = &line[..line.len() - 2];
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    !name.is_empty()
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        && value.iter().all(|&b| b == b'\t' || b >= b' ' && b != 0x7f)
}

/// The head sent upstream: the request line with the path (and query) alone, the checked host as
/// `Host`, `Connection: close`, and the client's headers less the hop-by-hop ones.
pub(crate) fn upstream_head(head: &Head, target: &Target, host: &[u8], port: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(&target.path);
    if !target.query.is_empty() {
        out.push(b'?');
        out.extend_from_slice(&target.query);
    }
    out.extend_from_slice(format!(" HTTP/1.{}\r\nHost: ", head.minor).as_bytes());
    out.extend_from_slice(host);
    if port != 80 {
        out.extend_from_slice(format!(":{port}").as_bytes());
    }
    out.extend_from_slice(b"\r\nConnection: close\r\n");
    for (name, value) in &head.headers {
        let lower = name.to_ascii_lowercase();
        let hop = lower.starts_with("proxy-")
            || ["host", "connection", "keep-alive", "upgrade", "te"].contains(&lower.as_str());
        if !hop {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Head {
        parse_head(text.as_bytes()).unwrap()
    }

    #[test]
    fn targets_split_as_urlsplit_splits_them() {
        let t = split_target(b"http://User:Pw@Example.COM:8080/a/b?x=1&y#frag");
        assert_eq!(t.host, b"example.com");
        assert_eq!(t.port, Ok(8080));
        assert_eq!(t.path, b"/a/b");
        assert_eq!(t.query, b"x=1&y");
        let t = split_target(b"http://example.com");
        assert_eq!(
            (t.host.as_slice(), t.port.clone(), t.path.as_slice()),
            (&b"example.com"[..], Ok(80), &b"/"[..])
        );
        // The userinfo is not the host: `evil.com@x` asks for x.
        assert_eq!(split_target(b"http://evil.com@x/").host, b"x");
        assert_eq!(split_target(b"http://x:/").port, Ok(80));
        assert_eq!(split_target(b"http://x:0/").port, Ok(80));
        assert_eq!(split_target(b"http://x:00081/").port, Ok(81));
        assert!(split_target(b"http://x:65536/").port.is_err());
        assert!(split_target(b"http://x:8a/").port.is_err());
        assert!(split_target(b"http://x:80:81/").port.is_err());
        assert_eq!(split_target(b"http://[::1]:81/").host, b"::1");
        assert_eq!(split_target(b"http://x?q").path, b"/");
        assert_eq!(split_target(b"http://x?q").query, b"q");
        // No authority: no host (refused as not a hostname).
        assert_eq!(split_target(b"/path").host, b"");
        assert_eq!(split_target(b"example.com:80/x").host, b"");
        assert_eq!(split_target(b"HTTP://X\xc0/").host, b"x\xe0");
    }

    #[test]
    fn connect_targets_split_at_the_last_colon() {
        assert_eq!(
            split_authority(b"Example.com:443"),
            (b"example.com".to_vec(), Ok(443))
        );
        assert_eq!(split_authority(b"evil.com@x:443").0, b"evil.com@x");
        assert_eq!(split_authority(b"[::1]:443").0, b"[::1]");
        let (host, port) = split_authority(b"example.com");
        assert_eq!(host, b"");
        assert!(port.is_err());
        assert!(split_authority(b"x:+443").1.is_err());
        assert!(split_authority(b"x:").1.is_err());
        assert_eq!(normalize_host(b"example.com.".to_vec()), b"example.com");
    }

    #[test]
    fn heads_are_parsed_strictly_and_bounded() {
        let h = head("GET http://x/ HTTP/1.1\r\nHost: x\r\nA:  b \r\n\r\n");
        assert_eq!(h.method, "GET");
        assert_eq!(h.target, b"http://x/");
        assert_eq!(h.minor, 1);
        assert_eq!(h.headers[1], ("A".to_string(), b"b".to_vec()));
        for bad in [
            "GET http://x/\r\n\r\n",
            "GET http://x/ HTTP/2.0\r\n\r\n",
            "GET  http://x/ HTTP/1.1\r\n\r\n",
            "GET http://x/ HTTP/1.1\r\nNo colon\r\n\r\n",
            "GET http://x/ HTTP/1.1\r\nName : v\r\n\r\n",
            "GET http://x/ HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
            "GET http://x/ HTTP/1.1\r\nA: b\rc\r\n\r\n",
            "G\x01T http://x/ HTTP/1.1\r\n\r\n",
        ] {
            assert!(parse_head(bad.as_bytes()).is_err(), "{bad:?}");
        }
        assert_eq!(
            find_head_end(b"\r\nGET / HTTP/1.1\r\n\r\nrest", 0),
            Some(20)
        );
        assert_eq!(find_head_end(b"GET / HTTP/1.1\n\nrest", 0), Some(16));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nA: b\r\n", 0), None);
    }

    #[test]
    fn body_framing_refuses_what_could_be_read_two_ways() {
        let framing =
            |extra: &str| body_framing(&head(&format!("POST http://x/ HTTP/1.1\r\n{extra}\r\n")));
        assert_eq!(framing(""), Ok(Body::None));
        assert_eq!(framing("Content-Length: 12\r\n"), Ok(Body::Length(12)));
        assert_eq!(
            framing("Content-Length: 5\r\ncontent-length: 5\r\n"),
            Ok(Body::Length(5))
        );
        assert_eq!(framing("Transfer-Encoding: Chunked\r\n"), Ok(Body::Chunked));
        for bad in [
            "Content-Length: 5\r\nContent-Length: 6\r\n",
            "Content-Length: 5, 5\r\n",
            "Content-Length: -1\r\n",
            "Content-Length: +5\r\n",
            "Content-Length: \r\n",
            "Content-Length: 99999999999999999999\r\n",
            "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
            "Transfer-Encoding: gzip, chunked\r\n",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            "Transfer-Encoding: xchunked\r\n",
        ] {
            assert!(framing(bad).is_err(), "{bad:?}");
        }
        let old = head("POST http://x/ HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(body_framing(&old).is_err());
    }

    async fn body(framing: Body, input: &[u8]) -> (Result<(), BodyError>, Vec<u8>, Vec<u8>) {
        let mut reader = tokio::io::BufReader::new(input);
        let mut out = Vec::new();
        let result = copy_body(&mut reader, &mut out, framing, &Activity::new()).await;
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).await.unwrap();
        (result, out, rest)
    }

    #[test]
    fn exactly_one_body_is_copied() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let (r, out, rest) = body(Body::Length(5), b"helloGET /next").await;
            assert!(r.is_ok());
            assert_eq!(
                (out.as_slice(), rest.as_slice()),
                (&b"hello"[..], &b"GET /next"[..])
            );
            let (r, out, rest) = body(Body::None, b"GET /next").await;
            assert!(r.is_ok() && out.is_empty() && rest == b"GET /next");
            let chunked = b"5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n";
            let mut input = chunked.to_vec();
            input.extend_from_slice(b"GET /next");
            let (r, out, rest) = body(Body::Chunked, &input).await;
            assert!(r.is_ok());
            assert_eq!(
                (out.as_slice(), rest.as_slice()),
                (&chunked[..], &b"GET /next"[..])
            );
            assert!(matches!(
                body(Body::Length(5), b"hel").await.0,
                Err(BodyError::Truncated)
            ));
            for bad in [
                &b"5\nhello\r\n0\r\n\r\n"[..],
                b"5 \r\nhello\r\n0\r\n\r\n",
                b"5\r\nhelloX\r\n0\r\n\r\n",
                b"0x5\r\nhello\r\n0\r\n\r\n",
                b"-5\r\nhello\r\n0\r\n\r\n",
                b"1234567890123456\r\n",
                b"0\r\nNo colon\r\n\r\n",
                b"0\r\n\n",
                b"5;a\rb\r\nhello\r\n0\r\n\r\n",
            ] {
                assert!(
                    matches!(
                        body(Body::Chunked, bad).await.0,
                        Err(BodyError::Malformed(_))
                    ),
                    "{:?}",
                    String::from_utf8_lossy(bad)
                );
            }
        });
    }

    #[test]
    fn the_upstream_head_names_the_checked_host_and_drops_hop_by_hop_fields() {
        let h = head(concat!(
            "GET http://evil@Example.com:8080/p?q=1 HTTP/1.1\r\n",
            "Host: other.example\r\nProxy-Authorization: Basic eA==\r\nProxy-Connection: keep-alive\r\n",
            "Connection: keep-alive, X-A\r\nKeep-Alive: 5\r\nUpgrade: h2c\r\nTE: trailers\r\n",
            "Accept: */*\r\nX-A: 1\r\n\r\n"
        ));
        let t = split_target(&h.target);
        let out = upstream_head(&h, &t, &t.host, 8080);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /p?q=1 HTTP/1.1\r\nHost: example.com:8080\r\nConnection: close\r\nAccept: */*\r\nX-A: 1\r\n\r\n"
        );
        let h = head("GET http://x/ HTTP/1.0\r\n\r\n");
        let t = split_target(&h.target);
        assert_eq!(
            upstream_head(&h, &t, b"x", 80),
            b"GET / HTTP/1.0\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
    }
}
