//! IPMI over LAN (IPMI 2.0 `lanplus`), through `ipmitool`. Protocol only: which commands to
//! send when is decided by [`super::run_bmc`].
//!
//! Every call runs `ipmitool -I lanplus -H HOST [-p PORT] -U USER -E -N SECS -R RETRIES [-C SUITE] ...`:
//! the password goes through the `IPMI_PASSWORD` environment variable (`-E`), never on the
//! command line (where `ps` would show it). Each run is killed after the timeout.
//!
//! | operation                | command                   |
//! |--------------------------|---------------------------|
//! | [`Bmc::set_pxe_once`]    | `chassis bootdev pxe`     |
//! | [`Bmc::power_state`]     | `chassis power status`    |
//! | [`Bmc::reset`]           | `chassis power on / off / cycle` |

use super::{Bmc, PowerError, PowerState, Reset};
use kura_catalogs::db::PowerDriver;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// An IPMI BMC at `HOST` or `HOST:PORT` (`[v6addr]:PORT`).
pub struct Ipmi {
    host: String,
    port: Option<u16>,
    user: String,
    password: String,
    cipher_suite: Option<u8>,
    timeout: Duration,
}

/// Splits `HOST[:PORT]`; an IPv6 address with a port is written `[addr]:port`.
pub fn split_address(address: &str) -> (String, Option<u16>) {
    if let Some(rest) = address.strip_prefix('[') {
        if let Some((h, p)) = rest.split_once("]:") {
            return (h.to_string(), p.parse().ok());
        }
        return (rest.trim_end_matches(']').to_string(), None);
    }
    match address.split_once(':') {
        Some((h, p)) if !p.contains(':') => (h.to_string(), p.parse().ok()),
        _ => (address.to_string(), None),
    }
}

impl Ipmi {
    /// `cipher_suite`: the RMCP+ cipher suite (`-C`); `None` lets ipmitool negotiate (which
    /// costs seconds with a BMC that does not answer "Get Channel Cipher Suites").
    pub fn new(address: &str, user: &str, password: &str, cipher_suite: Option<u8>, timeout: Duration) -> Ipmi {
        let (host, port) = split_address(address);
        Ipmi { host, port, user: user.to_string(), password: password.to_string(), cipher_suite, timeout }
    }

    fn target(&self) -> String {
        match self.port {
            Some(p) => format!("BMC {}:{p}", self.host),
            None => format!("BMC {}", self.host),
        }
    }

    /// The arguments of one run (no password among them).
    pub fn args(&self, command: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = vec!["-I".into(), "lanplus".into(), "-H".into(), self.host.clone()];
        if let Some(p) = self.port {
            a.extend(["-p".into(), p.to_string()]);
        }
        // Each attempt waits up to a third of the timeout; two retries.
        let per_try = (self.timeout.as_secs() / 3).max(1);
        a.extend(["-U".into(), self.user.clone(), "-E".into(), "-N".into(), per_try.to_string()]);
        a.extend(["-R".into(), "2".into()]);
        if let Some(c) = self.cipher_suite {
            a.extend(["-C".into(), c.to_string()]);
        }
        a.extend(command.iter().map(|s| s.to_string()));
        a
    }

    fn run(&self, step: &'static str, command: &[&str]) -> Result<String, PowerError> {
        let err =
            |message: String| PowerError::Device { driver: PowerDriver::Ipmi, target: self.target(), step, message };
        let mut child = Command::new("ipmitool")
            .args(self.args(command))
            .env("IPMI_PASSWORD", &self.password)
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                err(if e.kind() == std::io::ErrorKind::NotFound {
                    "ipmitool is not installed on the engine (apt-get install ipmitool)".to_string()
                } else {
                    format!("cannot run ipmitool: {e}")
                })
            })?;
        let (mut out, mut errs) = (child.stdout.take().expect("piped"), child.stderr.take().expect("piped"));
        let out_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = errs.read_to_string(&mut s);
            s
        });
        // ipmitool's own retries fit in the timeout; this is the backstop.
        let limit = self.timeout + Duration::from_secs(5);
        let t0 = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if t0.elapsed() > limit => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(err(format!("no answer within {} s", limit.as_secs())));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(err(format!("waiting for ipmitool: {e}"))),
            }
        };
        let stdout = out_reader.join().unwrap_or_default();
        let stderr = err_reader.join().unwrap_or_default();
        if !status.success() {
            // ipmitool warns about cipher suite discovery on some BMCs; the last lines say why
            // it failed.
            let why: Vec<&str> = stderr.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
            let why = why.iter().rev().take(2).rev().copied().collect::<Vec<_>>().join("; ");
            return Err(err(format!("ipmitool failed ({status}): {why}")));
        }
        Ok(stdout)
    }
}

impl Bmc for Ipmi {
    fn set_pxe_once(&mut self) -> Result<(), PowerError> {
        self.run("setting the boot device to PXE", &["chassis", "bootdev", "pxe"]).map(|_| ())
    }

    fn power_state(&mut self) -> Result<PowerState, PowerError> {
        let out = self.run("reading the power state", &["chassis", "power", "status"])?;
        let out = out.to_ascii_lowercase();
        if out.contains("power is on") {
            Ok(PowerState::On)
        } else if out.contains("power is off") {
            Ok(PowerState::Off)
        } else {
            Err(PowerError::Device {
                driver: PowerDriver::Ipmi,
                target: self.target(),
                step: "reading the power state",
                message: format!("unexpected answer {:?}", out.trim()),
            })
        }
    }

    fn reset(&mut self, reset: Reset) -> Result<(), PowerError> {
        let (step, word) = match reset {
            Reset::On => ("powering on", "on"),
            Reset::ForceOff => ("powering off", "off"),
            Reset::ForceRestart => ("power cycling", "cycle"),
        };
        self.run(step, &["chassis", "power", word]).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_never_an_argument() {
        let i = Ipmi::new("10.0.0.9:6230", "admin", "s3cret-pw", Some(3), Duration::from_secs(9));
        let args = i.args(&["chassis", "power", "status"]);
        assert!(!args.iter().any(|a| a.contains("s3cret")), "{args:?}");
        assert_eq!(args.join(" "), "-I lanplus -H 10.0.0.9 -p 6230 -U admin -E -N 3 -R 2 -C 3 chassis power status");
    }

    #[test]
    fn addresses_with_and_without_ports() {
        assert_eq!(split_address("bmc1"), ("bmc1".into(), None));
        assert_eq!(split_address("bmc1:623"), ("bmc1".into(), Some(623)));
        assert_eq!(split_address("[fd00::9]:6230"), ("fd00::9".into(), Some(6230)));
        assert_eq!(split_address("fd00::9"), ("fd00::9".into(), None));
    }
}
