//! The keeper in a thread of the test process (in production it is a process of its
//! own), real TCP listening sockets on loopback, real SCM_RIGHTS hand-overs.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use super::*;

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A keeper serving `dir` on a thread; joined to read its exit code.
fn keeper(dir: &Path, grace: Duration) -> std::thread::JoinHandle<i32> {
    let d = dir.to_path_buf();
    let h = std::thread::spawn(move || keeper::serve(&d, grace));
    let path = socket_path(dir);
    poll_until(Duration::from_secs(5), || UnixStream::connect(&path).ok())
        .expect("the keeper listens");
    h
}

/// A program that is never run: a keeper already serves the state dir.
fn keep(grace: Duration) -> Keep {
    Keep::Keeper {
        program: "/nonexistent/ripcord".into(),
        grace,
    }
}

fn join_within(h: std::thread::JoinHandle<i32>, max: Duration) -> i32 {
    let deadline = Instant::now() + max;
    while !h.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the keeper did not exit within {max:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    h.join().unwrap()
}

/// Accepts one connection and answers it with `body`.
fn answer_one(l: &TcpListener, body: &str) {
    l.set_nonblocking(false).unwrap();
    let (mut c, _) = l.accept().unwrap();
    let mut buf = [0u8; 64];
    let n = c.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"ping");
    c.write_all(body.as_bytes()).unwrap();
}

#[test]
fn a_socket_outlives_its_watcher_and_the_next_one_serves_what_waited() {
    let dir = tempfile::tempdir().unwrap();
    let k = keeper(dir.path(), Duration::from_secs(30));
    let addr = free_addr();

    let mut first = obtain(dir.path(), &[addr], &keep(Duration::from_secs(30))).unwrap();
    assert!(first.kept(), "{:?}", first.warning);
    let (l, origin) = first.take(addr).unwrap();
    assert_eq!(origin, Origin::New);
    // The watcher dies: its socket and its link to the keeper close, no goodbye.
    drop(l);
    first.vanish();

    // A client arrives while no watcher runs: it is not refused, it waits.
    let mut client = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .expect("the kept socket still takes connections");
    client.write_all(b"ping").unwrap();

    let mut second = obtain(dir.path(), &[addr], &keep(Duration::from_secs(30))).unwrap();
    let (l, origin) = second.take(addr).unwrap();
    assert_eq!(origin, Origin::Keeper);
    assert_eq!(l.local_addr().unwrap(), addr);
    answer_one(&l, "pong");
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut got = String::new();
    client.read_to_string(&mut got).unwrap();
    assert_eq!(got, "pong");

    // A clean stop: the keeper lets go and exits; with the watcher's copy closed the
    // port refuses.
    second.release();
    assert_eq!(join_within(k, Duration::from_secs(5)), 0);
    drop(l);
    assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err());
    assert!(!socket_path(dir.path()).exists());
}

#[test]
fn a_keeper_whose_watcher_never_comes_back_lets_go_after_its_grace() {
    let dir = tempfile::tempdir().unwrap();
    let grace = Duration::from_millis(300);
    let k = keeper(dir.path(), grace);
    let addr = free_addr();
    let mut l = obtain(dir.path(), &[addr], &keep(grace)).unwrap();
    let (socket, _) = l.take(addr).unwrap();
    drop(socket);
    let alive_at = Instant::now();
    l.vanish();
    // Within the grace the port still takes connections.
    assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok());
    assert_eq!(join_within(k, Duration::from_secs(5)), 0);
    assert!(alive_at.elapsed() >= grace);
    assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err());
}

#[test]
fn a_changed_config_keeps_what_it_still_listens_on_and_hands_over_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let k = keeper(dir.path(), Duration::from_secs(30));
    let (a, b, c) = (free_addr(), free_addr(), free_addr());
    let mut first = obtain(dir.path(), &[a, b], &keep(Duration::from_secs(30))).unwrap();
    drop(first.take(a));
    drop(first.take(b));
    first.vanish();
    // The next watcher listens on a and c: a comes from the keeper, c is new, b is let go.
    let mut second = obtain(dir.path(), &[a, c], &keep(Duration::from_secs(30))).unwrap();
    assert_eq!(second.take(a).unwrap().1, Origin::Keeper);
    assert_eq!(second.take(c).unwrap().1, Origin::New);
    assert!(second.take(b).is_none());
    assert!(TcpStream::connect_timeout(&b, Duration::from_secs(2)).is_err());
    second.vanish();
    // And the keeper now holds exactly a and c.
    let mut third = obtain(dir.path(), &[c], &keep(Duration::from_secs(30))).unwrap();
    assert_eq!(third.take(c).unwrap().1, Origin::Keeper);
    third.release();
    assert_eq!(join_within(k, Duration::from_secs(5)), 0);
}

#[test]
fn a_watcher_that_gives_up_with_an_error_lets_the_keeper_go_at_once() {
    let dir = tempfile::tempdir().unwrap();
    // A grace far longer than the join below: only a goodbye ends the keeper in time.
    let k = keeper(dir.path(), Duration::from_secs(60));
    let addr = free_addr();
    let l = obtain(dir.path(), &[addr], &keep(Duration::from_secs(60))).unwrap();
    assert!(l.kept());
    // `watch` returning an error drops its listeners, taken or not.
    drop(l);
    assert_eq!(join_within(k, Duration::from_secs(5)), 0);
    assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err());
}

#[test]
fn without_a_keeper_sockets_are_bound_here_and_a_taken_port_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let mut l = obtain(dir.path(), &[addr], &Keep::No).unwrap();
    assert!(!l.kept());
    let (socket, origin) = l.take(addr).unwrap();
    assert_eq!(origin, Origin::New);
    let err = obtain(dir.path(), &[addr], &Keep::No).unwrap_err();
    assert_eq!(err.addr, addr);
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
    drop(socket);
}

#[test]
fn a_keeper_that_cannot_start_is_a_warning_not_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let mut l = obtain(dir.path(), &[addr], &keep(Duration::from_secs(1))).unwrap();
    assert!(!l.kept());
    let w = l.warning.clone().unwrap();
    assert!(w.contains("will not outlive this watcher"), "{w}");
    assert_eq!(l.take(addr).unwrap().1, Origin::New);
}

#[test]
fn garbage_on_the_keeper_socket_is_refused_and_the_keeper_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let k = keeper(dir.path(), Duration::from_secs(30));
    {
        let mut s = UnixStream::connect(socket_path(dir.path())).unwrap();
        s.write_all(b"{\"op\":\"nonsense\"}\n").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = String::new();
        let _ = s.read_to_string(&mut got);
        assert!(got.contains("\"op\":\"error\""), "{got}");
    }
    let addr = free_addr();
    let mut l = obtain(dir.path(), &[addr], &keep(Duration::from_secs(30))).unwrap();
    assert!(l.kept(), "{:?}", l.warning);
    l.release();
    assert_eq!(join_within(k, Duration::from_secs(5)), 0);
}
