//! Redfish (DMTF DSP0266) over HTTP(S): the few ComputerSystem operations power control needs.
//! Protocol only: which operations to run when is decided by [`super::run_bmc`].
//!
//! | operation             | request                                                              |
//! |-----------------------|----------------------------------------------------------------------|
//! | find the system       | `GET /redfish/v1/Systems` → its only member (or the configured id)   |
//! | [`Bmc::set_pxe_once`] | `PATCH {system}` `{"Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once"}}` |
//! | [`Bmc::power_state`]  | `GET {system}` → `PowerState`                                        |
//! | [`Bmc::reset`]        | `POST {system}/Actions/ComputerSystem.Reset` `{"ResetType": "On" \| "ForceOff" \| "ForceRestart"}` (the target the system advertises, if any) |
//!
//! Requests use HTTP basic authentication and time out ([`super::BMC_TIMEOUT`]). Certificates
//! are checked against the system's CA bundle unless the host's settings say otherwise:
//! `insecure` accepts any certificate (a BMC's self-signed one), a pinned SHA-256 fingerprint
//! accepts exactly one.

use super::{Bmc, PowerError, PowerState, Reset};
use kura_catalogs::db::PowerDriver;
use reqwest::blocking::{Client, RequestBuilder, Response};
use serde_json::{json, Value};
use std::time::Duration;

/// The system CA bundle (Debian's ca-certificates).
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// How the BMC's certificate is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tls {
    /// Against the system's CA bundle.
    SystemRoots,
    /// Any certificate (self-signed BMCs, when configured so).
    Insecure,
    /// Exactly the certificate with this SHA-256 fingerprint.
    Pinned(String),
}

pub struct Redfish {
    http: Client,
    base: String,
    user: String,
    password: String,
    system_id: Option<String>,
    /// The system's resource path, once found.
    system: Option<String>,
}

/// A reqwest error with its causes (the TLS reason is in a cause).
fn chain(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        let t = s.to_string();
        if !msg.contains(&t) {
            msg.push_str(": ");
            msg.push_str(&t);
        }
        src = s.source();
    }
    if msg.contains("certificate") || msg.contains("UnknownIssuer") {
        msg.push_str(" (a self-signed BMC certificate needs --insecure or a pinned --tls-fingerprint)");
    }
    msg
}

impl Redfish {
    pub fn new(
        base: &str,
        user: &str,
        password: &str,
        system_id: Option<String>,
        tls: Tls,
        timeout: Duration,
    ) -> Result<Redfish, PowerError> {
        let base = base.trim_end_matches('/').to_string();
        let err = |message: String| PowerError::Device {
            driver: PowerDriver::Redfish,
            target: format!("BMC {base}"),
            step: "setting up the HTTPS client",
            message,
        };
        let mut b = Client::builder().timeout(timeout).connect_timeout(timeout.min(Duration::from_secs(10)));
        b = match &tls {
            Tls::Insecure => b.use_rustls_tls().danger_accept_invalid_certs(true),
            Tls::Pinned(fp) => {
                b.use_preconfigured_tls(kura_protocol::client::tls::pinned_client_config(fp).map_err(err)?)
            }
            Tls::SystemRoots => {
                let mut b = b.use_rustls_tls().tls_built_in_root_certs(false);
                if let Ok(pem) = std::fs::read(CA_BUNDLE) {
                    for cert in reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| err(chain(&e)))? {
                        b = b.add_root_certificate(cert);
                    }
                }
                b
            }
        };
        let http = b.build().map_err(|e| err(chain(&e)))?;
        Ok(Redfish { http, base, user: user.to_string(), password: password.to_string(), system_id, system: None })
    }

    fn device_err(&self, step: &'static str, message: String) -> PowerError {
        PowerError::Device { driver: PowerDriver::Redfish, target: format!("BMC {}", self.base), step, message }
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        }
    }

    fn send(&self, step: &'static str, rb: RequestBuilder) -> Result<Response, PowerError> {
        let resp = rb
            .basic_auth(&self.user, Some(&self.password))
            .header("Accept", "application/json")
            .send()
            .map_err(|e| self.device_err(step, chain(&e)))?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().unwrap_or_default();
            // A Redfish error body: {"error": {"message": ..., "@Message.ExtendedInfo": [...]}}.
            let detail = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| body.chars().take(200).collect());
            return Err(self.device_err(step, format!("HTTP {status}: {}", detail.trim())));
        }
        Ok(resp)
    }

    fn get_json(&self, step: &'static str, path: &str) -> Result<Value, PowerError> {
        let resp = self.send(step, self.http.get(self.url(path)))?;
        resp.json().map_err(|e| self.device_err(step, format!("the answer is not JSON: {}", chain(&e))))
    }

    /// The ComputerSystem's resource path: the configured id, else the BMC's only system.
    pub fn system(&mut self) -> Result<String, PowerError> {
        if let Some(s) = &self.system {
            return Ok(s.clone());
        }
        let step = "finding the system";
        let path = match &self.system_id {
            Some(id) => format!("/redfish/v1/Systems/{id}"),
            None => {
                let list = self.get_json(step, "/redfish/v1/Systems")?;
                let members: Vec<String> = list["Members"]
                    .as_array()
                    .map(|m| m.iter().filter_map(|v| v["@odata.id"].as_str().map(str::to_string)).collect())
                    .unwrap_or_default();
                match members.as_slice() {
                    [one] => one.clone(),
                    [] => return Err(self.device_err(step, "the BMC lists no systems".into())),
                    many => {
                        let ids: Vec<&str> = many.iter().filter_map(|m| m.rsplit('/').next()).collect();
                        return Err(self.device_err(
                            step,
                            format!("the BMC has {} systems; choose one with --system ({})", ids.len(), ids.join(", ")),
                        ));
                    }
                }
            }
        };
        self.system = Some(path.clone());
        Ok(path)
    }
}

impl Bmc for Redfish {
    fn set_pxe_once(&mut self) -> Result<(), PowerError> {
        let system = self.system()?;
        let body = json!({"Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once"}});
        self.send("setting the boot override to Pxe once", self.http.patch(self.url(&system)).json(&body)).map(|_| ())
    }

    fn power_state(&mut self) -> Result<PowerState, PowerError> {
        let system = self.system()?;
        let step = "reading the power state";
        let v = self.get_json(step, &system)?;
        match v["PowerState"].as_str() {
            Some("On") | Some("PoweringOff") | Some("Paused") => Ok(PowerState::On),
            Some("Off") | Some("PoweringOn") => Ok(PowerState::Off),
            other => Err(self.device_err(step, format!("unexpected PowerState {other:?}"))),
        }
    }

    fn reset(&mut self, reset: Reset) -> Result<(), PowerError> {
        let system = self.system()?;
        let (step, kind) = match reset {
            Reset::On => ("requesting power on (ComputerSystem.Reset On)", "On"),
            Reset::ForceOff => ("requesting power off (ComputerSystem.Reset ForceOff)", "ForceOff"),
            Reset::ForceRestart => ("requesting a restart (ComputerSystem.Reset ForceRestart)", "ForceRestart"),
        };
        // The action's target as the system advertises it, else the standard path.
        let target = self
            .get_json(step, &system)
            .ok()
            .and_then(|v| v["Actions"]["#ComputerSystem.Reset"]["target"].as_str().map(str::to_string))
            .unwrap_or_else(|| format!("{system}/Actions/ComputerSystem.Reset"));
        self.send(step, self.http.post(self.url(&target)).json(&json!({"ResetType": kind}))).map(|_| ())
    }
}
