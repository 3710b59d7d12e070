//! The `test:` backend's faults give what the etcd backend gives for the same fault, seen from
//! the application: each test makes the fault happen on the real cluster (a key deleted by
//! another client, a lease revoked, the cluster cut off through the fault proxy) and with the
//! `test:` controller, and compares the holder's loss cause, what waiting and later calls get,
//! and whether the session ended.

mod common;

use std::time::{Duration, Instant};

use lock_core::{Error, ErrorKind, Held, LossCause, Service, Session, SessionConfig};
use lock_testing::{Controller, Injected};
use lock_testkit::proxy::Fault;

const TTL: Duration = Duration::from_secs(2);

/// What the application saw of a fault.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    /// The holder's loss cause.
    loss: Option<LossCause>,
    /// Whether the session ended (its `done()`).
    session_ended: bool,
    /// What a `lock()` of the same session that was waiting meanwhile got.
    waiting: Option<Outcome>,
    /// What a new `lock()` in the same session got afterwards.
    later: Option<Outcome>,
}

/// A `lock()`'s outcome: granted, or the error's kind and whether it is transient.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Granted,
    Failed(ErrorKind, bool),
}

fn outcome<T>(result: Result<T, Error>) -> Outcome {
    match result {
        Ok(_) => Outcome::Granted,
        Err(e) => Outcome::Failed(e.kind(), e.is_transient()),
    }
}

fn unique(name: &str) -> String {
    common::unique_prefix(name).trim_end_matches('/').to_owned()
}

/// Waits (up to 15 s) for `held` to be lost; its cause.
async fn lost(held: &Held) -> Option<LossCause> {
    tokio::time::timeout(Duration::from_secs(15), held.lost())
        .await
        .expect("the hold was not lost");
    held.loss().map(|l| l.cause())
}

/// A session with a holder of `id` and, in the same session, a locker waiting for `blocked`
/// (which a session of `other` holds). The waiter's outcome is read after the fault.
struct Scene {
    session: Session,
    held: Held,
    waiter: tokio::task::JoinHandle<Outcome>,
    _blocker: Held,
}

async fn scene(service: &Service, other: &Service, id: &str, blocked: &str) -> Scene {
    let config = SessionConfig::new(TTL).with_timeout(Duration::from_secs(30));
    let session = service.new_session(config).await.unwrap();
    let held = session.new_locker(id).lock().await.unwrap();
    let holder = other.new_session(config).await.unwrap();
    let blocker = holder.new_locker(blocked).lock().await.unwrap();
    let mut waiting = session.new_locker(blocked);
    let waiter = tokio::spawn(async move { outcome(waiting.lock().await) });
    tokio::time::sleep(Duration::from_millis(300)).await; // it is queued
    Scene {
        session,
        held,
        waiter,
        _blocker: blocker,
    }
}

async fn seen(scene: Scene, loss: Option<LossCause>, later_id: &str) -> Seen {
    let session_ended = scene.session.done().is_done();
    let waiting = if session_ended {
        Some(
            tokio::time::timeout(Duration::from_secs(10), scene.waiter)
                .await
                .unwrap()
                .unwrap(),
        )
    } else {
        scene.waiter.abort();
        None
    };
    let later = tokio::time::timeout(
        Duration::from_secs(10),
        scene.session.new_locker(later_id).lock(),
    )
    .await
    .map(outcome)
    .ok();
    drop(scene.held);
    Seen {
        loss,
        session_ended,
        waiting,
        later,
    }
}

/// Waits (up to 5 s) for `session` to end.
async fn ended(session: &Session) {
    tokio::time::timeout(Duration::from_secs(5), session.done())
        .await
        .expect("the session did not end");
}

async fn etcd(endpoints: &str) -> Service {
    lock_core::new(&format!("etcd:{endpoints}?request-timeout=2s"))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_taken_away_is_a_key_deleted_by_someone_else() {
    let Some(endpoints) = common::shared("same_faults_take_away") else {
        return;
    };
    let base = unique("take-away");
    let (id, blocked) = (format!("{base}/x"), format!("{base}/y"));

    let service = etcd(&endpoints).await;
    let other = etcd(&endpoints).await;
    let scene_etcd = scene(&service, &other, &id, &blocked).await;
    let mut raw = common::raw(&endpoints).await;
    let queue = lock_etcd::queue_prefix(lock_etcd::DEFAULT_PREFIX, &id);
    raw.delete(queue, Some(etcd_client::DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    let loss = lost(&scene_etcd.held).await;
    let on_etcd = seen(scene_etcd, loss, &format!("{base}/z")).await;

    let control = Controller::new("same-faults-take-away");
    let service = lock_core::new(&control.uri()).await.unwrap();
    let scene_test = scene(&service, &service, "x", "y").await;
    assert_eq!(control.take_away("x"), 1);
    let loss = lost(&scene_test.held).await;
    let on_test = seen(scene_test, loss, "z").await;

    eprintln!("etcd: {on_etcd:?}\ntest: {on_test:?}");
    assert_eq!(on_etcd.loss, Some(LossCause::Removed));
    assert_eq!(on_test, on_etcd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_is_a_revoked_lease() {
    let Some(endpoints) = common::shared("same_faults_expire") else {
        return;
    };
    let base = unique("expire");
    let (id, blocked) = (format!("{base}/x"), format!("{base}/y"));

    let service = etcd(&endpoints).await;
    let other = etcd(&endpoints).await;
    let scene_etcd = scene(&service, &other, &id, &blocked).await;
    common::revoke_holders_lease(endpoints.clone(), id.clone())
        .await
        .unwrap();
    let loss = lost(&scene_etcd.held).await;
    // The session learns its lease is gone a round trip after its key's delete.
    ended(&scene_etcd.session).await;
    let on_etcd = seen(scene_etcd, loss, &format!("{base}/z")).await;

    let control = Controller::new("same-faults-expire");
    let service = lock_core::new(&control.uri()).await.unwrap();
    let scene_test = scene(&service, &service, "x", "y").await;
    assert_eq!(control.expire_session_of("x"), 1);
    let loss = lost(&scene_test.held).await;
    ended(&scene_test.session).await;
    let on_test = seen(scene_test, loss, "z").await;

    eprintln!("etcd: {on_etcd:?}\ntest: {on_test:?}");
    // The watch reports the lease's keys deleted before the keep-alive reports the lease gone.
    assert_eq!(on_etcd.loss, Some(LossCause::Removed));
    assert_eq!(on_test, on_etcd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_service_is_a_cluster_cut_off() {
    let Some(endpoints) = common::shared("same_faults_unavailable") else {
        return;
    };
    let base = unique("unavailable");
    let proxy = common::first_member_proxy(&endpoints).await;
    let uri = format!("etcd:{}?request-timeout=1s&dial-timeout=1s", proxy.url());
    let service = lock_core::new(&uri).await.unwrap();
    let config = SessionConfig::new(TTL).with_timeout(Duration::from_secs(2));
    let session = service.new_session(config).await.unwrap();
    let held = session
        .new_locker(format!("{base}/x").as_str())
        .lock()
        .await
        .unwrap();
    proxy.set(Fault::Blackhole);
    let cut = Instant::now();
    let loss = lost(&held).await;
    let lost_after = cut.elapsed();
    let new_session = outcome(service.new_session(config).await);
    let on_etcd = (loss, session.done().is_done(), new_session);
    proxy.set(Fault::None);

    let control = Controller::new("same-faults-unavailable");
    let service = lock_core::new(&control.uri()).await.unwrap();
    let session = service.new_session(config).await.unwrap();
    let held = session.new_locker("x").lock().await.unwrap();
    control.set_available(false);
    let cut = Instant::now();
    let loss = lost(&held).await;
    let test_lost_after = cut.elapsed();
    let new_session = outcome(service.new_session(config).await);
    let on_test = (loss, session.done().is_done(), new_session);

    eprintln!(
        "etcd: {on_etcd:?} after {lost_after:?}\ntest: {on_test:?} after {test_lost_after:?}"
    );
    assert_eq!(on_etcd.0, Some(LossCause::DeadlinePassed));
    assert_eq!(on_test, on_etcd);
    assert!(lost_after <= TTL && test_lost_after <= TTL + Duration::from_millis(100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_or_hung_lock_is_a_lock_on_an_unreachable_cluster() {
    let Some(endpoints) = common::shared("same_faults_failed_lock") else {
        return;
    };
    let base = unique("failed-lock");
    let proxy = common::first_member_proxy(&endpoints).await;
    let uri = format!("etcd:{}?request-timeout=1s&dial-timeout=1s", proxy.url());
    let service = lock_core::new(&uri).await.unwrap();
    // A request that cannot reach the cluster: its request timeout (1 s) passes before the
    // session's (5 s): a transient error.
    let slow = SessionConfig::new(Duration::from_secs(10)).with_timeout(Duration::from_secs(5));
    let session = service.new_session(slow).await.unwrap();
    proxy.set(Fault::Blackhole);
    let transient_etcd = outcome(
        session
            .new_locker(format!("{base}/x").as_str())
            .lock()
            .await,
    );
    // The session's timeout (300 ms) passes first: a timeout.
    let quick =
        SessionConfig::new(Duration::from_secs(10)).with_timeout(Duration::from_millis(300));
    let hung_etcd = {
        proxy.set(Fault::None);
        let session = service.new_session(quick).await.unwrap();
        proxy.set(Fault::Blackhole);
        outcome(
            session
                .new_locker(format!("{base}/y").as_str())
                .lock()
                .await,
        )
    };
    proxy.set(Fault::None);

    let control = Controller::new("same-faults-failed-lock");
    let service = lock_core::new(&control.uri()).await.unwrap();
    let session = service.new_session(slow).await.unwrap();
    control.fail_next_lock("x", Injected::Transient);
    let transient_test = outcome(session.new_locker("x").lock().await);
    let session = service.new_session(quick).await.unwrap();
    control.fail_next_lock("y", Injected::Hang);
    let hung_test = outcome(session.new_locker("y").lock().await);

    eprintln!("etcd: {transient_etcd:?}, {hung_etcd:?}\ntest: {transient_test:?}, {hung_test:?}");
    assert_eq!(hung_etcd, Outcome::Failed(ErrorKind::Timeout, true));
    assert_eq!((transient_test, hung_test), (transient_etcd, hung_etcd));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_grants_are_a_slow_network() {
    let Some(endpoints) = common::shared("same_faults_delay") else {
        return;
    };
    let base = unique("delay");
    let delay = Duration::from_millis(300);
    let proxy = common::first_member_proxy(&endpoints).await;
    let uri = format!("etcd:{}?request-timeout=3s", proxy.url());
    let service = lock_core::new(&uri).await.unwrap();
    let config = SessionConfig::new(Duration::from_secs(10)).with_timeout(Duration::from_secs(5));
    let session = service.new_session(config).await.unwrap();
    proxy.set(Fault::Latency(delay));
    let start = Instant::now();
    let on_etcd = outcome(
        session
            .new_locker(format!("{base}/x").as_str())
            .lock()
            .await,
    );
    let etcd_took = start.elapsed();
    proxy.set(Fault::None);

    let control = Controller::new("same-faults-delay");
    let service = lock_core::new(&control.uri()).await.unwrap();
    let session = service.new_session(config).await.unwrap();
    control.delay_grants(delay);
    let start = Instant::now();
    let on_test = outcome(session.new_locker("x").lock().await);
    let test_took = start.elapsed();

    eprintln!("etcd: {on_etcd:?} in {etcd_took:?}\ntest: {on_test:?} in {test_took:?}");
    assert_eq!(on_etcd, Outcome::Granted);
    assert_eq!(on_test, on_etcd);
    assert!(etcd_took >= delay && test_took >= delay);
}
