//! The load generator's ceiling, printed before the table: a server that answers every
//! request with a pre-built response and never parses the body (it only skips
//! `Content-Length` bytes to find the next request).

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;

use super::Server;

/// What the ceiling server answers: hyper's answer to the bare server's response, pre-built.
const CANNED_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
content-length: 28\r\ndate: Thu, 01 Jan 2026 00:00:00 GMT\r\n\r\n{\"status\":\"ok\",\"accepted\":1}";

impl Server {
    /// The generator's ceiling: answers every request with [`CANNED_RESPONSE`].
    pub fn canned(rt: &Runtime) -> Server {
        Self::spawn(rt, connection)
    }
}

/// Finds each request's end (the blank line, then `Content-Length` bytes, skipped unread)
/// and answers every complete request in the buffer with one write.
async fn connection(mut stream: TcpStream) {
    let mut buffer = BytesMut::with_capacity(64 * 1024);
    let mut answers = Vec::new();
    loop {
        // Room for a full read: `advance` leaves the consumed front unusable until `reserve`
        // reclaims it, and small reads would split requests.
        buffer.reserve(16 * 1024);
        match stream.read_buf(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        answers.clear();
        while let Some(length) = request_length(&buffer) {
            if buffer.len() < length {
                break;
            }
            buffer.advance(length);
            answers.extend_from_slice(CANNED_RESPONSE);
        }
        if !answers.is_empty() && stream.write_all(&answers).await.is_err() {
            return;
        }
    }
}

/// Header bytes plus `Content-Length` of the request at the start of `buffer`, once its
/// header is complete.
fn request_length(buffer: &[u8]) -> Option<usize> {
    let head = buffer.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let body = buffer[..head]
        .split(|&b| b == b'\n')
        .find_map(|line| {
            let colon = line.iter().position(|&b| b == b':')?;
            if !line[..colon].eq_ignore_ascii_case(b"content-length") {
                return None;
            }
            std::str::from_utf8(&line[colon + 1..])
                .ok()?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0);
    Some(head + body)
}
