//! Amazon Data Firehose's documented limits, in one place, so every check, default and test
//! names the same number and the page it comes from.
//!
//! - PutRecordBatch: <https://docs.aws.amazon.com/firehose/latest/APIReference/API_PutRecordBatch.html>
//! - Quotas: <https://docs.aws.amazon.com/firehose/latest/dev/limits.html>
//!
//! Sizes are counted as Firehose counts them: the record's bytes before base64.

/// Most records in one PutRecordBatch call.
/// <https://docs.aws.amazon.com/firehose/latest/APIReference/API_PutRecordBatch.html>
pub const MAX_BATCH_RECORDS: usize = 500;

/// Most bytes in one PutRecordBatch call (4 MiB, summed over the records before base64).
/// <https://docs.aws.amazon.com/firehose/latest/APIReference/API_PutRecordBatch.html>
pub const MAX_BATCH_BYTES: usize = 4 << 20;

/// Largest record: 1,000 KiB before base64.
/// <https://docs.aws.amazon.com/firehose/latest/APIReference/API_PutRecordBatch.html>
pub const MAX_RECORD_BYTES: usize = 1_024_000;

/// Most lines Firehose's de-aggregation splits out of one record; a packed record holds no
/// more, so dynamic partitioning with "multi record deaggregation" still sees every line.
/// <https://docs.aws.amazon.com/firehose/latest/dev/dynamic-partitioning.html>
pub const MAX_DEAGGREGATED_LINES: usize = 500;

/// Firehose bills each record rounded up to the next 5 KB.
/// <https://aws.amazon.com/firehose/pricing/>
pub const BILLING_INCREMENT: u64 = 5 * 1024;

// The flusher assumes any single record fits in one call; refuse to build if that ever breaks.
const _: () = assert!(MAX_RECORD_BYTES <= MAX_BATCH_BYTES);

/// A Direct PUT delivery stream's default throughput quota (raisable on request).
/// <https://docs.aws.amazon.com/firehose/latest/dev/limits.html>
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectPutQuota {
    /// Bytes per second (before base64).
    pub bytes_per_sec: u64,
    /// PutRecordBatch (and PutRecord) calls per second.
    pub requests_per_sec: u64,
    /// Records per second.
    pub records_per_sec: u64,
}

/// The quota of us-east-1, us-west-2 and eu-west-1: 5 MiB/s, 2,000 requests/s, 500,000 records/s.
pub const DIRECT_PUT_QUOTA_LARGE: DirectPutQuota = DirectPutQuota {
    bytes_per_sec: 5 << 20,
    requests_per_sec: 2_000,
    records_per_sec: 500_000,
};

/// The quota of every other region: 1 MiB/s, 1,000 requests/s, 100,000 records/s.
pub const DIRECT_PUT_QUOTA_DEFAULT: DirectPutQuota = DirectPutQuota {
    bytes_per_sec: 1 << 20,
    requests_per_sec: 1_000,
    records_per_sec: 100_000,
};

/// Regions whose default Direct PUT quota is [`DIRECT_PUT_QUOTA_LARGE`].
pub const LARGE_QUOTA_REGIONS: [&str; 3] = ["us-east-1", "us-west-2", "eu-west-1"];

/// The default Direct PUT quota of one delivery stream in `region`.
pub fn direct_put_quota(region: &str) -> DirectPutQuota {
    if LARGE_QUOTA_REGIONS.contains(&region) {
        DIRECT_PUT_QUOTA_LARGE
    } else {
        DIRECT_PUT_QUOTA_DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_get_their_documented_quota() {
        for region in LARGE_QUOTA_REGIONS {
            assert_eq!(direct_put_quota(region).bytes_per_sec, 5 * 1024 * 1024);
        }
        let other = direct_put_quota("eu-central-1");
        assert_eq!(other, DIRECT_PUT_QUOTA_DEFAULT);
        assert_eq!(
            (
                other.bytes_per_sec,
                other.requests_per_sec,
                other.records_per_sec
            ),
            (1024 * 1024, 1_000, 100_000)
        );
    }
}
