//! Header rewriting: hop-by-hop fields (RFC 9110 §7.6.1) and the forwarded chain.

use std::net::{IpAddr, SocketAddr};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Fields that only concern one hop, removed in both directions.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Whether `headers` ask to switch protocols (`Connection: upgrade` plus `Upgrade`).
pub(crate) fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_tokens(headers).any(|t| t == "upgrade")
}

/// Remove hop-by-hop fields from a request, as [`remove_hop_by_hop`] does, but keep
/// `TE: trailers`: it announces that the client accepts trailers, which gRPC servers require.
pub(crate) fn remove_hop_by_hop_request(headers: &mut HeaderMap, upgrade: bool) {
    let trailers = headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    remove_hop_by_hop(headers, upgrade);
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Remove hop-by-hop fields, including every field named in `Connection`. With `upgrade`, the
/// `Upgrade` field and `Connection: upgrade` survive (they must reach the other side).
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        if upgrade && *name == header::UPGRADE {
            continue;
        }
        headers.remove(name);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = String> + '_ {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
}

/// Join several `Cookie` fields into one, as HTTP/2 allows them split and HTTP/1.1 servers
/// expect one (RFC 9113 §8.2.3).
pub(crate) fn join_cookies(headers: &mut HeaderMap) {
    if headers.get_all(header::COOKIE).iter().nth(1).is_none() {
        return;
    }
    let parts: Vec<&[u8]> = headers
        .get_all(header::COOKIE)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    let joined = parts.join(&b"; "[..]);
    // Joined from valid values with "; ": still a valid value; keep the fields if not.
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// Write `X-Forwarded-For`, `-Proto`, `-Host` and `Forwarded` for a request from `peer` that
/// arrived over `proto` with `host`. `trust`: keep the incoming chain and append; otherwise
/// replace it.
pub(crate) fn apply_forwarded(
    headers: &mut HeaderMap,
    peer: SocketAddr,
    host: Option<&HeaderValue>,
    proto: &'static str,
    trust: bool,
) {
    let ip = canonical_ip(peer.ip());
    let ip_text = ip.to_string();

    let xff = match joined(headers, &X_FORWARDED_FOR).filter(|_| trust) {
        Some(chain) => format!("{chain}, {ip_text}"),
        None => ip_text.clone(),
    };
    set(headers, X_FORWARDED_FOR, &xff);

    if !trust || !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if !trust || !headers.contains_key(&X_FORWARDED_HOST) {
        headers.remove(&X_FORWARDED_HOST);
        if let Some(host) = host {
            headers.insert(X_FORWARDED_HOST, host.clone());
        }
    }

    let node = match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    let mut element = format!("for={node}");
    if let Some(host) = host.and_then(|h| h.to_str().ok())
        && !host.contains(['"', '\\'])
    {
        element.push_str(&format!(";host=\"{host}\""));
    }
    element.push_str(";proto=");
    element.push_str(proto);
    let forwarded = match joined(headers, &header::FORWARDED).filter(|_| trust) {
        Some(chain) => format!("{chain}, {element}"),
        None => element,
    };
    set(headers, header::FORWARDED, &forwarded);
}

fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Every value of `name` joined with `, `, or `None` when absent or not text.
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut out = String::new();
    for value in headers.get_all(name) {
        let text = value.to_str().ok()?.trim();
        if text.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push_str(text);
    }
    (!out.is_empty()).then_some(out)
}

fn set(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    // Built from header text, IP addresses and static tokens: always a valid value; skip if not.
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_removed_including_connection_named() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("host", "a"),
            ("x-keep", "2"),
        ]);
        assert!(!wants_upgrade(&h));
        remove_hop_by_hop(&mut h, false);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["host", "x-keep"]);
    }

    #[test]
    fn te_trailers_survives_in_requests() {
        let mut h = map(&[("te", "gzip, trailers;q=1"), ("connection", "te")]);
        remove_hop_by_hop_request(&mut h, false);
        assert_eq!(h["te"], "trailers");
        let mut h = map(&[("te", "gzip")]);
        remove_hop_by_hop_request(&mut h, false);
        assert!(!h.contains_key("te"));
    }

    #[test]
    fn split_cookies_are_joined() {
        let mut h = map(&[("cookie", "a=1"), ("cookie", "b=2"), ("cookie", "c=3")]);
        join_cookies(&mut h);
        assert_eq!(
            h.get_all("cookie").iter().collect::<Vec<_>>(),
            ["a=1; b=2; c=3"]
        );
    }

    #[test]
    fn upgrade_survives() {
        let mut h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("keep-alive", "1"),
        ]);
        assert!(wants_upgrade(&h));
        remove_hop_by_hop(&mut h, true);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert!(!h.contains_key("keep-alive"));
    }

    #[test]
    fn forwarded_chain_kept_or_replaced() {
        let peer: SocketAddr = "10.1.0.1:5555".parse().unwrap();
        let host = HeaderValue::from_static("app.example:8080");
        let incoming = [
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-for", "198.51.100.2"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=203.0.113.7;proto=https"),
        ];
        let mut h = map(&incoming);
        apply_forwarded(&mut h, peer, Some(&host), "http", true);
        assert_eq!(h["x-forwarded-for"], "203.0.113.7, 198.51.100.2, 10.1.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "app.example:8080");
        assert_eq!(
            h["forwarded"],
            "for=203.0.113.7;proto=https, for=10.1.0.1;host=\"app.example:8080\";proto=http"
        );

        let mut h = map(&incoming);
        apply_forwarded(&mut h, peer, Some(&host), "http", false);
        assert_eq!(h["x-forwarded-for"], "10.1.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(
            h["forwarded"],
            "for=10.1.0.1;host=\"app.example:8080\";proto=http"
        );

        let mut h = HeaderMap::new();
        apply_forwarded(&mut h, "[fd00::1]:1".parse().unwrap(), None, "http", true);
        assert_eq!(h["forwarded"], "for=\"[fd00::1]\";proto=http");
        assert!(!h.contains_key("x-forwarded-host"));
    }

    mod props {
        #![allow(clippy::unwrap_used)]

        use super::*;
        use proptest::prelude::*;

        fn name() -> impl Strategy<Value = &'static str> {
            prop::sample::select(vec![
                "connection",
                "keep-alive",
                "proxy-connection",
                "te",
                "trailer",
                "transfer-encoding",
                "upgrade",
                "proxy-authorization",
                "proxy-authenticate",
                "host",
                "x-a",
                "x-b",
                "content-length",
                "cookie",
            ])
        }

        fn token() -> impl Strategy<Value = &'static str> {
            prop::sample::select(vec![
                "x-a",
                "X-B",
                "close",
                "keep-alive",
                "upgrade",
                "cookie",
                "",
            ])
        }

        proptest! {
            #[test]
            fn no_hop_by_hop_field_survives(
                fields in prop::collection::vec((name(), "[a-z0-9 ,]{0,12}"), 0..16),
                tokens in prop::collection::vec(token(), 0..4),
                upgrade in any::<bool>(),
            ) {
                let mut h = HeaderMap::new();
                for (n, v) in &fields {
                    h.append(HeaderName::from_static(n), HeaderValue::from_str(v).unwrap());
                }
                if !tokens.is_empty() {
                    h.append(header::CONNECTION, HeaderValue::from_str(&tokens.join(", ")).unwrap());
                }
                let named: Vec<String> = tokens.iter().map(|t| t.to_ascii_lowercase()).collect();
                let before = h.clone();
                remove_hop_by_hop(&mut h, upgrade);
                for hop in &HOP_BY_HOP {
                    if upgrade && *hop == header::CONNECTION {
                        prop_assert_eq!(h.get_all(hop).iter().count(), 1);
                        prop_assert_eq!(&h[hop], "upgrade");
                    } else {
                        prop_assert!(!h.contains_key(hop), "{} survived", hop);
                    }
                }
                for (n, _) in &before {
                    let survives = h.contains_key(n);
                    let hop = HOP_BY_HOP.contains(n) || named.iter().any(|t| t == n.as_str());
                    if *n == header::UPGRADE {
                        prop_assert_eq!(survives, upgrade);
                    } else if *n != header::CONNECTION {
                        prop_assert_eq!(survives, !hop, "{}", n);
                    }
                }
            }

            #[test]
            fn forwarded_always_ends_with_the_peer(
                xff in prop::collection::vec("[ -~]{0,24}", 0..3),
                fwd in prop::collection::vec("[ -~]{0,24}", 0..3),
                host in prop::option::of("[ -~]{0,24}"),
                trust in any::<bool>(),
                v6 in any::<bool>(),
            ) {
                let peer: SocketAddr =
                    if v6 { "[fd00::7]:9".parse().unwrap() } else { "10.1.0.7:9".parse().unwrap() };
                let mut h = HeaderMap::new();
                for v in &xff {
                    h.append(X_FORWARDED_FOR, HeaderValue::from_str(v).unwrap());
                }
                for v in &fwd {
                    h.append(header::FORWARDED, HeaderValue::from_str(v).unwrap());
                }
                let host = host.map(|v| HeaderValue::from_str(&v).unwrap());
                apply_forwarded(&mut h, peer, host.as_ref(), "http", trust);
                let ip = peer.ip().to_string();
                let got = h[X_FORWARDED_FOR].to_str().unwrap();
                prop_assert!(got.ends_with(&ip), "{}", got);
                if !trust {
                    prop_assert_eq!(got, ip.as_str());
                }
                let forwarded = h[header::FORWARDED].to_str().unwrap();
                prop_assert!(forwarded.ends_with(";proto=http"), "{}", forwarded);
                prop_assert_eq!(h.get_all(X_FORWARDED_FOR).iter().count(), 1);
                prop_assert_eq!(h.get_all(header::FORWARDED).iter().count(), 1);
            }
        }
    }
}
