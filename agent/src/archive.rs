//! `isol8-agent archive …`: the workspace snapshots the engine takes through `docker exec` as the
//! sandbox's user (docker/src/archive.rs), so they need nothing from the image:
//!
//! - `export <max_bytes>`: `/sandbox` as a PAX tar on stdout (`export.rs`); exit 3 when the
//!   archive would pass `max_bytes`, having written no more than that;
//! - `import <len>`: reads exactly `len` bytes of tar from stdin (one the server already checked
//!   and rewrote) and unpacks it into `/sandbox` (`import.rs`);
//! - `usage`: the bytes in use in `/sandbox`'s file system, one decimal line.
//!
//! Any PID may run them (unlike the agent mode, which insists on being PID 1). A failure exits
//! 1 with its one-line reason last on stderr, which the engine quotes; bad arguments exit 2.

mod export;
mod import;

use std::io::{self, Read, Write};
use std::path::Path;
use std::process::ExitCode;

use crate::agent::SANDBOX_DIR;

/// Exit status of `export` when `/sandbox` does not fit in `max_bytes` (the engine maps it to
/// its `maxArchiveBytes` error; keep in step with docker/src/archive.rs).
const EXIT_TOO_BIG: u8 = 3;

pub(crate) fn main(args: &[String]) -> ExitCode {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["export", max] => match max.parse::<u64>() {
            Ok(max) => run_export(max),
            Err(_) => bad_args(&format!("max_bytes {max:?} is not a byte count")),
        },
        ["import", len] => match len.parse::<u64>() {
            Ok(len) => run_import(len),
            Err(_) => bad_args(&format!("len {len:?} is not a byte count")),
        },
        ["usage"] => match usage(Path::new(SANDBOX_DIR)) {
            Ok(bytes) => {
                println!("{bytes}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&format!("cannot measure {SANDBOX_DIR}: {e}")),
        },
        _ => bad_args(&format!("unknown arguments {args:?}")),
    }
}

fn run_export(max_bytes: u64) -> ExitCode {
    let stdout = io::stdout().lock();
    let out = io::BufWriter::with_capacity(64 * 1024, stdout);
    let skipped = |path: &Path, e: &io::Error| {
        eprintln!("skipped {}: {e}", path.display());
    };
    match export::export(Path::new(SANDBOX_DIR), out, max_bytes, skipped) {
        Ok(()) => ExitCode::SUCCESS,
        Err(export::Error::TooBig) => {
            eprintln!(
                "{SANDBOX_DIR} holds more than the {max_bytes} bytes an archive may have (maxArchiveBytes)"
            );
            ExitCode::from(EXIT_TOO_BIG)
        }
        Err(export::Error::Io(e)) => fail(&format!("cannot write the archive: {e}")),
    }
}

fn run_import(len: u64) -> ExitCode {
    // The whole archive first, as the engine does not end stdin: a short one changes nothing.
    let mut tar = Vec::new();
    if let Err(e) = io::stdin().lock().take(len).read_to_end(&mut tar) {
        return fail(&format!("cannot read the archive: {e}"));
    }
    if (tar.len() as u64) < len {
        return fail("the archive ended early");
    }
    match import::import(Path::new(SANDBOX_DIR), &tar) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => fail(&message),
    }
}

/// Bytes in use in the file system holding `dir` (for `/sandbox`: its tmpfs), as `df` counts
/// them: blocks in use times the fragment size.
fn usage(dir: &Path) -> io::Result<u64> {
    let s = rustix::fs::statvfs(dir)?;
    Ok(s.f_blocks
        .saturating_sub(s.f_bfree)
        .saturating_mul(s.f_frsize))
}

fn fail(message: &str) -> ExitCode {
    let _ = io::stdout().flush();
    eprintln!("{message}");
    ExitCode::FAILURE
}

fn bad_args(message: &str) -> ExitCode {
    eprintln!(
        "isol8-agent archive: {message} (expected `export <max_bytes>`, `import <len>` or `usage`)"
    );
    ExitCode::from(2)
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

    use super::*;

    fn write(path: &Path, data: &str, mode: u32) {
        fs::write(path, data).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn export_of(root: &Path, max: u64) -> (Result<Vec<u8>, export::Error>, Vec<String>) {
        let (mut out, mut skipped) = (Vec::new(), Vec::new());
        let result = export::export(root, &mut out, max, |p, _| {
            skipped.push(p.display().to_string())
        });
        (result.map(|()| out), skipped)
    }

    fn names(tar: &[u8]) -> Vec<String> {
        tar::Archive::new(tar)
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                String::from_utf8(e.path_bytes().into_owned()).unwrap()
            })
            .collect()
    }

    fn running_as_root() -> bool {
        fs::metadata("/proc/self").unwrap().uid() == 0
    }

    #[test]
    fn a_tree_round_trips_in_os_walk_order_without_fifos_or_sockets() {
        let src = tempfile::tempdir().unwrap();
        let s = src.path();
        fs::create_dir_all(s.join("b/a")).unwrap();
        write(&s.join("b/a/deep"), "deep", 0o644);
        write(&s.join("b/z.txt"), "zz", 0o600);
        write(&s.join("a.txt"), "a", 0o644);
        write(&s.join("e.sh"), "echo e", 0o755);
        fs::set_permissions(s.join("b/a"), fs::Permissions::from_mode(0o750)).unwrap();
        symlink("b", s.join("c")).unwrap(); // to a folder: listed with the folders, not entered
        symlink("missing", s.join("d")).unwrap();
        symlink("/etc/passwd", s.join("f")).unwrap(); // never followed
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            s.join("fifo"),
            rustix::fs::Mode::from_raw_mode(0o644),
        )
        .unwrap();
        let _socket = std::os::unix::net::UnixListener::bind(s.join("sock")).unwrap();

        let (tar, skipped) = export_of(s, 1 << 20);
        let tar = tar.unwrap();
        assert_eq!(skipped, Vec::<String>::new());
        assert_eq!(
            names(&tar),
            ["b/", "c", "a.txt", "d", "e.sh", "f", "b/a/", "b/z.txt", "b/a/deep"]
        );
        // ustar headers ("ustar\0" magic), numeric owners as the files have them.
        let mut archive = tar::Archive::new(tar.as_slice());
        let first = archive.entries().unwrap().next().unwrap().unwrap();
        assert!(first.header().as_ustar().is_some());
        assert_eq!(
            first.header().uid().unwrap(),
            u64::from(fs::metadata(s.join("b")).unwrap().uid())
        );

        let dst = tempfile::tempdir().unwrap();
        let d = dst.path();
        import::import(d, &tar).unwrap();
        assert_eq!(fs::read_to_string(d.join("b/a/deep")).unwrap(), "deep");
        assert_eq!(fs::read_to_string(d.join("e.sh")).unwrap(), "echo e");
        let mode = |p: &str| fs::symlink_metadata(d.join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("e.sh"), 0o755);
        assert_eq!(mode("b/z.txt"), 0o600);
        assert_eq!(mode("b/a"), 0o750);
        assert_eq!(fs::read_link(d.join("c")).unwrap(), Path::new("b"));
        assert_eq!(fs::read_link(d.join("d")).unwrap(), Path::new("missing"));
        assert_eq!(
            fs::read_link(d.join("f")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert!(!d.join("fifo").exists() && !d.join("sock").exists());
        // Once more over what is there: files replaced, folders kept.
        write(&d.join("a.txt"), "changed", 0o644);
        import::import(d, &tar).unwrap();
        assert_eq!(fs::read_to_string(d.join("a.txt")).unwrap(), "a");
    }

    #[test]
    fn unreadable_files_are_named_and_left_out() {
        if running_as_root() {
            // Root reads a file of mode 000; server/tests/sessions.rs checks this as the
            // sandbox's user.
            return;
        }
        let src = tempfile::tempdir().unwrap();
        write(&src.path().join("secret"), "s", 0o000);
        write(&src.path().join("open"), "o", 0o644);
        let (tar, skipped) = export_of(src.path(), 1 << 20);
        assert_eq!(names(&tar.unwrap()), ["open"]);
        assert_eq!(skipped, [src.path().join("secret").display().to_string()]);
    }

    #[test]
    fn long_names_and_links_round_trip_through_pax_headers() {
        let src = tempfile::tempdir().unwrap();
        let deep = "d".repeat(120);
        let long = "f".repeat(200);
        fs::create_dir(src.path().join(&deep)).unwrap();
        write(&src.path().join(&deep).join(&long), "x", 0o644);
        let target = format!("{deep}/{long}");
        symlink(&target, src.path().join("l")).unwrap();
        let (tar, _) = export_of(src.path(), 1 << 20);
        let tar = tar.unwrap();
        assert!(
            tar.windows(14).any(|w| w == b"././@PaxHeader"),
            "PAX extended headers"
        );
        let dst = tempfile::tempdir().unwrap();
        import::import(dst.path(), &tar).unwrap();
        assert_eq!(
            fs::read_to_string(dst.path().join(&deep).join(&long)).unwrap(),
            "x"
        );
        assert_eq!(
            fs::read_link(dst.path().join("l")).unwrap(),
            Path::new(&target)
        );
    }

    #[test]
    fn the_size_cap_counts_the_whole_stream_and_stops_before_it() {
        let src = tempfile::tempdir().unwrap();
        write(&src.path().join("a"), &"a".repeat(3000), 0o644);
        write(&src.path().join("b"), &"b".repeat(3000), 0o644);
        let (whole, _) = export_of(src.path(), u64::MAX);
        let whole = whole.unwrap();
        let len = whole.len() as u64;
        let (exact, _) = export_of(src.path(), len);
        assert_eq!(
            exact.unwrap(),
            whole,
            "an archive of exactly the cap passes"
        );
        for max in [len - 1, 4000, 100, 0] {
            let mut out = Vec::new();
            let result = export::export(src.path(), &mut out, max, |_, _| {});
            assert!(matches!(result, Err(export::Error::TooBig)), "{max}");
            assert!(out.len() as u64 <= max, "{max}: wrote {}", out.len());
        }
    }

    fn hostile(name: &str, kind: tar::EntryType, link: &str, data: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        // Written as raw bytes: the builder itself refuses ".." and absolute names.
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        if !link.is_empty() {
            h.set_link_name(link).unwrap();
        }
        h.set_cksum();
        b.append(&h, data).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn import_refuses_what_would_leave_the_root_or_is_no_file() {
        use tar::EntryType as T;
        let outside = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        symlink(outside.path(), r.join("out")).unwrap();
        write(&outside.path().join("victim"), "kept", 0o644);
        symlink(outside.path().join("victim"), r.join("v")).unwrap();
        fs::create_dir(r.join("dir")).unwrap();
        for (tar, says) in [
            (
                hostile("../x", T::Regular, "", b"x"),
                "../x: outside /sandbox",
            ),
            (
                hostile("a/../../x", T::Regular, "", b"x"),
                "outside /sandbox",
            ),
            (hostile("/etc/x", T::Regular, "", b"x"), "outside /sandbox"),
            (
                hostile("out/new/x", T::Regular, "", b"x"),
                "out/new/x: its folder leads outside /sandbox",
            ),
            (
                hostile("dir", T::Regular, "", b"x"),
                "dir: a folder is in the way",
            ),
            (
                hostile("dir", T::Symlink, "elsewhere", b""),
                "a folder is in the way",
            ),
            (
                hostile("h", T::Link, "a", b""),
                "h: not a file, folder or symlink",
            ),
            (
                hostile("p", T::Fifo, "", b""),
                "not a file, folder or symlink",
            ),
            (
                hostile("c", T::Char, "", b""),
                "not a file, folder or symlink",
            ),
        ] {
            let err = import::import(r, &tar).unwrap_err();
            assert!(err.contains(says), "{says}: {err}");
        }
        assert!(
            !outside.path().join("new").exists(),
            "no folder made outside"
        );
        assert!(!r.join("h").exists() && !r.join("p").exists());
        // A file over a symlink replaces the link; the link's target is untouched.
        import::import(r, &hostile("v", T::Regular, "", b"new")).unwrap();
        assert!(!fs::symlink_metadata(r.join("v")).unwrap().is_symlink());
        assert_eq!(fs::read_to_string(r.join("v")).unwrap(), "new");
        assert_eq!(
            fs::read_to_string(outside.path().join("victim")).unwrap(),
            "kept"
        );
        let err = import::import(r, b"not a tar archive at all".repeat(30).as_slice()).unwrap_err();
        assert!(err.contains("not a valid tar archive"), "{err}");
    }

    #[test]
    fn usage_grows_with_what_is_written() {
        // /dev/shm is a tmpfs like /sandbox, where blocks in use follow the files at once.
        let shm = Path::new("/dev/shm");
        if !shm.is_dir() {
            return;
        }
        let dir = tempfile::tempdir_in(shm).unwrap();
        let before = usage(dir.path()).unwrap();
        fs::write(dir.path().join("f"), vec![1u8; 4 << 20]).unwrap();
        let after = usage(dir.path()).unwrap();
        assert!(after >= before + (3 << 20), "{before} -> {after}");
    }
}
