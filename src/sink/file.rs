//! The file sink: a local lake of NDJSON files laid out like Firehose's S3 prefixes,
//! `<dir>/<stream>/YYYY/MM/DD/HH/<stream>-YYYY-MM-DD-HH-MM-SS-<uuid>.ndjson`, one file a
//! batch. It is the embedded default, so the service runs and can be tested without AWS.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

use super::{RecordOutcome, Sink, SinkError};

/// Writes each batch to a new file, durably, before reporting it accepted.
#[derive(Debug, Clone)]
pub struct FileSink {
    root: PathBuf,
}

impl FileSink {
    /// A sink writing below `root` (created on first write). Temporary files a crash left
    /// there are removed first.
    pub fn new(root: impl Into<PathBuf>) -> FileSink {
        let root = root.into();
        match remove_leftovers(&root) {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(root = %root.display(), files = n, "removed temporary files left by an earlier crash")
            }
            Err(e) => {
                tracing::warn!(root = %root.display(), error = %e, "cannot sweep the lake for leftover temporary files")
            }
        }
        FileSink { root }
    }
}

/// Whether `name` is one of this sink's temporary files (`.<stream>-…-<uuid>.ndjson.tmp`).
fn is_temporary(name: &std::ffi::OsStr) -> bool {
    name.to_str()
        .is_some_and(|n| n.starts_with('.') && n.ends_with(".ndjson.tmp"))
}

/// Removes this sink's temporary files below `root`; returns how many.
fn remove_leftovers(root: &Path) -> std::io::Result<usize> {
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            removed += remove_leftovers(&entry.path())?;
        } else if kind.is_file() && is_temporary(&entry.file_name()) {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[async_trait]
impl Sink for FileSink {
    async fn put_batch(
        &self,
        stream: &str,
        records: Vec<Bytes>,
    ) -> Result<Vec<RecordOutcome>, SinkError> {
        let root = self.root.clone();
        let stream = stream.to_owned();
        let n = records.len();
        tokio::task::spawn_blocking(move || {
            write_batch(&root, &stream, &records, SystemTime::now())
        })
        .await
        .map_err(|e| SinkError::Retriable {
            code: "io".to_owned(),
            message: e.to_string(),
        })?
        .map_err(|e| SinkError::Retriable {
            code: "io".to_owned(),
            message: e.to_string(),
        })?;
        Ok(vec![RecordOutcome::Accepted; n])
    }
}

/// Writes the records to a hidden temporary file, syncs it, renames it into place and syncs
/// the directory: a reader never sees a partial file, and a crash after `Ok` loses nothing.
fn write_batch(
    root: &Path,
    stream: &str,
    records: &[Bytes],
    now: SystemTime,
) -> std::io::Result<PathBuf> {
    // "2026-11-24T08:56:02.123Z": fixed positions, so slicing is exact.
    let t = humantime::format_rfc3339_millis(now).to_string();
    let (y, mo, d, h, mi, s) = (
        &t[0..4],
        &t[5..7],
        &t[8..10],
        &t[11..13],
        &t[14..16],
        &t[17..19],
    );
    let dir = root.join(stream).join(y).join(mo).join(d).join(h);
    std::fs::create_dir_all(&dir)?;
    let name = format!(
        "{stream}-{y}-{mo}-{d}-{h}-{mi}-{s}-{}.ndjson",
        uuid::Uuid::now_v7()
    );
    write_file(&dir, &name, records)
}

/// Writes `records` to `dir/name` through a hidden temporary file (removed if anything
/// fails), then syncs the directory.
fn write_file(dir: &Path, name: &str, records: &[Bytes]) -> std::io::Result<PathBuf> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        for record in records {
            file.write_all(record)?;
        }
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, &path)
    })();
    if let Err(e) = written {
        // A full lake disk must not fill up further with half-written files.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::File::open(dir)?.sync_all()?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn batches_land_as_complete_files_under_the_firehose_layout() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FileSink::new(dir.path());
        let out = sink
            .put_batch(
                "s",
                vec![Bytes::from_static(b"a\n"), Bytes::from_static(b"b\nc\n")],
            )
            .await
            .unwrap();
        assert_eq!(out, vec![RecordOutcome::Accepted; 2]);

        let when = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let path = write_batch(dir.path(), "s", &[Bytes::from_static(b"x\n")], when).unwrap();
        let rel = path
            .strip_prefix(dir.path())
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            rel.starts_with("s/2023/11/14/22/s-2023-11-14-22-13-20-"),
            "{rel}"
        );
        assert!(rel.ends_with(".ndjson"));
        assert_eq!(std::fs::read(&path).unwrap(), b"x\n");
        let tmp_left = walk(dir.path())
            .iter()
            .any(|p| p.to_string_lossy().ends_with(".tmp"));
        assert!(!tmp_left);
        let all: Vec<u8> = walk(&dir.path().join("s"))
            .iter()
            .flat_map(|p| std::fs::read(p).unwrap())
            .collect();
        assert_eq!(all.len(), "a\nb\nc\nx\n".len());
    }

    #[test]
    fn a_failed_write_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let hour = dir.path().join("s/2026/11/24/08");
        // A non-empty directory where the file should go makes rename(2) fail (as root too),
        // after the temporary file was written and synced.
        std::fs::create_dir_all(hour.join("blocked.ndjson/x")).unwrap();
        let result = write_file(&hour, "blocked.ndjson", &[Bytes::from_static(b"b\n")]);
        assert!(result.is_err());
        let left: Vec<_> = walk(dir.path())
            .into_iter()
            .filter(|p| p.to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn temporary_files_left_by_a_crash_are_removed_at_start_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let hour = dir.path().join("s/2026/11/24/08");
        std::fs::create_dir_all(&hour).unwrap();
        std::fs::write(hour.join(".s-2026-11-24-08-00-00-x.ndjson.tmp"), b"half").unwrap();
        std::fs::write(hour.join("s-2026-11-24-08-00-00-y.ndjson"), b"whole\n").unwrap();
        std::fs::write(hour.join(".other"), b"not ours").unwrap();
        let _sink = FileSink::new(dir.path());
        let mut names: Vec<String> = std::fs::read_dir(&hour)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [".other", "s-2026-11-24-08-00-00-y.ndjson"]);
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
        out
    }
}
