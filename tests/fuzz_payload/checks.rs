//! The properties every payload must have: only known options, validated
//! comment text and declared chains; DNAT targets and VIPs the objects
//! validly asked for; addresses of the payload's family.

use super::*;

macro_rules! ensure {
    ($cond:expr, $ctx:expr, $($fmt:tt)*) => {
        if !$cond {
            return Err(TestCaseError::fail(format!(
                "{}\n  in line: {:?}",
                format!($($fmt)*),
                $ctx
            )));
        }
    };
}

// ---------------------------------------------------------------------------
// What the input allows a payload to contain
// ---------------------------------------------------------------------------

/// `ns/name` as the rules' comments print it.
pub(crate) fn key_str(ns: Option<&str>, name: Option<&str>) -> String {
    format!("{}/{}", ns.unwrap_or("default"), name.unwrap_or(""))
}

#[derive(Default)]
pub(crate) struct Allowed {
    /// Per Service: valid clusterIPs, externalIPs, load-balancer ingress IPs.
    pub(crate) vips: HashMap<String, HashSet<IpAddr>>,
    /// Per Service: valid endpoint ip:port of the slices labelled for it.
    pub(crate) endpoints: HashMap<String, HashSet<SocketAddr>>,
    /// Every valid endpoint IP of any slice.
    pub(crate) endpoint_ips: HashSet<IpAddr>,
    /// Input strings longer than 256 chars.
    pub(crate) long: BTreeSet<String>,
}

pub(crate) fn collect_strings(v: &serde_json::Value, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::String(s) if s.chars().count() > 256 => {
            out.insert(s.clone());
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_strings(x, out)),
        serde_json::Value::Object(o) => o.iter().for_each(|(k, x)| {
            if k.chars().count() > 256 {
                out.insert(k.clone());
            }
            collect_strings(x, out)
        }),
        _ => {}
    }
}

pub(crate) fn allowed(input: &Input) -> Allowed {
    let mut a = Allowed::default();
    for svc in &input.services {
        let key = key_str(
            svc.metadata.namespace.as_deref(),
            svc.metadata.name.as_deref(),
        );
        let set = a.vips.entry(key).or_default();
        let spec = svc.spec.as_ref();
        let strings = spec
            .into_iter()
            .flat_map(|sp| {
                sp.cluster_ip
                    .iter()
                    .chain(sp.cluster_ips.iter().flatten())
                    .chain(sp.external_ips.iter().flatten())
            })
            .chain(
                svc.status
                    .iter()
                    .flat_map(|st| st.load_balancer.iter())
                    .flat_map(|lb| lb.ingress.iter().flatten())
                    .filter(|ing| ing.ip_mode.as_deref() != Some("Proxy"))
                    .flat_map(|ing| ing.ip.iter()),
            );
        set.extend(strings.filter_map(|s| s.parse::<IpAddr>().ok()));
    }
    for sl in &input.slices {
        let Some(owner) = sl
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"))
        else {
            continue;
        };
        let key = key_str(sl.metadata.namespace.as_deref(), Some(owner));
        let want_v4 = match sl.address_type.as_str() {
            "IPv4" => true,
            "IPv6" => false,
            _ => continue,
        };
        let ports: Vec<u16> = sl
            .ports
            .iter()
            .flatten()
            .filter_map(|p| p.port)
            .filter(|p| (1..=65535).contains(p))
            .map(|p| p as u16)
            .collect();
        for ep in &sl.endpoints {
            // Only the first address counts (as upstream).
            let Some(ip) = ep.addresses.first().and_then(|s| s.parse::<IpAddr>().ok()) else {
                continue;
            };
            if ip.is_ipv4() != want_v4 {
                continue;
            }
            a.endpoint_ips.insert(ip);
            let set = a.endpoints.entry(key.clone()).or_default();
            set.extend(ports.iter().map(|&p| SocketAddr::new(ip, p)));
        }
    }
    for v in input
        .services
        .iter()
        .map(|x| serde_json::to_value(x).unwrap())
        .chain(
            input
                .slices
                .iter()
                .map(|x| serde_json::to_value(x).unwrap()),
        )
    {
        collect_strings(&v, &mut a.long);
    }
    a
}

// ---------------------------------------------------------------------------
// Payload checks
// ---------------------------------------------------------------------------

/// (b) for any text `render` may print: every line is a header, a chain
/// declaration, a well-formed rule, COMMIT or (if allowed) a comment line.
pub(crate) fn check_lines(
    text: &str,
    comments_allowed: bool,
    a: &Allowed,
) -> Result<(), TestCaseError> {
    ensure!(
        text.is_empty() || text.ends_with('\n'),
        text.lines().last(),
        "payload does not end with a newline"
    );
    ensure!(
        text.bytes()
            .all(|b| b == b'\n' || (0x20..0x7f).contains(&b)),
        text.lines()
            .find(|l| !l.bytes().all(|b| (0x20..0x7f).contains(&b))),
        "payload holds a control or non-ASCII character"
    );
    for s in &a.long {
        ensure!(
            !text.contains(s.as_str()),
            &s[..40.min(s.len())],
            "input string of {} chars appears in the payload",
            s.chars().count()
        );
    }
    let mut in_table = false;
    for line in text.lines() {
        if line.starts_with('#') {
            ensure!(comments_allowed, line, "comment line inside a bare payload");
            continue;
        }
        if line == "*nat" || line == "*filter" {
            ensure!(!in_table, line, "table header before COMMIT");
            in_table = true;
            continue;
        }
        ensure!(in_table, line, "line outside a table section");
        if line == "COMMIT" {
            in_table = false;
            continue;
        }
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl.strip_suffix(" - [0:0]");
            ensure!(name.is_some(), line, "malformed chain declaration");
            let name = name.unwrap();
            ensure!(
                !name.is_empty()
                    && name.len() <= 28
                    && name
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-'),
                line,
                "bad chain name {name:?}"
            );
            continue;
        }
        ensure!(line.starts_with("-A "), line, "unexpected line");
        let toks = tokenize(line).map_err(|e| TestCaseError::fail(format!("{e}: {line:?}")))?;
        let mut jumps = 0;
        for (i, t) in toks.iter().enumerate() {
            let prev = if i > 0 { toks[i - 1].text } else { "" };
            if prev == "--comment" {
                ensure!(
                    !t.text.is_empty() && t.text.chars().all(|c| comment_char_ok(c, t.quoted)),
                    line,
                    "--comment value {:?} outside the validated charset",
                    t.text
                );
                continue;
            }
            ensure!(
                !t.quoted,
                line,
                "quoted text that is not a comment: {:?}",
                t.text
            );
            if t.text.starts_with('-') || t.text == "!" {
                ensure!(
                    OPTIONS.contains(&t.text),
                    line,
                    "unknown option {:?}",
                    t.text
                );
                ensure!(t.text != "-A" || i == 0, line, "-A not first");
                jumps += usize::from(t.text == "-j");
            } else {
                ensure!(
                    !t.text.is_empty() && t.text.chars().all(value_char_ok),
                    line,
                    "value {:?} outside the rule charset",
                    t.text
                );
            }
        }
        ensure!(jumps <= 1, line, "more than one -j");
    }
    ensure!(!in_table, "", "payload ends inside a table section");
    Ok(())
}

/// (b)-(d) for one payload of one family, rendered from `ports`.
pub(crate) fn check_payload(
    payload: &str,
    cfg: &RenderConfig,
    ports: &[&ServicePort],
    a: &Allowed,
) -> Result<(), TestCaseError> {
    check_lines(payload, false, a)?;

    // Chains the model names.
    let mut model_chains: HashSet<String> = [
        names::KUBE_SERVICES,
        names::KUBE_EXTERNAL_SERVICES,
        names::KUBE_NODEPORTS,
        names::KUBE_POSTROUTING,
        names::KUBE_MARK_MASQ,
        names::KUBE_FORWARD,
        names::KUBE_PROXY_FIREWALL,
        names::KUBE_FIREWALL,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for sp in ports {
        let c = ServiceChains::of(sp);
        model_chains.extend([c.svc, c.svl, c.ext, c.fw]);
        model_chains.extend(sp.endpoints.iter().map(|e| endpoint_chain(sp, e)));
    }

    let mut tables_seen = Vec::new();
    let mut declared: HashSet<&str> = HashSet::new();
    let mut rules: Vec<&str> = Vec::new();
    let flush = |declared: &mut HashSet<&str>, rules: &mut Vec<&str>| {
        for line in rules.drain(..) {
            let toks = tokenize(line).unwrap();
            let chain = toks[1].text;
            ensure!(
                declared.contains(chain) || BUILTIN_CHAINS.contains(&chain),
                line,
                "-A to undeclared chain {chain}"
            );
            if let Some(target) = after(&toks, "-j") {
                ensure!(
                    declared.contains(target) || BUILTIN_TARGETS.contains(&target),
                    line,
                    "jump to undeclared chain {target}"
                );
            }
            let svc = comment_service(&toks);
            // Every address is of this payload's family.
            for opt in ["-d", "-s", "--to-destination"] {
                if let Some(v) = after(&toks, opt) {
                    let ip = if opt == "--to-destination" {
                        v.parse::<SocketAddr>().ok().map(|s| s.ip())
                    } else {
                        parse_addr(v)
                    };
                    ensure!(ip.is_some(), line, "{opt} {v:?} is not an address");
                    let ip = ip.unwrap();
                    ensure!(
                        Family::of(&ip) == cfg.family(),
                        line,
                        "{opt} {v} is not of family {:?}",
                        cfg.family()
                    );
                }
            }
            if let Some(v) = after(&toks, "--dport") {
                ensure!(
                    v.parse::<u16>().is_ok_and(|p| p != 0),
                    line,
                    "bad --dport {v}"
                );
            }
            // (d) DNAT only to valid endpoints of the named Service.
            if after(&toks, "-j") == Some("DNAT") {
                let dest = after(&toks, "--to-destination");
                ensure!(dest.is_some(), line, "DNAT without --to-destination");
                let dest: SocketAddr = dest.unwrap().parse().unwrap();
                ensure!(svc.is_some(), line, "DNAT rule names no Service");
                let svc = svc.clone().unwrap();
                ensure!(
                    a.endpoints.get(&svc).is_some_and(|e| e.contains(&dest)),
                    line,
                    "DNAT to {dest}, not a valid endpoint of {svc} in the input"
                );
            }
            // (d) -d VIP only for that Service's valid VIPs (the KUBE-SERVICES
            // tail may name this node's --nodeport-addresses IPs).
            if let Some(v) = after(&toks, "-d") {
                if let Ok(ip) = v.parse::<IpAddr>() {
                    match &svc {
                        Some(svc) => ensure!(
                            a.vips.get(svc).is_some_and(|s| s.contains(&ip)),
                            line,
                            "-d {ip}: not a valid VIP of {svc} in the input"
                        ),
                        None => ensure!(
                            cfg.node_ips.contains(&ip),
                            line,
                            "-d {ip}: neither a Service VIP nor a node IP"
                        ),
                    }
                }
            }
            if let Some(v) = after(&toks, "-s") {
                if let Ok(ip) = v.parse::<IpAddr>() {
                    let ok = a.endpoint_ips.contains(&ip)
                        || svc
                            .as_ref()
                            .is_some_and(|s| a.vips.get(s).is_some_and(|v| v.contains(&ip)));
                    ensure!(ok, line, "-s {ip}: not an endpoint or VIP from the input");
                }
            }
        }
        declared.clear();
        Ok(())
    };
    for line in payload.lines() {
        if let Some(t) = line.strip_prefix('*') {
            ensure!(!tables_seen.contains(&t), line, "table {t} twice");
            tables_seen.push(t);
        } else if let Some(decl) = line.strip_prefix(':') {
            let name = decl.strip_suffix(" - [0:0]").unwrap();
            ensure!(declared.insert(name), line, "chain {name} declared twice");
            ensure!(
                model_chains.contains(name),
                line,
                "chain {name} is not one the model names"
            );
        } else if line.starts_with("-A ") {
            rules.push(line);
        } else if line == "COMMIT" {
            flush(&mut declared, &mut rules)?;
        }
    }
    Ok(())
}
