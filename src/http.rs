//! Reading an answer's body with a limit. Every body this process reads
//! (ARM pages and error bodies, token responses, the ingestion endpoint's
//! replies) goes through [`read`] or [`collect`], so that a peer that sends
//! too much, or never stops (a broken proxy), costs at most its limit in
//! memory and fails like any other fault of that side.
//!
//! A `Content-Length` past the limit is refused before a byte is read;
//! otherwise chunks are kept until the limit is passed, and reading stops
//! there. An answer that trickles without end is the request timeout's to
//! stop: reqwest's covers the body too.
//!
//! Errors name the limit, how much was read and the origin only (scheme,
//! host, port): the ingestion URL carries its token in its query, and
//! reqwest's errors print their URL, so [`describe`] leaves it out.
//!
//! (http-body-util's `Limited` does the counting, but says neither how much
//! was read nor anything of `Content-Length`, and token responses reach us
//! as the Azure SDK's stream, not as an `http_body::Body`.)

use bytes::Bytes;
use futures::{Stream, StreamExt};

/// The most bytes a body may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit(u64);

impl Limit {
    pub const fn kib(n: u64) -> Limit {
        Limit(n << 10)
    }

    pub const fn mib(n: u64) -> Limit {
        Limit(n << 20)
    }

    pub const fn bytes(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&size(self.0))
    }
}

/// `n` bytes for a message: whole KiB and MiB as such, else in bytes.
fn size(n: u64) -> String {
    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;
    match n {
        n if n >= MIB && n % MIB == 0 => format!("{} MiB", n / MIB),
        n if n >= KIB && n % KIB == 0 => format!("{} KiB", n / KIB),
        1 => "1 byte".to_string(),
        n => format!("{n} bytes"),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(
        "the answer from {origin} declares {} (Content-Length), past its limit of {limit}: refused unread",
        size(*declared)
    )]
    Declared {
        origin: String,
        limit: Limit,
        declared: u64,
    },
    #[error(
        "the answer from {origin} went past its limit of {limit} ({} read): refused, the rest unread",
        size(*read)
    )]
    TooLarge {
        origin: String,
        limit: Limit,
        read: u64,
    },
    #[error("the answer from {origin} failed after {}: {cause}", size(*read))]
    Cut {
        origin: String,
        read: u64,
        /// What the transport said, without the URL.
        cause: String,
    },
}

impl BodyError {
    /// True when the body was refused for its size: asking again would most
    /// likely bring as much, unlike a connection cut mid-way.
    pub fn is_too_large(&self) -> bool {
        !matches!(self, BodyError::Cut { .. })
    }
}

/// Reads `resp`'s body whole, refusing it past `limit`.
pub async fn read(resp: reqwest::Response, limit: Limit) -> Result<Bytes, BodyError> {
    let origin = origin(resp.url());
    let declared = resp.content_length();
    let chunks = resp.bytes_stream().map(|c| c.map_err(|e| describe(&e)));
    collect(chunks, declared, limit, origin).await
}

/// Collects `chunks` (a body whose `Content-Length` said `declared`, from
/// `origin`), refusing them past `limit`.
pub async fn collect<S>(
    chunks: S,
    declared: Option<u64>,
    limit: Limit,
    origin: String,
) -> Result<Bytes, BodyError>
where
    S: Stream<Item = Result<Bytes, String>>,
{
    if let Some(declared) = declared.filter(|d| *d > limit.0) {
        return Err(BodyError::Declared {
            origin,
            limit,
            declared,
        });
    }
    let mut chunks = std::pin::pin!(chunks);
    // A declared length is a hint only: the limit is what is enforced.
    let hint = usize::try_from(declared.unwrap_or(0)).unwrap_or(0);
    let mut body = Vec::with_capacity(hint);
    let mut read = 0u64;
    while let Some(chunk) = chunks.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(cause) => {
                return Err(BodyError::Cut {
                    origin,
                    read,
                    cause,
                });
            }
        };
        read += chunk.len() as u64;
        if read > limit.0 {
            return Err(BodyError::TooLarge {
                origin,
                limit,
                read,
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(body))
}

/// Opens `n` connections to `base`'s origin (its root, unauthenticated: no token
/// and nothing of a subscription goes with them) and leaves them in
/// `client`'s pool, for requests that will need them once something
/// sequential before them is done: a `--once` run's first pages wait for
/// the token and the start check (three round trips each on a new TLS
/// connection, one on a warm one). Whatever the answer, its body (at most
/// 16 KiB) is read so that the connection is kept; errors are only logged at
/// debug. Returns at once; the requests run on their own.
pub fn warm(client: &reqwest::Client, base: &url::Url, n: usize, timeout: std::time::Duration) {
    let mut root = base.clone();
    root.set_path("/");
    root.set_query(None);
    for _ in 0..n {
        let (client, root) = (client.clone(), root.clone());
        tokio::spawn(async move {
            let answer = match client.get(root.clone()).timeout(timeout).send().await {
                Ok(resp) => read(resp, Limit::kib(16))
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                Err(e) => Err(describe(&e)),
            };
            if let Err(e) = answer {
                tracing::debug!(origin = %origin(&root), error = %e, "a connection opened ahead did not stay open");
            }
        });
    }
}

/// `scheme://host:port` of `url` (the port when not the scheme's own):
/// nothing of its path, query or user, where tokens may be.
pub fn origin(url: &url::Url) -> String {
    url.origin().ascii_serialization()
}

/// A transport error without its URL.
pub fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "response body cut off"
    } else {
        "request failed"
    };
    // The causes only: `e` itself prints its URL.
    crate::with_causes(kind.to_string(), std::error::Error::source(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use axum::body::Body;
    use axum::response::Response;

    const TOKEN: &str = "query-token-DO-NOT-PRINT";

    /// 64 KiB of a JSON page that never ends.
    static SPACES: [u8; 65536] = [b' '; 65536];

    /// A server whose every answer is `respond`'s; the URL to ask (with a
    /// token in its path and query) and the bytes the server handed over.
    async fn serve(respond: fn(Arc<AtomicU64>) -> Response) -> (String, Arc<AtomicU64>) {
        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        let app = axum::Router::new().fallback(move || {
            let counter = counter.clone();
            async move { respond(counter) }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/api/{TOKEN}?token={TOKEN}"), sent)
    }

    /// A body of 64 KiB chunks without end, counted as they are handed over.
    fn endless(sent: Arc<AtomicU64>) -> Body {
        let chunks = futures::stream::repeat_with(move || {
            sent.fetch_add(SPACES.len() as u64, Ordering::Relaxed);
            Ok::<_, std::io::Error>(Bytes::from_static(&SPACES))
        });
        Body::from_stream(chunks)
    }

    async fn get(url: &str, limit: Limit) -> Result<Bytes, BodyError> {
        let resp = reqwest::get(url).await.unwrap();
        read(resp, limit).await
    }

    #[tokio::test]
    async fn a_body_within_its_limit_is_read_whole() {
        let (url, _) = serve(|_| Response::new(Body::from("{\"value\": []}"))).await;
        let body = get(&url, Limit::kib(1)).await.unwrap();
        assert_eq!(&body[..], b"{\"value\": []}");
        // Exactly at the limit is within it.
        let (url, _) = serve(|_| Response::new(Body::from(vec![b'x'; 1024]))).await;
        assert_eq!(get(&url, Limit::kib(1)).await.unwrap().len(), 1024);
    }

    #[tokio::test]
    async fn an_endless_body_is_refused_just_past_its_limit() {
        let (url, _) = serve(|sent| Response::new(endless(sent))).await;
        let e = get(&url, Limit::mib(1)).await.unwrap_err();
        let BodyError::TooLarge { read, limit, .. } = &e else {
            panic!("{e:?}")
        };
        // Reading stopped at the chunk that passed the limit.
        assert!(*read > limit.bytes() && *read < 2 * limit.bytes(), "{e}");
        let text = e.to_string();
        assert!(text.contains("past its limit of 1 MiB"), "{text}");
        assert!(text.contains("http://127.0.0.1:"), "{text}");
        assert!(!text.contains(TOKEN) && !text.contains("/api"), "{text}");
        assert!(e.is_too_large());
    }

    #[tokio::test]
    async fn a_content_length_past_the_limit_is_refused_unread() {
        let (url, sent) = serve(|sent| {
            Response::builder()
                .header("content-length", (64u64 << 20).to_string())
                .body(endless(sent))
                .unwrap()
        })
        .await;
        let e = get(&url, Limit::mib(1)).await.unwrap_err();
        assert!(matches!(e, BodyError::Declared { declared, .. } if declared == 64 << 20));
        assert!(e.to_string().contains("declares 64 MiB"), "{e}");
        // What left the server is what socket buffers took, not the body.
        assert!(sent.load(Ordering::Relaxed) < 32 << 20);
    }

    #[tokio::test]
    async fn a_body_cut_off_says_how_much_came() {
        let (url, _) = serve(|_| {
            let start = futures::stream::iter([Ok(Bytes::from_static(b"{\"value\": ["))]);
            // Cut once the start is out: cut at once, the headers would not be.
            let cut = futures::stream::once(async {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                Err(std::io::Error::other("cut"))
            });
            Response::new(Body::from_stream(start.chain(cut)))
        })
        .await;
        let e = get(&url, Limit::mib(1)).await.unwrap_err();
        assert!(!e.is_too_large());
        let text = e.to_string();
        assert!(text.contains("failed after 11 bytes"), "{text}");
        assert!(!text.contains(TOKEN), "{text}");
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(Limit::mib(64).to_string(), "64 MiB");
        assert_eq!(Limit::kib(64).to_string(), "64 KiB");
        assert_eq!(size(1), "1 byte");
        assert_eq!(size((64 << 20) + 1), "67108865 bytes");
    }

    /// What a request to the recording server carried.
    #[derive(Debug, Clone)]
    struct Seen {
        peer: std::net::SocketAddr,
        uri: String,
        authorized: bool,
    }

    #[tokio::test]
    async fn warm_connections_carry_nothing_and_serve_the_requests_after_them() {
        use axum::extract::ConnectInfo;
        use axum::http::{HeaderMap, Uri};
        let seen: Arc<std::sync::Mutex<Vec<Seen>>> = Arc::default();
        let record = seen.clone();
        let app = axum::Router::new().fallback(
            move |ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
                  uri: Uri,
                  headers: HeaderMap| {
                let record = record.clone();
                async move {
                    let authorized = headers.contains_key("authorization");
                    let uri = uri.to_string();
                    record.lock().unwrap().push(Seen {
                        peer,
                        uri,
                        authorized,
                    });
                    (axum::http::StatusCode::NOT_FOUND, "no such route")
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let client = reqwest::Client::new();
        // A base with a path and a query (where a token could be): neither goes.
        let base = url::Url::parse(&format!("http://{addr}/api/{TOKEN}?token={TOKEN}")).unwrap();
        warm(&client, &base, 3, std::time::Duration::from_secs(10));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while seen.lock().unwrap().len() < 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "the warm requests did not arrive"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let warm_seen = seen.lock().unwrap().clone();
        for s in &warm_seen {
            assert_eq!(s.uri, "/", "{s:?}");
            assert!(!s.authorized, "{s:?}");
        }
        let opened: std::collections::BTreeSet<_> = warm_seen.iter().map(|s| s.peer).collect();
        assert_eq!(opened.len(), 3, "three connections: {warm_seen:?}");
        // Once answered, the connections wait in the pool: three requests at
        // once open none of their own.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let url = format!("http://{addr}/next");
        loop {
            let before = seen.lock().unwrap().len();
            let sent = futures::future::join_all((0..3).map(|_| client.get(&url).send())).await;
            assert!(sent.iter().all(|r| r.is_ok()));
            let after: Vec<Seen> = seen.lock().unwrap()[before..].to_vec();
            if after.iter().all(|s| opened.contains(&s.peer)) {
                break;
            }
            // A warm answer read a moment after its request was counted.
            assert!(
                std::time::Instant::now() < deadline,
                "new connections: {after:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}
