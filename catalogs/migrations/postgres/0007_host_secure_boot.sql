-- Kura catalog, migration 0007: the boot chain a host's UEFI netboots get (issue 11).
--
-- hosts.secure_boot: 'on', 'off' or 'auto' (`kura host set NAME --secure-boot`), NULL to follow
-- the netboot configuration's "secure_boot" default. Read by server/src/boot_policy.rs.

ALTER TABLE hosts ADD COLUMN secure_boot TEXT CHECK (secure_boot IN ('on', 'off', 'auto'));
