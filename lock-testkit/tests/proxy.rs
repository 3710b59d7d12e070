//! The fault proxy against a local echo server.

use std::time::{Duration, Instant};

use lock_testkit::proxy::{Fault, FaultProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn echo_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

async fn round_trip(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    s.write_all(b"ping").await.ok()?;
    let mut buf = [0u8; 4];
    match tokio::time::timeout(limit, s.read_exact(&mut buf)).await {
        Ok(Ok(_)) if &buf == b"ping" => Some(start.elapsed()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_does_what_it_says() {
    let proxy = FaultProxy::start(echo_server().await).await.unwrap();
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    assert!(
        round_trip(&mut s, Duration::from_secs(1)).await.is_some(),
        "forwards"
    );

    proxy.set(Fault::Latency(Duration::from_millis(200)));
    let rtt = round_trip(&mut s, Duration::from_secs(2)).await.unwrap();
    assert!(
        rtt >= Duration::from_millis(400) && rtt < Duration::from_millis(1500),
        "{rtt:?}"
    );

    proxy.set(Fault::Blackhole);
    assert!(
        round_trip(&mut s, Duration::from_millis(300))
            .await
            .is_none(),
        "drops"
    );

    proxy.set(Fault::Cut);
    let mut buf = [0u8; 4];
    let closed = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf))
        .await
        .unwrap();
    assert!(
        matches!(closed, Ok(0) | Err(_)),
        "existing connections are closed"
    );
    let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
    assert!(
        round_trip(&mut fresh, Duration::from_secs(1))
            .await
            .is_some(),
        "new ones work after a cut"
    );

    proxy.set(Fault::Refuse);
    let mut refused = TcpStream::connect(proxy.addr()).await.unwrap();
    assert!(
        round_trip(&mut refused, Duration::from_millis(300))
            .await
            .is_none(),
        "refused"
    );

    proxy.set(Fault::None);
    let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
    assert!(
        round_trip(&mut again, Duration::from_secs(1))
            .await
            .is_some(),
        "healed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_late_delivers_what_was_sent_after_what_comes_on_a_new_connection() {
    // A server that logs what it receives, in arrival order.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap();
    let (log, mut arrivals) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || log.send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let proxy = FaultProxy::start(target).await.unwrap();
    let mut old = TcpStream::connect(proxy.addr()).await.unwrap();
    proxy.set(Fault::Latency(Duration::from_millis(500)));
    old.write_all(b"stale").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    proxy.set(Fault::CutLate);
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(1), old.read(&mut byte)).await;
    assert!(
        matches!(closed, Ok(Ok(0) | Err(_))),
        "the client's connection is closed"
    );
    proxy.set(Fault::None);
    let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
    fresh.write_all(b"fresh").await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(2), arrivals.recv()).await;
    let second = tokio::time::timeout(Duration::from_secs(2), arrivals.recv()).await;
    assert_eq!(first.unwrap().unwrap(), b"fresh");
    assert_eq!(
        second.unwrap().unwrap(),
        b"stale",
        "what was in flight still lands, late"
    );
}
