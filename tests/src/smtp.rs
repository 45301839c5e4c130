//! A real SMTP relay for the notification tests: aiosmtpd (Python) on 127.0.0.1, plain or
//! requiring STARTTLS with a certificate for 127.0.0.1 issued by a throwaway CA ([`TestCa`],
//! made here with rcgen). Every mail it accepts is parsed by Python's `email` package (which
//! undoes the transfer and header encodings) and handed to the test as a [`Mail`].
//!
//! Needs Python 3 with aiosmtpd (`scripts/test` installs it into the venv
//! `/opt/kura-test-venv`; `KURA_TEST_PYTHON` picks another interpreter, see [`crate::bmc::python`]).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tempfile::TempDir;

/// A mail as the relay got it.
#[derive(Debug, Deserialize)]
pub struct Mail {
    /// The envelope sender and recipients (MAIL FROM, RCPT TO).
    pub from: String,
    pub to: Vec<String>,
    /// Whether the session was encrypted (STARTTLS) when the mail was sent.
    pub tls: bool,
    /// Every header, decoded (RFC 2047 words undone), in order.
    pub headers: Vec<(String, String)>,
    /// The body, decoded (transfer encoding undone).
    pub body: String,
}

impl Mail {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A certificate authority made for one test: `ca.pem` is what the client must trust.
pub struct TestCa {
    dir: TempDir,
    ca: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl TestCa {
    pub fn new() -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "Kura test CA");
        let ca = params.self_signed(&key).unwrap();
        let dir = tempfile::Builder::new().prefix("kura-test-ca-").tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        TestCa { dir, ca, key }
    }

    /// The CA certificate (PEM).
    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A server certificate for `names` (DNS names or IP addresses): (chain PEM, key PEM) files
    /// in `dir`.
    pub fn issue(&self, names: &[&str], dir: &Path) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = rcgen::CertificateParams::new(names).unwrap().signed_by(&key, &self.ca, &self.key).unwrap();
        let (c, k) = (dir.join("relay.pem"), dir.join("relay.key"));
        std::fs::write(&c, format!("{}{}", cert.pem(), self.ca.pem())).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

/// aiosmtpd on a free port; each accepted mail is written as `N.json` (atomically).
const RELAY: &str = r#"
import asyncio, email, email.policy, json, os, ssl, sys
from aiosmtpd.smtp import SMTP

out = sys.argv[1]
cert, key = (sys.argv[2], sys.argv[3]) if len(sys.argv) > 3 else (None, None)

class Mailbox:
    def __init__(self):
        self.n = 0

    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        self.n += 1
        record = {
            "from": envelope.mail_from,
            "to": envelope.rcpt_tos,
            "tls": session.ssl is not None,
            "headers": [[k, str(v)] for k, v in msg.items()],
            "body": msg.get_content(),
        }
        path = os.path.join(out, f"{self.n}.json")
        with open(path + ".tmp", "w") as f:
            json.dump(record, f)
        os.rename(path + ".tmp", path)
        return "250 Message accepted"

async def main():
    context = None
    if cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
    handler = Mailbox()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="relay.test", tls_context=context, require_starttls=context is not None),
        "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()

asyncio.run(main())
"#;

/// A running relay, stopped when dropped.
pub struct SmtpRelay {
    /// `127.0.0.1:PORT`, as `kura notify add email --smtp` takes it.
    pub addr: String,
    dir: TempDir,
    child: Child,
    seen: usize,
}

impl SmtpRelay {
    /// A relay that speaks plain SMTP only.
    pub fn plain() -> SmtpRelay {
        Self::spawn(None)
    }

    /// A relay that offers STARTTLS with a certificate for 127.0.0.1 from `ca`, and refuses
    /// mail (530) until the client has started TLS.
    pub fn starttls(ca: &TestCa) -> SmtpRelay {
        Self::spawn(Some(ca))
    }

    fn spawn(ca: Option<&TestCa>) -> SmtpRelay {
        let py = crate::bmc::python();
        let probe = Command::new(&py).args(["-c", "import aiosmtpd"]).output();
        assert!(
            matches!(&probe, Ok(o) if o.status.success()),
            "Python {} has no aiosmtpd: pip install aiosmtpd (scripts/test installs it into \
             /opt/kura-test-venv; Debian package python3-venv), or set KURA_TEST_PYTHON: {probe:?}",
            py.display()
        );
        let dir = tempfile::Builder::new().prefix("kura-smtp-").tempdir().unwrap();
        let script = dir.path().join("relay.py");
        std::fs::write(&script, RELAY).unwrap();
        let mails = dir.path().join("mails");
        std::fs::create_dir(&mails).unwrap();
        let mut cmd = Command::new(&py);
        cmd.arg(&script).arg(&mails);
        if let Some(ca) = ca {
            let (cert, key) = ca.issue(&["127.0.0.1"], dir.path());
            cmd.arg(cert).arg(key);
        }
        let log = std::fs::File::create(dir.path().join("relay.log")).unwrap();
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log).spawn().unwrap();
        let mut line = String::new();
        let _ = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
        let Ok(port) = line.trim().parse::<u16>() else {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(dir.path().join("relay.log")).unwrap_or_default();
            panic!("aiosmtpd did not start (said {line:?}):\n{log}");
        };
        SmtpRelay { addr: format!("127.0.0.1:{port}"), dir, child, seen: 0 }
    }

    /// The next mail the relay accepted, waiting up to `timeout`.
    pub fn next_mail(&mut self, timeout: Duration) -> Option<Mail> {
        let path = self.dir.path().join("mails").join(format!("{}.json", self.seen + 1));
        let deadline = Instant::now() + timeout;
        while !path.exists() {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.seen += 1;
        Some(serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap())
    }

    /// What aiosmtpd wrote on stderr.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("relay.log")).unwrap_or_default()
    }
}

impl Drop for SmtpRelay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
