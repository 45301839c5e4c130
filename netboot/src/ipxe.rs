//! iPXE scripts: a [`BootDecision`] rendered to the text iPXE runs. The policy decides; this
//! module only writes, and escapes what it is given.
//!
//! - [`BootDecision::Agent`]: the Kura boot environment:
//!
//!   ```text
//!   #!ipxe
//!   echo Kura: BANNER (MAC)
//!   kernel KERNEL_URL initrd=initrd.img kura.server=API kura.token=TOKEN kura.job=ID kura.mac=MAC
//!          [kura.fingerprint=FP] [other kura.* options] [site kernel_args]
//!   initrd --name initrd.img INITRD_URL
//!   boot
//!   ```
//!
//!   The `kura.*` words are [`AgentArgs::render`]'s, which the agent reads back with
//!   [`AgentArgs::parse`]. `initrd=initrd.img` is on the command line because an EFI-stub kernel
//!   booted by UEFI iPXE finds its initramfs by that name; `--name` pins the name whatever the
//!   URL looks like.
//! - [`BootDecision::LocalDisk`]: [`local_boot_script`]. BIOS iPXE runs
//!   `sanboot --no-describe --drive 0x80` (the first hard disk through INT 13h); UEFI iPXE runs
//!   `exit`, which hands control back to the firmware's boot manager, which tries the next boot
//!   entry (put the disk after the network in the boot order). If `sanboot` fails, `exit` lets
//!   the BIOS try its next device.
//!
//! Text shown on the console (banner, note) is made printable ASCII without `$` (iPXE expands
//! `${…}` settings in every command line); kernel arguments and URLs that could change the
//! script, or agent arguments that would not read back as written, are refused with a
//! [`ScriptError`].

use crate::policy::{AgentBoot, BootDecision, MacAddr};
use kura_protocol::cmdline::{is_plain_value, AgentArgs};

/// A decision that cannot be written as a script safely (a value with spaces, quotes, `$` or
/// control characters where one word is expected).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot write the iPXE script: {0}")]
pub struct ScriptError(pub String);

/// The iPXE script for `mac`. `kernel_args` (the site's extra kernel arguments, one line) are
/// appended to an agent's kernel command line.
pub fn render(mac: MacAddr, decision: &BootDecision, kernel_args: &str) -> Result<String, ScriptError> {
    match decision {
        BootDecision::Agent(a) => agent_script(mac, a, kernel_args),
        BootDecision::LocalDisk { note } => Ok(local_boot_script(&mac.to_string(), &sanitize_echo(note))),
    }
}

/// The kernel command line of an agent boot, without the `kernel URL` in front.
pub fn agent_cmdline(a: &AgentBoot, kernel_args: &str) -> Result<String, ScriptError> {
    Ok(format!("initrd=initrd.img {}", kura_cmdline(a, kernel_args)?))
}

/// The agent's `kura.*` words and the site's `kernel_args`, checked: what every boot loader
/// puts on the agent's kernel command line (iPXE adds `initrd=`, [`crate::grub`] does not).
pub fn kura_cmdline(a: &AgentBoot, kernel_args: &str) -> Result<String, ScriptError> {
    let kura = a.args.render();
    if let Some(bad) = kura.split(' ').find(|w| !is_plain_value(w)) {
        return Err(ScriptError(format!("the agent argument {bad:?} is not one plain word")));
    }
    // A value with a space in it splits into words that read back as something else.
    if AgentArgs::parse(&kura).as_ref() != Ok(&a.args) {
        return Err(ScriptError(format!("the agent arguments {kura:?} do not read back as written")));
    }
    if kernel_args.chars().any(char::is_control) {
        return Err(ScriptError("kernel_args must be one line without control characters".into()));
    }
    let mut line = kura;
    if !kernel_args.is_empty() {
        line.push(' ');
        line.push_str(kernel_args);
    }
    Ok(line)
}

fn agent_script(mac: MacAddr, a: &AgentBoot, kernel_args: &str) -> Result<String, ScriptError> {
    for (what, url) in [("kernel", &a.kernel_url), ("initrd", &a.initrd_url)] {
        if !is_plain_value(url) {
            return Err(ScriptError(format!("the {what} URL {url:?} is not one plain word")));
        }
    }
    let cmdline = agent_cmdline(a, kernel_args)?;
    Ok(format!(
        "#!ipxe\n\
         echo Kura: {banner} ({mac})\n\
         kernel {kernel} {cmdline}\n\
         initrd --name initrd.img {initrd}\n\
         boot\n",
        banner = sanitize_echo(&a.banner),
        kernel = a.kernel_url,
        initrd = a.initrd_url,
    ))
}

/// Keeps text from changing the script: printable ASCII without `$` (iPXE expands `${…}`
/// settings in every command line).
pub fn sanitize_echo(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_graphic() && c != '$' || c == ' ' { c } else { '_' }).collect()
}

pub fn local_boot_script(mac: &str, note: &str) -> String {
    format!(
        "#!ipxe\n\
         echo Kura: {mac}: {note}; booting from the local disk\n\
         iseq ${{platform}} efi && goto kura_efi ||\n\
         sanboot --no-describe --drive 0x80 || goto kura_exit\n\
         :kura_efi\n\
         :kura_exit\n\
         exit\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use kura_protocol::cmdline::Finally;
    use proptest::prelude::*;

    fn mac() -> MacAddr {
        "52:54:00:aa:bb:cc".parse().unwrap()
    }

    fn agent(args: AgentArgs) -> BootDecision {
        BootDecision::Agent(AgentBoot {
            args,
            kernel_url: "http://10.9.0.1:8080/boot/vmlinuz?mac=52:54:00:aa:bb:cc".into(),
            initrd_url: "http://10.9.0.1:8080/boot/initrd.img?mac=52:54:00:aa:bb:cc".into(),
            banner: "capture job 7 for host web1".into(),
        })
    }

    #[test]
    fn the_agent_script_is_the_one_ipxe_has_always_run() {
        let args = AgentArgs::new("https://10.9.0.1:8443", 7, "kura_tok", mac(), Some("ab12"));
        let s = render(mac(), &agent(args), "console=ttyS0").unwrap();
        assert_eq!(
            s,
            "#!ipxe\n\
             echo Kura: capture job 7 for host web1 (52:54:00:aa:bb:cc)\n\
             kernel http://10.9.0.1:8080/boot/vmlinuz?mac=52:54:00:aa:bb:cc initrd=initrd.img \
             kura.server=https://10.9.0.1:8443 kura.token=kura_tok kura.job=7 kura.mac=52:54:00:aa:bb:cc \
             kura.fingerprint=ab12 console=ttyS0\n\
             initrd --name initrd.img http://10.9.0.1:8080/boot/initrd.img?mac=52:54:00:aa:bb:cc\n\
             boot\n"
        );
    }

    #[test]
    fn the_local_boot_script_is_byte_for_byte_the_old_one() {
        let d = BootDecision::LocalDisk { note: "host web${x}1\n: no pending job".into() };
        assert_eq!(
            render(mac(), &d, "console=ttyS0").unwrap(),
            "#!ipxe\n\
             echo Kura: 52:54:00:aa:bb:cc: host web_{x}1_: no pending job; booting from the local disk\n\
             iseq ${platform} efi && goto kura_efi ||\n\
             sanboot --no-describe --drive 0x80 || goto kura_exit\n\
             :kura_efi\n\
             :kura_exit\n\
             exit\n"
        );
    }

    #[test]
    fn values_that_would_change_the_script_are_refused() {
        let ok = AgentArgs::new("http://10.9.0.1:8080", 7, "kura_tok", mac(), None);
        assert!(render(mac(), &agent(ok.clone()), "").is_ok());
        let e = render(mac(), &agent(ok.clone()), "quiet\nchain http://evil").unwrap_err();
        assert!(e.to_string().contains("kernel_args"), "{e}");
        let bad_token = AgentArgs { token: "a b".into(), ..ok.clone() };
        assert!(render(mac(), &agent(bad_token), "").unwrap_err().to_string().contains("kura.token"));
        let bad_server = AgentArgs { server: "http://${evil}".into(), ..ok.clone() };
        assert!(render(mac(), &agent(bad_server), "").is_err());
        let BootDecision::Agent(mut a) = agent(ok) else { unreachable!() };
        a.kernel_url = "http://x/k\nshell".into();
        assert!(render(mac(), &BootDecision::Agent(a.clone()), "").unwrap_err().to_string().contains("kernel URL"));
        a.kernel_url = "http://x/k".into();
        a.banner = "job\nshell ${x}".into();
        let s = render(mac(), &BootDecision::Agent(a), "").unwrap();
        assert!(s.contains("echo Kura: job_shell _{x} (52:54:00:aa:bb:cc)\n"), "{s}");
    }

    fn finally() -> impl Strategy<Value = Finally> {
        prop_oneof![Just(Finally::PowerOff), Just(Finally::Reboot), Just(Finally::Wait)]
    }

    proptest! {
        /// The kernel line the script writes is what the agent reads back from /proc/cmdline.
        #[test]
        fn the_kernel_line_parses_back_to_the_same_args(
            https in any::<bool>(), port in 1u16.., job in 0i64.., token in "kura_[a-zA-Z0-9_-]{1,40}",
            m in any::<[u8; 6]>(), after in proptest::option::of(finally()), on_error in finally(),
            error_delay in 0u64..100_000, timeout in 1u64..100_000, site in "[a-z=,0-9 ]{0,30}",
        ) {
            let server = format!("{}://10.1.2.3:{port}", if https { "https" } else { "http" });
            let args = AgentArgs {
                fingerprint: https.then(|| "ab:cd:ef".to_string()),
                after, on_error, error_delay, timeout,
                ..AgentArgs::new(&server, job, &token, MacAddr(m), None)
            };
            let s = render(MacAddr(m), &agent(args.clone()), &site).unwrap();
            let kernel = s.lines().find_map(|l| l.strip_prefix("kernel ")).unwrap();
            let (url, cmdline) = kernel.split_once(' ').unwrap();
            prop_assert_eq!(url, "http://10.9.0.1:8080/boot/vmlinuz?mac=52:54:00:aa:bb:cc");
            prop_assert!(cmdline.starts_with("initrd=initrd.img "));
            prop_assert_eq!(AgentArgs::parse(cmdline).unwrap(), args);
        }
    }
}
