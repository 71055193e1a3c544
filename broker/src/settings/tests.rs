use std::collections::BTreeMap;

use serde::Serialize;

use super::listeners::{Listener, Listeners};
use super::units::{Bytes, Millis, Retain};
use super::*;

#[derive(Serialize, Default)]
struct Flags {
    #[serde(skip_serializing_if = "Option::is_none")]
    partitions_max: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    segment_bytes: Option<String>,
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn file(text: &str) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), text).unwrap();
    f
}

#[test]
fn flags_beat_the_environment_which_beats_the_file_which_beats_the_defaults() {
    let f = file(
        "partitions_max = 10\nconnections_max = 11\nsegment_bytes = \"1MiB\"\nlog = \"debug\"\n",
    );
    let e = env(&[
        ("FERRY_PARTITIONS_MAX", "20"),
        ("FERRY_CONNECTIONS_MAX", "21"),
        ("HOME", "/x"),
    ]);
    let flags = Flags {
        partitions_max: Some(30),
        segment_bytes: None,
    };
    let s = load(Some(f.path()), e, &flags).unwrap().settings;
    assert_eq!(s.partitions_max, 30, "flag over env and file");
    assert_eq!(s.connections_max, 21, "env over file");
    assert_eq!(s.segment_bytes, Bytes(1 << 20), "file over default");
    assert_eq!(s.log, "debug");
    assert_eq!(
        s.inflight_bytes_max,
        Settings::default().inflight_bytes_max,
        "default"
    );
}

#[test]
fn sizes_and_durations_take_human_units_and_plain_numbers() {
    let f = file(
        "segment_bytes = \"64 KiB\"\nbatch_bytes_max = 2097152\nretention_ms = \"7d\"\nretention_bytes = \"1GB\"\n\
         fsync = \"interval:1s\"\n",
    );
    let s = load(Some(f.path()), env(&[]), &Flags::default())
        .unwrap()
        .settings;
    assert_eq!(s.segment_bytes, Bytes(64 * 1024));
    assert_eq!(s.batch_bytes_max, Bytes(2 << 20));
    assert_eq!(s.retention_ms, Retain::Up(Millis(7 * 24 * 3600 * 1000)));
    assert_eq!(s.retention_bytes, Retain::Up(Bytes(1_000_000_000)));
    assert_eq!(s.fsync.0, FsyncPolicy::IntervalMs(1000));
    let c = s.broker_config(1);
    assert_eq!(c.log.retention_ms, 7 * 24 * 3600 * 1000);
    assert_eq!(c.log.limits.segment_bytes, 64 * 1024);
    // Plain numbers in the environment keep their old meaning (bytes, ms).
    let e = env(&[
        ("FERRY_RETENTION_MS", "60000"),
        ("FERRY_SEGMENT_BYTES", "131072"),
    ]);
    let s = load(None, e, &Flags::default()).unwrap().settings;
    assert_eq!(s.retention_ms, Retain::Up(Millis(60_000)));
    assert_eq!(s.segment_bytes, Bytes(128 * 1024));
}

#[test]
fn forever_is_explicit_and_zero_keeps_meaning_forever() {
    for v in ["\"forever\"", "-1", "0", "\"-1\""] {
        let f = file(&format!("retention_ms = {v}\nretention_bytes = {v}\n"));
        let s = load(Some(f.path()), env(&[]), &Flags::default())
            .unwrap()
            .settings;
        assert_eq!(s.retention_ms, Retain::Forever, "{v}");
        assert_eq!(s.retention_bytes, Retain::Forever, "{v}");
        assert_eq!(s.broker_config(1).log.retention_ms, 0, "the log's never");
    }
}

#[test]
fn printed_settings_read_back_to_the_same_settings() {
    let s = Settings {
        node_id: Some(3),
        advertise: Some("ferry-2.ferry.default.svc:7400".into()),
        peers: units::Peers(BTreeMap::from([
            (1, "a:7401".to_owned()),
            (2, "b:7401".to_owned()),
        ])),
        segment_bytes: Bytes(3 * 1024 * 1024 + 1),
        retention_ms: Retain::Up(Millis(90_061_001)),
        fsync: units::Fsync(FsyncPolicy::IntervalMs(250)),
        listeners: Listeners::parse(
            "external=0.0.0.0:9400@ferry-2.example.com:9400,lan=10.0.0.3:9500",
        )
        .unwrap(),
        auto_join: true,
        ..Settings::default()
    };
    for s in [Settings::default(), s] {
        let text = s.to_toml();
        let f = file(&text);
        let back = load(Some(f.path()), env(&[]), &Flags::default())
            .unwrap()
            .settings;
        assert_eq!(back, s, "{text}");
        assert_eq!(back.to_toml(), text);
    }
}

#[test]
fn a_bad_setting_fails_on_one_line_naming_the_key() {
    /// File text, environment, the key the error must name.
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        ("dat_dir = \"x\"\n", &[], "dat_dir"),
        ("segment_bytes = \"12 parsecs\"\n", &[], "segment_bytes"),
        ("segment_bytes = \"2GiB\"\n", &[], "segment_bytes"),
        ("retention_ms = \"soon\"\n", &[], "retention_ms"),
        ("fsync = \"sometimes\"\n", &[], "fsync"),
        (
            "direct_io = true\nfsync = \"interval:1s\"\n",
            &[],
            "direct_io",
        ),
        ("listen = \"0.0.0.0:7400\"\n", &[], "advertise"),
        ("advertise = \"0.0.0.0\"\n", &[], "advertise"),
        ("peers = \"1=nohost\"\n", &[], "peers"),
        ("", &[("FERRY_PARTITIONS_MAX", "lots")], "partitions_max"),
        ("", &[("FERRY_NODE_ID", "0")], "node_id"),
        ("this is not toml", &[], "TOML"),
        (
            "[listeners.external]\nlisten = \"0.0.0.0:9400\"\n",
            &[],
            "listeners",
        ),
        (
            "[listeners.internal]\nlisten = \"127.0.0.1:9400\"\n",
            &[],
            "listeners",
        ),
        (
            "[listeners.Ext]\nlisten = \"127.0.0.1:9400\"\n",
            &[],
            "listeners",
        ),
        (
            "[listeners.x]\nlisten = \"127.0.0.1:9400\"\nport = 1\n",
            &[],
            "listeners",
        ),
        (
            "[listeners.x]\nlisten = \"127.0.0.1:9400\"\nadvertise = \"[::]\"\n",
            &[],
            "listeners",
        ),
        ("", &[("FERRY_LISTENERS", "external=nowhere")], "listeners"),
        (
            "",
            &[("FERRY_LISTENERS", "a=127.0.0.1:1,a=127.0.0.1:2")],
            "listeners",
        ),
    ];
    for (text, vars, key) in cases {
        let f = file(text);
        let err = load(Some(f.path()), env(vars), &Flags::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{text:?} {vars:?}: {err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }
    let missing = load(
        Some(Path::new("/nonexistent/ferry.toml")),
        env(&[]),
        &Flags::default(),
    );
    assert!(missing
        .unwrap_err()
        .to_string()
        .contains("/nonexistent/ferry.toml"));
}

#[test]
fn unknown_ferry_variables_are_reported_not_fatal() {
    let e = env(&[
        ("FERRY_DATADIR", "x"),
        ("FERRY_FAULT_FILE", "/f"),
        ("FERRY_LOG", "warn"),
    ]);
    let loaded = load(None, e, &Flags::default()).unwrap();
    assert_eq!(loaded.unknown_env, vec!["FERRY_DATADIR".to_owned()]);
    assert_eq!(loaded.settings.log, "warn");
}

#[test]
fn advertised_addresses_name_a_reachable_host() {
    assert!(check_advertise("ferry-0.ferry.ns.svc:7400").is_ok());
    assert!(check_advertise("10.0.0.7").is_ok());
    assert!(check_advertise("[::1]:7400").is_ok());
    assert!(check_advertise("::1").is_ok());
    assert!(check_advertise("0.0.0.0:7400").is_err());
    assert!(check_advertise("[::]:7400").is_err());
    assert!(check_advertise("::").is_err());
    assert!(check_advertise(":7400").is_err());
    assert!(check_advertise("host:port").is_err());
}

#[test]
fn named_listeners_come_from_a_table_or_the_flag_form() {
    let f = file(
        "[listeners.external]\nlisten = \"0.0.0.0:9400\"\nadvertise = \"ferry-0.example.com\"\n\n\
         [listeners.lan]\nlisten = \"10.1.2.3:9500\"\n",
    );
    let s = load(Some(f.path()), env(&[]), &Flags::default())
        .unwrap()
        .settings;
    let want = Listeners(BTreeMap::from([
        (
            "external".to_owned(),
            Listener {
                listen: "0.0.0.0:9400".parse().unwrap(),
                advertise: Some("ferry-0.example.com".into()),
            },
        ),
        (
            "lan".to_owned(),
            Listener {
                listen: "10.1.2.3:9500".parse().unwrap(),
                advertise: None,
            },
        ),
    ]));
    assert_eq!(s.listeners, want);
    let c = s.broker_config(1);
    assert_eq!(c.listeners["external"], "0.0.0.0:9400".parse().unwrap());
    // The environment's string form replaces the file's table whole.
    let e = env(&[(
        "FERRY_LISTENERS",
        "external=0.0.0.0:9400@ferry-0.example.com, lan=10.1.2.3:9500",
    )]);
    let from_env = load(None, e, &Flags::default()).unwrap().settings;
    assert_eq!(from_env.listeners, want);
    let e = env(&[("FERRY_LISTENERS", "lan=10.1.2.3:9500")]);
    let over = load(Some(f.path()), e, &Flags::default()).unwrap().settings;
    assert_eq!(over.listeners.0.len(), 1, "{:?}", over.listeners);
}

#[test]
fn too_many_listeners_are_refused() {
    let list: Vec<String> = (0..=super::listeners::LISTENERS_MAX)
        .map(|i| format!("l{i}=127.0.0.1:{}", 9000 + i))
        .collect();
    let e = env(&[("FERRY_LISTENERS", &list.join(","))]);
    let err = load(None, e, &Flags::default()).unwrap_err().to_string();
    assert!(err.contains("at most"), "{err}");
}

#[test]
fn every_setting_is_a_key_the_environment_may_set() {
    // Every field printed (the optional ones set) is in `setting_keys`: a setting missing there would be
    // ignored as an unknown `FERRY_*` variable.
    let s = Settings {
        node_id: Some(2),
        advertise: Some("a".into()),
        listeners: Listeners::parse("x=127.0.0.1:1").unwrap(),
        ..Settings::default()
    };
    let table: toml::Table = toml::from_str(&s.to_toml()).unwrap();
    let keys = setting_keys();
    for k in table.keys() {
        assert!(keys.contains(&k.as_str()), "`{k}` is not in setting_keys");
    }
    let e = env(&[("FERRY_AUTO_JOIN", "true")]);
    let loaded = load(None, e, &Flags::default()).unwrap();
    assert!(loaded.settings.auto_join);
    assert!(loaded.unknown_env.is_empty(), "{:?}", loaded.unknown_env);
}
