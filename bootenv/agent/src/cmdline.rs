//! The agent's view of its kernel command line. The `kura.*` parameters themselves are the
//! protocol's ([`kura_protocol::cmdline::AgentArgs`], one writer in the engine's boot scripts,
//! one parser); this module adds what only the agent needs to know about them.

pub use kura_protocol::cmdline::{AgentArgs, Finally};

/// The host part of a URL, if it is not an IP address (which the agent cannot resolve).
pub fn hostname_needing_dns(url: &str) -> Option<String> {
    let rest = url.split_once("://").map(|x| x.1).unwrap_or(url);
    let hostport = rest.split('/').next().unwrap_or(rest);
    let host = if let Some(h) = hostport.strip_prefix('[') {
        h.split(']').next().unwrap_or(h)
    } else {
        hostport.rsplit_once(':').map(|x| x.0).unwrap_or(hostport)
    };
    (host.parse::<std::net::IpAddr>().is_err()).then(|| host.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names_are_flagged() {
        assert_eq!(hostname_needing_dns("https://10.0.0.1:8443"), None);
        assert_eq!(hostname_needing_dns("http://[fe80::1]:80/x"), None);
        assert_eq!(hostname_needing_dns("https://kura.lan:8443"), Some("kura.lan".into()));
    }
}
