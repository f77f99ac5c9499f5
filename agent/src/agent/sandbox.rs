//! The sandbox around the programs: its processes, its writable places (files in, files out,
//! the wipe and its check) and the counters a run's usage is read from.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use crate::sys;

/// What a reset wipes and verifies empty, and where a run's output files may come from.
pub(crate) const WIPE_DIRS: [&str; 3] = ["/sandbox", "/tmp", "/dev/shm"];
/// What the file routes may reach.
pub(crate) const SANDBOX_ONLY: [&str; 1] = ["/sandbox"];
const MQUEUE_DIR: &str = "/dev/mqueue";

/// Every process of the container but the agent (PID 1 of its namespace).
pub(crate) fn other_pids() -> HashSet<i32> {
    let me = std::process::id() as i32;
    let Ok(entries) = fs::read_dir("/proc") else {
        return HashSet::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .collect()
}

/// SIGKILL to every process but the agent: as PID 1, kill(-1) reaches the whole namespace.
pub(crate) fn kill_all() {
    let _ = sys::kill(-1, libc::SIGKILL);
}

/// Kills and reaps until no other process is left (false when some survive `within`).
pub(crate) fn kill_and_reap(within: Duration, mut reaped: impl FnMut(sys::Reaped)) -> bool {
    let end = Instant::now() + within;
    loop {
        kill_all();
        while let Some(child) = sys::reap_one() {
            reaped(child);
        }
        if other_pids().is_empty() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Every live process whose parent chain reaches one of `pids`.
pub(crate) fn descendants(pids: &HashSet<i32>) -> HashSet<i32> {
    let mut parents = Vec::new();
    for pid in other_pids() {
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The command name may hold spaces and parentheses: the fields follow its last ')'.
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if let Some(parent) = parent {
            parents.push((pid, parent));
        }
    }
    let mut found = HashSet::new();
    loop {
        let before = found.len();
        for &(pid, parent) in &parents {
            if pids.contains(&parent) || found.contains(&parent) {
                found.insert(pid);
            }
        }
        if found.len() == before {
            return found;
        }
    }
}

/// A live process's resident set in bytes (0 when unknown).
pub(crate) fn rss_of(pid: i32) -> u64 {
    let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// `path` made absolute against `cwd`.
pub(crate) fn absolute(path: &str, cwd: &str) -> PathBuf {
    Path::new(cwd).join(path)
}

/// `path` with every existing symlink resolved and `.`/`..` applied, like Python's
/// `os.path.realpath`: the part that does not exist yet is kept as written.
fn real_path(path: &Path) -> PathBuf {
    match fs::canonicalize(path) {
        Ok(real) => real,
        Err(_) => match (path.parent(), path.file_name()) {
            (Some(parent), Some(name)) => real_path(parent).join(name),
            _ => {
                // A path ending in `..` or `.`: resolve what it names lexically.
                let mut out = PathBuf::from("/");
                for part in path.components() {
                    match part {
                        Component::ParentDir => {
                            out.pop();
                        }
                        Component::Normal(p) => out.push(p),
                        _ => {}
                    }
                }
                out
            }
        },
    }
}

/// `path` resolved (see `real_path`), or None when that leaves `roots`. This is API confinement,
/// not a security boundary: programs run as the same user and can reach whatever it can.
pub(crate) fn resolved_within(path: &Path, roots: &[&str]) -> Option<PathBuf> {
    let real = real_path(path);
    roots
        .iter()
        .any(|root| real.starts_with(root))
        .then_some(real)
}

fn not_regular(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{} is not a regular file", path.display()),
    )
}

/// Writes `data` to the regular file at `path`, creating parents.
pub(crate) fn write_file(path: &Path, data: &[u8]) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    // Non-blocking open: a FIFO a program left at the path must not stall the agent (one with no
    // reader fails at once, one with a reader is refused below); only regular files are written.
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(not_regular(path));
    }
    sys::set_blocking(file.as_fd(), true)?;
    file.set_len(0)?;
    file.write_all(data)
}

/// The bytes of the regular file at `path` (resolved already), or Err(why) when it may not be
/// returned. `roots` is checked again on the opened file: a program still running (in a session)
/// could swap a directory for a symlink between the resolving and the opening.
pub(crate) fn read_output_file(
    path: &Path,
    limit: u64,
    roots: &[&str],
) -> io::Result<Result<Vec<u8>, String>> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let opened = fs::read_link(format!("/proc/self/fd/{}", {
        use std::os::fd::AsRawFd;
        file.as_raw_fd()
    }))?;
    if !roots.iter().any(|root| opened.starts_with(root)) {
        return Ok(Err(format!("resolves outside {}", roots.join(", "))));
    }
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(Err("not a regular file".into()));
    }
    let too_large = || Ok(Err(format!("larger than {limit} bytes")));
    if meta.len() > limit {
        return too_large();
    }
    let mut data = Vec::new();
    file.take(limit + 1).read_to_end(&mut data)?;
    if data.len() as u64 > limit {
        return too_large();
    }
    Ok(Ok(data))
}

/// Removes everything inside `dir`, making directories writable first (the sandbox user owns
/// them, and a program may have made one read-only).
fn wipe(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        remove_tree(&entry?.path())?;
    }
    Ok(())
}

fn remove_tree(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err),
    };
    if meta.is_dir() {
        let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o700));
        for entry in fs::read_dir(path)? {
            remove_tree(&entry?.path())?;
        }
        fs::remove_dir(path)
    } else {
        fs::remove_file(path)
    }
}

/// The ids of the SysV IPC objects in one table of this IPC namespace.
fn sysv_ids(table: sys::SysvTable) -> Vec<i32> {
    let Ok(text) = fs::read_to_string(format!("/proc/sysvipc/{}", table.name())) else {
        return Vec::new();
    };
    text.lines()
        .skip(1)
        .filter_map(|row| row.split_whitespace().nth(1)?.parse().ok())
        .collect()
}

/// Removes the SysV shared memory, semaphores and message queues and the POSIX message queues a
/// run left (the container's IPC namespace outlives runs), then names what is left.
fn wipe_ipc() -> Vec<String> {
    for table in sys::SysvTable::ALL {
        for id in sysv_ids(table) {
            table.remove(id);
        }
    }
    let queues = |()| -> Vec<String> {
        fs::read_dir(MQUEUE_DIR)
            .map(|entries| {
                entries
                    .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                    .collect()
            })
            .unwrap_or_default()
    };
    for name in queues(()) {
        let _ = fs::remove_file(Path::new(MQUEUE_DIR).join(name));
    }
    let mut left: Vec<String> = sys::SysvTable::ALL
        .iter()
        .filter_map(|&t| {
            let ids = sysv_ids(t);
            (!ids.is_empty()).then(|| format!("{} {ids:?}", t.name()))
        })
        .collect();
    let queues = queues(());
    if !queues.is_empty() {
        left.push(format!("mqueue {:?}", &queues[..queues.len().min(5)]));
    }
    if left.is_empty() {
        Vec::new()
    } else {
        vec![format!("IPC objects left: {}", left.join(", "))]
    }
}

/// Wipes the writable places and verifies the sandbox is as new: no process but the agent, the
/// work dirs empty, no IPC object. Returns (clean, what is wrong or "clean").
pub(crate) fn wipe_and_verify(reaped: impl FnMut(sys::Reaped)) -> (bool, String) {
    if !kill_and_reap(Duration::from_secs(5), reaped) {
        let mut left: Vec<i32> = other_pids().into_iter().collect();
        left.sort_unstable();
        return (false, format!("processes survived SIGKILL: {left:?}"));
    }
    let mut problems = Vec::new();
    for dir in WIPE_DIRS {
        if let Err(err) = wipe(Path::new(dir)) {
            problems.push(format!("{dir}: {err}"));
        }
    }
    for dir in WIPE_DIRS {
        match fs::read_dir(dir) {
            Err(err) => problems.push(format!("{dir}: {err}")),
            Ok(entries) => {
                let left: Vec<String> = entries
                    .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                    .take(5)
                    .collect();
                if !left.is_empty() {
                    problems.push(format!("{dir} not empty: {left:?}"));
                }
            }
        }
    }
    problems.extend(wipe_ipc());
    let left = other_pids();
    if !left.is_empty() {
        problems.push(format!("processes left: {left:?}"));
    }
    if problems.is_empty() {
        (true, "clean".into())
    } else {
        (false, problems.join("; "))
    }
}

fn read_first<T>(paths: &[&str], parse: impl Fn(&str) -> Option<T>) -> Option<T> {
    paths
        .iter()
        .find_map(|path| parse(&fs::read_to_string(path).ok()?))
}

/// The cgroup's OOM-kill counter (v2 memory.events, v1 memory.oom_control).
pub(crate) fn oom_kill_count() -> Option<u64> {
    read_first(
        &[
            "/sys/fs/cgroup/memory.events",
            "/sys/fs/cgroup/memory/memory.oom_control",
        ],
        |text| {
            text.lines().find_map(|line| {
                let mut parts = line.split_whitespace();
                (parts.next()? == "oom_kill").then(|| parts.next()?.parse().ok())?
            })
        },
    )
}

/// CPU time of every process in the container so far (cgroup v1 cpuacct, or v2 cpu.stat).
pub(crate) fn cgroup_cpu_ns() -> Option<u64> {
    read_first(
        &[
            "/sys/fs/cgroup/cpuacct/cpuacct.usage",
            "/sys/fs/cgroup/cpu,cpuacct/cpuacct.usage",
        ],
        |t| t.trim().parse().ok(),
    )
    .or_else(|| {
        read_first(&["/sys/fs/cgroup/cpu.stat"], |text| {
            text.lines().find_map(|line| {
                let usec: u64 = line.strip_prefix("usage_usec ")?.trim().parse().ok()?;
                Some(usec * 1000)
            })
        })
    })
}

/// The container's memory in use, in bytes.
pub(crate) fn cgroup_memory() -> Option<u64> {
    read_first(
        &[
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
            "/sys/fs/cgroup/memory.current",
        ],
        |t| t.trim().parse().ok(),
    )
}

/// (received, sent) bytes on every interface but loopback: the container's own network namespace.
pub(crate) fn net_bytes() -> (u64, u64) {
    let Ok(mut file) = File::open("/proc/net/dev") else {
        return (0, 0);
    };
    let mut text = String::new();
    if file.read_to_string(&mut text).is_err() {
        return (0, 0);
    }
    let (mut rx, mut tx) = (0, 0);
    for line in text.lines().skip(2) {
        let Some((name, fields)) = line.split_once(':') else {
            continue;
        };
        let values: Vec<u64> = fields
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        if name.trim() != "lo" && values.len() >= 9 {
            rx += values[0];
            tx += values[8];
        }
    }
    (rx, tx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_like_realpath_and_stay_within_their_roots() {
        let dir = std::env::temp_dir().join(format!("isol8-agent-test-{}", std::process::id()));
        fs::create_dir_all(dir.join("inner")).unwrap();
        std::os::unix::fs::symlink("/etc", dir.join("out")).unwrap();
        let root = dir.to_str().unwrap();
        // What does not exist yet is kept as written; `..` is applied.
        assert_eq!(
            resolved_within(&dir.join("inner/../new/file"), &[root]),
            Some(dir.join("new/file"))
        );
        // A symlink that leaves the root is followed, and refused.
        assert_eq!(resolved_within(&dir.join("out/passwd"), &[root]), None);
        assert_eq!(resolved_within(&dir.join("inner/../../x"), &[root]), None);
        // A root's name as a prefix of another directory's is not inside it.
        assert_eq!(
            resolved_within(Path::new(&format!("{root}x/a")), &[root]),
            None
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn written_files_replace_regular_files_only() {
        let dir = std::env::temp_dir().join(format!("isol8-agent-write-{}", std::process::id()));
        let file = dir.join("a/b.txt");
        write_file(&file, b"long content").unwrap();
        write_file(&file, b"short").unwrap();
        assert_eq!(fs::read(&file).unwrap(), b"short");
        std::os::unix::fs::symlink(&file, dir.join("link")).unwrap();
        assert!(
            write_file(&dir.join("link"), b"x").is_err(),
            "symlinks are not followed"
        );
        assert!(
            write_file(&dir.join("a"), b"x").is_err(),
            "a directory is not a file"
        );
        assert_eq!(
            read_output_file(&file, 3, &[dir.to_str().unwrap()]).unwrap(),
            Err("larger than 3 bytes".to_string())
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
