//! `lock`'s metrics through a Prometheus exporter: 100 tasks contend for one lock, then the
//! metrics are printed in Prometheus's text format (what a `/metrics` endpoint would serve;
//! the exporter's `http-listener` feature serves it itself).
//!
//! ```text
//! cargo run --example prometheus --features metrics              # local backend
//! cargo run --example prometheus --features metrics,etcd -- etcd:http://127.0.0.1:2379
//! ```

use std::time::Duration;

use lock::metrics::Metrics;
use lock::{Service, SessionConfig};
use metrics_exporter_prometheus::PrometheusBuilder;

#[tokio::main]
async fn main() -> lock::Result<()> {
    // Histograms with buckets (Prometheus aggregates those across instances; without buckets
    // the exporter renders summaries).
    let recorder = PrometheusBuilder::new()
        .set_buckets(&[0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0])
        .expect("buckets")
        .build_recorder();
    let metrics = recorder.handle();
    metrics::set_global_recorder(recorder).expect("the first recorder of this program");

    let uri = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "local:".to_owned());
    // The application chooses what is measured: a layer around its service.
    let scheme = uri.split(':').next().unwrap_or("unknown");
    let service: Service = lock::new(&uri).await?.layer(Metrics::new(scheme));
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let service = service.clone();
        tasks.push(tokio::spawn(async move {
            let session = service
                .new_session(SessionConfig::new(Duration::from_secs(10)))
                .await?;
            let mut locker = session.new_locker("reports/nightly");
            let _held = locker.lock().await?;
            tokio::time::sleep(Duration::from_millis(1)).await; // the critical section
            locker.unlock().await?;
            session.close().await
        }));
    }
    for task in tasks {
        task.await.expect("a task panicked")?;
    }
    service.close().await?;
    print!("{}", metrics.render());
    Ok(())
}
