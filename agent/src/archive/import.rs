//! Unpacking a tar into `/sandbox`. The archive comes from the server, which parsed the caller's
//! upload and wrote only checked entries again (docker/src/archive.rs: `sanitize_archive`); the
//! checks are made again here all the same: each name must stay inside `/sandbox` lexically and
//! its folder must resolve inside it on disk, files are created afresh without following a
//! link, and only files, folders and symlinks are unpacked. The first entry refused ends the
//! unpacking with a message naming it.
//!
//! This runs as the sandbox's user, next to that user's programs: a race with one of them can
//! only do what that program could do itself.

use std::fs::{self, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use tar::EntryType;

/// Unpacks `tar` into `root` (which messages call `/sandbox`).
pub(crate) fn import(root: &Path, tar: &[u8]) -> Result<(), String> {
    let root = fs::canonicalize(root).map_err(|e| format!("/sandbox: {e}"))?;
    let mut archive = tar::Archive::new(tar);
    let entries = archive
        .entries()
        .map_err(|e| format!("not a valid tar archive: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("not a valid tar archive: {e}"))?;
        let kind = entry.header().entry_type();
        if kind == EntryType::XGlobalHeader {
            continue;
        }
        let name = entry
            .path()
            .map_err(|e| format!("not a valid tar archive: {e}"))?
            .into_owned();
        let shown = name.display().to_string();
        let shown = shown.trim_end_matches('/');
        let Some(rel) = normalize(&name) else {
            return Err(format!("{shown}: outside /sandbox"));
        };
        if rel.as_os_str().is_empty() {
            continue; // the archive's root folder
        }
        let path = root.join(&rel);
        let at = |e: io::Error| format!("{shown}: {e}");
        let parent = path.parent().unwrap_or(&root);
        // Before creating any folder, and once they all exist: a symlink already in /sandbox
        // may point elsewhere.
        if !resolves_inside(&root, deepest_existing(parent)).map_err(at)? {
            return Err(format!("{shown}: its folder leads outside /sandbox"));
        }
        fs::create_dir_all(parent).map_err(at)?;
        if !resolves_inside(&root, parent).map_err(at)? {
            return Err(format!("{shown}: its folder leads outside /sandbox"));
        }
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        match kind {
            EntryType::Directory => {
                clear(&path).map_err(at)?;
                fs::create_dir_all(&path).map_err(at)?;
                // The folder stays the owner's to fill and to wipe, whatever the archive says.
                OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
                    .open(&path)
                    .and_then(|dir| dir.set_permissions(Permissions::from_mode(mode | 0o700)))
                    .map_err(at)?;
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                if is_real_dir(&path) {
                    return Err(format!("{shown}: a folder is in the way"));
                }
                clear(&path).map_err(at)?;
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .map_err(at)?;
                io::copy(&mut entry, &mut file).map_err(at)?;
                file.set_permissions(Permissions::from_mode(mode))
                    .map_err(at)?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(at)?
                    .ok_or_else(|| format!("{shown}: a symlink without a target"))?
                    .into_owned();
                if is_real_dir(&path) {
                    return Err(format!("{shown}: a folder is in the way"));
                }
                clear(&path).map_err(at)?;
                std::os::unix::fs::symlink(&target, &path).map_err(at)?;
            }
            _ => return Err(format!("{shown}: not a file, folder or symlink")),
        }
    }
    Ok(())
}

/// `name` relative to the root with `.` and `..` resolved lexically, or None when it is absolute
/// or climbs above the root.
fn normalize(name: &Path) -> Option<PathBuf> {
    let mut rel = PathBuf::new();
    for part in name.components() {
        match part {
            Component::Normal(p) => rel.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                if !rel.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(rel)
}

/// The nearest of `path` and its ancestors that exists.
fn deepest_existing(path: &Path) -> &Path {
    path.ancestors()
        .find(|p| fs::symlink_metadata(p).is_ok())
        .unwrap_or(path)
}

/// Whether `path`, its links followed, is `root` or below it.
fn resolves_inside(root: &Path, path: &Path) -> io::Result<bool> {
    Ok(fs::canonicalize(path)?.starts_with(root))
}

/// A folder, not a symlink to one.
fn is_real_dir(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

/// Removes what is at `path` unless it is a real folder (a symlink to one is removed).
fn clear(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if !m.is_dir() => fs::remove_file(path),
        _ => Ok(()),
    }
}
