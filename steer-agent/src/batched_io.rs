//! An ext_proc connection's socket as h2 sees it: reported as not vectored,
//! so h2 copies DATA frames of up to 1 KiB into its write buffer instead of
//! ending the buffer at every frame of 256 bytes or more and writing it with
//! its own `writev`. A routing reply (headers, `envoy.lb` and `steer`
//! metadata) is ~400 bytes: unbatched, every reply cost one syscall and one
//! loopback wake-up of Envoy; batched, the replies of all streams answered in
//! one event-loop turn leave in one write.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

#[derive(Debug)]
pub struct BatchedWrites<T>(pub T);

impl<T: AsyncRead + Unpin> AsyncRead for BatchedWrites<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for BatchedWrites<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    /// The point of this type: h2 then batches frames up to 1 KiB.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

impl<T: Connected> Connected for BatchedWrites<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::BatchedWrites;

    #[tokio::test]
    async fn forwards_reads_and_writes_and_reports_no_vectored_writes() {
        let (a, b) = tokio::io::duplex(64);
        let (mut a, mut b) = (BatchedWrites(a), BatchedWrites(b));
        assert!(!tokio::io::AsyncWrite::is_write_vectored(&a));
        a.write_all(b"ping").await.unwrap();
        a.shutdown().await.unwrap();
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"ping");
    }
}
