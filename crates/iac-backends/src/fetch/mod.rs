//! (filled in by the fetch backend work)
