//! One process per queue directory.
//!
//! sled 0.34 locks its own `db` file too, but only once it has opened, and its lock error looks
//! like any other open error: a second process (an overlapping deploy on one volume) used to
//! take it for damage and move the *running* instance's live queue aside. This lock is ours,
//! taken before sled opens, with the holder's pid written in it for the error message.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use super::QueueError;

/// Name of the lock file inside `queue.path`.
pub const LOCK_FILE: &str = "firehose-edge.lock";

/// An exclusive `flock` on `queue.path/firehose-edge.lock`, held for the life of the queue
/// (released by the kernel when the process dies, however it dies).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock of `dir` (created if missing), or says who holds it.
    pub fn acquire(dir: &Path) -> Result<DirLock, QueueError> {
        let io = |e: std::io::Error| QueueError::Io {
            path: dir.to_path_buf(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(QueueError::InUse {
                    path: dir.to_path_buf(),
                    holder: holder.trim().to_owned(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        // Best effort: the pid only serves the message of a process that is refused.
        let _ = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| write!(file, "pid {}", std::process::id()));
        Ok(DirLock { _file: file })
    }
}

/// The path of the lock file of `dir` (kept out of what is moved aside or verified).
pub fn lock_path(dir: &Path) -> PathBuf {
    dir.join(LOCK_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_pid() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path()).unwrap();
        let err = DirLock::acquire(dir.path()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        drop(first);
        DirLock::acquire(dir.path()).expect("released with its holder");
    }
}
