//! Every number from the flags and the KubeProxyConfiguration file is
//! range-checked: a value inside its range is taken as given, any other input
//! is one error naming the flag or field and the accepted range, and no input
//! panics. Property tests against a small model of the rules (Go durations,
//! decimal integers), plus arbitrary YAML-ish text and argument lists.

use clap::Parser;
use kube_proxy_rs::cli::{Cli, Settings};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use std::time::Duration;

const NS: i128 = 1;
const US: i128 = 1_000;
const MS: i128 = 1_000_000;
const S: i128 = 1_000_000_000;
const MIN: i128 = 60 * S;
const H: i128 = 60 * MIN;
/// Periods: at most a year (tokio timers, and nobody means more).
const YEAR: i128 = 8760 * H;
/// Conntrack timeouts: what the kernel accepts on any HZ (INT_MAX / 1000 s).
const CT_MAX: i128 = 2_147_483 * S;
const INT32: i128 = 2_147_483_647;

/// What a value should become: its range (inclusive) and the range as the
/// error message must spell it.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Dur {
        lo: i128,
        hi: i128,
        text: &'static str,
    },
    Int {
        lo: i128,
        hi: i128,
        text: &'static str,
    },
}

const PERIOD: Kind = Kind::Dur {
    lo: 1,
    hi: YEAR,
    text: "1ns..=8760h",
};
const PERIOD0: Kind = Kind::Dur {
    lo: 0,
    hi: YEAR,
    text: "0s..=8760h",
};
const CT_TIMEOUT: Kind = Kind::Dur {
    lo: 0,
    hi: CT_MAX,
    text: "0s..=596h31m23s",
};
const BIT: Kind = Kind::Int {
    lo: 0,
    hi: 31,
    text: "0..=31",
};
const COUNT32: Kind = Kind::Int {
    lo: 0,
    hi: INT32,
    text: "0..=2147483647",
};
const LINES: Kind = Kind::Int {
    lo: 0,
    hi: 4_294_967_295,
    text: "0..=4294967295",
};
const OOM: Kind = Kind::Int {
    lo: -1000,
    hi: 1000,
    text: "-1000..=1000",
};

/// Effective values a field feeds (checked when the input is accepted).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Feeds {
    SyncPeriod,
    MinSyncPeriod,
    MasqueradeBit,
    MaxPerCore,
    CtMin,
    TcpEstablished,
    TcpCloseWait,
    UdpTimeout,
    UdpStreamTimeout,
    Verbosity,
    PayloadLines,
    Nothing,
}

const DEFAULT_SYNC: i128 = 30 * S;
const DEFAULT_MIN_SYNC: i128 = S;

struct Flag {
    name: &'static str,
    kind: Kind,
    feeds: Feeds,
}

impl Flag {
    /// How errors name it: clap names an alias by its flag
    /// (`--iptables-sync-period` is `--sync-period`).
    fn named(&self) -> String {
        let canonical = match self.name {
            "iptables-sync-period" | "ipvs-sync-period" => "sync-period",
            "iptables-min-sync-period" | "ipvs-min-sync-period" => "min-sync-period",
            n => n,
        };
        format!("--{canonical}")
    }
}

const FLAGS: &[Flag] = &[
    Flag {
        name: "sync-period",
        kind: PERIOD,
        feeds: Feeds::SyncPeriod,
    },
    Flag {
        name: "iptables-sync-period",
        kind: PERIOD,
        feeds: Feeds::SyncPeriod,
    },
    Flag {
        name: "ipvs-sync-period",
        kind: PERIOD,
        feeds: Feeds::SyncPeriod,
    },
    Flag {
        name: "min-sync-period",
        kind: PERIOD0,
        feeds: Feeds::MinSyncPeriod,
    },
    Flag {
        name: "iptables-min-sync-period",
        kind: PERIOD0,
        feeds: Feeds::MinSyncPeriod,
    },
    Flag {
        name: "ipvs-min-sync-period",
        kind: PERIOD0,
        feeds: Feeds::MinSyncPeriod,
    },
    Flag {
        name: "iptables-masquerade-bit",
        kind: BIT,
        feeds: Feeds::MasqueradeBit,
    },
    Flag {
        name: "conntrack-max-per-core",
        kind: COUNT32,
        feeds: Feeds::MaxPerCore,
    },
    Flag {
        name: "conntrack-min",
        kind: COUNT32,
        feeds: Feeds::CtMin,
    },
    Flag {
        name: "conntrack-tcp-timeout-established",
        kind: CT_TIMEOUT,
        feeds: Feeds::TcpEstablished,
    },
    Flag {
        name: "conntrack-tcp-timeout-close-wait",
        kind: CT_TIMEOUT,
        feeds: Feeds::TcpCloseWait,
    },
    Flag {
        name: "conntrack-udp-timeout",
        kind: CT_TIMEOUT,
        feeds: Feeds::UdpTimeout,
    },
    Flag {
        name: "conntrack-udp-timeout-stream",
        kind: CT_TIMEOUT,
        feeds: Feeds::UdpStreamTimeout,
    },
    Flag {
        name: "iptables-max-payload-lines",
        kind: LINES,
        feeds: Feeds::PayloadLines,
    },
    Flag {
        name: "v",
        kind: COUNT32,
        feeds: Feeds::Verbosity,
    },
];

/// (path in the file, kind, effective value it feeds in iptables mode)
const FIELDS: &[(&str, Kind, Feeds)] = &[
    ("syncPeriod", PERIOD0, Feeds::SyncPeriod),
    ("minSyncPeriod", PERIOD0, Feeds::MinSyncPeriod),
    ("configSyncPeriod", PERIOD0, Feeds::Nothing),
    ("iptables.syncPeriod", PERIOD0, Feeds::SyncPeriod),
    ("iptables.minSyncPeriod", PERIOD0, Feeds::MinSyncPeriod),
    ("iptables.masqueradeBit", BIT, Feeds::MasqueradeBit),
    ("ipvs.syncPeriod", PERIOD0, Feeds::Nothing),
    ("ipvs.minSyncPeriod", PERIOD0, Feeds::Nothing),
    ("ipvs.tcpTimeout", PERIOD0, Feeds::Nothing),
    ("ipvs.tcpFinTimeout", PERIOD0, Feeds::Nothing),
    ("ipvs.udpTimeout", PERIOD0, Feeds::Nothing),
    ("conntrack.maxPerCore", COUNT32, Feeds::MaxPerCore),
    ("conntrack.min", COUNT32, Feeds::CtMin),
    ("conntrack.max", COUNT32, Feeds::Nothing),
    (
        "conntrack.tcpEstablishedTimeout",
        CT_TIMEOUT,
        Feeds::TcpEstablished,
    ),
    (
        "conntrack.tcpCloseWaitTimeout",
        CT_TIMEOUT,
        Feeds::TcpCloseWait,
    ),
    ("conntrack.udpTimeout", CT_TIMEOUT, Feeds::UdpTimeout),
    (
        "conntrack.udpStreamTimeout",
        CT_TIMEOUT,
        Feeds::UdpStreamTimeout,
    ),
    ("clientConnection.burst", COUNT32, Feeds::Nothing),
    ("oomScoreAdj", OOM, Feeds::Nothing),
];

/// A generated input: its text and, when it is well-formed, its value
/// (nanoseconds for durations); `None` for malformed text.
#[derive(Debug, Clone)]
struct Input {
    text: String,
    value: Option<i128>,
}

fn units() -> impl Strategy<Value = (&'static str, i128)> {
    prop::sample::select(vec![
        ("ns", NS),
        ("us", US),
        ("µs", US),
        ("μs", US),
        ("ms", MS),
        ("s", S),
        ("m", MIN),
        ("h", H),
    ])
}

/// One `<digits>[.<digits>]<unit>` element and its exact value (the fraction
/// truncated to whole nanoseconds).
fn element() -> impl Strategy<Value = (String, i128)> {
    (
        prop_oneof![
            3 => (0u64..100).prop_map(|n| n.to_string()),
            2 => (0u64..100_000_000).prop_map(|n| n.to_string()),
            1 => "[0-9]{1,25}",
        ],
        prop::option::of("[0-9]{1,12}"),
        units(),
    )
        .prop_map(|(int, frac, (unit, scale))| {
            let mut v = int.parse::<i128>().unwrap() * scale;
            let mut text = int.clone();
            if let Some(f) = frac {
                text += ".";
                text += &f;
                v += f.parse::<i128>().unwrap() * scale / 10i128.pow(f.len() as u32);
            }
            (text + unit, v)
        })
}

fn duration_input() -> impl Strategy<Value = Input> {
    prop_oneof![
        6 => (
            prop::sample::select(vec!["", "", "", "-", "+"]),
            prop::collection::vec(element(), 1..=3),
        )
            .prop_map(|(sign, els)| {
                let text: String = els.iter().map(|(t, _)| t.as_str()).collect();
                let v: i128 = els.iter().map(|(_, v)| v).sum();
                Input {
                    text: format!("{sign}{text}"),
                    value: Some(if sign == "-" { -v } else { v }),
                }
            }),
        // Near the bounds.
        2 => prop::sample::select(vec![
            ("0", Some(0)),
            ("-0", Some(0)),
            ("+0", Some(0)),
            ("0s", Some(0)),
            ("1ns", Some(1)),
            ("-1ns", Some(-1)),
            ("999ms", Some(999 * MS)),
            ("1s", Some(S)),
            ("30s", Some(30 * S)),
            ("30.000000001s", Some(30 * S + 1)),
            ("8760h", Some(YEAR)),
            ("8760h0m0.000000001s", Some(YEAR + 1)),
            ("525600m", Some(YEAR)),
            ("2147483s", Some(CT_MAX)),
            ("2147484s", Some(CT_MAX + S)),
            ("596h31m23s", Some(CT_MAX)),
            ("2562047h47m16.854775807s", Some(i64::MAX as i128)),
            ("2562047h47m16.854775808s", Some(i64::MAX as i128 + 1)),
            ("99999999999999999999h", Some(99_999_999_999_999_999_999 * H)),
            ("9223372036854775807ns", Some(i64::MAX as i128)),
            ("-9223372036854775808ns", Some(i64::MIN as i128)),
        ])
        .prop_map(|(t, v)| Input { text: t.to_string(), value: v }),
        // Malformed: a missing or unknown unit, stray characters.
        2 => prop::sample::select(vec![
            "", "s", "1", "10", "1.5", ".", ".s", "1e3s", "5x", "1ss", "--1s", "+-1s",
            "1 s", " 1s", "1s ", "inf", "NaN", "1h-5m", "0x10s", "1_000s", "١s",
        ])
        .prop_map(|t| Input { text: t.to_string(), value: None }),
        1 => "x[ -~]{0,12}".prop_map(|t| Input { text: t, value: None }),
    ]
}

fn int_input() -> impl Strategy<Value = Input> {
    prop_oneof![
        4 => (-100i128..100).prop_map(|v| Input { text: v.to_string(), value: Some(v) }),
        3 => any::<i64>().prop_map(|v| Input { text: v.to_string(), value: Some(v as i128) }),
        2 => prop::sample::select(vec![
            -1001, -1000, -1, 0, 1, 14, 31, 32, 255, 256, 270, 65535, 65536,
            2_147_483_647, 2_147_483_648, 4_294_967_295, 4_294_967_296,
        ])
        .prop_map(|v: i128| Input { text: v.to_string(), value: Some(v) }),
        1 => "[1-9][0-9]{19,40}".prop_map(|t| {
            let v = t.parse::<i128>().unwrap_or(i128::MAX);
            Input { text: t, value: Some(v) }
        }),
        1 => prop::sample::select(vec!["", "x", "1.5", "1e3", "0x1f", "1_000", "--1", " 1", "one"])
            .prop_map(|t| Input { text: t.to_string(), value: None }),
    ]
}

fn input_for(kind: Kind) -> BoxedStrategy<Input> {
    match kind {
        Kind::Dur { .. } => prop_oneof![4 => duration_input(), 1 => int_input()].boxed(),
        Kind::Int { .. } => prop_oneof![4 => int_input(), 1 => duration_input()].boxed(),
    }
}

/// The value the input denotes as this kind: a well-formed Go duration in
/// nanoseconds (the integer 0 included), or a decimal integer; `None` when
/// the text is neither.
fn model_value(kind: Kind, input: &Input) -> Option<i128> {
    match kind {
        Kind::Dur { .. } => {
            let zero = input.text.trim_start_matches(['-', '+']) == "0";
            let with_unit = input.text.ends_with(|c: char| c.is_alphabetic());
            input.value.filter(|_| zero || with_unit)
        }
        Kind::Int { .. } if is_int(&input.text) => Some(input.text.parse::<i128>().unwrap_or(
            if input.text.starts_with('-') {
                i128::MIN
            } else {
                i128::MAX
            },
        )),
        Kind::Int { .. } => None,
    }
}

/// `Some(true)`: must be accepted; `Some(false)`: must be refused; `None`:
/// within a microsecond of a bound, where either is fine.
fn in_range(kind: Kind, input: &Input) -> Option<bool> {
    let (lo, hi) = match kind {
        Kind::Dur { lo, hi, .. } | Kind::Int { lo, hi, .. } => (lo, hi),
    };
    let Some(v) = model_value(kind, input) else {
        return Some(false);
    };
    if matches!(kind, Kind::Dur { .. }) {
        let near = |b: i128| (v - b).abs() < US && v != b;
        if near(lo) || near(hi) {
            return None;
        }
    }
    Some(v >= lo && v <= hi)
}

/// `[+-]?[0-9]+`: an integer as Go's strconv and YAML read it.
fn is_int(text: &str) -> bool {
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit())
}

fn range_text(kind: Kind) -> &'static str {
    match kind {
        Kind::Dur { text, .. } | Kind::Int { text, .. } => text,
    }
}

fn near(a: Duration, b_ns: i128) -> bool {
    (a.as_nanos() as i128 - b_ns).abs() < US
}

/// The effective value `feeds` holds in `s`, compared with `v` (the input's
/// value; zero means the default where upstream says so).
fn check_feeds(s: &Settings, feeds: Feeds, v: i128, from_file: bool) -> Result<(), String> {
    let ct = &s.conntrack;
    let dur_opt = |d: Option<Duration>| d.map(|d| d.as_nanos() as i128);
    let ok = match feeds {
        Feeds::SyncPeriod => {
            let want = if v == 0 && from_file { DEFAULT_SYNC } else { v };
            near(s.sync_period, want)
        }
        Feeds::MinSyncPeriod => {
            let want = if v == 0 && from_file {
                DEFAULT_MIN_SYNC
            } else {
                v
            };
            near(s.min_sync_period, want)
        }
        Feeds::MasqueradeBit => i128::from(s.masquerade_bit) == v,
        Feeds::MaxPerCore => ct.max_per_core.map(i128::from) == Some(v),
        Feeds::CtMin => ct.min.map(i128::from) == Some(v),
        Feeds::TcpEstablished => dur_opt(ct.tcp_established).is_some_and(|d| (d - v).abs() < US),
        Feeds::TcpCloseWait => dur_opt(ct.tcp_close_wait).is_some_and(|d| (d - v).abs() < US),
        Feeds::UdpTimeout => dur_opt(ct.udp_timeout).is_some_and(|d| (d - v).abs() < US),
        Feeds::UdpStreamTimeout => {
            dur_opt(ct.udp_stream_timeout).is_some_and(|d| (d - v).abs() < US)
        }
        Feeds::Verbosity => i128::from(s.verbosity) == v.min(255),
        Feeds::PayloadLines => {
            let want = if v == 0 { usize::MAX as i128 } else { v };
            s.max_payload_lines.map(|n| n as i128) == Some(want)
        }
        Feeds::Nothing => true,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{feeds:?} does not hold {v}: {s:?}"))
    }
}

/// Whether a sync-period value within its own range still breaks
/// minSyncPeriod <= syncPeriod against the other one's default.
fn breaks_order(feeds: Feeds, v: i128, from_file: bool) -> Option<bool> {
    let (min, sync) = match feeds {
        Feeds::SyncPeriod if v == 0 && from_file => return Some(false),
        Feeds::SyncPeriod => (DEFAULT_MIN_SYNC, v),
        Feeds::MinSyncPeriod if v == 0 && from_file => return Some(false),
        Feeds::MinSyncPeriod => (v, DEFAULT_SYNC),
        _ => return Some(false),
    };
    if (min - sync).abs() < US && min != sync {
        return None;
    }
    Some(min > sync)
}

fn settings_from_args(args: &[String]) -> Result<Settings, String> {
    let cli = Cli::try_parse_from(
        std::iter::once("kube-proxy-rs".to_string()).chain(args.iter().cloned()),
    )
    .map_err(|e| e.to_string())?;
    cli.flags.settings().map_err(|e| format!("{e:#}"))
}

fn settings_from_file(yaml: &str) -> Result<Settings, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    settings_from_args(&["--config".into(), path.display().to_string()])
}

/// `a.b: v` as nested YAML.
fn yaml_field(path: &str, value: &str) -> String {
    match path.split_once('.') {
        Some((section, field)) => format!("{section}:\n  {field}: {value}\n"),
        None => format!("{path}: {value}\n"),
    }
}

/// The value as YAML: a plain integer, or a quoted string (YAML would read
/// other plain text as floats, hex or booleans).
fn yaml_scalar(text: &str) -> String {
    if is_int(text) {
        text.to_string()
    } else {
        serde_json::to_string(text).unwrap()
    }
}

fn expect(
    name: &str,
    kind: Kind,
    feeds: Feeds,
    input: &Input,
    from_file: bool,
    got: Result<Settings, String>,
) -> Result<(), TestCaseError> {
    let value = model_value(kind, input);
    let accepted = match (in_range(kind, input), value) {
        (Some(true), Some(v)) => breaks_order(feeds, v, from_file).map(|b| !b),
        (r, _) => r,
    };
    match (accepted, got) {
        (None, _) => {}
        (Some(true), Ok(s)) => {
            check_feeds(&s, feeds, value.unwrap(), from_file)
                .map_err(|e| TestCaseError::fail(format!("{name} = {:?}: {e}", input.text)))?;
        }
        (Some(true), Err(e)) => {
            return Err(TestCaseError::fail(format!(
                "{name} = {:?} is in range but was refused: {e}",
                input.text
            )))
        }
        (Some(false), Ok(s)) => {
            return Err(TestCaseError::fail(format!(
                "{name} = {:?} is out of range but was accepted: {s:?}",
                input.text
            )))
        }
        (Some(false), Err(e)) => {
            prop_assert!(e.contains(name), "the error names {name}: {e}");
            let ordered = value.is_some_and(|v| {
                in_range(kind, input) == Some(true)
                    && breaks_order(feeds, v, from_file) == Some(true)
            });
            if ordered {
                prop_assert!(
                    e.contains("must not exceed"),
                    "the error names the order of the two periods: {e}"
                );
            } else {
                prop_assert!(
                    e.contains(range_text(kind)),
                    "the error names the range {}: {e}",
                    range_text(kind)
                );
            }
        }
    }
    Ok(())
}

fn flag_case() -> impl Strategy<Value = (usize, Input)> {
    (0..FLAGS.len()).prop_flat_map(|i| (Just(i), input_for(FLAGS[i].kind)))
}

fn field_case() -> impl Strategy<Value = (usize, Input)> {
    (0..FIELDS.len()).prop_flat_map(|i| (Just(i), input_for(FIELDS[i].1)))
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        source_file: Some(file!()),
        // A failure is saved next to this file (tests/config_numbers.proptest-regressions).
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_numeric_flag_is_range_checked((i, input) in flag_case()) {
        let f = &FLAGS[i];
        let got = settings_from_args(&[format!("--{}={}", f.name, input.text)]);
        expect(&f.named(), f.kind, f.feeds, &input, false, got)?;
    }

    #[test]
    fn every_numeric_field_is_range_checked((i, input) in field_case()) {
        let (path, kind, feeds) = FIELDS[i];
        let yaml = yaml_field(path, &yaml_scalar(&input.text));
        let got = settings_from_file(&yaml);
        expect(path, kind, feeds, &input, true, got)?;
    }

    /// Text that looks like a config file, with any values: never a panic.
    #[test]
    fn yaml_ish_text_never_panics(text in yaml_ish()) {
        let _ = kube_proxy_rs::config::KubeProxyConfiguration::parse(&text);
        let _ = settings_from_file(&text);
    }

    /// Any mix of numeric flags with any values: never a panic.
    #[test]
    fn any_flags_never_panic(args in prop::collection::vec(
        (0..FLAGS.len()).prop_flat_map(|i| (Just(i), prop_oneof![duration_input(), int_input(), "[ -~]{0,10}".prop_map(|t| Input { text: t, value: None })])),
        0..6,
    )) {
        let args: Vec<String> = args
            .iter()
            .map(|(i, v)| format!("--{}={}", FLAGS[*i].name, v.text))
            .collect();
        let _ = settings_from_args(&args);
    }
}

/// Config-file-like text: known keys at any depth, any scalar or structure.
fn yaml_ish() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "apiVersion",
        "kind",
        "mode",
        "syncPeriod",
        "minSyncPeriod",
        "iptables",
        "ipvs",
        "conntrack",
        "masqueradeBit",
        "maxPerCore",
        "min",
        "max",
        "tcpTimeout",
        "tcpEstablishedTimeout",
        "udpTimeout",
        "clientConnection",
        "burst",
        "qps",
        "oomScoreAdj",
        "configSyncPeriod",
        "clusterCIDR",
        "nodePortAddresses",
        "healthzBindAddress",
        "featureGates",
        "logging",
        "<<",
        "&a",
        "*a",
        "x",
    ]);
    let scalar = prop_oneof![
        duration_input().prop_map(|i| i.text),
        int_input().prop_map(|i| i.text),
        prop::sample::select(vec![
            "null",
            "~",
            "true",
            "[]",
            "{}",
            "[1, 2]",
            "{a: 1}",
            ".inf",
            "-.inf",
            ".nan",
            "0x7fffffff",
            "0o17",
            "1e400",
            "-1e400",
            "'30s'",
            "\"\\u0000\"",
            "!!binary AA==",
            "!!int 5",
            "!!float 5",
            "&x 5",
            "*x",
            "|\n  x",
            ">-\n  y",
            "[",
            "{",
            "'",
            "\"",
            "- 1",
            ": :",
            "? x",
            "%TAG",
            "---",
            "...",
        ])
        .prop_map(str::to_string),
        "[ -~]{0,16}",
    ];
    prop::collection::vec((0usize..3, key, scalar), 0..10).prop_map(|lines| {
        lines
            .into_iter()
            .map(|(depth, k, v)| format!("{}{k}: {v}\n", "  ".repeat(depth)))
            .collect()
    })
}

#[test]
fn the_issue_cases() {
    let err =
        settings_from_args(&["--sync-period".into(), "99999999999999999999h".into()]).unwrap_err();
    assert!(
        err.contains("--sync-period") && err.contains("1ns..=8760h"),
        "{err}"
    );
    for field in ["syncPeriod", "iptables.syncPeriod", "ipvs.syncPeriod"] {
        let err = settings_from_file(&yaml_field(field, "99999999999999999999h")).unwrap_err();
        assert!(err.contains(field) && err.contains("0s..=8760h"), "{err}");
    }
    let err = settings_from_file("iptables:\n  masqueradeBit: 270\n").unwrap_err();
    assert!(
        err.contains("iptables.masqueradeBit") && err.contains("0..=31"),
        "{err}"
    );
    let err = settings_from_args(&["--iptables-masquerade-bit=270".into()]).unwrap_err();
    assert!(
        err.contains("--iptables-masquerade-bit") && err.contains("0..=31"),
        "{err}"
    );
}
