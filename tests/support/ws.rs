//! A small WebSocket client for the tunnel tests: open through Portcullis, echo, and wait for
//! the tunnel to close, each within a deadline.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Response;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A client WebSocket.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens `req` (a `ws://` URL or request) over `stream`; the handshake must answer 101.
pub async fn open<R: IntoClientRequest + Unpin>(stream: TcpStream, req: R) -> Ws {
    open_with_response(stream, req).await.0
}

/// Like [`open`], also returning the handshake's 101 response.
pub async fn open_with_response<R: IntoClientRequest + Unpin>(
    stream: TcpStream,
    req: R,
) -> (Ws, Response) {
    let (ws, resp) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream)),
    )
    .await
    .expect("handshake timed out")
    .expect("handshake failed");
    assert_eq!(resp.status(), 101);
    (ws, resp)
}

/// Sends `text` and expects it back.
pub async fn echo(ws: &mut Ws, text: &str) {
    echo_message(ws, Message::text(text)).await
}

/// Sends `msg` and expects it back.
pub async fn echo_message(ws: &mut Ws, msg: Message) {
    tokio::time::timeout(Duration::from_secs(10), ws.send(msg.clone()))
        .await
        .unwrap()
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("no echo within 10 s")
        .expect("stream ended")
        .expect("websocket error");
    assert_eq!(got, msg);
}

/// Waits (bounded) until the tunnel is closed under the client: end of stream, an error or a
/// close frame.
pub async fn closed_within(ws: &mut Ws, deadline: Duration) {
    let end = tokio::time::timeout(deadline, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(end.is_ok(), "tunnel still open after {deadline:?}");
}
