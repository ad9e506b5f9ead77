//! `sock`: how long a request waits for its reply inside the target, per local (listening) port.
//!
//! Each of the target's TCP sockets runs a small state machine in the kernel:
//! idle → arrived (`sock:sk_data_ready`, the bytes are queued) → read (`sock:sock_recv_length`
//! with data) → replied (`sock:sock_send_length` with data) → idle. A write on an idle socket is a
//! server push (stratum's `mining.notify`) and is only counted. New connections are timed from the
//! handshake completing (`sock:inet_sock_set_state` SYN_RECV → ESTABLISHED) to the target's first
//! read or write on them.

use crate::impl_pod;

/// `sock:sk_data_ready`: bytes queued on a socket (softirq, any process).
pub const DATA_READY_PROGRAM: &str = "sock_data_ready";
/// `sock:sock_recv_length`: a read by the target.
pub const RECV_PROGRAM: &str = "sock_recv";
/// `sock:sock_send_length`: a write by the target.
pub const SEND_PROGRAM: &str = "sock_send";
/// `sock:inet_sock_set_state`: handshakes completing and sockets closing.
pub const STATE_PROGRAM: &str = "sock_state";

/// `SOCK_SOCKETS`: socket address → [`SockState`] of the target's sockets (LRU).
pub const SOCKETS_MAP: &str = "SOCK_SOCKETS";
/// `SOCK_NEW`: socket address → [`NewConn`], accepted by the kernel, not yet read by the target.
pub const NEW_MAP: &str = "SOCK_NEW";
/// `SOCK_PORTS`: local port (`u16`) → port index (`u32`, below [`MAX_PORTS`]); filled by
/// userspace with the target's listening ports.
pub const PORTS_MAP: &str = "SOCK_PORTS";
/// `SOCK_HISTS`: per-CPU array of [`crate::hist::Hist`], [`hist_index`]-ed.
pub const HISTS_MAP: &str = "SOCK_HISTS";
/// `SOCK_COUNTS`: per-CPU array of `u64`, [`count_index`]-ed.
pub const COUNTS_MAP: &str = "SOCK_COUNTS";
/// `SOCK_SEND_ENTRY`: tid → when the thread's current write-type syscall began (ns), so a
/// reply is timed from the start of the call that sends it, not from its return.
pub const SEND_ENTRY_MAP: &str = "SOCK_SEND_ENTRY";
/// `syscalls:sys_enter_{write,writev,sendto,sendmsg}`: stamps [`SEND_ENTRY_MAP`].
pub const SEND_ENTER_PROGRAM: &str = "sock_send_enter";
/// The syscalls a reply goes out through, whose entries [`SEND_ENTER_PROGRAM`] stamps.
pub const SEND_SYSCALLS: [&str; 4] = ["write", "writev", "sendto", "sendmsg"];
/// `SOCK_ARMED`: one `u32`, set to 1 by userspace once every program is attached.
pub const ARMED_MAP: &str = "SOCK_ARMED";
/// [`SockConfig`] global.
pub const CONFIG_GLOBAL: &str = "SOCK_CONFIG";

/// Ports tracked at once; more listening ports than this are reported as not tracked.
pub const MAX_PORTS: u32 = 16;

/// The histograms kept per port.
pub mod kind {
    /// Bytes queued → first reply byte written, for every request but a new connection's first.
    pub const SOCKET_TO_REPLY: u32 = 0;
    /// First read with data → first reply byte written, for the same requests.
    pub const SERVICE: u32 = 1;
    /// Handshake complete → the target's first read or write of the connection (one that
    /// finds nothing to read yet counts: it has picked the connection up).
    pub const NEW_CONNECTION: u32 = 2;
    /// Socket-to-reply of the first request on a connection accepted during the capture: a
    /// login, subscribe or TLS handshake, kept apart from the steady state.
    pub const FIRST_REQUEST: u32 = 3;
    pub const COUNT: u32 = 4;
}

/// The counters kept per port.
pub mod counter {
    /// Writes on an idle socket: pushes, not replies.
    pub const PUSHES: u32 = 0;
    /// Requests whose arrival was not seen (queued before the socket was known): they have a
    /// service time but no socket-to-reply time.
    pub const UNSEEN: u32 = 1;
    /// When this CPU first and last saw a reply on the port (ns, monotonic; 0: never), so
    /// rates are over the span requests were served, not the whole capture.
    pub const FIRST_REPLY_NS: u32 = 2;
    pub const LAST_REPLY_NS: u32 = 3;
    pub const COUNT: u32 = 4;
}

/// Entries of `SOCK_HISTS`.
pub const HISTS: u32 = MAX_PORTS * kind::COUNT;
/// Entries of `SOCK_COUNTS`.
pub const COUNTS: u32 = MAX_PORTS * counter::COUNT;

#[inline(always)]
pub const fn hist_index(port_index: u32, kind: u32) -> u32 {
    port_index * kind::COUNT + kind
}

#[inline(always)]
pub const fn count_index(port_index: u32, counter: u32) -> u32 {
    port_index * counter::COUNT + counter
}

/// Where a socket's request is.
pub mod state {
    pub const IDLE: u32 = 0;
    /// Bytes queued, not read yet.
    pub const ARRIVED: u32 = 1;
    /// Read, not replied to yet.
    pub const READ: u32 = 2;
    /// Not on a tracked port: remembered so it is not looked up again.
    pub const IGNORED: u32 = 3;
}

/// TCP states (`include/net/tcp_states.h`).
pub mod tcp {
    pub const ESTABLISHED: i32 = 1;
    pub const SYN_RECV: i32 = 3;
    pub const CLOSE: i32 = 7;
}

/// `IPPROTO_TCP`.
pub const IPPROTO_TCP: u16 = 6;

/// Fixed at load: tracepoint field offsets from tracefs, and where `struct sock_common` keeps
/// the local port (from BTF).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockConfig {
    /// sk_data_ready: `skaddr`, `protocol`.
    pub ready_sk: u32,
    pub ready_protocol: u32,
    /// sock_recv_length / sock_send_length (same layout, checked): `sk`, `protocol`, `ret`.
    pub io_sk: u32,
    pub io_protocol: u32,
    pub io_ret: u32,
    /// inet_sock_set_state: `skaddr`, `oldstate`, `newstate`, `sport`, `protocol`.
    pub state_sk: u32,
    pub state_old: u32,
    pub state_new: u32,
    pub state_sport: u32,
    pub state_protocol: u32,
    /// `offsetof(struct sock_common, skc_num)`: the local port, host order.
    pub skc_num: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<SockConfig>() == 48);

/// One socket of the target.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockState {
    /// When the current request's bytes were queued (0: not seen).
    pub arrived_ns: u64,
    /// When the target first read them.
    pub read_ns: u64,
    /// Bytes of the next request queued while this one was being served.
    pub next_arrived_ns: u64,
    /// One of [`state`].
    pub state: u32,
    /// Index of the socket's local port in `SOCK_PORTS`.
    pub port_index: u32,
    /// 1 until the first request of a connection accepted during the capture is replied to.
    pub first: u32,
    pub _pad: u32,
    /// The request being served, as `why` follows it (0: not followed).
    pub req: u64,
}
const _: () = assert!(core::mem::size_of::<SockState>() == 48);

/// A connection the kernel accepted that the target has not read yet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NewConn {
    pub established_ns: u64,
    /// When its first bytes were queued (0: none yet).
    pub first_data_ns: u64,
    pub port_index: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<NewConn>() == 24);

impl_pod!(SockConfig, SockState, NewConn);
