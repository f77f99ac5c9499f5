//! The proxy's request log: one JSON line per request on stdout, which the engine reads as the
//! run's network log, at most `MAX_LOGGED` lines, with what the program chose escaped.

use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

/// At most this many lines (the ready line included) are written per run: the log is returned
/// whole with the result.
const MAX_LOGGED: u32 = 1000;

/// How many lines were written. Held only while one line is counted and written (no `.await`
/// happens under it), so lines never interleave and the cap is exact.
static LOGGED: Mutex<u32> = Mutex::new(0);

/// The line the proxy writes, past the cap, each time the engine asks (SIGUSR1) at a run's end.
/// Docker copies a container's output to its log on its own time, so a line written before the
/// run ended may not be readable yet; the engine reads up to this line and so misses none.
pub(crate) const END: &str = r#"{"end":true}"#;

/// Writes one line, unless the cap is reached.
pub(crate) fn line(value: &impl Serialize) {
    let mut logged = LOGGED.lock().unwrap_or_else(|e| e.into_inner());
    if *logged >= MAX_LOGGED {
        return;
    }
    *logged += 1;
    if let Ok(text) = serde_json::to_vec(value) {
        write(&text);
    }
}

/// Writes `END`, under the lock so that it never lands inside another line.
pub(crate) fn end() {
    let _logged = LOGGED.lock().unwrap_or_else(|e| e.into_inner());
    write(END.as_bytes());
}

/// `text` and a newline on stdout. A failed write is dropped: the engine reads what reached it,
/// and a proxy whose stdout is gone has nothing better to do. The write blocks the proxy's one
/// thread until the pipe takes it; lines are short, and Docker reads them as they come.
fn write(text: &[u8]) {
    let mut out = std::io::stdout().lock();
    let _ = out
        .write_all(text)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
}

/// What the proxy did with a request.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub(crate) enum Action {
    Allow,
    Block,
}

/// One request's line, in proxy.py's shape (isol8-api's `NetworkLogEntry`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Entry {
    timestamp: String,
    method: String,
    host: String,
    /// The path for plain HTTP; `null` for a tunnel.
    path: Option<String>,
    action: Option<Action>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    duration_ms: Option<u64>,
    #[serde(skip)]
    started: Option<Instant>,
}

impl Entry {
    /// A request as asked, `started` when its connection was taken.
    pub(crate) fn new(started: Instant, method: &[u8], host: &[u8], path: Option<&[u8]>) -> Entry {
        Entry {
            timestamp: timestamp(SystemTime::now()),
            method: printable(method, 16),
            host: printable(host, 256),
            path: path.map(|p| printable(p, 1024)),
            action: None,
            reason: None,
            duration_ms: None,
            started: Some(started),
        }
    }

    /// Writes the line with its outcome; the duration runs until now.
    pub(crate) fn log(&mut self, action: Action, reason: Option<String>) {
        self.action = Some(action);
        self.reason = reason;
        let elapsed = self.started.map_or(Duration::ZERO, |s| s.elapsed());
        self.duration_ms = Some(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
        line(self);
    }
}

/// `text` cut to `limit` bytes, with everything but printable ASCII (and the backslash) written
/// as `\xNN`: a hostname from the program may hold terminal control sequences meant for whoever
/// reads the log.
pub(crate) fn printable(text: &[u8], limit: usize) -> String {
    let mut out = String::with_capacity(text.len().min(limit));
    for &b in text.iter().take(limit) {
        if (b' '..=b'~').contains(&b) && b != b'\\' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// `2026-11-03T09:04:05Z` (UTC, whole seconds), as proxy.py wrote it.
fn timestamp(at: SystemTime) -> String {
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_escapes_all_but_printable_ascii() {
        assert_eq!(printable(b"example.com", 256), "example.com");
        assert_eq!(printable(b"a\x1b[31mb", 256), "a\\x1b[31mb");
        assert_eq!(printable(b"back\\slash", 256), "back\\x5cslash");
        assert_eq!(printable("exä".as_bytes(), 256), "ex\\xc3\\xa4");
        assert_eq!(printable(b"\x7f\x00\n~ ", 256), "\\x7f\\x00\\x0a~ ");
        // Cut before escaping, as proxy.py did.
        assert_eq!(printable(b"abcdef", 3), "abc");
        assert_eq!(printable(b"\x01\x02\x03\x04", 2), "\\x01\\x02");
    }

    #[test]
    fn timestamps_are_utc_whole_seconds() {
        let at = |secs| timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_709_251_199), "2024-02-29T23:59:59Z");
        assert_eq!(at(1_798_761_600), "2027-01-01T00:00:00Z");
        assert_eq!(at(4_107_542_400), "2100-03-01T00:00:00Z");
    }

    #[test]
    fn an_entry_has_proxy_pys_fields() {
        let mut entry = Entry::new(Instant::now(), b"GET", b"h\x1b", Some(b"/p"));
        entry.action = Some(Action::Block);
        entry.reason = Some("denied by rule".into());
        entry.duration_ms = Some(3);
        entry.timestamp = "2026-11-03T09:04:05Z".into();
        assert_eq!(
            serde_json::to_string(&entry).unwrap(),
            r#"{"timestamp":"2026-11-03T09:04:05Z","method":"GET","host":"h\\x1b","path":"/p","action":"BLOCK","reason":"denied by rule","durationMs":3}"#
        );
        let mut tunnel = Entry::new(Instant::now(), b"CONNECT", b"h", None);
        tunnel.action = Some(Action::Allow);
        let value = serde_json::to_value(&tunnel).unwrap();
        assert!(value["path"].is_null());
        assert!(value.get("reason").is_none());
    }
}
