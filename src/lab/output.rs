//! Writing a file the user named (the streamed output, a trace, a timeline, a sweep's plot
//! or export, a picture) without ever clobbering what is there.
//!
//! Three promises, kept in one place so every output keeps them:
//!
//! - **Nothing is replaced until the new file is complete and wanted.** A regular file (or
//!   a new name) is written as a new file in the same directory and renamed over the path
//!   only by [`OutputFile::persist`]; dropping an [`OutputFile`] instead leaves an older
//!   file of that name as it was, and no temporary file. The new file is unnamed
//!   (`O_TMPFILE`) where the file system allows it, so even SIGKILL leaves nothing behind;
//!   elsewhere it has a temporary name (`.procpool-…`, created exclusively and private until
//!   it is renamed). Where neither is possible (the file may be written but not its
//!   directory), the path is refused: an older file is never truncated.
//! - **A special file is written in place, never replaced.** A character or block device
//!   (`/dev/null`, `/dev/full`) or a FIFO is opened for writing as it is. A FIFO is opened
//!   without waiting for a reader: with no reader, opening fails at once (nothing hangs).
//!   A directory or a socket is refused.
//! - **Two outputs are never the same file**, and none is the running executable
//!   ([`check_distinct`]).
//!
//! Problems show when the file is opened, so a caller that opens its outputs before
//! starting any work refuses a bad path (a missing directory, a name too long) up front.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// The prefix of the temporary names procpool gives its outputs before they are renamed.
const TEMP_PREFIX: &str = ".procpool-";

/// A file being written at a path the user named: it replaces what is at the path only
/// when [`OutputFile::persist`] is called (see the [module docs](self)).
#[derive(Debug)]
pub struct OutputFile {
    file: File,
    path: PathBuf,
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// No name yet (`O_TMPFILE`): linked in by `persist`.
    Unnamed,
    /// A temporary name in the target's directory: removed unless persisted.
    Temp(PathBuf),
    /// A device or FIFO that existed before: written in place, never removed.
    InPlace,
    /// Persisted: nothing left to do.
    Done,
}

impl OutputFile {
    /// Opens `path` for writing as described in the [module docs](self). Errors say what
    /// is wrong with the path, without naming it.
    pub fn create(path: &Path) -> io::Result<OutputFile> {
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => {
                return Err(io::Error::new(
                    io::ErrorKind::IsADirectory,
                    "it is a directory: name a file",
                ));
            }
            Ok(meta) if meta.file_type().is_socket() => {
                return Err(io::Error::other(
                    "it is a socket, which cannot be written as a file: name a file, a \
                     device or a FIFO",
                ));
            }
            Ok(meta) if !meta.is_file() => {
                if let Some(file) = open_in_place(path, meta.file_type().is_fifo())? {
                    return Ok(OutputFile {
                        file,
                        path: path.to_path_buf(),
                        kind: Kind::InPlace,
                    });
                }
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound && path.file_name().is_some() => {}
            // A name too long, a parent that is not a directory, no search permission:
            // said now, not after the work.
            Err(e) => return Err(e),
        }
        let dir = directory_of(path);
        // Linking an unnamed file in goes through /proc/self/fd; without /proc, use a name.
        let unnamed = Path::new("/proc/self/fd").is_dir().then(|| {
            OpenOptions::new()
                .write(true)
                .mode(0o666)
                .custom_flags(libc::O_TMPFILE)
                .open(dir)
        });
        if let Some(Ok(file)) = unnamed {
            return Ok(OutputFile {
                file,
                path: path.to_path_buf(),
                kind: Kind::Unnamed,
            });
        }
        let (file, temp) = create_temp(dir).map_err(|e| refusal(path, dir, e))?;
        Ok(OutputFile {
            file,
            path: path.to_path_buf(),
            kind: Kind::Temp(temp),
        })
    }

    /// Opens `path` as [`OutputFile::create`] does, writes `bytes` and persists: for an
    /// output written whole.
    pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut file = OutputFile::create(path)?;
        file.write_all(bytes)?;
        file.persist()
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The path it was opened for.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Gives the finished file its name, replacing any older file there (a device or FIFO
    /// was written in place: nothing to do).
    pub fn persist(mut self) -> io::Result<()> {
        self.file.flush()?;
        match std::mem::replace(&mut self.kind, Kind::Done) {
            Kind::Unnamed => {
                let dir = directory_of(&self.path);
                let proc_path = format!("/proc/self/fd/{}", self.file.as_raw_fd());
                let (temp, linked) = with_temp_name(dir, |temp| {
                    nix::unistd::linkat(
                        nix::fcntl::AT_FDCWD,
                        proc_path.as_str(),
                        nix::fcntl::AT_FDCWD,
                        temp,
                        nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
                    )
                    .map_err(io::Error::from)
                });
                linked?;
                rename_or_remove(&temp, &self.path)
            }
            Kind::Temp(temp) => {
                // Private while incomplete; now readable as any file the user writes.
                let mode = 0o666 & !umask();
                if let Err(e) = self
                    .file
                    .set_permissions(std::fs::Permissions::from_mode(mode))
                {
                    let _ = std::fs::remove_file(&temp);
                    return Err(e);
                }
                rename_or_remove(&temp, &self.path)
            }
            Kind::InPlace | Kind::Done => Ok(()),
        }
    }
}

impl Write for OutputFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for OutputFile {
    fn drop(&mut self) {
        if let Kind::Temp(temp) = &self.kind {
            let _ = std::fs::remove_file(temp);
        }
    }
}

/// The directory a new file at `path` goes in.
fn directory_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Opens an existing device or FIFO for writing where it is: no `O_CREAT`, no `O_TRUNC`,
/// and no waiting for a FIFO's reader. `None` if the path became a regular file meanwhile.
fn open_in_place(path: &Path, fifo: bool) -> io::Result<Option<File>> {
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENXIO) if fifo => io::Error::new(
                io::ErrorKind::WouldBlock,
                "a FIFO with no reader: start the program that reads it first",
            ),
            _ => e,
        })?;
    if file.metadata()?.is_file() {
        return Ok(None);
    }
    // Written like any file from here: a full FIFO waits for its reader.
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(&file, FcntlArg::F_GETFL)?);
    fcntl(&file, FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK))?;
    Ok(Some(file))
}

/// Calls `make` with fresh temporary names in `dir` until one is free (`EEXIST` means a
/// name is taken); returns the name and `make`'s result.
fn with_temp_name<T>(
    dir: &Path,
    mut make: impl FnMut(&Path) -> io::Result<T>,
) -> (PathBuf, io::Result<T>) {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let temp = dir.join(format!("{TEMP_PREFIX}{}-{n}", std::process::id()));
        match make(&temp) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 1000 => continue,
            result => return (temp, result),
        }
    }
}

/// A new private file under a temporary name in `dir`, for a file system without
/// `O_TMPFILE`: created exclusively (never an existing file), mode 0600 until persisted.
fn create_temp(dir: &Path) -> io::Result<(File, PathBuf)> {
    let (temp, file) = with_temp_name(dir, |temp| {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(temp)
    });
    Ok((file?, temp))
}

/// Renames `temp` over `path`; on failure removes `temp`.
fn rename_or_remove(temp: &Path, path: &Path) -> io::Result<()> {
    std::fs::rename(temp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(temp);
    })
}

/// Why no new file can be made beside `path`, and what to do.
fn refusal(path: &Path, dir: &Path, e: io::Error) -> io::Error {
    let writable = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .is_ok();
    if !writable {
        return e;
    }
    io::Error::new(
        e.kind(),
        format!(
            "cannot create a new file in {} ({e}): procpool writes a new file beside the old one \
             and replaces it only once complete, so it never truncates it; make the directory \
             writable or choose another path",
            dir.display()
        ),
    )
}

/// This process's file-mode creation mask, read without changing it (0o022 if unknown).
fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("Umask:"))?;
            u32::from_str_radix(line["Umask:".len()..].trim(), 8).ok()
        })
        .unwrap_or(0o022)
}

/// What a path names, for telling whether two paths are the same file: the file's device
/// and inode when it exists, else its directory's canonical path and its name.
#[derive(Debug, PartialEq, Eq)]
enum Identity {
    Inode(u64, u64),
    Name(PathBuf, std::ffi::OsString),
}

fn identity(path: &Path) -> Option<Identity> {
    if let Ok(meta) = std::fs::metadata(path) {
        return Some(Identity::Inode(meta.dev(), meta.ino()));
    }
    let dir = std::fs::canonicalize(directory_of(path)).ok()?;
    Some(Identity::Name(dir, path.file_name()?.to_os_string()))
}

/// Refuses outputs that are the same file, or the running executable: `outputs` are
/// pairs of a name for the user (a flag, `--trace`) and the path given. Paths that exist
/// are compared by device and inode (a link or another spelling is the same file), others
/// by their directory's canonical path and their name. A character device (`/dev/null`)
/// may take several outputs.
pub fn check_distinct(outputs: &[(&str, &Path)]) -> Result<()> {
    let special =
        |path: &Path| std::fs::metadata(path).is_ok_and(|m| m.file_type().is_char_device());
    let known: Vec<_> = outputs
        .iter()
        .map(|&(flag, path)| (flag, path, identity(path)))
        .collect();
    let exe = std::env::current_exe().ok().and_then(|exe| identity(&exe));
    for (i, (flag, path, id)) in known.iter().enumerate() {
        let Some(id) = id else { continue };
        if exe.as_ref() == Some(id) {
            return Err(Error::invalid_input(format!(
                "{flag} {}: that is procpool's own executable, which must not be replaced: \
                 choose another path",
                path.display()
            )));
        }
        if special(path) {
            continue;
        }
        if let Some((other, other_path, _)) = known[..i].iter().find(|k| k.2.as_ref() == Some(id)) {
            return Err(Error::invalid_input(format!(
                "{other} {} and {flag} {} are the same file: give each its own path",
                other_path.display(),
                path.display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(TEMP_PREFIX))
            .collect()
    }

    /// The fallback for file systems without `O_TMPFILE`, called directly: the older file
    /// stays as it was until the new one is persisted, and nothing is left when it is not.
    #[test]
    fn a_temporary_name_replaces_the_file_only_when_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        std::fs::write(&path, b"older").unwrap();
        let output = |bytes: &[u8]| {
            let (mut file, temp) = create_temp(dir.path()).unwrap();
            assert_eq!(
                std::fs::metadata(&temp).unwrap().permissions().mode() & 0o777,
                0o600,
                "private while incomplete"
            );
            file.write_all(bytes).unwrap();
            OutputFile {
                file,
                path: path.clone(),
                kind: Kind::Temp(temp),
            }
        };
        // Dropped (a failed or interrupted run): the older file as it was, nothing left.
        drop(output(b"partial"));
        assert_eq!(std::fs::read(&path).unwrap(), b"older");
        assert_eq!(leftovers(dir.path()), Vec::<String>::new());
        // Persisted: the new bytes, readable as any file the user writes.
        output(b"newer").persist().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"newer");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o666 & !umask()
        );
        assert_eq!(leftovers(dir.path()), Vec::<String>::new());
    }

    #[test]
    fn an_unnamed_file_replaces_the_file_only_when_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        std::fs::write(&path, b"older").unwrap();
        let mut file = OutputFile::create(&path).unwrap();
        file.write_all(b"partial").unwrap();
        drop(file);
        assert_eq!(std::fs::read(&path).unwrap(), b"older");
        OutputFile::write(&path, b"newer").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"newer");
        assert_eq!(leftovers(dir.path()), Vec::<String>::new());
    }

    #[test]
    fn the_same_file_twice_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let other_spelling = dir.path().join(".").join("a");
        let b = dir.path().join("b");
        assert!(check_distinct(&[("--x", &a), ("--y", &b)]).is_ok());
        let e = check_distinct(&[("--x", &a), ("--y", &other_spelling)]).unwrap_err();
        assert!(
            e.to_string().contains("--x") && e.to_string().contains("--y"),
            "{e}"
        );
        std::fs::write(&a, b"").unwrap();
        std::fs::hard_link(&a, &b).unwrap();
        assert!(check_distinct(&[("--x", &a), ("--y", &b)]).is_err());
        let dev_null = Path::new("/dev/null");
        assert!(check_distinct(&[("--x", dev_null), ("--y", dev_null)]).is_ok());
        let exe = std::env::current_exe().unwrap();
        let e = check_distinct(&[("--x", &exe)]).unwrap_err();
        assert!(e.to_string().contains("executable"), "{e}");
    }
}
