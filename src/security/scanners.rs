//! SIP scanners by User-Agent (Kamailio `secfilter`'s user-agent blacklist): a request
//! whose User-Agent contains one of the listed strings, in any case, is dropped and its
//! source banned. The shipped list names the common war-dialers and password crackers.

use aho_corasick::AhoCorasick;

/// The default list: sipvicious (`friendly-scanner` is its User-Agent), and the tools that
/// keep showing up in honeypot logs.
pub const DEFAULT_USER_AGENTS: &[&str] = &[
    "friendly-scanner",
    "sipvicious",
    "sipcli",
    "VaxSIPUserAgent",
    "sundayddr",
    "pplsip",
    "iWar",
    "sip-scan",
    "SIVuS",
];

/// The configured scanner User-Agents, matched as case-insensitive substrings in one pass.
#[derive(Clone, Debug)]
pub struct ScannerList {
    matcher: Option<AhoCorasick>,
}

impl ScannerList {
    /// A list of the non-empty `patterns` (an empty list matches nothing).
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> ScannerList {
        let patterns: Vec<&str> = patterns
            .iter()
            .map(|p| p.as_ref().trim())
            .filter(|p| !p.is_empty())
            .collect();
        let matcher = (!patterns.is_empty()).then(|| {
            AhoCorasick::builder()
                .ascii_case_insensitive(true)
                .build(&patterns)
                .expect("plain string patterns build")
        });
        ScannerList { matcher }
    }

    /// Whether `user_agent` names a scanner.
    pub fn matches(&self, user_agent: &[u8]) -> bool {
        self.matcher
            .as_ref()
            .is_some_and(|m| m.is_match(user_agent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_list_catches_scanners_in_any_case_and_spares_phones() {
        let l = ScannerList::new(DEFAULT_USER_AGENTS);
        for ua in [
            "friendly-scanner",
            "Friendly-Scanner/1.0",
            "sipcli/v1.8",
            "VaxSIPUserAgent/3.1",
            "SIPVicious 0.3.3",
            "pplsip",
            "sundayddr",
            "iWar",
            "sip-scan",
        ] {
            assert!(l.matches(ua.as_bytes()), "{ua}");
        }
        for ua in [
            "baresip v3.10.1 (x86_64/linux)",
            "Yealink SIP-T46S 66.86.0.15",
            "Zoiper rv2.10.20.5",
            "sipp",
            "Linphone/5.2",
            "",
        ] {
            assert!(!l.matches(ua.as_bytes()), "{ua}");
        }
    }

    #[test]
    fn an_empty_list_matches_nothing() {
        let l = ScannerList::new(&["", "  "]);
        assert!(!l.matches(b"friendly-scanner"));
    }
}
