//! The status page at `/ui`: served as one self-contained HTML page, its aggregate
//! `/ui/cluster.json` covers every member, and it renders in headless Chromium.
//!
//! The Chromium part needs Debian's `chromium` on PATH (in KEEL_TEST_PACKAGES, so
//! `scripts/test.sh` installs it: about 118 MiB to download, 395 MiB installed); without it that
//! part is skipped with a message, and fails when `CI` is set.
//! The screenshots land in `target/ui-screenshot.png` and `target/ui-screenshot-narrow.png`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use keel_testkit::*;

const T: Duration = Duration::from_secs(20);
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_serves_aggregates_and_renders_in_chromium() {
    let (mut c, _) = Cluster::started_with_leader(3, &[], T).await;

    // The aggregate: a primary, and a status from every one of the three members.
    let agg = c
        .wait_for(T, "ui/cluster.json with a primary and three statuses", || async {
            let v = c.get(1, "/ui/cluster.json").await?;
            let nodes = v["nodes"].as_object()?;
            let all = nodes.len() == 3 && nodes.values().all(|s| s["role"].is_string());
            // The primary is named in the cluster state a moment before it holds its lease
            // (role `fenced` until then): wait for the lease.
            let p = v["cluster"]["primary"]["node"].as_u64()?;
            (all && nodes[&p.to_string()]["role"] == "primary").then_some(v)
        })
        .await;
    let primary = agg["cluster"]["primary"]["node"].as_u64().unwrap();
    for id in 1..=3u64 {
        assert_eq!(agg["nodes"][id.to_string()]["node_id"], id, "{agg}");
    }
    assert_eq!(agg["served_by"], 1);
    assert_eq!(agg["cluster"]["members"].as_array().unwrap().len(), 3);
    assert!(agg["history"].as_array().is_some_and(|h| !h.is_empty()), "{agg}");
    assert_eq!(agg["nodes"][primary.to_string()]["role"], "primary", "{agg}");

    // The page: HTML, self-contained.
    let r = c.http.get(format!("{}/ui", c.node(2).url())).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/html"), "{ct}");
    let html = r.text().await.unwrap();
    assert!(html.contains("<title>Keel cluster status</title>"), "{html}");

    match which("chromium") {
        Some(chromium) => render_in_chromium(&c, &chromium, primary).await,
        None if std::env::var_os("CI").is_some() => panic!(
            "CI is set and `chromium` is not on PATH: scripts/test.sh installs Debian's `chromium` \
             package (KEEL_TEST_PACKAGES in scripts/lib.sh); run it as root"
        ),
        None => println!(
            "SKIPPED the headless-Chromium part of this test: `chromium` is not on PATH \
             (install Debian's `chromium` package to run it)"
        ),
    }

    // A member that is down shows as null with a reason, and does not hold the page up.
    let down = (1..=3u64).find(|id| *id != primary && *id != 1).unwrap();
    c.kill(down);
    let t0 = Instant::now();
    let v = c
        .get(1, "/ui/cluster.json")
        .await
        .expect("ui/cluster.json with a node down");
    assert!(t0.elapsed() < Duration::from_millis(1900), "took {:?}", t0.elapsed());
    assert!(v["nodes"][down.to_string()].is_null(), "{v}");
    assert!(v["errors"][down.to_string()].is_string(), "{v}");
    assert_eq!(v["nodes"]["1"]["node_id"], 1, "{v}");
}

/// Screenshot (wide and narrow) and DOM dump of `/ui` on node 1.
async fn render_in_chromium(c: &Cluster, chromium: &Path, primary: u64) {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("{}/ui", c.node(1).url());
    let target = target_dir();

    for (name, size) in [
        ("ui-screenshot.png", "1200,800"),
        ("ui-screenshot-narrow.png", "420,1000"),
    ] {
        let png = tmp.path().join(name);
        let out = chromium_run(
            chromium,
            tmp.path(),
            &[
                format!("--window-size={size}"),
                format!("--screenshot={}", png.display()),
                url.clone(),
            ],
        )
        .await;
        let len = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
        assert!(
            len > 10 * 1024,
            "screenshot {name} is {len} bytes; chromium said:\n{out}"
        );
        let dest = target.join(name);
        std::fs::copy(&png, &dest).unwrap();
        println!("screenshot: {} ({len} bytes)", dest.display());
    }

    let dom = chromium_run(chromium, tmp.path(), &["--dump-dom".into(), url]).await;
    for id in 1..=3u64 {
        assert!(
            dom.contains(&format!("id=\"member-{id}\"")),
            "node {id} missing in the DOM:\n{dom}"
        );
    }
    assert!(
        dom.contains("data-role=\"primary\""),
        "no primary row in the DOM:\n{dom}"
    );
    assert!(
        dom.contains(&format!("node {primary}")),
        "primary not named in the DOM:\n{dom}"
    );
    assert!(dom.contains("last updated"), "page never updated:\n{dom}");
    assert!(!dom.contains("class=\"show\""), "error banner shown:\n{dom}");
}

/// Run headless Chromium with `args` after the common flags; its stdout (and stderr, for
/// messages), killed with its whole process group after [`CHROMIUM_TIMEOUT`].
async fn chromium_run(chromium: &Path, tmp: &Path, args: &[String]) -> String {
    let profile = tempfile::tempdir_in(tmp).unwrap();
    let stdout = tmp.join("chromium.stdout");
    let stderr = tmp.join("chromium.stderr");
    let mut cmd = tokio::process::Command::new(chromium);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-proxy-server",
        "--hide-scrollbars",
        "--virtual-time-budget=5000",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(args)
    .stdin(Stdio::null())
    .stdout(std::fs::File::create(&stdout).unwrap())
    .stderr(std::fs::File::create(&stderr).unwrap())
    .process_group(0)
    .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn chromium");
    let pid = child.id().expect("chromium pid");
    match tokio::time::timeout(CHROMIUM_TIMEOUT, child.wait()).await {
        Ok(status) => {
            let status = status.unwrap();
            let err = std::fs::read_to_string(&stderr).unwrap_or_default();
            assert!(status.success(), "chromium {args:?} failed ({status}):\n{err}");
        }
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
            let _ = child.wait().await;
            panic!("chromium {args:?} did not finish within {CHROMIUM_TIMEOUT:?}");
        }
    }
    std::fs::read_to_string(&stdout).unwrap_or_default() + &std::fs::read_to_string(&stderr).unwrap_or_default()
}

/// Cargo's target directory: the test binary's `<target>/<profile>/deps/..`.
fn target_dir() -> PathBuf {
    let keel = keel_bin();
    keel.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"))
}
