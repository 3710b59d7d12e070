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
