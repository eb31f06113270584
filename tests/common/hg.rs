//! Mercurial repositories made and read with the `hg` command: the independent oracle for hg
//! snapshots, as the git CLI is for git ones. Every call runs with a clean environment (no
//! user or system configuration) and a pinned date, so two builds of a fixture give the same
//! nodes and markers.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use super::stderr;

/// `--config` pairs on every call. createmarkers: rewrites leave obsolescence markers instead
/// of strip backups, and markers are read without warnings when the repository's own hgrc is
/// skipped. The slow-path pair: a repository written by a Rust-enabled hg stays readable by a
/// C-only build.
const CONFIG: &[&str] = &[
    "devel.default-date=0 0",
    "experimental.evolution.createmarkers=yes",
    "storage.revlog.persistent-nodemap.slow-path=allow",
    "storage.dirstate-v2.slow-path=allow",
];

/// Bookmark names a forge user can create that break naive parsers: spaces, non-ASCII, a
/// leading '-' (an option to a command line), a tab (hg accepts it; pull and clone from such
/// a repository crash, a bundle-based backup must not), shell and comment characters.
pub const HOSTILE_BOOKMARKS: &[&str] =
    &["with space", "ünïcode-☃", "-dash", "--", "tab\tx", "@", "$(id)", "quote\"d'", "#hash", "a/b"];

/// `hg` with the clean environment and the pinned configuration, not yet given a repository.
pub fn hg_base() -> Command {
    let mut command = Command::new("hg");
    for pair in CONFIG {
        command.args(["--config", pair]);
    }
    command
        .env("HGPLAIN", "1")
        .env("HGRCPATH", "")
        .env("HGENCODING", "utf-8")
        .env("HGUSER", "Fixture <fx@example.org>")
        .env_remove("HGRCSKIPREPO");
    command
}

/// `hg -R repo` with the clean environment.
pub fn hg_command(repo: &Path) -> Command {
    let mut command = hg_base();
    command.arg("-R").arg(repo);
    command
}

/// As `hg_command`, with the repository's own `.hg/hgrc` ignored: reading a repository
/// never runs its hooks or loads its extensions, and reads the same whatever its hgrc says.
pub fn hg_read_command(repo: &Path) -> Command {
    let mut command = hg_command(repo);
    command.env("HGRCSKIPREPO", "1");
    command
}

fn checked(command: &mut Command, what: &str) -> String {
    let out = command.output().unwrap_or_else(|e| panic!("run hg {what}: {e}"));
    assert!(out.status.success(), "hg {what} failed: {}\n{}{}", out.status, stdout(&out), stderr(&out));
    stdout(&out)
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("hg prints UTF-8 under HGENCODING=utf-8")
}

/// Runs hg on `repo` (its hgrc honoured, as a user's commands are), asserting success;
/// returns stdout.
pub fn hg(repo: &Path, args: &[&str]) -> String {
    checked(hg_command(repo).args(args), &format!("{args:?} in {}", repo.display()))
}

/// Runs hg on `repo` with its hgrc ignored, asserting success; returns stdout.
pub fn hg_read(repo: &Path, args: &[&str]) -> String {
    checked(hg_read_command(repo).args(args), &format!("{args:?} in {}", repo.display()))
}

/// The lines of `text`, sorted.
fn sorted(text: &str) -> String {
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_unstable();
    lines.iter().map(|l| format!("{l}\n")).collect()
}

fn file_or_absent(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "(absent)\n".to_owned(),
        Err(e) => panic!("read {}: {e}", path.display()),
    }
}

/// Everything a restore must reproduce, as text to compare with `assert_eq!`: every changeset
/// (hidden and secret included) with its phase, branch and obsolescence, the visible ones,
/// bookmarks, tags (local ones typed `local`), branches with closed ones, every head, the
/// obsolescence markers in store order, the repository's hgrc and its requirements.
/// Bookmarks leave out which one is active: that is working-copy state (`.hg/bookmarks.current`),
/// and a restore has no working copy.
pub fn dump(repo: &Path) -> String {
    let h = |args: &[&str]| hg_read(repo, args);
    let mut out = String::new();
    let mut section = |title: &str, body: String| {
        out.push_str(&format!("== {title}\n{body}"));
    };
    section(
        "changesets (node phase branch obsolete)",
        sorted(&h(&["--hidden", "log", "-T", "{node} {phase} {branch} {if(obsolete,'obsolete','-')}\n"])),
    );
    section("visible", sorted(&h(&["log", "-T", "{node}\n"])));
    section("bookmarks", sorted(&h(&["bookmarks", "-T", "{bookmark|json} {node}\n"])));
    section("tags", sorted(&h(&["tags", "-T", "{tag|json} {node} {type}\n"])));
    section("branches", sorted(&h(&["branches", "--closed", "-T", "{branch|json} {node} {closed} {active}\n"])));
    section("heads", sorted(&h(&["--hidden", "log", "-r", "heads(all())", "-T", "{node}\n"])));
    section("markers", h(&["debugobsolete"]));
    section("hgrc", file_or_absent(&repo.join(".hg/hgrc")));
    section("requires", sorted(&file_or_absent(&repo.join(".hg/requires"))));
    section("store/requires", sorted(&file_or_absent(&repo.join(".hg/store/requires"))));
    out
}

/// Asserts that `hg verify` exits 0 and prints nothing but its progress lines and the final
/// count: hg reports some damage (revlogs missing from the fncache, for one) as warnings with
/// exit 0. Returns the count line.
pub fn verify_clean(repo: &Path) -> String {
    let out = hg_read_command(repo).arg("verify").output().expect("run hg verify");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(out.status.success(), "hg verify {} exited {}:\n{text}", repo.display(), out.status);
    let mut count = None;
    for line in text.lines() {
        if line.starts_with("checked ") && line.contains(" changesets with ") && count.is_none() {
            count = Some(line.to_owned());
        } else if !(line.starts_with("checking ") || line.starts_with("crosschecking ")) {
            panic!("hg verify {} printed {line:?}:\n{text}", repo.display());
        }
    }
    count.unwrap_or_else(|| panic!("hg verify {} printed no count:\n{text}", repo.display()))
}

/// A Mercurial repository the test makes and edits with the hg command.
pub struct HgRepo {
    pub path: PathBuf,
}

impl HgRepo {
    /// A new repository as a forge keeps them: non-publishing (pushed changesets stay
    /// draft), rewrites record obsolescence markers, and a custom hgrc line that only the
    /// restore of the raw file can bring back.
    pub fn new(path: &Path) -> HgRepo {
        let repo = HgRepo::empty(path);
        std::fs::write(
            repo.path.join(".hg/hgrc"),
            "[phases]\npublish = False\n[experimental]\nevolution.createmarkers = True\n\
             evolution.exchange = True\n[web]\ndescription = fixture: custom repo hgrc line\n",
        )
        .unwrap();
        repo
    }

    /// `hg init` alone: no hgrc, no changeset.
    pub fn empty(path: &Path) -> HgRepo {
        checked(hg_base().arg("init").arg(path), &format!("init {}", path.display()));
        HgRepo { path: path.to_owned() }
    }

    /// `hg init` with `settings` (`format.*=...` pairs): a repository with other
    /// requirements than hg's defaults.
    pub fn with_format(path: &Path, settings: &[&str]) -> HgRepo {
        let mut command = hg_base();
        for setting in settings {
            command.args(["--config", setting]);
        }
        checked(command.arg("init").arg(path), &format!("init {} with {settings:?}", path.display()));
        HgRepo { path: path.to_owned() }
    }

    /// Runs hg here (hgrc honoured), asserting success; returns stdout.
    pub fn hg(&self, args: &[&str]) -> String {
        hg(&self.path, args)
    }

    /// Appends the line `text` to `file` and commits it with message `text` and `extra`
    /// options (`--secret`, `--close-branch`...); returns the new node.
    pub fn commit(&self, file: &str, text: &str, extra: &[&str]) -> String {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(self.path.join(file)).unwrap();
        writeln!(f, "{text}").unwrap();
        let mut args = vec!["commit", "-q", "-A", "-m", text];
        args.extend(extra);
        self.hg(&args);
        self.node(".")
    }

    /// The node of the one changeset `revset` names (hidden ones included).
    pub fn node(&self, revset: &str) -> String {
        let nodes = self.nodes(revset);
        assert_eq!(nodes.len(), 1, "{revset} names one changeset: {nodes:?}");
        nodes.into_iter().next().unwrap()
    }

    /// Nodes of the changesets `revset` names (hidden ones included), in revision order.
    pub fn nodes(&self, revset: &str) -> Vec<String> {
        hg_read(&self.path, &["--hidden", "log", "-r", revset, "-T", "{node}\n"]).lines().map(str::to_owned).collect()
    }

    /// `public`, `draft` or `secret`.
    pub fn phase(&self, revset: &str) -> String {
        hg_read(&self.path, &["--hidden", "log", "-r", revset, "-T", "{phase}"])
    }

    pub fn update(&self, revset: &str) {
        self.hg(&["update", "-q", revset]);
    }

    /// Creates or moves bookmark `name` to `revset`; `--` keeps a name starting with '-' a name.
    pub fn bookmark(&self, name: &str, revset: &str) {
        self.hg(&["bookmark", "-q", "-f", "-r", revset, "--", name]);
    }

    pub fn delete_bookmark(&self, name: &str) {
        self.hg(&["bookmark", "-q", "-d", "--", name]);
    }

    /// Rewrites the working copy's parent with a new message (one marker); returns the new node.
    pub fn amend(&self, message: &str) -> String {
        self.hg(&["commit", "-q", "--amend", "-m", message]);
        self.node(".")
    }

    /// Marks `revset` obsolete with no successor, as a prune does.
    pub fn prune(&self, revset: &str) {
        let node = self.node(revset);
        self.hg(&["debugobsolete", "-q", &node]);
    }

    /// A `.hgtags` tag (a commit) on `revset`.
    pub fn tag(&self, name: &str, revset: &str) {
        self.hg(&["tag", "-q", "-r", revset, name]);
    }

    /// A local tag (`.hg/localtags`, no commit).
    pub fn local_tag(&self, name: &str, revset: &str) {
        self.hg(&["tag", "-q", "--local", "-r", revset, name]);
    }

    /// Moves `revset` to `phase` (`public`, `draft`, `secret`); `--force` allows moving back.
    pub fn set_phase(&self, phase: &str, revset: &str) {
        self.hg(&["phase", "-q", "--force", &format!("--{phase}"), "-r", revset]);
    }

    /// A named branch `name` from `from` with one changeset on `file`, then closed; returns the
    /// closing changeset's node.
    pub fn closed_branch(&self, name: &str, from: &str, file: &str) -> String {
        self.update(from);
        self.hg(&["branch", "-q", name]);
        self.commit(file, &format!("{name}-1"), &[]);
        self.commit(file, &format!("{name}-close"), &["--close-branch"])
    }

    /// Removes `revset` and its descendants from the repository (no markers: gone for good;
    /// hg keeps its own backup bundle under `.hg/strip-backup`, which is not history).
    pub fn strip(&self, revset: &str) {
        self.hg(&["--config", "extensions.strip=", "strip", "-q", "-r", revset]);
    }

    pub fn append_hgrc(&self, line: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(self.path.join(".hg/hgrc")).unwrap();
        writeln!(f, "{line}").unwrap();
    }

    pub fn dump(&self) -> String {
        dump(&self.path)
    }

    pub fn verify_clean(&self) -> String {
        verify_clean(&self.path)
    }
}

/// One night of a forge user's work on `repo` (created by `HgRepo::new`), the history of
/// issue 11's recipe: each night is followed by a backup in the tests.
/// 1: public history with a `.hgtags` tag, a public named branch with its own tag, a closed
///    named branch, drafts, bookmarks (hostile names among them), an amend twice, a prune, a
///    secret changeset with a bookmark, a local tag.
/// 2: new drafts (a bookmark advances), two changesets night 3 strips, a bookmark moved and
///    one deleted, an amend, an hgrc line.
/// 3: a strip of changesets the previous snapshot holds, then a new changeset.
/// 4: a phase change alone.
/// 5: no new changeset: a phase moved back, a prune, a local tag, a bookmark moved.
pub fn night(repo: &HgRepo, night: u32) {
    match night {
        1 => {
            repo.commit("a", "root", &[]);
            repo.commit("a", "second", &[]);
            repo.tag("v1.0", ".");
            repo.set_phase("public", ".");
            repo.hg(&["branch", "-q", "stable"]);
            repo.commit("s", "stable-1", &[]);
            repo.set_phase("public", ".");
            repo.tag("stable-tag", ".");
            repo.update("default");
            repo.hg(&["branch", "-q", "feature-x"]);
            repo.commit("f", "fx-1", &[]);
            repo.commit("f", "fx-close", &["--close-branch"]);
            repo.update("default");
            repo.commit("a", "draft-1", &[]);
            // Created without -r, each becomes the active bookmark in turn: the last one
            // advances with the next commit, as a user's does.
            for name in ["to-move", "to-delete", "with space", "ünïcode-☃", "-dash", "tab\tx"] {
                repo.hg(&["bookmark", "-q", "--", name]);
            }
            repo.commit("w", "wip-1", &[]);
            repo.hg(&["bookmark", "-q", "wip"]);
            repo.amend("wip-1 amended");
            repo.amend("wip-1 amended again");
            repo.update("desc('draft-1')");
            repo.commit("p", "to-prune", &[]);
            repo.update("desc('draft-1')");
            repo.prune("desc('to-prune')");
            repo.commit("x", "secret-1", &["--secret"]);
            repo.hg(&["bookmark", "-q", "private"]);
            repo.local_tag("local-tag", "desc('second')");
            repo.update("null");
        }
        2 => {
            repo.update("wip");
            repo.commit("w", "wip-2", &[]);
            repo.commit("w", "to-be-stripped-1", &[]);
            repo.commit("w", "to-be-stripped-2", &[]);
            repo.update("desc('draft-1')");
            repo.commit("a", "draft-2", &[]);
            repo.bookmark("to-move", ".");
            repo.delete_bookmark("to-delete");
            repo.amend("draft-2 amended");
            repo.append_hgrc("contact = night2 <ops@example.org>");
            repo.update("null");
        }
        3 => {
            repo.strip("desc('to-be-stripped-1')");
            repo.update("desc('draft-2 amended')");
            repo.commit("a", "after-strip", &[]);
            repo.update("null");
        }
        4 => repo.set_phase("public", "desc('draft-2 amended')"),
        5 => {
            repo.set_phase("draft", "desc('draft-2 amended')");
            repo.prune("desc('after-strip')");
            repo.local_tag("local-2", "desc('root')");
            repo.bookmark("with space", "desc('root')");
        }
        _ => panic!("no night {night}"),
    }
}
