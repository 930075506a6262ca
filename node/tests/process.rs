//! Process-level behaviour: config errors, the data-dir lock, graceful shutdown, and refusing
//! a data dir of another cluster.

use std::time::Duration;

use keel_testkit::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(15);

#[test]
fn bad_config_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let toml = dir.path().join("keel.toml");
    std::fs::write(&toml, "id = 1\npeers = \"1=127.0.0.1:7201\"\nbogus_key = 3\n").unwrap();
    let d = dir.path().join("d").display().to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--peers".into(),
                "1=127.0.0.1:7201".into(),
                "--data-dir".into(),
                d.clone(),
            ],
            "--id is required",
        ),
        (
            vec![
                "--id".into(),
                "4".into(),
                "--peers".into(),
                "1=127.0.0.1:7201,2=127.0.0.1:7202".into(),
            ],
            "4",
        ),
        (
            vec!["--id".into(), "1".into(), "--peers".into(), "1=nonsense".into()],
            "nonsense",
        ),
        (
            vec![
                "--id".into(),
                "1".into(),
                "--peers".into(),
                "1=127.0.0.1:7201".into(),
                "--api-addr".into(),
                "localhost".into(),
            ],
            "api",
        ),
        (
            vec![
                "--id".into(),
                "1".into(),
                "--peers".into(),
                "1=127.0.0.1:7201".into(),
                "--log-format".into(),
                "xml".into(),
            ],
            "xml",
        ),
        (vec!["--config".into(), toml.display().to_string()], "bogus_key"),
    ];
    for (args, needle) in cases {
        let mut full = vec!["serve".to_string()];
        full.extend(args.clone());
        let out = std::process::Command::new(keel_bin())
            .args(&full)
            .env_remove("KEEL_ID")
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?} should be refused: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains(needle),
            "{args:?}: error should mention {needle:?}: {}",
            stderr(&out)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_file_and_graceful_shutdown() {
    let mut c = Cluster::new(1, &[]);
    c.start(1);
    c.wait_leader(&[1], T).await;
    // A second process on the same data dir is refused.
    let mut args = c.serve_args(1, Some(1));
    // other ports, same data dir
    let api = format!("{}:{}", c.ip, free_port(&c.ip));
    let peer = format!("{}:{}", c.ip, free_port(&c.ip));
    args[4] = api;
    args[6] = peer;
    let out = std::process::Command::new(keel_bin()).args(&args).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("in use by another keel process"),
        "{}",
        stderr(&out)
    );
    // SIGTERM: clean exit 0.
    assert_eq!(c.stop(1), Some(0), "graceful shutdown exit code");
    assert!(c.log(1).contains("stopped"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_dir_of_another_cluster_is_refused() {
    // Cluster B: a single node, id 3, which gets its own cluster id.
    let mut b = Cluster::new(1, &[]);
    b.start(1);
    b.wait_for(T, "cluster B id", || async {
        b.status(1).await?["cluster_id"].as_str().map(str::to_string)
    })
    .await;
    assert_eq!(b.stop(1), Some(0));
    let foreign_dir = b.data_dir(1).to_path_buf();

    // Cluster A: three nodes; node 3 is started on B's data dir.
    let mut a = Cluster::new(3, &[]);
    a.start(1);
    a.start(2);
    a.wait_leader(&[1, 2], T).await;
    let a_id = a
        .wait_for(T, "cluster A id", || async {
            a.status(1).await?["cluster_id"].as_str().map(str::to_string)
        })
        .await;

    // --join with a foreign data dir: refused, exit 1, clear message.
    let mut args = a.serve_args(3, None);
    let dd = args.iter().position(|x| x == "--data-dir").unwrap();
    args[dd + 1] = foreign_dir.display().to_string();
    args.extend(["--join".to_string(), a.node(1).url()]);
    let out = tokio::task::spawn_blocking(move || std::process::Command::new(keel_bin()).args(&args).output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("belongs to cluster"), "{}", stderr(&out));

    // Same data dir started with A's --peers: A's nodes are refused by it (409) and report it.
    let mut args = a.serve_args(3, Some(3));
    let dd = args.iter().position(|x| x == "--data-dir").unwrap();
    args[dd + 1] = foreign_dir.display().to_string();
    a.spawn(3, args);
    let leader = a.wait_leader(&[1, 2], T).await;
    let s: Value = a
        .wait_for(T, "leader reports the cluster id mismatch", || async {
            let s = a.status(leader).await?;
            s["cluster_id_mismatch"].is_object().then_some(s)
        })
        .await;
    assert_eq!(s["cluster_id_mismatch"]["peer"], 3);
    let s3 = a.wait_for(T, "node 3 answers", || a.status(3)).await;
    assert_ne!(
        s3["cluster_id"].as_str(),
        Some(a_id.as_str()),
        "node 3 must not adopt cluster A's state"
    );
    a.wait_for(T, "node 3 logs the refusal", || async {
        a.log(3).contains("another cluster").then_some(())
    })
    .await;
}

#[test]
fn shell_completions() {
    for (shell, needle) in [
        ("bash", "_keel()"),
        ("zsh", "#compdef keel"),
        ("fish", "complete -c keel"),
    ] {
        let out = std::process::Command::new(keel_bin())
            .args(["completions", shell])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{shell}: {}", stderr(&out));
        assert!(stdout(&out).contains(needle), "{shell} script lacks {needle:?}");
        assert!(
            stdout(&out).contains("switchover"),
            "{shell} script lists the subcommands"
        );
    }
}
