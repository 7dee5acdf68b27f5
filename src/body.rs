//! Reading a request body: under a deadline, under `server.max_body_bytes`, and decoding
//! `Content-Encoding: gzip | deflate` with the cap applied to the *decompressed* size, so a
//! small bomb is refused after at most `max + 1` decoded bytes.
//!
//! The compressed bytes are collected first (they are capped too, so at most `max` of
//! them), then decoded through a reader that stops one byte past the cap.

use std::io::Read;
use std::time::Duration;

use bytes::Bytes;
use flate2::read::{DeflateDecoder, MultiGzDecoder, ZlibDecoder};
use http::HeaderMap;
use http::header::CONTENT_ENCODING;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

/// How the body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Not compressed.
    Identity,
    /// `gzip` (RFC 1952), possibly several members.
    Gzip,
    /// `deflate`: zlib-wrapped (RFC 1950) as the HTTP spec says, or raw deflate as some
    /// clients send it.
    Deflate,
}

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Over the cap, before or after decompression.
    #[error("body over {limit} bytes")]
    TooLarge {
        /// The cap.
        limit: usize,
    },
    /// The client did not send the whole body in time.
    #[error("body not received within {0:?}")]
    Timeout(Duration),
    /// A content coding this service does not decode.
    #[error("unsupported content encoding {0:?}")]
    UnsupportedEncoding(String),
    /// The compressed stream is corrupt or truncated.
    #[error("body could not be decompressed: {0}")]
    Corrupt(String),
    /// The connection failed while reading.
    #[error("body could not be read: {0}")]
    Read(String),
}

/// The body's `Content-Encoding`.
pub fn encoding(headers: &HeaderMap) -> Result<Encoding, BodyError> {
    let Some(value) = headers.get(CONTENT_ENCODING) else {
        return Ok(Encoding::Identity);
    };
    let text = value
        .to_str()
        .map_err(|_| BodyError::UnsupportedEncoding("<not text>".to_owned()))?
        .trim()
        .to_ascii_lowercase();
    match text.as_str() {
        "" | "identity" => Ok(Encoding::Identity),
        "gzip" | "x-gzip" => Ok(Encoding::Gzip),
        "deflate" => Ok(Encoding::Deflate),
        // Stacked codings ("gzip, br") and others (br, zstd) are refused rather than guessed.
        _ => Err(BodyError::UnsupportedEncoding(text)),
    }
}

/// Reads and decodes the body within `timeout` and `limit`.
pub async fn read(
    body: Incoming,
    encoding: Encoding,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, BodyError> {
    let collected = tokio::time::timeout(timeout, Limited::new(body, limit).collect())
        .await
        .map_err(|_| BodyError::Timeout(timeout))?
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                BodyError::TooLarge { limit }
            } else {
                BodyError::Read(e.to_string())
            }
        })?
        .to_bytes();
    decode(collected, encoding, limit)
}

/// Decodes `raw` as `encoding`, refusing more than `limit` decoded bytes.
pub fn decode(raw: Bytes, encoding: Encoding, limit: usize) -> Result<Bytes, BodyError> {
    let reader: Box<dyn Read + '_> = match encoding {
        Encoding::Identity => return Ok(raw),
        Encoding::Gzip => Box::new(MultiGzDecoder::new(&raw[..])),
        Encoding::Deflate if is_zlib(&raw) => Box::new(ZlibDecoder::new(&raw[..])),
        Encoding::Deflate => Box::new(DeflateDecoder::new(&raw[..])),
    };
    let mut out = Vec::with_capacity((raw.len() * 4).min(limit + 1));
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| BodyError::Corrupt(e.to_string()))?;
    if out.len() > limit {
        return Err(BodyError::TooLarge { limit });
    }
    Ok(Bytes::from(out))
}

/// A zlib header: compression method 8 and a check value divisible by 31 (RFC 1950).
fn is_zlib(raw: &[u8]) -> bool {
    raw.len() >= 2
        && raw[0] & 0x0f == 8
        && (u16::from(raw[0]) << 8 | u16::from(raw[1])).is_multiple_of(31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::{DeflateEncoder, GzEncoder, ZlibEncoder};
    use std::io::Write;

    fn gzip(data: &[u8]) -> Bytes {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        Bytes::from(e.finish().unwrap())
    }

    #[test]
    fn gzip_zlib_and_raw_deflate_decode() {
        let data = b"{\"userId\":\"u\"}".repeat(10);
        assert_eq!(
            decode(gzip(&data), Encoding::Gzip, 1000).unwrap(),
            &data[..]
        );
        let mut z = ZlibEncoder::new(Vec::new(), Compression::default());
        z.write_all(&data).unwrap();
        assert_eq!(
            decode(Bytes::from(z.finish().unwrap()), Encoding::Deflate, 1000).unwrap(),
            &data[..]
        );
        let mut d = DeflateEncoder::new(Vec::new(), Compression::default());
        d.write_all(&data).unwrap();
        assert_eq!(
            decode(Bytes::from(d.finish().unwrap()), Encoding::Deflate, 1000).unwrap(),
            &data[..]
        );
    }

    #[test]
    fn a_bomb_stops_at_the_cap() {
        let bomb = gzip(&vec![b'a'; 64 << 20]);
        assert!(bomb.len() < 100_000, "{} bytes", bomb.len());
        assert!(matches!(
            decode(bomb, Encoding::Gzip, 1 << 20),
            Err(BodyError::TooLarge { .. })
        ));
    }

    #[test]
    fn corrupt_streams_are_errors() {
        let mut g = gzip(b"hello world hello world").to_vec();
        g.truncate(g.len() - 6);
        assert!(matches!(
            decode(Bytes::from(g), Encoding::Gzip, 1000),
            Err(BodyError::Corrupt(_))
        ));
        assert!(matches!(
            decode(Bytes::from_static(b"not gzip"), Encoding::Gzip, 1000),
            Err(BodyError::Corrupt(_))
        ));
    }

    #[test]
    fn encodings() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(CONTENT_ENCODING, v.parse().unwrap());
            encoding(&m)
        };
        assert_eq!(encoding(&HeaderMap::new()).unwrap(), Encoding::Identity);
        assert_eq!(h("GZIP").unwrap(), Encoding::Gzip);
        assert_eq!(h("deflate").unwrap(), Encoding::Deflate);
        assert_eq!(h("identity").unwrap(), Encoding::Identity);
        assert!(h("br").is_err());
        assert!(h("gzip, br").is_err());
    }
}
