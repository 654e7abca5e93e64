//! The pool's rules with plain numbers for connections, on a tokio runtime: slots for logins, leases,
//! the line of waiting clients, and what happens to a waiter that goes away or is handed room.
use super::*;

fn pool(size: usize, reserve: usize, wait: Duration) -> Arc<Pool<u32>> {
    let pools = Pools::new();
    let key = PoolKey { database: "app".into(), user: "alice".into(), parameters: Vec::new() };
    pools.pool(&key, PoolSettings { size, reserve, wait_timeout: wait })
}

fn figures(p: &Pool<u32>) -> (usize, usize, usize, usize) {
    let s = p.stats();
    (s.active, s.idle, s.waiting, s.pinned)
}

/// The server wants a password for connections opened without a login.
async fn cannot_open() -> Result<u32, OpenFailure> {
    Err(OpenFailure::NeedsCredentials)
}

/// A client authenticates on a new connection (its first lease) and gives it back.
async fn authenticate(p: &Arc<Pool<u32>>, conn: u32) -> (Option<u32>, Option<u32>) {
    let (slot, evicted) = p.open().await.unwrap();
    (evicted, slot.fill(conn).release())
}

#[tokio::test]
async fn authenticated_connections_stay_until_the_pool_is_full_then_make_room_by_closing_idle_ones() {
    let p = pool(2, 0, Duration::from_secs(60));
    assert_eq!(authenticate(&p, 1).await, (None, None));
    assert_eq!(authenticate(&p, 2).await, (None, None));
    assert_eq!(figures(&p), (0, 2, 0, 0));
    let (evicted, back) = authenticate(&p, 3).await;
    assert!(matches!(evicted, Some(1 | 2)), "an idle connection is closed to make room: {evicted:?}");
    assert_eq!(back, None);
    assert_eq!(figures(&p), (0, 2, 0, 0));
    let mut lease = p.acquire(cannot_open).await.unwrap();
    assert_eq!(figures(&p), (1, 1, 0, 0));
    let first = *lease.conn();
    assert_eq!(lease.release(), None);
    assert_eq!(figures(&p), (0, 2, 0, 0));
    assert!([1, 2, 3].contains(&first));
}

#[tokio::test]
async fn reserve_connections_serve_authentications_on_a_full_pool_and_are_closed_when_given_back() {
    let p = pool(1, 1, Duration::ZERO);
    let (slot, _) = p.open().await.unwrap();
    let held = slot.fill(1);
    let (slot, evicted) = p.open().await.unwrap();
    assert_eq!(evicted, None, "the reserve opens a second connection");
    let reserve = slot.fill(2);
    assert_eq!(figures(&p), (2, 0, 0, 0));
    let Err(err) = p.open().await else { panic!("size + reserve reached: no slot") };
    assert_eq!(err.code, "08P01");
    assert_eq!(reserve.release(), Some(2), "beyond the size: closed");
    assert_eq!(held.release(), None);
    assert_eq!(figures(&p), (0, 1, 0, 0));
}

#[tokio::test]
async fn an_authentication_on_a_full_pool_waits_for_a_slot_to_come_free() {
    let p = pool(1, 0, Duration::from_secs(60));
    let (slot, _) = p.open().await.unwrap();
    let held = slot.fill(1);
    let opening = tokio::spawn({
        let p = Arc::clone(&p);
        async move { p.open().await.map(|(slot, evicted)| (slot.fill(2), evicted)) }
    });
    tokio::task::yield_now().await;
    assert!(!opening.is_finished(), "no slot while the one connection is lent");
    drop(held);
    let (lease, evicted) = opening.await.unwrap().unwrap();
    assert_eq!(evicted, None, "the broken connection's slot was taken");
    assert_eq!(figures(&p), (1, 0, 0, 0));
    assert_eq!(lease.release(), None);
}

#[tokio::test]
async fn waiting_clients_are_served_first_come_first_served() {
    let p = pool(1, 0, Duration::from_secs(60));
    authenticate(&p, 7).await;
    let held = p.acquire(cannot_open).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for client in 0..3 {
        let (pool, tx) = (Arc::clone(&p), tx.clone());
        tokio::spawn(async move {
            let lease = pool.acquire(cannot_open).await.unwrap();
            tx.send(client).unwrap();
            assert_eq!(lease.release(), None);
        });
        // Each client is in line before the next one starts.
        while p.stats().waiting < client + 1 {
            tokio::task::yield_now().await;
        }
    }
    assert_eq!(figures(&p), (1, 0, 3, 0));
    assert!(p.stats().max_wait <= Duration::from_secs(60));
    assert_eq!(held.release(), None);
    let order = [rx.recv().await.unwrap(), rx.recv().await.unwrap(), rx.recv().await.unwrap()];
    assert_eq!(order, [0, 1, 2]);
    assert_eq!(figures(&p), (0, 1, 0, 0));
}

#[tokio::test]
async fn a_client_that_waits_too_long_gets_pgbouncers_error_and_leaves_the_line() {
    // A zero wait: the client is refused as soon as it finds no connection free.
    let p = pool(1, 0, Duration::ZERO);
    authenticate(&p, 1).await;
    let held = p.acquire(cannot_open).await.unwrap();
    let Err(err) = p.acquire(cannot_open).await else { panic!("the wait must time out") };
    assert_eq!((err.code.as_str(), err.message.as_str()), ("08P01", "query_wait_timeout"));
    assert_eq!(figures(&p), (1, 0, 0, 0), "the client left the line");
    assert_eq!(held.release(), None);
    assert_eq!(figures(&p), (0, 1, 0, 0));
}

#[tokio::test]
async fn a_broken_connection_frees_its_slot_and_pinned_clients_are_counted() {
    let p = pool(1, 0, Duration::from_secs(60));
    authenticate(&p, 1).await;
    let mut lease = p.acquire(cannot_open).await.unwrap();
    lease.pin();
    lease.pin();
    assert_eq!(figures(&p), (1, 0, 0, 1));
    drop(lease);
    assert_eq!(figures(&p), (0, 0, 0, 0), "dropped without release: the connection is gone");
    let (slot, evicted) = p.open().await.unwrap();
    assert_eq!(evicted, None, "its slot takes a new connection");
    drop(slot);
    assert_eq!(figures(&p), (0, 0, 0, 0), "a slot whose connection failed is freed");
    authenticate(&p, 2).await;
    let mut lease = p.acquire(cannot_open).await.unwrap();
    lease.pin();
    assert_eq!(lease.release(), None);
    assert_eq!(figures(&p), (0, 1, 0, 0));
}

/// Polls `fut` once, as a runtime would before the client it serves goes away.
fn poll_once<F: std::future::Future + Unpin>(fut: &mut F) -> std::task::Poll<F::Output> {
    std::pin::Pin::new(fut).poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
}

#[tokio::test]
async fn a_waiter_that_goes_away_leaves_the_line() {
    let p = pool(1, 0, Duration::from_secs(60));
    authenticate(&p, 1).await;
    let held = p.acquire(cannot_open).await.unwrap();
    let mut waiter = Box::pin(p.acquire(cannot_open));
    assert!(poll_once(&mut waiter).is_pending());
    assert_eq!(figures(&p), (1, 0, 1, 0));
    drop(waiter);
    assert_eq!(figures(&p), (1, 0, 0, 0), "out of the line");
    assert_eq!(held.release(), None);
    assert_eq!(figures(&p), (0, 1, 0, 0), "the connection given back is idle, not sent to the gone waiter");
}

#[tokio::test]
async fn a_connection_handed_to_a_waiter_that_went_away_goes_back_to_the_pool() {
    let p = pool(1, 0, Duration::from_secs(60));
    authenticate(&p, 1).await;
    let held = p.acquire(cannot_open).await.unwrap();
    let mut gone = Box::pin(p.acquire(cannot_open));
    assert!(poll_once(&mut gone).is_pending());
    let mut next = Box::pin(p.acquire(cannot_open));
    assert!(poll_once(&mut next).is_pending());
    assert_eq!(held.release(), None, "handed to the first waiter");
    assert_eq!(figures(&p), (1, 0, 1, 0));
    drop(gone);
    assert_eq!(figures(&p), (1, 0, 0, 0), "passed on to the next waiter");
    let mut lease = next.await.unwrap();
    assert_eq!(*lease.conn(), 1);
    assert_eq!(lease.release(), None);
    assert_eq!(figures(&p), (0, 1, 0, 0));
}

#[tokio::test]
async fn a_connection_closed_while_a_client_waits_is_replaced_by_one_the_waiter_opens() {
    let p = pool(2, 0, Duration::from_secs(60));
    let (first, _) = p.open().await.unwrap();
    let (second, _) = p.open().await.unwrap();
    let (first, second) = (first.fill(1), second.fill(2));
    let waiter = tokio::spawn({
        let p = Arc::clone(&p);
        async move { p.acquire(|| async { Ok::<_, OpenFailure>(3) }).await.map(|mut l| *l.conn()) }
    });
    while p.stats().waiting < 1 {
        tokio::task::yield_now().await;
    }
    drop(first);
    assert_eq!(waiter.await.unwrap().unwrap(), 3, "a new connection, opened in the closed one's place");
    assert_eq!(figures(&p), (1, 0, 0, 0), "the waiter's lease ended with the task: forgotten");
    assert_eq!(second.release(), None);
}

#[tokio::test]
async fn a_waiter_that_cannot_open_a_replacement_is_refused_once_no_connection_is_left() {
    let p = pool(2, 0, Duration::from_secs(60));
    let (first, _) = p.open().await.unwrap();
    let (second, _) = p.open().await.unwrap();
    let (first, second) = (first.fill(1), second.fill(2));
    let waiter = tokio::spawn({
        let p = Arc::clone(&p);
        async move { p.acquire(cannot_open).await.map(|mut l| *l.conn()) }
    });
    while p.stats().waiting < 1 {
        tokio::task::yield_now().await;
    }
    drop(first);
    // It tried, was asked for a password, and is back in line: the second connection will come back.
    while p.stats().active > 1 || p.stats().waiting < 1 {
        tokio::task::yield_now().await;
    }
    drop(second);
    let err = waiter.await.unwrap().unwrap_err();
    assert_eq!((err.severity, err.code.as_str()), ("FATAL", "08006"), "{err}");
    assert_eq!(figures(&p), (0, 0, 0, 0));
}

#[tokio::test]
async fn a_waiter_dropped_while_it_opens_a_replacement_frees_the_room() {
    let p = pool(1, 0, Duration::from_secs(60));
    let (slot, _) = p.open().await.unwrap();
    let lease = slot.fill(1);
    let mut waiter = Box::pin(p.acquire(std::future::pending::<Result<u32, OpenFailure>>));
    assert!(poll_once(&mut waiter).is_pending());
    drop(lease);
    assert!(poll_once(&mut waiter).is_pending(), "opening");
    assert_eq!(figures(&p), (1, 0, 0, 0), "the room counts as active");
    drop(waiter);
    assert_eq!(figures(&p), (0, 0, 0, 0));
}
