//! Stratum v1 on the wire, as both ends in this workspace speak it (the load driver's miners
//! and `testbed-pool`): the method names, the error codes of a refused share and of a
//! malformed request, and newline-delimited framing with a cap on a line's length.

use std::io;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

/// Method names.
pub mod method {
    pub const SUBSCRIBE: &str = "mining.subscribe";
    pub const AUTHORIZE: &str = "mining.authorize";
    pub const EXTRANONCE_SUBSCRIBE: &str = "mining.extranonce.subscribe";
    pub const SUBMIT: &str = "mining.submit";
    pub const NOTIFY: &str = "mining.notify";
    pub const SET_DIFFICULTY: &str = "mining.set_difficulty";
    pub const RECONNECT: &str = "client.reconnect";
}

/// Error codes: stratum's share rejections (20–25) and JSON-RPC's (negative).
pub mod code {
    pub const OTHER: i64 = 20;
    pub const STALE: i64 = 21;
    pub const DUPLICATE: i64 = 22;
    pub const LOW_DIFFICULTY: i64 = 23;
    pub const UNAUTHORIZED: i64 = 24;
    pub const NOT_SUBSCRIBED: i64 = 25;
    pub const PARSE: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;

    /// The name of a share rejection's code, as reports and counters print it; `None` for
    /// codes that are not share rejections.
    pub const fn rejection(code: i64) -> Option<&'static str> {
        Some(match code {
            OTHER => "other",
            STALE => "stale",
            DUPLICATE => "duplicate",
            LOW_DIFFICULTY => "low-difficulty",
            UNAUTHORIZED => "unauthorized",
            NOT_SUBSCRIBED => "not-subscribed",
            _ => return None,
        })
    }
}

/// How a [`read_line`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineRead {
    /// `buf` ends with a newline.
    Line,
    /// The peer closed; `buf` holds whatever came after the last newline.
    Eof,
    /// More than the cap without a newline.
    TooLong,
}

/// Reads up to the next newline into `buf`, never holding more than `max + 1` bytes.
/// Cancel-safe: bytes read before a cancellation stay in `buf` for the next call.
pub async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<LineRead> {
    let limit = (max + 1).saturating_sub(buf.len()) as u64;
    reader.take(limit).read_until(b'\n', buf).await?;
    Ok(if buf.last() == Some(&b'\n') {
        LineRead::Line
    } else if buf.len() > max {
        LineRead::TooLong
    } else {
        LineRead::Eof
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_framed_and_capped() {
        let mut input: &[u8] = b"{\"id\":1}\npartial";
        let mut buf = Vec::new();
        assert_eq!(
            read_line(&mut input, &mut buf, 64).await.unwrap(),
            LineRead::Line
        );
        assert_eq!(buf, b"{\"id\":1}\n");
        buf.clear();
        assert_eq!(
            read_line(&mut input, &mut buf, 64).await.unwrap(),
            LineRead::Eof
        );
        assert_eq!(buf, b"partial");
        let mut long: &[u8] = &[b'x'; 100];
        buf.clear();
        assert_eq!(
            read_line(&mut long, &mut buf, 16).await.unwrap(),
            LineRead::TooLong
        );
        assert_eq!(buf.len(), 17);
        assert_eq!(
            code::rejection(code::LOW_DIFFICULTY),
            Some("low-difficulty")
        );
        assert_eq!(code::rejection(code::PARSE), None);
    }
}
