//! The agent's parameters, from the kernel command line (`/proc/cmdline`):
//!
//! ```text
//! kura.server=https://10.0.0.1:8443   the engine (an IP address: the agent has no DNS resolver)
//! kura.job=42                          the job to run
//! kura.token=kura_...                  the job's one-time agent token
//! kura.mac=52:54:00:12:34:56           the NIC to use, and the MAC sent as X-Kura-Mac
//! kura.fingerprint=ab:cd:...           the engine's certificate (required for https)
//! kura.after=poweroff|reboot|wait      override what happens after success
//!                                      (default: power off after a capture, reboot after a restore)
//! kura.on_error=poweroff|reboot|wait   what happens after a failure (default: poweroff)
//! kura.error_delay=60                  seconds the error stays on the console before that
//! kura.timeout=60                      seconds one request to the engine may take before it
//!                                      is retried (a few times); then the job fails
//! ```
//!
//! Values cannot contain spaces; quoting (`"a b"`) is accepted as the kernel does.

use anyhow::{bail, Context, Result};

/// What to do when the agent is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finally {
    PowerOff,
    Reboot,
    /// Stay up (sleeping), e.g. to read the console.
    Wait,
}

impl Finally {
    pub fn parse(s: &str) -> Result<Finally> {
        Ok(match s {
            "poweroff" | "off" | "halt" => Finally::PowerOff,
            "reboot" => Finally::Reboot,
            "wait" => Finally::Wait,
            _ => bail!("{s:?} is not poweroff, reboot or wait"),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    pub server: String,
    pub job: i64,
    pub token: String,
    /// Lowercase, colon-separated.
    pub mac: String,
    pub fingerprint: Option<String>,
    pub after: Option<Finally>,
    pub on_error: Finally,
    pub error_delay: u64,
    /// Per-request timeout towards the engine, seconds.
    pub timeout: u64,
}

/// Default of `kura.timeout`: generous for one chunk on a busy LAN, short enough that a cut
/// network fails the job within a few minutes.
pub const DEFAULT_TIMEOUT_SECS: u64 = 60;

/// Splits a command line into words the way the kernel does (double quotes group).
fn words(cmdline: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

/// Normalises a MAC address (`52-54-00-AB-CD-EF` → `52:54:00:ab:cd:ef`) and returns its bytes.
pub fn parse_mac(s: &str) -> Result<(String, [u8; 6])> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    let mut b = [0u8; 6];
    if parts.len() != 6 {
        bail!("{s:?} is not a MAC address");
    }
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            bail!("{s:?} is not a MAC address");
        }
        b[i] = u8::from_str_radix(p, 16).with_context(|| format!("{s:?} is not a MAC address"))?;
    }
    let text = b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(":");
    Ok((text, b))
}

/// Parses the `kura.*` parameters out of a kernel command line. Unknown `kura.` keys are
/// errors (a typo should not be silently ignored); other parameters are the kernel's.
pub fn parse(cmdline: &str) -> Result<Params> {
    let (mut server, mut job, mut token, mut mac, mut fingerprint) = (None, None, None, None, None);
    let (mut after, mut on_error, mut error_delay) = (None, Finally::PowerOff, 60);
    let mut timeout = DEFAULT_TIMEOUT_SECS;
    for w in words(cmdline) {
        let Some(rest) = w.strip_prefix("kura.") else { continue };
        let Some((k, v)) = rest.split_once('=') else { bail!("kernel parameter {w:?} has no value") };
        match k {
            "server" => server = Some(v.trim_end_matches('/').to_string()),
            "job" => job = Some(v.parse::<i64>().with_context(|| format!("kura.job={v:?} is not a job id"))?),
            "token" => token = Some(v.to_string()),
            "mac" => mac = Some(parse_mac(v)?.0),
            "fingerprint" => fingerprint = Some(v.to_string()),
            "after" => after = Some(Finally::parse(v).context("kura.after")?),
            "on_error" => on_error = Finally::parse(v).context("kura.on_error")?,
            "error_delay" => {
                error_delay = v.parse().with_context(|| format!("kura.error_delay={v:?} is not a number of seconds"))?
            }
            "timeout" => {
                timeout = v
                    .parse()
                    .ok()
                    .filter(|t| *t > 0)
                    .with_context(|| format!("kura.timeout={v:?} is not a positive number of seconds"))?
            }
            _ => bail!("unknown kernel parameter kura.{k}"),
        }
    }
    let missing = |what: &str| anyhow::anyhow!("the kernel command line lacks kura.{what}=");
    let server = server.ok_or_else(|| missing("server"))?;
    if !server.starts_with("https://") && !server.starts_with("http://") {
        bail!("kura.server={server:?} must start with https:// or http://");
    }
    if server.starts_with("https://") && fingerprint.is_none() {
        bail!("kura.server is https but kura.fingerprint= is missing");
    }
    Ok(Params {
        server,
        job: job.ok_or_else(|| missing("job"))?,
        token: token.ok_or_else(|| missing("token"))?,
        mac: mac.ok_or_else(|| missing("mac"))?,
        fingerprint,
        after,
        on_error,
        error_delay,
        timeout,
    })
}

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

    const FP: &str = "ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89";

    #[test]
    fn parses_a_real_command_line() {
        let line = format!(
            "BOOT_IMAGE=vmlinuz console=ttyS0,115200 quiet kura.server=https://10.0.0.1:8443/ kura.job=42 \
             kura.token=kura_abc123 kura.mac=52-54-00-AB-CD-EF kura.fingerprint={FP} initrd=initrd.img\n"
        );
        let p = parse(&line).unwrap();
        assert_eq!(
            p,
            Params {
                server: "https://10.0.0.1:8443".into(),
                job: 42,
                token: "kura_abc123".into(),
                mac: "52:54:00:ab:cd:ef".into(),
                fingerprint: Some(FP.into()),
                after: None,
                on_error: Finally::PowerOff,
                error_delay: 60,
                timeout: DEFAULT_TIMEOUT_SECS,
            }
        );
    }

    #[test]
    fn options_and_quotes() {
        let p = parse(
            "kura.server=http://10.0.2.2:8080 kura.job=7 kura.token=\"kura_x\" kura.mac=52:54:00:00:00:01 \
             kura.after=wait kura.on_error=reboot kura.error_delay=0 kura.timeout=15",
        )
        .unwrap();
        assert_eq!(p.token, "kura_x");
        assert_eq!(p.after, Some(Finally::Wait));
        assert_eq!(p.on_error, Finally::Reboot);
        assert_eq!(p.error_delay, 0);
        assert_eq!(p.timeout, 15);
        assert_eq!(words("a \"b c\" d"), ["a", "b c", "d"]);
    }

    #[test]
    fn errors_name_the_problem() {
        let base = "kura.server=http://10.0.2.2:8080 kura.job=7 kura.token=t kura.mac=52:54:00:00:00:01";
        assert!(parse(base).is_ok());
        for (line, needle) in [
            ("kura.job=7 kura.token=t kura.mac=52:54:00:00:00:01", "kura.server"),
            ("kura.server=http://x kura.token=t kura.mac=52:54:00:00:00:01", "kura.job"),
            ("kura.server=http://x kura.job=1 kura.mac=52:54:00:00:00:01", "kura.token"),
            ("kura.server=http://x kura.job=1 kura.token=t", "kura.mac"),
            ("kura.server=https://x kura.job=1 kura.token=t kura.mac=52:54:00:00:00:01", "fingerprint"),
            ("kura.server=ftp://x kura.job=1 kura.token=t kura.mac=52:54:00:00:00:01", "https://"),
            (&format!("{base} kura.jobb=1"), "kura.jobb"),
            (&format!("{base} kura.job=x"), "not a job id"),
            (&format!("{base} kura.after=explode"), "kura.after"),
            (&format!("{base} kura.timeout=0"), "kura.timeout"),
            ("kura.server=http://x kura.job=1 kura.token=t kura.mac=52:54:00:00:01", "MAC"),
        ] {
            let e = format!("{:#}", parse(line).unwrap_err());
            assert!(e.contains(needle), "{line}: {e}");
        }
    }

    #[test]
    fn dns_names_are_flagged() {
        assert_eq!(hostname_needing_dns("https://10.0.0.1:8443"), None);
        assert_eq!(hostname_needing_dns("http://[fe80::1]:80/x"), None);
        assert_eq!(hostname_needing_dns("https://kura.lan:8443"), Some("kura.lan".into()));
    }
}
