//! Checks that a repository is complete: every object reachable from every ref and from
//! HEAD is present and parses. Used by `verify --deep` on a freshly restored copy.

use std::collections::HashSet;

use anyhow::{Context, Result, anyhow, bail};
use gix::ObjectId;

use super::source::RefState;

/// Counts of what the check visited.
#[derive(Debug, Default, Clone, Copy)]
pub struct Visited {
    pub commits: u64,
    pub objects: u64,
}

/// How thoroughly to look at blobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blobs {
    /// Check that each blob is in the object database (an index lookup).
    Exist,
    /// Read and decompress each blob, which finds damaged data.
    Read,
}

pub fn check(repo: &gix::Repository, refs: &RefState, blobs: Blobs) -> Result<Visited> {
    let mut visited = Visited::default();
    let mut seen_trees: HashSet<ObjectId> = HashSet::new();
    let mut commits = Vec::new();
    for tip in refs.tips() {
        let mut id = tip;
        loop {
            let object = repo
                .find_object(id)
                .map_err(|e| anyhow!("{e}"))
                .with_context(|| format!("ref target {id} is missing"))?;
            visited.objects += 1;
            match object.kind {
                gix::object::Kind::Commit => {
                    commits.push(id);
                    break;
                }
                gix::object::Kind::Tag => {
                    id = object.into_tag().target_id().map_err(|e| anyhow!("tag {id}: {e}"))?.detach()
                }
                gix::object::Kind::Tree => {
                    walk_tree(repo, id, &mut seen_trees, &mut visited, blobs)?;
                    break;
                }
                gix::object::Kind::Blob => break,
            }
        }
    }
    if commits.is_empty() {
        return Ok(visited);
    }
    let walk = repo.rev_walk(commits).all().map_err(|e| anyhow!("{e}"))?;
    for info in walk {
        let info = info.map_err(|e| anyhow!("{e}")).context("walking history: a commit is missing or corrupt")?;
        visited.commits += 1;
        visited.objects += 1;
        let commit =
            repo.find_commit(info.id).map_err(|e| anyhow!("{e}")).with_context(|| format!("commit {}", info.id))?;
        let tree =
            commit.tree_id().map_err(|e| anyhow!("{e}")).with_context(|| format!("commit {}", info.id))?.detach();
        walk_tree(repo, tree, &mut seen_trees, &mut visited, blobs)?;
    }
    Ok(visited)
}

fn walk_tree(
    repo: &gix::Repository,
    root: ObjectId,
    seen: &mut HashSet<ObjectId>,
    visited: &mut Visited,
    blobs: Blobs,
) -> Result<()> {
    let mut stack = vec![root];
    while let Some(id) = stack.pop() {
        if !seen.insert(id) {
            continue;
        }
        visited.objects += 1;
        let tree = repo
            .find_tree(id)
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("tree {id} is missing or corrupt"))?;
        for entry in tree.iter() {
            let entry = entry.map_err(|e| anyhow!("{e}")).with_context(|| format!("tree {id} does not parse"))?;
            let oid = entry.oid().to_owned();
            if entry.mode().is_tree() {
                stack.push(oid);
            } else if entry.mode().is_commit() {
                // A submodule's commit lives in another repository.
            } else if seen.insert(oid) {
                visited.objects += 1;
                match blobs {
                    Blobs::Exist if !repo.has_object(oid) => {
                        bail!("blob {oid} (in tree {id}) is missing")
                    }
                    Blobs::Exist => {}
                    Blobs::Read => {
                        repo.find_object(oid)
                            .map_err(|e| anyhow!("{e}"))
                            .with_context(|| format!("blob {oid} (in tree {id}) is missing or corrupt"))?;
                    }
                }
            }
        }
    }
    Ok(())
}
