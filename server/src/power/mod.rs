//! Power control: getting a machine into netboot when a job is queued for it.
//!
//! This module owns the *policy*, in one place: what Kura does to a host's power for a queued
//! job ([`Power::kick`]) or when an operator asks ([`Power::act`]). The protocol modules beside
//! it only speak their protocol and never decide anything:
//!
//! - [`wol`]: the Wake-on-LAN magic packet (UDP broadcast).
//! - [`redfish`]: a Redfish BMC over HTTPS (boot override, reset, power state).
//! - [`ipmi`]: an IPMI BMC through `ipmitool -I lanplus` (boot device, chassis power).
//!
//! The policy for a queued capture or restore job, by the host's driver
//! (`catalogs::db::power`):
//!
//! | driver    | what [`Power::kick`] does                                                   |
//! |-----------|-----------------------------------------------------------------------------|
//! | `none`    | nothing: the job waits for the machine's next PXE boot                      |
//! | `wol`     | a magic packet to each of the host's MAC addresses                          |
//! | `redfish` | boot override PXE once, then `ForceRestart` if the machine is on, `On` if off |
//! | `ipmi`    | `chassis bootdev pxe`, then `power cycle` if on, `power on` if off           |
//!
//! A failing power action never fails the job: [`Power::kick_job`] writes a warn line into the
//! job's log and the job stays queued for the machine's next PXE boot. Every action is
//! audited (driver, action, outcome; never a password).
//!
//! Passwords are sealed with the engine's [`SecretKey`] (`DATA/secrets.key`) before they reach
//! the catalog and opened only here, just before use; they are passed to `ipmitool` through
//! its environment (`-E`), never on a command line.

pub mod ipmi;
pub mod redfish;
pub mod wol;

use kura_catalogs::db::{Catalog, CatalogError, LogLevel, PowerControl, PowerDriver};
use kura_catalogs::secrets::{Sealed, SecretError, SecretKey};
use std::sync::Arc;
use std::time::Duration;

/// The purpose sealed BMC passwords are bound to (`catalogs::secrets`).
pub const PASSWORD_PURPOSE: &str = "power.password";

/// How long one BMC request (HTTP request, one `ipmitool` run) may take.
pub const BMC_TIMEOUT: Duration = Duration::from_secs(20);

/// Why a power action failed.
#[derive(Debug, thiserror::Error)]
pub enum PowerError {
    /// The BMC (or the network) refused or did not answer: which one, and at which step.
    #[error("{driver} {target}: {step}: {message}")]
    Device { driver: PowerDriver, target: String, step: &'static str, message: String },
    /// The action makes no sense for this host's power control.
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Secret(#[from] SecretError),
}

/// A power action an operator can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Boot from the network once, now: override + reset (or power on), or a WoL packet.
    PxeReset,
    On,
    Off,
}

impl Action {
    pub const NAMES: &'static [&'static str] = &["pxe-reset", "on", "off"];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::PxeReset => "pxe-reset",
            Action::On => "on",
            Action::Off => "off",
        }
    }
}

impl std::str::FromStr for Action {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pxe-reset" => Ok(Action::PxeReset),
            "on" => Ok(Action::On),
            "off" => Ok(Action::Off),
            _ => Err(format!("unknown power action {s:?}; expected one of: {}", Action::NAMES.join(", "))),
        }
    }
}

/// A machine's power as a BMC reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerState {
    On,
    Off,
}

/// A power change a BMC is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reset {
    On,
    ForceOff,
    /// Off and on again (Redfish `ForceRestart`, IPMI `power cycle`).
    ForceRestart,
}

/// A BMC, as protocol operations only ([`redfish::Redfish`], [`ipmi::Ipmi`]).
pub trait Bmc {
    /// Makes the next boot (only) a network boot.
    fn set_pxe_once(&mut self) -> Result<(), PowerError>;
    fn power_state(&mut self) -> Result<PowerState, PowerError>;
    fn reset(&mut self, reset: Reset) -> Result<(), PowerError>;
}

/// The policy for a BMC: what `action` means in BMC operations. Returns what was done.
pub fn run_bmc(bmc: &mut dyn Bmc, action: Action) -> Result<String, PowerError> {
    match action {
        Action::PxeReset => {
            bmc.set_pxe_once()?;
            match bmc.power_state()? {
                PowerState::On => {
                    bmc.reset(Reset::ForceRestart)?;
                    Ok("network boot set for the next boot; the machine was on: restart requested".into())
                }
                PowerState::Off => {
                    bmc.reset(Reset::On)?;
                    Ok("network boot set for the next boot; the machine was off: power on requested".into())
                }
            }
        }
        Action::On => match bmc.power_state()? {
            PowerState::On => Ok("the machine is already on".into()),
            PowerState::Off => bmc.reset(Reset::On).map(|_| "power on requested".into()),
        },
        Action::Off => match bmc.power_state()? {
            PowerState::Off => Ok("the machine is already off".into()),
            PowerState::On => bmc.reset(Reset::ForceOff).map(|_| "power off requested".into()),
        },
    }
}

/// Power control for the engine: the catalog (settings), the key (passwords) and the policy.
pub struct Power {
    catalog: Arc<Catalog>,
    key: Arc<SecretKey>,
    /// Per-request BMC timeout ([`BMC_TIMEOUT`]).
    pub timeout: Duration,
}

impl Power {
    pub fn new(catalog: Arc<Catalog>, key: Arc<SecretKey>) -> Power {
        Power { catalog, key, timeout: BMC_TIMEOUT }
    }

    /// Seals a BMC password for the catalog.
    pub fn seal_password(&self, password: &str) -> Result<Sealed, SecretError> {
        self.key.seal(PASSWORD_PURPOSE, password.as_bytes())
    }

    /// What to do when a capture or restore job has been queued for `host` (see the module
    /// docs). Blocking (BMC round trips): call it from a blocking thread. Returns what was
    /// done, for the job's log.
    pub fn kick(&self, host: &str) -> Result<String, PowerError> {
        let control = self.catalog.get_power(host)?;
        match control.as_ref().map(|c| c.settings.driver).unwrap_or(PowerDriver::None) {
            PowerDriver::None => Ok("no power control: the job waits for the machine's next PXE boot".into()),
            _ => self.run(host, control.as_ref().expect("driver set"), Action::PxeReset),
        }
    }

    /// An operator's power action on `host`, audited. Blocking.
    pub fn act(&self, actor: &str, host: &str, action: Action) -> Result<String, PowerError> {
        let control = self.catalog.get_power(host)?;
        let result = match &control {
            Some(c) if c.settings.driver != PowerDriver::None => self.run(host, c, action),
            _ => Err(PowerError::Unsupported(format!(
                "host {host} has no power control: set one with `kura host power set {host} --driver ...`"
            ))),
        };
        let driver = control.map(|c| c.settings.driver.as_str()).unwrap_or("none");
        let detail = match &result {
            Ok(done) => serde_json::json!({"action": action.as_str(), "driver": driver, "ok": true, "done": done}),
            Err(e) => {
                serde_json::json!({"action": action.as_str(), "driver": driver, "ok": false, "error": e.to_string()})
            }
        };
        self.catalog.record_audit(actor, "power.action", host, detail)?;
        result
    }

    fn run(&self, host: &str, c: &PowerControl, action: Action) -> Result<String, PowerError> {
        let s = &c.settings;
        let password = || -> Result<String, PowerError> {
            let sealed = c.password.as_ref().ok_or_else(|| {
                PowerError::Unsupported(format!("host {host}: the {} power driver has no password set", s.driver))
            })?;
            let bytes = self.key.open(PASSWORD_PURPOSE, sealed)?;
            String::from_utf8(bytes).map_err(|_| PowerError::Unsupported("the stored password is not UTF-8".into()))
        };
        let need = |v: &Option<String>, what: &str| {
            v.clone()
                .ok_or_else(|| PowerError::Unsupported(format!("host {host}: no {what} for the {} driver", s.driver)))
        };
        match s.driver {
            PowerDriver::None => Ok("no power control".into()),
            PowerDriver::Wol => {
                if action == Action::Off {
                    return Err(PowerError::Unsupported(format!(
                        "host {host} is woken by Wake-on-LAN, which cannot power a machine off"
                    )));
                }
                let macs = self.catalog.get_host(host)?.macs;
                if macs.is_empty() {
                    return Err(PowerError::Unsupported(format!("host {host} has no MAC address to wake")));
                }
                let broadcast = match &s.broadcast {
                    Some(b) => b.parse().map_err(|_| PowerError::Unsupported(format!("bad broadcast address {b}")))?,
                    None => std::net::Ipv4Addr::BROADCAST,
                };
                for mac in &macs {
                    wol::send(mac, broadcast, s.interface.as_deref())?;
                }
                let via = s.interface.as_deref().map(|i| format!(" via {i}")).unwrap_or_default();
                Ok(format!("Wake-on-LAN magic packet sent to {} ({broadcast}:{}{via})", macs.join(", "), wol::PORT))
            }
            PowerDriver::Redfish => {
                let tls = if s.insecure {
                    redfish::Tls::Insecure
                } else if let Some(fp) = &s.tls_fingerprint {
                    redfish::Tls::Pinned(fp.clone())
                } else {
                    redfish::Tls::SystemRoots
                };
                let mut bmc = redfish::Redfish::new(
                    &need(&s.address, "address")?,
                    &need(&s.username, "username")?,
                    &password()?,
                    s.system_id.clone(),
                    tls,
                    self.timeout,
                )?;
                run_bmc(&mut bmc, action)
            }
            PowerDriver::Ipmi => {
                let mut bmc = ipmi::Ipmi::new(
                    &need(&s.address, "address")?,
                    &need(&s.username, "username")?,
                    &password()?,
                    s.cipher_suite,
                    self.timeout,
                );
                run_bmc(&mut bmc, action)
            }
        }
    }

    /// [`Power::kick`] for job `job_id`, after the job was committed: the outcome goes into
    /// the job's log (info, or warn on failure) and the audit log. A failure leaves the job
    /// queued; it never fails the job. Blocking.
    pub fn kick_job(&self, job_id: i64) {
        let job = match self.catalog.get_job(job_id) {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!("power: job {job_id}: {e}");
                return;
            }
        };
        let (level, line, ok) = match self.kick(&job.host) {
            Ok(done) => (LogLevel::Info, format!("power: {done}"), true),
            Err(e) => (
                LogLevel::Warn,
                format!("power: {e}; the job stays queued and runs at the machine's next PXE boot"),
                false,
            ),
        };
        if !ok {
            tracing::warn!("job {job_id} (host {}): {line}", job.host);
        }
        if let Err(e) = self.catalog.append_job_log(job_id, level, &line) {
            tracing::warn!("power: job {job_id}: cannot write the job log: {e}");
        }
        let detail = serde_json::json!({"job": job_id, "ok": ok, "outcome": line});
        if let Err(e) = self.catalog.record_audit("kura-power", "power.kick", &job.host, detail) {
            tracing::warn!("power: job {job_id}: cannot write the audit log: {e}");
        }
    }

    /// Runs [`Power::kick_job`] on the blocking pool of the current tokio runtime, without
    /// waiting (for async callers: the job API, the scheduler).
    pub fn spawn_kick_job(self: &Arc<Self>, job_id: i64) {
        let power = self.clone();
        tokio::task::spawn_blocking(move || power.kick_job(job_id));
    }
}

/// Capture jobs the scheduler releases are kicked like those queued through the API, each on
/// its own thread (a BMC can take its whole timeout; the scheduler's tick must not wait).
pub struct KickReleased(pub Arc<Power>);

impl crate::scheduler::ReleaseHook for KickReleased {
    fn job_released(&self, released: &crate::scheduler::JobReleased) {
        let (power, job) = (self.0.clone(), released.job);
        std::thread::spawn(move || power.kick_job(job));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BMC that records what it was asked.
    struct Fake {
        state: PowerState,
        calls: Vec<String>,
        fail_boot: bool,
    }

    impl Bmc for Fake {
        fn set_pxe_once(&mut self) -> Result<(), PowerError> {
            self.calls.push("pxe".into());
            if self.fail_boot {
                return Err(PowerError::Device {
                    driver: PowerDriver::Ipmi,
                    target: "BMC fake".into(),
                    step: "setting the boot device",
                    message: "refused".into(),
                });
            }
            Ok(())
        }
        fn power_state(&mut self) -> Result<PowerState, PowerError> {
            self.calls.push("state".into());
            Ok(self.state)
        }
        fn reset(&mut self, reset: Reset) -> Result<(), PowerError> {
            self.calls.push(format!("{reset:?}"));
            Ok(())
        }
    }

    fn fake(state: PowerState) -> Fake {
        Fake { state, calls: Vec::new(), fail_boot: false }
    }

    #[test]
    fn pxe_reset_restarts_a_running_machine_and_powers_on_a_stopped_one() {
        let mut on = fake(PowerState::On);
        run_bmc(&mut on, Action::PxeReset).unwrap();
        assert_eq!(on.calls, ["pxe", "state", "ForceRestart"]);
        let mut off = fake(PowerState::Off);
        run_bmc(&mut off, Action::PxeReset).unwrap();
        assert_eq!(off.calls, ["pxe", "state", "On"]);
    }

    #[test]
    fn no_reset_when_the_boot_override_fails() {
        let mut bmc = Fake { fail_boot: true, ..fake(PowerState::On) };
        let e = run_bmc(&mut bmc, Action::PxeReset).unwrap_err();
        assert_eq!(bmc.calls, ["pxe"]);
        assert_eq!(e.to_string(), "ipmi BMC fake: setting the boot device: refused");
    }

    #[test]
    fn on_and_off_only_change_what_needs_changing() {
        let mut bmc = fake(PowerState::On);
        run_bmc(&mut bmc, Action::On).unwrap();
        run_bmc(&mut bmc, Action::Off).unwrap();
        assert_eq!(bmc.calls, ["state", "state", "ForceOff"]);
        assert_eq!("pxe-reset".parse::<Action>(), Ok(Action::PxeReset));
        assert!("reboot".parse::<Action>().unwrap_err().contains("pxe-reset, on, off"));
    }
}
