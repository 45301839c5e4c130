//! The agent's kernel command line: how the engine's boot script tells the netbooted agent what
//! to do. One writer ([`AgentArgs::render`], used by the boot scripts) and one parser
//! ([`AgentArgs::parse`], used by the agent on `/proc/cmdline`), round-trip tested.
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
//! Values cannot contain spaces; quoting (`"a b"`) is accepted as the kernel does. Unknown
//! `kura.` keys are errors (a typo must not be silently ignored); other words are the kernel's.

use crate::mac::MacAddr;

/// What to do when the agent is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finally {
    PowerOff,
    Reboot,
    /// Stay up (sleeping), e.g. to read the console.
    Wait,
}

impl Finally {
    pub fn as_str(self) -> &'static str {
        match self {
            Finally::PowerOff => "poweroff",
            Finally::Reboot => "reboot",
            Finally::Wait => "wait",
        }
    }
}

impl std::str::FromStr for Finally {
    type Err = CmdlineError;
    fn from_str(s: &str) -> Result<Finally, CmdlineError> {
        Ok(match s {
            "poweroff" | "off" | "halt" => Finally::PowerOff,
            "reboot" => Finally::Reboot,
            "wait" => Finally::Wait,
            _ => return Err(CmdlineError(format!("{s:?} is not poweroff, reboot or wait"))),
        })
    }
}

/// A command line the agent cannot work with; the message names the parameter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CmdlineError(pub String);

/// Default of `kura.timeout`: generous for one chunk on a busy LAN, short enough that a cut
/// network fails the job within a few minutes.
pub const DEFAULT_TIMEOUT_SECS: u64 = 60;
/// Default of `kura.error_delay`.
pub const DEFAULT_ERROR_DELAY_SECS: u64 = 60;

/// The `kura.*` parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentArgs {
    /// `https://ip:port` or `http://ip:port`, no trailing slash.
    pub server: String,
    pub job: i64,
    pub token: String,
    pub mac: MacAddr,
    pub fingerprint: Option<String>,
    pub after: Option<Finally>,
    pub on_error: Finally,
    pub error_delay: u64,
    /// Per-request timeout towards the engine, seconds (> 0).
    pub timeout: u64,
}

impl AgentArgs {
    /// The arguments for a job with every option at its default.
    pub fn new(server: &str, job: i64, token: &str, mac: MacAddr, fingerprint: Option<&str>) -> AgentArgs {
        AgentArgs {
            server: server.trim_end_matches('/').to_string(),
            job,
            token: token.to_string(),
            mac,
            fingerprint: fingerprint.map(str::to_string),
            after: None,
            on_error: Finally::PowerOff,
            error_delay: DEFAULT_ERROR_DELAY_SECS,
            timeout: DEFAULT_TIMEOUT_SECS,
        }
    }

    /// The `kura.*` words, space-separated; options at their default are left out.
    pub fn render(&self) -> String {
        let mut w = vec![
            format!("kura.server={}", self.server),
            format!("kura.token={}", self.token),
            format!("kura.job={}", self.job),
            format!("kura.mac={}", self.mac),
        ];
        if let Some(fp) = &self.fingerprint {
            w.push(format!("kura.fingerprint={fp}"));
        }
        if let Some(a) = self.after {
            w.push(format!("kura.after={}", a.as_str()));
        }
        if self.on_error != Finally::PowerOff {
            w.push(format!("kura.on_error={}", self.on_error.as_str()));
        }
        if self.error_delay != DEFAULT_ERROR_DELAY_SECS {
            w.push(format!("kura.error_delay={}", self.error_delay));
        }
        if self.timeout != DEFAULT_TIMEOUT_SECS {
            w.push(format!("kura.timeout={}", self.timeout));
        }
        w.join(" ")
    }

    /// Parses the `kura.*` parameters out of a whole kernel command line.
    pub fn parse(cmdline: &str) -> Result<AgentArgs, CmdlineError> {
        let err = |m: String| CmdlineError(m);
        let (mut server, mut job, mut token, mut mac, mut fingerprint) = (None, None, None, None, None);
        let (mut after, mut on_error, mut error_delay) = (None, Finally::PowerOff, DEFAULT_ERROR_DELAY_SECS);
        let mut timeout = DEFAULT_TIMEOUT_SECS;
        for w in words(cmdline) {
            let Some(rest) = w.strip_prefix("kura.") else { continue };
            let Some((k, v)) = rest.split_once('=') else {
                return Err(err(format!("kernel parameter {w:?} has no value")));
            };
            match k {
                "server" => server = Some(v.trim_end_matches('/').to_string()),
                "job" => job = Some(v.parse::<i64>().map_err(|_| err(format!("kura.job={v:?} is not a job id")))?),
                "token" => token = Some(v.to_string()),
                "mac" => mac = Some(v.parse::<MacAddr>().map_err(|e| err(format!("kura.mac: {e}")))?),
                "fingerprint" => fingerprint = Some(v.to_string()),
                "after" => after = Some(v.parse::<Finally>().map_err(|e| err(format!("kura.after: {e}")))?),
                "on_error" => on_error = v.parse::<Finally>().map_err(|e| err(format!("kura.on_error: {e}")))?,
                "error_delay" => {
                    error_delay =
                        v.parse().map_err(|_| err(format!("kura.error_delay={v:?} is not a number of seconds")))?
                }
                "timeout" => {
                    timeout = v
                        .parse()
                        .ok()
                        .filter(|t| *t > 0)
                        .ok_or_else(|| err(format!("kura.timeout={v:?} is not a positive number of seconds")))?
                }
                _ => return Err(err(format!("unknown kernel parameter kura.{k}"))),
            }
        }
        let missing = |what: &str| err(format!("the kernel command line lacks kura.{what}="));
        let server = server.ok_or_else(|| missing("server"))?;
        if !server.starts_with("https://") && !server.starts_with("http://") {
            return Err(err(format!("kura.server={server:?} must start with https:// or http://")));
        }
        if server.starts_with("https://") && fingerprint.is_none() {
            return Err(err("kura.server is https but kura.fingerprint= is missing".into()));
        }
        Ok(AgentArgs {
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
}

/// Splits a command line into words the way the kernel does (double quotes group).
pub fn words(cmdline: &str) -> Vec<String> {
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

/// Whether `v` can be a command line value as [`AgentArgs::render`] writes it: printable ASCII
/// without spaces, quotes or `$` (iPXE expands `${…}` in script lines).
pub fn is_plain_value(v: &str) -> bool {
    !v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'$')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FP: &str = "ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89";

    fn mac() -> MacAddr {
        "52:54:00:ab:cd:ef".parse().unwrap()
    }

    #[test]
    fn parses_a_real_command_line() {
        let line = format!(
            "BOOT_IMAGE=vmlinuz console=ttyS0,115200 quiet kura.server=https://10.0.0.1:8443/ kura.job=42 \
             kura.token=kura_abc123 kura.mac=52-54-00-AB-CD-EF kura.fingerprint={FP} initrd=initrd.img\n"
        );
        let p = AgentArgs::parse(&line).unwrap();
        assert_eq!(p, AgentArgs::new("https://10.0.0.1:8443", 42, "kura_abc123", mac(), Some(FP)));
    }

    #[test]
    fn options_and_quotes() {
        let p = AgentArgs::parse(
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
        assert!(AgentArgs::parse(base).is_ok());
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
            let e = AgentArgs::parse(line).unwrap_err().to_string();
            assert!(e.contains(needle), "{line}: {e}");
        }
    }

    fn finally() -> impl Strategy<Value = Finally> {
        prop_oneof![Just(Finally::PowerOff), Just(Finally::Reboot), Just(Finally::Wait)]
    }

    proptest! {
        /// What the boot script writes, the agent reads back, whatever the kernel's own words
        /// around it.
        #[test]
        fn render_then_parse_is_identity(
            https in any::<bool>(), port in 1u16.., job in 0i64.., token in "kura_[a-zA-Z0-9]{1,40}",
            m in any::<[u8; 6]>(), after in proptest::option::of(finally()), on_error in finally(),
            error_delay in 0u64..100_000, timeout in 1u64..100_000, extra in "[a-z=,0-9]{0,20}",
        ) {
            let server = format!("{}://10.1.2.3:{port}", if https { "https" } else { "http" });
            let a = AgentArgs {
                fingerprint: https.then(|| FP.to_string()),
                after, on_error, error_delay, timeout,
                ..AgentArgs::new(&server, job, &token, MacAddr(m), None)
            };
            let line = format!("BOOT_IMAGE=x initrd=initrd.img {} {extra}", a.render());
            prop_assert!(a.render().split(' ').all(is_plain_value));
            prop_assert_eq!(AgentArgs::parse(&line).unwrap(), a);
        }
    }
}
