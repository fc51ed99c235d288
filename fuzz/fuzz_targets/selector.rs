//! A target selector from a user or a peer, then matched against a name and
//! tags cut from the same input (globs included).
#![no_main]
use conjoiner::wire::Target;
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (selector, subject) = text.split_once('\n').unwrap_or((&text, "node-1"));
    if let Ok(target) = Target::parse(selector) {
        let mut tags = BTreeMap::new();
        let (name, tag) = subject.split_once(' ').unwrap_or((subject, "role=web"));
        if let Some((k, v)) = tag.split_once('=') {
            tags.insert(k.to_string(), v.to_string());
        }
        let _ = target.matches(name, &tags);
    }
});
