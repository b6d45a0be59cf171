//! The advice as report lines.

use std::fmt::Write as _;

use crate::lab::advice::Advice;

/// The advice as report lines, one `advice: <text>` line each, every line ending in `\n`
/// (empty for an empty slice).
pub fn render(advice: &[Advice]) -> String {
    let mut s = String::new();
    for a in advice {
        let _ = writeln!(s, "advice: {}", a.text);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::advice::Limit;

    #[test]
    fn render_prints_one_advice_line_each() {
        let advice = vec![
            Advice {
                limit: Limit::Oversubscribed,
                text: "first.".to_string(),
            },
            Advice {
                limit: Limit::IpcBound,
                text: "second.".to_string(),
            },
        ];
        assert_eq!(render(&advice), "advice: first.\nadvice: second.\n");
        assert_eq!(render(&[]), "");
    }
}
