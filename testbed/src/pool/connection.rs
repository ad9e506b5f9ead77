//! The socket side of one miner connection: reads request lines (capped at [`MAX_LINE`]), feeds
//! them and new jobs to its [`Session`], writes what it answers, and keeps the idle deadline,
//! which only a complete line restarts.

use std::{
    io,
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::Value;
use tokio::{
    io::{AsyncWriteExt, BufReader},
    net::TcpStream,
    sync::watch,
};

use super::{
    replies::error_reply,
    session::{Output, Session},
};
use crate::{
    conn::Close,
    stratum::{Job, Reject},
};
use loadgen::wire::{self, LineRead};

/// Longest request line accepted; a longer one gets an error and a disconnect.
pub const MAX_LINE: usize = 16 * 1024;
/// A client that does not read its replies for this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads up to the next newline into `buf`, never holding more than `MAX_LINE + 1` bytes.
/// Cancel-safe: bytes read before a cancellation stay in `buf` for the next call.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> io::Result<LineRead> {
    wire::read_line(reader, buf, MAX_LINE).await
}

/// Serves one miner until it leaves (`Ok(None)`) or the pool drops it (`Ok(Some(why))`).
pub(super) async fn serve_connection(
    stream: TcpStream,
    mut session: Session,
    mut jobs: watch::Receiver<Arc<Job>>,
    idle_timeout: Option<Duration>,
) -> io::Result<Option<Close>> {
    // Replies are small and latency is what we measure: no Nagle delay.
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut buf = Vec::with_capacity(512);
    jobs.mark_unchanged();
    // Only complete lines restart it: bytes trickled without a newline keep nothing alive.
    let idle = tokio::time::sleep(idle_timeout.unwrap_or_default());
    tokio::pin!(idle);
    // Set when the pool ends the connection after the reply it is sending.
    let mut why = None;
    loop {
        let output = tokio::select! {
            read = read_line(&mut reader, &mut buf) => match read? {
                LineRead::Line => {
                    if let Some(timeout) = idle_timeout {
                        idle.as_mut().reset(tokio::time::Instant::now() + timeout);
                    }
                    let output = session.handle_line(&buf, Instant::now());
                    buf.clear();
                    output
                }
                LineRead::Eof => {
                    // A last line without its newline still gets its (error) reply.
                    let mut output = session.handle_line(&buf, Instant::now());
                    output.close = true;
                    output
                }
                LineRead::TooLong => {
                    why = Some(Close::LineTooLong);
                    Output {
                        lines: vec![error_reply(
                            &Value::Null,
                            &Reject::InvalidRequest(format!("line longer than {MAX_LINE} bytes")),
                        )],
                        close: true,
                    }
                }
            },
            () = &mut idle, if idle_timeout.is_some() => {
                let _ = write.shutdown().await;
                return Ok(Some(Close::Idle));
            }
            changed = jobs.changed() => {
                if changed.is_err() {
                    return Ok(None);
                }
                let job = jobs.borrow_and_update().clone();
                session.on_job(job, Instant::now())
            }
        };
        if !output.lines.is_empty() {
            let mut bytes = Vec::with_capacity(output.lines.iter().map(|l| l.len() + 1).sum());
            for line in &output.lines {
                bytes.extend_from_slice(line.as_bytes());
                bytes.push(b'\n');
            }
            let Ok(written) = tokio::time::timeout(WRITE_TIMEOUT, write.write_all(&bytes)).await
            else {
                return Ok(Some(Close::WriteTimeout));
            };
            written?;
        }
        if output.close {
            // Say we are done, then let the client see the reply before the socket goes.
            let _ = write.shutdown().await;
            return Ok(why);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn read_line_caps_the_line_length() {
        let mut input = vec![b'x'; MAX_LINE];
        input.push(b'\n');
        input.extend(vec![b'y'; MAX_LINE + 10]);
        let mut reader = BufReader::new(&input[..]);
        let mut buf = Vec::new();
        assert!(matches!(
            read_line(&mut reader, &mut buf).await.unwrap(),
            LineRead::Line
        ));
        assert_eq!(buf.len(), MAX_LINE + 1);
        buf.clear();
        assert!(matches!(
            read_line(&mut reader, &mut buf).await.unwrap(),
            LineRead::TooLong
        ));
        assert_eq!(buf.len(), MAX_LINE + 1);

        let mut reader = BufReader::new(&b"{\"id\":1"[..]);
        let mut buf = Vec::new();
        assert!(matches!(
            read_line(&mut reader, &mut buf).await.unwrap(),
            LineRead::Eof
        ));
        assert_eq!(buf, b"{\"id\":1");
    }
}
