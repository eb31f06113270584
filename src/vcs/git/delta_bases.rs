//! Choosing delta bases for the objects of an incremental snapshot.
//!
//! A push of a few commits mostly brings new versions of files that exist already. git
//! stores such a version as a delta against the old one; without that, an incremental
//! snapshot stores every new version whole and costs several times a `git bundle` of the
//! same commits. The old version is the object at the same path in the commit's first
//! parent, found by comparing the two trees (descending only where they differ). When that
//! base is new too, it is in the same pack (written first); when it is not, it is reachable
//! from a commit that the previous snapshot's refs reach, so it is in the snapshot chain
//! (which is complete), and the delta names it across snapshots (a "thin" pack, completed
//! at restore).

use anyhow::{Context, Result, anyhow};
use gix::{ObjectId, hashtable::HashMap};

/// For each new blob or tree that has another version at the same path in its commit's
/// first parent, that version.
pub fn choose(
    find: &dyn gix_pack::Find,
    new_commits: &[ObjectId],
    new_objects: &gix::hashtable::HashSet<ObjectId>,
) -> Result<HashMap<ObjectId, ObjectId>> {
    let mut bases = HashMap::default();
    let mut buf = Vec::new();
    for commit in new_commits {
        let (tree, first_parent) = commit_tree_and_parent(find, commit, &mut buf)?;
        let Some(parent) = first_parent else { continue };
        let (parent_tree, _) = commit_tree_and_parent(find, &parent, &mut buf)?;
        pair_trees(find, parent_tree, tree, new_objects, &mut bases)?;
    }
    Ok(bases)
}

fn commit_tree_and_parent(
    find: &dyn gix_pack::Find,
    id: &ObjectId,
    buf: &mut Vec<u8>,
) -> Result<(ObjectId, Option<ObjectId>)> {
    let (data, _) = find
        .try_find(id, buf)
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("reading commit {id}"))?
        .with_context(|| format!("commit {id} is missing in the source"))?;
    let commit = gix::objs::CommitRefIter::from_bytes(data.data, id.kind());
    let mut tree = None;
    let mut parent = None;
    for token in commit {
        match token.map_err(|e| anyhow!("commit {id} does not parse: {e}"))? {
            gix::objs::commit::ref_iter::Token::Tree { id } => tree = Some(id),
            gix::objs::commit::ref_iter::Token::Parent { id } => {
                parent.get_or_insert(id);
            }
            _ => break,
        }
    }
    Ok((tree.with_context(|| format!("commit {id} has no tree"))?, parent))
}

/// One tree's entries: name to (is a tree, id).
fn entries(find: &dyn gix_pack::Find, id: &ObjectId, buf: &mut Vec<u8>) -> Result<Vec<(Vec<u8>, bool, ObjectId)>> {
    let (data, _) = find
        .try_find(id, buf)
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("reading tree {id}"))?
        .with_context(|| format!("tree {id} is missing in the source"))?;
    let mut out = Vec::new();
    for entry in gix::objs::TreeRefIter::from_bytes(data.data, id.kind()) {
        let entry = entry.map_err(|e| anyhow!("tree {id} does not parse: {e}"))?;
        if entry.mode.is_commit() {
            continue; // a submodule's commit is not in this repository
        }
        out.push((entry.filename.to_vec(), entry.mode.is_tree(), entry.oid.to_owned()));
    }
    Ok(out)
}

fn pair_trees(
    find: &dyn gix_pack::Find,
    old: ObjectId,
    new: ObjectId,
    new_objects: &gix::hashtable::HashSet<ObjectId>,
    bases: &mut HashMap<ObjectId, ObjectId>,
) -> Result<()> {
    // Depth-first over the pairs of trees that differ; a tree already paired was descended.
    let mut pending = vec![(old, new)];
    let mut buf = Vec::new();
    while let Some((old, new)) = pending.pop() {
        if old == new {
            continue;
        }
        let old_entries = entries(find, &old, &mut buf)?;
        let new_entries = entries(find, &new, &mut buf)?;
        let by_name: std::collections::HashMap<&[u8], (bool, ObjectId)> =
            old_entries.iter().map(|(name, is_tree, id)| (name.as_slice(), (*is_tree, *id))).collect();
        for (name, is_tree, id) in &new_entries {
            let Some(&(old_is_tree, old_id)) = by_name.get(name.as_slice()) else { continue };
            if old_is_tree != *is_tree || old_id == *id || !new_objects.contains(id) || bases.contains_key(id) {
                continue;
            }
            bases.insert(*id, old_id);
            if *is_tree {
                pending.push((old_id, *id));
            }
        }
    }
    Ok(())
}
