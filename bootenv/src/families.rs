//! The drivers the netboot image carries, by family: the storage controllers and NICs found in
//! Dell, HPE, Lenovo, Fujitsu and NEC rack servers and in the common hypervisors, plus the few
//! platform modules the agent itself needs. One table ([`FAMILIES`]) feeds the builder's default
//! list, the per-driver report of `kura bootenv build --report` and the table in
//! `docs/drivers.md` (a test keeps the two in step).
//!
//! Dependencies are not listed: the builder adds them from `modules.dep`. A module a kernel has
//! built in is fine (nothing to ship); one it lacks is reported.

use serde::Serialize;

/// What a family drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    Storage,
    Network,
    /// What the agent needs whatever the hardware (disk driver core, entropy, UEFI variables).
    Platform,
}

impl Class {
    pub fn name(self) -> &'static str {
        match self {
            Class::Storage => "storage",
            Class::Network => "network",
            Class::Platform => "platform",
        }
    }
}

/// One driver family: the modules that drive it and where it is found.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    /// Short name used in reports (`megaraid`, `intel-1g`).
    pub id: &'static str,
    pub class: Class,
    /// The hardware, in the vendors' words.
    pub hardware: &'static str,
    pub modules: &'static [&'static str],
}

/// Every family the image carries by default.
pub const FAMILIES: &[Family] = &[
    // Storage.
    Family {
        id: "megaraid",
        class: Class::Storage,
        hardware: "Broadcom/LSI MegaRAID: Dell PERC H330/H730/H740/H750/H755/H965, Lenovo ThinkSystem RAID \
                   530/730/930/940, Fujitsu PRAID EP4xx/EP5xx, NEC N8103 RAID, Cisco 12G RAID; QEMU megasas-gen2",
        modules: &["megaraid_sas"],
    },
    Family {
        id: "mpt3sas",
        class: Class::Storage,
        hardware: "Broadcom/LSI SAS2/SAS3 HBAs (SAS2008-SAS3916): Dell HBA330/HBA355, Lenovo 430/440 HBA, \
                   Fujitsu PSAS CP400i/CP500i, HPE H241/SN HBAs",
        modules: &["mpt3sas"],
    },
    Family {
        id: "mptsas",
        class: Class::Storage,
        hardware: "LSI Fusion-MPT SAS1/SPI (SAS1064/1068/1078, 53C1030): Dell SAS 6/iR, older IBM/Fujitsu \
                   HBAs, VMware \"LSI Logic SAS/Parallel\"; QEMU mptsas1068",
        modules: &["mptsas", "mptspi"],
    },
    Family {
        id: "smartpqi",
        class: Class::Storage,
        hardware: "Microchip/Adaptec SmartRAID/SmartHBA: HPE Smart Array P408i/P816i/E208i/MR (Gen10 and later), \
                   Lenovo ThinkSystem RAID 5350/9350, Microchip SmartRAID 3100/3200",
        modules: &["smartpqi"],
    },
    Family {
        id: "hpsa",
        class: Class::Storage,
        hardware: "HPE Smart Array Gen8/Gen9: P220i/P420i/P440ar/P840/H240",
        modules: &["hpsa"],
    },
    Family {
        id: "aacraid",
        class: Class::Storage,
        hardware: "Adaptec RAID Series 6/7/8 and HBA 1000, Microsemi SmartRAID (aacraid mode)",
        modules: &["aacraid"],
    },
    Family {
        id: "sas-other",
        class: Class::Storage,
        hardware: "other onboard SAS: Intel C600 SCU (isci), Marvell 88SE94xx (mvsas), PMC/Microchip \
                   8001/80xx (pm80xx)",
        modules: &["isci", "mvsas", "pm80xx"],
    },
    Family {
        id: "fc",
        class: Class::Storage,
        hardware: "Fibre Channel HBAs for boot from SAN: QLogic/Marvell QLE2xxx (qla2xxx), Emulex/Broadcom \
                   LPe (lpfc)",
        modules: &["qla2xxx", "lpfc"],
    },
    Family {
        id: "sata",
        class: Class::Storage,
        hardware: "onboard SATA and M.2 boot modules: AHCI (Intel C6xx, Dell BOSS-S1/S2, Lenovo M.2 mirroring \
                   kit, HPE SATA), legacy Intel PIIX; QEMU ich9-ahci",
        modules: &["ahci", "ata_piix"],
    },
    Family {
        id: "nvme",
        class: Class::Storage,
        hardware: "NVMe SSDs (U.2/U.3, M.2, E1.S; Dell BOSS-N1, HPE NS204i); QEMU nvme",
        modules: &["nvme"],
    },
    Family {
        id: "sym53c8xx",
        class: Class::Storage,
        hardware: "Symbios/LSI 53C8xx and 53C1010 parallel SCSI; QEMU lsi53c895a",
        modules: &["sym53c8xx"],
    },
    Family {
        id: "virtual-storage",
        class: Class::Storage,
        hardware: "virtual disks: virtio-blk and virtio-scsi (KVM, Proxmox, OpenStack), VMware PVSCSI, Hyper-V \
                   storvsc; QEMU pvscsi",
        modules: &["virtio_blk", "virtio_scsi", "vmw_pvscsi", "hv_storvsc"],
    },
    // Network.
    Family {
        id: "intel-1g",
        class: Class::Network,
        hardware: "Intel 1 GbE: I350/I210 (igb), 82574/I217/I219 (e1000e), I225/I226 (igc), 8254x (e1000)",
        modules: &["e1000", "e1000e", "igb", "igc"],
    },
    Family {
        id: "intel-10g",
        class: Class::Network,
        hardware: "Intel 10-100 GbE: X520/X540/X550 (ixgbe), X710/XL710/XXV710 (i40e), E810 (ice), their \
                   SR-IOV VFs (ixgbevf, iavf)",
        modules: &["ixgbe", "i40e", "ice", "ixgbevf", "iavf"],
    },
    Family {
        id: "broadcom-tg3",
        class: Class::Network,
        hardware: "Broadcom NetXtreme BCM57xx 1 GbE: BCM5719/5720 LOMs of Dell PowerEdge, HPE 331i/332i, \
                   Lenovo and Fujitsu onboard ports",
        modules: &["tg3"],
    },
    Family {
        id: "broadcom-nx2",
        class: Class::Network,
        hardware: "Broadcom/QLogic NetXtreme II: BCM5709/5716 (bnx2), BCM57810/57840 10 GbE (bnx2x; Dell, HPE \
                   530/533/534 FLR)",
        modules: &["bnx2", "bnx2x"],
    },
    Family {
        id: "broadcom-bnxt",
        class: Class::Network,
        hardware: "Broadcom NetXtreme-C/E BCM573xx/574xx/575xx 10-200 GbE (Dell, Lenovo, HPE OCP and PCIe cards)",
        modules: &["bnxt_en"],
    },
    Family {
        id: "mellanox",
        class: Class::Network,
        hardware: "NVIDIA/Mellanox ConnectX-3 (mlx4_en), ConnectX-4 to ConnectX-7 and BlueField (mlx5_core)",
        modules: &["mlx4_en", "mlx5_core"],
    },
    Family {
        id: "qlogic",
        class: Class::Network,
        hardware: "Marvell/QLogic FastLinQ QL41xxx/QL45xxx (qede), QLogic 82xx/83xx Intelligent Ethernet \
                   (qlcnic), Emulex OneConnect / HPE FlexFabric (be2net)",
        modules: &["qede", "qlcnic", "be2net"],
    },
    Family {
        id: "realtek",
        class: Class::Network,
        hardware: "Realtek RTL8111/8168/8125 (r8169), RTL8139 (8139cp, 8139too); QEMU rtl8139",
        modules: &["r8169", "8139cp", "8139too"],
    },
    Family {
        id: "virtual-network",
        class: Class::Network,
        hardware: "virtual NICs: virtio-net, VMware VMXNET3, Hyper-V netvsc; QEMU vmxnet3",
        modules: &["virtio_net", "vmxnet3", "hv_netvsc"],
    },
    // Platform.
    Family {
        id: "platform",
        class: Class::Platform,
        hardware: "SCSI disks (sd_mod, for SAS/SATA/SCSI controllers), the virtio PCI transport, the \
                   hypervisor's entropy source (TLS needs entropy early), UEFI variables (the boot entry a \
                   restore writes)",
        modules: &["sd_mod", "virtio_pci", "virtio_rng", "efivarfs"],
    },
];

/// Every module [`FAMILIES`] names, in table order.
pub fn default_modules() -> Vec<String> {
    FAMILIES.iter().flat_map(|f| f.modules.iter().map(|m| m.to_string())).collect()
}

/// The family that names module `name` (kernel form, `-` as `_`).
pub fn family_of(name: &str) -> Option<&'static Family> {
    let name = crate::modules::normalize(name);
    FAMILIES.iter().find(|f| f.modules.iter().any(|m| crate::modules::normalize(m) == name))
}

/// The Markdown table of [`FAMILIES`] (class, family, hardware, modules), as `docs/drivers.md`
/// carries it.
pub fn markdown_table() -> String {
    let mut s = String::from("| class | family | hardware | modules |\n|---|---|---|---|\n");
    for f in FAMILIES {
        let mods: Vec<String> = f.modules.iter().map(|m| format!("`{m}`")).collect();
        s += &format!("| {} | `{}` | {} | {} |\n", f.class.name(), f.id, f.hardware, mods.join(", "));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_modules_are_unique() {
        let mut ids: Vec<&str> = FAMILIES.iter().map(|f| f.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), FAMILIES.len());
        let mut mods = default_modules();
        let n = mods.len();
        mods.sort();
        mods.dedup();
        assert_eq!(mods.len(), n, "a module is in two families");
    }

    /// The list (#11) is all there.
    #[test]
    fn the_required_drivers_are_listed() {
        for m in [
            "megaraid_sas",
            "mpt3sas",
            "mptsas",
            "smartpqi",
            "hpsa",
            "aacraid",
            "ahci",
            "nvme",
            "virtio_scsi",
            "vmw_pvscsi",
            "sym53c8xx",
            "e1000e",
            "igb",
            "ixgbe",
            "i40e",
            "ice",
            "bnxt_en",
            "tg3",
            "bnx2",
            "bnx2x",
            "mlx4_en",
            "mlx5_core",
            "qede",
            "vmxnet3",
            "r8169",
            "8139cp",
            "8139too",
        ] {
            assert!(family_of(m).is_some(), "{m} is in no family");
        }
        assert_eq!(family_of("megaraid-sas").map(|f| f.id), Some("megaraid"));
    }

    /// `docs/drivers.md` carries the table as the code has it.
    #[test]
    fn the_docs_table_is_current() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/drivers.md")).unwrap();
        assert!(
            doc.contains(&markdown_table()),
            "docs/drivers.md does not hold the current table; put this in it:\n{}",
            markdown_table()
        );
    }
}
