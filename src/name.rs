//! Repository names: data from outside (a scan root, a database column), so they are
//! validated before they are used anywhere near a filesystem path.

use crate::error::usage;

/// Checks a repository NAME as the contract defines it: relative, `/`-separated, with no
/// empty, `.` or `..` component, no NUL and no backslash.
pub fn validate(name: &str) -> anyhow::Result<()> {
    let refuse = |why: &str| Err(usage(format!("repository name \"{name}\" refused: {why}")));
    if name.is_empty() {
        return refuse("it is empty");
    }
    if name.starts_with('/') {
        return refuse("it is absolute");
    }
    if name.contains('\0') {
        return refuse("it contains NUL");
    }
    if name.contains('\\') {
        return refuse("it contains a backslash");
    }
    if name.chars().any(char::is_control) {
        return refuse("it contains a control character");
    }
    for component in name.split('/') {
        match component {
            "" => return refuse("it has an empty path component"),
            "." | ".." => return refuse("it contains a '.' or '..' component"),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::validate;

    #[test]
    fn accepts_nested_relative_names() {
        for ok in ["app.git", "team/app.git", "a/b/c", "ünïcødé/репо", "x..y"] {
            assert!(validate(ok).is_ok(), "{ok} should be accepted");
        }
    }

    #[test]
    fn refuses_hostile_names() {
        for bad in ["", "/abs", "../x", "a/../b", "a/./b", "a//b", "a/", "a\\b", "a\0b", ".", "..", "a\nb"] {
            assert!(validate(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
