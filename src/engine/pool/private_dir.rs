//! The pool's private directory: where spawned workers put their handshake sockets.
//!
//! ipc-channel names a one-shot server's socket by a path in the temp directory. A path
//! that another local user can reach is a way into the pool, so every pool makes one
//! directory of its own, `$TMPDIR/procpool-<pid>-<random>`, mode 0700 whatever the umask,
//! owned by us (checked after creation), and workers are started with `TMPDIR` pointing
//! into it. Nobody but our own user can enter it, so nobody else can reach a socket in it.
//!
//! The directory goes away with the pool. If procpool is killed by SIGKILL, it stays; the
//! next pool in this temp directory removes every `procpool-<pid>-*` directory of ours
//! whose process no longer exists (never one of another user, never through a symlink).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// Longest socket path the kernel takes: `sun_path` holds 108 bytes with the final NUL.
/// ipc-channel cuts a longer path short without a word, so procpool refuses it up front.
pub(crate) const SOCKET_PATH_MAX: usize = 107;
/// What a worker's one-shot server adds to the directory: `/.tmpXXXXXX/socket`.
const SERVER_SUFFIX: &str = "/.tmpXXXXXX/socket";
/// The name every private directory starts with.
const PREFIX: &str = "procpool-";

/// A 0700 directory that lives as long as its pool.
#[derive(Debug)]
pub(crate) struct PrivateDir {
    dir: tempfile::TempDir,
}

impl PrivateDir {
    /// Sweeps what killed pools left in the temp directory, then creates this pool's own.
    pub(crate) fn create() -> Result<Self> {
        let parent = std::env::temp_dir();
        sweep(&parent);
        let made = tempfile::Builder::new()
            .prefix(&format!("{PREFIX}{}-", std::process::id()))
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir_in(&parent)
            .map_err(|e| unusable(&parent, &e.to_string()))?;
        // The umask may have taken bits away from the owner; set exactly rwx------.
        std::fs::set_permissions(made.path(), std::fs::Permissions::from_mode(0o700))
            .map_err(|e| unusable(&parent, &e.to_string()))?;
        let meta = std::fs::symlink_metadata(made.path())
            .map_err(|e| unusable(&parent, &e.to_string()))?;
        if !meta.is_dir()
            || meta.uid() != nix::unistd::geteuid().as_raw()
            || meta.mode() & 0o777 != 0o700
        {
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
        Ok(PrivateDir { dir: made })
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Whether `socket`, a path a worker reported, is a socket of our own user inside this
    /// directory. procpool connects to nothing else.
    pub(crate) fn holds_socket(&self, socket: &Path) -> bool {
        let plain = socket
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        if !plain || !socket.starts_with(self.dir.path()) {
            return false;
        }
        use std::os::unix::fs::FileTypeExt;
        std::fs::symlink_metadata(socket)
            .is_ok_and(|m| m.file_type().is_socket() && m.uid() == nix::unistd::geteuid().as_raw())
    }
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
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    let me = nix::unistd::geteuid().as_raw();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(owner_pid) else {
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

/// The pid in a name `procpool-<pid>-<random>`.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
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
        assert_eq!(owner_pid("procpool-123-abcdef"), Some(123));
        assert_eq!(owner_pid("procpool-123-"), None);
        assert_eq!(owner_pid("procpool-0-x"), None);
        assert_eq!(owner_pid("procpool-x-y"), None);
        assert_eq!(owner_pid("other-1-y"), None);
    }

    #[test]
    fn the_directory_is_private_and_holds_only_real_sockets_inside_it() {
        let dir = PrivateDir::create().expect("private dir");
        let meta = std::fs::metadata(dir.path()).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o700);
        let inside = dir.path().join("socket");
        let listener = std::os::unix::net::UnixListener::bind(&inside).unwrap();
        assert!(dir.holds_socket(&inside));
        assert!(!dir.holds_socket(&dir.path().join("../socket")));
        assert!(!dir.holds_socket(Path::new("/etc/passwd")));
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(!dir.holds_socket(&file));
        drop(listener);
        let path = dir.path().to_path_buf();
        drop(dir);
        assert!(!path.exists(), "the directory goes with its pool");
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
