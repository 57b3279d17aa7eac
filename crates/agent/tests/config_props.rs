//! Property tests of the config parsers: no input panics, values round-trip, and no error
//! message ever contains a secret.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use agent::config::{Config, Endpoint, Host, format_duration, parse_duration};
use proptest::prelude::*;

fn no_env(_: &str) -> Option<String> {
    None
}

const GATEWAY_PUBLIC: &str = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";
const AGENT_PRIVATE: &str = "YNqHbfBQKaGvzefSSM9X5OfN2kc/Ha8+Y9y8IGNpf1c=";

fn valid_config() -> String {
    format!(
        "[agent]\nprivate_key = \"{AGENT_PRIVATE}\"\nvirtual_ip = \"10.1.0.100\"\nsubnet = \"10.1.0.0/24\"\n\n\
         [[gateways]]\nid = \"gw1\"\npublic_key = \"{GATEWAY_PUBLIC}\"\nendpoint = \"gw1.example.net:51820\"\nvirtual_ip = \"10.1.0.1\"\n\n\
         [[routes]]\nport = 80\nupstream = \"127.0.0.1:8080\"\n\n[proxy]\nidle_timeout = \"90s\"\n\n[admin]\nlisten = \"127.0.0.1:9090\"\n"
    )
}

fn parse(text: &str) -> Result<Config, agent::config::ConfigError> {
    Config::from_toml_with_env(text, Path::new("agent.toml"), &no_env)
}

#[test]
fn the_base_config_is_valid() {
    parse(&valid_config()).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn duration_parser_never_panics(text in "\\PC{0,24}") {
        let _ = parse_duration(&text);
    }

    #[test]
    fn durations_round_trip(h in 0u64..1000, m in 0u64..60, s in 0u64..60, ms in 0u64..1000) {
        let d = Duration::from_secs(h * 3600 + m * 60 + s) + Duration::from_millis(ms);
        prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
    }

    #[test]
    fn endpoint_parser_never_panics(text in "\\PC{0,40}") {
        let _ = text.parse::<Endpoint>();
    }

    #[test]
    fn ip_endpoints_round_trip(addr in any::<SocketAddr>()) {
        prop_assume!(addr.port() != 0);
        let addr = SocketAddr::new(addr.ip(), addr.port());
        let e: Endpoint = addr.to_string().parse().unwrap();
        prop_assert_eq!(e.socket_addr(), Some(addr));
        prop_assert_eq!(e.to_string().parse::<Endpoint>().unwrap(), e);
    }

    #[test]
    fn dns_endpoints_round_trip(name in "[a-z][a-z0-9-]{0,10}[a-z0-9](\\.[a-z][a-z0-9]{0,10}){0,3}", port in 1u16..) {
        let e: Endpoint = format!("{name}:{port}").parse().unwrap();
        prop_assert_eq!(&e.host, &Host::Name(name.clone()));
        prop_assert_eq!(e.to_string(), format!("{name}:{port}"));
    }

    #[test]
    fn config_parser_never_panics(text in "\\PC{0,400}") {
        let _ = parse(&text);
    }

    #[test]
    fn mutated_configs_never_panic(position in 0usize..1000, insert in "\\PC{0,8}", cut in 0usize..8) {
        let mut text = valid_config();
        let mut at = position % text.len();
        while !text.is_char_boundary(at) { at -= 1; }
        let mut end = (at + cut).min(text.len());
        while !text.is_char_boundary(end) { end -= 1; }
        text.replace_range(at..end, &insert);
        let _ = parse(&text);
    }

    #[test]
    fn bad_private_keys_are_never_echoed(secret in "[A-Za-z0-9+/]{12,60}={0,2}") {
        let text = valid_config().replace(AGENT_PRIVATE, &secret);
        if let Err(e) = parse(&text) {
            let message = e.to_string();
            prop_assert!(!message.contains(&secret), "{}", message);
            prop_assert!(message.contains("agent.private_key"), "{}", message);
        }
    }

    #[test]
    fn bad_private_keys_of_the_wrong_type_are_never_echoed(secret in "[1-9][0-9]{11,17}") {
        let text = valid_config().replace(&format!("\"{AGENT_PRIVATE}\""), &secret);
        let message = parse(&text).unwrap_err().to_string();
        prop_assert!(!message.contains(&secret), "{}", message);
        prop_assert!(message.contains("agent.private_key"), "{}", message);
    }

    #[test]
    fn bad_preshared_keys_are_never_echoed(secret in "[A-Za-z0-9+/]{12,60}={0,2}") {
        let text = valid_config().replace("virtual_ip = \"10.1.0.1\"\n", &format!("virtual_ip = \"10.1.0.1\"\npreshared_key = \"{secret}\"\n"));
        if let Err(e) = parse(&text) {
            let message = e.to_string();
            prop_assert!(!message.contains(&secret), "{}", message);
            prop_assert!(message.contains("gateways[0].preshared_key"), "{}", message);
        }
    }
}
