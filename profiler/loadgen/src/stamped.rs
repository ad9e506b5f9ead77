//! A TCP socket that asks the kernel when bytes left and when they arrived, so the driver times
//! a reply between the same two instants a server-side view such as `attach --sock` sits
//! inside, rather than between points of its own scheduling:
//!
//! - a request left when the kernel handed its last byte to the device: a software send stamp
//!   (`SO_TIMESTAMPING` with `SOF_TIMESTAMPING_TX_SOFTWARE`), taken on loopback in
//!   `loopback_xmit`, before the packet reaches the server's socket and its `sk_data_ready`;
//!   it comes back on the socket's error queue, keyed by the byte's offset in the stream
//!   (`SOF_TIMESTAMPING_OPT_ID`), with no copy of the bytes (`SOF_TIMESTAMPING_OPT_TSONLY`);
//! - a reply arrived when the kernel received the bytes of the read that returned it
//!   (`SO_TIMESTAMPNS`), taken on loopback in `netif_rx`, after the server's send call began.

use std::{
    io,
    mem::MaybeUninit,
    os::fd::{AsRawFd, RawFd},
    pin::Pin,
    task::{Context, Poll, ready},
    time::{Duration, SystemTime},
};

use tokio::{
    io::{AsyncRead, Interest, ReadBuf},
    net::{TcpStream, tcp::OwnedReadHalf},
};

/// `SCM_TSTAMP_SND` from `linux/errqueue.h`: the stamp taken as the data went to the device
/// (libc does not export it).
const SCM_TSTAMP_SND: u32 = 0;

/// Send stamps in software, reported with the offset of the stamped byte and without the data.
const SEND_STAMPS: libc::c_uint = libc::SOF_TIMESTAMPING_TX_SOFTWARE
    | libc::SOF_TIMESTAMPING_SOFTWARE
    | libc::SOF_TIMESTAMPING_OPT_ID
    | libc::SOF_TIMESTAMPING_OPT_TSONLY;

/// Most stamps taken off the error queue in one go: a bound, so a socket that somehow keeps
/// it full cannot hold a client here.
const MAX_STAMPS_PER_DRAIN: usize = 256;

/// A TCP socket, or the read half of one.
pub trait Socket {
    fn tcp(&self) -> &TcpStream;
}

impl Socket for OwnedReadHalf {
    fn tcp(&self) -> &TcpStream {
        self.as_ref()
    }
}

impl Socket for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

pub struct Stamped<S> {
    inner: S,
    /// The kernel stamps the bytes we send: offsets count from the moment this was set.
    sends: bool,
    last_arrival: Option<SystemTime>,
}

impl<S: Socket> Stamped<S> {
    /// Turns on receive and send timestamps; call it before anything is written, since send
    /// stamps carry offsets counted from here. A kernel that refuses either leaves reads and
    /// writes working without those stamps.
    pub fn new(inner: S) -> Self {
        let fd = inner.tcp().as_raw_fd();
        // Receive stamps only fail on a kernel without them; reads then carry none.
        let _ = set_int(fd, libc::SO_TIMESTAMPNS, 1);
        // Offsets from the next byte written (`OPT_ID_TCP`, Linux 6.2); earlier kernels count
        // from the oldest unacknowledged byte, the same on a socket that has sent nothing yet.
        let sends = set_int(
            fd,
            libc::SO_TIMESTAMPING,
            (SEND_STAMPS | libc::SOF_TIMESTAMPING_OPT_ID_TCP) as libc::c_int,
        )
        .or_else(|_| set_int(fd, libc::SO_TIMESTAMPING, SEND_STAMPS as libc::c_int))
        .is_ok();
        Self {
            inner,
            sends,
            last_arrival: None,
        }
    }

    /// When the bytes of the latest read arrived (the newest segment in it), if the kernel
    /// stamped them.
    pub fn last_arrival(&self) -> Option<SystemTime> {
        self.last_arrival
    }

    /// Whether the kernel stamps what we send.
    pub fn stamps_sends(&self) -> bool {
        self.sends
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Takes the send stamps the kernel has queued, each with the offset of the byte it
    /// stamped (the last byte of a send call) counted from the first byte written after
    /// [`Stamped::new`], modulo 2³². Never waits: a request's stamp is queued before the
    /// request reaches the server, so it is there by the time its reply is.
    pub fn sent_stamps(&self, mut found: impl FnMut(u32, SystemTime)) {
        if !self.sends {
            return;
        }
        let fd = self.inner.tcp().as_raw_fd();
        for _ in 0..MAX_STAMPS_PER_DRAIN {
            match recv_send_stamp(fd) {
                Ok(Some((offset, at))) => found(offset, at),
                Ok(None) => {}
                // Empty (EAGAIN), or the socket is gone: the reply path reports that.
                Err(_) => return,
            }
        }
    }
}

fn set_int(fd: RawFd, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: setsockopt on a socket we own, with a c_int option value.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn timespec(ts: libc::timespec) -> Option<SystemTime> {
    let (secs, nanos) = (
        u64::try_from(ts.tv_sec).ok()?,
        u32::try_from(ts.tv_nsec).ok()?,
    );
    (secs != 0 || nanos != 0).then(|| SystemTime::UNIX_EPOCH + Duration::new(secs, nanos))
}

/// One message off the error queue, without waiting: `Some` when it is a send stamp, with
/// its key; `Err(WouldBlock)` when the queue is empty.
fn recv_send_stamp(fd: RawFd) -> io::Result<Option<(u32, SystemTime)>> {
    // Room for SCM_TIMESTAMPING (64 bytes) and IP(V6)_RECVERR (48 or 64), as u64s so the
    // buffer is aligned for cmsghdr.
    let mut control = [0u64; 32];
    // SAFETY: an all-zero msghdr is valid; no data is asked for (OPT_TSONLY sends none).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&control);
    // SAFETY: recvmsg writes at most msg_controllen bytes into control.
    let n = unsafe { libc::recvmsg(fd, &raw mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut stamp = None;
    let mut key = None;
    // SAFETY: walking the control messages the kernel wrote, within msg_controllen; each
    // payload is read unaligned at its own size.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        while !cmsg.is_null() {
            let data = libc::CMSG_DATA(cmsg);
            match ((*cmsg).cmsg_level, (*cmsg).cmsg_type) {
                (libc::SOL_SOCKET, libc::SCM_TIMESTAMPING) => {
                    // struct scm_timestamping: software, (deprecated), hardware.
                    let ts = std::ptr::read_unaligned(data.cast::<[libc::timespec; 3]>());
                    stamp = timespec(ts[0]);
                }
                (libc::SOL_IP, libc::IP_RECVERR) | (libc::SOL_IPV6, libc::IPV6_RECVERR) => {
                    let err = std::ptr::read_unaligned(data.cast::<libc::sock_extended_err>());
                    if err.ee_errno == libc::ENOMSG as u32
                        && err.ee_origin == libc::SO_EE_ORIGIN_TIMESTAMPING
                        && err.ee_info == SCM_TSTAMP_SND
                    {
                        key = Some(err.ee_data);
                    }
                }
                _ => {}
            }
            cmsg = libc::CMSG_NXTHDR(&raw const msg, cmsg);
        }
    }
    Ok(key.zip(stamp))
}

/// One recvmsg into `buf`: the byte count and the arrival time from its control message.
fn recv(fd: RawFd, buf: &mut [MaybeUninit<u8>]) -> io::Result<(usize, Option<SystemTime>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SCM_TIMESTAMPNS (32 bytes), and SCM_TIMESTAMPING (64) which the kernel adds for a
    // socket with send stamps on; u64s, so the buffer is aligned for cmsghdr.
    let mut control = [0u64; 16];
    // SAFETY: an all-zero msghdr is valid; the fields set below point at live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&control);
    // SAFETY: recvmsg writes at most iov_len bytes into buf and msg_controllen into control.
    let n = unsafe { libc::recvmsg(fd, &raw mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut arrival = None;
    // SAFETY: walking the control messages the kernel wrote, within msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS
            {
                let ts = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::timespec>());
                arrival = timespec(ts);
            }
            cmsg = libc::CMSG_NXTHDR(&raw const msg, cmsg);
        }
    }
    Ok((n as usize, arrival))
}

impl<S: Socket + Unpin> AsyncRead for Stamped<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let tcp = this.inner.tcp();
        loop {
            ready!(tcp.poll_read_ready(cx))?;
            // SAFETY: recv only writes initialized bytes, and we mark exactly those filled.
            let unfilled = unsafe { buf.unfilled_mut() };
            match tcp.try_io(Interest::READABLE, || recv(tcp.as_raw_fd(), unfilled)) {
                Ok((n, arrival)) => {
                    // SAFETY: the kernel wrote n bytes into the unfilled part.
                    unsafe { buf.assume_init(n) };
                    buf.advance(n);
                    // A read without a stamp leaves none: an older read's stamp would time
                    // these bytes to someone else's arrival.
                    if n > 0 {
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

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        client.set_nodelay(true).unwrap();
        (client, server)
    }

    /// Bytes written at a known time arrive stamped at that time (loopback: within a
    /// millisecond), and a late read still reports the arrival, not the read.
    #[tokio::test]
    async fn reads_carry_the_arrival_time() {
        let (mut client, server) = pair().await;
        let (read, _write) = server.into_split();
        let mut stamped = Stamped::new(read);
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

    /// Each write is stamped once, keyed by the offset of its last byte, at a time within the
    /// write call; and on loopback the stamp precedes the bytes' arrival at the other end.
    #[tokio::test]
    async fn sends_are_stamped_by_the_offset_of_their_last_byte() {
        let (client, server) = pair().await;
        let (read, mut write) = client.into_split();
        let sender = Stamped::new(read);
        assert!(sender.stamps_sends());
        let (server_read, _server_write) = server.into_split();
        let mut receiver = Stamped::new(server_read);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut calls = Vec::new();
        let mut buf = [0u8; 64];
        for chunk in [&b"hello"[..], b", world", b"!"] {
            let before = SystemTime::now();
            write.write_all(chunk).await.unwrap();
            let after = SystemTime::now();
            let n = receiver.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], chunk);
            calls.push((
                before,
                after,
                receiver.last_arrival().expect("receive stamp"),
            ));
        }
        let mut stamps = Vec::new();
        sender.sent_stamps(|offset, at| stamps.push((offset, at)));
        let offsets: Vec<u32> = stamps.iter().map(|&(offset, _)| offset).collect();
        assert_eq!(offsets, [4, 11, 12]);
        for (&(_, at), &(before, after, arrived)) in stamps.iter().zip(&calls) {
            assert!(before <= at && at <= after, "{before:?} {at:?} {after:?}");
            assert!(at <= arrived, "sent {at:?} after it arrived {arrived:?}");
        }
        // Taken: a second look finds nothing.
        let mut again = 0;
        sender.sent_stamps(|_, _| again += 1);
        assert_eq!(again, 0);
    }
}
