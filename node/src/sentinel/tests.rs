//! The listener on a real socket, fed by a hand-made view (no node): replies, `+switch-master`
//! when the view's master moves, and shutdown with connections open.

use super::*;
use tokio::io::{AsyncBufReadExt, BufReader};

fn view(master: Option<&str>, epoch: u64) -> SentinelView {
    SentinelView {
        name: "keel".into(),
        epoch,
        master: master.map(|a| (1, Addr::parse(a).unwrap())),
        ..SentinelView::default()
    }
}

const T: Duration = Duration::from_secs(5);

async fn line(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> String {
    let mut l = String::new();
    tokio::time::timeout(T, r.read_line(&mut l))
        .await
        .expect("a reply in time")
        .unwrap();
    l
}

/// The live state of a node (2) other than the views' master (1), without managed Redis: every
/// master a fresh view names is named.
fn another_node() -> LiveFn {
    Arc::new(|| LiveState {
        me: 2,
        own_lease: None,
        managed: None,
    })
}

/// A listener on a free loopback port; its address, the view sender, the cancel token and task.
async fn listen(
    initial: SentinelView,
) -> (
    std::net::SocketAddr,
    watch::Sender<SentinelView>,
    CancellationToken,
    JoinHandle<()>,
) {
    listen_live(initial, another_node()).await
}

async fn listen_live(
    initial: SentinelView,
    live: LiveFn,
) -> (
    std::net::SocketAddr,
    watch::Sender<SentinelView>,
    CancellationToken,
    JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = watch::channel(initial);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(serve(listener, rx, live, cancel.clone()));
    (addr, tx, cancel, task)
}

async fn connect(
    addr: std::net::SocketAddr,
) -> (
    BufReader<tokio::net::tcp::OwnedReadHalf>,
    tokio::net::tcp::OwnedWriteHalf,
) {
    let (r, w) = TcpStream::connect(addr).await.unwrap().into_split();
    (BufReader::new(r), w)
}

#[tokio::test]
async fn answers_and_publishes_switch_master_across_a_time_without_master() {
    let (addr, tx, cancel, task) = listen(view(Some("10.0.0.1:6379"), 1)).await;
    let (mut r, mut w) = connect(addr).await;
    w.write_all(b"SENTINEL get-master-addr-by-name keel\r\n").await.unwrap();
    let reply: Vec<String> = [
        line(&mut r).await,
        line(&mut r).await,
        line(&mut r).await,
        line(&mut r).await,
        line(&mut r).await,
    ]
    .into();
    assert_eq!(reply.concat(), "*2\r\n$8\r\n10.0.0.1\r\n$4\r\n6379\r\n");

    let (mut sr, mut sw) = connect(addr).await;
    sw.write_all(b"SUBSCRIBE +switch-master\r\n").await.unwrap();
    for want in [
        "*3\r\n",
        "$9\r\n",
        "subscribe\r\n",
        "$14\r\n",
        "+switch-master\r\n",
        ":1\r\n",
    ] {
        assert_eq!(line(&mut sr).await, want);
    }
    // No master for a while (nothing to announce), then another one: announced from the last.
    tx.send(view(None, 1)).unwrap();
    w.write_all(b"SENTINEL get-master-addr-by-name keel\r\n").await.unwrap();
    assert_eq!(line(&mut r).await, "$-1\r\n");
    tx.send(view(Some("10.0.0.2:6380"), 2)).unwrap();
    let msg = "keel 10.0.0.1 6379 10.0.0.2 6380";
    for want in [
        "*3\r\n".to_owned(),
        "$7\r\n".into(),
        "message\r\n".into(),
        "$14\r\n".into(),
        "+switch-master\r\n".into(),
        format!("${}\r\n", msg.len()),
        format!("{msg}\r\n"),
    ] {
        assert_eq!(line(&mut sr).await, want);
    }
    // The same master in a new epoch is no switch; a subscribed PING still answers in order.
    tx.send(view(Some("10.0.0.2:6380"), 3)).unwrap();
    sw.write_all(b"PING\r\n").await.unwrap();
    for want in ["*2\r\n", "$4\r\n", "pong\r\n", "$0\r\n", "\r\n"] {
        assert_eq!(line(&mut sr).await, want);
    }

    // Shutdown ends the listener with both connections open, and closes them.
    cancel.cancel();
    tokio::time::timeout(T, task)
        .await
        .expect("listener stops on cancel")
        .unwrap();
    assert_eq!(line(&mut sr).await, "", "connection closed at shutdown");
}

#[tokio::test]
async fn the_master_is_checked_against_the_nodes_state_at_each_answer() {
    // The master's own node: named while its lease (epoch 1) is valid, as read when the request is
    // answered, whatever the view (computed before) says. (No managed Redis here: with it, the
    // fence flag is checked too, `view::tests`, and the Redis probed, which needs a real one.)
    let leased = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let live: LiveFn = {
        let leased = leased.clone();
        Arc::new(move || LiveState {
            me: 1,
            own_lease: leased.load(Ordering::SeqCst).then_some(1),
            managed: None,
        })
    };
    let (addr, _tx, cancel, task) = listen_live(view(Some("10.0.0.1:6379"), 1), live).await;
    let (mut r, mut w) = connect(addr).await;
    w.write_all(b"SENTINEL get-master-addr-by-name keel\r\n").await.unwrap();
    assert_eq!(line(&mut r).await, "*2\r\n");
    for _ in 0..4 {
        line(&mut r).await;
    }
    // The lease lapsed since the view was computed: nil, and no master for `SENTINEL master(s)`.
    leased.store(false, Ordering::SeqCst);
    w.write_all(b"SENTINEL get-master-addr-by-name keel\r\n").await.unwrap();
    assert_eq!(line(&mut r).await, "$-1\r\n");
    w.write_all(b"SENTINEL masters\r\n").await.unwrap();
    assert_eq!(line(&mut r).await, "*0\r\n");
    w.write_all(b"SENTINEL master keel\r\n").await.unwrap();
    assert_eq!(line(&mut r).await, "-ERR No such master with that name\r\n");
    cancel.cancel();
    tokio::time::timeout(T, task).await.unwrap().unwrap();
}

#[tokio::test]
async fn quit_closes_the_connection() {
    let (addr, _tx, cancel, task) = listen(view(None, 0)).await;
    let (mut r, mut w) = connect(addr).await;
    w.write_all(b"*1\r\n$4\r\nQUIT\r\n").await.unwrap();
    assert_eq!(line(&mut r).await, "+OK\r\n");
    assert_eq!(line(&mut r).await, "");
    cancel.cancel();
    tokio::time::timeout(T, task).await.unwrap().unwrap();
}

#[test]
fn sentinel_peers_are_the_other_hosts_at_this_port() {
    let api: BTreeMap<NodeId, String> = [(1, "10.0.0.1:7101"), (2, "10.0.0.2:7101"), (3, "10.0.0.1:7103")]
        .into_iter()
        .map(|(i, a)| (i, a.to_owned()))
        .collect();
    // Node 3 shares node 1's host: at this node's port that would be this node itself.
    assert_eq!(sentinel_peers(1, &api, 26379), vec!["10.0.0.2:26379".to_owned()]);
    assert_eq!(
        sentinel_peers(2, &api, 26380),
        vec!["10.0.0.1:26380".to_owned(), "10.0.0.1:26380".to_owned()]
    );
}

#[test]
fn the_requests_whose_answers_name_the_master() {
    let req = |s: &str| s.split(' ').map(|w| w.as_bytes().to_vec()).collect::<Vec<_>>();
    for yes in [
        "SENTINEL get-master-addr-by-name keel",
        "sentinel MASTER keel",
        "SENTINEL masters",
        "SENTINEL replicas keel",
        "INFO",
    ] {
        assert!(names_master(&req(yes)), "{yes}");
    }
    for no in [
        "PING",
        "SENTINEL sentinels keel",
        "SENTINEL myid",
        "SUBSCRIBE +switch-master",
    ] {
        assert!(!names_master(&req(no)), "{no}");
    }
}
