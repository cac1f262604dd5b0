//! A writer that shows every chunk on its way: to count or hash a stream as it passes.

use tokio::io::AsyncWrite;

/// Passes writes through to `inner` and shows each written chunk to `seen` (to count or hash
/// a stream on its way).
pub struct TapWriter<W, F> {
    pub inner: W,
    seen: F,
}

impl<W, F: FnMut(&[u8])> TapWriter<W, F> {
    pub fn new(inner: W, seen: F) -> Self {
        TapWriter { inner, seen }
    }
}

impl<W: AsyncWrite + Unpin, F: FnMut(&[u8]) + Unpin> AsyncWrite for TapWriter<W, F> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let r = std::pin::Pin::new(&mut this.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &r {
            (this.seen)(&buf[..*n]);
        }
        r
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
