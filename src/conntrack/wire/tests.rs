//! Byte vectors written out by hand from the uapi definitions (x86_64: little
//! endian lengths, types, flags and sequence numbers; big endian ports,
//! addresses, zone, id and res_id), and a dumped entry as the kernel wrote
//! it (captured from Linux 6.18 in a network namespace).

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn udp(src: &str, dst: &str, sport: u16, dport: u16) -> Tuple {
    Tuple {
        src: ip(src),
        dst: ip(dst),
        proto: UDP,
        sport,
        dport,
    }
}

#[test]
fn dump_request_asks_for_the_udp_entries_of_one_family() {
    #[rustfmt::skip]
    let want: Vec<u8> = vec![
        48, 0, 0, 0,              // nlmsg_len
        1, 1,                     // IPCTNL_MSG_CT_GET | NFNL_SUBSYS_CTNETLINK << 8
        1, 3,                     // NLM_F_REQUEST | NLM_F_DUMP (0x300)
        7, 0, 0, 0,               // seq
        0, 0, 0, 0,               // port id
        2, 0, 0, 0,               // nfgenmsg: AF_INET, NFNETLINK_V0, res_id 0
        16, 0, 1, 0x80,           // CTA_TUPLE_ORIG | NESTED
        12, 0, 2, 0x80,           //   CTA_TUPLE_PROTO | NESTED
        5, 0, 1, 0, 17, 0, 0, 0,  //     CTA_PROTO_NUM = IPPROTO_UDP (u8, padded)
        12, 0, 25, 0x80,          // CTA_FILTER | NESTED
        8, 0, 1, 0, 8, 0, 0, 0,   //   CTA_FILTER_ORIG_FLAGS = CTA_FILTER_FLAG(CTA_PROTO_NUM)
    ];
    assert_eq!(dump_request(Family::V4, 7), want);
    let v6 = dump_request(Family::V6, 7);
    assert_eq!(v6[16], 10, "AF_INET6");
    assert_eq!(v6[..16], want[..16]);
    assert_eq!(v6[17..], want[17..]);
}

#[test]
fn delete_names_the_original_tuple_zone_and_id() {
    let e = Entry {
        orig: udp("10.244.1.7", "10.96.0.53", 40000, 53),
        reply: udp("10.244.1.10", "10.244.1.7", 5353, 40000),
        zone: 0,
        id: Some(0x01020304),
        status: 0,
    };
    #[rustfmt::skip]
    let want: Vec<u8> = vec![
        80, 0, 0, 0,                       // nlmsg_len
        2, 1,                              // IPCTNL_MSG_CT_DELETE | NFNL_SUBSYS_CTNETLINK << 8
        5, 0,                              // NLM_F_REQUEST | NLM_F_ACK
        9, 0, 0, 0,                        // seq
        0, 0, 0, 0,                        // port id
        2, 0, 0, 0,                        // nfgenmsg: AF_INET
        52, 0, 1, 0x80,                    // CTA_TUPLE_ORIG | NESTED
        20, 0, 1, 0x80,                    //   CTA_TUPLE_IP | NESTED
        8, 0, 1, 0, 10, 244, 1, 7,         //     CTA_IP_V4_SRC
        8, 0, 2, 0, 10, 96, 0, 53,         //     CTA_IP_V4_DST
        28, 0, 2, 0x80,                    //   CTA_TUPLE_PROTO | NESTED
        5, 0, 1, 0, 17, 0, 0, 0,           //     CTA_PROTO_NUM = UDP
        6, 0, 2, 0, 0x9c, 0x40, 0, 0,      //     CTA_PROTO_SRC_PORT = 40000 (be16)
        6, 0, 3, 0, 0, 53, 0, 0,           //     CTA_PROTO_DST_PORT = 53 (be16)
        8, 0, 12, 0, 1, 2, 3, 4,           // CTA_ID (be32)
    ];
    assert_eq!(delete_request(&e, 9), want);
    // A zone other than the default one is named; the reply tuple never is.
    let z = delete_request(&Entry { zone: 0x0102, ..e }, 9);
    assert_eq!(z[0], 88);
    assert_eq!(z[72..80], [6, 0, 18, 0, 1, 2, 0, 0]); // CTA_ZONE (be16)
    assert_eq!(z[80..], want[72..]);
}

#[test]
fn ipv6_delete() {
    let e = Entry {
        orig: udp("fd00:10::100", "fd00:96::53", 1, 53),
        reply: udp("fd00:244:1::10", "fd00:10::100", 5353, 1),
        zone: 0,
        id: None,
        status: 0,
    };
    let got = delete_request(&e, 1);
    let mut want: Vec<u8> = vec![
        96, 0, 0, 0, 2, 1, 5, 0, 1, 0, 0, 0, 0, 0, 0, 0, // header
        10, 0, 0, 0, // nfgenmsg: AF_INET6
        76, 0, 1, 0x80, // CTA_TUPLE_ORIG
        44, 0, 1, 0x80, // CTA_TUPLE_IP
        20, 0, 3, 0, // CTA_IP_V6_SRC
    ];
    want.extend_from_slice(&"fd00:10::100".parse::<Ipv6Addr>().unwrap().octets());
    want.extend_from_slice(&[20, 0, 4, 0]); // CTA_IP_V6_DST
    want.extend_from_slice(&"fd00:96::53".parse::<Ipv6Addr>().unwrap().octets());
    want.extend_from_slice(&[
        28, 0, 2, 0x80, 5, 0, 1, 0, 17, 0, 0, 0, 6, 0, 2, 0, 0, 1, 0, 0, 6, 0, 3, 0, 0, 53, 0, 0,
    ]);
    assert_eq!(got, want);
}

#[test]
fn a_batch_is_the_requests_back_to_back_with_rising_sequence_numbers() {
    let e = |sport| Entry {
        orig: udp("10.0.0.1", "10.96.0.53", sport, 53),
        reply: udp("10.0.0.2", "10.0.0.1", 5353, sport),
        zone: 0,
        id: Some(sport as u32),
        status: 0,
    };
    let entries = [e(1), e(2), e(3)];
    let b = delete_batch(&entries, u32::MAX);
    let one = delete_request(&e(1), u32::MAX);
    assert_eq!(b.len(), 3 * one.len());
    assert_eq!(b[..one.len()], one);
    assert_eq!(b[one.len()..2 * one.len()], delete_request(&e(2), 0));
    assert_eq!(b[2 * one.len()..], delete_request(&e(3), 1));
}

/// A message as the kernel dumps it: an IPCTNL_MSG_CT_NEW with NLM_F_MULTI
/// and more attributes than the parser reads (status, timeout, protoinfo,
/// mark, use), in any order, nests flagged NLA_F_NESTED.
fn dumped(seq: u32, orig: &Tuple, reply: &Tuple, extra: &[u8]) -> Vec<u8> {
    let mut attrs = Vec::new();
    put(&mut attrs, CTA_STATUS, &0x1a8u32.to_be_bytes());
    put_tuple(&mut attrs, CTA_TUPLE_ORIG, orig);
    put(&mut attrs, 7, &30u32.to_be_bytes()); // CTA_TIMEOUT
    put_tuple(&mut attrs, CTA_TUPLE_REPLY, reply);
    put(&mut attrs, 11, &1u32.to_be_bytes()); // CTA_USE
    attrs.extend_from_slice(extra);
    let mut m = Vec::new();
    m.extend_from_slice(&((16 + 4 + attrs.len()) as u32).to_ne_bytes());
    m.extend_from_slice(&[0, 1, 2, 0]); // CT_NEW, NLM_F_MULTI
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&[0; 4]);
    m.extend_from_slice(&[2, 0, 0, 0]);
    m.extend_from_slice(&attrs);
    m
}

#[test]
fn parses_dumped_entries_and_the_end_of_the_dump() {
    let o = udp("10.244.1.7", "10.96.0.53", 40000, 53);
    let r = udp("10.244.1.10", "10.244.1.7", 5353, 40000);
    let mut extra = Vec::new();
    put(&mut extra, CTA_ID, &0xdeadbeefu32.to_be_bytes());
    put(&mut extra, CTA_ZONE, &5u16.to_be_bytes());
    let mut buf = dumped(3, &o, &r, &extra);
    // An ICMP entry: no ports, still an entry.
    let icmp = Tuple {
        proto: 1,
        sport: 0,
        dport: 0,
        ..o
    };
    buf.extend_from_slice(&dumped(3, &icmp, &icmp, &[]));
    // NLMSG_DONE with status 0.
    buf.extend_from_slice(&[20, 0, 0, 0, 3, 0, 2, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let got = parse(&buf).unwrap();
    assert_eq!(
        got,
        vec![
            Answer::Entry {
                seq: 3,
                entry: Some(Entry {
                    orig: o,
                    reply: r,
                    zone: 5,
                    id: Some(0xdeadbeef),
                    status: 0x1a8,
                })
            },
            Answer::Entry {
                seq: 3,
                entry: Some(Entry {
                    orig: icmp,
                    reply: icmp,
                    zone: 0,
                    id: None,
                    status: 0x1a8,
                })
            },
            Answer::Done { seq: 3, errno: 0 },
        ]
    );
}

#[test]
fn parses_a_dump_the_kernel_wrote() {
    // A UDP flow 10.0.0.1:40000 -> 10.96.0.53:53 DNATed to 10.0.0.2:5353
    // by an iptables rule, as Linux 6.18 answered our dump request in a
    // network namespace (recv() buffers copied byte for byte; a TCP entry
    // of the same table was left out by the kernel's protocol filter):
    // CT_NEW with NLM_F_MULTI, then ORIG, REPLY, STATUS, MARK, ID, USE,
    // TIMEOUT; then NLMSG_DONE.
    let got = parse(&KERNEL_DUMP).unwrap();
    assert_eq!(got.len(), 2, "{got:?}");
    let Answer::Entry { entry: Some(e), .. } = got[0] else {
        panic!("{got:?}");
    };
    assert_eq!(e.orig, udp("10.0.0.1", "10.96.0.53", 40000, 53));
    assert_eq!(e.reply, udp("10.0.0.2", "10.0.0.1", 5353, 40000));
    assert_eq!(e.zone, 0);
    assert_eq!(e.id, Some(3051007101), "as `conntrack -L -o id` printed it");
    assert_ne!(e.status & IPS_DST_NAT, 0, "DNATed");
    assert_eq!(got.last(), Some(&Answer::Done { seq: 1, errno: 0 }));
}

#[rustfmt::skip]
const KERNEL_DUMP: [u8; 184] = [
    164, 0, 0, 0, 0, 1, 34, 0, 1, 0, 0, 0, 210, 20, 0, 0,
    2, 0, 0, 0, 52, 0, 1, 128, 20, 0, 1, 128, 8, 0, 1, 0,
    10, 0, 0, 1, 8, 0, 2, 0, 10, 96, 0, 53, 28, 0, 2, 128,
    5, 0, 1, 0, 17, 0, 0, 0, 6, 0, 2, 0, 156, 64, 0, 0,
    6, 0, 3, 0, 0, 53, 0, 0, 52, 0, 2, 128, 20, 0, 1, 128,
    8, 0, 1, 0, 10, 0, 0, 2, 8, 0, 2, 0, 10, 0, 0, 1,
    28, 0, 2, 128, 5, 0, 1, 0, 17, 0, 0, 0, 6, 0, 2, 0,
    20, 233, 0, 0, 6, 0, 3, 0, 156, 64, 0, 0, 8, 0, 3, 0,
    0, 0, 1, 168, 8, 0, 8, 0, 0, 0, 0, 0, 8, 0, 12, 0,
    181, 218, 172, 125, 8, 0, 11, 0, 0, 0, 0, 1, 8, 0, 7, 0,
    0, 0, 0, 29,
    20, 0, 0, 0, 3, 0, 2, 0, 1, 0, 0, 0, 210, 20, 0, 0,
    0, 0, 0, 0,
];

#[test]
fn acks_and_errors_carry_their_sequence_numbers() {
    let mut buf = Vec::new();
    for (seq, err) in [(10u32, 0i32), (11, -libc::ENOENT), (12, -libc::EPERM)] {
        // NLMSG_ERROR with NETLINK_CAP_ACK: the request's header only.
        buf.extend_from_slice(&36u32.to_ne_bytes());
        buf.extend_from_slice(&[2, 0, 0, 1]);
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&[0; 4]);
        buf.extend_from_slice(&err.to_ne_bytes());
        buf.extend_from_slice(&[0; 16]);
    }
    assert_eq!(
        parse(&buf).unwrap(),
        vec![
            Answer::Error { seq: 10, errno: 0 },
            Answer::Error {
                seq: 11,
                errno: libc::ENOENT
            },
            Answer::Error {
                seq: 12,
                errno: libc::EPERM
            },
        ]
    );
}

#[test]
fn round_trip_through_the_parser() {
    for (o, r) in [
        (
            udp("192.168.10.100", "192.168.10.5", 40001, 30053),
            udp("10.244.1.11", "10.244.1.1", 5353, 40001),
        ),
        (
            udp("fd00:10::100", "fd00:96::53", 1, 53),
            udp("fd00:244:1::10", "fd00:10::100", 5353, 1),
        ),
    ] {
        let buf = dumped(1, &o, &r, &[]);
        let [Answer::Entry { entry: Some(e), .. }] = parse(&buf).unwrap()[..] else {
            panic!()
        };
        assert_eq!((e.orig, e.reply), (o, r));
        assert_eq!(e.family(), Family::of(&o.src));
    }
}

#[test]
fn malformed_input_is_an_error_never_a_panic() {
    let o = udp("10.0.0.1", "10.96.0.53", 1, 53);
    let good = dumped(1, &o, &o, &[]);
    // Every truncation and every single corrupted length byte.
    for n in 0..good.len() {
        let mut b = good[..n].to_vec();
        if n >= 4 {
            b[..4].copy_from_slice(&(n as u32).to_ne_bytes());
        }
        let _ = parse(&b);
    }
    for i in 0..good.len() {
        for v in [0u8, 1, 3, 0x7f, 0xff] {
            let mut b = good.clone();
            b[i] = v;
            let _ = parse(&b);
        }
    }
    assert!(parse(&[40, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
    // An entry without a reply tuple is skipped, not an error.
    let mut attrs = Vec::new();
    put_tuple(&mut attrs, CTA_TUPLE_ORIG, &o);
    let mut m = ((20 + attrs.len()) as u32).to_ne_bytes().to_vec();
    m.extend_from_slice(&[0, 1, 2, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0]);
    m.extend_from_slice(&attrs);
    assert_eq!(
        parse(&m).unwrap(),
        vec![Answer::Entry {
            seq: 1,
            entry: None
        }]
    );
}
