//! Changes to the configuration text (from the API), made with toml_edit so that the
//! operator's comments and layout survive: every API change is a new revision of the same
//! file, readable and diffable like a hand edit.

use serde_json::Value;
use thiserror::Error;
use toml_edit::{ArrayOfTables, DocumentMut, Item, Table, value};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum EditError {
    #[error("the current configuration does not parse: {0}")]
    Parse(String),
    #[error("unknown VIP {0:?} (`lbctl vip list` shows them)")]
    NoVip(String),
    #[error("VIP {vip:?} has no backend {address} (`lbctl backend list {vip}` shows them)")]
    NoBackend { vip: String, address: String },
    #[error("VIP {0:?} already exists")]
    VipExists(String),
    #[error("VIP {vip:?} already has backend {address}")]
    BackendExists { vip: String, address: String },
    #[error("no VIP has backend {0} (`lbctl backend list` shows them)")]
    NoBackendAnywhere(String),
    #[error("{0}")]
    Bad(String),
}

fn doc(text: &str) -> Result<DocumentMut, EditError> {
    text.parse::<DocumentMut>()
        .map_err(|e| EditError::Parse(e.to_string()))
}

fn vips(d: &mut DocumentMut) -> Option<&mut ArrayOfTables> {
    d.get_mut("vip").and_then(Item::as_array_of_tables_mut)
}

fn find_vip<'a>(d: &'a mut DocumentMut, name: &str) -> Result<&'a mut Table, EditError> {
    vips(d)
        .and_then(|a| {
            a.iter_mut()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some(name))
        })
        .ok_or_else(|| EditError::NoVip(name.to_string()))
}

fn backends(vip: &mut Table) -> &mut ArrayOfTables {
    if !vip.contains_key("backend") {
        vip.insert("backend", Item::ArrayOfTables(ArrayOfTables::new()));
    }
    vip.get_mut("backend")
        .and_then(Item::as_array_of_tables_mut)
        .expect("backend is an array of tables")
}

/// Set `key` in `t` from a JSON scalar (string, integer, boolean).
fn set(t: &mut Table, key: &str, v: &Value) -> Result<(), EditError> {
    let item = match v {
        Value::String(s) => value(s.as_str()),
        Value::Bool(b) => value(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => value(i),
            None => value(n.as_f64().unwrap_or_default()),
        },
        Value::Null => {
            t.remove(key);
            return Ok(());
        }
        other => {
            return Err(EditError::Bad(format!(
                "{key}: {other} is not a string, number or boolean"
            )));
        }
    };
    t.insert(key, item);
    Ok(())
}

fn set_all(
    t: &mut Table,
    fields: &serde_json::Map<String, Value>,
    skip: &[&str],
) -> Result<(), EditError> {
    for (k, v) in fields {
        if !skip.contains(&k.as_str()) {
            set(t, k, v)?;
        }
    }
    Ok(())
}

/// Change fields of a backend (weight, drain, disabled, role, mac ...).
pub fn set_backend(
    text: &str,
    vip: &str,
    address: &str,
    fields: &serde_json::Map<String, Value>,
) -> Result<String, EditError> {
    let mut d = doc(text)?;
    let v = find_vip(&mut d, vip)?;
    let b = backends(v)
        .iter_mut()
        .find(|t| t.get("address").and_then(|a| a.as_str()) == Some(address))
        .ok_or_else(|| EditError::NoBackend {
            vip: vip.into(),
            address: address.into(),
        })?;
    set_all(b, fields, &["address"])?;
    Ok(d.to_string())
}

/// Change fields of backend `address` in every VIP that has it: one host drained (or
/// reweighted) with one revision. Returns the new text and the VIPs changed.
pub fn set_backend_everywhere(
    text: &str,
    address: &str,
    fields: &serde_json::Map<String, Value>,
) -> Result<(String, Vec<String>), EditError> {
    let mut d = doc(text)?;
    let mut changed = Vec::new();
    if let Some(all) = vips(&mut d) {
        for v in all.iter_mut() {
            let name = v
                .get("name")
                .and_then(|n| n.as_str())
                .unwrap_or_default()
                .to_string();
            if let Some(b) = backends(v)
                .iter_mut()
                .find(|t| t.get("address").and_then(|a| a.as_str()) == Some(address))
            {
                set_all(b, fields, &["address"])?;
                changed.push(name);
            }
        }
    }
    if changed.is_empty() {
        return Err(EditError::NoBackendAnywhere(address.into()));
    }
    Ok((d.to_string(), changed))
}

/// Set `[announce] maintenance`: `lbctl node drain` (true) and `node resume` (false).
pub fn set_maintenance(text: &str, on: bool) -> Result<String, EditError> {
    let mut d = doc(text)?;
    if !d.contains_key("announce") {
        let mut t = Table::new();
        t.set_implicit(false);
        d.insert("announce", Item::Table(t));
    }
    let t = d
        .get_mut("announce")
        .and_then(Item::as_table_mut)
        .ok_or_else(|| EditError::Bad("[announce] is not a table".into()))?;
    t.insert("maintenance", value(on));
    Ok(d.to_string())
}

pub fn add_backend(
    text: &str,
    vip: &str,
    fields: &serde_json::Map<String, Value>,
) -> Result<String, EditError> {
    let address = fields
        .get("address")
        .and_then(Value::as_str)
        .ok_or_else(|| EditError::Bad("a backend needs an address".into()))?;
    let mut d = doc(text)?;
    let v = find_vip(&mut d, vip)?;
    let bs = backends(v);
    if bs
        .iter()
        .any(|t| t.get("address").and_then(|a| a.as_str()) == Some(address))
    {
        return Err(EditError::BackendExists {
            vip: vip.into(),
            address: address.into(),
        });
    }
    let mut t = Table::new();
    set(&mut t, "address", &Value::String(address.into()))?;
    set_all(&mut t, fields, &["address"])?;
    bs.push(t);
    Ok(d.to_string())
}

pub fn remove_backend(text: &str, vip: &str, address: &str) -> Result<String, EditError> {
    let mut d = doc(text)?;
    let v = find_vip(&mut d, vip)?;
    let bs = backends(v);
    let i = bs
        .iter()
        .position(|t| t.get("address").and_then(|a| a.as_str()) == Some(address))
        .ok_or_else(|| EditError::NoBackend {
            vip: vip.into(),
            address: address.into(),
        })?;
    bs.remove(i);
    Ok(d.to_string())
}

pub fn add_vip(text: &str, fields: &serde_json::Map<String, Value>) -> Result<String, EditError> {
    let name = fields
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| EditError::Bad("a VIP needs a name".into()))?;
    let mut d = doc(text)?;
    if find_vip(&mut d, name).is_ok() {
        return Err(EditError::VipExists(name.into()));
    }
    let mut t = Table::new();
    set(&mut t, "name", &Value::String(name.into()))?;
    set_all(&mut t, fields, &["name"])?;
    if vips(&mut d).is_none() {
        d.insert("vip", Item::ArrayOfTables(ArrayOfTables::new()));
    }
    vips(&mut d).expect("vip array").push(t);
    Ok(d.to_string())
}

pub fn set_vip(
    text: &str,
    name: &str,
    fields: &serde_json::Map<String, Value>,
) -> Result<String, EditError> {
    let mut d = doc(text)?;
    let v = find_vip(&mut d, name)?;
    for k in fields.keys() {
        if k == "backend" || k == "health" || k == "name" {
            return Err(EditError::Bad(format!(
                "{k} cannot be set this way: use backend add/remove, or config apply"
            )));
        }
    }
    set_all(v, fields, &[])?;
    Ok(d.to_string())
}

pub fn remove_vip(text: &str, name: &str) -> Result<String, EditError> {
    let mut d = doc(text)?;
    let a = vips(&mut d).ok_or_else(|| EditError::NoVip(name.into()))?;
    let i = a
        .iter()
        .position(|t| t.get("name").and_then(|n| n.as_str()) == Some(name))
        .ok_or_else(|| EditError::NoVip(name.into()))?;
    a.remove(i);
    Ok(d.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "# ours\n[daemon]\ninterfaces = [\"eth0\"]\n\n[[vip]]\nname = \"web\" # the site\naddress = \"198.18.100.1\"\nport = 80\n\n[[vip.backend]]\naddress = \"198.18.0.21\"\n";

    fn obj(v: serde_json::Value) -> serde_json::Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn one_host_drained_in_every_vip_and_maintenance_set() {
        let two = format!(
            "{T}\n[[vip]]\nname = \"api\"\naddress = \"198.18.100.2\"\n\n[[vip.backend]]\naddress = \"198.18.0.21\"\n\n[[vip.backend]]\naddress = \"198.18.0.22\"\n"
        );
        let (t, vips) = set_backend_everywhere(
            &two,
            "198.18.0.21",
            &obj(serde_json::json!({"drain": true})),
        )
        .unwrap();
        assert_eq!(vips, ["web", "api"]);
        assert_eq!(t.matches("drain = true").count(), 2, "{t}");
        let c = crate::Config::parse(&t, std::path::Path::new("t.toml")).unwrap();
        let drained: Vec<bool> = c
            .vips
            .iter()
            .flat_map(|v| v.get_ref().backends.iter().map(|b| b.get_ref().drain))
            .collect();
        assert_eq!(drained, [true, true, false]);
        assert_eq!(
            set_backend_everywhere(
                &two,
                "198.18.0.99",
                &obj(serde_json::json!({"drain": true}))
            ),
            Err(EditError::NoBackendAnywhere("198.18.0.99".into()))
        );
        let on = set_maintenance(&two, true).unwrap();
        let c = crate::Config::parse(&on, std::path::Path::new("t.toml")).unwrap();
        assert!(c.announce.maintenance && on.contains("# the site"), "{on}");
        let off = set_maintenance(&on, false).unwrap();
        let c = crate::Config::parse(&off, std::path::Path::new("t.toml")).unwrap();
        assert!(!c.announce.maintenance);
    }

    #[test]
    fn edits_keep_comments_and_find_errors() {
        let t = set_backend(
            T,
            "web",
            "198.18.0.21",
            &obj(serde_json::json!({"weight": 50, "drain": true})),
        )
        .unwrap();
        assert!(
            t.contains("# ours")
                && t.contains("# the site")
                && t.contains("weight = 50")
                && t.contains("drain = true"),
            "{t}"
        );
        let t = add_backend(
            &t,
            "web",
            &obj(serde_json::json!({"address": "198.18.0.22", "role": "backup"})),
        )
        .unwrap();
        assert!(t.contains("198.18.0.22") && t.contains("role = \"backup\""));
        let t = remove_backend(&t, "web", "198.18.0.21").unwrap();
        assert!(!t.contains("198.18.0.21"));
        assert_eq!(
            remove_backend(&t, "nope", "1.2.3.4"),
            Err(EditError::NoVip("nope".into()))
        );
        let t = add_vip(&t, &obj(serde_json::json!({"name": "dns", "address": "198.18.100.2", "port": 53, "protocol": "udp"}))).unwrap();
        assert!(t.contains("name = \"dns\""));
        assert!(matches!(
            add_vip(
                &t,
                &obj(serde_json::json!({"name": "dns", "address": "1.1.1.1"}))
            ),
            Err(EditError::VipExists(_))
        ));
        let t = remove_vip(&t, "dns").unwrap();
        assert!(!t.contains("dns"));
    }
}
