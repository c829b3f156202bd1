//! Byte vectors written out by hand from the uapi definitions (x86_64: little
//! endian lengths, types and sequence numbers; big endian ports, addresses
//! and res_id), and the entry parser's accepts and rejects.

use super::*;
use crate::ipvs::ipset::SetKind;

fn op(add: bool, set: &str, ty: &str, family: Family, entry: &str) -> EntryOp {
    EntryOp {
        add,
        set: set.into(),
        set_type: SetType::from_name(ty).unwrap(),
        family,
        entry: entry.into(),
    }
}

/// A whole request around hand-written IPSET_ATTR_DATA contents.
fn msg(cmd: u8, family: u8, seq: u32, name: &str, data: &[u8]) -> Vec<u8> {
    let mut name_attr = vec![(4 + name.len() + 1) as u8, 0, 2, 0];
    name_attr.extend_from_slice(name.as_bytes());
    name_attr.push(0);
    while name_attr.len() % 4 != 0 {
        name_attr.push(0);
    }
    let len = 16 + 4 + 8 + name_attr.len() + 4 + data.len();
    let mut m = vec![len as u8, 0, 0, 0, cmd, 6, 5, 0];
    m.extend_from_slice(&seq.to_le_bytes());
    m.extend_from_slice(&[0, 0, 0, 0]); // port id
    m.extend_from_slice(&[family, 0, 0, 0]); // nfgenmsg
    m.extend_from_slice(&[5, 0, 1, 0, 6, 0, 0, 0]); // PROTOCOL = 6
    m.extend_from_slice(&name_attr);
    m.extend_from_slice(&[(4 + data.len()) as u8, 0, 7, 0x80]); // DATA | NESTED
    m.extend_from_slice(data);
    m
}

fn v6(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>().unwrap().octets()
}

/// IP or IP2 (`ty`) | NESTED around IPADDR_IPV6 | NET_BYTEORDER.
fn ip6_attr(ty: u8, s: &str) -> Vec<u8> {
    let mut a = vec![24, 0, ty, 0x80, 20, 0, 2, 0x40];
    a.extend_from_slice(&v6(s));
    a
}

const ADD: u8 = 9;
const DEL: u8 = 10;
const INET: u8 = 2;
const INET6: u8 = 10;

#[test]
fn loop_back_add_whole_message() {
    let got = encode(
        &op(
            true,
            "KUBE-LOOP-BACK",
            "hash:ip,port,ip",
            Family::V4,
            "10.1.2.3,tcp:8080,10.1.2.3",
        ),
        1,
    )
    .unwrap();
    #[rustfmt::skip]
    let want: Vec<u8> = vec![
        92, 0, 0, 0,                    // nlmsg_len
        9, 6,                           // IPSET_CMD_ADD | NFNL_SUBSYS_IPSET << 8
        5, 0,                           // NLM_F_REQUEST | NLM_F_ACK (no NLM_F_EXCL)
        1, 0, 0, 0,                     // seq
        0, 0, 0, 0,                     // port id
        2, 0, 0, 0,                     // nfgenmsg: AF_INET, NFNETLINK_V0, res_id 0
        5, 0, 1, 0, 6, 0, 0, 0,         // PROTOCOL = 6
        19, 0, 2, 0, b'K', b'U', b'B', b'E', b'-', b'L', b'O', b'O',
        b'P', b'-', b'B', b'A', b'C', b'K', 0, 0, // SETNAME "KUBE-LOOP-BACK\0"
        44, 0, 7, 0x80,                 // DATA | NESTED
        12, 0, 1, 0x80,                 //   IP | NESTED
        8, 0, 1, 0x40, 10, 1, 2, 3,     //     IPADDR_IPV4 | NET_BYTEORDER
        6, 0, 4, 0x40, 0x1f, 0x90, 0, 0, //  PORT | NET_BYTEORDER = 8080
        5, 0, 7, 0, 6, 0, 0, 0,         //   PROTO = TCP
        12, 0, 20, 0x80,                //   IP2 | NESTED
        8, 0, 1, 0x40, 10, 1, 2, 3,     //     IPADDR_IPV4 | NET_BYTEORDER
    ];
    assert_eq!(got, want);
}

/// (set type, family, entry, hand-written DATA contents)
fn cases() -> Vec<(&'static str, Family, &'static str, Vec<u8>)> {
    let port = |p: u16| {
        let b = p.to_be_bytes();
        vec![6, 0, 4, 0x40, b[0], b[1], 0, 0]
    };
    let proto = |p: u8| vec![5, 0, 7, 0, p, 0, 0, 0];
    let cat = |parts: &[Vec<u8>]| parts.concat();
    vec![
        (
            "hash:ip",
            Family::V4,
            "10.96.0.1",
            vec![12, 0, 1, 0x80, 8, 0, 1, 0x40, 10, 96, 0, 1],
        ),
        ("hash:ip", Family::V6, "fd00::1", ip6_attr(1, "fd00::1")),
        (
            "hash:ip,port",
            Family::V4,
            "10.96.0.1,tcp:80",
            cat(&[
                vec![12, 0, 1, 0x80, 8, 0, 1, 0x40, 10, 96, 0, 1],
                port(80),
                proto(6),
            ]),
        ),
        (
            "hash:ip,port",
            Family::V6,
            "fd00::a,udp:53",
            cat(&[ip6_attr(1, "fd00::a"), port(53), proto(17)]),
        ),
        (
            "hash:ip,port",
            Family::V4,
            "192.168.10.5,sctp:30300",
            cat(&[
                vec![12, 0, 1, 0x80, 8, 0, 1, 0x40, 192, 168, 10, 5],
                port(30300),
                proto(132),
            ]),
        ),
        (
            "hash:ip,port,ip",
            Family::V6,
            "fd00::5,tcp:8080,fd00::6",
            cat(&[
                ip6_attr(1, "fd00::5"),
                port(8080),
                proto(6),
                ip6_attr(20, "fd00::6"),
            ]),
        ),
        (
            "hash:ip,port,net",
            Family::V4,
            "10.96.0.5,tcp:80,192.168.0.0/16",
            cat(&[
                vec![12, 0, 1, 0x80, 8, 0, 1, 0x40, 10, 96, 0, 5],
                port(80),
                proto(6),
                vec![12, 0, 20, 0x80, 8, 0, 1, 0x40, 192, 168, 0, 0],
                vec![5, 0, 21, 0, 16, 0, 0, 0], // CIDR2 = 16
            ]),
        ),
        (
            "hash:ip,port,net",
            Family::V4,
            "10.96.0.5,tcp:80,10.0.0.7",
            cat(&[
                vec![12, 0, 1, 0x80, 8, 0, 1, 0x40, 10, 96, 0, 5],
                port(80),
                proto(6),
                vec![12, 0, 20, 0x80, 8, 0, 1, 0x40, 10, 0, 0, 7],
            ]),
        ),
        (
            "hash:ip,port,net",
            Family::V6,
            "fd00::9,udp:443,fd00:1::/64",
            cat(&[
                ip6_attr(1, "fd00::9"),
                port(443),
                proto(17),
                ip6_attr(20, "fd00:1::"),
                vec![5, 0, 21, 0, 64, 0, 0, 0],
            ]),
        ),
        (
            "bitmap:port",
            Family::V4,
            "30080",
            vec![6, 0, 4, 0x40, 0x75, 0x80, 0, 0],
        ),
        (
            "bitmap:port",
            Family::V6,
            "0",
            vec![6, 0, 4, 0x40, 0, 0, 0, 0],
        ),
    ]
}

#[test]
fn every_set_type_both_families_add_and_del() {
    for (ty, family, entry, data) in cases() {
        let fam = if family == Family::V4 { INET } else { INET6 };
        for (add, cmd) in [(true, ADD), (false, DEL)] {
            let o = op(add, "KUBE-6-SOME-SET", ty, family, entry);
            assert_eq!(
                encode(&o, 0x01020304).unwrap(),
                msg(cmd, fam, 0x01020304, "KUBE-6-SOME-SET", &data),
                "{}",
                o.line()
            );
        }
    }
}

#[test]
fn batch_is_messages_back_to_back_with_their_own_sequence_numbers() {
    let a = op(
        true,
        "KUBE-NODE-PORT-TCP",
        "bitmap:port",
        Family::V4,
        "30080",
    );
    let b = op(false, "KUBE-IPVS-IPS", "hash:ip", Family::V4, "10.96.0.1");
    let got = encode_batch(&[a, b], u32::MAX).unwrap();
    let mut want = msg(
        ADD,
        INET,
        u32::MAX,
        "KUBE-NODE-PORT-TCP",
        &[6, 0, 4, 0x40, 0x75, 0x80, 0, 0],
    );
    assert_eq!(want.len() % 4, 0);
    want.extend(msg(
        DEL,
        INET,
        0, // wrapped
        "KUBE-IPVS-IPS",
        &[12, 0, 1, 0x80, 8, 0, 1, 0x40, 10, 96, 0, 1],
    ));
    assert_eq!(got, want);
    assert!(encode_batch(&[], 1).unwrap().is_empty());
}

/// An NLMSG_ERROR answer as the kernel writes it with NETLINK_CAP_ACK.
fn ack(seq: u32, error: i32) -> Vec<u8> {
    let mut m = vec![36, 0, 0, 0, 2, 0, 0, 1]; // NLMSG_ERROR, NLM_F_CAPPED
    m.extend_from_slice(&seq.to_le_bytes());
    m.extend_from_slice(&[0x39, 0x30, 0, 0]); // our port id
    m.extend_from_slice(&error.to_le_bytes());
    m.extend_from_slice(&[0; 16]); // the request's header
    m
}

#[test]
fn replies() {
    let mut buf = ack(7, 0);
    buf.extend(ack(8, -2));
    buf.extend(ack(9, -4352));
    // Anything but NLMSG_ERROR is skipped.
    buf.extend_from_slice(&[16, 0, 0, 0, 3, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        parse_replies(&buf).unwrap(),
        vec![
            Reply { seq: 7, errno: 0 },
            Reply { seq: 8, errno: 2 },
            Reply {
                seq: 9,
                errno: 4352
            },
        ]
    );
    assert!(parse_replies(&buf[..30]).is_err(), "cut short");
    assert!(parse_replies(&[8, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]).is_err());
    assert!(parse_replies(&[]).unwrap().is_empty());
}

#[test]
fn error_texts_and_what_falls_back() {
    assert!(error_text(4097, SetType::HashIp).contains("IPSET_ERR_PROTOCOL"));
    assert!(error_text(4103, SetType::HashIp).contains("IPSET_ERR_EXIST"));
    assert!(error_text(4352, SetType::HashIpPort).contains("IPSET_ERR_HASH_FULL"));
    assert!(error_text(4352, SetType::BitmapPort).contains("IPSET_ERR_BITMAP_RANGE"));
    assert!(error_text(4104, SetType::HashIpPortNet).contains("IPSET_ERR_INVALID_CIDR"));
    assert!(error_text(2, SetType::HashIp).contains("No such file"));
    assert_eq!(error_text(4999, SetType::HashIp), "ipset error 4999");
    // Missing set or a request the kernel cannot read: restore may do it.
    for e in [libc::ENOENT, 4097, libc::EINVAL] {
        assert!(suggests_fallback(e), "{e}");
    }
    // The kernel read it and said no: restore would fail the same way.
    for e in [4352, 4104, libc::EPERM, libc::ENOMEM] {
        assert!(!suggests_fallback(e), "{e}");
    }
}

#[test]
fn parses_what_we_write() {
    let p = |ty: &str, f, e: &str| parse_entry(SetType::from_name(ty).unwrap(), f, e);
    assert_eq!(
        p("hash:ip,port,ip", Family::V4, "10.1.2.3,tcp:8080,10.1.2.3"),
        Ok(Entry::IpPortIp {
            ip: "10.1.2.3".parse().unwrap(),
            proto: 6,
            port: 8080,
            ip2: "10.1.2.3".parse().unwrap(),
        })
    );
    assert_eq!(
        p(
            "hash:ip,port,net",
            Family::V6,
            "fd00::9,sctp:80,fd00:1::/128"
        ),
        Ok(Entry::IpPortNet {
            ip: "fd00::9".parse().unwrap(),
            proto: 132,
            port: 80,
            net: "fd00:1::".parse().unwrap(),
            cidr: Some(128),
        })
    );
    assert_eq!(
        p("bitmap:port", Family::V6, "65535"),
        Ok(Entry::Port(65535))
    );
    // Every type of every set we create is known here.
    for k in SetKind::all() {
        assert!(SetType::from_name(k.set_type()).is_some(), "{k:?}");
        assert_eq!(
            SetType::from_name(k.set_type()).unwrap().name(),
            k.set_type()
        );
    }
}

#[test]
fn rejects_what_it_cannot_read() {
    let bad = [
        ("hash:ip,port,ip", Family::V4, "10.1.2.3,tcp:8080"),
        (
            "hash:ip,port,ip",
            Family::V4,
            "10.1.2.3,tcp:8080,10.1.2.3,x",
        ),
        ("hash:ip,port", Family::V4, "10.96.0.1,icmp:8"),
        ("hash:ip,port", Family::V4, "10.96.0.1,tcp:70000"),
        ("hash:ip,port", Family::V4, "10.96.0.1,tcp:"),
        ("hash:ip,port", Family::V4, "10.96.0.1,tcp:+80"),
        ("hash:ip,port", Family::V4, "10.96.0.1,80"),
        ("hash:ip,port", Family::V4, "fd00::1,tcp:80"),
        ("hash:ip,port", Family::V6, "10.96.0.1,tcp:80"),
        (
            "hash:ip,port,net",
            Family::V4,
            "10.96.0.5,tcp:80,10.0.0.0/33",
        ),
        ("hash:ip,port,net", Family::V4, "10.96.0.5,tcp:80,10.0.0.0/"),
        ("hash:ip,port,net", Family::V6, "fd00::5,tcp:80,fd00::/129"),
        ("hash:ip", Family::V4, "10.96.0.1 "),
        ("hash:ip", Family::V4, "10.96.0.300"),
        ("hash:ip", Family::V4, ""),
        ("bitmap:port", Family::V4, "65536"),
        ("bitmap:port", Family::V4, "-1"),
        ("bitmap:port", Family::V4, "tcp:80"),
    ];
    for (ty, f, e) in bad {
        let o = op(true, "KUBE-SOME-SET", ty, f, e);
        let err = encode(&o, 1).unwrap_err();
        assert!(
            err.contains("KUBE-SOME-SET") && err.contains(&format!("{e:?}")),
            "{err}"
        );
    }
    assert!(SetType::from_name("hash:net").is_none());
    let long = op(true, &"K".repeat(32), "hash:ip", Family::V4, "10.0.0.1");
    assert!(encode(&long, 1).unwrap_err().contains("bad ipset name"));
    let mut ok = long.clone();
    ok.set = "K".repeat(31);
    assert!(encode(&ok, 1).is_ok(), "31 characters and the NUL fit");
}
