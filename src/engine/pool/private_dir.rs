//! The pool's private directory: where spawned workers put their handshake sockets.
//!
//! ipc-channel names a one-shot server's socket by a path in the temp directory. A path
//! that another local user can reach is a way into the pool, so every pool makes one
//! directory of its own, `$TMPDIR/procpool-<pid>-<random>`, mode 0700 whatever the umask,
//! owned by us (checked through a descriptor after creation), and workers are started with
//! `TMPDIR` pointing into it. Nobody but our own user can enter it, so nobody else can reach
//! a socket in it.
//!
//! Its *name* is another matter: whoever may write the temp directory may rename it and put
//! a directory of their own under that name. So a temp directory every user can write
//! without the sticky bit is refused; the directory's device and inode are recorded when it
//! is made; a worker checks its directory against them through a descriptor before it binds
//! (and after, that its socket is in it), and procpool looks a reported socket up through
//! the directory's own descriptor, never by name alone.
//!
//! The directory goes away with the pool. If procpool is killed by SIGKILL, it stays; the
//! next pool in this temp directory removes every `procpool-<pid>-*` directory of ours
//! whose process no longer exists (never one of another user, never through a symlink).

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use crate::engine::worker::{SERVER_SUFFIX, SOCKET_PATH_MAX};
use crate::error::{Error, Result};

/// The name every private directory starts with.
const PREFIX: &str = "procpool-";

/// A 0700 directory that lives as long as its pool.
#[derive(Debug)]
pub(crate) struct PrivateDir {
    path: PathBuf,
    /// The directory itself, open: sockets are looked up and reached through it, so a
    /// directory put under its name later is never taken for it.
    fd: OwnedFd,
    /// Device and inode of the directory procpool made, as recorded when it made it.
    id: (u64, u64),
}

/// Why a socket path a worker reported is not one procpool connects to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Misplaced {
    /// Not `<private directory>/<server directory>/socket`.
    Outside,
    /// The private directory's name leads to another directory than the one procpool made.
    Replaced,
    /// In place, but not a socket of our user in a directory of our user.
    NotOurs,
}

impl PrivateDir {
    /// Sweeps what killed pools left in the temp directory, then creates this pool's own.
    pub(crate) fn create() -> Result<Self> {
        let parent = std::env::temp_dir();
        refuse_unsafe_parent(&parent)?;
        sweep(&parent);
        let made = tempfile::Builder::new()
            .prefix(&format!("{PREFIX}{}-", std::process::id()))
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir_in(&parent)
            .map_err(|e| unusable(&parent, &e.to_string()))?;
        let fd = open_dir(made.path()).map_err(|e| unusable(&parent, &e.to_string()))?;
        // The umask may have taken bits away from the owner; set exactly rwx------.
        nix::sys::stat::fchmod(&fd, nix::sys::stat::Mode::S_IRWXU)
            .map_err(|e| unusable(&parent, &e.to_string()))?;
        let meta = nix::sys::stat::fstat(&fd).map_err(|e| unusable(&parent, &e.to_string()))?;
        if meta.st_uid != nix::unistd::geteuid().as_raw() || meta.st_mode & 0o7777 != 0o700 {
            return Err(unusable(
                &parent,
                "the directory procpool created is not a private directory of its own",
            ));
        }
        let longest = made.path().as_os_str().len() + SERVER_SUFFIX.len();
        if longest > SOCKET_PATH_MAX {
            let tmpdir = parent.display();
            return Err(Error::invalid_input(format!(
                "TMPDIR ({tmpdir}, {} bytes) is too long for the workers' handshake sockets: \
                 a socket path holds at most {SOCKET_PATH_MAX} bytes and procpool needs {} \
                 more; set TMPDIR to a directory of at most {} bytes, such as /tmp",
                parent.as_os_str().len(),
                longest - parent.as_os_str().len(),
                parent.as_os_str().len() - (longest - SOCKET_PATH_MAX)
            )));
        }
        Ok(PrivateDir {
            path: made.keep(),
            fd,
            id: (meta.st_dev as u64, meta.st_ino as u64),
        })
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Device and inode of the directory, as `DEVICE:INODE`: what a worker checks its
    /// directory against before it binds a socket there.
    pub(crate) fn identity(&self) -> String {
        format!("{}:{}", self.id.0, self.id.1)
    }

    /// Where to connect to `socket`, a path a worker reported, if it is a socket of our own
    /// user in a server directory of our own user inside this very directory (by device
    /// and inode, not by name). `Ok(None)`: no such socket (any more): the worker is ending.
    /// The path returned reaches the socket through this directory's descriptor when
    /// `/proc` allows, so a rename after this check changes nothing.
    pub(crate) fn locate(&self, socket: &Path) -> std::result::Result<Option<PathBuf>, Misplaced> {
        let plain = socket
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        let inside = socket.strip_prefix(&self.path).ok().filter(|_| plain);
        let Some(inside) = inside.filter(|p| p.components().count() == 2) else {
            return Err(Misplaced::Outside);
        };
        if inside.file_name() != Some(std::ffi::OsStr::new("socket")) {
            return Err(Misplaced::Outside);
        }
        // The reported socket's directory's parent must be the directory procpool made.
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.is_dir() && (m.dev(), m.ino()) == self.id => {}
            // Removed, and the socket with it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            _ => return Err(Misplaced::Replaced),
        }
        use nix::sys::stat::SFlag;
        let me = nix::unistd::geteuid().as_raw();
        let server_dir = inside.parent().unwrap_or(Path::new(""));
        for (path, kind) in [(server_dir, SFlag::S_IFDIR), (inside, SFlag::S_IFSOCK)] {
            match nix::sys::stat::fstatat(&self.fd, path, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
            {
                Ok(m)
                    if SFlag::from_bits_truncate(m.st_mode) & SFlag::S_IFMT == kind
                        && m.st_uid == me => {}
                Err(nix::errno::Errno::ENOENT) => return Ok(None),
                _ => return Err(Misplaced::NotOurs),
            }
        }
        let through_fd = PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()));
        let reachable = std::fs::metadata(&through_fd).is_ok_and(|m| (m.dev(), m.ino()) == self.id);
        Ok(Some(if reachable {
            through_fd.join(inside)
        } else {
            socket.to_path_buf()
        }))
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        // By name, only while the name still leads to our directory: never a directory
        // someone else put in its place.
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.is_dir() && (m.dev(), m.ino()) == self.id);
        if ours {
            // remove_dir_all does not follow symlinks inside the tree.
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Opens a directory itself, never a symbolic link in its place.
fn open_dir(path: &Path) -> nix::Result<OwnedFd> {
    use nix::fcntl::OFlag;
    nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
}

/// Refuses a temp directory every user can write without the sticky bit: there, anyone
/// may rename procpool's private directory and put their own under its name.
fn refuse_unsafe_parent(parent: &Path) -> Result<()> {
    let Ok(meta) = std::fs::metadata(parent) else {
        // Creating the private directory fails and says why.
        return Ok(());
    };
    if meta.mode() & 0o002 != 0 && meta.mode() & 0o1000 == 0 {
        let shown = parent.display();
        return Err(Error::invalid_input(format!(
            "TMPDIR ({shown}) can be written by every user and lacks the sticky bit, so another \
             user could replace procpool's private directory in it: run `chmod +t {shown}` or \
             set TMPDIR to a directory of your own, such as /tmp"
        )));
    }
    Ok(())
}

fn unusable(parent: &Path, why: &str) -> Error {
    Error::Io(std::io::Error::other(format!(
        "cannot create the workers' private socket directory in {} ({why}): set TMPDIR to a \
         writable directory",
        parent.display()
    )))
}

/// Removes the private directories of pools whose process is gone: ours only (owner
/// checked, symlinks never followed), and never one of a live process.
fn sweep(parent: &Path) {
    sweep_abandoned(parent, PREFIX);
}

/// Removes the directories `<prefix><pid>-<random>` in `parent` whose process is gone:
/// ours only (owner checked, symlinks never followed), and never one of a live process.
/// What a SIGKILLed procpool leaves (its pool's socket directory, its mpirun's run
/// directory) is removed this way by the next run.
pub(crate) fn sweep_abandoned(parent: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    let me = nix::unistd::geteuid().as_raw();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| owner_pid(n, prefix)) else {
            continue;
        };
        if pid == std::process::id() || process_exists(pid) {
            continue;
        }
        let path: PathBuf = entry.path();
        let ours = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir() && m.uid() == me);
        if ours {
            // A directory that cannot be removed now is tried again by the next pool.
            // remove_dir_all does not follow symlinks inside the tree.
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// The pid in a name `<prefix><pid>-<random>`.
fn owner_pid(name: &str, prefix: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?;
    let (pid, random) = rest.split_once('-')?;
    if random.is_empty() {
        return None;
    }
    pid.parse().ok().filter(|&p| p > 0)
}

fn process_exists(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    // Signal 0 checks existence only. EPERM: it exists, as another user's.
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None) {
        Ok(()) => true,
        Err(e) => e != nix::errno::Errno::ESRCH,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_give_their_pid() {
        assert_eq!(owner_pid("procpool-123-abcdef", PREFIX), Some(123));
        assert_eq!(owner_pid("procpool-123-", PREFIX), None);
        assert_eq!(owner_pid("procpool-0-x", PREFIX), None);
        assert_eq!(owner_pid("procpool-x-y", PREFIX), None);
        assert_eq!(owner_pid("other-1-y", PREFIX), None);
    }

    #[test]
    fn the_directory_is_private_and_only_real_sockets_inside_it_are_reached() {
        let dir = PrivateDir::create().expect("private dir");
        let meta = std::fs::metadata(dir.path()).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o700);
        assert_eq!(dir.identity(), format!("{}:{}", meta.dev(), meta.ino()));
        let server = dir.path().join(".tmpabc123");
        std::fs::create_dir(&server).unwrap();
        let inside = server.join("socket");
        let listener = std::os::unix::net::UnixListener::bind(&inside).unwrap();
        let reached = dir.locate(&inside).unwrap().expect("the socket is there");
        assert!(std::os::unix::net::UnixStream::connect(&reached).is_ok());
        assert_eq!(
            dir.locate(&server.join("..").join("x").join("socket")),
            Err(Misplaced::Outside)
        );
        // Gone: the worker is ending.
        assert_eq!(dir.locate(&dir.path().join(".tmpnone/socket")), Ok(None));
        assert_eq!(
            dir.locate(&dir.path().join("socket")),
            Err(Misplaced::Outside)
        );
        assert_eq!(
            dir.locate(Path::new("/etc/passwd")),
            Err(Misplaced::Outside)
        );
        let file_dir = dir.path().join(".tmpfile");
        std::fs::create_dir(&file_dir).unwrap();
        std::fs::write(file_dir.join("socket"), b"x").unwrap();
        assert_eq!(
            dir.locate(&file_dir.join("socket")),
            Err(Misplaced::NotOurs)
        );
        drop(listener);
        let path = dir.path().to_path_buf();
        drop(dir);
        assert!(!path.exists(), "the directory goes with its pool");
    }

    #[test]
    fn a_directory_put_under_the_private_directorys_name_is_neither_used_nor_removed() {
        let dir = PrivateDir::create().expect("private dir");
        let server = dir.path().join(".tmpabc123");
        std::fs::create_dir(&server).unwrap();
        let _listener = std::os::unix::net::UnixListener::bind(server.join("socket")).unwrap();
        let moved = dir.path().with_extension("moved");
        std::fs::rename(dir.path(), &moved).unwrap();
        std::fs::create_dir(dir.path()).unwrap();
        std::fs::create_dir(&server).unwrap();
        assert_eq!(dir.locate(&server.join("socket")), Err(Misplaced::Replaced));
        let path = dir.path().to_path_buf();
        drop(dir);
        assert!(server.exists(), "the impostor is not ours to remove");
        std::fs::remove_dir_all(&path).unwrap();
        std::fs::remove_dir_all(&moved).unwrap();
    }

    #[test]
    fn a_dead_pools_directory_is_swept_and_a_live_one_kept() {
        let parent = tempfile::tempdir().unwrap();
        // A pid that is surely gone: a child we reaped.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let stale = parent.path().join(format!("procpool-{dead}-abc123"));
        std::fs::create_dir_all(stale.join(".tmpX")).unwrap();
        let live = parent
            .path()
            .join(format!("procpool-{}-abc123", std::process::id()));
        std::fs::create_dir(&live).unwrap();
        let unrelated = parent.path().join("procpool-notes");
        std::fs::create_dir(&unrelated).unwrap();
        sweep(parent.path());
        assert!(!stale.exists());
        assert!(live.exists());
        assert!(unrelated.exists());
    }
}
