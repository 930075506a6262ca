//! Response bodies streamed from a channel: a task produces the chunks (a snapshot or a backup
//! read from one redb transaction), the body sends them as they come, and memory stays bounded by
//! the channel's capacity.

use bytes::Bytes;
use tokio::sync::mpsc::Receiver;

struct ChannelBody<T>(Receiver<Result<T, std::io::Error>>);

impl<T: Into<Bytes>> futures_core::Stream for ChannelBody<T> {
    type Item = Result<Bytes, std::io::Error>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|chunk| chunk.map(|r| r.map(Into::into)))
    }
}

/// A body that sends each chunk received on `rx`; an `Err` ends it with that error.
pub fn channel_body<T: Into<Bytes> + Send + 'static>(rx: Receiver<Result<T, std::io::Error>>) -> axum::body::Body {
    axum::body::Body::from_stream(ChannelBody(rx))
}
