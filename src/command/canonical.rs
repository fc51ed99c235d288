//! The bytes an operator signs: a fixed domain line, then the command's
//! fields as JSON with every object's keys sorted, no spaces, and numbers
//! as serde_json writes them. The signer and every checker build these
//! bytes from typed values, so what is checked is exactly what acts, and
//! one command has one reading (no field can slide into another, as with
//! bytes joined without lengths).

use serde_json::Value;

/// The first line of every signed command: a signature over these bytes
/// means nothing anywhere else, and a new form gets a new line.
pub const DOMAIN: &[u8] = b"conjoiner command v1\n";

/// `fields` in canonical JSON: objects' keys sorted (recursively), compact.
pub fn canonical_json(fields: &Value) -> String {
    let mut out = String::new();
    write(fields, &mut out);
    out
}

/// The bytes signed for a command whose fields are `fields`.
pub fn signed_bytes(fields: &Value) -> Vec<u8> {
    let mut bytes = DOMAIN.to_vec();
    bytes.extend_from_slice(canonical_json(fields).as_bytes());
    bytes
}

fn write(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_sorted_at_every_depth_and_nothing_is_padded() {
        let a: Value = serde_json::from_str(r#"{"b": 1, "a": {"z": [1, {"y": 2, "x": "q"}], "c": null}}"#).unwrap();
        assert_eq!(canonical_json(&a), r#"{"a":{"c":null,"z":[1,{"x":"q","y":2}]},"b":1}"#);
    }

    #[test]
    fn the_same_fields_in_another_order_sign_the_same_bytes() {
        let a = json!({"module": "web", "config": {"port": 80, "host": "x"}});
        let b: Value = serde_json::from_str(r#"{"config": {"host": "x", "port": 80}, "module": "web"}"#).unwrap();
        assert_eq!(signed_bytes(&a), signed_bytes(&b));
    }

    #[test]
    fn a_value_cannot_pass_for_a_field_boundary() {
        // Joined without structure, these two would read the same.
        let a = json!({"module": "web", "target": "x"});
        let b = json!({"module": "webtarget", "target": "x"});
        let c = json!({"module": "web\",\"target\":\"x", "target": null});
        let all = [signed_bytes(&a), signed_bytes(&b), signed_bytes(&c)];
        assert_ne!(all[0], all[1]);
        assert_ne!(all[0], all[2]);
        assert!(all.iter().all(|b| b.starts_with(DOMAIN)));
    }
}
