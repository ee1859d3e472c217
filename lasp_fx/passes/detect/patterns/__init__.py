"""One module per pattern family; each has `find(ctx) -> list[Candidate | NearMiss]` (verified)."""
