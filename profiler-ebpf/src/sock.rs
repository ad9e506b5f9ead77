//! `sock`: per-socket request/reply state machine, timed into per-port histograms.
//!
//! `sk_data_ready` and `inet_sock_set_state` run in softirq, in whatever task the CPU was
//! running, so they filter on the target's sockets (`SOCK_SOCKETS`, `SOCK_NEW`), never on the
//! current pid. Reads and writes run in the target's own threads.

use aya_ebpf::{
    Global,
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::bpf_probe_read_kernel,
    macros::{map, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::TracePointContext,
};
use profiler_common::{
    hist::{Hist, SLOTS, slot_of},
    sock::{
        COUNTS, HISTS, IPPROTO_TCP, MAX_PORTS, NewConn, SockConfig, SockState, count_index,
        counter, hist_index, kind, state, tcp,
    },
    stats,
};

use crate::{
    shared::{EEXIST, atomic_add, count, is_armed, now_ns, target_thread},
    why,
};

#[unsafe(no_mangle)]
static SOCK_CONFIG: Global<SockConfig> = Global::new(SockConfig {
    ready_sk: 0,
    ready_protocol: 0,
    io_sk: 0,
    io_protocol: 0,
    io_ret: 0,
    state_sk: 0,
    state_old: 0,
    state_new: 0,
    state_sport: 0,
    state_protocol: 0,
    skc_num: 0,
    _pad: 0,
});

#[map]
static SOCK_SOCKETS: LruHashMap<u64, SockState> = LruHashMap::with_max_entries(65536, 0);

#[map]
static SOCK_NEW: LruHashMap<u64, NewConn> = LruHashMap::with_max_entries(16384, 0);

#[map]
static SOCK_PORTS: HashMap<u16, u32> = HashMap::with_max_entries(MAX_PORTS, 0);

#[map]
static SOCK_HISTS: PerCpuArray<Hist> = PerCpuArray::with_max_entries(HISTS, 0);

#[map]
static SOCK_COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTS, 0);

#[map]
static SOCK_SEND_ENTRY: HashMap<u32, u64> = HashMap::with_max_entries(16384, 0);

/// 1 once userspace has attached all four programs: until then each one alone would see half a
/// request (an arrival with no read, a read with no arrival) and leave it half done.
#[map]
static SOCK_ARMED: Array<u32> = Array::with_max_entries(1, 0);

#[inline(always)]
fn armed() -> bool {
    is_armed(&SOCK_ARMED)
}

#[inline(always)]
fn record(port_index: u32, which: u32, ns: u64) {
    if port_index >= MAX_PORTS {
        return;
    }
    if let Some(hist) = SOCK_HISTS.get_ptr_mut(hist_index(port_index, which)) {
        let slot = slot_of(ns) & (SLOTS - 1);
        // SAFETY: this CPU's copy of a live map value; atomic because a softirq program may
        // interrupt this one on the same CPU.
        atomic_add(unsafe { &raw mut (*hist).slots[slot] }, 1);
    }
}

#[inline(always)]
fn bump(port_index: u32, which: u32) {
    if port_index >= MAX_PORTS {
        return;
    }
    if let Some(value) = SOCK_COUNTS.get_ptr_mut(count_index(port_index, which)) {
        atomic_add(value, 1);
    }
}

/// Reads a tracepoint field at a tracefs offset.
#[inline(always)]
fn field<T: Copy>(ctx: &TracePointContext, offset: u32) -> Option<T> {
    // SAFETY: offsets come from this kernel's tracefs format files, sizes checked there.
    unsafe { ctx.read_at::<T>(offset as usize) }.ok()
}

/// The local port of `sk`, read from the socket the kernel is working on (so cache-hot).
#[inline(always)]
fn local_port(sk: u64, skc_num: u32) -> Option<u16> {
    // SAFETY: a read of kernel memory that may fault; the helper reports it.
    match unsafe { bpf_probe_read_kernel((sk + skc_num as u64) as *const u16) } {
        Ok(port) => Some(port),
        Err(_) => {
            count(stats::SOCK_PORT_UNREADABLE);
            None
        }
    }
}

/// The index of `port` if the target listens on it. `SOCK_PORTS` is tiny and stays in cache,
/// unlike a random probe of the big socket maps (over a microsecond here, TLB misses
/// included), so every program checks it first: most sockets on the host are not the target's.
#[inline(always)]
fn port_index(port: u16) -> Option<u32> {
    // SAFETY: copied out at once.
    unsafe { SOCK_PORTS.get(port) }.copied()
}

#[tracepoint]
pub fn sock_data_ready(ctx: TracePointContext) -> u32 {
    if !armed() {
        return 0;
    }
    let config = SOCK_CONFIG.load();
    let (Some(sk), Some(protocol)) = (
        field::<u64>(&ctx, config.ready_sk),
        field::<u16>(&ctx, config.ready_protocol),
    ) else {
        return 0;
    };
    if protocol != IPPROTO_TCP {
        return 0;
    }
    let Some(index) = local_port(sk, config.skc_num).and_then(port_index) else {
        return 0;
    };
    let now = now_ns();
    if let Some(sock) = SOCK_SOCKETS.get_ptr_mut(sk) {
        // SAFETY: a live map value; a concurrent update of the same socket is benign.
        unsafe {
            match (*sock).state {
                state::IDLE => {
                    (*sock).arrived_ns = now;
                    (*sock).state = state::ARRIVED;
                }
                // The next request, queued while this one is served: it starts when the reply
                // goes out.
                state::READ if (*sock).next_arrived_ns == 0 => (*sock).next_arrived_ns = now,
                _ => {}
            }
        }
        return 0;
    }
    // A new connection's first request usually arrives before the target has touched it.
    if let Some(conn) = SOCK_NEW.get_ptr_mut(sk) {
        // SAFETY: a live map value.
        unsafe {
            if (*conn).first_data_ns == 0 {
                (*conn).first_data_ns = now;
            }
        }
        return 0;
    }
    // A connection from before the capture, on one of the target's ports: only the target
    // listens there, so it is the target's; start it here rather than lose this request's
    // arrival. (A listener's own wake-up lands here too: one idle entry per listener.)
    let sock = SockState {
        arrived_ns: now,
        read_ns: 0,
        next_arrived_ns: 0,
        state: state::ARRIVED,
        port_index: index,
        first: 0,
        _pad: 0,
        req: 0,
    };
    match SOCK_SOCKETS.insert(sk, sock, BPF_NOEXIST as u64) {
        // Inserted meanwhile by the target's own read: that entry stands.
        Ok(()) => {}
        Err(e) if e == -EEXIST => {}
        Err(_) => count(stats::SOCK_SOCKETS_FULL),
    }
    0
}

#[tracepoint]
pub fn sock_state(ctx: TracePointContext) -> u32 {
    if !armed() {
        return 0;
    }
    let config = SOCK_CONFIG.load();
    let (Some(sk), Some(old), Some(new), Some(sport), Some(protocol)) = (
        field::<u64>(&ctx, config.state_sk),
        field::<i32>(&ctx, config.state_old),
        field::<i32>(&ctx, config.state_new),
        field::<u16>(&ctx, config.state_sport),
        field::<u16>(&ctx, config.state_protocol),
    ) else {
        return 0;
    };
    // sport is the local port: sockets on other ports were never ours.
    let Some(port_index) = (protocol == IPPROTO_TCP)
        .then(|| port_index(sport))
        .flatten()
    else {
        return 0;
    };
    if new == tcp::CLOSE {
        // Addresses are reused: forget the socket so a new one starts clean.
        let _ = SOCK_SOCKETS.remove(sk);
        let _ = SOCK_NEW.remove(sk);
        return 0;
    }
    if old != tcp::SYN_RECV || new != tcp::ESTABLISHED {
        return 0;
    }
    // A passive open on one of the target's listening ports. Closes on other ports are not
    // looked at, so an entry left at this address by an earlier socket (one of the target's
    // outgoing connections, remembered as ignored) is stale: drop it.
    let _ = SOCK_SOCKETS.remove(sk);
    let conn = NewConn {
        established_ns: now_ns(),
        first_data_ns: 0,
        port_index,
        _pad: 0,
    };
    if SOCK_NEW.insert(sk, conn, BPF_ANY as u64).is_err() {
        count(stats::SOCK_NEW_FULL);
    }
    0
}

/// The target's socket `sk`, added on first sight: its port looked up, and a new connection's
/// accept latency recorded.
#[inline(always)]
fn socket(sk: u64, skc_num: u32) -> Option<*mut SockState> {
    if let Some(sock) = SOCK_SOCKETS.get_ptr_mut(sk) {
        return Some(sock);
    }
    let now = now_ns();
    let mut sock = SockState {
        arrived_ns: 0,
        read_ns: 0,
        next_arrived_ns: 0,
        state: state::IGNORED,
        port_index: MAX_PORTS,
        first: 0,
        _pad: 0,
        req: 0,
    };
    if let Some(index) = local_port(sk, skc_num).and_then(port_index) {
        sock.port_index = index;
        sock.state = state::IDLE;
    }
    // SAFETY: copied out before the entry is removed.
    if let Some(conn) = unsafe { SOCK_NEW.get(sk) }.copied() {
        let _ = SOCK_NEW.remove(sk);
        if sock.state == state::IDLE {
            record(
                conn.port_index,
                kind::NEW_CONNECTION,
                now.saturating_sub(conn.established_ns),
            );
            sock.first = 1;
            if conn.first_data_ns != 0 {
                sock.arrived_ns = conn.first_data_ns;
                sock.state = state::ARRIVED;
            }
        }
    }
    if SOCK_SOCKETS.insert(sk, sock, BPF_ANY as u64).is_err() {
        count(stats::SOCK_SOCKETS_FULL);
        return None;
    }
    SOCK_SOCKETS.get_ptr_mut(sk)
}

/// Stamps the start of a target thread's write-type syscall: `sock_send_length` fires when
/// the data has gone, inside the call and after the peer was woken (on loopback the client
/// can receive and run before it), so the reply is timed from the call's start.
#[tracepoint]
pub fn sock_send_enter(_ctx: TracePointContext) -> u32 {
    let Some((_, tid)) = target_thread() else {
        return 0;
    };
    if !armed() {
        return 0;
    }
    let _ = SOCK_SEND_ENTRY.insert(tid, now_ns(), BPF_ANY as u64);
    0
}

/// When the reply being sent by `tid` began: its syscall's entry, unless that stamp is from
/// another call (older than the request's read, when the reply went out another way such as
/// sendfile or io_uring), then `now`.
#[inline(always)]
fn reply_start(tid: u32, read_ns: u64, now: u64) -> u64 {
    // SAFETY: copied out at once; only this thread writes its entry.
    match unsafe { SOCK_SEND_ENTRY.get(tid) }.copied() {
        Some(entered) if read_ns <= entered && entered <= now => entered,
        _ => now,
    }
}

/// Widens the port's span of replies on this CPU to `now`.
#[inline(always)]
fn replied_at(port_index: u32, now: u64) {
    if port_index >= MAX_PORTS {
        return;
    }
    if let Some(first) = SOCK_COUNTS.get_ptr_mut(count_index(port_index, counter::FIRST_REPLY_NS)) {
        // SAFETY: this CPU's slot; a softirq program on this CPU never writes it.
        unsafe {
            if *first == 0 {
                *first = now;
            }
        }
    }
    if let Some(last) = SOCK_COUNTS.get_ptr_mut(count_index(port_index, counter::LAST_REPLY_NS)) {
        // SAFETY: as above.
        unsafe { *last = now };
    }
}

/// The socket of a read or write by the target, the thread, and whether it moved data. Any
/// call counts as the target picking a new connection up, even one that found nothing to read
/// yet.
#[inline(always)]
fn target_io(ctx: &TracePointContext) -> Option<(*mut SockState, u32, bool)> {
    let (_, tid) = target_thread()?;
    if !armed() {
        return None;
    }
    let config = SOCK_CONFIG.load();
    let sk = field::<u64>(ctx, config.io_sk)?;
    let protocol = field::<u16>(ctx, config.io_protocol)?;
    let ret = field::<i32>(ctx, config.io_ret)?;
    if protocol != IPPROTO_TCP {
        return None;
    }
    Some((socket(sk, config.skc_num)?, tid, ret > 0))
}

#[tracepoint]
pub fn sock_recv(ctx: TracePointContext) -> u32 {
    let Some((sock, tid, true)) = target_io(&ctx) else {
        return 0;
    };
    let now = now_ns();
    // SAFETY: a live map value; softirq updates of the same socket are benign races.
    unsafe {
        match (*sock).state {
            state::ARRIVED => {
                (*sock).read_ns = now;
                (*sock).state = state::READ;
                (*sock).req = why::request_read(tid, (*sock).port_index, (*sock).arrived_ns, now);
            }
            state::IDLE => {
                // Queued before we knew the socket: served, but its arrival is unknown.
                (*sock).arrived_ns = 0;
                (*sock).read_ns = now;
                (*sock).state = state::READ;
            }
            _ => {}
        }
    }
    0
}

#[tracepoint]
pub fn sock_send(ctx: TracePointContext) -> u32 {
    let Some((sock, tid, true)) = target_io(&ctx) else {
        return 0;
    };
    // SAFETY: as in sock_recv.
    unsafe {
        let port_index = (*sock).port_index;
        match (*sock).state {
            state::READ => {
                count(stats::SOCK_REQUESTS);
                let now = reply_start(tid, (*sock).read_ns, now_ns());
                replied_at(port_index, now);
                why::request_replied((*sock).req, tid, now);
                (*sock).req = 0;
                let arrived = (*sock).arrived_ns;
                if (*sock).first != 0 {
                    // Apart from the steady state; its arrival was held in SOCK_NEW, or the
                    // read stamped it (arrival unseen: then from the read).
                    (*sock).first = 0;
                    let from = if arrived == 0 {
                        (*sock).read_ns
                    } else {
                        arrived
                    };
                    record(port_index, kind::FIRST_REQUEST, now.saturating_sub(from));
                } else {
                    record(
                        port_index,
                        kind::SERVICE,
                        now.saturating_sub((*sock).read_ns),
                    );
                    if arrived == 0 {
                        bump(port_index, counter::UNSEEN);
                    } else {
                        record(
                            port_index,
                            kind::SOCKET_TO_REPLY,
                            now.saturating_sub(arrived),
                        );
                    }
                }
                let next = (*sock).next_arrived_ns;
                (*sock).next_arrived_ns = 0;
                if next == 0 {
                    (*sock).state = state::IDLE;
                } else {
                    (*sock).arrived_ns = next;
                    (*sock).state = state::ARRIVED;
                }
            }
            // Nothing was asked: a push.
            state::IDLE | state::ARRIVED => bump(port_index, counter::PUSHES),
            _ => {}
        }
    }
    0
}
