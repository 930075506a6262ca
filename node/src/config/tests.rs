//! Unit tests of the configuration: precedence, validation, parsing.
use super::*;
use clap::Parser;

const PEERS3: &str = "1=127.0.0.1:7201,2=127.0.0.1:7202,3=127.0.0.1:7203";

/// Minimal valid args: node 1 of a three-node cluster.
fn args() -> ServeArgs {
    ServeArgs {
        id: Some(1),
        peers: Some(PEERS3.into()),
        ..ServeArgs::default()
    }
}

fn from_toml(args: ServeArgs, toml: &str) -> Result<Config, ConfigError> {
    let file = ServeArgs::parse_file(toml, Path::new("test.toml"))?;
    let config = Config::resolve(args, file)?;
    config.validate()?;
    Ok(config)
}

fn write_file(dir: &tempfile::TempDir, text: &str) -> PathBuf {
    let path = dir.path().join("keel.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn tls_files_resolve_flag_over_file_and_make_join_default_to_https() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, "pem").unwrap();
        p
    };
    let (crt, key, ca, other) = (file("n.crt"), file("n.key"), file("ca.pem"), file("other.crt"));
    let toml = format!("tls_cert = {:?}\ntls_key = {:?}\npeer_ca = {:?}\n", other, key, ca);
    let c = from_toml(
        ServeArgs {
            tls_cert: Some(crt.clone()),
            ..args()
        },
        &toml,
    )
    .unwrap();
    let want = TlsConfig {
        cert: crt,
        key: key.clone(),
        peer_ca: Some(ca),
    };
    assert_eq!(c.tls, Some(want));
    assert!(Config::load(&args()).unwrap().tls.is_none());

    let join = ServeArgs {
        peers: None,
        join: Some("10.0.0.1:7101".into()),
        tls_cert: Some(other),
        tls_key: Some(key),
        ..args()
    };
    assert_eq!(
        Config::load(&join).unwrap().join.as_deref(),
        Some("https://10.0.0.1:7101")
    );
    let plain = ServeArgs {
        peers: None,
        join: Some("10.0.0.1:7101".into()),
        ..args()
    };
    assert_eq!(
        Config::load(&plain).unwrap().join.as_deref(),
        Some("http://10.0.0.1:7101")
    );
}

#[test]
fn defaults_apply_when_nothing_is_given() {
    let c = Config::load(&args()).unwrap();
    assert_eq!(c.id, 1);
    assert_eq!(c.api_addr, "127.0.0.1:7101".parse().unwrap());
    assert_eq!(c.peer_addr, "127.0.0.1:7201".parse().unwrap());
    assert_eq!(c.advertise_api_addr, "127.0.0.1:7101");
    assert_eq!(c.advertise_peer_addr, "127.0.0.1:7201");
    assert_eq!(c.data_dir, PathBuf::from("keel-data/node-1"));
    assert_eq!(c.log_format, LogFormat::Text);
    assert_eq!(c.raft, RaftTimings::default());
    assert_eq!(c.raft.heartbeat_ms, 50);
    assert_eq!(c.request_timeout_ms, 10_000);
    assert_eq!(c.max_body_bytes, 2_162_688);
    assert_eq!(c.cache_mb, 128);
    assert_eq!(c.datastore_cache_bytes(), 112 << 20);
    assert_eq!(c.replication.mode, ReplicationMode::Async);
    assert_eq!(c.replication.min_acks, 1);
    assert_eq!(c.replication.datastore_format, None);
    assert!(c.join.is_none() && c.cluster_token.is_none() && c.admin_token.is_none());
    assert!(c.role_change_hook.is_none() && c.gitsync.is_none());
}

#[test]
fn peer_addr_and_advertise_default_to_own_peers_entry() {
    let c = Config::load(&ServeArgs { id: Some(2), ..args() }).unwrap();
    assert_eq!(c.peer_addr, "127.0.0.1:7202".parse().unwrap());
    assert_eq!(c.advertise_peer_addr, "127.0.0.1:7202");

    // A host name entry cannot be listened on: listen on the default, advertise the entry.
    let c = Config::load(&ServeArgs {
        id: Some(2),
        peers: Some("1=host1:7201,2=host2:7201".into()),
        ..ServeArgs::default()
    })
    .unwrap();
    assert_eq!(c.peer_addr, "127.0.0.1:7201".parse().unwrap());
    assert_eq!(c.advertise_peer_addr, "host2:7201");
}

#[test]
fn flag_beats_file_beats_default() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(
        &dir,
        r#"
        id = 3
        api_addr = "127.0.0.1:8101"
        peers = "1=127.0.0.1:7201,2=127.0.0.1:7202,3=127.0.0.1:7203"
        log_format = "json"
        admin_token = "file-token"
        request_timeout_ms = 5000
        [raft]
        heartbeat_ms = 50
        [replication]
        mode = "sync"
        min_acks = 2
        datastore_format = 1
        [gitsync]
        repo = "https://example.com/cfg.git"
        path = "shared/"
        max_age_ms = 180000
        "#,
    );
    let flags = ServeArgs {
        config: Some(path),
        api_addr: Some("0.0.0.0:9101".into()),
        advertise_api_addr: Some("node3.example:9101".into()),
        admin_token: Some(Secret::new("flag-token")),
        raft: RaftArgs {
            heartbeat_ms: Some(20),
            ..RaftArgs::default()
        },
        replication: ReplicationArgs {
            min_acks: Some(1),
            ..ReplicationArgs::default()
        },
        ..ServeArgs::default()
    };
    let c = Config::load(&flags).unwrap();
    // From flags.
    assert_eq!(c.api_addr, "0.0.0.0:9101".parse().unwrap());
    assert_eq!(c.advertise_api_addr, "node3.example:9101");
    assert_eq!(c.admin_token.as_ref().unwrap().expose(), "flag-token");
    assert_eq!(c.raft.heartbeat_ms, 20);
    assert_eq!(c.replication.min_acks, 1);
    assert_eq!(c.replication.datastore_format, Some(1), "from the file");
    // From the file.
    assert_eq!(c.id, 3);
    assert_eq!(c.peers.len(), 3);
    assert_eq!(c.log_format, LogFormat::Json);
    assert_eq!(c.request_timeout_ms, 5000);
    assert_eq!(c.replication.mode, ReplicationMode::Sync);
    let g = &c.gitsync.as_ref().unwrap().agent;
    assert_eq!(g.repo, "https://example.com/cfg.git");
    assert_eq!(g.path, "shared");
    assert_eq!(c.gitsync.as_ref().unwrap().max_age_ms, Some(180_000));
    // Defaults.
    assert_eq!(g.branch, "main");
    assert_eq!(g.interval, Duration::from_millis(60_000));
    assert_eq!(c.raft.election_timeout_min_ms, 200);
    assert_eq!(c.max_body_bytes, defaults::MAX_BODY_BYTES);
    assert_eq!(c.data_dir, PathBuf::from("keel-data/node-3"));
    assert_eq!(c.peer_addr, "127.0.0.1:7203".parse().unwrap());
}

#[test]
fn api_tokens_resolve_flag_over_file_and_reload_from_the_file_only() {
    let dir = tempfile::tempdir().unwrap();
    let text = |client: &str| {
        format!("client_token = \"{client}\"\nread_token = \"file-read\"\nadmin_token = \"file-admin\"\n")
    };
    let path = write_file(&dir, &text("file-client-1"));
    let flags = ServeArgs {
        config: Some(path.clone()),
        admin_token: Some(Secret::new("flag-admin")),
        ..args()
    };
    let c = Config::load(&flags).unwrap();
    assert_eq!(c.admin_token.as_ref().unwrap().expose(), "flag-admin");
    assert_eq!(c.client_token.as_ref().unwrap().expose(), "file-client-1");
    assert_eq!(c.read_token.as_ref().unwrap().expose(), "file-read");
    assert!(!format!("{c:?}").contains("file-client-1"), "Debug hides the tokens");

    // The file changes: the client token follows it, the admin token stays the flag's.
    std::fs::write(&path, text("file-client-2")).unwrap();
    let now = c.reread_tokens().unwrap().unwrap();
    assert_eq!(now.client.as_ref().unwrap().expose(), "file-client-2");
    assert_eq!(now.admin.as_ref().unwrap().expose(), "flag-admin");
    assert_eq!(c.tokens().changed_kinds(&now), vec!["client"]);

    // A broken file or bad tokens: an error, so the reload keeps the old set.
    std::fs::write(&path, "client_token = ").unwrap();
    assert!(matches!(c.reread_tokens(), Err(ConfigError::ParseFile { .. })));
    std::fs::write(&path, "client_token = \"file-read\"\nread_token = \"file-read\"\n").unwrap();
    let err = c.reread_tokens().unwrap_err().to_string();
    assert!(
        err.contains("the client and the read token are the same") && !err.contains("file-read"),
        "{err}"
    );

    // Without a config file nothing can change.
    let c = Config::load(&ServeArgs {
        client_token: Some(Secret::new("c")),
        ..args()
    })
    .unwrap();
    assert!(c.reread_tokens().unwrap().is_none());
}

#[test]
fn missing_and_unreadable_file() {
    let err = Config::load(&ServeArgs {
        config: Some("/nonexistent/keel.toml".into()),
        ..args()
    })
    .unwrap_err();
    assert!(matches!(err, ConfigError::ReadFile { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/keel.toml"), "{err}");
}

#[test]
fn unknown_toml_keys_are_rejected_by_name() {
    let dir = tempfile::tempdir().unwrap();
    for (toml, key) in [
        ("id = 1\nhearbeat_ms = 5\n", "hearbeat_ms"),
        ("id = 1\n[raft]\nheartbeat = 5\n", "heartbeat"),
        ("id = 1\n[gitsync]\nrepository = \"x\"\n", "repository"),
        ("id = 1\n[replikation]\nmode = \"sync\"\n", "replikation"),
    ] {
        let path = write_file(&dir, toml);
        let err = Config::load(&ServeArgs {
            config: Some(path.clone()),
            ..args()
        })
        .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ConfigError::ParseFile { .. }), "{msg}");
        assert!(msg.contains(&format!("`{key}`")), "{key}: {msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
    }
}

#[test]
fn peers_in_both_toml_forms() {
    let want: BTreeMap<u64, String> = [(1, "127.0.0.1:7201"), (2, "127.0.0.1:7202"), (3, "host3:7203")]
        .into_iter()
        .map(|(id, a)| (id, a.to_owned()))
        .collect();
    for toml in [
        r#"peers = "1=127.0.0.1:7201, 2=127.0.0.1:7202,3=host3:7203""#,
        r#"peers = { 1 = "127.0.0.1:7201", 2 = "127.0.0.1:7202", 3 = "host3:7203" }"#,
        "[peers]\n1 = \"127.0.0.1:7201\"\n2 = \"127.0.0.1:7202\"\n3 = \"host3:7203\"\n",
    ] {
        let c = from_toml(
            ServeArgs {
                id: Some(1),
                ..ServeArgs::default()
            },
            toml,
        )
        .unwrap();
        assert_eq!(c.peers, want, "{toml}");
    }

    for (toml, needle) in [
        ("peers = 3", "`peers` must be a string like"),
        (r#"peers = { 0 = "a:1" }"#, "id 0"),
        (r#"peers = { x = "a:1" }"#, "not a positive integer"),
        (r#"peers = { 1 = "a:1", 01 = "b:1" }"#, "duplicate id 1"),
        (r#"peers = { 1 = "a:1", 2 = "a:1" }"#, "duplicate address"),
    ] {
        let err = from_toml(
            ServeArgs {
                id: Some(1),
                ..ServeArgs::default()
            },
            toml,
        )
        .unwrap_err();
        assert!(err.to_string().contains(needle), "{toml}: {err}");
    }
}

#[test]
fn parse_peers_cases() {
    let ok: &[(&str, &[(u64, &str)])] = &[
        ("1=a:1", &[(1, "a:1")]),
        (
            " 1 = a:1 , 2=b.example.com:7201, ",
            &[(1, "a:1"), (2, "b.example.com:7201")],
        ),
        (
            "7=[::1]:7201,8=[fe80::1]:7202",
            &[(7, "[::1]:7201"), (8, "[fe80::1]:7202")],
        ),
        ("1=10.0.0.1:65535", &[(1, "10.0.0.1:65535")]),
    ];
    for (input, want) in ok {
        let want: BTreeMap<u64, String> = want.iter().map(|(id, a)| (*id, a.to_string())).collect();
        assert_eq!(parse_peers(input).unwrap(), want, "{input}");
    }

    let bad = [
        ("", "no `id=host:port` entries"),
        (" , ", "no `id=host:port` entries"),
        ("1", "not `id=host:port`"),
        ("a=h:1", "not a positive integer"),
        ("0=h:1", "id 0"),
        ("-1=h:1", "not a positive integer"),
        ("1=h:1,1=h:2", "duplicate id 1"),
        ("1=h:1,2=H:1", "duplicate address"),
        ("1=h", "missing `:port`"),
        ("1=:7201", "missing host"),
        ("1=h:0", "port 0"),
        ("1=h:70000", "not a number"),
        ("1=h:x", "not a number"),
        ("1=::1:7201", "need brackets"),
        ("1=[::1", "missing `]`"),
        ("1=[zz]:1", "not an IPv6 address"),
        ("1=[::1]7201", "expected `:port`"),
        ("1=h h:1", "not a host name"),
        ("1=http://h:1", "without a scheme"),
    ];
    for (input, needle) in bad {
        let err = parse_peers(input).unwrap_err();
        assert!(matches!(err, ConfigError::BadPeers { .. }), "{input}: {err}");
        assert!(err.to_string().contains(needle), "{input}: {err}");
    }
}

#[test]
fn rejected_configs() {
    type Case = (&'static str, fn(&mut ServeArgs), &'static str);
    let cases: &[Case] = &[
        ("no id", |a| a.id = None, "--id is required"),
        ("id 0", |a| a.id = Some(0), "ids start at 1"),
        ("id not in peers", |a| a.id = Some(4), "node id 4 is not in peers"),
        (
            "peers and join",
            |a| a.join = Some("127.0.0.1:7101".into()),
            "both peers and join",
        ),
        ("neither", |a| a.peers = None, "neither peers nor join"),
        (
            "bad api addr",
            |a| a.api_addr = Some("localhost:7101".into()),
            "api_addr",
        ),
        ("bad peer addr", |a| a.peer_addr = Some("127.0.0.1".into()), "peer_addr"),
        (
            "advertise disagrees with peers",
            |a| a.advertise_peer_addr = Some("10.0.0.9:7201".into()),
            "this node's entry in peers is 1=127.0.0.1:7201",
        ),
        (
            "unspecified advertise",
            |a| a.api_addr = Some("0.0.0.0:7101".into()),
            "set --advertise-api-addr",
        ),
        (
            "bad advertise",
            |a| a.advertise_api_addr = Some("host".into()),
            "missing `:port`",
        ),
        ("bad log format", |a| a.log_format = Some("yaml".into()), "log_format"),
        (
            "bad mode",
            |a| a.replication.mode = Some("semi".into()),
            "replication.mode",
        ),
        ("zero heartbeat", |a| a.raft.heartbeat_ms = Some(0), "greater than 0"),
        (
            "heartbeat too slow",
            |a| a.raft.heartbeat_ms = Some(201),
            "at most half",
        ),
        (
            "election window empty",
            |a| a.raft.election_timeout_max_ms = Some(200),
            "greater than raft.election_timeout_min_ms",
        ),
        (
            "election window inverted",
            |a| {
                a.raft.election_timeout_min_ms = Some(1000);
                a.raft.election_timeout_max_ms = Some(900);
            },
            "election_timeout_max_ms",
        ),
        ("request timeout", |a| a.request_timeout_ms = Some(99), "at least 100"),
        ("body limit", |a| a.max_body_bytes = Some(1023), "at least 1024"),
        ("cache too small", |a| a.cache_mb = Some(31), "between 32 and"),
        ("min acks", |a| a.replication.min_acks = Some(0), "at least 1"),
        ("empty token", |a| a.admin_token = Some(Secret::new("")), "admin_token"),
        (
            "empty client token",
            |a| a.client_token = Some(Secret::new(" ")),
            "client_token",
        ),
        (
            "empty read token",
            |a| a.read_token = Some(Secret::new("")),
            "read_token",
        ),
        (
            "read token equals client token",
            |a| {
                a.client_token = Some(Secret::new("same"));
                a.read_token = Some(Secret::new("same"));
            },
            "the client and the read token are the same",
        ),
        (
            "empty hook",
            |a| a.role_change_hook = Some(" ".into()),
            "role_change_hook",
        ),
        (
            "gitsync without repo",
            |a| a.gitsync.branch = Some("dev".into()),
            "no repository",
        ),
        (
            "gitsync path escapes",
            |a| {
                a.gitsync.repo = Some("https://x/r.git".into());
                a.gitsync.path = Some("../etc".into());
            },
            "without `..`",
        ),
        (
            "gitsync absolute path",
            |a| {
                a.gitsync.repo = Some("https://x/r.git".into());
                a.gitsync.path = Some("/etc".into());
            },
            "relative path",
        ),
        (
            "gitsync interval",
            |a| {
                a.gitsync.repo = Some("https://x/r.git".into());
                a.gitsync.interval_ms = Some(10);
            },
            "gitsync.interval_ms",
        ),
        (
            "gitsync max age not over the interval",
            |a| {
                a.gitsync.repo = Some("https://x/r.git".into());
                a.gitsync.interval_ms = Some(1000);
                a.gitsync.max_age_ms = Some(1000);
            },
            "gitsync.max_age_ms",
        ),
        (
            "gitsync max age without repo",
            |a| a.gitsync.max_age_ms = Some(120_000),
            "no repository",
        ),
        (
            "sentinel name without addr",
            |a| a.sentinel.name = Some("mymaster".into()),
            "no listen address",
        ),
        (
            "sentinel addr not ip:port",
            |a| a.sentinel.addr = Some("localhost:26379".into()),
            "sentinel.addr",
        ),
        (
            "sentinel name with a space",
            |a| {
                a.sentinel.addr = Some("127.0.0.1:26379".into());
                a.sentinel.name = Some("my master".into());
            },
            "sentinel.name",
        ),
        (
            "sentinel redis addrs malformed",
            |a| {
                a.sentinel.addr = Some("127.0.0.1:26379".into());
                a.sentinel.redis_addrs = Some("1=nohost".into());
            },
            "sentinel.redis_addrs",
        ),
    ];
    for (name, edit, needle) in cases {
        let mut a = args();
        edit(&mut a);
        match Config::load(&a) {
            Ok(c) => panic!("{name}: accepted {c:?}"),
            Err(err) => assert!(err.to_string().contains(needle), "{name}: {err}"),
        }
    }
}

#[test]
fn sentinel_settings_from_file_and_flags() {
    let c = from_toml(args(), "id = 1\n").unwrap();
    assert_eq!(c.sentinel, None, "off unless an address is given");
    let toml =
        "[sentinel]\naddr = \"127.0.0.1:26379\"\nredis_addrs = { 1 = \"10.0.0.1:6379\", 2 = \"10.0.0.2:6379\" }\n";
    let c = from_toml(args(), toml).unwrap();
    let s = c.sentinel.unwrap();
    assert_eq!(s.addr, "127.0.0.1:26379".parse().unwrap());
    assert_eq!(s.name, defaults::SENTINEL_NAME);
    assert_eq!(s.redis_addrs.get(&2).map(String::as_str), Some("10.0.0.2:6379"));
    // Flags over the file, per field.
    let mut a = args();
    a.sentinel.name = Some("mymaster".into());
    a.sentinel.redis_addrs = Some("1=10.0.0.9:6380".into());
    let s = from_toml(a, toml).unwrap().sentinel.unwrap();
    assert_eq!((s.addr.port(), s.name.as_str()), (26379, "mymaster"));
    assert_eq!(
        s.redis_addrs.into_iter().collect::<Vec<_>>(),
        vec![(1, "10.0.0.9:6380".to_owned())]
    );
}

#[test]
fn error_variants() {
    let load = |edit: fn(&mut ServeArgs)| {
        let mut a = args();
        edit(&mut a);
        Config::load(&a).unwrap_err()
    };
    assert!(matches!(load(|a| a.id = None), ConfigError::MissingId));
    assert!(matches!(
        load(|a| a.id = Some(9)),
        ConfigError::IdNotInPeers { id: 9, ref peers } if peers == PEERS3
    ));
    assert!(matches!(
        load(|a| a.join = Some("x:1".into())),
        ConfigError::PeersAndJoin
    ));
    assert!(matches!(load(|a| a.peers = None), ConfigError::NeitherPeersNorJoin));
    assert!(matches!(
        load(|a| a.api_addr = Some("nope".into())),
        ConfigError::BadAddress { field: "api_addr", .. }
    ));
    assert!(matches!(
        load(|a| a.peers = Some("1=a:1,2=a:1".into())),
        ConfigError::BadPeers { .. }
    ));
    assert!(matches!(
        load(|a| a.log_format = Some("xml".into())),
        ConfigError::BadValue {
            field: "log_format",
            ..
        }
    ));
}

#[test]
fn join_mode() {
    for (input, want) in [
        ("127.0.0.1:7101", "http://127.0.0.1:7101"),
        ("http://127.0.0.1:7101/", "http://127.0.0.1:7101"),
        ("https://keel.example", "https://keel.example"),
        ("[::1]:7101", "http://[::1]:7101"),
    ] {
        let c = Config::load(&ServeArgs {
            id: Some(4),
            join: Some(input.into()),
            peer_addr: Some("127.0.0.1:7204".into()),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(c.join.as_deref(), Some(want));
        assert!(c.peers.is_empty());
        assert_eq!(c.advertise_peer_addr, "127.0.0.1:7204");
    }
    for bad in ["", "ftp://h:1", "http://h:0", "http://user@h:1", "h:x"] {
        let err = Config::load(&ServeArgs {
            id: Some(4),
            join: Some(bad.into()),
            ..ServeArgs::default()
        })
        .unwrap_err();
        assert!(
            matches!(err, ConfigError::BadAddress { field: "join", .. }),
            "{bad}: {err}"
        );
    }
}

#[test]
fn normalize_url_cases() {
    for (input, want) in [
        ("127.0.0.1:7101", "http://127.0.0.1:7101"),
        ("127.0.0.1:7101/", "http://127.0.0.1:7101"),
        ("http://a:1", "http://a:1"),
        ("https://a:1//", "https://a:1"),
        (" a:1 ", "http://a:1"),
    ] {
        assert_eq!(normalize_url(input), want, "{input}");
    }
}

#[test]
fn debug_hides_secrets() {
    let c = Config::load(&ServeArgs {
        cluster_token: Some(Secret::new("cluster-s3cret")),
        admin_token: Some(Secret::new("admin-s3cret")),
        gitsync: GitSyncArgs {
            repo: Some("https://bot:repo-s3cret@git.example/cfg.git".into()),
            webhook_secret: Some(Secret::new("hook-s3cret")),
            ..GitSyncArgs::default()
        },
        ..args()
    })
    .unwrap();
    let shown = format!("{c:?} {c:#?}");
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains("***"));
    assert!(shown.contains("https://bot:***@git.example/cfg.git"), "{shown}");
    assert_eq!(c.admin_token.as_ref().unwrap().expose(), "admin-s3cret");
    assert_eq!(
        c.gitsync.as_ref().unwrap().agent.repo,
        "https://bot:repo-s3cret@git.example/cfg.git"
    );

    // The raw args are safe to log too.
    let a = ServeArgs {
        admin_token: Some(Secret::new("admin-s3cret")),
        ..args()
    };
    assert!(!format!("{a:?}").contains("s3cret"));
    assert_eq!(keel_gitsync::redact_url("https://tok@h/x"), "https://***@h/x");
    assert_eq!(
        keel_gitsync::redact_url("git@github.com:o/r.git"),
        "git@github.com:o/r.git"
    );
}

#[derive(clap::Parser)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
}

#[test]
fn clap_definition_is_consistent() {
    use clap::CommandFactory;
    Cli::command().debug_assert();
    // Every flag has its KEEL_* variable, named after the flag.
    for arg in Cli::command().get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if long == "help" {
            continue;
        }
        let env = arg.get_env().unwrap_or_else(|| panic!("--{long} has no env"));
        assert_eq!(env, format!("KEEL_{}", long.replace('-', "_").to_uppercase()).as_str());
    }
}

#[test]
fn clap_parses_flag_names() {
    // Only flags that no test environment is expected to set as KEEL_* variables matter here.
    let cli = Cli::try_parse_from([
        "keel",
        "--id",
        "2",
        "--peers",
        PEERS3,
        "--api-addr",
        "127.0.0.1:7102",
        "--log-format",
        "json",
        "--replication-mode",
        "sync",
        "--min-acks",
        "2",
        "--gitsync-repo",
        "https://x/r.git",
        "--gitsync-webhook-secret",
        "s",
        "--election-timeout-max-ms",
        "900",
        "--sentinel-addr",
        "127.0.0.1:26379",
        "--sentinel-name",
        "mymaster",
    ])
    .unwrap();
    let c = Config::load(&cli.serve).unwrap();
    assert_eq!(c.id, 2);
    assert_eq!(c.api_addr, "127.0.0.1:7102".parse().unwrap());
    assert_eq!(c.log_format, LogFormat::Json);
    assert_eq!(
        c.replication,
        ReplicationConfig {
            mode: ReplicationMode::Sync,
            min_acks: 2,
            datastore_format: None,
        }
    );
    assert_eq!(c.raft.election_timeout_max_ms, 900);
    assert_eq!(c.gitsync.unwrap().agent.webhook_secret.as_deref(), Some("s"));
    assert_eq!(c.sentinel.map(|s| s.name).as_deref(), Some("mymaster"));

    assert!(Cli::try_parse_from(["keel", "--log-format", "yaml"]).is_err());
}

#[test]
fn managed_redis_settings() {
    let c = from_toml(args(), "").unwrap();
    assert!(c.redis.is_none(), "no managed Redis without a port");

    let c = from_toml(args(), "[redis]\nport = 7301\n").unwrap();
    let r = c.redis.as_ref().unwrap();
    assert_eq!(r.port, 7301);
    assert_eq!(r.server, PathBuf::from(defaults::REDIS_SERVER));
    assert_eq!(r.advertise_addr(&c.advertise_api_addr), "127.0.0.1:7301");

    let mut a = args();
    a.redis.port = Some(7302);
    a.redis.server = Some("/opt/redis/bin/redis-server".into());
    let c = from_toml(a, "[redis]\nport = 7301\nserver = \"/usr/bin/redis-server\"\n").unwrap();
    let r = c.redis.unwrap();
    assert_eq!(
        (r.port, r.server),
        (7302, PathBuf::from("/opt/redis/bin/redis-server")),
        "flags beat the file"
    );

    let cli = Cli::try_parse_from(["keel", "--id", "1", "--redis-port", "7301", "--redis-conf", "x.conf"]).unwrap();
    assert_eq!(cli.serve.redis.port, Some(7301));
    assert_eq!(cli.serve.redis.conf, Some(PathBuf::from("x.conf")));

    for (toml, want) in [
        ("[redis]\nport = 0\n", "must be a fixed port"),
        ("[redis]\nport = 7101\n", "api_addr port"),
        ("[redis]\nport = 7201\n", "peer_addr port"),
        (
            "[redis]\nport = 7301\nconf = \"/nonexistent/extra.conf\"\n",
            "no such file",
        ),
        ("[redis]\nprot = 7301\n", "prot"),
    ] {
        let e = from_toml(args(), toml).unwrap_err().to_string();
        assert!(e.contains(want), "{toml:?}: {e}");
    }
}
