//! Reading and re-applying filesystem metadata (placeholder, filled in by the fsmeta work).
