//! The pool's JSON-RPC lines: replies to a request (`result` or `error`) and pushes from the
//! pool (`mining.notify`, `mining.set_difficulty`, with a null id).

use serde_json::{Value, json};

use crate::stratum::Reject;

pub(super) fn result_reply(id: &Value, result: &Value) -> String {
    json!({"id": id, "result": result, "error": null}).to_string()
}

pub(super) fn error_reply(id: &Value, reject: &Reject) -> String {
    json!({"id": id, "result": null, "error": reject.to_json()}).to_string()
}

pub(super) fn push(method: &str, params: &Value) -> String {
    json!({"id": null, "method": method, "params": params}).to_string()
}
