//! Checks on object-derived strings before they can reach any kernel payload.
//!
//! Everything the renderers print that came from an object is either a parsed
//! number/IP (printed back by us) or a name that passed these checks, so no
//! object can smuggle quotes, spaces, newlines or rule fragments into a payload.

/// RFC 1123 label or subdomain as Kubernetes accepts them for namespaces and
/// object names: lower-case alphanumerics, '-' and '.', alphanumeric at both ends.
pub fn is_object_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && alnum_ends(s)
}

/// A service/endpoint port name: lower-case alphanumerics and '-', at most 63.
/// Empty is allowed (single unnamed port).
pub fn is_port_name(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && alnum_ends(s))
}

fn alnum_ends(s: &str) -> bool {
    let ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    s.bytes().next().is_some_and(ok) && s.bytes().last().is_some_and(ok)
}

/// A TCP/UDP/SCTP port number 1..=65535 from an API integer.
pub fn port_number(v: i32) -> Option<u16> {
    if (1..=65535).contains(&v) {
        Some(v as u16)
    } else {
        None
    }
}

/// Why `ip` may be neither a Service's VIP nor an endpoint, as the API
/// server's validation says (so a `dir:` object, or one written before that
/// validation, cannot program it either): unspecified, loopback, link-local
/// and multicast addresses. `None` when it may be.
pub fn special_ip(ip: &std::net::IpAddr) -> Option<&'static str> {
    use std::net::IpAddr;
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    if ip.is_multicast() {
        return Some("multicast");
    }
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    };
    link_local.then_some("link-local")
}

/// Makes an untrusted string printable in one log line (never used in payloads).
pub fn for_log(s: &str) -> String {
    let mut out: String = s.chars().take(80).flat_map(char::escape_debug).collect();
    if s.chars().count() > 80 {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names() {
        assert!(is_object_name("default"));
        assert!(is_object_name("my-svc.v2"));
        assert!(!is_object_name(""));
        assert!(!is_object_name("-a"));
        assert!(!is_object_name("a-"));
        assert!(!is_object_name("Upper"));
        assert!(!is_object_name("a b"));
        assert!(!is_object_name("a\"b"));
        assert!(!is_object_name("a\n-j ACCEPT"));
        assert!(!is_object_name(&"a".repeat(254)));
        assert!(is_object_name(&"a".repeat(253)));
    }

    #[test]
    fn port_names() {
        assert!(is_port_name(""));
        assert!(is_port_name("http"));
        assert!(is_port_name("web-port"));
        assert!(!is_port_name("web.port"));
        assert!(!is_port_name("http\" -j ACCEPT"));
        assert!(!is_port_name(&"p".repeat(64)));
    }

    #[test]
    fn port_numbers() {
        assert_eq!(port_number(0), None);
        assert_eq!(port_number(1), Some(1));
        assert_eq!(port_number(65535), Some(65535));
        assert_eq!(port_number(70000), None);
        assert_eq!(port_number(-5), None);
    }

    #[test]
    fn special_addresses() {
        for (ip, why) in [
            ("0.0.0.0", "unspecified"),
            ("::", "unspecified"),
            ("127.0.0.1", "loopback"),
            ("::1", "loopback"),
            ("169.254.1.1", "link-local"),
            ("fe80::1", "link-local"),
            ("224.0.0.1", "multicast"),
            ("ff02::1", "multicast"),
        ] {
            assert_eq!(special_ip(&ip.parse().unwrap()), Some(why), "{ip}");
        }
        for ok in ["10.96.0.10", "192.0.2.1", "fd00::1", "2001:db8::1"] {
            assert_eq!(special_ip(&ok.parse().unwrap()), None, "{ok}");
        }
    }

    #[test]
    fn log_escaping() {
        assert_eq!(for_log("a\nb"), "a\\nb");
        assert!(for_log(&"x".repeat(200)).ends_with("..."));
    }
}
