//! The eBPF programs on the running kernel: load the embedded object, attach
//! to a fresh cgroup / `lo`, drive real sockets through them.
//!
//! Needs root and an object built with eBPF (bpf-linker present at build
//! time). Without either the tests print why and pass, except with `CI=true`,
//! where they fail. Nothing can leave the host: every VIP is a 127.0.0.0/8
//! address, so even an unsteered connect stays on loopback. Every cgroup,
//! pin and attachment is removed by a drop guard, also on panic.

use std::{
    fs::{self, File},
    io::{Read, Write},
    net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::Duration,
};

use aya::{
    Ebpf,
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, SockHash},
    programs::{
        CgroupAttachMode, CgroupSockAddr, LinkOrder, SchedClassifier, SkMsg, SockOps, TcAttachType,
        tc::{self, TcAttachOptions},
    },
};
use steer_ebpf_abi::{
    Addr4, Config, Counter, MAP_CONFIG, MAP_COUNTERS, MAP_POD_IPS, MAP_POD_LAT, MAP_PODS,
    MAP_REVNAT, MAP_SOCKS, MAP_TRAFFIC, MAP_VIPS, MAX_BACKENDS, PROG_CONNECT4, PROG_GETPEERNAME4,
    PROG_RECVMSG4, PROG_SK_MSG, PROG_SOCKOPS, PROG_TC_EGRESS, PROG_TC_INGRESS, PodLatency,
    PodTraffic, SockKey, VipBackends,
};

fn object() -> &'static [u8] {
    aya::include_bytes_aligned!(env!("STEER_EBPF_OBJECT"))
}

const EHOSTUNREACH: i32 = 113;
const ECONNREFUSED: i32 = 111;

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Prints why a check cannot run here; under CI that is a failure.
fn skip(reason: &str) {
    assert!(!ci(), "CI=true but {reason}");
    eprintln!("SKIPPED: {reason}");
}

fn is_root() -> bool {
    // Effective uid: the second field of the Uid: line.
    fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

/// Whether the eBPF tests can run here (else says why).
fn ready() -> bool {
    if object().is_empty() {
        skip(
            "steer-agent was built without eBPF (no bpf-linker at build time; run `cargo xtask setup`)",
        );
        return false;
    }
    if !is_root() {
        skip("loading eBPF programs needs root");
        return false;
    }
    true
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// Owns everything a test creates; undoes it in reverse on drop (panics too).
struct Fixture {
    ebpf: Option<Ebpf>,
    cgroup: Option<PathBuf>,
    pin_dir: Option<PathBuf>,
}

impl Fixture {
    fn new() -> Self {
        let ebpf = Ebpf::load(object()).expect("load the eBPF object (maps, BTF)");
        Self {
            ebpf: Some(ebpf),
            cgroup: None,
            pin_dir: None,
        }
    }

    fn ebpf(&mut self) -> &mut Ebpf {
        self.ebpf.as_mut().expect("loaded")
    }

    /// A fresh cgroup v2 (under the cgroup2 mount) for the test's clients.
    fn cgroup(&mut self, tag: &str) -> PathBuf {
        let root =
            steer_host::mount_point("cgroup2").expect("no cgroup2 mount in /proc/self/mountinfo");
        let dir = root.join(format!("steer-test-{}-{tag}", std::process::id()));
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        self.cgroup = Some(dir.clone());
        dir
    }

    /// A per-test directory on bpffs, if bpffs is mounted at /sys/fs/bpf.
    fn pin_dir(&mut self, tag: &str) -> Option<PathBuf> {
        if steer_host::mount_point("bpf").as_deref() != Some(Path::new("/sys/fs/bpf")) {
            skip("bpffs is not mounted at /sys/fs/bpf (`cargo xtask setup` mounts it)");
            return None;
        }
        let dir = PathBuf::from(format!(
            "/sys/fs/bpf/steer-test-{}-{tag}",
            std::process::id()
        ));
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        self.pin_dir = Some(dir.clone());
        Some(dir)
    }

    /// Attaches through bpf links (kernel >= 5.7), which always allow other
    /// programs next to ours: the mode must be `Single` (no flags) there.
    fn attach_cgroup(&mut self, cgroup: &Path, programs: &[&str]) {
        let cgroup_fd = File::open(cgroup).expect("open cgroup");
        for &name in programs {
            let program = self
                .ebpf()
                .program_mut(name)
                .unwrap_or_else(|| panic!("no program {name}"));
            if name == PROG_SOCKOPS {
                let program: &mut SockOps = program.try_into().expect("sock_ops");
                program
                    .load()
                    .unwrap_or_else(|e| panic!("load {name}: {e:?}"));
                program
                    .attach(&cgroup_fd, CgroupAttachMode::Single)
                    .unwrap_or_else(|e| panic!("attach {name}: {e:?}"));
            } else {
                let program: &mut CgroupSockAddr = program.try_into().expect("sock_addr");
                program
                    .load()
                    .unwrap_or_else(|e| panic!("load {name}: {e:?}"));
                program
                    .attach(&cgroup_fd, CgroupAttachMode::Single)
                    .unwrap_or_else(|e| panic!("attach {name}: {e:?}"));
            }
        }
    }

    fn counter(&self, counter: Counter) -> u64 {
        let ebpf = self.ebpf.as_ref().expect("loaded");
        let counters: PerCpuArray<_, u64> =
            PerCpuArray::try_from(ebpf.map(MAP_COUNTERS).expect("counters")).expect("type");
        counters
            .get(&(counter as u32), 0)
            .expect("read counter")
            .iter()
            .sum()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Dropping the object detaches every link (cgroup, TCX, sk_msg).
        drop(self.ebpf.take());
        if let Some(dir) = self.pin_dir.take() {
            let _ = fs::remove_dir_all(&dir);
        }
        if let Some(dir) = self.cgroup.take()
            && let Err(e) = fs::remove_dir(&dir)
        {
            eprintln!("cannot remove cgroup {}: {e}", dir.display());
        }
    }
}

fn addr4(ip: Ipv4Addr, port: u16) -> Addr4 {
    Addr4 {
        ip: u32::from_ne_bytes(ip.octets()),
        port: port.to_be(),
        _pad: 0,
    }
}

fn vip_table(backends: &[Addr4]) -> VipBackends {
    assert!(backends.len() <= MAX_BACKENDS);
    let mut table = VipBackends {
        count: backends.len() as u32,
        generation: 1,
        ..VipBackends::default()
    };
    table.backends[..backends.len()].copy_from_slice(backends);
    table
}

/// Runs `python3 -c script args` inside `cgroup` (moved there before exec)
/// and returns its stdout as `key=value` pairs.
fn python_in_cgroup(cgroup: &Path, script: &str, args: &[String]) -> Vec<(String, String)> {
    // Opened before fork: the child only write(2)s, nothing that allocates.
    let procs = File::options()
        .write(true)
        .open(cgroup.join("cgroup.procs"))
        .expect("open cgroup.procs");
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(script).args(args);
    // SAFETY: the hook only calls write(2) on an open fd.
    unsafe {
        cmd.pre_exec(move || (&procs).write_all(b"0"));
    }
    let out = cmd.output().expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python3 failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn get<'a>(out: &'a [(String, String)], key: &str) -> &'a str {
    out.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("python printed no {key}: {out:?}"))
}

/// Echoes every TCP connection until EOF.
fn tcp_echo() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut stream = stream;
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = stream.read(&mut buf) {
                    if stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

fn udp_echo() -> u16 {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    let port = socket.local_addr().expect("addr").port();
    thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&buf[..n], from);
        }
    });
    port
}

const CONNECT_SCRIPT: &str = r#"
import socket, sys, time
vip, vip_port, udp_vip, udp_port, down, dead_port, plain_port = sys.argv[1:8]
s = socket.create_connection((vip, int(vip_port)), timeout=5)
print("vip_peer=%s:%d" % s.getpeername())
for _ in range(20):
    s.sendall(b"ping")
    reply = s.recv(16)
print("vip_reply=" + reply.decode())
s.close()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(5)
u.connect((udp_vip, int(udp_port)))
u.send(b"hi")
data, frm = u.recvfrom(16)
print("udp_reply=" + data.decode())
print("udp_from=%s:%d" % frm)
print("udp_peer=%s:%d" % u.getpeername())
u.close()
t = time.monotonic()
try:
    socket.create_connection((down, 80), timeout=5).close()
    print("down_errno=0")
except OSError as e:
    print("down_errno=%d" % e.errno)
print("down_ms=%d" % ((time.monotonic() - t) * 1000))
try:
    socket.create_connection(("127.0.0.1", int(dead_port)), timeout=5).close()
    print("dead_errno=0")
except OSError as e:
    print("dead_errno=%d" % e.errno)
p = socket.create_connection(("127.0.0.1", int(plain_port)), timeout=5)
print("plain_peer=%s:%d" % p.getpeername())
p.close()
"#;

/// connect4 steering (TCP and UDP), reverse NAT via getpeername4/recvmsg4,
/// refusal without backends, untouched non-VIP traffic, sock_ops latency,
/// and BTF field names in `bpftool map dump`.
#[test]
fn connect4_steers_and_sock_ops_measures() {
    if !ready() {
        return;
    }
    let mut fx = Fixture::new();
    let cgroup = fx.cgroup("connect");

    let backend_port = tcp_echo();
    let plain_port = tcp_echo();
    let udp_port = udp_echo();
    // A pod that refuses connections: a port nobody listens on any more.
    let dead_port = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let localhost = Ipv4Addr::LOCALHOST;
    let vip = Ipv4Addr::new(127, 255, 255, 1);
    let udp_vip = Ipv4Addr::new(127, 255, 255, 3);
    let down = Ipv4Addr::new(127, 255, 255, 2);
    let backend = addr4(localhost, backend_port);
    let dead = addr4(localhost, dead_port);
    {
        let ebpf = fx.ebpf();
        let mut vips: HashMap<_, Addr4, VipBackends> =
            HashMap::try_from(ebpf.map_mut(MAP_VIPS).expect("vips")).expect("type");
        vips.insert(addr4(vip, 80), vip_table(&[backend]), 0)
            .expect("vip");
        // `chosen` picks the second backend.
        let mut udp_table = vip_table(&[addr4(localhost, 9), addr4(localhost, udp_port)]);
        udp_table.chosen = 1;
        vips.insert(addr4(udp_vip, 53), udp_table, 0)
            .expect("udp vip");
        vips.insert(addr4(down, 80), vip_table(&[]), 0)
            .expect("down vip");
        let mut pods: HashMap<_, Addr4, u32> =
            HashMap::try_from(ebpf.map_mut(MAP_PODS).expect("pods")).expect("type");
        pods.insert(backend, 0, 0).expect("pod");
        pods.insert(dead, 0, 0).expect("dead pod");
    }
    fx.attach_cgroup(
        &cgroup,
        &[
            PROG_CONNECT4,
            PROG_GETPEERNAME4,
            PROG_RECVMSG4,
            PROG_SOCKOPS,
        ],
    );

    let out = python_in_cgroup(
        &cgroup,
        CONNECT_SCRIPT,
        &[
            vip.to_string(),
            "80".into(),
            udp_vip.to_string(),
            "53".into(),
            down.to_string(),
            dead_port.to_string(),
            plain_port.to_string(),
        ],
    );
    // The echo server behind the VIP answered, yet the app sees the VIP.
    assert_eq!(get(&out, "vip_reply"), "ping");
    assert_eq!(get(&out, "vip_peer"), format!("{vip}:80"));
    assert_eq!(get(&out, "udp_reply"), "hi");
    assert_eq!(get(&out, "udp_from"), format!("{udp_vip}:53"), "recvmsg4");
    assert_eq!(get(&out, "udp_peer"), format!("{udp_vip}:53"));
    // No backend: refused at once with EHOSTUNREACH (bpf_set_retval).
    assert_eq!(get(&out, "down_errno"), EHOSTUNREACH.to_string(), "{out:?}");
    let down_ms: u64 = get(&out, "down_ms").parse().expect("ms");
    assert!(down_ms < 1000, "refusal took {down_ms} ms");
    assert_eq!(get(&out, "dead_errno"), ECONNREFUSED.to_string());
    // Not a VIP: untouched.
    assert_eq!(get(&out, "plain_peer"), format!("127.0.0.1:{plain_port}"));

    assert_eq!(fx.counter(Counter::ConnectRewrite), 2, "TCP + UDP VIP");
    assert_eq!(fx.counter(Counter::ConnectNoBackend), 1);
    assert!(fx.counter(Counter::RevNatHit) >= 3);
    assert!(fx.counter(Counter::PodEstablished) >= 1);
    assert!(fx.counter(Counter::RttSample) >= 1);

    let ebpf = fx.ebpf();
    let revnat: HashMap<_, u64, Addr4> =
        HashMap::try_from(ebpf.map(MAP_REVNAT).expect("revnat")).expect("type");
    let vips_seen: Vec<Addr4> = revnat
        .iter()
        .map(|kv| kv.expect("revnat entry").1)
        .collect();
    assert!(vips_seen.contains(&addr4(vip, 80)), "{vips_seen:?}");

    let lat: PerCpuHashMap<_, Addr4, PodLatency> =
        PerCpuHashMap::try_from(ebpf.map(MAP_POD_LAT).expect("lat")).expect("type");
    let per_cpu = lat.get(&backend, 0).expect("latency entry for the backend");
    let samples: u64 = per_cpu.iter().map(|l| l.samples).sum();
    let connects: u64 = per_cpu.iter().map(|l| l.connects).sum();
    let newest = per_cpu
        .iter()
        .max_by_key(|l| l.last_update_ns)
        .expect("cpus");
    assert!(samples > 0, "{per_cpu:?}");
    assert_eq!(connects, 1);
    assert!(newest.last_update_ns > 0);
    eprintln!("backend srtt {} us over {samples} samples", newest.srtt_us);
    let per_cpu = lat.get(&dead, 0).expect("latency entry for the dead pod");
    let failed: u64 = per_cpu.iter().map(|l| l.failed_connects).sum();
    assert_eq!(failed, 1, "{per_cpu:?}");

    // BTF maps: bpftool prints the ABI's field names.
    let Some(pin_dir) = fx.pin_dir("connect") else {
        return;
    };
    let pin = pin_dir.join(MAP_VIPS);
    fx.ebpf()
        .map(MAP_VIPS)
        .expect("vips")
        .pin(&pin)
        .expect("pin STEER_VIPS");
    let Some(bpftool) = which("bpftool") else {
        skip("bpftool is not installed (`cargo xtask setup` installs it)");
        return;
    };
    let dump = Command::new(bpftool)
        .args(["map", "dump", "pinned"])
        .arg(&pin)
        .output()
        .expect("run bpftool");
    let text = String::from_utf8_lossy(&dump.stdout);
    assert!(dump.status.success(), "bpftool: {dump:?}");
    for field in ["backends", "count", "chosen", "generation", "ip", "port"] {
        assert!(
            text.contains(&format!("\"{field}\"")),
            "no {field} in:\n{text}"
        );
    }
}

const SK_MSG_SCRIPT: &str = r#"
import socket
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen()
c = socket.create_connection(srv.getsockname(), timeout=5)
a, _ = srv.accept()
a.settimeout(5)
ok = 0
for i in range(50):
    msg = b"msg-%03d" % i
    c.sendall(msg)
    got = b""
    while len(got) < len(msg):
        got += a.recv(len(msg) - len(got))
    ok += got == msg
a.sendall(b"pong")
print("back=" + c.recv(4).decode())
print("ok=%d" % ok)
"#;

/// sock_ops puts node-local sockets into STEER_SOCKS; sk_msg redirects
/// sends straight into the peer socket.
#[test]
fn sk_msg_redirects_node_local_sockets() {
    if !ready() {
        return;
    }
    let mut fx = Fixture::new();
    let cgroup = fx.cgroup("skmsg");
    {
        let ebpf = fx.ebpf();
        let mut config: Array<_, Config> =
            Array::try_from(ebpf.map_mut(MAP_CONFIG).expect("config")).expect("type");
        config
            .set(
                0,
                Config {
                    sk_msg_enabled: 1,
                    _pad: 0,
                },
                0,
            )
            .expect("config");
        let socks: SockHash<_, SockKey> =
            SockHash::try_from(ebpf.map(MAP_SOCKS).expect("socks")).expect("type");
        let socks_fd = socks.fd().try_clone().expect("dup sockhash fd");
        let program: &mut SkMsg = ebpf
            .program_mut(PROG_SK_MSG)
            .expect("sk_msg")
            .try_into()
            .expect("type");
        program.load().expect("load sk_msg");
        program.attach(&socks_fd).expect("attach sk_msg");
    }
    fx.attach_cgroup(&cgroup, &[PROG_SOCKOPS]);

    let out = python_in_cgroup(&cgroup, SK_MSG_SCRIPT, &[]);
    assert_eq!(get(&out, "ok"), "50", "{out:?}");
    assert_eq!(get(&out, "back"), "pong");
    let redirected = fx.counter(Counter::SkMsgRedirect);
    assert!(redirected >= 51, "redirected {redirected}");
    assert_eq!(fx.counter(Counter::SkMsgPass), 0);
}

/// TC on `lo` counts bytes and packets per pod IP, both directions.
#[test]
fn tc_counts_pod_traffic_on_loopback() {
    if !ready() {
        return;
    }
    let mut fx = Fixture::new();
    let localhost = u32::from_ne_bytes(Ipv4Addr::LOCALHOST.octets());
    {
        let ebpf = fx.ebpf();
        let mut pod_ips: HashMap<_, u32, u32> =
            HashMap::try_from(ebpf.map_mut(MAP_POD_IPS).expect("pod ips")).expect("type");
        pod_ips.insert(localhost, 0, 0).expect("pod ip");
        for (name, direction) in [
            (PROG_TC_INGRESS, TcAttachType::Ingress),
            (PROG_TC_EGRESS, TcAttachType::Egress),
        ] {
            let program: &mut SchedClassifier = ebpf
                .program_mut(name)
                .expect("tc program")
                .try_into()
                .expect("type");
            program
                .load()
                .unwrap_or_else(|e| panic!("load {name}: {e:?}"));
            // TCX (kernel >= 6.6), first in the chain: a program before ours
            // returning TC_ACT_OK would end the chain and hide the packets.
            // Ours returns TC_ACT_PIPE (next), so it never hides any from
            // later programs. Else clsact + cls_bpf through netlink.
            let tcx = TcAttachOptions::TcxOrder(LinkOrder::first());
            if let Err(tcx) = program.attach_with_options("lo", direction, tcx) {
                eprintln!("TCX attach failed ({tcx:?}), trying clsact");
                let _ = tc::qdisc_add_clsact("lo");
                program
                    .attach_with_options(
                        "lo",
                        direction,
                        TcAttachOptions::Netlink(Default::default()),
                    )
                    .unwrap_or_else(|e| panic!("attach {name}: {e:?}"));
            }
        }
    }

    let port = tcp_echo();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0u8; 1000];
    for _ in 0..10 {
        stream.write_all(&[7u8; 1000]).expect("write");
        stream.read_exact(&mut buf).expect("echo");
    }
    drop(stream);

    let ebpf = fx.ebpf();
    let traffic: PerCpuHashMap<_, u32, PodTraffic> =
        PerCpuHashMap::try_from(ebpf.map(MAP_TRAFFIC).expect("traffic")).expect("type");
    let per_cpu = traffic.get(&localhost, 0).expect("traffic for 127.0.0.1");
    let sum = |f: fn(&PodTraffic) -> u64| per_cpu.iter().map(f).sum::<u64>();
    let (tx_bytes, tx_packets) = (sum(|t| t.tx_bytes), sum(|t| t.tx_packets));
    let (rx_bytes, rx_packets) = (sum(|t| t.rx_bytes), sum(|t| t.rx_packets));
    eprintln!("lo: tx {tx_bytes} B / {tx_packets} pkts, rx {rx_bytes} B / {rx_packets} pkts");
    // 20 KB of payload crossed lo (10 KB each way), in >= 20 data packets.
    assert!(tx_packets >= 20 && rx_packets >= 20);
    assert!(tx_bytes >= 20_000 && rx_bytes >= 20_000);
}
