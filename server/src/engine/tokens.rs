//! Agent tokens: the one place they are minted, for the API's new jobs and the netboot
//! script alike. A token is bound to one active job and one MAC address of the job's host (the
//! catalog refuses anything else); its secret is shown once, to whoever asked for it.

use kura_catalogs::db::{Catalog, CatalogError, IssuedToken};
use kura_protocol::jobs::UnixTime;
use kura_protocol::MacAddr;

/// Mints an agent token for job `job`, bound to `mac`, expiring at `expires` (never if
/// `None`), audited as `actor`.
pub fn mint_agent_token(
    catalog: &Catalog,
    actor: &str,
    job: i64,
    mac: MacAddr,
    expires: Option<UnixTime>,
) -> Result<IssuedToken, CatalogError> {
    catalog.create_agent_token(actor, job, &mac.to_string(), expires)
}
