//! The control-plane runtime: engine scrapes, Kubernetes discovery, config
//! reloads, the datapath's map writes and `/metrics` rendering run on their
//! own thread and event loop (linkerd2-proxy's "admin" runtime), so none of
//! that work ever queues in front of an ext_proc message. The ext_proc event
//! loop keeps the request path, the prefix recorder and signal handling.

use tokio::runtime::{Builder, Handle};

/// Starts the control-plane thread; its runtime lives until the process ends.
pub fn start() -> std::io::Result<Handle> {
    let runtime = Builder::new_current_thread().enable_all().build()?;
    let handle = runtime.handle().clone();
    std::thread::Builder::new()
        .name("steer-control".into())
        .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
    Ok(handle)
}
