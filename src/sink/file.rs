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
    /// A sink writing below `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> FileSink {
        FileSink { root: root.into() }
    }
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
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    for record in records {
        file.write_all(record)?;
    }
    file.sync_all()?;
    drop(file);
    let path = dir.join(name);
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(&dir)?.sync_all()?;
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
