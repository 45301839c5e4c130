//! Hosts as the upload service needs them. Registering hosts is an admin's act (`POST /hosts`
//! is admin-only), so an upload for a host the catalog does not know registers it (with no MAC
//! address; `POST /hosts` can complete it later) only when an admin uploads; an operator's
//! upload for an unknown host is refused, naming the fix. Agents never create hosts: theirs
//! comes from their job. A replica (a primary engine pushing its snapshots) registers the hosts
//! of the snapshots it copies.

use super::{Caller, ServiceError, ServiceResult};
use kura_catalogs::db::{Catalog, CatalogError, NewHost, Role};

/// Makes sure host `name` exists: an admin's or a replica's upload creates it (audited as the caller); anyone
/// else's is refused with `Forbidden` if it does not exist.
pub fn ensure_for_upload(catalog: &Catalog, caller: &Caller, name: &str) -> ServiceResult<()> {
    match catalog.get_host(name) {
        Ok(_) => Ok(()),
        Err(CatalogError::NotFound { .. }) if !caller.is_admin() && caller.principal.role != Role::Replica => {
            Err(ServiceError::Forbidden(format!(
                "host {name:?} is not registered, and only an admin may register hosts \
             (POST /api/v1/hosts, or an admin's upload)"
            )))
        }
        Err(CatalogError::NotFound { .. }) => {
            match catalog.create_host(&caller.actor(), &NewHost { name: name.to_string(), ..Default::default() }) {
                // Someone else created it meanwhile: it exists, which is all we asked.
                Ok(_) | Err(CatalogError::Conflict { .. }) => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kura_catalogs::db::Principal;

    fn caller(role: Role) -> Caller {
        Caller::new(Principal { token_id: 1, role, label: "t".into(), user: Some("u".into()), job_id: None, mac: None })
            .unwrap()
    }

    #[test]
    fn only_an_admins_upload_registers_a_host() {
        let catalog = Catalog::open_in_memory().unwrap();
        let e = ensure_for_upload(&catalog, &caller(Role::Operator), "new").unwrap_err();
        assert!(matches!(&e, ServiceError::Forbidden(m) if m.contains("only an admin")), "{e:?}");
        assert!(matches!(catalog.get_host("new"), Err(CatalogError::NotFound { .. })), "an operator created a host");
        ensure_for_upload(&catalog, &caller(Role::Admin), "new").unwrap();
        assert!(catalog.get_host("new").is_ok());
        // A known host is fine for an operator.
        ensure_for_upload(&catalog, &caller(Role::Operator), "new").unwrap();
    }
}
