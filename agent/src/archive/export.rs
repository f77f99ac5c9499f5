//! `/sandbox` as a tar stream: regular files, folders and symlinks (never followed), in the order
//! Python's `os.walk` gave the script this replaces (each folder's entries sorted, its subfolders
//! first, then its files; then each subfolder in turn); sockets, FIFOs and devices left out;
//! what cannot be read is reported and left out. PAX format: ustar headers, with an extended
//! header only where a name, link or number does not fit. Owners are numeric (no name lookups:
//! a static binary has no NSS, and the image may not know the sandbox's uid).

use std::ffi::OsString;
use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};

/// Why an export stopped.
#[derive(Debug)]
pub(crate) enum Error {
    /// The archive would pass the size cap; no more than the cap was written.
    TooBig,
    /// Writing the archive (or reading a file mid-way) failed.
    Io(io::Error),
}

/// Writes the tree under `root` (not `root` itself) to `out` as a tar archive of at most
/// `max_bytes`, end blocks included. `skipped` hears of each path left out because it could
/// not be read (a file or folder without read permission, one that vanished meanwhile).
pub(crate) fn export<W: Write>(
    root: &Path,
    out: W,
    max_bytes: u64,
    mut skipped: impl FnMut(&Path, &io::Error),
) -> Result<(), Error> {
    let mut tar = tar::Builder::new(Capped {
        inner: out,
        written: 0,
        max: max_bytes,
        over: false,
    });
    let result = walk(root, &mut tar, &mut skipped).and_then(|()| {
        tar.finish()?;
        tar.get_mut().flush()
    });
    let over = tar.get_ref().over;
    if result.is_err() {
        // The builder writes its end blocks when dropped: no half archive may look whole.
        tar.get_mut().max = 0;
    }
    match result {
        Ok(()) => Ok(()),
        Err(_) if over => Err(Error::TooBig),
        Err(e) => Err(Error::Io(e)),
    }
}

fn walk<W: Write>(
    root: &Path,
    tar: &mut tar::Builder<Capped<W>>,
    skipped: &mut impl FnMut(&Path, &io::Error),
) -> io::Result<()> {
    // Folders still to list, relative to root, the next one last.
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let dir = root.join(&rel);
        let listing = match fs::read_dir(&dir) {
            Ok(listing) => listing,
            Err(e) => {
                skipped(&dir, &e);
                continue;
            }
        };
        // As os.walk sorts them: a symlink to a folder counts as a folder (but is not entered).
        let (mut dirs, mut files): (Vec<OsString>, Vec<OsString>) = (Vec::new(), Vec::new());
        for entry in listing.flatten() {
            let is_dir = match entry.file_type() {
                Ok(t) if t.is_symlink() => fs::metadata(entry.path()).is_ok_and(|m| m.is_dir()),
                Ok(t) => t.is_dir(),
                Err(_) => false,
            };
            if is_dir { &mut dirs } else { &mut files }.push(entry.file_name());
        }
        dirs.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        files.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in dirs.iter().chain(&files) {
            add(root, &rel.join(name), tar, skipped)?;
        }
        for name in dirs.iter().rev() {
            let sub = rel.join(name);
            if fs::symlink_metadata(root.join(&sub)).is_ok_and(|m| m.is_dir()) {
                pending.push(sub);
            }
        }
    }
    Ok(())
}

/// Appends the one entry at `root/rel`, unless it is of a kind left out or cannot be read.
fn add<W: Write>(
    root: &Path,
    rel: &Path,
    tar: &mut tar::Builder<Capped<W>>,
    skipped: &mut impl FnMut(&Path, &io::Error),
) -> io::Result<()> {
    let path = root.join(rel);
    let meta = match fs::symlink_metadata(&path) {
        Ok(meta) => meta,
        Err(e) => {
            skipped(&path, &e);
            return Ok(());
        }
    };
    let kind = meta.file_type();
    if kind.is_dir() {
        let mut name = rel.as_os_str().as_bytes().to_vec();
        name.push(b'/');
        let header = Headers::new(EntryType::Directory, &name, None, &meta, 0);
        header.append(tar, io::empty())
    } else if kind.is_symlink() {
        let target = match fs::read_link(&path) {
            Ok(target) => target,
            Err(e) => {
                skipped(&path, &e);
                return Ok(());
            }
        };
        let name = rel.as_os_str().as_bytes();
        let link = Some(target.as_os_str().as_bytes());
        let header = Headers::new(EntryType::Symlink, name, link, &meta, 0);
        header.append(tar, io::empty())
    } else if kind.is_file() {
        // Not following a link or blocking on a FIFO that replaced the file since its lstat.
        let opened = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
            .and_then(|file| Ok((file.metadata()?, file)));
        let (meta, file) = match opened {
            Ok((meta, _)) if !meta.is_file() => return Ok(()),
            Ok(opened) => opened,
            Err(e) => {
                skipped(&path, &e);
                return Ok(());
            }
        };
        let size = meta.len();
        // A file the cap cannot hold is not read at all.
        let cap = tar.get_ref();
        if cap.written.saturating_add(512).saturating_add(size) > cap.max {
            tar.get_mut().over = true;
            return Err(io::Error::other("over the size cap"));
        }
        let header = Headers::new(
            EntryType::Regular,
            rel.as_os_str().as_bytes(),
            None,
            &meta,
            size,
        );
        // Exactly `size` bytes, whatever the file does meanwhile: cut if it grew, zeros if it shrank.
        header.append(tar, file_exactly(file, size))
    } else {
        Ok(()) // sockets, FIFOs, devices
    }
}

fn file_exactly(file: File, size: u64) -> impl Read {
    file.take(size).chain(io::repeat(0)).take(size)
}

/// One entry's ustar header and the PAX records for what does not fit in it.
struct Headers {
    header: Header,
    pax: Vec<(&'static str, Vec<u8>)>,
}

/// The largest values ustar's octal fields hold (7 and 11 digits).
const MAX_ID: u64 = 0o7_777_777;
const MAX_BIG: u64 = 0o77_777_777_777;

impl Headers {
    fn new(kind: EntryType, name: &[u8], link: Option<&[u8]>, meta: &Metadata, size: u64) -> Self {
        let mut header = Header::new_ustar();
        let mut pax = Vec::new();
        header.set_entry_type(kind);
        header.set_mode(meta.mode() & 0o7777);
        if header
            .set_path(Path::new(std::ffi::OsStr::from_bytes(name)))
            .is_err()
        {
            pax.push(("path", name.to_vec()));
            let field = &mut header.as_old_mut().name;
            let cut = name.len().min(field.len());
            field.fill(0);
            field[..cut].copy_from_slice(&name[..cut]);
        }
        if let Some(link) = link {
            if header
                .set_link_name(Path::new(std::ffi::OsStr::from_bytes(link)))
                .is_err()
            {
                pax.push(("linkpath", link.to_vec()));
                let field = &mut header.as_old_mut().linkname;
                let cut = link.len().min(field.len());
                field.fill(0);
                field[..cut].copy_from_slice(&link[..cut]);
            }
        }
        let mut number = |key: &'static str, value: u64, max: u64| -> u64 {
            if value > max {
                pax.push((key, value.to_string().into_bytes()));
                0
            } else {
                value
            }
        };
        header.set_uid(number("uid", meta.uid().into(), MAX_ID));
        header.set_gid(number("gid", meta.gid().into(), MAX_ID));
        header.set_size(number("size", size, MAX_BIG));
        match u64::try_from(meta.mtime()) {
            Ok(mtime) => header.set_mtime(number("mtime", mtime, MAX_BIG)),
            Err(_) => {
                pax.push(("mtime", meta.mtime().to_string().into_bytes()));
                header.set_mtime(0);
            }
        }
        header.set_cksum();
        Headers { header, pax }
    }

    fn append<W: Write>(self, tar: &mut tar::Builder<W>, data: impl Read) -> io::Result<()> {
        if !self.pax.is_empty() {
            let mut records = Vec::new();
            if self
                .pax
                .iter()
                .any(|(_, v)| std::str::from_utf8(v).is_err())
            {
                records.extend(pax_record("hdrcharset", b"BINARY"));
            }
            for (key, value) in &self.pax {
                records.extend(pax_record(key, value));
            }
            let mut x = Header::new_ustar();
            x.set_entry_type(EntryType::XHeader);
            // Python's name for it (set_path would drop the "./").
            x.as_old_mut().name[..14].copy_from_slice(b"././@PaxHeader");
            x.set_mode(0o644);
            x.set_size(records.len() as u64);
            x.set_cksum();
            tar.append(&x, records.as_slice())?;
        }
        tar.append(&self.header, data)
    }
}

/// `"<len> key=value\n"`, where len counts the whole record, its own digits included.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = rest + rest.to_string().len();
    if len.to_string().len() > rest.to_string().len() {
        len += 1;
    }
    let mut record = format!("{len} {key}=").into_bytes();
    record.extend_from_slice(value);
    record.push(b'\n');
    record
}

/// A writer that refuses any write taking it past `max` bytes (and remembers it did).
struct Capped<W> {
    inner: W,
    written: u64,
    max: u64,
    over: bool,
}

impl<W: Write> Write for Capped<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written.saturating_add(buf.len() as u64) > self.max {
            self.over = true;
            return Err(io::Error::other("over the size cap"));
        }
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_records_count_their_own_length() {
        for value in ["x", &"y".repeat(90), &"z".repeat(994), &"w".repeat(9_990)] {
            let record = pax_record("path", value.as_bytes());
            let text = String::from_utf8(record.clone()).unwrap();
            let (len, _) = text.split_once(' ').unwrap();
            assert_eq!(len.parse::<usize>().unwrap(), record.len(), "{text:?}");
        }
    }
}
