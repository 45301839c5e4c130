//! `kura admin routes`: the engine's API route table (method, path, required access, body
//! cap), printed from [`crate::api::routes`] itself, so that external tests can walk every
//! route without a copy of the list that could drift.

use anyhow::Result;
use std::process::ExitCode;

pub fn print(json: bool) -> Result<ExitCode> {
    let routes = crate::api::routes();
    if json {
        let list: Vec<serde_json::Value> = routes
            .iter()
            .map(|r| {
                serde_json::json!({
                    "method": r.method.as_str(),
                    "path": r.path,
                    "access": format!("{:?}", r.access),
                    "body_limit": r.body_limit,
                })
            })
            .collect();
        println!("{}", serde_json::to_string(&list)?);
    } else {
        for r in &routes {
            println!("{:7} {:45} {:?} (body up to {} bytes)", r.method.as_str(), r.path, r.access, r.body_limit);
        }
    }
    Ok(ExitCode::SUCCESS)
}
