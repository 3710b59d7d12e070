//! The `leader` example's candidate loop (`lock_examples::candidate`), tested through the
//! `test:` backend (`lock::testing`) under tokio's paused clock: a hold taken away → it steps
//! down at once and campaigns again; its session expired → it campaigns again in a new session;
//! a transient error on `lock()` → it retries. Each scenario gives the same history in 100
//! runs in a row.

use std::time::Duration;

use lock::testing::{Controller, History, Injected, What};
use lock::{LossCause, SessionConfig};
use lock_examples::{candidate, RETRY_AFTER};

const ELECTION: &str = "scheduler";

/// The leader's work in these tests: a write every 100 ms, ten of them (a second).
async fn work(resource: lock::testing::Resource, token: u64) {
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        resource.write(token);
    }
}

/// A runtime on tokio's paused clock: the same run gives the same history.
fn paused() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

/// Runs one candidate for `terms` terms on world `name`, with `fault` applied by the test
/// `at` into the run; returns the history.
fn scenario(name: &str, terms: usize, fault: impl FnOnce(&Controller) + Send + 'static) -> History {
    paused().block_on(async {
        let control = Controller::new(name);
        let service = lock::new(&control.uri()).await.unwrap();
        let resource = control.resource("db");
        let config = SessionConfig::new(Duration::from_secs(10));
        let run = candidate(&service, ELECTION, "10.0.0.1:80", config, terms, |token| {
            work(resource.clone(), token)
        });
        let injector = {
            let control = control.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(450)).await;
                fault(&control);
            }
        };
        let (done, ()) = tokio::join!(tokio::time::timeout(Duration::from_secs(60), run), injector);
        done.expect("the candidate did not finish").unwrap();
        let history = control.history();
        history.check_no_two_holders().unwrap();
        history.check_writes_under_live_holds().unwrap();
        history.check_stopped_within(Duration::ZERO).unwrap();
        history
    })
}

/// Runs `scenario` 100 times: every run must give the same history.
fn deterministic(name: &str, run: impl Fn() -> History) -> History {
    let first = run();
    for n in 1..100 {
        let again = run();
        assert_eq!(
            again, first,
            "{name}: run {n} gave another history:\n{again}\nthan:\n{first}"
        );
    }
    first
}

#[test]
fn a_leader_whose_hold_is_taken_away_steps_down_at_once_and_campaigns_again() {
    let history = deterministic("taken away", || {
        scenario("leader-taken-away", 2, |control| {
            assert_eq!(control.take_away(ELECTION), 1);
        })
    });
    println!("{history}");
    let grants = history.grants();
    assert_eq!(grants.len(), 3, "two terms done, one lost:\n{history}");
    assert_eq!(
        history.losses(),
        [(ELECTION, grants[0].1, LossCause::Removed)]
    );
    // The lost term wrote 4 times (at 100…400 ms), then stopped: nothing after 450 ms.
    let writes_of_first = history
        .0
        .iter()
        .filter(|e| matches!(&e.what, What::Write { token, .. } if *token == grants[0].1))
        .count();
    assert_eq!(writes_of_first, 4, "{history}");
    assert!(
        grants.iter().all(|g| g.2 == 1),
        "one session throughout:\n{history}"
    );
}

#[test]
fn a_leader_whose_session_expired_campaigns_again_in_a_new_session() {
    let history = deterministic("session expired", || {
        scenario("leader-session-expired", 1, |control| {
            assert_eq!(control.expire_session_of(ELECTION), 1);
        })
    });
    println!("{history}");
    let grants = history.grants();
    assert_eq!(grants.len(), 2, "{history}");
    assert_eq!(
        (grants[0].2, grants[1].2),
        (1, 2),
        "the second term is in a new session:\n{history}"
    );
    assert_eq!(
        history.losses(),
        [(ELECTION, grants[0].1, LossCause::Removed)]
    );
}

#[test]
fn a_candidate_whose_campaign_fails_with_a_transient_error_retries() {
    let history = deterministic("transient error", || {
        paused().block_on(async {
            let control = Controller::new("leader-transient");
            control.fail_next_lock(ELECTION, Injected::Transient);
            let service = lock::new(&control.uri()).await.unwrap();
            let resource = control.resource("db");
            let config = SessionConfig::new(Duration::from_secs(10));
            candidate(&service, ELECTION, "10.0.0.1:80", config, 1, |token| {
                work(resource.clone(), token)
            })
            .await
            .unwrap();
            control.history()
        })
    });
    println!("{history}");
    let grants: Vec<_> = history
        .0
        .iter()
        .filter(|e| matches!(e.what, What::Granted { .. }))
        .collect();
    assert_eq!(grants.len(), 1, "{history}");
    assert_eq!(
        grants[0].at, RETRY_AFTER,
        "granted after one retry:\n{history}"
    );
}
