//! What an operator's shell gets from the CLI's own definitions: completion that bash accepts
//! and that completes subcommands and their flags, and a man page that `man` renders.

use crate::common::cli;

/// Completes the last of `words` the way bash's programmable completion does: the script
/// sourced, its function (read from `complete -p`) called with COMP_WORDS set.
fn complete(words: &[&str]) -> Vec<String> {
    let (code, script, err) = cli(&["completion", "bash"], &[]);
    assert_eq!(code, 0, "{err}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup-agent.bash");
    std::fs::write(&file, script).unwrap();
    let driver = r#"
source "$1" || exit 3
f=$(complete -p backup-agent | sed -n 's/.*-F \([^ ]*\).*/\1/p')
[ -n "$f" ] || exit 4
shift
COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
prev=${COMP_WORDS[$(( COMP_CWORD - 1 ))]}
"$f" backup-agent "${COMP_WORDS[$COMP_CWORD]}" "$prev"
printf '%s\n' "${COMPREPLY[@]}"
"#;
    let out = std::process::Command::new("bash")
        .args(["-c", driver, "bash"])
        .arg(&file)
        .args(words)
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

#[test]
fn bash_completes_subcommands_and_their_flags() {
    let (code, script, _) = cli(&["completion", "bash"], &[]);
    assert_eq!(code, 0);
    // From a file: the script is larger than one argument may be (128 KiB).
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup-agent.bash");
    std::fs::write(&file, &script).unwrap();
    let check = std::process::Command::new("bash")
        .arg("-n")
        .arg(&file)
        .output()
        .unwrap();
    assert!(check.status.success(), "bash accepts the script");
    assert_eq!(complete(&["backup-agent", "cre"]), ["create-backup"]);
    assert_eq!(
        complete(&["backup-agent", "create-backup", "--dry"]),
        ["--dry-run"]
    );
    assert_eq!(
        complete(&["backup-agent", "restore", "--no-safety"]),
        ["--no-safety-backup"]
    );
    assert_eq!(complete(&["backup-agent", "completion", "fi"]), ["fish"]);
}

#[test]
fn every_shell_gets_a_script_and_a_wrong_one_is_named() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let (code, out, err) = cli(&["completion", shell], &[]);
        assert_eq!(code, 0, "{shell}: {err}");
        assert!(out.contains("create-backup"), "{shell}");
    }
    let (code, _, err) = cli(&["completion", "tcsh"], &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("invalid value 'tcsh'") && err.contains("bash"),
        "{err}"
    );
}

#[test]
fn man_renders_the_page() {
    let (code, page, err) = cli(&["man"], &[]);
    assert_eq!(code, 0, "{err}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup-agent.1");
    std::fs::write(&file, page).unwrap();
    let out = std::process::Command::new("man")
        .args(["-P", "cat", "-l"])
        .arg(&file)
        .env("MANWIDTH", "100")
        .output()
        .expect("man (scripts/bootstrap installs man-db)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Bold and underline come as overstrikes when the output is not a terminal.
    let text: String = String::from_utf8_lossy(&out.stdout)
        .split('\u{8}')
        .enumerate()
        .map(|(i, s)| if i == 0 { s } else { s.get(1..).unwrap_or("") })
        .collect();
    for want in [
        "NAME",
        "backup-agent",
        "SYNOPSIS",
        "create-backup",
        "restore",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
}
