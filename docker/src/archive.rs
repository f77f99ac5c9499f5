//! Workspace snapshots: a session's `/sandbox` as a tar archive out, a checked archive in, and the
//! space `/sandbox` uses, through `docker exec` of the agent's `archive` subcommands
//! (agent/src/archive.rs) as the sandbox user: Docker's archive API cannot see into the tmpfs
//! `/sandbox` is, and the image need not have anything of its own to do it with.
//!
//! An uploaded archive is parsed here, on the server, and only what passes is written again into
//! a fresh archive for the container: regular files, folders and symlinks that stay inside
//! `/sandbox`, relative paths without `..`, nothing written through a symlink, at most the size
//! cap. The container never parses the caller's bytes, so the two tar readers cannot disagree.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::Docker;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::agent_volume::AGENT_BIN;
use crate::error::{Error, Result};

/// How long one archive or usage exec may take.
const EXEC_TIMEOUT: Duration = Duration::from_secs(120);
/// Stderr kept from an exec, for its error message.
const MAX_STDERR: usize = 4096;
/// Exit status of `isol8-agent archive export` when `/sandbox` does not fit in the cap (keep in
/// step with agent/src/archive.rs).
const EXIT_TOO_BIG: i64 = 3;

/// Checks an uploaded archive and writes what it holds into a fresh one: regular files, folders
/// and symlinks whose target stays inside `/sandbox`; paths relative, without `..`, none below a
/// symlink of the archive; file contents at most `max_bytes` in all. Anything else is refused
/// with a message naming the entry.
pub fn sanitize_archive(bytes: &[u8], max_bytes: u64) -> Result<Vec<u8>> {
    let bad = |msg: String| Error::InvalidRequest(format!("archive refused: {msg}"));
    if bytes.starts_with(&[0x1f, 0x8b]) {
        return Err(bad("it is gzip-compressed; send an uncompressed tar".into()));
    }
    let mut archive = tar::Archive::new(bytes);
    let entries = archive
        .entries()
        .map_err(|e| bad(format!("not a tar archive: {e}")))?;
    let mut out = tar::Builder::new(Vec::new());
    let mut links: HashSet<PathBuf> = HashSet::new();
    let mut total = 0u64;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("not a valid tar archive: {e}")))?;
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let kind = entry.header().entry_type();
        use tar::EntryType as T;
        match kind {
            T::Regular | T::Continuous | T::Directory | T::Symlink => {}
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => continue,
            T::Link => {
                return Err(bad(format!(
                    "{shown:?} is a hard link; hard links are not allowed"
                )))
            }
            T::Char | T::Block => {
                return Err(bad(format!(
                    "{shown:?} is a device file; device files are not allowed"
                )))
            }
            T::Fifo => return Err(bad(format!("{shown:?} is a FIFO; FIFOs are not allowed"))),
            other => {
                return Err(bad(format!(
                    "{shown:?} is of tar type {:?}; only files, folders and symlinks are allowed",
                    other.as_byte() as char
                )))
            }
        }
        let path = relative_path(&raw).map_err(|why| bad(format!("{shown:?} {why}")))?;
        if path.as_os_str().is_empty() {
            continue; // the archive's root folder ("./")
        }
        if let Some(link) = path.ancestors().skip(1).find(|a| links.contains(*a)) {
            return Err(bad(format!(
                "{shown:?} lies below the symlink {:?}; nothing may be written through a link",
                link.display().to_string()
            )));
        }
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        let mut header = tar::Header::new_gnu();
        header.set_mode(mode);
        header.set_mtime(entry.header().mtime().unwrap_or(0));
        match kind {
            T::Directory => {
                links.remove(&path);
                header.set_entry_type(T::Directory);
                header.set_size(0);
                out.append_data(&mut header, &path, std::io::empty())
            }
            T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let target_text = String::from_utf8(target)
                    .map_err(|_| bad(format!("the target of {shown:?} is not UTF-8")))?;
                if !link_stays_inside(&path, &target_text) {
                    return Err(bad(format!(
                        "{shown:?} is a symlink to {target_text:?}, outside /sandbox; links must stay inside it"
                    )));
                }
                links.insert(path.clone());
                header.set_entry_type(T::Symlink);
                header.set_size(0);
                out.append_link(&mut header, &path, &target_text)
            }
            _ => {
                links.remove(&path);
                let size = entry.header().size().unwrap_or(0);
                total = total.saturating_add(size);
                if total > max_bytes {
                    return Err(bad(format!(
                        "its files hold more than the {max_bytes} bytes allowed (maxArchiveBytes)"
                    )));
                }
                let mut data = Vec::with_capacity(size.min(max_bytes) as usize);
                std::io::Read::read_to_end(&mut std::io::Read::take(&mut entry, size), &mut data)
                    .map_err(|e| bad(format!("{shown:?} cannot be read: {e}")))?;
                header.set_entry_type(T::Regular);
                header.set_size(data.len() as u64);
                out.append_data(&mut header, &path, data.as_slice())
            }
        }
        .map_err(|e| bad(format!("{shown:?}: {e}")))?;
    }
    out.into_inner()
        .map_err(|e| bad(format!("cannot write the archive: {e}")))
}

/// An entry's path relative to `/sandbox`: `./` and `/sandbox/` prefixes dropped; absolute
/// paths elsewhere and `..` refused.
fn relative_path(raw: &[u8]) -> std::result::Result<PathBuf, &'static str> {
    let text = std::str::from_utf8(raw).map_err(|_| "is not UTF-8")?;
    if text.contains('\0') {
        return Err("has a NUL byte");
    }
    let text = match text.strip_prefix("/sandbox") {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest.trim_start_matches('/'),
        _ if text.starts_with('/') => return Err("is an absolute path outside /sandbox"),
        _ => text,
    };
    let mut path = PathBuf::new();
    for part in Path::new(text).components() {
        match part {
            Component::Normal(p) => path.push(p),
            Component::CurDir => {}
            Component::ParentDir => return Err("has a \"..\" component"),
            Component::RootDir | Component::Prefix(_) => return Err("is an absolute path"),
        }
    }
    Ok(path)
}

/// Whether a symlink at `link` (relative to `/sandbox`) pointing to `target` resolves, lexically,
/// inside `/sandbox`.
fn link_stays_inside(link: &Path, target: &str) -> bool {
    let (mut depth, parts): (i64, Vec<Component>) = match target.strip_prefix("/sandbox") {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => {
            (0, Path::new(rest).components().collect())
        }
        _ if target.starts_with('/') => return false,
        _ => (
            link.components().count() as i64 - 1,
            Path::new(target).components().collect(),
        ),
    };
    for part in parts {
        match part {
            Component::Normal(_) => depth += 1,
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => {}
        }
    }
    !target.is_empty()
}

/// The error of an archive past the cap, whether the agent stopped at it or the stream did.
fn too_big(max_bytes: u64) -> Error {
    Error::InvalidRequest(format!(
        "/sandbox holds more than the {max_bytes} bytes an archive may have (maxArchiveBytes)"
    ))
}

/// Runs `isol8-agent archive <args>` in `container` as its user (the sandbox's, never root:
/// exec inherits the container's), feeding `stdin`; returns its stdout, failing past
/// `max_stdout` bytes.
async fn exec_archive(
    docker: &Docker,
    container: &str,
    args: &[String],
    stdin: Option<Vec<u8>>,
    max_stdout: u64,
    what: &'static str,
) -> Result<Vec<u8>> {
    let mut cmd = vec![AGENT_BIN.to_string(), "archive".to_string()];
    cmd.extend(args.iter().cloned());
    let exec = docker
        .create_exec(
            container,
            CreateExecOptions {
                cmd: Some(cmd),
                attach_stdin: Some(stdin.is_some()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                working_dir: Some("/sandbox".to_string()),
                ..Default::default()
            },
        )
        .await
        .map_err(Error::docker("create exec"))?;
    let started = docker
        .start_exec(&exec.id, None)
        .await
        .map_err(Error::docker("start exec"))?;
    let StartExecResults::Attached {
        mut output,
        mut input,
    } = started
    else {
        return Err(Error::Sandbox {
            container: crate::short_id(container),
            message: format!("{what}: exec did not attach"),
        });
    };
    let run = async {
        let feed = async {
            if let Some(data) = stdin {
                input.write_all(&data).await?;
                input.flush().await?;
            }
            Ok::<(), std::io::Error>(())
        };
        let read = async {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            while let Some(item) = output.next().await {
                match item {
                    Ok(bollard::container::LogOutput::StdOut { message }) => {
                        out.extend_from_slice(&message);
                        if out.len() as u64 > max_stdout {
                            return Err(too_big(max_stdout));
                        }
                    }
                    Ok(bollard::container::LogOutput::StdErr { message }) => {
                        if err.len() < MAX_STDERR {
                            err.extend_from_slice(&message);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => return Err(Error::docker("read exec output")(e)),
                }
            }
            Ok((out, err))
        };
        let (fed, read) = tokio::join!(feed, read);
        fed.map_err(Error::io(format!("{what}: cannot write to the container")))?;
        read
    };
    let (out, err) = tokio::time::timeout(EXEC_TIMEOUT, run)
        .await
        .map_err(|_| Error::Timeout {
            what,
            after: EXEC_TIMEOUT,
        })??;
    let code = docker
        .inspect_exec(&exec.id)
        .await
        .map_err(Error::docker("inspect exec"))?
        .exit_code;
    if code == Some(EXIT_TOO_BIG) && args.first().is_some_and(|a| a == "export") {
        return Err(too_big(max_stdout));
    }
    if code != Some(0) {
        let stderr = String::from_utf8_lossy(&err);
        let last = stderr
            .trim()
            .lines()
            .last()
            .unwrap_or("no message")
            .to_string();
        return Err(Error::InvalidRequest(format!("{what} failed: {last}")));
    }
    Ok(out)
}

/// `/sandbox` of `container` as a tar archive of at most `max_bytes`.
pub(crate) async fn export(docker: &Docker, container: &str, max_bytes: u64) -> Result<Vec<u8>> {
    exec_archive(
        docker,
        container,
        &["export".to_string(), max_bytes.to_string()],
        None,
        max_bytes,
        "archiving /sandbox",
    )
    .await
}

/// Unpacks `tar` (from [`sanitize_archive`]) into `/sandbox` of `container`.
pub(crate) async fn import(docker: &Docker, container: &str, tar: Vec<u8>) -> Result<()> {
    let len = tar.len().to_string();
    exec_archive(
        docker,
        container,
        &["import".to_string(), len],
        Some(tar),
        MAX_STDERR as u64,
        "unpacking into /sandbox",
    )
    .await
    .map(drop)
}

/// Bytes in use in `/sandbox` of `container`.
pub(crate) async fn usage(docker: &Docker, container: &str) -> Result<u64> {
    let out = exec_archive(
        docker,
        container,
        &["usage".to_string()],
        None,
        64,
        "measuring /sandbox",
    )
    .await?;
    String::from_utf8_lossy(&out)
        .trim()
        .parse()
        .map_err(|_| Error::Sandbox {
            container: crate::short_id(container),
            message: "measuring /sandbox gave no number".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn entry(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, path: &str, link: &str) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_size(0);
        // set_path refuses "..": write the name bytes directly, as a hostile archive would.
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        if !link.is_empty() {
            h.set_link_name(link).unwrap();
        }
        h.set_cksum();
        b.append(&h, std::io::empty()).unwrap();
    }

    #[test]
    fn files_folders_and_inner_links_pass() {
        let tar = tar_of(|b| {
            entry(b, tar::EntryType::Directory, "./src/", "");
            let mut h = tar::Header::new_gnu();
            h.set_size(2);
            h.set_mode(0o755);
            b.append_data(&mut h, "src/run.sh", &b"ok"[..]).unwrap();
            entry(b, tar::EntryType::Symlink, "latest", "src/run.sh");
            entry(b, tar::EntryType::Symlink, "src/up", "../latest");
        });
        let clean = sanitize_archive(&tar, 1024).unwrap();
        let mut names: Vec<String> = tar::Archive::new(clean.as_slice())
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        names.sort();
        assert_eq!(names, ["latest", "src", "src/run.sh", "src/up"]);
    }

    #[test]
    fn hostile_entries_are_refused_by_name() {
        use tar::EntryType as T;
        for (kind, path, link, says) in [
            (
                T::Regular,
                "/etc/passwd",
                "",
                "absolute path outside /sandbox",
            ),
            (T::Regular, "a/../../x", "", "\"..\""),
            (T::Symlink, "out", "/etc", "outside /sandbox"),
            (T::Symlink, "out", "../../etc", "outside /sandbox"),
            (T::Link, "hard", "x", "hard link"),
            (T::Char, "null", "", "device file"),
            (T::Block, "disk", "", "device file"),
            (T::Fifo, "pipe", "", "FIFO"),
        ] {
            let tar = tar_of(|b| entry(b, kind, path, link));
            let err = sanitize_archive(&tar, 1024).unwrap_err().to_string();
            assert!(err.contains(says), "{path}: {err}");
        }
    }

    #[test]
    fn nothing_is_written_through_a_link_and_the_cap_holds() {
        let tar = tar_of(|b| {
            entry(b, tar::EntryType::Symlink, "d", "sub");
            entry(b, tar::EntryType::Regular, "d/x", "");
        });
        let err = sanitize_archive(&tar, 1024).unwrap_err().to_string();
        assert!(err.contains("below the symlink"), "{err}");
        let big = tar_of(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_size(2000);
            b.append_data(&mut h, "big", &[0u8; 2000][..]).unwrap();
        });
        let err = sanitize_archive(&big, 1024).unwrap_err().to_string();
        assert!(err.contains("maxArchiveBytes"), "{err}");
    }
}
