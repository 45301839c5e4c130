//! Hosts as the upload service needs them: an operator's upload for a host the catalog does
//! not know registers it (with no MAC address; `kura host add` can complete it later). Agents
//! never create hosts: theirs comes from their job.

use super::ServiceResult;
use kura_catalogs::db::{Catalog, CatalogError, NewHost};

/// Makes sure host `name` exists, creating it (audited as `actor`) if it does not.
pub fn ensure_for_upload(catalog: &Catalog, actor: &str, name: &str) -> ServiceResult<()> {
    match catalog.get_host(name) {
        Ok(_) => Ok(()),
        Err(CatalogError::NotFound { .. }) => {
            match catalog.create_host(actor, &NewHost { name: name.to_string(), ..Default::default() }) {
                // Someone else created it meanwhile: it exists, which is all we asked.
                Ok(_) | Err(CatalogError::Conflict { .. }) => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}
