//! Small blocking helpers the kernel benchmarks run as child processes
//! (hidden `cargo xtask __…` subcommands), so each measurement happens in a
//! process the bench puts in the cgroup it wants. Each prints one JSON line
//! of raw samples in nanoseconds (the bench summarizes), and each is bounded
//! in count and time.

use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// No helper loop runs longer than this.
const DEADLINE: Duration = Duration::from_secs(30);

/// Helpers die with the bench (a killed bench must not leave them behind).
fn die_with_parent() {
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag on this process.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn print_json(value: &serde_json::Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{value}")?;
    out.flush()?;
    Ok(())
}

/// `__connect-loop ADDR N`: N x (socket, connect(), close with RST) to ADDR.
/// Times connect() alone (where connect4 and the sock_ops connect callbacks
/// run) and the whole connect+close cycle. RST (SO_LINGER 0) keeps
/// thousands of connects from filling the port range with TIME_WAIT.
pub fn connect_loop(addr: SocketAddrV4, count: usize) -> Result<()> {
    die_with_parent();
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let one = |timed: bool| -> Result<(u64, u64)> {
        // SAFETY: plain socket(2); the fd is owned right below.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            bail!("socket: {}", std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let started = Instant::now();
        // SAFETY: `sa` is a valid sockaddr_in of the size given.
        let rc = unsafe {
            libc::connect(
                raw,
                (&raw const sa).cast::<libc::sockaddr>(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        let connected = started.elapsed();
        if rc != 0 {
            bail!("connect {addr}: {}", std::io::Error::last_os_error());
        }
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: valid fd and option buffer of the size given.
        unsafe {
            libc::setsockopt(
                raw,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&raw const linger).cast::<libc::c_void>(),
                size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        drop(fd);
        let cycle = started.elapsed();
        Ok(if timed {
            (ns(connected), ns(cycle))
        } else {
            (0, 0)
        })
    };
    // Warm caches, the listener's accept loop and the branch predictors.
    for _ in 0..count.min(200) {
        one(false)?;
    }
    let deadline = Instant::now() + DEADLINE;
    let (mut connect_ns, mut cycle_ns) = (Vec::with_capacity(count), Vec::with_capacity(count));
    while connect_ns.len() < count && Instant::now() < deadline {
        let (c, cy) = one(true)?;
        connect_ns.push(c);
        cycle_ns.push(cy);
    }
    print_json(&serde_json::json!({ "connect_ns": connect_ns, "cycle_ns": cycle_ns }))
}

/// `__rtt-probe ADDR N`: N TCP handshakes (connect() returns after one RTT)
/// and N `GET /health` round trips on one keep-alive connection.
pub fn rtt_probe(addr: SocketAddr, count: usize) -> Result<()> {
    die_with_parent();
    let deadline = Instant::now() + DEADLINE;
    let mut connect_ns = Vec::with_capacity(count);
    let mut failed = 0usize;
    while connect_ns.len() < count && Instant::now() < deadline && failed < count {
        let started = Instant::now();
        match TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
            Ok(conn) => {
                connect_ns.push(ns(started.elapsed()));
                drop(conn);
            }
            Err(_) => failed += 1,
        }
    }
    let mut http_ns = Vec::with_capacity(count);
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .with_context(|| format!("connect {addr}"))?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let request = format!("GET /health HTTP/1.1\r\nhost: {addr}\r\n\r\n");
    let mut buf = Vec::with_capacity(4096);
    let deadline = Instant::now() + DEADLINE;
    while http_ns.len() < count && Instant::now() < deadline {
        let started = Instant::now();
        conn.write_all(request.as_bytes())?;
        read_response(&mut conn, &mut buf)?;
        http_ns.push(ns(started.elapsed()));
    }
    print_json(&serde_json::json!({
        "connect_ns": connect_ns,
        "connect_failed": failed,
        "http_ns": http_ns,
    }))
}

/// Reads one HTTP/1.1 response (headers + content-length body).
fn read_response(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Result<()> {
    buf.clear();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed mid-response");
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_ascii_lowercase();
    anyhow::ensure!(head.starts_with("http/1.1 200"), "unexpected reply: {head}");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < header_end + length {
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed mid-body");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(())
}

/// `__echo-server ADDR`: echoes every byte back, one connection at a time on
/// the main thread (so `/proc/PID/schedstat` holds all of its CPU time).
/// Prints `listening on IP:PORT` when ready; runs until killed.
pub fn echo_server(addr: SocketAddr) -> Result<()> {
    die_with_parent();
    let listener = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {}", listener.local_addr()?)?;
        out.flush()?;
    }
    let mut buf = vec![0u8; 64 << 10];
    for conn in listener.incoming() {
        let mut conn = conn?;
        conn.set_nodelay(true)?;
        while let Ok(n) = conn.read(&mut buf) {
            if n == 0 || conn.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    }
    Ok(())
}

/// `__ping-pong ADDR N --size S`: N request-response round trips of S bytes
/// over one connection (TCP_NODELAY), after a short warm-up.
pub fn ping_pong(addr: SocketAddr, count: usize, size: usize) -> Result<()> {
    die_with_parent();
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .with_context(|| format!("connect {addr}"))?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let message = vec![b'x'; size.max(1)];
    let mut reply = vec![0u8; message.len()];
    let mut round_trip = |conn: &mut TcpStream| -> Result<Duration> {
        let started = Instant::now();
        conn.write_all(&message)?;
        conn.read_exact(&mut reply)?;
        let took = started.elapsed();
        anyhow::ensure!(reply == message, "echo mismatch");
        Ok(took)
    };
    let cpu_before = own_cpu_ns();
    let warm_up = count.min(500);
    for _ in 0..warm_up {
        round_trip(&mut conn)?;
    }
    let deadline = Instant::now() + DEADLINE;
    let mut rtt_ns = Vec::with_capacity(count);
    while rtt_ns.len() < count && Instant::now() < deadline {
        rtt_ns.push(ns(round_trip(&mut conn)?));
    }
    print_json(&serde_json::json!({
        "rtt_ns": rtt_ns,
        "round_trips_total": warm_up + rtt_ns.len(),
        "cpu_ns": own_cpu_ns().saturating_sub(cpu_before),
    }))
}

/// User + system CPU time of this process, in ns.
fn own_cpu_ns() -> u64 {
    // SAFETY: getrusage fills the zeroed struct we pass.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &raw mut usage);
        usage
    };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// `__listener ADDR`: the connect benchmark's target. A deep accept queue
/// (4096) and an accept thread that never reads, so a tight connect loop is
/// not slowed by SYN drops (a full queue costs a 1 s SYN retransmit). A
/// second thread sorts accepted sockets: those that say something (the
/// agent's `/metrics` scrapes, which keep the VIP's backend ready) get a
/// thread answering `200` with an empty body; the benchmark's reset ones are
/// dropped. Prints `listening on IP:PORT`; runs until killed.
pub fn listener(addr: SocketAddr) -> Result<()> {
    use std::os::fd::AsRawFd;
    die_with_parent();
    let listener = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
    // A second listen() on a listening socket only changes its backlog.
    // SAFETY: valid listening fd.
    if unsafe { libc::listen(listener.as_raw_fd(), 4096) } != 0 {
        bail!("listen: {}", std::io::Error::last_os_error());
    }
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {}", listener.local_addr()?)?;
        out.flush()?;
    }
    let (tx, rx) = std::sync::mpsc::channel::<TcpStream>();
    std::thread::spawn(move || {
        for mut conn in rx {
            let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
            let mut first = [0u8; 4096];
            match conn.read(&mut first) {
                Ok(n) if n > 0 => {
                    let start = first[..n].to_vec();
                    std::thread::spawn(move || serve_ok(conn, start));
                }
                _ => drop(conn),
            }
        }
    });
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        if tx.send(conn).is_err() {
            break;
        }
    }
    Ok(())
}

/// Answers every HTTP/1.1 request on `conn` with an empty `200`.
fn serve_ok(mut conn: TcpStream, mut buf: Vec<u8>) {
    let _ = conn.set_read_timeout(None);
    let _ = conn.set_nodelay(true);
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..at + 4);
            if conn
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .is_err()
            {
                return;
            }
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
