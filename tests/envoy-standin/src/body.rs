//! Body plumbing: reading a body in Envoy-sized chunks, and a channel-backed body for bytes
//! that reach their destination only after the ext_proc server has seen them.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::{FutureExt, StreamExt};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use tokio::sync::mpsc;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type AnyBody = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(data: impl Into<Bytes>) -> AnyBody {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> AnyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// One step of a body as Envoy's filters see it.
#[derive(Debug)]
pub enum Item {
    Data { data: Bytes, end_of_stream: bool },
    Trailers(http::HeaderMap),
}

/// Reads a body the way Envoy's codec hands it to filters: whatever has arrived, coalesced up
/// to `max` bytes per chunk, with end_of_stream on the last data chunk when the framing says so
/// (content-length), or on an empty chunk when the end is only seen later (chunked encoding).
pub struct ChunkSource {
    body: AnyBody,
    max: usize,
    buf: BytesMut,
    ended: bool,
    finished: bool,
    trailers: Option<http::HeaderMap>,
    keep_trailers: bool,
}

impl ChunkSource {
    /// `keep_trailers: false` drops trailers (request trailers are not modelled) and ends the
    /// body with an end_of_stream chunk instead.
    pub fn new(body: AnyBody, max: usize, keep_trailers: bool) -> Self {
        Self {
            body,
            max: max.max(1),
            buf: BytesMut::new(),
            ended: false,
            finished: false,
            trailers: None,
            keep_trailers,
        }
    }

    /// True when nothing at all will come (Envoy's end_stream on the headers).
    pub fn is_end_stream(&self) -> bool {
        self.finished
            || (self.buf.is_empty()
                && self.trailers.is_none()
                && (self.ended || self.body.is_end_stream()))
    }

    /// The next chunk; `None` once the body is done. Cancel-safe: partial data stays buffered.
    pub async fn next(&mut self) -> Result<Option<Item>, BoxError> {
        loop {
            if self.finished {
                return Ok(None);
            }
            if self.buf.len() >= self.max || (self.ended && !self.buf.is_empty()) {
                return Ok(Some(self.emit()));
            }
            if self.ended {
                self.finished = true;
                return Ok(Some(match self.trailers.take() {
                    Some(t) => Item::Trailers(t),
                    None => Item::Data {
                        data: Bytes::new(),
                        end_of_stream: true,
                    },
                }));
            }
            // Block only when nothing is buffered; otherwise take just what is already here.
            let frame = if self.buf.is_empty() {
                Some(self.body.frame().await)
            } else {
                self.body.frame().now_or_never()
            };
            match frame {
                None => return Ok(Some(self.emit())),
                Some(None) => self.ended = true,
                Some(Some(frame)) => match frame?.into_data() {
                    Ok(data) => {
                        self.buf.extend_from_slice(&data);
                        self.ended = self.body.is_end_stream();
                    }
                    Err(frame) => {
                        if let (Ok(t), true) = (frame.into_trailers(), self.keep_trailers) {
                            self.trailers = Some(t);
                        }
                        self.ended = true;
                    }
                },
            }
        }
    }

    fn emit(&mut self) -> Item {
        let data = self.buf.split_to(self.buf.len().min(self.max)).freeze();
        let end_of_stream = self.ended && self.buf.is_empty() && self.trailers.is_none();
        self.finished = end_of_stream;
        Item::Data {
            data,
            end_of_stream,
        }
    }

    /// The whole body, or `Err(None)` once it grows past `limit` (Envoy's buffer limit).
    pub async fn collect(&mut self, limit: usize) -> Result<Bytes, Option<BoxError>> {
        let mut all = BytesMut::new();
        while let Some(item) = self.next().await.map_err(Some)? {
            if let Item::Data { data, .. } = item {
                all.extend_from_slice(&data);
                if all.len() > limit {
                    return Err(None);
                }
            }
        }
        Ok(all.freeze())
    }

    /// The rest of the body, untouched, for forwarding without ext_proc.
    pub fn into_body(self) -> AnyBody {
        if self.is_end_stream() {
            // Keeps a body-less request body-less (no chunked framing on a GET).
            return empty();
        }
        if self.buf.is_empty() && !self.ended {
            return self.body;
        }
        let head = (!self.buf.is_empty()).then(|| Ok(Frame::data(self.buf.freeze())));
        let tail = self.trailers.map(|t| Ok(Frame::trailers(t)));
        if self.ended {
            return StreamBody::new(futures::stream::iter(head.into_iter().chain(tail)))
                .boxed_unsync();
        }
        let rest = http_body_util::BodyStream::new(self.body);
        StreamBody::new(futures::stream::iter(head).chain(rest)).boxed_unsync()
    }
}

enum Msg {
    Data(Bytes),
    End(Option<http::HeaderMap>),
}

/// Sending half of [`pipe`]. Dropping it without [`PipeTx::end`] makes the body fail, which
/// aborts the HTTP message - how Envoy's stream reset looks on the wire.
pub struct PipeTx(mpsc::Sender<Msg>);

#[derive(Debug)]
pub struct Closed;

impl PipeTx {
    pub async fn data(&self, data: Bytes) -> Result<(), Closed> {
        if data.is_empty() {
            return Ok(());
        }
        self.0.send(Msg::Data(data)).await.map_err(|_| Closed)
    }

    pub async fn end(self, trailers: Option<http::HeaderMap>) -> Result<(), Closed> {
        self.0.send(Msg::End(trailers)).await.map_err(|_| Closed)
    }
}

pub struct PipeBody {
    rx: mpsc::Receiver<Msg>,
    done: bool,
}

/// A body fed chunk by chunk from another task, with backpressure.
pub fn pipe() -> (PipeTx, AnyBody) {
    let (tx, rx) = mpsc::channel(8);
    (PipeTx(tx), PipeBody { rx, done: false }.boxed_unsync())
}

impl Body for PipeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Msg::Data(data))) => Poll::Ready(Some(Ok(Frame::data(data)))),
            Poll::Ready(Some(Msg::End(trailers))) => {
                self.done = true;
                Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))))
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(Some(Err("stream reset by envoy-standin".into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(item: Option<Item>) -> (Vec<u8>, bool) {
        match item {
            Some(Item::Data {
                data,
                end_of_stream,
            }) => (data.to_vec(), end_of_stream),
            other => panic!("expected data, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn full_body_is_cut_at_max_with_eos_on_last_chunk() {
        let mut src = ChunkSource::new(full(vec![7u8; 10]), 4, false);
        assert!(!src.is_end_stream());
        assert_eq!(data(src.next().await.unwrap()), (vec![7; 4], false));
        assert_eq!(data(src.next().await.unwrap()), (vec![7; 4], false));
        assert_eq!(data(src.next().await.unwrap()), (vec![7; 2], true));
        assert!(src.next().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn late_end_gets_an_empty_eos_chunk_and_pipe_streams() {
        let (tx, body) = pipe();
        let mut src = ChunkSource::new(body, 16, true);
        tx.data(Bytes::from_static(b"ab")).await.unwrap();
        assert_eq!(data(src.next().await.unwrap()), (b"ab".to_vec(), false));
        tx.end(None).await.unwrap();
        assert_eq!(data(src.next().await.unwrap()), (vec![], true));
        assert!(ChunkSource::new(empty(), 4, false).is_end_stream());
    }

    #[tokio::test]
    async fn dropped_pipe_fails_the_body() {
        let (tx, mut body) = pipe();
        drop(tx);
        assert!(body.frame().await.unwrap().is_err());
    }
}
