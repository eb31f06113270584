//! Git repositories, read and written through gix.
//!
//! - `source`: opening a source repository, refusing what cannot be backed up faithfully,
//!   and reading its refs.
//! - `backup`: computing what is new since the previous snapshot and streaming it as a pack.
//! - `restore`: rebuilding a bare repository from a snapshot chain.
//! - `connectivity`: checking that every object reachable from every ref is present.

pub mod backup;
pub mod connectivity;
pub mod delta;
pub mod delta_bases;
pub mod pack_concat;
pub mod pack_copy;
pub mod pack_index;
pub mod pack_writer;
pub mod restore;
pub mod rev_list;
pub mod source;
