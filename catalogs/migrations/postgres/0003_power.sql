-- Kura catalog (PostgreSQL), migration 0003: per-host power control, how Kura gets a machine into netboot
-- when a job is queued for it (Wake-on-LAN, Redfish or IPMI).
--
-- A BMC password is never stored in the clear: password_sealed is the AEAD-sealed value
-- (catalogs/src/secrets.rs: version byte, random nonce, ciphertext and tag), and the key lives
-- outside the catalog, in the engine's DATA/secrets.key.

CREATE TABLE host_power (
    host_id BIGINT PRIMARY KEY REFERENCES hosts (id) ON DELETE CASCADE,
    driver TEXT NOT NULL CHECK (driver IN ('none', 'wol', 'redfish', 'ipmi')),
    -- Redfish: the BMC's base URL; IPMI: HOST or HOST:PORT.
    address TEXT,
    username TEXT,
    password_sealed BYTEA,
    -- Redfish: the ComputerSystem id (default: the BMC's only system).
    system_id TEXT,
    -- Redfish over HTTPS: accept any certificate (insecure) or exactly the pinned one.
    insecure BIGINT NOT NULL DEFAULT 0 CHECK (insecure IN (0, 1)),
    tls_fingerprint TEXT,
    -- Wake-on-LAN: the IPv4 broadcast address and the interface to send from.
    broadcast TEXT,
    interface TEXT,
    -- IPMI: the RMCP+ cipher suite (ipmitool -C); absent: negotiated.
    cipher_suite BIGINT CHECK (cipher_suite BETWEEN 0 AND 17),
    updated BIGINT NOT NULL
);
