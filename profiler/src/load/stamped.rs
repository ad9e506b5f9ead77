//! A TCP read half that asks the kernel when the bytes of each read arrived (`SO_TIMESTAMPNS`),
//! so a reply can be timed to its arrival in our socket rather than to when our task got round
//! to reading it: a busy client's own scheduling delay is then not counted against the server.

use std::{
    io,
    mem::MaybeUninit,
    os::fd::AsRawFd,
    pin::Pin,
    task::{Context, Poll, ready},
    time::{Duration, SystemTime},
};

use tokio::{
    io::{AsyncRead, Interest, ReadBuf},
    net::tcp::OwnedReadHalf,
};

pub struct Stamped {
    half: OwnedReadHalf,
    enabled: bool,
    last_arrival: Option<SystemTime>,
}

impl Stamped {
    /// Turns on receive timestamps; if the kernel refuses, reads work and carry none.
    pub fn new(half: OwnedReadHalf) -> Self {
        let on: libc::c_int = 1;
        // SAFETY: setsockopt on our own socket with a c_int option value.
        let enabled = unsafe {
            libc::setsockopt(
                half.as_ref().as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_TIMESTAMPNS,
                (&raw const on).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        } == 0;
        Self {
            half,
            enabled,
            last_arrival: None,
        }
    }

    /// When the bytes of the latest read arrived (the newest segment in it), if known.
    pub fn last_arrival(&self) -> Option<SystemTime> {
        self.last_arrival
    }

    /// One recvmsg into `buf`: the byte count and the arrival time from its control message.
    fn recv(&self, buf: &mut [MaybeUninit<u8>]) -> io::Result<(usize, Option<SystemTime>)> {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // u64s, so the control buffer is aligned for cmsghdr.
        let mut control = [0u64; 8];
        // SAFETY: an all-zero msghdr is valid; the fields set below point at live buffers.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of_val(&control);
        // SAFETY: recvmsg writes at most iov_len bytes into buf and msg_controllen into control.
        let n = unsafe { libc::recvmsg(self.half.as_ref().as_raw_fd(), &raw mut msg, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut arrival = None;
        // SAFETY: walking the control messages the kernel wrote, within msg_controllen.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET
                    && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS
                {
                    let ts =
                        std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::timespec>());
                    arrival = Some(
                        SystemTime::UNIX_EPOCH + Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32),
                    );
                }
                cmsg = libc::CMSG_NXTHDR(&raw const msg, cmsg);
            }
        }
        Ok((n as usize, arrival))
    }
}

impl AsyncRead for Stamped {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.enabled {
            return Pin::new(&mut this.half).poll_read(cx, buf);
        }
        loop {
            ready!(this.half.as_ref().poll_read_ready(cx))?;
            // SAFETY: recv only writes initialized bytes, and we mark exactly those filled.
            let unfilled = unsafe { buf.unfilled_mut() };
            match this
                .half
                .as_ref()
                .try_io(Interest::READABLE, || this.recv(unfilled))
            {
                Ok((n, arrival)) => {
                    // SAFETY: the kernel wrote n bytes into the unfilled part.
                    unsafe { buf.assume_init(n) };
                    buf.advance(n);
                    if arrival.is_some() {
                        this.last_arrival = arrival;
                    }
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Bytes written at a known time arrive stamped at that time (loopback: within a
    /// millisecond), and a late read still reports the arrival, not the read.
    #[tokio::test]
    async fn reads_carry_the_arrival_time() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (read, _write) = server.into_split();
        let mut stamped = Stamped::new(read);
        assert!(stamped.enabled);
        // The kernel turns stamping on for the whole stack from a work queue, a moment later.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let sent = SystemTime::now();
        client.write_all(b"hello").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut buf = [0u8; 16];
        let n = stamped.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"hello");
        let arrival = stamped.last_arrival().expect("a timestamp");
        let after = arrival.duration_since(sent).unwrap_or_default();
        assert!(
            after < Duration::from_millis(20),
            "arrived {after:?} after the write"
        );
    }
}
