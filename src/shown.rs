//! Text that came from elsewhere (a peer, a client, a module), shown in an
//! error, a log line or an audit line. It is cut to a bound and marked so:
//! a megabyte may arrive where a name belongs, and an answer or a log that
//! repeats it whole is a way to grow every node's log and every reply.

/// `text` whole if it has at most `most` characters; otherwise its first
/// `most`, marked as cut with the whole text's length.
pub fn shown(text: &str, most: usize) -> String {
    match text.char_indices().nth(most) {
        Some((end, _)) => format!("{}… ({} bytes)", &text[..end], text.len()),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::shown;

    #[test]
    fn short_text_is_shown_whole_and_long_text_is_cut_and_marked() {
        assert_eq!(shown("web-1", 5), "web-1");
        assert_eq!(shown("web-12", 5), "web-1… (6 bytes)");
        // Cut between characters, never inside one.
        assert_eq!(shown("ééé", 2), "éé… (6 bytes)");
        assert_eq!(shown("", 0), "");
    }
}
