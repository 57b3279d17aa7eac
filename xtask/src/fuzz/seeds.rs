//! The seed corpora: a handful of small valid inputs per target, built here so they can be
//! regenerated (`cargo xtask fuzz --seeds`) when a target's input format changes.

/// (target, seed name, bytes)
pub(super) fn all() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, bytes) in wg_datagram() {
        out.push(("wg_datagram", name, bytes));
    }
    for (name, bytes) in netstack_packet() {
        out.push(("netstack_packet", name, bytes));
    }
    for (name, text) in config_toml() {
        out.push(("config_toml", name, text.into_bytes()));
    }
    for (name, text) in http_head() {
        out.push(("http_head", name, text.as_bytes().to_vec()));
    }
    out
}

const GW4: [u8; 4] = [10, 1, 0, 1];
const AGENT4: [u8; 4] = [10, 1, 0, 100];
const STACK4: [u8; 4] = [10, 0, 0, 1];
const PEER6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
const STACK6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const GW6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// The wg_datagram target reads a mode byte first (see its doc comment).
fn wg_datagram() -> Vec<(&'static str, Vec<u8>)> {
    let message = |kind: u8, len: usize| {
        let mut m = vec![0u8; len];
        m[0] = kind;
        for (i, b) in m.iter_mut().enumerate().skip(4) {
            *b = (i * 37 % 251) as u8;
        }
        m
    };
    let with_mode = |mode: u8, rest: &[u8]| {
        let mut v = vec![mode];
        v.extend_from_slice(rest);
        v
    };
    // Mode 2 appends to a live receiver index: counter (8) and ciphertext with its tag.
    let mut data_tail = 1u64.to_le_bytes().to_vec();
    data_tail.extend_from_slice(&[0x5a; 16]);
    let mut long_tail = 7u64.to_le_bytes().to_vec();
    long_tail.extend_from_slice(&[0xa5; 76]);
    vec![
        ("init", with_mode(0, &message(1, 148))),
        ("response", with_mode(0, &message(2, 92))),
        ("cookie", with_mode(0, &message(3, 64))),
        ("data", with_mode(0, &message(4, 64))),
        ("data-stranger", with_mode(1, &message(4, 48))),
        ("live-index-keepalive", with_mode(2, &data_tail)),
        ("live-index-data", with_mode(2, &long_tail)),
        (
            "inner-tcp4",
            with_mode(3, &tcp4(GW4, AGENT4, 40_000, 80, 0x02, &[])),
        ),
        (
            "inner-udp6",
            with_mode(3, &udp6(GW6, STACK6, 5353, 53, b"hello")),
        ),
        (
            "inner-spoofed",
            with_mode(3, &udp4([10, 9, 9, 9], AGENT4, 1, 53, b"x")),
        ),
        ("timers", vec![4, 0xe8, 0x03]),
    ]
}

fn netstack_packet() -> Vec<(&'static str, Vec<u8>)> {
    let peer = [10, 1, 0, 1];
    let mut fragment = udp4(peer, STACK4, 1000, 53, &[7; 64]);
    fragment[6] = 0x20; // more fragments
    fix_ipv4_checksum(&mut fragment);
    let mut echo = vec![8u8, 0, 0, 0, 0x12, 0x34, 0, 1];
    echo.extend_from_slice(b"ping");
    let sum = checksum(&echo, 0);
    echo[2..4].copy_from_slice(&sum.to_be_bytes());
    vec![
        ("syn4", tcp4(peer, STACK4, 40_000, 80, 0x02, &[])),
        (
            "ack4-data",
            tcp4(peer, STACK4, 40_001, 80, 0x18, b"GET / HTTP/1.1\r\n\r\n"),
        ),
        (
            "syn4-closed-port",
            tcp4(peer, STACK4, 40_002, 81, 0x02, &[]),
        ),
        ("udp4", udp4(peer, STACK4, 5353, 53, b"query")),
        ("icmp4-echo", ipv4(peer, STACK4, 1, &echo)),
        ("fragment4", fragment),
        ("syn6", tcp6(PEER6, STACK6, 40_003, 80, 0x02)),
        ("udp6", udp6(PEER6, STACK6, 5353, 54, b"query6")),
        ("not-for-us", udp4(peer, [10, 0, 0, 2], 5353, 53, b"x")),
        ("pause", vec![0xff]),
    ]
}

fn config_toml() -> Vec<(&'static str, String)> {
    let key = "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=";
    let gw = "Q0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0M=";
    let agent = "[agent]\nprivate_key_env = \"WG_KEY\"\nvirtual_ip = \"10.1.0.100\"\nsubnet = \"10.1.0.0/24\"\n";
    let gateway = format!(
        "[[gateways]]\nid = \"gw1\"\nname = \"gateway-tokyo\"\npublic_key = \"{gw}\"\n\
         endpoint = \"gw1.example.net:51820\"\nvirtual_ip = \"10.1.0.1\"\n"
    );
    vec![
        ("minimal", agent.to_owned()),
        ("gateway", format!("{agent}\n{gateway}")),
        (
            "full",
            format!(
                "[agent]\nprivate_key = \"{key}\"\nvirtual_ip = \"10.1.0.100\"\nsubnet = \"10.1.0.0/24\"\n\
                 listen_port = 51820\nmtu = 1420\n\n{gateway}preshared_key = \"{key}\"\n\
                 persistent_keepalive = 25\nliveness_probe = \"icmp\"\nallowed_ips = [\"10.1.0.1/32\"]\n\n\
                 [[routes]]\nport = 80\nupstream = \"127.0.0.1:8080\"\nprotocol = \"http\"\ntrust_forwarded = false\n\n\
                 [[routes]]\nport = 22\nupstream = \"localhost:22\"\nprotocol = \"tcp\"\nproxy_protocol = true\n\n\
                 [proxy]\nheader_read_timeout = \"30s\"\nupstream_connect_timeout = \"5s\"\n\
                 upstream_response_timeout = \"60s\"\nidle_timeout = \"90s\"\ndrain_timeout = \"30s\"\n\
                 max_header_bytes = 65536\nmax_connections = 4096\n\n\
                 [admin]\nlisten = \"127.0.0.1:9090\"\n\n[log]\nformat = \"json\"\nlevel = \"info,wg_core=debug\"\n"
            ),
        ),
        (
            "ipv6",
            format!(
                "[agent]\nprivate_key_env = \"K\"\nvirtual_ip = \"fd00::100\"\nsubnet = \"fd00::/64\"\n\n\
                 [[gateways]]\nid = \"v6\"\npublic_key = \"{gw}\"\nendpoint = \"[::1]:51820\"\nvirtual_ip = \"fd00::1\"\n\
                 \nroutes = []\n\n[admin]\nlisten = \"unix:/run/wg-agent.sock\"\n"
            ),
        ),
        (
            "key-file",
            "[agent]\nprivate_key_file = \"agent.key\"\nvirtual_ip = \"10.1.0.100\"\nsubnet = \"10.1.0.0/24\"\n"
                .to_owned(),
        ),
    ]
}

fn http_head() -> Vec<(&'static str, &'static str)> {
    vec![
        ("get", "GET / HTTP/1.1\r\nHost: app\r\n\r\n"),
        (
            "post-length",
            "POST /form HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\n\r\nhello",
        ),
        (
            "post-chunked",
            "POST /up HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        ("http10", "GET /old HTTP/1.0\r\n\r\n"),
        (
            "pipelined",
            "GET /a HTTP/1.1\r\nHost: app\r\n\r\nGET /b HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
        ),
        (
            "forwarded",
            "GET /f HTTP/1.1\r\nHost: app\r\nX-Forwarded-For: 192.0.2.1, 198.51.100.2\r\n\
             Forwarded: for=192.0.2.1;proto=https\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\n\r\n",
        ),
        (
            "upgrade",
            "GET /ws HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        ),
        (
            "expect",
            "PUT /x HTTP/1.1\r\nHost: app\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
        ),
        ("h2c-preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
    ]
}

// ----- packet builders (checksums included) ----------------------------------------------------

fn checksum(data: &[u8], start: u32) -> u16 {
    let mut sum = start;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn pseudo_sum(src: &[u8], dst: &[u8], proto: u8, len: usize) -> u32 {
    let mut sum = 0u32;
    for pair in src.chunks(2).chain(dst.chunks(2)) {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    sum + u32::from(proto) + len as u32
}

fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, payload: &[u8]) -> Vec<u8> {
    let total = 20 + payload.len();
    let mut p = vec![0u8; 20];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    p[8] = 64;
    p[9] = proto;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    fix_ipv4_checksum(&mut p);
    p.extend_from_slice(payload);
    p
}

fn fix_ipv4_checksum(p: &mut [u8]) {
    p[10..12].copy_from_slice(&[0, 0]);
    let sum = checksum(&p[..20], 0);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
}

fn ipv6(src: [u8; 16], dst: [u8; 16], next: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    p[6] = next;
    p[7] = 64;
    p[8..24].copy_from_slice(&src);
    p[24..40].copy_from_slice(&dst);
    p.extend_from_slice(payload);
    p
}

/// A TCP segment with MSS, window scale and SACK-permitted options.
fn tcp_segment(sport: u16, dport: u16, flags: u8, data: &[u8]) -> Vec<u8> {
    let mut t = vec![0u8; 32];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&0x0102_0304u32.to_be_bytes());
    if flags & 0x10 != 0 {
        t[8..12].copy_from_slice(&1u32.to_be_bytes());
    }
    t[12] = 8 << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&65_535u16.to_be_bytes());
    t[20..32].copy_from_slice(&[2, 4, 0x05, 0x64, 3, 3, 7, 4, 2, 1, 1, 0]);
    t.extend_from_slice(data);
    t
}

fn tcp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, flags: u8, data: &[u8]) -> Vec<u8> {
    let mut t = tcp_segment(sport, dport, flags, data);
    let sum = checksum(&t, pseudo_sum(&src, &dst, 6, t.len()));
    t[16..18].copy_from_slice(&sum.to_be_bytes());
    ipv4(src, dst, 6, &t)
}

fn tcp6(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut t = tcp_segment(sport, dport, flags, &[]);
    let sum = checksum(&t, pseudo_sum(&src, &dst, 6, t.len()));
    t[16..18].copy_from_slice(&sum.to_be_bytes());
    ipv6(src, dst, 6, &t)
}

fn udp_datagram(sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let mut u = vec![0u8; 8];
    u[0..2].copy_from_slice(&sport.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u[4..6].copy_from_slice(&((8 + data.len()) as u16).to_be_bytes());
    u.extend_from_slice(data);
    u
}

fn udp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let mut u = udp_datagram(sport, dport, data);
    let sum = checksum(&u, pseudo_sum(&src, &dst, 17, u.len()));
    u[6..8].copy_from_slice(&sum.to_be_bytes());
    ipv4(src, dst, 17, &u)
}

fn udp6(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let mut u = udp_datagram(sport, dport, data);
    let sum = checksum(&u, pseudo_sum(&src, &dst, 17, u.len()));
    u[6..8].copy_from_slice(&sum.to_be_bytes());
    ipv6(src, dst, 17, &u)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_checksum_verifies() {
        let p = udp4([10, 0, 0, 2], STACK4, 1, 53, b"abc");
        assert_eq!(checksum(&p[..20], 0), 0, "a valid header sums to zero");
    }

    #[test]
    fn every_target_has_seeds() {
        let seeds = all();
        for target in crate::fuzz::TARGETS {
            let n = seeds.iter().filter(|(t, _, _)| t == target).count();
            assert!(n >= 4, "{target} has {n} seeds");
        }
    }
}
