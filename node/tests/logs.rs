//! Logs people can read: with one member down, the survivors say so once each instead of
//! repeating every retry, and say so again when it is back (`node/src/logging.rs`,
//! `raft/src/peer_log.rs`). The nodes are child processes, so what is counted is what they write.

use std::time::{Duration, Instant};

use keel_testkit::*;

const T: Duration = Duration::from_secs(20);
/// How long the WARN/ERROR lines are counted after the kill.
const WINDOW: Duration = Duration::from_secs(10);
/// The most WARN/ERROR lines the two survivors may write together in [`WINDOW`]: one
/// "unreachable" line each, and room for one more each. The target is at most 10 in 60 s; before
/// the change this was about 340.
const MAX_LINES: usize = 6;

/// The log of node `id` after byte `mark`, without colour codes.
fn log_since(c: &Cluster, id: u64, mark: usize) -> String {
    let log = c.log(id);
    strip_ansi(log.get(mark..).unwrap_or_default())
}

fn warn_error_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .map(str::to_string)
        .collect()
}

/// Whether every node in `ids` sees every node of the cluster as reachable.
async fn all_reachable(c: &Cluster, ids: &[u64]) -> Option<()> {
    for id in ids {
        let m = c.get(*id, "/v1/members").await?;
        let members = m["members"].as_array()?;
        let ok = members.len() == 3 && members.iter().all(|m| m["reachable"].as_bool() == Some(true));
        if !ok {
            return None;
        }
    }
    Some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_down_is_logged_once_not_every_retry() {
    let mut c = Cluster::new(3, &[]);
    c.start_all();
    let leader = c.wait_leader(&[1, 2, 3], T).await;
    let primary = c.wait_primary(&[], T).await;
    c.wait_for(T, "every node to see every member", || all_reachable(&c, &[1, 2, 3]))
        .await;
    // A member that is neither the Raft leader nor the primary: what is left is steady noise, not
    // an election or a failover, which are worth their lines.
    let victim = (1..=3).find(|id| *id != leader && *id != primary).unwrap();
    let survivors: Vec<u64> = (1..=3).filter(|id| *id != victim).collect();
    let marks: Vec<usize> = survivors.iter().map(|id| c.log(*id).len()).collect();

    c.kill(victim);
    let killed = Instant::now();
    let down_line = format!("peer {victim} unreachable");
    wait_logged(&c, &survivors, &marks, &down_line).await;
    // The counting window is the measurement itself.
    tokio::time::sleep(WINDOW.saturating_sub(killed.elapsed())).await;
    let lines: Vec<String> = survivors
        .iter()
        .zip(&marks)
        .flat_map(|(id, mark)| {
            warn_error_lines(&log_since(&c, *id, *mark))
                .into_iter()
                .map(move |l| format!("n{id}: {l}"))
        })
        .collect();
    assert!(
        lines.len() <= MAX_LINES,
        "{} WARN/ERROR lines in {WINDOW:?} with node {victim} down (at most {MAX_LINES}):\n{}",
        lines.len(),
        lines.join("\n")
    );
    let down_lines = lines.iter().filter(|l| l.contains(&down_line)).count();
    assert_eq!(
        down_lines,
        2,
        "one unreachable line per survivor:\n{}",
        lines.join("\n")
    );

    // It comes back: each survivor says so once.
    let marks: Vec<usize> = survivors.iter().map(|id| c.log(*id).len()).collect();
    c.start(victim);
    let back_line = format!("peer {victim} reachable again after");
    wait_logged(&c, &survivors, &marks, &back_line).await;
}

/// The summary line is a new event written from inside the limiting layer; this checks it reaches
/// the output under a global subscriber, which is how `keel serve` installs it (a window of
/// 200 ms instead of 30 s).
#[test]
fn repeats_end_in_one_summary_line_under_the_global_subscriber() {
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let window = Duration::from_millis(200);
    let subscriber = tracing_subscriber::registry()
        .with(keel_node::logging::RateLimitLayer::with_window(window))
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || writer.clone()),
        );
    tracing::subscriber::set_global_default(subscriber).expect("this test's process has no subscriber yet");

    // One call site, as a retry loop has.
    let warn = |i: u32| tracing::warn!(attempt = i, "disk almost full");
    for i in 0..20 {
        warn(i);
    }
    // Past the window: the next repeat becomes the summary.
    std::thread::sleep(window + Duration::from_millis(50));
    warn(20);

    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].contains("disk almost full attempt=0"), "{text}");
    assert!(
        lines[1].contains("keel::log: 20 similar messages suppressed in the last 200 ms: disk almost full attempt=1"),
        "{text}"
    );
}

/// Waits until each of `nodes` logged `line` after its `marks` (log lengths taken before).
async fn wait_logged(c: &Cluster, nodes: &[u64], marks: &[usize], line: &str) {
    c.wait_for(T, &format!("each of nodes {nodes:?} to log {line:?}"), || async {
        nodes
            .iter()
            .zip(marks)
            .all(|(id, mark)| log_since(c, *id, *mark).contains(line))
            .then_some(())
    })
    .await;
}
