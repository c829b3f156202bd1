//! A small reader of iptables-restore rule lines for the tests: the
//! tokens of a line (with their quoting), the options a kube-proxy rule may
//! carry, the values of an option, and the Service a rule's comment names.

use std::net::IpAddr;

pub const BUILTIN_CHAINS: [&str; 5] = ["PREROUTING", "OUTPUT", "POSTROUTING", "INPUT", "FORWARD"];
pub const BUILTIN_TARGETS: [&str; 8] = [
    "ACCEPT",
    "DROP",
    "RETURN",
    "REJECT",
    "MARK",
    "MASQUERADE",
    "DNAT",
    "SNAT",
];
/// Every option a rule may carry.
pub const OPTIONS: [&str; 25] = [
    "-A",
    "-m",
    "-p",
    "-d",
    "-s",
    "-j",
    "--dport",
    "--comment",
    "--to-destination",
    "--mode",
    "--probability",
    "--name",
    "--set",
    "--rcheck",
    "--seconds",
    "--reap",
    "--dst-type",
    "--src-type",
    "--mark",
    "--xor-mark",
    "--or-mark",
    "--random-fully",
    "--ctstate",
    "--hitcount",
    "!",
];

/// Characters a `--comment` value may hold (names pass the RFC 1123 check;
/// the fixed comments add spaces and a little punctuation).
pub fn comment_char_ok(c: char, quoted: bool) -> bool {
    c.is_ascii_alphanumeric() || "-./:[]".contains(c) || (quoted && " ;,>".contains(c))
}

/// Characters any other rule value may hold.
pub fn value_char_ok(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-./:[],".contains(c)
}

pub struct Token<'a> {
    pub text: &'a str,
    pub quoted: bool,
}

pub fn tokenize(line: &str) -> Result<Vec<Token<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = line;
    loop {
        if let Some(r) = rest.strip_prefix(' ') {
            if r.starts_with(' ') {
                return Err("double space".into());
            }
            rest = r;
        }
        if rest.is_empty() {
            return Ok(out);
        }
        if let Some(r) = rest.strip_prefix('"') {
            let end = r.find('"').ok_or("unterminated quote")?;
            out.push(Token {
                text: &r[..end],
                quoted: true,
            });
            rest = &r[end + 1..];
            if !(rest.is_empty() || rest.starts_with(' ')) {
                return Err("text right after a closing quote".into());
            }
        } else {
            let end = rest.find(' ').unwrap_or(rest.len());
            let t = &rest[..end];
            if t.contains('"') {
                return Err("quote inside a bare word".into());
            }
            out.push(Token {
                text: t,
                quoted: false,
            });
            rest = &rest[end..];
        }
    }
}

pub fn parse_addr(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<ipnet::IpNet>().ok().map(|n| n.addr()))
}

/// The value after option `opt`.
pub fn after<'a>(toks: &'a [Token<'a>], opt: &str) -> Option<&'a str> {
    toks.iter()
        .position(|t| !t.quoted && t.text == opt)
        .and_then(|i| toks.get(i + 1))
        .map(|t| t.text)
}

/// The Service key (`ns/name`) a rule's comment names, if any.
pub fn comment_service(toks: &[Token<'_>]) -> Option<String> {
    let c = after(toks, "--comment")?;
    let first = c.split(' ').next()?;
    if !first.contains('/') {
        return None;
    }
    Some(first.split(':').next().unwrap().to_string())
}
