//! Steer's eBPF programs (IPv4).
//!
//! * `steer_connect4` rewrites `connect()` to a model VIP into the backend
//!   the agent chose, and remembers the VIP per socket cookie;
//!   `steer_getpeername4` / `steer_recvmsg4` hand the VIP back to the
//!   application.
//! * `steer_sockops` measures kernel RTT, connects and failed connects per
//!   pod, and (when enabled) puts node-local sockets into `STEER_SOCKS`,
//!   where `steer_sk_msg` redirects sends socket to socket.
//! * `steer_tc_ingress` / `steer_tc_egress` count bytes and packets per pod.
//!
//! Map names, layouts and counter indexes come from `steer-ebpf-abi`.
//! Addresses and ports stay in network byte order throughout.
#![no_std]
#![no_main]

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_ANY, BPF_F_INGRESS, BPF_NOEXIST, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_RTT_CB, BPF_SOCK_OPS_RTT_CB_FLAG,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
        BPF_TCP_CLOSE, BPF_TCP_SYN_SENT, TC_ACT_PIPE, bpf_sock_ops, sk_action,
    },
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, SockHash},
    helpers::{bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_set_retval},
    macros::{btf_map, cgroup_sock_addr, classifier, sk_msg, sock_ops},
    programs::{SkMsgContext, SockAddrContext, SockOpsContext, TcContext},
};
use steer_ebpf_abi::{
    Addr4, COUNTERS_LEN, Config, Counter, MAX_BACKENDS, MAX_PODS, MAX_REVNAT, MAX_SOCKS, MAX_VIPS,
    POD_NODE_LOCAL, PodLatency, PodTraffic, SockKey, VipBackends,
};

// ---------------------------------------------------------------- maps ----
// BTF map definitions: `bpftool map dump` shows the ABI's field names.

#[btf_map]
static STEER_VIPS: HashMap<Addr4, VipBackends, { MAX_VIPS as usize }> = HashMap::new();
#[btf_map]
static STEER_REVNAT: LruHashMap<u64, Addr4, { MAX_REVNAT as usize }> = LruHashMap::new();
#[btf_map]
static STEER_PODS: HashMap<Addr4, u32, { MAX_PODS as usize }> = HashMap::new();
#[btf_map]
static STEER_POD_LAT: PerCpuHashMap<Addr4, PodLatency, { MAX_PODS as usize }> =
    PerCpuHashMap::new();
#[btf_map]
static STEER_POD_IPS: HashMap<u32, u32, { MAX_PODS as usize }> = HashMap::new();
#[btf_map]
static STEER_TRAFFIC: PerCpuHashMap<u32, PodTraffic, { MAX_PODS as usize }> = PerCpuHashMap::new();
#[btf_map]
static STEER_COUNTERS: PerCpuArray<u64, { COUNTERS_LEN as usize }> = PerCpuArray::new();
#[btf_map]
static STEER_SOCKS: SockHash<SockKey, { MAX_SOCKS as usize }> = SockHash::new();
#[btf_map]
static STEER_CONFIG: Array<Config, 1> = Array::new();

const AF_INET: u32 = 2;
const IPPROTO_UDP: u32 = 17;
const EHOSTUNREACH: i32 = 113;
const ETH_HLEN: usize = 14;
const ETH_P_IP_BE: u16 = 0x0800u16.to_be();
/// cgroup sock_addr verdicts.
const SOCK_ADDR_ALLOW: i32 = 1;
const SOCK_ADDR_REJECT: i32 = 0;

#[inline(always)]
fn bump(counter: Counter) {
    if let Some(value) = STEER_COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot of a preallocated array; programs do not
        // migrate CPUs while running.
        unsafe { *value += 1 };
    }
}

/// A zero LLVM cannot see through: zeroed structs built from it become
/// plain stores, not a call to a global `memset` (which the verifier rejects).
#[inline(always)]
fn opaque_zero() -> u64 {
    // A local, not `&0u64`: a promoted constant would land in .rodata.
    let zero = 0u64;
    // SAFETY: reading a local.
    unsafe { read_volatile(&zero) }
}

#[inline(always)]
fn zero_latency() -> PodLatency {
    let zero = opaque_zero();
    PodLatency {
        srtt_us: zero as u32,
        _pad: zero as u32,
        samples: zero,
        last_update_ns: zero,
        connects: zero,
        failed_connects: zero,
    }
}

#[inline(always)]
fn zero_traffic() -> PodTraffic {
    let zero = opaque_zero();
    PodTraffic {
        tx_bytes: zero,
        tx_packets: zero,
        rx_bytes: zero,
        rx_packets: zero,
    }
}

/// `(remote_port >> 16)` of `bpf_sock_ops` / `sk_msg_md`: the network-order u16.
#[inline(always)]
const fn remote_port_be(remote_port: u32) -> u16 {
    (remote_port >> 16) as u16
}

/// `local_port` of `bpf_sock_ops` / `sk_msg_md` is in host order.
#[inline(always)]
const fn local_port_be(local_port: u32) -> u16 {
    (local_port as u16).to_be()
}

// ------------------------------------------------------ sock_addr hooks ----

#[cgroup_sock_addr(connect4)]
pub fn steer_connect4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // Full u32 loads: the verifier rejects narrow loads of these fields.
    // SAFETY: `sa` is the context pointer the kernel passed in.
    let (ip, port, protocol) = unsafe {
        (
            read_volatile(addr_of!((*sa).user_ip4)),
            read_volatile(addr_of!((*sa).user_port)),
            read_volatile(addr_of!((*sa).protocol)),
        )
    };
    let vip = Addr4 {
        ip,
        port: port as u16,
        _pad: 0,
    };
    let Some(table) = STEER_VIPS.get_ptr(vip) else {
        if protocol == IPPROTO_UDP {
            // A UDP socket may connect again, now to a non-VIP: forget the
            // VIP it had so getpeername()/recvmsg() do not report it.
            // SAFETY: helper valid for sock_addr programs.
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            let _ = STEER_REVNAT.remove(cookie);
        }
        return SOCK_ADDR_ALLOW;
    };
    // SAFETY: a map value stays valid during the program run.
    let (count, chosen) = unsafe { ((*table).count, (*table).chosen) };
    if count == 0 {
        bump(Counter::ConnectNoBackend);
        // SAFETY: bpf_set_retval is allowed for cgroup programs; with a 0
        // verdict connect() fails with this errno instead of EPERM.
        unsafe { bpf_set_retval(-EHOSTUNREACH) };
        return SOCK_ADDR_REJECT;
    }
    let count = if count > MAX_BACKENDS as u32 {
        MAX_BACKENDS as u32
    } else {
        count
    };
    let index = (chosen % count) as usize;
    // LLVM knows index < MAX_BACKENDS and would drop any check; the verifier
    // does not track `%`. A volatile re-read keeps an explicit bound.
    // SAFETY: reading a local.
    let index = unsafe { read_volatile(&index) };
    if index >= MAX_BACKENDS {
        // Unreachable; refuse rather than let the VIP onto the network.
        return SOCK_ADDR_REJECT;
    }
    // SAFETY: index < MAX_BACKENDS; map value valid during the run.
    let backend = unsafe { *addr_of!((*table).backends[index]) };

    // SAFETY: helper valid for sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let _ = STEER_REVNAT.insert(cookie, vip, BPF_ANY as u64);
    // SAFETY: connect4 may write user_ip4/user_port (as u32).
    unsafe {
        write_volatile(addr_of_mut!((*sa).user_ip4), backend.ip);
        write_volatile(addr_of_mut!((*sa).user_port), u32::from(backend.port));
    }
    bump(Counter::ConnectRewrite);
    SOCK_ADDR_ALLOW
}

/// getpeername()/recvmsg() of a steered socket: report the VIP, not the pod.
#[inline(always)]
fn reverse_nat(ctx: &SockAddrContext) -> i32 {
    // SAFETY: helper valid for sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Some(vip) = STEER_REVNAT.get_ptr(cookie) {
        let sa = ctx.sock_addr;
        // SAFETY: map value valid during the run; getpeername4/recvmsg4 may
        // write user_ip4/user_port (as u32).
        unsafe {
            let vip = *vip;
            write_volatile(addr_of_mut!((*sa).user_ip4), vip.ip);
            write_volatile(addr_of_mut!((*sa).user_port), u32::from(vip.port));
        }
        bump(Counter::RevNatHit);
    }
    // These hooks must return 1.
    SOCK_ADDR_ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn steer_getpeername4(ctx: SockAddrContext) -> i32 {
    reverse_nat(&ctx)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn steer_recvmsg4(ctx: SockAddrContext) -> i32 {
    reverse_nat(&ctx)
}

// ------------------------------------------------------------- sock_ops ----

/// The fields of `bpf_sock_ops` Steer reads, each as a full u32 load.
struct SockOpsFields {
    remote_ip: u32,
    local_ip: u32,
    remote_port: u32,
    local_port: u32,
}

#[inline(always)]
fn sock_ops_fields(ops: *mut bpf_sock_ops) -> SockOpsFields {
    // SAFETY: `ops` is the context pointer the kernel passed in.
    unsafe {
        SockOpsFields {
            remote_ip: read_volatile(addr_of!((*ops).remote_ip4)),
            local_ip: read_volatile(addr_of!((*ops).local_ip4)),
            remote_port: read_volatile(addr_of!((*ops).remote_port)),
            local_port: read_volatile(addr_of!((*ops).local_port)),
        }
    }
}

/// The latency slot of `pod` on this CPU, created zeroed for known pods.
#[inline(always)]
fn pod_latency(pod: &Addr4) -> Option<*mut PodLatency> {
    if let Some(slot) = STEER_POD_LAT.get_ptr_mut(pod) {
        return Some(slot);
    }
    STEER_PODS.get_ptr(pod)?;
    let _ = STEER_POD_LAT.insert(pod, zero_latency(), BPF_NOEXIST as u64);
    STEER_POD_LAT.get_ptr_mut(pod)
}

#[sock_ops]
pub fn steer_sockops(ctx: SockOpsContext) -> u32 {
    let ops = ctx.ops;
    // SAFETY: context pointer.
    let (op, family) = unsafe {
        (
            read_volatile(addr_of!((*ops).op)),
            read_volatile(addr_of!((*ops).family)),
        )
    };
    if family != AF_INET {
        return 1;
    }
    let f = sock_ops_fields(ops);
    let pod = Addr4 {
        ip: f.remote_ip,
        port: remote_port_be(f.remote_port),
        _pad: 0,
    };
    match op {
        BPF_SOCK_OPS_TCP_CONNECT_CB if STEER_PODS.get_ptr(pod).is_some() => {
            // RTT samples and the SYN_SENT -> CLOSE transition of failed connects.
            let _ = ctx.set_cb_flags(
                (ctx.cb_flags() | BPF_SOCK_OPS_RTT_CB_FLAG | BPF_SOCK_OPS_STATE_CB_FLAG) as i32,
            );
        }
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => {
            if STEER_PODS.get_ptr(pod).is_some() {
                let _ = ctx.set_cb_flags(
                    (ctx.cb_flags() | BPF_SOCK_OPS_RTT_CB_FLAG | BPF_SOCK_OPS_STATE_CB_FLAG) as i32,
                );
                if let Some(lat) = pod_latency(&pod) {
                    // SAFETY: per-CPU slot.
                    unsafe { (*lat).connects += 1 };
                }
                bump(Counter::PodEstablished);
            }
            sock_map_insert(&ctx, &f);
        }
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => sock_map_insert(&ctx, &f),
        BPF_SOCK_OPS_RTT_CB => {
            if let Some(lat) = pod_latency(&pod) {
                // SAFETY: context pointer; srtt_us is the kernel's srtt << 3.
                let srtt = unsafe { read_volatile(addr_of!((*ops).srtt_us)) } >> 3;
                // SAFETY: bpf_ktime_get_ns has no preconditions.
                let now = unsafe { bpf_ktime_get_ns() };
                // SAFETY: per-CPU slot.
                unsafe {
                    (*lat).srtt_us = srtt;
                    (*lat).samples += 1;
                    (*lat).last_update_ns = now;
                }
                bump(Counter::RttSample);
            }
        }
        BPF_SOCK_OPS_STATE_CB => {
            if ctx.arg(0) == BPF_TCP_SYN_SENT
                && ctx.arg(1) == BPF_TCP_CLOSE
                && let Some(lat) = pod_latency(&pod)
            {
                // SAFETY: per-CPU slot.
                unsafe { (*lat).failed_connects += 1 };
            }
        }
        _ => {}
    }
    1
}

/// Node-local sockets (peer in STEER_POD_IPS with POD_NODE_LOCAL, or
/// loopback) go into STEER_SOCKS under their own 4-tuple when sk_msg
/// redirection is switched on.
#[inline(always)]
fn sock_map_insert(ctx: &SockOpsContext, f: &SockOpsFields) {
    let enabled = STEER_CONFIG
        .get(0)
        .is_some_and(|config| config.sk_msg_enabled != 0);
    if !enabled {
        return;
    }
    // Network order: the first octet is the lowest byte.
    let loopback = f.remote_ip & 0xff == 127;
    let node_local = loopback
        || STEER_POD_IPS
            .get_ptr(f.remote_ip)
            // SAFETY: map value valid during the run.
            .is_some_and(|flags| unsafe { *flags } & POD_NODE_LOCAL != 0);
    if !node_local {
        return;
    }
    let key = SockKey {
        local_ip: f.local_ip,
        remote_ip: f.remote_ip,
        local_port: u32::from(local_port_be(f.local_port)),
        remote_port: u32::from(remote_port_be(f.remote_port)),
    };
    // SAFETY: the context pointer, valid for the whole run.
    let ops = unsafe { &mut *ctx.ops };
    let _ = STEER_SOCKS.update(key, ops, BPF_ANY as u64);
}

// --------------------------------------------------------------- sk_msg ----

#[sk_msg]
pub fn steer_sk_msg(ctx: SkMsgContext) -> u32 {
    let md = ctx.msg;
    // SAFETY: context pointer; full u32 loads.
    let (family, remote_ip, local_ip, remote_port, local_port) = unsafe {
        (
            read_volatile(addr_of!((*md).family)),
            read_volatile(addr_of!((*md).remote_ip4)),
            read_volatile(addr_of!((*md).local_ip4)),
            read_volatile(addr_of!((*md).remote_port)),
            read_volatile(addr_of!((*md).local_port)),
        )
    };
    if family != AF_INET {
        return sk_action::SK_PASS;
    }
    // The peer socket's own key: our remote is its local.
    let peer = SockKey {
        local_ip: remote_ip,
        remote_ip: local_ip,
        local_port: u32::from(remote_port_be(remote_port)),
        remote_port: u32::from(local_port_be(local_port)),
    };
    let verdict = STEER_SOCKS.redirect_msg(&ctx, peer, u64::from(BPF_F_INGRESS));
    if verdict == i64::from(sk_action::SK_PASS) {
        bump(Counter::SkMsgRedirect);
    } else {
        // SK_DROP: the peer is not in the map (not node-local, or gone).
        bump(Counter::SkMsgPass);
    }
    sk_action::SK_PASS
}

// ------------------------------------------------------------------- TC ----

#[inline(always)]
fn count_traffic(ctx: &TcContext, egress: bool) {
    // Ethernet (loopback too has a zeroed 14-byte MAC header) + IPv4.
    let Ok(ethertype) = ctx.load::<u16>(12) else {
        return;
    };
    if ethertype != ETH_P_IP_BE {
        return;
    }
    // iphdr: saddr at 12, daddr at 16.
    let offset = ETH_HLEN + if egress { 16 } else { 12 };
    let Ok(pod_ip) = ctx.load::<u32>(offset) else {
        return;
    };
    if STEER_POD_IPS.get_ptr(pod_ip).is_none() {
        return;
    }
    let slot = match STEER_TRAFFIC.get_ptr_mut(pod_ip) {
        Some(slot) => slot,
        None => {
            let _ = STEER_TRAFFIC.insert(pod_ip, zero_traffic(), BPF_NOEXIST as u64);
            let Some(slot) = STEER_TRAFFIC.get_ptr_mut(pod_ip) else {
                return;
            };
            slot
        }
    };
    let len = u64::from(ctx.len());
    // SAFETY: per-CPU slot.
    unsafe {
        if egress {
            (*slot).tx_bytes += len;
            (*slot).tx_packets += 1;
        } else {
            (*slot).rx_bytes += len;
            (*slot).rx_packets += 1;
        }
    }
}

/// Never drops: TC_ACT_PIPE means "next program" for TCX and cls_bpf alike.
#[classifier]
pub fn steer_tc_ingress(ctx: TcContext) -> i32 {
    count_traffic(&ctx, false);
    TC_ACT_PIPE
}

#[classifier]
pub fn steer_tc_egress(ctx: TcContext) -> i32 {
    count_traffic(&ctx, true);
    TC_ACT_PIPE
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

/// The project's license. None of the helpers used is GPL-only; a program
/// that needs one (e.g. bpf_probe_read) must declare a GPL-compatible license.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 11] = *b"Apache-2.0\0";
